//! Builds the built-in plugins (`plugins/`) for `wasm32-wasip2` and compiles
//! them into the binary, so that a plain `cargo run` has them. The test
//! fixtures are built by `sluice-test-artifacts`, only for the tests.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Plugins compiled into the `sluice` binary, by crate name.
const BUILTIN: &[&str] = &[
    "blackhole",
    "datagen",
    "fields",
    "file-sink",
    "file-source",
    "filter",
    "http-enrich",
    "http-sink",
    "http-source",
    "kafka-sink",
    "kafka-source",
    "key",
    "mariadb-sink",
    "mqtt-sink",
    "mqtt-source",
    "postgres-cdc",
    "postgres-sink",
    "print",
    "rabbitmq-sink",
    "rabbitmq-source",
    "redis-sink",
    "redis-source",
    "route",
    "socket-sink",
    "socket-source",
    "stomp-sink",
    "stomp-source",
    "timestamp",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let wasm_dir = sluice_plugin_build::build(&manifest_dir, BUILTIN);

    let wit = manifest_dir.join("../wit/connector.wit");
    let text = std::fs::read_to_string(&wit).expect("wit/connector.wit is readable");
    println!(
        "cargo:rustc-env=SLUICE_CONTRACT_VERSION={}",
        sluice_plugin_build::contract_version(&text)
    );

    let mut code = String::from(
        "/// Plugins compiled into the binary: (name, component bytes).\n\
         pub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for name in BUILTIN {
        let path = sluice_plugin_build::wasm_path(&wasm_dir, name);
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("builtin_plugins.rs"), code).expect("write builtin_plugins.rs");

    // Tests and benches load the built-ins by path too.
    println!(
        "cargo:rustc-env=SLUICE_PLUGIN_WASM_DIR={}",
        wasm_dir.display()
    );
}
