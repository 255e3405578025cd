// Long: the whole schema in one file, one struct per TOML table with its TOML
// in each field's doc (STYLE.md, habit 5).
//! The manifest's schema: one struct per TOML table, each field's doc
//! comment showing its TOML, the `default_*` functions serde fills plain
//! fields with, and the values the rest of the host asks for. Values that
//! are small languages of their own (sizes, durations, net rules) stay text
//! here; `check` parses them once into `resolved`'s types, where their
//! defaults live.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::resolved::{Limits, TlsPolicy, TopicPolicy};
use super::topic_template::TopicTemplate;

/// A parsed, checked manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Where records rest between sources and sinks.
    ///
    /// ```toml
    /// [broker]
    /// kind = "embedded"
    /// ```
    #[serde(default)]
    pub broker: BrokerConfig,

    /// The connectors, one `[[connector]]` table each.
    ///
    /// ```toml
    /// [[connector]]
    /// name = "gen"
    /// kind = "source"
    /// plugin = "datagen"
    /// topic = "events"
    /// ```
    #[serde(default, rename = "connector")]
    pub connectors: Vec<Spanned<ConnectorConfig>>,

    /// Transforms that sources and sinks name in their `transforms` chain,
    /// one `[[transform]]` table each.
    ///
    /// ```toml
    /// [[transform]]
    /// name = "errors-only"
    /// plugin = "filter"
    /// [transform.config]
    /// field = "/level"
    /// equals = "error"
    /// ```
    #[serde(default, rename = "transform")]
    pub transforms: Vec<Spanned<TransformConfig>>,

    /// Settings of single topics, overriding `[broker]`'s defaults.
    ///
    /// ```toml
    /// [topics.events]
    /// partitions = 4
    /// retention_age = "1d"
    /// max_backlog = "256 MiB"
    /// ```
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSettings>,

    /// The folder the manifest was read from; relative paths start here.
    #[serde(skip)]
    pub base_dir: PathBuf,

    /// The manifest's path as given, for messages.
    #[serde(skip)]
    pub path: PathBuf,

    /// The manifest's text, for locating fields in later messages.
    #[serde(skip)]
    pub source: String,

    /// `[broker]`'s topic settings, resolved by the check.
    #[serde(skip)]
    pub(super) topic_defaults: TopicPolicy,

    /// Each `[topics.<name>]` over `topic_defaults`, resolved by the check.
    #[serde(skip)]
    pub(super) topic_policies: BTreeMap<String, TopicPolicy>,

    /// `[broker] url`'s servers, parsed by the check (none unless the
    /// broker is NATS).
    #[serde(skip)]
    pub(super) nats_servers: Vec<async_nats::ServerAddr>,

    /// `[broker.tls]`, checked (NATS only).
    #[serde(skip)]
    pub(super) nats_tls: Option<TlsPolicy>,
}

/// `[broker]`: which broker and how it keeps data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker: `"embedded"` (the default: a durable log on local disk,
    /// in this process) or `"nats"` (streams on a NATS JetStream server).
    ///
    /// ```toml
    /// kind = "embedded"
    /// ```
    #[serde(default)]
    pub kind: BrokerKind,

    /// `kind = "nats"`: the server's URL, or several comma-separated.
    /// Default `"nats://127.0.0.1:4222"`.
    ///
    /// ```toml
    /// url = "nats://127.0.0.1:4222"
    /// ```
    #[serde(default)]
    pub url: Option<Spanned<String>>,

    /// `kind = "nats"`: the token the server requires, read by the host
    /// from an environment variable or a file and never shown.
    ///
    /// ```toml
    /// token = { env = "NATS_TOKEN" }
    /// ```
    #[serde(default)]
    pub token: Option<Spanned<SecretSource>>,

    /// `kind = "nats"`: the user the server requires, with `password`
    /// (instead of a token).
    ///
    /// ```toml
    /// user = "sluice"
    /// ```
    #[serde(default)]
    pub user: Option<Spanned<String>>,

    /// `kind = "nats"`: `user`'s password, read by the host from an
    /// environment variable or a file and never shown.
    ///
    /// ```toml
    /// password = { env = "NATS_PASSWORD" }
    /// ```
    #[serde(default)]
    pub password: Option<Spanned<SecretSource>>,

    /// `kind = "nats"`: TLS to the servers, required once the table is
    /// there (a server that does not offer it is refused). Without it, TLS
    /// only where a `tls://` URL or the server asks for it, checked against
    /// the system's roots.
    ///
    /// ```toml
    /// [broker.tls]
    /// ca_file = "certs/ca.pem"
    /// ```
    #[serde(default)]
    pub tls: Option<Spanned<BrokerTls>>,

    /// `kind = "nats"`: copies of each stream and bucket in a NATS
    /// cluster, 1 to 5. Default 1.
    ///
    /// ```toml
    /// replicas = 3
    /// ```
    #[serde(default)]
    pub replicas: Option<Spanned<u32>>,

    /// Folder of the embedded log, its offsets and connector state.
    /// Default `"data"`, beside the manifest.
    ///
    /// ```toml
    /// data_dir = "data"
    /// ```
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,

    /// When the log is synced to disk: `"always"` (after every batch),
    /// `"interval"` (every `fsync_interval_ms`) or `"never"` (left to the
    /// OS). Default `"interval"`.
    ///
    /// ```toml
    /// fsync = "interval"
    /// ```
    #[serde(default)]
    pub fsync: FsyncPolicy,

    /// Milliseconds between syncs under `fsync = "interval"`. Default 1000.
    ///
    /// ```toml
    /// fsync_interval_ms = 1000
    /// ```
    #[serde(default = "default_fsync_interval_ms")]
    pub fsync_interval_ms: u64,

    /// Partitions of a topic when it is first created. Default 1.
    ///
    /// ```toml
    /// partitions = 1
    /// ```
    #[serde(default = "default_partitions")]
    pub partitions: u32,

    /// Size at which a log segment file is closed and a new one started.
    /// Default 64 MiB.
    ///
    /// ```toml
    /// segment_bytes = 67108864
    /// ```
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,

    /// Default `retention_bytes` of topics (see [`TopicSettings`]).
    ///
    /// ```toml
    /// retention_bytes = "unlimited"
    /// ```
    #[serde(default)]
    pub retention_bytes: Option<Spanned<String>>,

    /// Default `retention_age` of topics (see [`TopicSettings`]).
    ///
    /// ```toml
    /// retention_age = "7d"
    /// ```
    #[serde(default)]
    pub retention_age: Option<Spanned<String>>,

    /// Default `max_backlog` of topics (see [`TopicSettings`]).
    ///
    /// ```toml
    /// max_backlog = "1 GiB"
    /// ```
    #[serde(default)]
    pub max_backlog: Option<Spanned<String>>,
}

/// How much of a topic is kept, and how far its sinks may fall behind.
/// In `[broker]` for every topic, or in `[topics.<name>]` for one.
///
/// Retention removes only records that every consumer group of the topic
/// has committed, oldest segment first: it frees disk, it never takes a
/// record from a sink that has not delivered it. Records no group has
/// committed are bounded by `max_backlog` instead: when a group falls that
/// far behind, the sources writing the partition wait for it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions of the topic when it is first created (`[topics.<name>]`
    /// only; `[broker] partitions` is the default).
    ///
    /// ```toml
    /// partitions = 4
    /// ```
    #[serde(default)]
    pub partitions: Option<Spanned<u32>>,

    /// Most bytes of committed records a partition keeps, e.g. `"10 GiB"`,
    /// or `"unlimited"` (the default).
    ///
    /// ```toml
    /// retention_bytes = "10 GiB"
    /// ```
    #[serde(default)]
    pub retention_bytes: Option<Spanned<String>>,

    /// How long committed records are kept, e.g. `"7d"` (the default),
    /// `"12h"`, or `"forever"`.
    ///
    /// ```toml
    /// retention_age = "7d"
    /// ```
    #[serde(default)]
    pub retention_age: Option<Spanned<String>>,

    /// Most bytes a consumer group may be behind in a partition before the
    /// sources writing it wait, e.g. `"1 GiB"` (the default).
    ///
    /// ```toml
    /// max_backlog = "1 GiB"
    /// ```
    #[serde(default)]
    pub max_backlog: Option<Spanned<String>>,
}

impl BrokerConfig {
    /// The topic defaults of `[broker]`, as a [`TopicSettings`].
    pub(super) fn topic_settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: None,
            retention_bytes: self.retention_bytes.clone(),
            retention_age: self.retention_age.clone(),
            max_backlog: self.max_backlog.clone(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::default(),
            url: None,
            token: None,
            user: None,
            password: None,
            tls: None,
            replicas: None,
            data_dir: default_data_dir(),
            fsync: FsyncPolicy::default(),
            fsync_interval_ms: default_fsync_interval_ms(),
            partitions: default_partitions(),
            segment_bytes: default_segment_bytes(),
            retention_bytes: None,
            retention_age: None,
            max_backlog: None,
        }
    }
}

/// The NATS server of `kind = "nats"` without a `url`.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Which broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// A durable log on local disk, in this process.
    #[default]
    Embedded,
    /// Streams on a NATS JetStream server.
    Nats,
}

/// When the embedded log syncs to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsyncPolicy {
    /// After every appended batch, before it is acknowledged.
    Always,
    /// Every `fsync_interval_ms`, in the background.
    #[default]
    Interval,
    /// Never explicitly; the operating system writes back when it likes.
    Never,
}

/// `[[connector]]`: one configured use of a plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Unique name: letters, digits, `.`, `_` and `-`.
    ///
    /// ```toml
    /// name = "gen"
    /// ```
    pub name: Spanned<String>,

    /// `"source"` (feeds a topic), `"sink"` (is fed from topics) or
    /// `"transform"` (reads topics, writes its `output` topic).
    ///
    /// ```toml
    /// kind = "source"
    /// ```
    pub kind: ConnectorKind,

    /// A built-in plugin's name (`sluice plugins list`), or the path of a
    /// `.wasm` component.
    ///
    /// ```toml
    /// plugin = "datagen"            # built in
    /// plugin = "plugins/my.wasm"    # a file, relative to the manifest
    /// ```
    pub plugin: Spanned<String>,

    /// The topic a source writes to; with `{header}` placeholders, each
    /// record goes to the topic its headers name (a topic per table).
    ///
    /// ```toml
    /// topic = "events"
    /// topic = "{schema}.{table}"
    /// ```
    #[serde(default)]
    pub topic: Option<Spanned<String>>,

    /// The topics a sink or a transform reads (either may also use
    /// `topic` for one).
    ///
    /// ```toml
    /// topics = ["events", "audit"]
    /// ```
    #[serde(default)]
    pub topics: Option<Spanned<Vec<String>>>,

    /// A transform connector's output topic; with `{header}` placeholders,
    /// each record goes to the topic its headers name.
    ///
    /// ```toml
    /// output = "clean-events"
    /// output = "events.{lane}"
    /// ```
    #[serde(default)]
    pub output: Option<Spanned<String>>,

    /// Sources and sinks: the `[[transform]]`s each batch goes through, in
    /// order, between the plugin and the log (Kafka Connect's single message
    /// transforms), in the instance's own lifecycle.
    ///
    /// ```toml
    /// transforms = ["errors-only", "mask-pii"]
    /// ```
    #[serde(default)]
    pub transforms: Option<Spanned<Vec<String>>>,

    /// Sources: a hybrid source (Flink's `HybridSource`). `plugin` runs
    /// first, over a bounded backlog, until it ends; then this live source
    /// runs, in the same instance and grants, writing the same topic. Its
    /// config may use `${switch:timestamp_ms}`: the newest record timestamp
    /// the first one stored (or, if none carried one, the time it ended).
    ///
    /// ```toml
    /// [connector.hybrid]
    /// plugin = "kafka-source"
    /// config = { topics = ["orders"], start = "${switch:timestamp_ms}" }
    /// ```
    #[serde(default)]
    pub hybrid: Option<Spanned<HybridConfig>>,

    /// How many instances to run. Default 1.
    ///
    /// ```toml
    /// parallelism = 1
    /// ```
    #[serde(default = "default_parallelism")]
    pub parallelism: Spanned<u32>,

    /// How the host groups records into batches.
    ///
    /// ```toml
    /// [connector.batch]
    /// max_records = 1000
    /// ```
    #[serde(default)]
    pub batch: BatchConfig,

    /// Sinks and transforms: the topic that records the plugin refuses on
    /// their merits go to, each with the error, the connector and its
    /// origin topic, partition and offset in headers. Default
    /// `"<name>.dlq"`.
    ///
    /// ```toml
    /// dead_letter_topic = "orders-sink.dlq"
    /// ```
    #[serde(default)]
    pub dead_letter_topic: Option<Spanned<String>>,

    /// Sinks: longest time between flushes, in milliseconds. Offsets are
    /// committed only after a flush. Default 1000.
    ///
    /// ```toml
    /// flush_interval_ms = 1000
    /// ```
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,

    /// The plugin's own config, passed to it as JSON and checked against
    /// the schema the plugin publishes.
    ///
    /// ```toml
    /// [connector.config]
    /// count = 1000000
    /// ```
    #[serde(default)]
    pub config: toml::Table,

    /// What the plugin may reach. Nothing unless granted here.
    ///
    /// ```toml
    /// [connector.grants]
    /// files = [{ host = "out", guest = "/out", mode = "read-write" }]
    /// ```
    #[serde(default)]
    pub grants: GrantsConfig,

    /// How a failed instance is restarted.
    ///
    /// ```toml
    /// [connector.restart]
    /// initial = "1s"
    /// max = "1m"
    /// attempts = 10
    /// ```
    #[serde(default)]
    pub restart: RestartConfig,

    /// The sizes, durations and net rules of `grants` and `restart`,
    /// parsed by the check. Never read from TOML.
    #[serde(skip)]
    pub limits: Limits,

    /// What the connector writes, when it has placeholders (a source's
    /// `topic`, a transform's `output`), parsed by the check. Never read
    /// from TOML.
    #[serde(skip)]
    pub route: Option<TopicTemplate>,
}

impl ConnectorConfig {
    /// A sink's or a transform's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.as_ref().map_or_else(
            || format!("{}.dlq", self.name.get_ref()),
            |t| t.get_ref().clone(),
        )
    }

    /// The topics as the manifest names them, for showing: a routed
    /// source's template, or [`ConnectorConfig::topic_names`].
    pub fn topics_as_named(&self) -> Vec<String> {
        match (&self.route, self.kind) {
            (Some(t), ConnectorKind::Source) => vec![t.to_string()],
            _ => self.topic_names(),
        }
    }

    /// A transform connector's output topic when it is one topic (no
    /// placeholders).
    pub fn output_topic(&self) -> Option<String> {
        match (&self.output, &self.route) {
            (Some(o), None) => Some(o.get_ref().clone()),
            _ => None,
        }
    }

    /// Whether it refuses records on their merits into a dead-letter topic:
    /// a sink, a transform, or a source with a chain of transforms.
    pub fn has_dead_letters(&self) -> bool {
        matches!(self.kind, ConnectorKind::Sink | ConnectorKind::Transform)
            || !self.chain().is_empty()
    }

    /// The names of the transforms of its chain, in order.
    pub fn chain(&self) -> &[String] {
        self.transforms.as_ref().map_or(&[], |t| t.get_ref())
    }

    /// Whether it reads topics as a consumer group (its name), with lag.
    pub fn reads_topics(&self) -> bool {
        matches!(self.kind, ConnectorKind::Sink | ConnectorKind::Transform)
    }

    /// The topics this connector reads (sink, transform) or writes
    /// (source); a routed source's template (see [`ConnectorConfig::route`])
    /// is not a topic.
    pub fn topic_names(&self) -> Vec<String> {
        if self.route.is_some() && self.kind == ConnectorKind::Source {
            return Vec::new();
        }
        let mut names: Vec<String> = self.topic.iter().map(|t| t.get_ref().clone()).collect();
        if let Some(list) = &self.topics {
            names.extend(list.get_ref().iter().cloned());
        }
        names
    }
}

/// `[[transform]]`: a transform plugin and its config, for the chains of
/// sources and sinks (`transforms = ["name"]`). Each connector instance
/// runs an instance of it of its own, with no grants (no files, network or
/// environment) and the default `memory` and `cpu`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Unique among transforms: letters, digits, `.`, `_` and `-`.
    ///
    /// ```toml
    /// name = "errors-only"
    /// ```
    pub name: Spanned<String>,

    /// A built-in transform's name, or the path of a `.wasm` component.
    ///
    /// ```toml
    /// plugin = "filter"
    /// ```
    pub plugin: Spanned<String>,

    /// The plugin's own config, passed to it as JSON and checked against
    /// the schema the plugin publishes.
    ///
    /// ```toml
    /// [transform.config]
    /// field = "/level"
    /// equals = "error"
    /// ```
    #[serde(default)]
    pub config: toml::Table,
}

/// `[connector.hybrid]`: the live source a hybrid source runs once its
/// bounded one (the connector's `plugin`) has ended.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HybridConfig {
    /// A built-in source's name, or the path of a `.wasm` component.
    ///
    /// ```toml
    /// plugin = "socket-source"
    /// ```
    pub plugin: Spanned<String>,

    /// The live plugin's own config, checked against its schema.
    /// `${secret:NAME}` is filled from the connector's secrets, and
    /// `${switch:timestamp_ms}` from the hand-over: a number where the
    /// schema takes one and the string is only the placeholder, else text.
    ///
    /// ```toml
    /// [connector.hybrid.config]
    /// addr = "127.0.0.1:7000"
    /// ```
    #[serde(default)]
    pub config: toml::Table,
}

/// What a connector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorKind {
    /// Brings records in and writes them to a topic.
    Source,
    /// Reads records from topics and takes them out.
    Sink,
    /// Reads records from topics, changes them, and writes its output
    /// topic (a Pulsar Function).
    Transform,
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
            ConnectorKind::Transform => "transform",
        })
    }
}

/// `[connector.batch]`: batching by records, bytes and time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records in one batch. Default 1000. For a sink: most records
    /// handed to one `write` (the log's batches are joined up to this).
    ///
    /// ```toml
    /// max_records = 1000
    /// ```
    #[serde(default = "default_max_records")]
    pub max_records: u32,

    /// Most bytes in one batch (encoded). Default 1 MiB.
    ///
    /// ```toml
    /// max_bytes = 1048576
    /// ```
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,

    /// Sources: how long to keep polling for a batch to fill before sending
    /// it anyway, in milliseconds. Default 5. A poll that returns fewer
    /// records than asked for sends the batch at once: the source has no
    /// more right now.
    ///
    /// ```toml
    /// linger_ms = 5
    /// ```
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
        }
    }
}

/// `[connector.grants]`: capabilities, none unless listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Host directories the plugin may open, and where it sees them.
    ///
    /// ```toml
    /// files = [{ host = "out", guest = "/out", mode = "read-write" }]
    /// ```
    #[serde(default)]
    pub files: Vec<FileGrant>,

    /// May the plugin write to the host's standard output (the `print`
    /// sink needs this). Default false.
    ///
    /// ```toml
    /// stdout = true
    /// ```
    #[serde(default)]
    pub stdout: bool,

    /// Most linear memory one instance may use, e.g. `"64 MiB"`.
    /// Default `"256 MiB"`.
    ///
    /// ```toml
    /// memory = "64 MiB"
    /// ```
    #[serde(default)]
    pub memory: Option<Spanned<String>>,

    /// Longest one plugin call may compute, e.g. `"2s"` or `"500ms"`: in
    /// its own code and in host work on its behalf. Time it spends waiting
    /// (a blocking read, a sleep) does not count. Default `"10s"`; at
    /// least `"10ms"`, the host's clock tick.
    ///
    /// ```toml
    /// cpu = "2s"
    /// ```
    #[serde(default)]
    pub cpu: Option<Spanned<String>>,

    /// Most plugin state (`state-put`) the connector may keep, keys and
    /// values together, e.g. `"1 MiB"`. Default `"16 MiB"`. A put past it
    /// is refused (the plugin gets `quota-exceeded`) and changes nothing.
    ///
    /// ```toml
    /// state = "64 MiB"
    /// ```
    #[serde(default)]
    pub state: Option<Spanned<String>>,

    /// Most keys of plugin state the connector may keep. Default 10000.
    ///
    /// ```toml
    /// state_keys = 100
    /// ```
    #[serde(default)]
    pub state_keys: Option<u32>,

    /// Peers the plugin may connect to, send to and receive from (TCP and
    /// UDP): `host:port`, `ip:port`, `cidr:port`, each with one port or a
    /// range `low-high`. A name is resolved by the host when the plugin
    /// connects, and the address the plugin uses must be one the name
    /// resolves to then. No grant lets a plugin listen or bind a port.
    ///
    /// ```toml
    /// net = ["db.internal:5432", "10.0.0.0/8:9092-9094", "[::1]:6379"]
    /// ```
    #[serde(default)]
    pub net: Vec<Spanned<String>>,

    /// May the plugin look names up itself (`wasi:sockets/ip-name-lookup`).
    /// Default false: a plugin given a name in `net` without `dns` must be
    /// configured with the address.
    ///
    /// ```toml
    /// dns = true
    /// ```
    #[serde(default)]
    pub dns: bool,

    /// Host environment variables the plugin sees, by name. It sees no
    /// other; a listed variable the host does not have is left out.
    ///
    /// ```toml
    /// env = ["TZ", "PGAPPNAME"]
    /// ```
    #[serde(default)]
    pub env: Vec<Spanned<String>>,

    /// Named secrets, resolved by the host from an environment variable or
    /// a file (relative to the manifest; one trailing newline is dropped),
    /// and handed to the plugin where its config says `${secret:NAME}`. The
    /// host never prints a secret's value: it is replaced by `***` in
    /// everything the plugin logs and in every error.
    ///
    /// ```toml
    /// [connector.grants.secrets]
    /// password = { env = "PG_PASSWORD" }
    /// api_key = { file = "secrets/api-key" }
    /// ```
    #[serde(default)]
    pub secrets: BTreeMap<String, Spanned<SecretSource>>,

    /// How the host makes TLS connections for the plugin (`wasi:tls`): the
    /// handshake and the server's certificate check run on the host, over a
    /// connection `net` allows. Without this table the host trusts the
    /// system's roots and presents no client certificate.
    ///
    /// ```toml
    /// [connector.grants.tls]
    /// ca_file = "certs/ca.pem"
    /// client_cert = "tls_cert"
    /// client_key = "tls_key"
    /// ```
    #[serde(default)]
    pub tls: TlsGrant,

    /// What the host adds to the plugin's HTTP requests (`wasi:http`),
    /// which go only to peers `net` allows.
    ///
    /// ```toml
    /// [connector.grants.http]
    /// headers = { Authorization = "Bearer ${secret:api_token}" }
    /// ```
    #[serde(default)]
    pub http: HttpGrant,
}

/// `[connector.grants.http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpGrant {
    /// Headers the host sets on every request, replacing any of the same
    /// name the plugin set. A value may use `${secret:NAME}`: the host
    /// substitutes it, and the plugin never sees it.
    ///
    /// ```toml
    /// headers = { Authorization = "Bearer ${secret:api_token}" }
    /// ```
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

/// `[connector.grants.tls]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsGrant {
    /// Trust the CA certificates in this PEM file (relative to the
    /// manifest). It replaces the system's roots unless `system_roots` is
    /// true.
    ///
    /// ```toml
    /// ca_file = "certs/ca.pem"
    /// ```
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,

    /// Trust the system's root certificates too. Default true without
    /// `ca_file`, false with it.
    ///
    /// ```toml
    /// system_roots = true
    /// ```
    #[serde(default)]
    pub system_roots: Option<bool>,

    /// The secret (in `[connector.grants.secrets]`) that holds the client
    /// certificate chain, PEM. With `client_key`, the host presents it to
    /// servers that ask; the plugin never sees either.
    ///
    /// ```toml
    /// client_cert = "tls_cert"
    /// ```
    #[serde(default)]
    pub client_cert: Option<Spanned<String>>,

    /// The secret that holds the client certificate's private key, PEM.
    ///
    /// ```toml
    /// client_key = "tls_key"
    /// ```
    #[serde(default)]
    pub client_key: Option<Spanned<String>>,

    /// Check the server's certificate against this name, whatever name the
    /// plugin asks for (a server reached by address whose certificate names
    /// it by host name).
    ///
    /// ```toml
    /// server_name = "db.internal"
    /// ```
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
}

/// `[broker.tls]`: how the host checks the NATS servers, and the client
/// certificate it presents to those that ask for one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    /// Trust the CA certificates in this PEM file (relative to the
    /// manifest). It replaces the system's roots unless `system_roots` is
    /// true.
    ///
    /// ```toml
    /// ca_file = "certs/ca.pem"
    /// ```
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,

    /// Trust the system's root certificates too. Default true without
    /// `ca_file`, false with it.
    ///
    /// ```toml
    /// system_roots = true
    /// ```
    #[serde(default)]
    pub system_roots: Option<bool>,

    /// Where the host reads its client certificate chain (PEM), for
    /// servers that verify clients; with `client_key`.
    ///
    /// ```toml
    /// client_cert = { file = "certs/sluice.pem" }
    /// ```
    #[serde(default)]
    pub client_cert: Option<Spanned<SecretSource>>,

    /// Where the host reads the client certificate's private key (PEM).
    /// Never shown.
    ///
    /// ```toml
    /// client_key = { env = "NATS_CLIENT_KEY" }
    /// ```
    #[serde(default)]
    pub client_key: Option<Spanned<SecretSource>>,
}

/// Where the host reads a secret.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// From this host environment variable.
    #[serde(default)]
    pub env: Option<String>,
    /// From this file, relative to the manifest.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// `[connector.restart]`: how the supervisor restarts a failed instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartConfig {
    /// Wait before the first restart. Default `"1s"`; each next wait
    /// doubles.
    ///
    /// ```toml
    /// initial = "1s"
    /// ```
    #[serde(default)]
    pub initial: Option<Spanned<String>>,

    /// Longest wait between restarts. Default `"1m"`. An instance that
    /// stays up this long has recovered: its count of failures starts over.
    ///
    /// ```toml
    /// max = "1m"
    /// ```
    #[serde(default)]
    pub max: Option<Spanned<String>>,

    /// Restarts in a row: an instance that fails again after this many is
    /// given up, and the connector is `failed`. Default 10; 0 means a
    /// failure is final.
    ///
    /// ```toml
    /// attempts = 10
    /// ```
    #[serde(default)]
    pub attempts: Option<u32>,
}

/// One entry of `files`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    /// The directory on the host, relative to the manifest.
    pub host: PathBuf,
    /// Where the plugin sees it, e.g. `/out`.
    pub guest: String,
    /// `"read-only"` (default) or `"read-write"`.
    #[serde(default)]
    pub mode: FileMode,
}

/// Access to a granted directory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileMode {
    /// Read files and list directories.
    #[default]
    ReadOnly,
    /// Also create, write, rename and remove.
    ReadWrite,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}
fn default_fsync_interval_ms() -> u64 {
    1000
}
fn default_partitions() -> u32 {
    1
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_parallelism() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn default_flush_interval_ms() -> u64 {
    1000
}
fn default_max_records() -> u32 {
    1000
}
fn default_max_bytes() -> u64 {
    1024 * 1024
}
fn default_linger_ms() -> u64 {
    5
}

impl Manifest {
    /// The policy of every topic `[topics.<name>]` names, and the default
    /// for the others.
    pub fn topic_policies(&self) -> (TopicPolicy, BTreeMap<String, TopicPolicy>) {
        (self.topic_defaults, self.topic_policies.clone())
    }

    /// The NATS servers of `[broker] url`.
    pub fn nats_servers(&self) -> &[async_nats::ServerAddr] {
        &self.nats_servers
    }

    /// The NATS stream and bucket replicas of `[broker]`.
    pub fn nats_replicas(&self) -> u32 {
        self.broker.replicas.as_ref().map_or(1, |r| *r.get_ref())
    }

    /// The TLS `[broker.tls]` asks for, with the names
    /// [`crate::broker::nats::NatsAccess`] gives its client identity; `None`
    /// without the table.
    pub fn nats_tls(&self) -> Option<&TlsPolicy> {
        self.nats_tls.as_ref()
    }

    /// The data directory, resolved against the manifest's folder.
    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.broker.data_dir)
    }

    /// Resolves a path written in the manifest.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}
