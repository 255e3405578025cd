//! Sluice's integration tests: one test binary, one module per area (the
//! shape of cargo's `tests/testsuite` and wasmtime's `tests/all`), so a new
//! test file is a `mod` line here and the binary links once.
//!
//! Every test drives the real `sluice` binary as a user would, with the
//! plugins and the misbehaving fixtures (`tests/fixtures/`) built for
//! `wasm32-wasip2` by the `sluice-test-artifacts` crate.

mod common;

mod admin;
mod chains;
mod cli;
mod cluster;
mod crash;
mod enrich;
mod field_transforms;
mod flow;
mod http;
mod hybrid;
mod kafka;
mod kafka_tansu;
mod layout;
mod manifest_errors;
mod mariadb;
mod mqtt;
mod nats;
mod network;
mod pipeline_e2e;
mod plugin_contract;
mod plugin_log;
mod postgres;
mod queryable_state;
mod rabbitmq;
mod redis;
mod sandbox;
mod stomp;
mod tls;
mod transforms;
mod waiting;
