//! Sluice: a connector host whose connectors are WebAssembly components.
//!
//! Records flow from **source** plugins into a **broker** and from the broker
//! into **sink** plugins, one encoded batch at a time. Each plugin instance
//! runs in its own wasmtime `Store`, reaching only what its manifest grants.
//!
//! Where things live:
//!
//! - [`manifest`]: the TOML a user writes, its defaults, and located errors.
//! - [`plugin`]: the engine, compile cache, contract checks, each instance's
//!   sandbox (its `Store` and limits) and the calls into it.
//! - [`grants`]: manifest grants turned into a deny-by-default WASI context.
//! - [`secrets`]: secrets resolved on the host, substituted into configs,
//!   and masked in everything the host prints.
//! - [`supervisor`]: the lifecycle of connectors: instances restarted with
//!   backoff, stop, pause, restart one, and swapping a module while records
//!   flow ([`supervisor::RunningConnector`]).
//! - [`broker`]: the [`broker::Broker`] trait and the embedded durable log.
//! - [`pump`]: the source and sink loops (batching, commits, backpressure).
//! - [`pipeline`]: validating a manifest and running its connectors.
//! - [`admin`]: the daemon (`sluice serve`): connectors kept across
//!   restarts, the HTTP admin API, metrics, and the CLI's client.
//!
//! The `sluice` binary (`src/main.rs`) is a thin CLI over these.

pub mod admin;
pub mod broker;
pub mod grants;
pub mod manifest;
pub mod pipeline;
pub mod plugin;
pub mod pump;
pub mod secrets;
pub mod supervisor;
