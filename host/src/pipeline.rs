//! Running a manifest: validate every connector against its plugin, open the
//! broker, start one pump per instance, and report when it is done.
//!
//! A pipeline whose sources are all bounded finishes by itself: each topic is
//! sealed once every source writing it has ended, and a sink finishes once
//! every topic it reads is sealed and read to the end. A pipeline with an
//! unbounded source runs until [`RunningPipeline::stop`] (Ctrl-C in the CLI).
//!
//! For now a failing instance stops the whole pipeline with its error;
//! restarts with backoff belong to the supervisor.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
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
    Assignment, PumpStats, SinkPump, SinkPumpConfig, SourceEnd, SourcePump, SourcePumpConfig,
    StopSignal, TopicSeal, TopicSealer,
};

/// A connector whose plugin is loaded and whose config its schema accepts.
#[derive(Debug)]
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
    let config = serde_json::to_value(&c.config).context("turning [connector.config] into JSON")?;
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
        problems.push(e.to_string());
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
    /// Failed with this error.
    Failed(String),
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
    ended: std::sync::Mutex<Option<Instant>>,
    /// The worst outcome of its ended instances; see [`Self::outcome`].
    worst: std::sync::Mutex<ConnectorOutcome>,
    /// Instances still running.
    running: AtomicU32,
}

impl ConnectorReport {
    fn new(name: String, kind: ConnectorKind) -> Self {
        ConnectorReport {
            name,
            kind,
            stats: Arc::new(PumpStats::default()),
            started: Instant::now(),
            ended: std::sync::Mutex::new(None),
            worst: std::sync::Mutex::new(ConnectorOutcome::Running),
            running: AtomicU32::new(0),
        }
    }

    /// Time from start to end (or to now).
    pub fn elapsed(&self) -> Duration {
        self.ended
            .lock()
            .expect("report lock")
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
    }

    /// How it ended, or `Running`. A failed instance makes the connector
    /// `Failed` at once; otherwise the worst outcome of its instances counts
    /// once the last has ended.
    pub fn outcome(&self) -> ConnectorOutcome {
        let worst = self.worst.lock().expect("report lock").clone();
        if self.running.load(Ordering::Acquire) > 0 && !matches!(worst, ConnectorOutcome::Failed(_))
        {
            ConnectorOutcome::Running
        } else {
            worst
        }
    }

    fn instance_ended(&self, outcome: ConnectorOutcome) {
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

/// A pipeline that is running.
#[derive(Debug)]
pub struct RunningPipeline {
    stop: StopSignal,
    tasks: JoinSet<()>,
    reports: Vec<Arc<ConnectorReport>>,
    broker: Arc<EmbeddedLog>,
    /// Kept for the instances' lifetime: its epoch ticker enforces `cpu`.
    _plugins: Arc<PluginHost>,
}

/// Opens the broker, opens every instance, and starts the pumps.
pub async fn start(
    manifest: &Manifest,
    plugins: Arc<PluginHost>,
    connectors: Vec<CheckedConnector>,
) -> anyhow::Result<RunningPipeline> {
    let data_dir = manifest.data_dir();
    let broker = Arc::new(
        EmbeddedLog::open(&data_dir, LogConfig::from(&manifest.broker))
            .with_context(|| format!("opening the embedded broker in {}", data_dir.display()))?,
    );
    let mut launcher = Launcher {
        seals: Seals::for_sources(&connectors),
        plugins,
        broker,
        stop: StopSignal::new(),
        tasks: JoinSet::new(),
    };
    let mut reports = Vec::new();
    for c in &connectors {
        let name = c.config.name.get_ref();
        let parallelism = *c.config.parallelism.get_ref();
        let state: Arc<dyn StateStore> = Arc::new(
            launcher
                .broker
                .connector_state(name)
                .with_context(|| format!("opening the state of connector {name:?}"))?,
        );
        let report = Arc::new(ConnectorReport::new(name.clone(), c.config.kind));
        reports.push(report.clone());
        let connector: Arc<str> = name.as_str().into();
        for index in 0..parallelism {
            let setup = InstanceSetup {
                connector: connector.clone(),
                index,
                count: parallelism,
                grants: c.grants.clone(),
                state: Some(state.clone()),
            };
            match c.config.kind {
                ConnectorKind::Source => launcher.start_source(c, setup, &report).await?,
                ConnectorKind::Sink => launcher.start_sink(c, setup, &report).await?,
            }
        }
        if report.running.load(Ordering::Acquire) == 0 {
            // Every instance stayed idle (more sink instances than partitions).
            *report.ended.lock().expect("report lock") = Some(Instant::now());
            *report.worst.lock().expect("report lock") = ConnectorOutcome::Finished;
        }
    }
    Ok(RunningPipeline {
        stop: launcher.stop,
        tasks: launcher.tasks,
        reports,
        broker: launcher.broker,
        _plugins: launcher.plugins,
    })
}

/// The seal of each topic that bounded sources in this run write, with the
/// number of source instances that have not ended yet.
#[derive(Debug, Default)]
struct Seals(HashMap<String, (Arc<TopicSealer>, TopicSeal, Arc<AtomicU32>)>);

impl Seals {
    fn for_sources(connectors: &[CheckedConnector]) -> Self {
        let mut writers: HashMap<String, u32> = HashMap::new();
        for c in connectors
            .iter()
            .filter(|c| c.config.kind == ConnectorKind::Source)
        {
            for t in c.config.topic_names() {
                *writers.entry(t).or_default() += *c.config.parallelism.get_ref();
            }
        }
        Seals(
            writers
                .into_iter()
                .map(|(topic, n)| {
                    let (sealer, seal) = TopicSeal::new();
                    (topic, (Arc::new(sealer), seal, Arc::new(AtomicU32::new(n))))
                })
                .collect(),
        )
    }

    /// What a sink of `topic` watches.
    fn seal(&self, topic: &str) -> TopicSeal {
        self.0
            .get(topic)
            .map_or_else(TopicSeal::never, |(_, seal, _)| seal.clone())
    }
}

/// Opens instances and spawns their pumps.
struct Launcher {
    plugins: Arc<PluginHost>,
    broker: Arc<EmbeddedLog>,
    stop: StopSignal,
    seals: Seals,
    tasks: JoinSet<()>,
}

impl Launcher {
    /// Runs one instance's pump as a task that reports how it ended.
    fn spawn(
        &mut self,
        report: &Arc<ConnectorReport>,
        index: u32,
        pump: impl Future<Output = ConnectorOutcome> + Send + 'static,
    ) {
        let span = tracing::info_span!("instance", connector = %report.name, index);
        let report = report.clone();
        report.running.fetch_add(1, Ordering::AcqRel);
        self.tasks
            .spawn(async move { report.instance_ended(pump.await) }.instrument(span));
    }

    async fn start_source(
        &mut self,
        c: &CheckedConnector,
        setup: InstanceSetup,
        report: &Arc<ConnectorReport>,
    ) -> anyhow::Result<()> {
        let name = c.config.name.get_ref();
        let index = setup.index;
        let topic = c.config.topic_names().remove(0);
        let partitions = self
            .broker
            .ensure_topic(&topic)
            .with_context(|| format!("creating topic {topic:?}"))?;
        let producer = format!("{name}/{index}");
        let mut instance = self.plugins.source(&c.plugin, &setup).await?;
        let resume = self.broker.source_position(&producer);
        instance
            .open(&c.config_json, resume.as_deref())
            .await
            .with_context(|| format!("opening source {name:?} instance {index}"))?;
        let pump = SourcePump {
            instance,
            broker: self.broker.clone(),
            topic: topic.clone(),
            partition: index % partitions,
            producer,
            config: SourcePumpConfig {
                max_records: c.config.batch.max_records,
                max_bytes: c.config.batch.max_bytes,
                linger: Duration::from_millis(c.config.batch.linger_ms),
            },
            stats: report.stats.clone(),
            stop: self.stop.clone(),
        };
        let (sealer, _, left) = self
            .seals
            .0
            .get(&topic)
            .expect("every source topic has a seal")
            .clone();
        let stop = self.stop.clone();
        self.spawn(report, index, async move {
            match pump.run().await {
                Ok(SourceEnd::EndOfStream) => {
                    tracing::info!("source reached its end");
                    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        sealer.seal();
                    }
                    ConnectorOutcome::Finished
                }
                Ok(SourceEnd::Stopped) => ConnectorOutcome::Stopped,
                Err(e) => instance_failed(&stop, &e),
            }
        });
        Ok(())
    }

    async fn start_sink(
        &mut self,
        c: &CheckedConnector,
        setup: InstanceSetup,
        report: &Arc<ConnectorReport>,
    ) -> anyhow::Result<()> {
        let name = c.config.name.get_ref();
        let index = setup.index;
        let mut instance = self.plugins.sink(&c.plugin, &setup).await?;
        let stored = instance
            .open(&c.config_json)
            .await
            .with_context(|| format!("opening sink {name:?} instance {index}"))?;
        let assignments = self.sink_assignments(c, index, &stored)?;
        if assignments.is_empty() {
            tracing::info!(connector = %name, index, "no partition left for this instance; it stays idle");
            return Ok(());
        }
        let pump = SinkPump {
            instance,
            broker: self.broker.clone(),
            group: name.clone(),
            assignments,
            config: SinkPumpConfig {
                max_bytes: c.config.batch.max_bytes,
                flush_interval: Duration::from_millis(c.config.flush_interval_ms),
            },
            stats: report.stats.clone(),
            stop: self.stop.clone(),
            connector: setup.connector.clone(),
        };
        let stop = self.stop.clone();
        self.spawn(report, index, async move {
            match pump.run().await {
                Ok(()) if stop.is_stopped() => ConnectorOutcome::Stopped,
                Ok(()) => {
                    tracing::info!("sink drained its topics");
                    ConnectorOutcome::Finished
                }
                Err(e) => instance_failed(&stop, &e),
            }
        });
        Ok(())
    }

    /// The partitions sink instance `index` reads (`p % parallelism ==
    /// index`), each from the offset the sink stored itself, else the
    /// group's committed offset, else the start.
    fn sink_assignments(
        &self,
        c: &CheckedConnector,
        index: u32,
        stored: &[SinkOffset],
    ) -> anyhow::Result<Vec<Assignment>> {
        let name = c.config.name.get_ref();
        let parallelism = *c.config.parallelism.get_ref();
        let mut assignments = Vec::new();
        for topic in c.config.topic_names() {
            let partitions = self
                .broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            for partition in (0..partitions).filter(|p| p % parallelism == index) {
                let wanted = stored
                    .iter()
                    .find(|o| o.topic == topic && o.partition == partition)
                    .map(|o| o.next_offset)
                    .or_else(|| self.broker.committed_offset(name, &topic, partition))
                    .unwrap_or(0);
                let end = self.broker.end_offset(&topic, partition)?;
                if wanted > end {
                    tracing::warn!(
                        connector = %name, topic = %topic, partition, committed = wanted, end,
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

/// Records an instance's failure and stops the pipeline: restarts with
/// backoff belong to the supervisor, which does not exist yet.
fn instance_failed(stop: &StopSignal, e: &anyhow::Error) -> ConnectorOutcome {
    tracing::error!(
        error = format!("{e:#}"),
        "instance failed; stopping the pipeline"
    );
    stop.stop();
    ConnectorOutcome::Failed(format!("{e:#}"))
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

    /// Waits for every pump to end, syncs the log, and returns the reports.
    pub async fn wait(mut self) -> anyhow::Result<Vec<Arc<ConnectorReport>>> {
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined {
                self.stop.stop();
                tracing::error!(error = %e, "a pump task panicked");
            }
        }
        self.broker
            .sync_all()
            .context("syncing the log at shutdown")?;
        Ok(self.reports)
    }
}
