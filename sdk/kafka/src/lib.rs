//! Kafka for Sluice plugins: what `kafka-source` and `kafka-sink` share.
//!
//! The plan (issue 16) is a small synchronous client over a granted
//! connection, as `sluice-postgres` is for PostgreSQL: the `kafka-protocol`
//! crate's codec (it builds for `wasm32-wasip2` with `client`, `gzip` and
//! `snappy`; lz4 and zstd through its custom-compression hooks with the pure
//! Rust `lz4_flex` and `ruzstd`), with bootstrap, metadata, retries and
//! SASL on top. What is here so far:
//!
//! - [`partitioner`]: the partition the Java client picks for a key, so a
//!   record written by Sluice lands where a Java producer would put it.

pub mod partitioner;
