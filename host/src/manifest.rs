//! The manifest: one TOML file that says which broker to use and which
//! connectors to run.
//!
//! Every struct here rejects unknown fields, every field's doc comment shows
//! its TOML, and every default lives in one `default_*` function. A manifest
//! that does not parse, or parses into something that cannot run, is reported
//! as a [`ManifestError`] with the file, line and column, the field, and what
//! to write instead.
//!
//! Relative paths in a manifest (the data directory, plugin files, granted
//! directories) are relative to the manifest's own folder, so a manifest runs
//! the same from wherever `sluice` is started.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

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
}

/// `[broker]`: which broker and how it keeps data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker. Only `"embedded"` (a durable log on local disk) so far.
    ///
    /// ```toml
    /// kind = "embedded"
    /// ```
    #[serde(default)]
    pub kind: BrokerKind,

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

/// [`TopicSettings`] resolved: what the log enforces for one topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    /// Partitions when created.
    pub partitions: u32,
    /// Most bytes of committed records kept per partition.
    pub retention_bytes: Option<u64>,
    /// Longest time committed records are kept.
    pub retention_age: Option<Duration>,
    /// Most bytes a group may be behind before sources wait.
    pub max_backlog: u64,
}

/// Default `retention_age`.
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Default `max_backlog`.
pub const DEFAULT_MAX_BACKLOG: u64 = 1 << 30;

impl TopicSettings {
    /// These settings over `defaults`. Values were checked when the
    /// manifest was loaded.
    fn resolve(&self, defaults: TopicPolicy) -> TopicPolicy {
        let bytes = |v: &Spanned<String>| {
            let v = v.get_ref();
            (v != "unlimited").then(|| parse_bytes(v).unwrap_or(u64::MAX))
        };
        let age = |v: &Spanned<String>| {
            let v = v.get_ref();
            (v != "forever").then(|| parse_duration(v).unwrap_or(Duration::MAX))
        };
        TopicPolicy {
            partitions: self
                .partitions
                .as_ref()
                .map_or(defaults.partitions, |p| *p.get_ref()),
            retention_bytes: self
                .retention_bytes
                .as_ref()
                .map_or(defaults.retention_bytes, bytes),
            retention_age: self
                .retention_age
                .as_ref()
                .map_or(defaults.retention_age, age),
            max_backlog: self.max_backlog.as_ref().map_or(defaults.max_backlog, |v| {
                parse_bytes(v.get_ref()).unwrap_or(u64::MAX)
            }),
        }
    }
}

impl BrokerConfig {
    /// The topic defaults of `[broker]`, as a [`TopicSettings`].
    fn topic_settings(&self) -> TopicSettings {
        TopicSettings {
            partitions: None,
            retention_bytes: self.retention_bytes.clone(),
            retention_age: self.retention_age.clone(),
            max_backlog: self.max_backlog.clone(),
        }
    }

    /// The policy of topics that `[topics.<name>]` does not mention.
    pub fn default_policy(&self) -> TopicPolicy {
        self.topic_settings().resolve(TopicPolicy {
            partitions: self.partitions,
            retention_bytes: None,
            retention_age: Some(DEFAULT_RETENTION_AGE),
            max_backlog: DEFAULT_MAX_BACKLOG,
        })
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::default(),
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

/// Which broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerKind {
    /// A durable log on local disk, in this process.
    #[default]
    Embedded,
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

    /// `"source"` (feeds a topic) or `"sink"` (is fed from topics).
    ///
    /// ```toml
    /// kind = "source"
    /// ```
    pub kind: ConnectorKind,

    /// A built-in plugin's name (`sluice plugin list`), or the path of a
    /// `.wasm` component.
    ///
    /// ```toml
    /// plugin = "datagen"            # built in
    /// plugin = "plugins/my.wasm"    # a file, relative to the manifest
    /// ```
    pub plugin: Spanned<String>,

    /// The topic a source writes to.
    ///
    /// ```toml
    /// topic = "events"
    /// ```
    #[serde(default)]
    pub topic: Option<Spanned<String>>,

    /// The topics a sink reads (a sink may also use `topic` for one).
    ///
    /// ```toml
    /// topics = ["events", "audit"]
    /// ```
    #[serde(default)]
    pub topics: Option<Spanned<Vec<String>>>,

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

    /// Sinks: the topic that records the sink refuses on their merits go
    /// to, each with the error, the connector and its origin topic,
    /// partition and offset in headers. Default `"<name>.dlq"`.
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
}

impl ConnectorConfig {
    /// A sink's dead-letter topic.
    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter_topic.as_ref().map_or_else(
            || format!("{}.dlq", self.name.get_ref()),
            |t| t.get_ref().clone(),
        )
    }

    /// The topics this connector reads (sink) or writes (source).
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topic.iter().map(|t| t.get_ref().clone()).collect();
        if let Some(list) = &self.topics {
            names.extend(list.get_ref().iter().cloned());
        }
        names
    }
}

/// What a connector does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectorKind {
    /// Brings records in and writes them to a topic.
    Source,
    /// Reads records from topics and takes them out.
    Sink,
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Sink => "sink",
        })
    }
}

/// `[connector.batch]`: batching by records, bytes and time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most records in one batch. Default 1000.
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

    /// Sources: how long to wait for a batch to fill before sending it
    /// anyway, in milliseconds. Default 5.
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

    /// Longest one plugin call may run, e.g. `"2s"` or `"500ms"`, whether
    /// it computes or waits in a host call (a sleep, a socket). Default
    /// `"10s"`; at least `"10ms"`, the host's clock tick.
    ///
    /// ```toml
    /// cpu = "2s"
    /// ```
    #[serde(default)]
    pub cpu: Option<Spanned<String>>,

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

/// Default `memory` grant.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Default `cpu` grant.
pub const DEFAULT_CPU: Duration = Duration::from_secs(10);
/// Default first restart delay.
pub const DEFAULT_RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Default longest restart delay.
pub const DEFAULT_RESTART_MAX: Duration = Duration::from_secs(60);
/// Default restarts in a row before a connector is `failed`.
pub const DEFAULT_RESTART_ATTEMPTS: u32 = 10;

/// A manifest problem, located in its file. Boxed: it travels in `Result`s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.0.render())]
pub struct ManifestError(Box<Located>);

impl std::ops::Deref for ManifestError {
    type Target = Located;
    fn deref(&self) -> &Located {
        &self.0
    }
}

/// The details of a [`ManifestError`].
#[derive(Debug, Clone)]
pub struct Located {
    /// The manifest's path.
    pub file: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// The field at fault, if known (e.g. `connector[0].kind`).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
    /// The offending source line, for the caret display.
    pub snippet: Option<String>,
}

impl ManifestError {
    /// An error at byte `span` of `source`.
    pub fn at(
        file: &Path,
        source: &str,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Located {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            help: None,
            snippet: None,
        };
        if let Some(span) = span.filter(|s| s.start <= source.len()) {
            let before = &source[..span.start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = source[line_start..span.start].chars().count() + 1;
            let line_end = source[span.start..]
                .find('\n')
                .map_or(source.len(), |i| span.start + i);
            e.line = Some(line);
            e.column = Some(column);
            e.snippet = Some(
                source[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
        ManifestError(Box::new(e))
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    /// Says what to write instead.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }
}

impl Located {
    fn render(&self) -> String {
        let mut out = format!("{}", self.file.display());
        if let (Some(l), Some(c)) = (self.line, self.column) {
            out.push_str(&format!(":{l}:{c}"));
        }
        out.push_str(": ");
        if let Some(field) = &self.field {
            out.push_str(&format!("field `{field}`: "));
        }
        out.push_str(&self.message);
        if let (Some(snippet), Some(line), Some(col)) = (&self.snippet, self.line, self.column) {
            let gutter = line.to_string().len();
            out.push_str(&format!(
                "\n{:gutter$} |\n{line} | {snippet}\n{:gutter$} | {:>col$}",
                "", "", "^"
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n  help: {help}"));
        }
        out
    }
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ManifestError::at(path, "", None, format!("cannot read the manifest: {e}")).help(
                "check the path; `sluice run examples/quickstart/sluice.toml` runs the quickstart",
            )
        })?;
        Self::parse(path, &source)
    }

    /// Parses and checks `source`, read from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest =
            toml::from_str(source).map_err(|e| from_toml(path, source, &e))?;
        manifest.path = path.to_path_buf();
        manifest.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        manifest.source = source.to_owned();
        manifest.check()?;
        Ok(manifest)
    }

    fn error(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> ManifestError {
        let span = (span.end > 0 || span.start > 0).then_some(span);
        ManifestError::at(&self.path, &self.source, span, message)
    }

    /// Checks what the types alone cannot.
    fn check(&self) -> Result<(), ManifestError> {
        if self.broker.partitions == 0 {
            return Err(
                ManifestError::at(&self.path, &self.source, None, "partitions is 0")
                    .field("broker.partitions")
                    .help("a topic needs at least one partition: `partitions = 1`"),
            );
        }
        self.check_topic_settings("broker", &self.broker.topic_settings())?;
        for (name, t) in &self.topics {
            self.check_topic_settings(&format!("topics.{name}"), t)?;
        }
        if self.connectors.is_empty() {
            return Err(
                ManifestError::at(&self.path, &self.source, None, "no connector")
                    .help("add a [[connector]] table with name, kind, plugin and topic"),
            );
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            let c = c.get_ref();
            let name = c.name.get_ref();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
            if !valid {
                return Err(self
                    .error(
                        c.name.span(),
                        format!("connector name {name:?} is not allowed"),
                    )
                    .field(format!("connector[{i}].name"))
                    .help("use letters, digits, `.`, `_` and `-`, e.g. `name = \"orders-sink\"`"));
            }
            if !names.insert(name.clone()) {
                return Err(self
                    .error(
                        c.name.span(),
                        format!("a second connector is named {name:?}"),
                    )
                    .field(format!("connector[{i}].name"))
                    .help("connector names must be unique; rename one of them"));
            }
            if *c.parallelism.get_ref() == 0 {
                return Err(self
                    .error(c.parallelism.span(), "parallelism is 0")
                    .field(format!("connector[{i}].parallelism"))
                    .help("run at least one instance: `parallelism = 1`"));
            }
            match c.kind {
                ConnectorKind::Source => {
                    if c.topic.is_none() || c.topics.is_some() {
                        let span = c.topics.as_ref().map_or(c.name.span(), Spanned::span);
                        return Err(self
                            .error(span, format!("source {name:?} needs exactly one `topic`"))
                            .field(format!("connector[{i}].topic"))
                            .help("a source writes to one topic: `topic = \"events\"`"));
                    }
                }
                ConnectorKind::Sink => {
                    if c.topic_names().is_empty() {
                        return Err(self
                            .error(c.name.span(), format!("sink {name:?} reads no topic"))
                            .field(format!("connector[{i}].topics"))
                            .help("name what it reads: `topic = \"events\"` or `topics = [\"a\", \"b\"]`"));
                    }
                }
            }
            if let Some(t) = &c.dead_letter_topic {
                if c.kind == ConnectorKind::Source {
                    return Err(self
                        .error(t.span(), "a source has no dead-letter topic")
                        .field(format!("connector[{i}].dead_letter_topic"))
                        .help("remove it; only a sink refuses records"));
                }
                if c.topic_names().contains(t.get_ref()) {
                    return Err(self
                        .error(t.span(), "a sink cannot dead-letter into a topic it reads")
                        .field(format!("connector[{i}].dead_letter_topic"))
                        .help(format!(
                            "use another topic, e.g. `dead_letter_topic = \"{name}.dlq\"`"
                        )));
                }
            }
            for t in c
                .topic_names()
                .into_iter()
                .chain(c.dead_letter_topic.as_ref().map(|t| t.get_ref().clone()))
            {
                let ok = !t.is_empty()
                    && t.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
                if !ok {
                    let span = c
                        .topic
                        .as_ref()
                        .map(Spanned::span)
                        .or(c.topics.as_ref().map(Spanned::span))
                        .unwrap_or(c.name.span());
                    return Err(self
                        .error(span, format!("topic name {t:?} is not allowed"))
                        .field(format!("connector[{i}].topic"))
                        .help("use letters, digits, `.`, `_` and `-`"));
                }
            }
            if c.batch.max_records == 0 || c.batch.max_bytes == 0 {
                return Err(self
                    .error(c.name.span(), "a batch limit is 0")
                    .field(format!("connector[{i}].batch"))
                    .help("max_records and max_bytes must be at least 1"));
            }
            if let Some(m) = &c.grants.memory {
                parse_bytes(m.get_ref()).map_err(|why| {
                    self.error(m.span(), why)
                        .field(format!("connector[{i}].grants.memory"))
                        .help("write a size such as `memory = \"64 MiB\"` (B, KiB, MiB, GiB)")
                })?;
            }
            if let Some(cpu) = &c.grants.cpu {
                let d = parse_duration(cpu.get_ref()).map_err(|why| {
                    self.error(cpu.span(), why)
                        .field(format!("connector[{i}].grants.cpu"))
                        .help("write a duration such as `cpu = \"2s\"` or `cpu = \"500ms\"`")
                })?;
                if d < Duration::from_millis(10) {
                    return Err(self
                        .error(
                            cpu.span(),
                            "a cpu grant under 10ms is shorter than the host's clock tick",
                        )
                        .field(format!("connector[{i}].grants.cpu"))
                        .help("grant at least `cpu = \"10ms\"`"));
                }
            }
            self.check_net_env_secrets(i, c)?;
            for (field, value) in [("initial", &c.restart.initial), ("max", &c.restart.max)] {
                if let Some(v) = value {
                    parse_duration(v.get_ref()).map_err(|why| {
                        self.error(v.span(), why)
                            .field(format!("connector[{i}].restart.{field}"))
                            .help(format!("write a duration such as `{field} = \"1s\"`"))
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Checks the `net`, `env` and `secrets` grants of connector `i`, and
    /// that every `${secret:NAME}` in its config names a granted secret.
    fn check_net_env_secrets(&self, i: usize, c: &ConnectorConfig) -> Result<(), ManifestError> {
        for (j, rule) in c.grants.net.iter().enumerate() {
            crate::grants::NetRule::parse(rule.get_ref()).map_err(|why| {
                self.error(rule.span(), why)
                    .field(format!("connector[{i}].grants.net[{j}]"))
                    .help(
                        "write `host:port`, `ip:port` or `cidr:port`, with a port or a range, \
                         e.g. `\"db.internal:5432\"`, `\"10.0.0.0/8:9092-9094\"` or `\"[::1]:6379\"`",
                    )
            })?;
        }
        for (j, name) in c.grants.env.iter().enumerate() {
            let n = name.get_ref();
            if n.is_empty() || n.contains('=') || n.contains('\0') {
                return Err(self
                    .error(
                        name.span(),
                        format!("{n:?} is not an environment variable name"),
                    )
                    .field(format!("connector[{i}].grants.env[{j}]"))
                    .help("list variable names only, e.g. `env = [\"TZ\"]`"));
            }
        }
        for (name, source) in &c.grants.secrets {
            let field = format!("connector[{i}].grants.secrets.{name}");
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !valid {
                return Err(self
                    .error(
                        source.span(),
                        format!("secret name {name:?} is not allowed"),
                    )
                    .field(field)
                    .help("use letters, digits, `_`, `-` and `.`"));
            }
            let s = source.get_ref();
            if s.env.is_some() == s.file.is_some() {
                return Err(self
                    .error(source.span(), format!("secret {name:?} needs exactly one of `env` and `file`"))
                    .field(field)
                    .help(format!(
                        "write `{name} = {{ env = \"VARIABLE\" }}` or `{name} = {{ file = \"path\" }}`"
                    )));
            }
        }
        for reference in crate::secrets::references(&c.config) {
            if !c.grants.secrets.contains_key(&reference) {
                let span = self.config_span_of_text(i, &format!("${{secret:{reference}}}"));
                return Err(self
                    .error(span.unwrap_or(c.name.span()), format!("the config uses secret {reference:?}, which is not granted"))
                    .field(format!("connector[{i}].config"))
                    .help(format!(
                        "declare it: `[connector.grants.secrets]` `{reference} = {{ env = \"VARIABLE\" }}`"
                    )));
            }
        }
        Ok(())
    }

    /// Where `text` first appears in the manifest, at or after connector
    /// `i`'s table.
    fn config_span_of_text(&self, i: usize, text: &str) -> Option<std::ops::Range<usize>> {
        let from = self.connectors.get(i)?.span().start;
        let at = self.source.get(from..)?.find(text)? + from;
        Some(at..at + text.len())
    }

    /// The policy of every topic `[topics.<name>]` names, and the default
    /// for the others.
    pub fn topic_policies(&self) -> (TopicPolicy, BTreeMap<String, TopicPolicy>) {
        let defaults = self.broker.default_policy();
        let named = self
            .topics
            .iter()
            .map(|(name, t)| (name.clone(), t.resolve(defaults)))
            .collect();
        (defaults, named)
    }

    /// Checks the retention and backlog settings of `[broker]` (`table`
    /// `"broker"`) or of `[topics.<name>]`.
    fn check_topic_settings(&self, table: &str, t: &TopicSettings) -> Result<(), ManifestError> {
        if let Some(p) = &t.partitions
            && *p.get_ref() == 0
        {
            return Err(self
                .error(p.span(), "partitions is 0")
                .field(format!("{table}.partitions"))
                .help("a topic needs at least one partition: `partitions = 1`"));
        }
        let sizes = [
            ("retention_bytes", &t.retention_bytes, Some("unlimited")),
            ("max_backlog", &t.max_backlog, None),
        ];
        for (field, value, word) in sizes {
            let Some(v) = value else { continue };
            if word.is_some_and(|w| v.get_ref() == w) {
                continue;
            }
            let n = parse_bytes(v.get_ref()).map_err(|why| {
                let or = word.map_or(String::new(), |w| format!(", or `\"{w}\"`"));
                self.error(v.span(), why)
                    .field(format!("{table}.{field}"))
                    .help(format!("write a size such as `{field} = \"1 GiB\"`{or}"))
            })?;
            if n == 0 {
                return Err(self
                    .error(v.span(), format!("{field} is 0"))
                    .field(format!("{table}.{field}"))
                    .help(format!("write a size such as `{field} = \"1 GiB\"`")));
            }
        }
        if let Some(v) = &t.retention_age
            && v.get_ref() != "forever"
        {
            parse_duration(v.get_ref()).map_err(|why| {
                self.error(v.span(), why)
                    .field(format!("{table}.retention_age"))
                    .help("write a duration such as `retention_age = \"7d\"`, or `\"forever\"`")
            })?;
        }
        Ok(())
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

    /// Finds the manifest location of `connector[index].config.<pointer>`
    /// (a JSON pointer such as `/payload_bytes`), for config errors.
    pub fn config_span(&self, index: usize, pointer: &str) -> Option<std::ops::Range<usize>> {
        let doc = toml_edit::Document::parse(self.source.clone()).ok()?;
        let connectors = doc.get("connector")?.as_array_of_tables()?;
        let table = connectors.get(index)?;
        let mut item = table.get("config")?;
        let mut span = item.span();
        for part in pointer.split('/').filter(|p| !p.is_empty()) {
            match item {
                toml_edit::Item::Table(t) => {
                    let Some(next) = t.get(part) else { break };
                    item = next;
                    span = item.span().or(span);
                }
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                    let Some(v) = t.get(part) else { break };
                    span = v.span().or(span);
                    break;
                }
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                    let Some(v) = part.parse::<usize>().ok().and_then(|i| a.get(i)) else {
                        break;
                    };
                    span = v.span().or(span);
                    break;
                }
                _ => break,
            }
        }
        span.or_else(|| table.span())
    }
}

/// Turns a toml error into a located [`ManifestError`] with a fix.
fn from_toml(path: &Path, source: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().to_owned();
    let mut err = ManifestError::at(path, source, e.span(), message.clone());
    let key = err
        .snippet
        .as_deref()
        .and_then(|s| s.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    if let Some(key) = key {
        err = err.field(key);
    }
    let help = if message.starts_with("unknown field") {
        match message.split_once(", expected ") {
            Some((_, expected)) => {
                format!("remove it, or correct the spelling: expected {expected}")
            }
            None => "remove it, or correct the spelling".to_owned(),
        }
    } else if message.starts_with("invalid type") {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("write {expected} here"),
            None => "check the value's type".to_owned(),
        }
    } else if message.starts_with("unknown variant") {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("use one of {expected}"),
            None => "check the spelling of the value".to_owned(),
        }
    } else if message.starts_with("missing field") {
        "add the field; `sluice validate` shows each connector's fields".to_owned()
    } else {
        "see examples/quickstart/README.md for a manifest that works".to_owned()
    };
    err.help(help)
}

/// Parses a size such as `"64 MiB"` or `"1048576"` into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size for people, with one decimal: `"95.4 MiB"`, `"512 B"`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A size as a manifest would write it, exact: `"64 MiB"`, or bytes when
/// no unit divides it.
pub fn format_size(n: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} B")
}

/// Parses a duration such as `"2s"`, `"500ms"`, `"1m"`, `"6h"` or `"7d"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        "d" => Ok(Duration::from_secs(n * 86_400)),
        other => Err(format!(
            "unknown duration unit {other:?} in {text:?} (use ms, s, m, h or d)"
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GOOD: &str = r#"
[broker]
data_dir = "d"

[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "events"
[connector.config]
count = 10

[[connector]]
name = "out"
kind = "sink"
plugin = "file-sink"
topics = ["events"]
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("dir/m.toml"), text)
    }

    #[test]
    fn defaults_fill_in_and_paths_resolve_beside_the_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.broker.fsync, FsyncPolicy::Interval);
        assert_eq!(m.data_dir(), Path::new("dir/d"));
        let sink = m.connectors[1].get_ref();
        assert_eq!(*sink.parallelism.get_ref(), 1);
        assert_eq!(sink.topic_names(), ["events"]);
        assert_eq!(sink.batch.max_records, 1000);
    }

    #[test]
    fn unknown_field_names_line_column_and_fix() {
        let bad = GOOD.replace("topic = \"events\"", "topic = \"events\"\npartitons = 4");
        let e = parse(&bad).unwrap_err();
        assert_eq!((e.line, e.column), (Some(10), Some(1)));
        let text = e.to_string();
        assert!(text.starts_with("dir/m.toml:10:1: "), "{text}");
        assert!(text.contains("unknown field `partitons`"), "{text}");
        assert!(
            text.contains("help: remove it, or correct the spelling"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let bad = GOOD.replace("name = \"out\"", "name = 7");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.line, Some(14));
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let bad = GOOD.replace("name = \"out\"", "name = \"gen\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(14));
        assert!(
            e.to_string().contains("second connector is named \"gen\""),
            "{e}"
        );

        let bad = GOOD.replace("topics = [\"events\"]", "");
        let e = parse(&bad).unwrap_err();
        assert!(e.to_string().contains("reads no topic"), "{e}");
    }

    #[test]
    fn topic_settings_default_override_and_are_checked() {
        let m = parse(&format!(
            "{GOOD}\n[topics.events]\npartitions = 3\nmax_backlog = \"16 MiB\"\n\
             retention_age = \"forever\"\n"
        ))
        .unwrap();
        let (defaults, named) = m.topic_policies();
        assert_eq!(
            defaults,
            TopicPolicy {
                partitions: 1,
                retention_bytes: None,
                retention_age: Some(DEFAULT_RETENTION_AGE),
                max_backlog: DEFAULT_MAX_BACKLOG,
            }
        );
        assert_eq!(
            named["events"],
            TopicPolicy {
                partitions: 3,
                retention_bytes: None,
                retention_age: None,
                max_backlog: 16 << 20,
            }
        );
        let bad = GOOD.replace(
            "data_dir = \"d\"",
            "data_dir = \"d\"\nretention_bytes = \"lots\"",
        );
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(4));
        let text = e.to_string();
        assert!(text.contains("broker.retention_bytes"), "{text}");
        assert!(text.contains("\"unlimited\""), "{text}");
        let e = parse(&format!(
            "{GOOD}\n[topics.events]\nretention_age = \"a week\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("topics.events.retention_age"), "{e}");
        let e = parse(&format!("{GOOD}\n[topics.events]\nmax_backlog = \"0\"\n")).unwrap_err();
        assert!(e.to_string().contains("max_backlog is 0"), "{e}");
    }

    #[test]
    fn config_fields_are_found_for_schema_errors() {
        let m = parse(GOOD).unwrap();
        let span = m.config_span(0, "/count").unwrap();
        assert_eq!(&m.source[span], "10");
    }

    #[test]
    fn sizes_format_for_people_and_as_written() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(33_619_968), "32.1 MiB");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(parse_bytes(&format_size(3 << 30)), Ok(3 << 30));
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("12").unwrap(), 12);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
