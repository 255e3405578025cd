//! What the admin API shows of the daemon's connectors and plugins: the
//! request and answer types (with their OpenAPI schemas), and the reads
//! that build them. A read never waits for an operation on a connector,
//! except a definition's and offsets', which are what the operation changes.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::store::DesiredState;
use super::{Daemon, Shown, internal};
use crate::admin::AdminError;
use crate::admin::metrics::{Row, Totals};
use crate::broker::Broker;
use crate::cluster::Unit;
use crate::manifest::ConnectorKind;
use crate::plugin::{PluginRef, Spec, builtin_names};
use crate::pump::InstanceState;
use crate::supervisor::{ConnectorOutcome, SwapRecord};

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
    /// In cluster mode, the host that holds its lease (none while it is
    /// unassigned). Its state and counts are that host's to show: here it
    /// is `elsewhere` (or `unassigned`), with none counted.
    pub host: Option<String>,
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
    /// `running`, `paused`, `stopped`, `finished` or `failed`; while it
    /// runs, the worst state of an instance that is not running instead
    /// (`starting`, `restarting`, `failed`), with `(N of M instances)` when
    /// not all are in it. `last_error` says why.
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

/// What `list` and `status` show: the connector's state, or, while it runs,
/// the worst state of its instances when one is not running (as Kafka
/// Connect shows a FAILED task): `restarting`, or `failed (1 of 3
/// instances)` when not all are in it. The reason is the status's
/// `last_error`.
fn shown_state(shown: &Shown) -> String {
    let state = state_of(shown);
    if !matches!(state.as_str(), "running" | "paused") {
        return state;
    }
    let Some(report) = shown.report.as_ref() else {
        return state;
    };
    let rank = |s: InstanceState| match s {
        InstanceState::Failed => 3,
        InstanceState::Restarting => 2,
        InstanceState::Starting => 1,
        _ => 0,
    };
    let states: Vec<InstanceState> = report
        .instances
        .iter()
        .map(|i| i.control.state().0)
        .collect();
    let Some(worst) = states.iter().copied().max_by_key(|s| rank(*s)) else {
        return state;
    };
    if rank(worst) == 0 {
        return state;
    }
    let count = states.iter().filter(|s| **s == worst).count();
    if count == states.len() {
        instance_state(worst).to_owned()
    } else {
        format!(
            "{} ({count} of {} instances)",
            instance_state(worst),
            states.len()
        )
    }
}

/// The connector's own state, whatever its instances': `running`,
/// `paused`, `stopped`, `finished` or `failed` (`up` in the metrics).
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

impl Daemon {
    /// Every connector, one line each.
    pub fn list(&self) -> Vec<ConnectorSummary> {
        self.snapshot()
            .into_iter()
            .map(|(name, kind, shown)| ConnectorSummary {
                name,
                kind: kind.to_string(),
                plugin: format!("{} {}", shown.plugin, shown.version),
                state: shown_state(&shown),
                records: shown.report.as_ref().map_or(0, |r| r.records()),
                lag: shown.report.as_ref().and_then(|r| r.lag()),
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
            topics: c.topics_as_named(),
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
        let out = if entry.kind != ConnectorKind::Source {
            records.saturating_sub(refused)
        } else {
            records
        };
        let holders = self.holders.lock().expect("holders lock").clone();
        let instances = report.map_or_else(Vec::new, |r| {
            r.instances
                .iter()
                .enumerate()
                .map(|(index, i)| {
                    let (state, since) = i.control.state();
                    let mut shown = InstanceStatus {
                        index: index as u32,
                        state: instance_state(state).to_owned(),
                        since: rfc3339(since),
                        restarts: i.restarts(),
                        last_error: i.last_error().map(error_info),
                        records: i.control.stats.records(),
                        bytes: i.control.stats.bytes(),
                        last_record_at: i.control.stats.last_record().map(rfc3339),
                        host: None,
                    };
                    if let Some(cluster) = &self.cluster {
                        let unit = Unit {
                            connector: entry.name.clone(),
                            instance: index as u32,
                        };
                        shown.host = holders.get(&unit).map(|(host, _)| host.clone());
                        if shown.host.as_deref() != Some(cluster.host()) {
                            let away = if shown.host.is_some() {
                                "elsewhere"
                            } else {
                                "unassigned"
                            };
                            shown.state = away.into();
                            (shown.records, shown.bytes, shown.last_record_at) = (0, 0, None);
                        }
                    }
                    shown
                })
                .collect()
        });
        let last_error = report.and_then(|r| r.last_error());
        let since = match report.map(|r| r.outcome()) {
            Some(ConnectorOutcome::Failed(f)) if shown.desired != DesiredState::Stopped => f.at,
            _ => shown.since,
        };
        let state = match &self.cluster {
            // Its instances run on several hosts: the state asked for,
            // unless one here failed.
            Some(_) => match (shown.desired, report.map(|r| r.outcome())) {
                (DesiredState::Stopped, _) => "stopped".into(),
                (_, Some(ConnectorOutcome::Failed(_))) => "failed".into(),
                (DesiredState::Paused, _) => "paused".into(),
                (DesiredState::Running, _) => "running".into(),
            },
            None => shown_state(&shown),
        };
        Ok(ConnectorStatus {
            name: entry.name.clone(),
            kind: entry.kind.to_string(),
            plugin: shown.plugin.clone(),
            plugin_version: shown.version.clone(),
            state,
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
        if c.reads_topics() {
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
        if c.kind != ConnectorKind::Sink {
            for i in 0..*c.parallelism.get_ref() {
                let producer = format!("{name}/{i}");
                let position = self.broker.source_position(&producer).map_err(internal)?;
                offsets.positions.push(SourcePosition {
                    producer,
                    position_hex: position.map(|p| p.iter().map(|b| format!("{b:02x}")).collect()),
                });
            }
        }
        Ok(offsets)
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
        let spec = Spec {
            name: info.name,
            version: info.version,
            description: info.description,
            config_schema: info.config_schema,
        };
        let errors: Vec<String> = spec
            .check_config(config)
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .iter()
            .map(ToString::to_string)
            .collect();
        Ok(Validation {
            valid: errors.is_empty(),
            errors,
        })
    }

    /// The Prometheus exposition of every connector.
    pub fn render_metrics(&self) -> String {
        let rows: Vec<Row> = self
            .snapshot()
            .into_iter()
            .map(|(name, kind, shown)| Row {
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
}
