//! The daemon's connectors: their definitions on disk, their lifecycle, and
//! what the admin API reports of them.
//!
//! Each connector's definition is one file, `<data_dir>/connectors/<name>.json`:
//! its `[[connector]]` table as TOML text (checked exactly as in a manifest,
//! with the same located errors), the path it was read from (relative paths
//! in it start at that folder), and the state the operator asked for:
//! `running`, `paused` or `stopped`. Each change is written (atomically)
//! before it is acted on, so a daemon that is killed and started again
//! brings every connector back in the state it was in, and each resumes
//! from its committed position: no gap, nothing twice.
//!
//! Every sink connector, stopped ones included, is subscribed to its topics
//! for the daemon's whole run, so retention keeps what it has not committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::AdminError;
use super::metrics::Metrics;
use crate::broker::Broker;
use crate::broker::embedded::{EmbeddedLog, LogConfig};
use crate::manifest::{ConnectorKind, Manifest};
use crate::pipeline::{self, CheckedConnector};
use crate::plugin::{PluginHost, PluginRef, builtin_names};
use crate::pump::InstanceState;
use crate::secrets::Redactor;
use crate::supervisor::{
    ConnectorOutcome, ConnectorReport, HostParts, RunningConnector, Seals, StartOptions,
    SwapRecord, topic_layout,
};

/// The state an operator asked a connector to be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Its instances run.
    Running,
    /// Its instances are open but take no batches.
    Paused,
    /// Its instances are closed.
    Stopped,
}

/// A connector's definition, as stored on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Definition {
    /// A manifest holding exactly this connector's `[[connector]]` table.
    pub toml: String,
    /// Where it was read from; relative paths in it start at its folder.
    pub path: PathBuf,
    /// The state asked for.
    pub state: DesiredState,
    /// Set by an offsets reset: at its next start a sink resumes from its
    /// group's offsets, setting aside offsets it stored itself.
    #[serde(default)]
    pub offsets_reset: bool,
}

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Its data directory: the embedded log, offsets, state, definitions.
    pub data_dir: PathBuf,
    /// A manifest whose `[broker]` and `[topics]` settings the log uses and
    /// whose connectors are created at start unless they already exist.
    pub manifest: Option<Manifest>,
}

/// What status and metrics show of a connector without waiting for an
/// operation on it to finish.
#[derive(Debug, Clone)]
struct Shown {
    report: Option<Arc<ConnectorReport>>,
    desired: DesiredState,
    since: SystemTime,
    plugin: String,
    version: String,
    last_swap: Option<SwapRecord>,
    /// Counters of earlier runs in this daemon (metrics are cumulative).
    carried: Totals,
}

/// Counters summed over a connector's runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Records moved.
    pub records: u64,
    /// Value bytes moved.
    pub bytes: u64,
    /// Records dead-lettered.
    pub refused: u64,
    /// Instance restarts after failures.
    pub restarts: u64,
}

impl Totals {
    fn of(r: &ConnectorReport) -> Totals {
        Totals {
            records: r.records(),
            bytes: r.bytes(),
            refused: r.refused(),
            restarts: u64::from(r.restarts()),
        }
    }

    fn plus(self, o: Totals) -> Totals {
        Totals {
            records: self.records + o.records,
            bytes: self.bytes + o.bytes,
            refused: self.refused + o.refused,
            restarts: self.restarts + o.restarts,
        }
    }
}

struct Managed {
    def: Definition,
    checked: Arc<CheckedConnector>,
    running: Option<RunningConnector>,
    /// Set by `delete`: an operation that waited for the lock meanwhile
    /// finds the connector gone.
    deleted: bool,
}

struct Entry {
    name: String,
    kind: ConnectorKind,
    managed: tokio::sync::Mutex<Managed>,
    shown: Mutex<Shown>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).finish()
    }
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    data_dir: PathBuf,
    plugins: Arc<PluginHost>,
    broker: Arc<EmbeddedLog>,
    metrics: Arc<Metrics>,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    ready: AtomicBool,
}

/// A request to create connectors.
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateRequest {
    /// A manifest's text with one or more `[[connector]]` tables (its
    /// `[broker]` and `[topics]`, if any, are the daemon's business and are
    /// ignored).
    pub toml: Option<String>,
    /// One connector as a JSON object with the fields of a `[[connector]]`
    /// table.
    #[schema(value_type = Option<Object>)]
    pub connector: Option<serde_json::Value>,
    /// The file it was read from: named in errors, and relative paths in it
    /// start at its folder. Default: the daemon's data directory.
    pub path: Option<String>,
}

/// A connector's definition, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorInfo {
    /// Name.
    pub name: String,
    /// `source` or `sink`.
    pub kind: String,
    /// The plugin (a built-in name or a `.wasm` path).
    pub plugin: String,
    /// Topics it writes (source) or reads (sink).
    pub topics: Vec<String>,
    /// Instances.
    pub parallelism: u32,
    /// Its `[connector.config]` (secrets appear as `${secret:NAME}`).
    #[schema(value_type = Object)]
    pub config: serde_json::Value,
    /// The state asked for.
    pub state: DesiredState,
    /// Its definition as TOML.
    pub toml: String,
}

/// One line of `connectors list`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorSummary {
    /// Name.
    pub name: String,
    /// `source` or `sink`.
    pub kind: String,
    /// Plugin name and version.
    pub plugin: String,
    /// See [`ConnectorStatus::state`].
    pub state: String,
    /// Records moved in this run.
    pub records: u64,
    /// A sink's lag.
    pub lag: Option<u64>,
}

/// A failure and when it happened.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// What failed (secrets masked).
    pub message: String,
    /// When (RFC 3339).
    pub at: String,
}

/// One instance's status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InstanceStatus {
    /// Its index.
    pub index: u32,
    /// `starting`, `running`, `paused`, `restarting`, `finished`, `stopped`
    /// or `failed`.
    pub state: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Restarts after failures.
    pub restarts: u32,
    /// Its last failure.
    pub last_error: Option<ErrorInfo>,
    /// Records it moved.
    pub records: u64,
    /// Value bytes it moved.
    pub bytes: u64,
    /// When it last moved a record (RFC 3339).
    pub last_record_at: Option<String>,
}

/// A connector's status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectorStatus {
    /// Name.
    pub name: String,
    /// `source` or `sink`.
    pub kind: String,
    /// The module it runs.
    pub plugin: String,
    /// The module's version.
    pub plugin_version: String,
    /// `running`, `paused`, `stopped`, `finished` or `failed`.
    pub state: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// Instance restarts after failures, this run.
    pub restarts: u32,
    /// The last failure of any instance.
    pub last_error: Option<ErrorInfo>,
    /// Records taken in: polled from the plugin (source) or read from the
    /// topics (sink), this run.
    pub records_in: u64,
    /// Records handed on: appended to the topic (source) or written by the
    /// plugin (sink, less those it refused), this run.
    pub records_out: u64,
    /// Value bytes taken in.
    pub bytes_in: u64,
    /// Value bytes handed on.
    pub bytes_out: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// A sink's lag: records in its topics not yet committed.
    pub lag: Option<u64>,
    /// When the last record moved (RFC 3339).
    pub last_record_at: Option<String>,
    /// The last module swap, with its pause.
    pub last_swap: Option<SwapRecord>,
    /// Per instance.
    pub instances: Vec<InstanceStatus>,
}

/// A plugin and its spec.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// `source` or `sink`.
    pub kind: String,
    /// Version.
    pub version: String,
    /// Description.
    pub description: String,
    /// JSON Schema of its config.
    #[schema(value_type = Object)]
    pub config_schema: serde_json::Value,
}

/// The outcome of checking a config against a plugin's schema.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Validation {
    /// True if the schema accepts it.
    pub valid: bool,
    /// Each problem: the field and what is wrong.
    pub errors: Vec<String>,
}

/// A sink's committed offset in one partition, with the partition's bounds.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PartitionOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The next offset the sink's group will read.
    pub committed: Option<u64>,
    /// The oldest offset kept.
    pub start: u64,
    /// The next offset to be appended.
    pub end: u64,
}

/// A source instance's stored position.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourcePosition {
    /// `<connector>/<instance>`.
    pub producer: String,
    /// The plugin's opaque position, hex-encoded.
    pub position_hex: Option<String>,
}

/// A connector's offsets.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Offsets {
    /// Name.
    pub name: String,
    /// A sink's committed offsets.
    pub partitions: Vec<PartitionOffset>,
    /// A source's stored positions.
    pub positions: Vec<SourcePosition>,
}

/// Where to reset a sink's offsets.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResetRequest {
    /// `earliest`, `latest`, or `offset` (with `offset`).
    pub to: String,
    /// The offset, for `to = "offset"`.
    pub offset: Option<u64>,
    /// Only this topic (default: every topic it reads).
    pub topic: Option<String>,
    /// Only this partition (with `topic`).
    pub partition: Option<u32>,
}

/// What a module swap did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwapOutcome {
    /// Name.
    pub name: String,
    /// The module it runs now.
    pub plugin: String,
    /// True if it swapped while running; false if it was not running and
    /// the new module is used at its next start.
    pub live: bool,
    /// The longest pause of an instance, in milliseconds.
    pub pause_ms: Option<f64>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

impl Daemon {
    /// Opens the log, loads every stored definition, creates the start
    /// manifest's connectors that do not exist yet, and starts each
    /// connector in the state it was left in.
    pub async fn open(config: DaemonConfig, plugins: Arc<PluginHost>) -> anyhow::Result<Daemon> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(data_dir.join("connectors"))
            .with_context(|| format!("creating {}", data_dir.join("connectors").display()))?;
        let log_config = config
            .manifest
            .as_ref()
            .map_or_else(LogConfig::defaults, LogConfig::from_manifest);
        let broker =
            Arc::new(EmbeddedLog::open(&data_dir, log_config).with_context(|| {
                format!("opening the embedded broker in {}", data_dir.display())
            })?);
        let daemon = Daemon {
            data_dir,
            plugins,
            broker,
            metrics: Arc::new(Metrics::new()),
            entries: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
        };
        let mut defs = Vec::new();
        let dir = daemon.data_dir.join("connectors");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let def: Definition = serde_json::from_str(&text)
                .with_context(|| format!("reading the connector definition {}", path.display()))?;
            defs.push(def);
        }
        for def in defs {
            let name = def.path.display().to_string();
            if let Err(e) = daemon.add(def, false).await {
                tracing::error!(definition = %name, error = %e, "a stored connector cannot be loaded; it is left out");
            }
        }
        if let Some(m) = &config.manifest {
            for def in split(&m.source, &m.path).map_err(|e| anyhow::anyhow!("{e}"))? {
                let exists = {
                    let entries = daemon.entries.lock().expect("entries lock");
                    let name = Manifest::parse(&def.path, &def.toml)
                        .map(|m| m.connectors[0].get_ref().name.get_ref().clone())
                        .unwrap_or_default();
                    entries.contains_key(&name)
                };
                if !exists {
                    daemon
                        .add(def, true)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
        daemon.ready.store(true, Ordering::SeqCst);
        Ok(daemon)
    }

    /// True once every stored connector has been brought back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<EmbeddedLog> {
        &self.broker
    }

    /// Locks a connector for an operation; `NotFound` if it was deleted
    /// while the operation waited.
    async fn lock<'e>(
        &self,
        entry: &'e Entry,
    ) -> Result<tokio::sync::MutexGuard<'e, Managed>, AdminError> {
        let m = entry.managed.lock().await;
        if m.deleted {
            return Err(AdminError::NotFound(format!(
                "connector {:?} was deleted",
                entry.name
            )));
        }
        Ok(m)
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, AdminError> {
        self.entries
            .lock()
            .expect("entries lock")
            .get(name)
            .cloned()
            .ok_or_else(|| {
                AdminError::NotFound(format!(
                    "there is no connector named {name:?}; `sluice connectors list` shows them"
                ))
            })
    }

    /// Checks a stored definition. Its errors name the file it came from,
    /// marked as the stored text: its lines are those of the definition,
    /// which `sluice connectors get` prints.
    async fn check(&self, def: &Definition) -> Result<CheckedConnector, AdminError> {
        let file = def
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let label = def.path.with_file_name(format!("{file} (as stored)"));
        let manifest = Manifest::parse(&label, &def.toml).map_err(invalid)?;
        let mut checked = pipeline::check(&manifest, &self.plugins)
            .await
            .map_err(invalid)?;
        Ok(checked.remove(0))
    }

    fn host_parts(&self, c: &CheckedConnector) -> HostParts {
        HostParts {
            plugins: self.plugins.clone(),
            broker: self.broker.clone(),
            redactor: Redactor::new(c.secrets.values()),
            seals: Arc::new(Seals::default()),
            stats: self.metrics.stats_factory(),
        }
    }

    fn store(&self, name: &str, def: &Definition) -> Result<(), AdminError> {
        let path = self
            .data_dir
            .join("connectors")
            .join(format!("{name}.json"));
        let tmp = path.with_extension("json.tmp");
        let json =
            serde_json::to_vec_pretty(def).map_err(|e| AdminError::Internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            if let Ok(d) = std::fs::File::open(path.parent().unwrap_or(Path::new("."))) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write().map_err(|e| {
            AdminError::Internal(format!(
                "cannot store the definition of {name:?} in {}: {e}",
                path.display()
            ))
        })
    }

    /// Checks a definition, subscribes a sink, stores it if `persist`, and
    /// starts it in its state.
    async fn add(&self, def: Definition, persist: bool) -> Result<String, AdminError> {
        let checked = Arc::new(self.check(&def).await?);
        let name = checked.config.name.get_ref().clone();
        let entry = Arc::new(Entry {
            name: name.clone(),
            kind: checked.config.kind,
            shown: Mutex::new(Shown {
                report: None,
                desired: def.state,
                since: SystemTime::now(),
                plugin: checked.plugin.name().to_owned(),
                version: checked.spec.version.clone(),
                last_swap: None,
                carried: Totals::default(),
            }),
            managed: tokio::sync::Mutex::new(Managed {
                def: def.clone(),
                checked: checked.clone(),
                running: None,
                deleted: false,
            }),
        });
        // The name is taken here, atomically, before anything is stored.
        {
            let mut entries = self.entries.lock().expect("entries lock");
            if entries.contains_key(&name) {
                return Err(AdminError::Conflict(format!(
                    "a connector named {name:?} exists; delete it first or choose another name"
                )));
            }
            entries.insert(name.clone(), entry.clone());
        }
        let prepared = (|| {
            // Subscribed for the daemon's whole run, even while stopped.
            topic_layout(&*self.broker, &checked.config)?;
            if persist {
                self.store(&name, &def)?;
            }
            Ok::<(), AdminError>(())
        })();
        if let Err(e) = prepared {
            self.entries.lock().expect("entries lock").remove(&name);
            return Err(e);
        }
        let mut m = entry.managed.lock().await;
        if m.def.state != DesiredState::Stopped {
            let paused = m.def.state == DesiredState::Paused;
            self.start_running(&entry, &mut m, paused)?;
        }
        tracing::info!(connector = %name, state = ?m.def.state, "connector loaded");
        Ok(name)
    }

    fn start_running(
        &self,
        entry: &Entry,
        m: &mut Managed,
        paused: bool,
    ) -> Result<(), AdminError> {
        let options = StartOptions {
            paused,
            ignore_stored_offsets: m.def.offsets_reset,
        };
        let running =
            RunningConnector::start(m.checked.clone(), self.host_parts(&m.checked), options)?;
        let mut shown = entry.shown.lock().expect("shown lock");
        if let Some(old) = shown.report.take() {
            shown.carried = shown.carried.plus(Totals::of(&old));
        }
        shown.report = Some(running.report().clone());
        shown.since = SystemTime::now();
        m.running = Some(running);
        Ok(())
    }

    /// Stops the connector's instances (flush, commit, close). A run that
    /// started after an offsets reset has now committed from there, so the
    /// reset is done with; until then it holds across daemon restarts.
    async fn stop_running(&self, name: &str, m: &mut Managed) {
        if let Some(r) = m.running.take() {
            r.stop_and_wait().await;
            self.broker.sync_all().ok();
            if m.def.offsets_reset {
                m.def.offsets_reset = false;
                if let Err(e) = self.store(name, &m.def) {
                    tracing::error!(connector = %name, error = %e, "storing the definition");
                }
            }
        }
    }

    fn set_desired(
        &self,
        entry: &Entry,
        m: &mut Managed,
        state: DesiredState,
    ) -> Result<(), AdminError> {
        m.def.state = state;
        self.store(&entry.name, &m.def)?;
        let mut shown = entry.shown.lock().expect("shown lock");
        shown.desired = state;
        shown.since = SystemTime::now();
        Ok(())
    }

    /// Creates the connectors of a manifest text or one JSON connector, and
    /// starts them.
    pub async fn create(&self, request: CreateRequest) -> Result<Vec<String>, AdminError> {
        let path = request.path.map_or_else(
            || self.data_dir.join("connectors").join("created-by-api.toml"),
            PathBuf::from,
        );
        let toml = match (request.toml, request.connector) {
            (Some(t), None) => t,
            (None, Some(c)) => {
                if !c.is_object() {
                    return Err(invalid(
                        "`connector` must be a JSON object with the fields of a [[connector]] table",
                    ));
                }
                toml::to_string(&serde_json::json!({ "connector": [c] })).map_err(|e| {
                    invalid(format!(
                        "the connector cannot be written as TOML: {e} (null values are not allowed)"
                    ))
                })?
            }
            _ => {
                return Err(invalid(
                    "give exactly one of `toml` (a manifest's text) and `connector` (a JSON object)",
                ));
            }
        };
        // The whole text first, so that errors point into the file as given.
        let manifest = Manifest::parse(&path, &toml).map_err(invalid)?;
        pipeline::check(&manifest, &self.plugins)
            .await
            .map_err(invalid)?;
        let defs = split(&toml, &path)?;
        let mut names = Vec::new();
        for def in &defs {
            let m = Manifest::parse(&def.path, &def.toml).map_err(invalid)?;
            let name = m.connectors[0].get_ref().name.get_ref().clone();
            if self
                .entries
                .lock()
                .expect("entries lock")
                .contains_key(&name)
            {
                return Err(AdminError::Conflict(format!(
                    "a connector named {name:?} exists; update it, or delete it first"
                )));
            }
            self.check(def).await?;
        }
        for def in defs {
            names.push(self.add(def, true).await?);
        }
        Ok(names)
    }

    /// Every connector, one line each.
    pub fn list(&self) -> Vec<ConnectorSummary> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .expect("entries lock")
            .values()
            .cloned()
            .collect();
        entries
            .iter()
            .map(|e| {
                let shown = e.shown.lock().expect("shown lock").clone();
                ConnectorSummary {
                    name: e.name.clone(),
                    kind: e.kind.to_string(),
                    plugin: format!("{} {}", shown.plugin, shown.version),
                    state: state_of(&shown),
                    records: shown.report.as_ref().map_or(0, |r| r.records()),
                    lag: shown.report.as_ref().and_then(|r| r.lag()),
                }
            })
            .collect()
    }

    /// A connector's definition.
    pub async fn get(&self, name: &str) -> Result<ConnectorInfo, AdminError> {
        let entry = self.entry(name)?;
        let m = self.lock(&entry).await?;
        let c = &m.checked.config;
        Ok(ConnectorInfo {
            name: entry.name.clone(),
            kind: c.kind.to_string(),
            plugin: c.plugin.get_ref().clone(),
            topics: c.topic_names(),
            parallelism: *c.parallelism.get_ref(),
            config: serde_json::to_value(&c.config).unwrap_or_default(),
            state: m.def.state,
            toml: m.def.toml.clone(),
        })
    }

    /// A connector's status. Never waits for an operation on it.
    pub fn status(&self, name: &str) -> Result<ConnectorStatus, AdminError> {
        let entry = self.entry(name)?;
        let shown = entry.shown.lock().expect("shown lock").clone();
        let report = shown.report.as_ref();
        let error_info = |f: crate::supervisor::Failure| ErrorInfo {
            message: f.reason,
            at: rfc3339(f.at),
        };
        let records = report.map_or(0, |r| r.records());
        let bytes = report.map_or(0, |r| r.bytes());
        let refused = report.map_or(0, |r| r.refused());
        let out = if entry.kind == ConnectorKind::Sink {
            records.saturating_sub(refused)
        } else {
            records
        };
        let instances = report.map_or_else(Vec::new, |r| {
            r.instances
                .iter()
                .enumerate()
                .map(|(index, i)| {
                    let (state, since) = i.control.state();
                    InstanceStatus {
                        index: index as u32,
                        state: instance_state(state).to_owned(),
                        since: rfc3339(since),
                        restarts: i.restarts(),
                        last_error: i.last_error().map(error_info),
                        records: i.control.stats.records(),
                        bytes: i.control.stats.bytes(),
                        last_record_at: i.control.stats.last_record().map(rfc3339),
                    }
                })
                .collect()
        });
        let last_error = report.and_then(|r| r.last_error());
        let since = match report.map(|r| r.outcome()) {
            Some(ConnectorOutcome::Failed(f)) if shown.desired != DesiredState::Stopped => f.at,
            _ => shown.since,
        };
        Ok(ConnectorStatus {
            name: entry.name.clone(),
            kind: entry.kind.to_string(),
            plugin: shown.plugin.clone(),
            plugin_version: shown.version.clone(),
            state: state_of(&shown),
            since: rfc3339(since),
            restarts: report.map_or(0, |r| r.restarts()),
            last_error: last_error.map(error_info),
            records_in: records,
            records_out: out,
            bytes_in: bytes,
            bytes_out: bytes,
            dead_lettered: refused,
            lag: report.and_then(|r| r.lag()),
            last_record_at: report.and_then(|r| r.last_record()).map(rfc3339),
            last_swap: report.and_then(|r| r.last_swap()).or(shown.last_swap),
            instances,
        })
    }

    /// Replaces a connector's `[connector.config]` and restarts it (if it
    /// runs) with the new config, as Kafka Connect does.
    pub async fn update_config(
        &self,
        name: &str,
        config: serde_json::Value,
    ) -> Result<ConnectorInfo, AdminError> {
        let entry = self.entry(name)?;
        {
            let mut m = self.lock(&entry).await?;
            let table = json_to_toml_table(&config)?;
            let toml = edit_connector(&m.def.toml, |t| {
                t.insert("config", toml_edit::Item::Table(table.clone()));
            })?;
            let def = Definition {
                toml,
                ..m.def.clone()
            };
            let checked = Arc::new(self.check(&def).await?);
            let was_running = m.running.is_some();
            self.stop_running(name, &mut m).await;
            m.def.toml = def.toml;
            m.checked = checked;
            self.store(name, &m.def)?;
            if was_running {
                let paused = m.def.state == DesiredState::Paused;
                self.start_running(&entry, &mut m, paused)?;
            }
        }
        self.get(name).await
    }

    /// Swaps a connector's module (see [`crate::supervisor`]); the definition
    /// changes only if the swap succeeds.
    pub async fn update_module(&self, name: &str, plugin: &str) -> Result<SwapOutcome, AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        let toml = edit_connector(&m.def.toml, |t| {
            t.insert("plugin", toml_edit::value(plugin));
        })?;
        let def = Definition {
            toml,
            ..m.def.clone()
        };
        let checked = Arc::new(self.check(&def).await?);
        let (live, pause) = match &m.running {
            Some(r) => {
                let (pause, swapped) = r
                    .swap(checked.clone())
                    .await
                    .map_err(|e| AdminError::SwapFailed(format!("{e:#}")))?;
                (swapped > 0, (swapped > 0).then_some(pause))
            }
            None => (false, None),
        };
        m.def.toml = def.toml;
        m.checked = checked.clone();
        self.store(name, &m.def)?;
        {
            let mut shown = entry.shown.lock().expect("shown lock");
            shown.plugin = checked.plugin.name().to_owned();
            shown.version = checked.spec.version.clone();
        }
        if !live {
            tracing::info!(connector = %name, "module changed; used at the next start");
        }
        Ok(SwapOutcome {
            name: name.to_owned(),
            plugin: checked.plugin.name().to_owned(),
            live,
            pause_ms: pause.map(|p| p.as_secs_f64() * 1000.0),
        })
    }

    /// Pauses a running connector.
    pub async fn pause(&self, name: &str) -> Result<(), AdminError> {
        self.set_paused(name, true).await
    }

    /// Resumes a paused connector.
    pub async fn resume(&self, name: &str) -> Result<(), AdminError> {
        self.set_paused(name, false).await
    }

    async fn set_paused(&self, name: &str, paused: bool) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.def.state == DesiredState::Stopped {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is stopped; use `start`"
            )));
        }
        let state = if paused {
            DesiredState::Paused
        } else {
            DesiredState::Running
        };
        self.set_desired(&entry, &mut m, state)?;
        if let Some(r) = &m.running {
            r.set_paused(paused);
        }
        Ok(())
    }

    /// Stops a connector: every instance flushes, commits and closes.
    pub async fn stop(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        self.set_desired(&entry, &mut m, DesiredState::Stopped)?;
        self.stop_running(name, &mut m).await;
        Ok(())
    }

    /// Starts a stopped (or ended) connector.
    pub async fn start(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.running
            .as_ref()
            .is_some_and(|r| r.report().outcome() == ConnectorOutcome::Running)
        {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is already running"
            )));
        }
        self.stop_running(name, &mut m).await;
        self.set_desired(&entry, &mut m, DesiredState::Running)?;
        self.start_running(&entry, &mut m, false)
    }

    /// Restarts every instance, or one.
    pub async fn restart(&self, name: &str, instance: Option<u32>) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        if m.def.state == DesiredState::Stopped {
            return Err(AdminError::Conflict(format!(
                "connector {name:?} is stopped; use `start`"
            )));
        }
        match (instance, m.running.as_ref()) {
            (Some(i), Some(r)) => {
                if i as usize >= r.report().instances.len() {
                    return Err(AdminError::NotFound(format!(
                        "connector {name:?} has {} instances (0 to {})",
                        r.report().instances.len(),
                        r.report().instances.len() - 1
                    )));
                }
                r.restart_instance(i as usize).await?;
            }
            _ => {
                self.stop_running(name, &mut m).await;
                let paused = m.def.state == DesiredState::Paused;
                self.start_running(&entry, &mut m, paused)?;
            }
        }
        Ok(())
    }

    /// Stops and deletes a connector: its definition, its group's offsets
    /// and its plugin state.
    pub async fn delete(&self, name: &str) -> Result<(), AdminError> {
        let entry = self.entry(name)?;
        let mut m = self.lock(&entry).await?;
        self.stop_running(name, &mut m).await;
        let path = self
            .data_dir
            .join("connectors")
            .join(format!("{name}.json"));
        std::fs::remove_file(&path)
            .map_err(|e| AdminError::Internal(format!("cannot remove {}: {e}", path.display())))?;
        self.broker
            .forget_connector(name)
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        m.deleted = true;
        self.entries.lock().expect("entries lock").remove(name);
        tracing::info!(connector = %name, "connector deleted");
        Ok(())
    }

    /// A sink's committed offsets, or a source's stored positions.
    pub async fn offsets(&self, name: &str) -> Result<Offsets, AdminError> {
        let entry = self.entry(name)?;
        let m = self.lock(&entry).await?;
        let c = &m.checked.config;
        let mut offsets = Offsets {
            name: name.to_owned(),
            partitions: Vec::new(),
            positions: Vec::new(),
        };
        match c.kind {
            ConnectorKind::Sink => {
                for topic in c.topic_names() {
                    let partitions = self.broker.ensure_topic(&topic).map_err(internal)?;
                    for p in 0..partitions {
                        offsets.partitions.push(PartitionOffset {
                            committed: self.broker.committed_offset(name, &topic, p),
                            start: self.broker.start_offset(&topic, p).map_err(internal)?,
                            end: self.broker.end_offset(&topic, p).map_err(internal)?,
                            topic: topic.clone(),
                            partition: p,
                        });
                    }
                }
            }
            ConnectorKind::Source => {
                for i in 0..*c.parallelism.get_ref() {
                    let producer = format!("{name}/{i}");
                    let position = self.broker.source_position(&producer);
                    offsets.positions.push(SourcePosition {
                        producer,
                        position_hex: position
                            .map(|p| p.iter().map(|b| format!("{b:02x}")).collect()),
                    });
                }
            }
        }
        Ok(offsets)
    }

    /// Resets a stopped sink's committed offsets (KIP-875: only while
    /// stopped). At its next start the sink resumes there, even if it
    /// stores offsets of its own.
    pub async fn reset_offsets(
        &self,
        name: &str,
        request: ResetRequest,
    ) -> Result<Offsets, AdminError> {
        let entry = self.entry(name)?;
        {
            let mut m = self.lock(&entry).await?;
            if m.def.state != DesiredState::Stopped || m.running.is_some() {
                return Err(AdminError::Conflict(format!(
                    "connector {name:?} is not stopped; offsets change only while it is stopped: \
                     `sluice connectors stop {name}` first"
                )));
            }
            let c = m.checked.config.clone();
            if c.kind == ConnectorKind::Source {
                return Err(AdminError::Invalid(format!(
                    "connector {name:?} is a source; resetting a source's position is not \
                     supported yet (delete and create it under a new name to start over)"
                )));
            }
            let mut list = Vec::new();
            for topic in c.topic_names() {
                if request.topic.as_ref().is_some_and(|t| *t != topic) {
                    continue;
                }
                let partitions = self.broker.ensure_topic(&topic).map_err(internal)?;
                for p in 0..partitions {
                    if request.partition.is_some_and(|want| want != p) {
                        continue;
                    }
                    let start = self.broker.start_offset(&topic, p).map_err(internal)?;
                    let end = self.broker.end_offset(&topic, p).map_err(internal)?;
                    let to = match (request.to.as_str(), request.offset) {
                        ("earliest", _) => start,
                        ("latest", _) => end,
                        ("offset", Some(o)) => o.clamp(start, end),
                        _ => {
                            return Err(invalid(
                                "`to` must be `earliest`, `latest`, or `offset` with an `offset`",
                            ));
                        }
                    };
                    list.push((topic.clone(), p, to));
                }
            }
            if list.is_empty() {
                return Err(AdminError::NotFound(format!(
                    "connector {name:?} reads no such topic or partition"
                )));
            }
            self.broker
                .commit_offsets(name, &list)
                .await
                .map_err(internal)?;
            m.def.offsets_reset = true;
            self.store(name, &m.def)?;
            tracing::info!(connector = %name, offsets = ?list, "offsets reset");
        }
        self.offsets(name).await
    }

    /// The built-in plugins with their specs.
    pub async fn plugins(&self) -> Result<Vec<PluginInfo>, AdminError> {
        let mut out = Vec::new();
        for name in builtin_names() {
            out.push(self.plugin(name).await?);
        }
        Ok(out)
    }

    /// One plugin (a built-in name or a `.wasm` path on the daemon's host).
    pub async fn plugin(&self, name: &str) -> Result<PluginInfo, AdminError> {
        let reference = PluginRef::resolve(name, &self.data_dir)
            .map_err(|e| AdminError::NotFound(e.to_string()))?;
        let plugin = self
            .plugins
            .load(&reference)
            .map_err(|e| AdminError::NotFound(e.to_string()))?;
        let spec = self
            .plugins
            .spec(&plugin)
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?;
        Ok(PluginInfo {
            name: spec.name,
            kind: plugin.kind().to_string(),
            version: spec.version,
            description: spec.description,
            config_schema: spec.config_schema,
        })
    }

    /// Checks a config document against a plugin's schema.
    pub async fn validate(
        &self,
        plugin: &str,
        config: &serde_json::Value,
    ) -> Result<Validation, AdminError> {
        let info = self.plugin(plugin).await?;
        let validator = jsonschema::validator_for(&info.config_schema)
            .map_err(|e| AdminError::Internal(format!("the plugin's schema is not valid: {e}")))?;
        let errors: Vec<String> = validator
            .iter_errors(config)
            .map(|e| {
                let field = e
                    .instance_path()
                    .as_str()
                    .trim_start_matches('/')
                    .replace('/', ".");
                if field.is_empty() {
                    e.to_string()
                } else {
                    format!("{field}: {e}")
                }
            })
            .collect();
        Ok(Validation {
            valid: errors.is_empty(),
            errors,
        })
    }

    /// Measures every running sink's lag.
    pub fn measure_lag(&self) {
        for (_, _, shown) in self.snapshot() {
            if let Some(r) = &shown.report {
                r.measure_lag(&*self.broker);
            }
        }
    }

    fn snapshot(&self) -> Vec<(String, ConnectorKind, Shown)> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .expect("entries lock")
            .values()
            .cloned()
            .collect();
        entries
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.kind,
                    e.shown.lock().expect("shown lock").clone(),
                )
            })
            .collect()
    }

    /// The Prometheus exposition of every connector.
    pub fn render_metrics(&self) -> String {
        let rows: Vec<super::metrics::Row> = self
            .snapshot()
            .into_iter()
            .map(|(name, kind, shown)| super::metrics::Row {
                state: state_of(&shown),
                totals: shown
                    .report
                    .as_ref()
                    .map_or(shown.carried, |r| shown.carried.plus(Totals::of(r))),
                lag: shown.report.as_ref().and_then(|r| r.lag()),
                failed_instances: shown.report.as_ref().map_or(0, |r| {
                    r.instances
                        .iter()
                        .filter(|i| i.control.state().0 == InstanceState::Failed)
                        .count() as u64
                }),
                name,
                kind,
            })
            .collect();
        self.metrics.render(&rows)
    }

    /// Stops every connector (flush, commit, close) and syncs the log; the
    /// definitions keep the state each was in, so the next start brings
    /// them back.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .expect("entries lock")
            .values()
            .cloned()
            .collect();
        for e in &entries {
            let m = e.managed.lock().await;
            if let Some(r) = &m.running {
                r.stop();
            }
        }
        for e in &entries {
            let mut m = e.managed.lock().await;
            if m.running.is_some() {
                // Stopped above; this waits, and marks a reset as done.
                // The definition keeps the state asked for.
                self.stop_running(&e.name, &mut m).await;
            }
        }
        if let Err(e) = self.broker.sync_all() {
            tracing::error!(error = %e, "syncing the log at shutdown");
        }
    }
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(e.to_string())
}

fn instance_state(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Starting => "starting",
        InstanceState::Running => "running",
        InstanceState::Paused => "paused",
        InstanceState::Restarting => "restarting",
        InstanceState::Finished => "finished",
        InstanceState::Stopped => "stopped",
        InstanceState::Failed => "failed",
    }
}

fn state_of(shown: &Shown) -> String {
    if shown.desired == DesiredState::Stopped {
        return "stopped".into();
    }
    match shown.report.as_ref().map(|r| r.outcome()) {
        None => "stopped".into(),
        Some(ConnectorOutcome::Failed(_)) => "failed".into(),
        Some(ConnectorOutcome::Finished) => "finished".into(),
        Some(ConnectorOutcome::Stopped) => "stopped".into(),
        Some(ConnectorOutcome::Running) if shown.desired == DesiredState::Paused => "paused".into(),
        Some(ConnectorOutcome::Running) => "running".into(),
    }
}

/// Splits a manifest's text into one definition per `[[connector]]`.
fn split(text: &str, path: &Path) -> Result<Vec<Definition>, AdminError> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    let Some(tables) = doc.get("connector").and_then(|c| c.as_array_of_tables()) else {
        return Err(invalid("no [[connector]] table"));
    };
    Ok(tables
        .iter()
        .map(|t| {
            let mut one = toml_edit::DocumentMut::new();
            let mut array = toml_edit::ArrayOfTables::new();
            array.push(t.clone());
            one.insert("connector", toml_edit::Item::ArrayOfTables(array));
            Definition {
                toml: one.to_string(),
                path: path.to_path_buf(),
                state: DesiredState::Running,
                offsets_reset: false,
            }
        })
        .collect())
}

/// Changes the one `[[connector]]` table of a definition.
fn edit_connector(
    text: &str,
    edit: impl FnOnce(&mut toml_edit::Table),
) -> Result<String, AdminError> {
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    let table = doc
        .get_mut("connector")
        .and_then(|c| c.as_array_of_tables_mut())
        .and_then(|a| a.get_mut(0))
        .ok_or_else(|| AdminError::Internal("a stored definition has no [[connector]]".into()))?;
    edit(table);
    Ok(doc.to_string())
}

fn json_to_toml_table(config: &serde_json::Value) -> Result<toml_edit::Table, AdminError> {
    if !config.is_object() {
        return Err(invalid("the config must be a JSON object"));
    }
    let text = toml::to_string(config)
        .map_err(|e| invalid(format!("the config cannot be written as TOML: {e}")))?;
    let doc: toml_edit::DocumentMut = text.parse().map_err(invalid)?;
    Ok(doc.as_table().clone())
}
