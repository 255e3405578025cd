//! The sink's config, as the manifest's `[connector.config]` writes it.

use sluice_sdk::schemars::JsonSchema;
use sluice_sdk::serde::Deserialize;

/// Config of the `kafka-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Brokers to find the cluster through, `host:port` each:
    /// `bootstrap_servers = ["10.0.0.5:9092"]`. Grant every broker of the
    /// cluster in `net`.
    pub bootstrap_servers: Vec<String>,
    /// The topic to write: `topic = "orders"`, or with `{name}` parts taken
    /// from each record's header `name`: `topic = "cdc.{table}"`. The
    /// topics must exist.
    pub topic: String,
    /// `"key"` (the default: the Java client's murmur2 partition of the
    /// record's key) or `"source"` (the log partition the record came
    /// from, modulo the topic's partitions).
    #[serde(default)]
    pub partitioner: Partitioner,
    /// `"none"` (the default), `"gzip"`, `"snappy"`, `"lz4"` or `"zstd"`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// The most bytes of records in one Kafka record batch (before
    /// compression). Default 1048576 (1 MiB, the broker's default
    /// `message.max.bytes`).
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a broker may take to store a batch on every replica
    /// before it answers with an error, in milliseconds. Default 30000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u32,
    /// The client id the brokers see. Default `sluice-<connector>-<index>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Log in with SASL:
    /// `sasl = { mechanism = "SCRAM-SHA-256", username = "sluice", password = "${secret:kafka}" }`
    /// (`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; PLAIN sends the
    /// password as it is, so use it with `tls`). Default none.
    #[serde(default)]
    pub sasl: Option<sluice_kafka::sasl::SaslConfig>,
    /// Connect over TLS, through the host (the `tls` grant says what to
    /// trust). Default false.
    #[serde(default)]
    pub tls: bool,
    /// The name every broker's certificate must be for, with `tls`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Exactly once: each flush's records, and the offsets after them, are
    /// written in one Kafka transaction, and a restart resumes from the
    /// offsets the transactions stored, so a `read_committed` reader sees
    /// each record once even across crashes. Default false (at least
    /// once).
    #[serde(default)]
    pub exactly_once: bool,
    /// With `exactly_once`: the transactional id, which must stay the same
    /// across restarts (it fences an old instance that is still running)
    /// and differ between connectors. Default `sluice-<connector>-<index>`.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// With `exactly_once`: the topic the sink stores its offsets in, keyed
    /// `<connector>/<topic>/<partition>`. It must exist; make it compacted
    /// (`cleanup.policy=compact`), with any number of partitions. Default
    /// `sluice-sink-offsets`.
    #[serde(default = "default_offsets_topic")]
    pub offsets_topic: String,
    /// With `exactly_once`: how long a transaction may stay open before
    /// the coordinator aborts it, in milliseconds. Default 60000.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u32,
    /// First wait before trying a broker that went away again, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

/// How a record's partition is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(crate = "sluice_sdk::serde", rename_all = "snake_case")]
#[schemars(crate = "sluice_sdk::schemars")]
pub enum Partitioner {
    /// murmur2 of the key, as the Java client; keyless records spread
    /// batch by batch.
    #[default]
    Key,
    /// The log partition's number.
    Source,
}

fn default_compression() -> String {
    "none".into()
}
fn default_batch_max_bytes() -> usize {
    1 << 20
}
fn default_offsets_topic() -> String {
    "sluice-sink-offsets".into()
}
fn default_transaction_timeout_ms() -> u32 {
    60_000
}
fn default_request_timeout_ms() -> u32 {
    30_000
}
