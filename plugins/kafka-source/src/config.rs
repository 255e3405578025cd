//! The source's config, as the manifest's `[connector.config]` writes it.

use sluice_sdk::schemars::JsonSchema;
use sluice_sdk::serde::Deserialize;

/// Config of the `kafka-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Brokers to find the cluster through, `host:port` each:
    /// `bootstrap_servers = ["10.0.0.5:9092"]`. Grant every broker of the
    /// cluster in `net` (as the cluster's metadata names them; a host name
    /// needs the `dns` grant too).
    pub bootstrap_servers: Vec<String>,
    /// The topics to read: `topics = ["orders", "payments"]`.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Or every topic whose whole name matches this regular expression
    /// (`topic_pattern = "orders\\..*"`), looked for again at each metadata
    /// refresh. Topics whose name starts with `__` are never matched.
    #[serde(default)]
    pub topic_pattern: Option<String>,
    /// Where a partition starts when the source has no position for it:
    /// `"earliest"` (the default), `"latest"`, or a timestamp in
    /// milliseconds since the Unix epoch (`start = 1767225600000`: the
    /// first record at or after it). A partition that appears later (a
    /// new topic or partition) always starts at its earliest.
    #[serde(default)]
    pub start: Start,
    /// Read only what the topics hold when the source starts, then
    /// finish: each partition up to the offset after its last record
    /// (committed record, under `read_committed`) at that moment; a
    /// partition that appears later is not read. Default false: read on,
    /// as records arrive. A bounded source started again reads up to the
    /// ends as they are then.
    #[serde(default)]
    pub bounded: bool,
    /// A consumer group to keep informed: the offsets the log holds are
    /// committed to it (at most every `group_commit_interval_ms`, and at
    /// close), so Kafka's tools show the source's lag; and a partition the
    /// source has no position for starts at the group's committed offset,
    /// if it has one (so a source can take over from a Kafka consumer).
    /// The source does not join the group: partitions are still split by
    /// instance. Default none.
    #[serde(default)]
    pub group_id: Option<String>,
    /// How often the group's offsets are committed, in milliseconds.
    /// Default 5000.
    #[serde(default = "default_group_commit_interval_ms")]
    pub group_commit_interval_ms: u64,
    /// `"read_committed"` (the default: records of open or aborted
    /// transactions are not read) or `"read_uncommitted"`.
    #[serde(default)]
    pub isolation: IsolationSetting,
    /// Whether each fetched batch's CRC-32C is checked (a corrupt one
    /// fails the instance, naming the partition and offset), as the Java
    /// consumer's `check.crcs`. Default true; the host computes it, at
    /// about the cost of copying the bytes once.
    #[serde(default = "default_check_crcs")]
    pub check_crcs: bool,
    /// How long a broker may hold a fetch open waiting for records, in
    /// milliseconds. Default 500.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u32,
    /// The most bytes one fetch answers with. Default 52428800 (50 MiB).
    #[serde(default = "default_fetch_max_bytes")]
    pub fetch_max_bytes: u32,
    /// The most bytes one fetch answers with for one partition. Default
    /// 1048576 (1 MiB); a batch larger than this still comes whole.
    #[serde(default = "default_partition_max_bytes")]
    pub partition_max_bytes: u32,
    /// How often the source asks for metadata again, to find new
    /// partitions and topics, in milliseconds. Default 30000.
    #[serde(default = "default_metadata_refresh_ms")]
    pub metadata_refresh_ms: u64,
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
    /// The name every broker's certificate must be for, with `tls`;
    /// default the host part of each broker's address.
    #[serde(default)]
    pub server_name: Option<String>,
    /// First wait before trying a broker that went away again, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

/// Where a partition without a position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(crate = "sluice_sdk::serde", untagged)]
#[schemars(crate = "sluice_sdk::schemars")]
pub enum Start {
    /// `"earliest"` or `"latest"`.
    Named(StartName),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
}

impl Default for Start {
    fn default() -> Self {
        Start::Named(StartName::Earliest)
    }
}

/// `"earliest"` or `"latest"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(crate = "sluice_sdk::serde", rename_all = "snake_case")]
#[schemars(crate = "sluice_sdk::schemars")]
pub enum StartName {
    /// The first offset the partition holds.
    Earliest,
    /// The offset after the last record.
    Latest,
}

/// What of transactions the source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(crate = "sluice_sdk::serde", rename_all = "snake_case")]
#[schemars(crate = "sluice_sdk::schemars")]
pub enum IsolationSetting {
    /// Only committed records.
    #[default]
    ReadCommitted,
    /// Every record.
    ReadUncommitted,
}

fn default_check_crcs() -> bool {
    true
}
fn default_max_wait_ms() -> u32 {
    500
}
fn default_fetch_max_bytes() -> u32 {
    50 << 20
}
fn default_partition_max_bytes() -> u32 {
    1 << 20
}
fn default_group_commit_interval_ms() -> u64 {
    5_000
}
fn default_metadata_refresh_ms() -> u64 {
    30_000
}
