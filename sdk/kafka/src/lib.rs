//! Kafka for Sluice plugins: what `kafka-source` and `kafka-sink` share.
//!
//! A small synchronous client over a connection the plugin opens (a
//! granted TCP connection, TLS through the host; in tests a native socket):
//! the `kafka-protocol` crate's request and response codec, Kafka's record
//! batches read in place ([`records`]), and on top the cluster as a client
//! sees it ([`Client`]): bootstrap, metadata, leaders, API version
//! negotiation, offsets and fetches.
//!
//! - [`partitioner`]: the partition the Java client picks for a key, so a
//!   record written by Sluice lands where a Java producer would put it.
//! - [`transaction`]: a transactional producer's requests, and a reader
//!   that sees a partition as `read_committed` does, from its markers.

mod client;
mod conn;
mod error;
pub mod net;
pub mod partitioner;
pub mod records;
pub mod sasl;
pub mod transaction;

pub use client::{
    Client, FetchLimits, FetchSent, Fetched, Isolation, OffsetSpec, PartitionInfo, Produced,
    TopicPartition,
};
pub use conn::{Connection, Dial, api_name};
pub use error::{KafkaError, ResponseError};

/// The shared bytes a fetch's records arrive in.
pub use bytes::Bytes;
