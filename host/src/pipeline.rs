//! Running a manifest: validate every connector against its plugin, open the
//! broker, start one pump per instance, and report when it is done.
//!
//! A pipeline whose sources are all bounded finishes by itself: each topic is
//! sealed once every source writing it has ended, and a sink finishes once
//! every topic it reads is sealed and read to the end. A pipeline with an
//! unbounded source runs until [`RunningPipeline::stop`] (Ctrl-C in the CLI).
//!
//! Each instance runs under the [`crate::supervisor`]: a failing instance is
//! restarted with backoff on its own, and a connector whose instance has
//! failed for good is `failed` while every other connector runs on.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::broker::Broker;
use crate::broker::embedded::{EmbeddedLog, LogConfig};
use crate::grants::GrantSet;
use crate::manifest::{ConnectorConfig, ConnectorKind, Manifest, ManifestError};
use crate::plugin::instance::SinkOffset;
use crate::plugin::{InstanceSetup, Plugin, PluginHost, PluginKind, PluginRef, Spec, StateStore};
use crate::pump::{
    Assignment, DeadLetter, PumpStats, SinkPump, SinkPumpConfig, SourceEnd, SourcePump,
    SourcePumpConfig, StopSignal, TopicSeal, TopicSealer,
};
use crate::secrets::{Redactor, Secrets};
use crate::supervisor::{self, Failure, InstanceEnd, Life, LifeEnd, RestartPolicy, Watcher};

/// A connector whose plugin is loaded and whose config its schema accepts.
/// Its `Debug` leaves out the config document, which may hold secrets.
pub struct CheckedConnector {
    /// As written in the manifest.
    pub config: ConnectorConfig,
    /// The loaded plugin.
    pub plugin: Plugin,
    /// What the plugin says of itself.
    pub spec: Spec,
    /// The config as the JSON document the plugin receives.
    pub config_json: String,
    /// What it may reach.
    pub grants: GrantSet,
    /// Its resolved secrets (already substituted into `config_json`).
    pub secrets: Secrets,
    /// How its failed instances are restarted.
    pub restart: RestartPolicy,
}

impl std::fmt::Debug for CheckedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedConnector")
            .field("name", self.config.name.get_ref())
            .field("plugin", &self.plugin)
            .field("grants", &self.grants)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

/// Every problem found in a manifest's connectors, not only the first.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n"))]
pub struct ValidationErrors(pub Vec<anyhow::Error>);

/// Loads each connector's plugin, checks its kind, and checks its config
/// against the plugin's own JSON Schema.
pub async fn check(
    manifest: &Manifest,
    plugins: &PluginHost,
) -> Result<Vec<CheckedConnector>, ValidationErrors> {
    let mut checked = Vec::new();
    let mut errors = Vec::new();
    for (index, c) in manifest.connectors.iter().enumerate() {
        let c = c.get_ref();
        match check_one(manifest, plugins, index, c).await {
            Ok(ok) => checked.push(ok),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(ValidationErrors(errors))
    }
}

async fn check_one(
    manifest: &Manifest,
    plugins: &PluginHost,
    index: usize,
    c: &ConnectorConfig,
) -> anyhow::Result<CheckedConnector> {
    let name = c.name.get_ref();
    let at_plugin = |e: &dyn std::fmt::Display| {
        ManifestError::at(
            &manifest.path,
            &manifest.source,
            Some(c.plugin.span()),
            e.to_string(),
        )
        .field(format!("connector[{index}].plugin"))
    };
    let reference = PluginRef::resolve(c.plugin.get_ref(), &manifest.base_dir)
        .map_err(|e| at_plugin(&e).help("`sluice plugin list` shows the built-in plugins"))?;
    let plugin = plugins.load(&reference).map_err(|e| at_plugin(&e))?;
    let needed = match c.kind {
        ConnectorKind::Source => PluginKind::Source,
        ConnectorKind::Sink => PluginKind::Sink,
    };
    plugin.expect_kind(needed).map_err(|e| {
        at_plugin(&e).help(format!(
            "use a {needed} plugin here, or change `kind` to match the plugin"
        ))
    })?;
    let spec = plugins.spec(&plugin).await.with_context(|| {
        format!(
            "reading the spec of plugin {} for connector {name:?}",
            plugin.name()
        )
    })?;
    let secrets = Secrets::resolve(manifest, c).map_err(|e| {
        let span = c.grants.secrets.values().next().map_or(c.name.span(), |s| s.span());
        ManifestError::at(&manifest.path, &manifest.source, Some(span), e.to_string())
            .field(format!("connector[{index}].grants.secrets"))
            .help("set the variable or create the file before running; the manifest names only where a secret comes from")
    })?;
    let redactor = Redactor::new(secrets.values());
    let mut config =
        serde_json::to_value(&c.config).context("turning [connector.config] into JSON")?;
    secrets.substitute(&mut config);
    let validator = jsonschema::validator_for(&spec.config_schema).map_err(|e| {
        anyhow::anyhow!(
            "plugin {} publishes a config schema that is not valid JSON Schema: {e}",
            plugin.name()
        )
    })?;
    let mut problems = Vec::new();
    for error in validator.iter_errors(&config) {
        let pointer = error.instance_path().as_str().to_owned();
        let field = pointer.trim_start_matches('/').replace('/', ".");
        let span = manifest
            .config_span(index, &pointer)
            .or(Some(c.plugin.span()));
        let mut e = ManifestError::at(
            &manifest.path,
            &manifest.source,
            span,
            format!(
                "connector {name:?}: {error} (checked against the config schema of plugin {})",
                plugin.name()
            ),
        )
        .field(if field.is_empty() {
            format!("connector[{index}].config")
        } else {
            format!("connector[{index}].config.{field}")
        });
        e = e.help(schema_help(&spec.config_schema, &pointer, plugin.name()));
        problems.push(redactor.redact(&e.to_string()).into_owned());
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n\n"));
    }
    Ok(CheckedConnector {
        config: c.clone(),
        grants: GrantSet::from_manifest(manifest, c),
        plugin,
        spec,
        config_json: config.to_string(),
        secrets,
        restart: RestartPolicy::from_config(c),
    })
}

/// What the schema says of the field at `pointer`, for the fix line.
fn schema_help(schema: &serde_json::Value, pointer: &str, plugin: &str) -> String {
    let mut node = schema;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        match node.get("properties").and_then(|p| p.get(part)) {
            Some(n) => node = n,
            None => break,
        }
    }
    let mut help = String::new();
    if !pointer.is_empty() {
        if let Some(ty) = node.get("type") {
            let _ = write!(help, "expects {ty}");
        }
        if let Some(d) = node.get("description").and_then(|d| d.as_str()) {
            let d = d.trim_end_matches('.');
            let _ = write!(help, "{}{d}", if help.is_empty() { "" } else { ": " });
        }
    } else if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        let _ = write!(help, "its fields are: {}", names.join(", "));
    }
    if !help.is_empty() {
        help.push_str("; ");
    }
    let _ = write!(
        help,
        "`sluice plugin inspect {plugin}` shows the whole schema"
    );
    help
}

/// How a connector ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectorOutcome {
    /// Still running.
    Running,
    /// A bounded source reached its end, or a sink drained its topics.
    Finished,
    /// Stopped by request.
    Stopped,
    /// An instance failed for good: the reason and the time.
    Failed(Failure),
}

/// Live counters and the end state of one connector.
#[derive(Debug)]
pub struct ConnectorReport {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ConnectorKind,
    /// Counters of all its instances.
    pub stats: Arc<PumpStats>,
    /// When it started.
    pub started: Instant,
    /// When its last instance ended, once it has.
    ended: Mutex<Option<Instant>>,
    /// The worst outcome of its ended instances; see [`Self::outcome`].
    worst: Mutex<ConnectorOutcome>,
    /// Instances still running.
    running: AtomicU32,
    /// Restarts of its instances so far.
    restarts: AtomicU32,
    /// The last failure of any of its instances.
    last_error: Mutex<Option<Failure>>,
    /// A sink's dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// The topics a sink reads, with their partition counts.
    reads: Vec<(String, u32)>,
    /// Records in those topics that the sink's group has not committed.
    lag: AtomicU64,
}

impl ConnectorReport {
    fn new(name: String, kind: ConnectorKind) -> Self {
        ConnectorReport {
            name,
            kind,
            stats: Arc::new(PumpStats::default()),
            started: Instant::now(),
            ended: Mutex::new(None),
            worst: Mutex::new(ConnectorOutcome::Running),
            running: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            last_error: Mutex::new(None),
            dead_letter_topic: None,
            reads: Vec::new(),
            lag: AtomicU64::new(0),
        }
    }

    /// A sink's lag: records in its topics that it has not committed, as
    /// last measured (every [`LAG_EVERY`] while running, and at the end).
    /// `None` for a source.
    pub fn lag(&self) -> Option<u64> {
        (self.kind == ConnectorKind::Sink).then(|| self.lag.load(Ordering::Relaxed))
    }

    fn measure_lag(&self, broker: &impl Broker) {
        let mut lag = 0;
        for (topic, partitions) in &self.reads {
            for p in 0..*partitions {
                let end = broker.end_offset(topic, p).unwrap_or(0);
                let from = broker
                    .committed_offset(&self.name, topic, p)
                    .unwrap_or(0)
                    .max(broker.start_offset(topic, p).unwrap_or(0));
                lag += end.saturating_sub(from);
            }
        }
        self.lag.store(lag, Ordering::Relaxed);
    }

    /// Time from start to end (or to now).
    pub fn elapsed(&self) -> Duration {
        self.ended
            .lock()
            .expect("report lock")
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
    }

    /// How it ended, or `Running`. An instance that failed for good makes
    /// the connector `Failed` at once; otherwise the worst outcome of its
    /// instances counts once the last has ended.
    pub fn outcome(&self) -> ConnectorOutcome {
        let worst = self.worst.lock().expect("report lock").clone();
        if self.running.load(Ordering::Acquire) > 0 && !matches!(worst, ConnectorOutcome::Failed(_))
        {
            ConnectorOutcome::Running
        } else {
            worst
        }
    }

    /// Restarts of its instances so far.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// The last failure of any of its instances, restarted or not.
    pub fn last_error(&self) -> Option<Failure> {
        self.last_error.lock().expect("report lock").clone()
    }

    fn instance_ended(&self, end: InstanceEnd) {
        let outcome = match end {
            InstanceEnd::Finished => ConnectorOutcome::Finished,
            InstanceEnd::Stopped => ConnectorOutcome::Stopped,
            InstanceEnd::Failed(f) => {
                *self.last_error.lock().expect("report lock") = Some(f.clone());
                ConnectorOutcome::Failed(f)
            }
        };
        let rank = |o: &ConnectorOutcome| match o {
            ConnectorOutcome::Running => 0,
            ConnectorOutcome::Finished => 1,
            ConnectorOutcome::Stopped => 2,
            ConnectorOutcome::Failed(_) => 3,
        };
        {
            let mut worst = self.worst.lock().expect("report lock");
            if rank(&outcome) > rank(&worst) {
                *worst = outcome;
            }
        }
        if self.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.ended.lock().expect("report lock") = Some(Instant::now());
        }
    }
}

impl Watcher for ConnectorReport {
    fn failed(&self, error: &Failure, _delay: Duration) {
        *self.last_error.lock().expect("report lock") = Some(error.clone());
    }

    fn restarted(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// A pipeline that is running.
#[derive(Debug)]
pub struct RunningPipeline {
    stop: StopSignal,
    tasks: JoinSet<()>,
    reports: Vec<Arc<ConnectorReport>>,
    broker: Arc<EmbeddedLog>,
    lag_task: tokio::task::JoinHandle<()>,
    /// Kept for the instances' lifetime: its epoch ticker enforces `cpu`.
    _plugins: Arc<PluginHost>,
}

/// Opens the broker and starts every instance under its supervisor.
pub async fn start(
    manifest: &Manifest,
    plugins: Arc<PluginHost>,
    connectors: Vec<CheckedConnector>,
) -> anyhow::Result<RunningPipeline> {
    let data_dir = manifest.data_dir();
    let broker = Arc::new(
        EmbeddedLog::open(&data_dir, LogConfig::from_manifest(manifest))
            .with_context(|| format!("opening the embedded broker in {}", data_dir.display()))?,
    );
    // Every secret of the manifest is masked in every connector's output.
    let redactor = Redactor::new(connectors.iter().flat_map(|c| c.secrets.values()));
    let seals = Arc::new(Seals::for_writers(&connectors));
    // Every topic exists, and every sink has subscribed, before any source
    // writes, so that retention keeps every record a sink has not committed.
    let layouts = connectors
        .iter()
        .map(|c| topic_layout(&*broker, &c.config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stop = StopSignal::new();
    let mut tasks = JoinSet::new();
    let mut reports = Vec::new();
    for (c, layout) in connectors.into_iter().zip(layouts) {
        let c = Arc::new(c);
        let name = c.config.name.get_ref();
        let parallelism = *c.config.parallelism.get_ref();
        let state: Arc<dyn StateStore> = Arc::new(
            broker
                .connector_state(name)
                .with_context(|| format!("opening the state of connector {name:?}"))?,
        );
        let mut report = ConnectorReport::new(name.clone(), c.config.kind);
        let (first_topic, first_partitions) = layout[0].clone();
        if c.config.kind == ConnectorKind::Sink {
            report.dead_letter_topic = Some(c.config.dead_letter_topic());
            report.reads = layout;
        }
        let report = Arc::new(report);
        reports.push(report.clone());
        let connector: Arc<str> = name.as_str().into();
        for index in 0..parallelism {
            let shared = Shared {
                connector: c.clone(),
                plugins: plugins.clone(),
                broker: broker.clone(),
                setup: InstanceSetup {
                    connector: connector.clone(),
                    index,
                    count: parallelism,
                    grants: c.grants.clone(),
                    state: Some(state.clone()),
                    redactor: redactor.clone(),
                },
                stats: report.stats.clone(),
                stop: stop.clone(),
            };
            let supervision = Supervision {
                policy: c.restart,
                stop: stop.clone(),
                report: report.clone(),
                redactor: redactor.clone(),
                writes: seals.writers(&written_topic(&c.config)),
                group: (c.config.kind == ConnectorKind::Sink)
                    .then(|| (broker.clone(), name.clone())),
                span: tracing::info_span!("instance", connector = %name, index),
            };
            match c.config.kind {
                ConnectorKind::Source => supervision.spawn(
                    &mut tasks,
                    SourceLife {
                        producer: format!("{name}/{index}"),
                        partition: index % first_partitions,
                        topic: first_topic.clone(),
                        shared,
                    },
                ),
                ConnectorKind::Sink => supervision.spawn(
                    &mut tasks,
                    SinkLife {
                        shared,
                        seals: seals.clone(),
                    },
                ),
            }
        }
    }
    let lag_task = {
        let (broker, reports) = (Arc::downgrade(&broker), reports.clone());
        tokio::spawn(async move {
            // Until the pipeline is gone.
            while let Some(broker) = broker.upgrade() {
                for r in &reports {
                    r.measure_lag(&*broker);
                }
                drop(broker);
                tokio::time::sleep(LAG_EVERY).await;
            }
        })
    };
    Ok(RunningPipeline {
        stop,
        tasks,
        reports,
        broker,
        lag_task,
        _plugins: plugins,
    })
}

/// How often sinks' lag is measured while the pipeline runs.
pub const LAG_EVERY: Duration = Duration::from_millis(250);

/// Creates the topics a connector writes (source) or reads (sink), and
/// subscribes a sink to those it reads; returns each with its partitions.
fn topic_layout(broker: &impl Broker, c: &ConnectorConfig) -> anyhow::Result<Vec<(String, u32)>> {
    let name = c.name.get_ref();
    c.topic_names()
        .into_iter()
        .map(|topic| {
            let partitions = broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            if c.kind == ConnectorKind::Sink {
                broker
                    .subscribe(name, &topic)
                    .with_context(|| format!("subscribing {name} to topic {topic:?}"))?;
            }
            Ok((topic, partitions))
        })
        .collect()
}

/// The topic a connector's instances write: a source's topic, or a sink's
/// dead-letter topic.
fn written_topic(c: &ConnectorConfig) -> String {
    match c.kind {
        ConnectorKind::Source => c.topic_names().remove(0),
        ConnectorKind::Sink => c.dead_letter_topic(),
    }
}

/// The instances writing one topic in this run, and the seal that closes
/// when the last of them has ended.
#[derive(Debug)]
struct Writers {
    sealer: TopicSealer,
    seal: TopicSeal,
    left: AtomicU32,
}

impl Writers {
    /// One writer has ended for good: a source reached its end or failed, a
    /// sink drained its topics or failed. Either way it writes no more.
    fn ended(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sealer.seal();
        }
    }
}

/// The writers of each topic written in this run.
#[derive(Debug, Default)]
struct Seals(HashMap<String, Arc<Writers>>);

impl Seals {
    fn for_writers(connectors: &[CheckedConnector]) -> Self {
        let mut writers: HashMap<String, u32> = HashMap::new();
        for c in connectors {
            *writers.entry(written_topic(&c.config)).or_default() +=
                *c.config.parallelism.get_ref();
        }
        Seals(
            writers
                .into_iter()
                .map(|(topic, n)| {
                    let (sealer, seal) = TopicSeal::new();
                    let left = AtomicU32::new(n);
                    (topic, Arc::new(Writers { sealer, seal, left }))
                })
                .collect(),
        )
    }

    fn writers(&self, topic: &str) -> Option<Arc<Writers>> {
        self.0.get(topic).cloned()
    }

    /// What a sink of `topic` watches.
    fn seal(&self, topic: &str) -> TopicSeal {
        self.0
            .get(topic)
            .map_or_else(TopicSeal::never, |w| w.seal.clone())
    }
}

/// How one instance is run: under the supervisor, reporting to its
/// connector, and sealing the topic it writes once it has ended for good.
struct Supervision {
    policy: RestartPolicy,
    stop: StopSignal,
    report: Arc<ConnectorReport>,
    redactor: Redactor,
    writes: Option<Arc<Writers>>,
    /// A sink's consumer group, released when the sink fails for good so
    /// that its backlog no longer holds the sources back.
    group: Option<(Arc<EmbeddedLog>, String)>,
    span: tracing::Span,
}

impl Supervision {
    fn spawn(self, tasks: &mut JoinSet<()>, life: impl Life + 'static) {
        let Supervision {
            policy,
            stop,
            report,
            redactor,
            writes,
            group,
            span,
        } = self;
        report.running.fetch_add(1, Ordering::AcqRel);
        tasks.spawn(
            async move {
                let end = supervisor::supervise(life, policy, &stop, &*report, &redactor).await;
                if !matches!(end, InstanceEnd::Stopped)
                    && let Some(w) = writes
                {
                    w.ended();
                }
                if matches!(end, InstanceEnd::Failed(_))
                    && let Some((broker, group)) = group
                {
                    broker.release(&group);
                }
                report.instance_ended(end);
            }
            .instrument(span),
        );
    }
}

/// What every life of one instance shares.
struct Shared {
    connector: Arc<CheckedConnector>,
    plugins: Arc<PluginHost>,
    broker: Arc<EmbeddedLog>,
    setup: InstanceSetup,
    stats: Arc<PumpStats>,
    stop: StopSignal,
}

impl Shared {
    fn name(&self) -> &str {
        self.connector.config.name.get_ref()
    }
}

/// A source instance: each life opens at the position stored with the
/// last batch it appended, and runs the pump.
struct SourceLife {
    shared: Shared,
    topic: String,
    partition: u32,
    producer: String,
}

impl Life for SourceLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = &s.connector;
        let index = s.setup.index;
        let mut instance = s.plugins.source(&c.plugin, &s.setup).await?;
        let resume = s.broker.source_position(&self.producer);
        instance
            .open(&c.config_json, resume.as_deref())
            .await
            .with_context(|| format!("opening source {:?} instance {index}", s.name()))?;
        let pump = SourcePump {
            instance,
            broker: s.broker.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            producer: self.producer.clone(),
            config: SourcePumpConfig {
                max_records: c.config.batch.max_records,
                max_bytes: c.config.batch.max_bytes,
                linger: Duration::from_millis(c.config.batch.linger_ms),
                retry: c.restart,
            },
            stats: s.stats.clone(),
            stop: s.stop.clone(),
        };
        Ok(match pump.run().await? {
            SourceEnd::EndOfStream => {
                tracing::info!("source reached its end");
                LifeEnd::Finished
            }
            SourceEnd::Stopped => LifeEnd::Stopped,
        })
    }
}

/// A sink instance: each life opens, resumes from the offsets the sink
/// stored itself or else its group's committed offsets, and runs the pump.
struct SinkLife {
    shared: Shared,
    seals: Arc<Seals>,
}

impl Life for SinkLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = &s.connector;
        let index = s.setup.index;
        let mut instance = s.plugins.sink(&c.plugin, &s.setup).await?;
        let stored = instance
            .open(&c.config_json)
            .await
            .with_context(|| format!("opening sink {:?} instance {index}", s.name()))?;
        let dead_letter = c.config.dead_letter_topic();
        let dead_letter = DeadLetter {
            partitions: s
                .broker
                .ensure_topic(&dead_letter)
                .with_context(|| format!("creating dead-letter topic {dead_letter:?}"))?,
            topic: dead_letter,
            connector: s.setup.connector.clone(),
            unsynced: Default::default(),
            stats: s.stats.clone(),
        };
        let assignments = self.assignments(&stored)?;
        if assignments.is_empty() {
            tracing::info!("no partition left for this instance; it stays idle");
            return Ok(LifeEnd::Finished);
        }
        let pump = SinkPump {
            instance,
            broker: s.broker.clone(),
            group: s.name().to_owned(),
            assignments,
            config: SinkPumpConfig {
                max_bytes: c.config.batch.max_bytes,
                flush_interval: Duration::from_millis(c.config.flush_interval_ms),
                retry: c.restart,
            },
            stats: s.stats.clone(),
            stop: s.stop.clone(),
            connector: s.setup.connector.clone(),
            dead_letter,
        };
        pump.run().await?;
        Ok(if s.stop.is_stopped() {
            LifeEnd::Stopped
        } else {
            tracing::info!("sink drained its topics");
            LifeEnd::Finished
        })
    }
}

impl SinkLife {
    /// The partitions this instance reads (`p % parallelism == index`), each
    /// from the offset the sink stored itself, else the group's committed
    /// offset, else the start.
    fn assignments(&self, stored: &[SinkOffset]) -> anyhow::Result<Vec<Assignment>> {
        let s = &self.shared;
        let name = s.name();
        let parallelism = s.setup.count;
        let mut assignments = Vec::new();
        for topic in s.connector.config.topic_names() {
            let partitions = s
                .broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            for partition in (0..partitions).filter(|p| p % parallelism == s.setup.index) {
                let wanted = stored
                    .iter()
                    .find(|o| o.topic == topic && o.partition == partition)
                    .map(|o| o.next_offset)
                    .or_else(|| s.broker.committed_offset(name, &topic, partition))
                    .unwrap_or(0);
                let end = s.broker.end_offset(&topic, partition)?;
                if wanted > end {
                    tracing::warn!(
                        topic = %topic, partition, committed = wanted, end,
                        "the committed offset is past the end of the log (it lost data it had \
                         acknowledged, e.g. to a power loss under fsync = \"never\"); resuming at the end"
                    );
                }
                assignments.push(Assignment {
                    topic: topic.clone(),
                    partition,
                    next: wanted.min(end),
                    seal: self.seals.seal(&topic),
                });
            }
        }
        Ok(assignments)
    }
}

impl RunningPipeline {
    /// Asks every pump to stop at its next batch boundary.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops the pipeline from elsewhere.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// Live reports, one per connector, in manifest order.
    pub fn reports(&self) -> &[Arc<ConnectorReport>] {
        &self.reports
    }

    /// Waits for every instance to end, syncs the log, and returns the
    /// reports.
    pub async fn wait(mut self) -> anyhow::Result<Vec<Arc<ConnectorReport>>> {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!(error = %e, "an instance task panicked");
            }
        }
        self.lag_task.abort();
        for r in &self.reports {
            r.measure_lag(&*self.broker);
        }
        self.broker
            .sync_all()
            .context("syncing the log at shutdown")?;
        Ok(self.reports)
    }
}
