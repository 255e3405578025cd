//! The one place that calls `wasmtime::component::bindgen!`.
//!
//! The `imports` world generates the `host` interface every plugin imports;
//! the three plugin worlds reuse it and the `types` interface through `with`,
//! so there is a single `Host` trait to implement and a single set of shared
//! types, whichever kind of plugin is loaded.

/// The host imports (`sluice:connector/host`).
pub mod imports {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:connector/imports",
    });
}

/// The `source` world.
pub mod source {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:connector/source",
        exports: { default: async },
        with: {
            "sluice:connector/host": super::imports::sluice::connector::host,
        },
    });
}

/// The `sink` world.
pub mod sink {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:connector/sink",
        exports: { default: async },
        with: {
            "sluice:connector/host": super::imports::sluice::connector::host,
            "sluice:connector/types": super::source::sluice::connector::types,
        },
    });
}

/// The `transform` world.
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sluice:connector/transform",
        exports: { default: async },
        with: {
            "sluice:connector/host": super::imports::sluice::connector::host,
            "sluice:connector/types": super::source::sluice::connector::types,
        },
    });
}

pub use imports::sluice::connector::host;
pub use source::sluice::connector::types;
