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
//! - [`tls`]: TLS through the host: the handshake and the certificate checks
//!   a plugin's `wasi:tls` streams get, with the trust and client identity
//!   its grants name.
//! - [`http`]: HTTP through the host (`wasi:http`): requests checked against
//!   `net` on the resolved address, HTTPS with the connector's TLS, headers
//!   from secrets.
//! - [`secrets`]: secrets resolved on the host, substituted into configs,
//!   and masked in everything the host prints.
//! - [`supervisor`]: the lifecycle of connectors: instances restarted with
//!   backoff, stop, pause, restart one, and swapping a module while records
//!   flow ([`supervisor::RunningConnector`]).
//! - [`broker`]: the [`broker::Broker`] trait and the embedded durable log.
//! - [`lifecycle`]: what pumps and supervisor share: the stop signal and
//!   the restart backoff policy.
//! - [`pump`]: the source and sink loops (batching, commits, backpressure).
//! - [`check`]: a manifest's connectors checked against their plugins,
//!   once, into the typed values the rest of the host runs.
//! - [`pipeline`]: running a manifest's connectors (`sluice run`).
//! - [`cluster`]: cluster mode's agreements on NATS JetStream KV (connector
//!   definitions, live hosts, instance leases) and rendezvous placement.
//! - [`admin`]: the daemon (`sluice serve`): connectors kept across
//!   restarts, the HTTP admin API, metrics, and where the daemon says it
//!   listens (the CLI's client of the API is the binary's own, `src/cli/`).
//!
//! Imports point down: `manifest` imports nothing of the host; `secrets`,
//! `tls` (over `secrets`), `grants` (over `tls`), `http` (over `grants`) and
//! `lifecycle` read it;
//! `plugin` builds on those and `broker` on
//! `plugin` (its state store); `check` and `pump` sit above them, then
//! `supervisor`, `pipeline` and `admin`, in that order; `cluster` sits on
//! `broker` (its NATS names), below `admin`. A piece two modules
//! share lives in a module below both (`tests/layout.rs` checks that no two
//! sibling modules import each other).
//!
//! The `sluice` binary (`src/main.rs`, one module per verb in `src/cli/`) is
//! a thin CLI over these.

pub mod admin;
pub mod broker;
pub mod check;
pub mod cluster;
pub mod grants;
pub mod http;
pub mod lifecycle;
pub mod manifest;
pub mod pipeline;
pub mod plugin;
pub mod pump;
pub mod secrets;
pub mod supervisor;
pub mod tls;
