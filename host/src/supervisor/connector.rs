//! One running connector: its instances, each under its supervisor, and
//! how the host steers them while they run: stop, pause and resume, restart
//! one instance, and swap the plugin module in place.
//!
//! Both `sluice run` (a whole manifest, see [`crate::pipeline`]) and the
//! daemon (connectors created and changed through the admin API, see
//! [`crate::admin`]) run connectors through [`RunningConnector`].
//!
//! **A module swap** goes one instance at a time. The new module is loaded,
//! checked and instantiated while the old instance still runs; then the
//! instance's pump drains at a batch boundary (a sink flushes and commits;
//! a source has appended and committed everything it polled), and calls the
//! new instance's `open` at exactly the committed position. If `open` fails,
//! the old instance simply goes on, and instances already swapped are
//! swapped back: the connector keeps running its old module and its status
//! says why. Otherwise the old instance is closed and the new one goes on
//! from where the old one stopped: nothing is lost or repeated, and the
//! pause (from the drain to the switch) is measured and shown in status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{Failure, InstanceEnd, Life, LifeEnd, Watcher};
use crate::broker::Broker;
use crate::broker::StateStore;
use crate::broker::embedded::EmbeddedLog;
use crate::manifest::{ConnectorConfig, ConnectorKind};
use crate::pipeline::CheckedConnector;
use crate::plugin::instance::SinkOffset;
use crate::plugin::{InstanceSetup, PluginHost};
use crate::pump::{
    Assignment, DeadLetter, InstanceControl, InstanceState, PumpStats, Replacement, SinkPump,
    SinkPumpConfig, SourceEnd, SourcePump, SourcePumpConfig, SwapRequest, TopicSeal, TopicSealer,
};
use crate::secrets::Redactor;

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

/// The last module swap of a connector.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SwapRecord {
    /// When it was asked for (RFC 3339).
    pub at: String,
    /// The module before.
    pub from: String,
    /// The module asked for.
    pub to: String,
    /// True if every instance runs the new module.
    pub ok: bool,
    /// Why not, if not.
    pub error: Option<String>,
    /// The longest pause of an instance, from its drain to its switch, in
    /// milliseconds.
    pub pause_ms: Option<f64>,
}

/// One instance as its connector's report sees it.
#[derive(Debug)]
pub struct InstanceReport {
    /// Its control, state and counters.
    pub control: Arc<InstanceControl>,
    restarts: AtomicU32,
    last_error: Mutex<Option<Failure>>,
}

impl InstanceReport {
    /// Restarts of this instance after failures.
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Its last failure, restarted or not.
    pub fn last_error(&self) -> Option<Failure> {
        self.last_error.lock().expect("report lock").clone()
    }
}

/// Live counters, status and the end state of one connector.
#[derive(Debug)]
pub struct ConnectorReport {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ConnectorKind,
    /// When it started.
    pub started: Instant,
    /// Its instances.
    pub instances: Vec<InstanceReport>,
    /// When its last instance ended, once it has.
    ended: Mutex<Option<Instant>>,
    /// The worst outcome of its ended instances; see [`Self::outcome`].
    worst: Mutex<ConnectorOutcome>,
    /// Instances still running.
    running: AtomicU32,
    /// A sink's dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// The topics a sink reads, with their partition counts.
    reads: Vec<(String, u32)>,
    /// Records in those topics that the sink's group has not committed.
    lag: AtomicU64,
    /// The last module swap.
    last_swap: Mutex<Option<SwapRecord>>,
}

impl ConnectorReport {
    /// A sink's lag: records in its topics that it has not committed, as
    /// last measured (see [`Self::measure_lag`]). `None` for a source.
    pub fn lag(&self) -> Option<u64> {
        (self.kind == ConnectorKind::Sink).then(|| self.lag.load(Ordering::Relaxed))
    }

    /// Measures a sink's lag now.
    pub fn measure_lag(&self, broker: &impl Broker) {
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

    /// Records moved by all its instances.
    pub fn records(&self) -> u64 {
        self.sum(PumpStats::records)
    }

    /// Value bytes moved by all its instances.
    pub fn bytes(&self) -> u64 {
        self.sum(PumpStats::bytes)
    }

    /// Records its instances refused (dead-lettered).
    pub fn refused(&self) -> u64 {
        self.sum(PumpStats::refused)
    }

    /// When the last record moved, in any instance.
    pub fn last_record(&self) -> Option<SystemTime> {
        self.instances
            .iter()
            .filter_map(|i| i.control.stats.last_record())
            .max()
    }

    fn sum(&self, f: impl Fn(&PumpStats) -> u64) -> u64 {
        self.instances.iter().map(|i| f(&i.control.stats)).sum()
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
        self.instances.iter().map(InstanceReport::restarts).sum()
    }

    /// The last failure of any of its instances, restarted or not.
    pub fn last_error(&self) -> Option<Failure> {
        self.instances
            .iter()
            .filter_map(InstanceReport::last_error)
            .max_by_key(|f| f.at)
    }

    /// The last module swap, if any.
    pub fn last_swap(&self) -> Option<SwapRecord> {
        self.last_swap.lock().expect("report lock").clone()
    }

    fn instance_ended(&self, index: usize, end: InstanceEnd) {
        let control = &self.instances[index].control;
        let outcome = match end {
            InstanceEnd::Finished => {
                control.set_state(InstanceState::Finished);
                ConnectorOutcome::Finished
            }
            InstanceEnd::Stopped => {
                control.set_state(InstanceState::Stopped);
                ConnectorOutcome::Stopped
            }
            InstanceEnd::Failed(f) => {
                control.set_state(InstanceState::Failed);
                *self.instances[index]
                    .last_error
                    .lock()
                    .expect("report lock") = Some(f.clone());
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

    /// Instance `index` is being restarted by request: if it had failed for
    /// good and no other instance has, the connector is no longer failed.
    fn forgive(&self, index: usize) {
        let others_failed = self
            .instances
            .iter()
            .enumerate()
            .any(|(i, r)| i != index && r.control.state().0 == InstanceState::Failed);
        let mut worst = self.worst.lock().expect("report lock");
        if !others_failed && matches!(*worst, ConnectorOutcome::Failed(_)) {
            *worst = ConnectorOutcome::Running;
        }
    }

    fn instance_started(&self) {
        if self.running.fetch_add(1, Ordering::AcqRel) == 0 {
            *self.ended.lock().expect("report lock") = None;
            let mut worst = self.worst.lock().expect("report lock");
            if !matches!(*worst, ConnectorOutcome::Failed(_)) {
                *worst = ConnectorOutcome::Running;
            }
        }
    }
}

/// Tells an instance's report what its supervisor does.
struct InstanceWatcher {
    report: Arc<ConnectorReport>,
    index: usize,
}

impl Watcher for InstanceWatcher {
    fn failed(&self, error: &Failure, _delay: Duration) {
        let i = &self.report.instances[self.index];
        *i.last_error.lock().expect("report lock") = Some(error.clone());
        i.control.set_state(InstanceState::Restarting);
    }

    fn restarted(&self) {
        let i = &self.report.instances[self.index];
        i.restarts.fetch_add(1, Ordering::Relaxed);
        i.control.set_state(InstanceState::Starting);
    }
}

/// The instances writing one topic in a bounded run, and the seal that
/// closes when the last of them has ended.
#[derive(Debug)]
pub(crate) struct Writers {
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

/// The writers of each topic written in a `sluice run`, so that its sinks
/// know when they have drained a bounded pipeline. The daemon has none: its
/// sinks wait for more records until stopped.
#[derive(Debug, Default)]
pub struct Seals(HashMap<String, Arc<Writers>>);

impl Seals {
    /// Seals for the topics `connectors` write.
    pub fn for_writers(connectors: &[CheckedConnector]) -> Self {
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

/// The topic a connector's instances write: a source's topic, or a sink's
/// dead-letter topic.
fn written_topic(c: &ConnectorConfig) -> String {
    match c.kind {
        ConnectorKind::Source => c.topic_names().remove(0),
        ConnectorKind::Sink => c.dead_letter_topic(),
    }
}

/// Creates the topics a connector writes (source) or reads (sink), and
/// subscribes a sink to those it reads; returns each with its partitions.
pub fn topic_layout(
    broker: &impl Broker,
    c: &ConnectorConfig,
) -> anyhow::Result<Vec<(String, u32)>> {
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

/// Makes the counters of one instance of a connector (named, of a kind).
pub type StatsFactory = Arc<dyn Fn(&str, ConnectorKind) -> PumpStats + Send + Sync>;

/// What a connector's instances share with the rest of the host.
#[derive(Clone)]
pub struct HostParts {
    /// Loads and instantiates plugins.
    pub plugins: Arc<PluginHost>,
    /// The broker.
    pub broker: Arc<EmbeddedLog>,
    /// Masks secrets in what the host says.
    pub redactor: Redactor,
    /// The seals of a bounded run (empty in the daemon).
    pub seals: Arc<Seals>,
    /// Makes a connector's per-instance counters (the daemon's record batch
    /// latency into its metrics).
    pub stats: StatsFactory,
}

impl std::fmt::Debug for HostParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostParts")
            .field("broker", &self.broker)
            .field("seals", &self.seals)
            .finish_non_exhaustive()
    }
}

/// Counters that record their batch latency nowhere (`sluice run`).
pub fn plain_stats() -> StatsFactory {
    Arc::new(|_, _| PumpStats::default())
}

/// Options of one start of a connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start paused: instances open, then wait for [`RunningConnector::resume`].
    pub paused: bool,
    /// A sink ignores the offsets it stored itself and resumes from its
    /// group's committed offsets (after an offsets reset).
    pub ignore_stored_offsets: bool,
}

/// A connector whose instances run.
pub struct RunningConnector {
    current: Arc<RwLock<Arc<CheckedConnector>>>,
    report: Arc<ConnectorReport>,
    tasks: Mutex<Vec<Option<JoinHandle<()>>>>,
    paused: watch::Sender<bool>,
    host: HostParts,
    state: Arc<dyn StateStore>,
    layout: Vec<(String, u32)>,
}

impl std::fmt::Debug for RunningConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningConnector")
            .field("name", &self.report.name)
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

/// How long a swap waits for an instance to reach a batch boundary.
const SWAP_TIMEOUT: Duration = Duration::from_secs(30);

impl RunningConnector {
    /// Creates its topics (subscribing a sink) and starts every instance.
    pub fn start(
        connector: Arc<CheckedConnector>,
        host: HostParts,
        options: StartOptions,
    ) -> anyhow::Result<RunningConnector> {
        let layout = topic_layout(&*host.broker, &connector.config)?;
        Self::start_with_layout(connector, host, options, layout)
    }

    /// [`Self::start`] once the topics exist and sinks have subscribed.
    pub fn start_with_layout(
        connector: Arc<CheckedConnector>,
        host: HostParts,
        options: StartOptions,
        layout: Vec<(String, u32)>,
    ) -> anyhow::Result<RunningConnector> {
        let c = &connector.config;
        let name = c.name.get_ref().clone();
        let parallelism = *c.parallelism.get_ref();
        let state: Arc<dyn StateStore> = Arc::new(
            host.broker
                .connector_state(&name, connector.grants.state)
                .with_context(|| format!("opening the state of connector {name:?}"))?,
        );
        let (paused, paused_rx) = watch::channel(options.paused);
        let instances = (0..parallelism)
            .map(|_| InstanceReport {
                control: Arc::new(InstanceControl::new(
                    paused_rx.clone(),
                    Arc::new((host.stats)(&name, c.kind)),
                )),
                restarts: AtomicU32::new(0),
                last_error: Mutex::new(None),
            })
            .collect();
        let report = Arc::new(ConnectorReport {
            name,
            kind: c.kind,
            started: Instant::now(),
            instances,
            ended: Mutex::new(None),
            worst: Mutex::new(ConnectorOutcome::Running),
            running: AtomicU32::new(0),
            dead_letter_topic: (c.kind == ConnectorKind::Sink).then(|| c.dead_letter_topic()),
            reads: if c.kind == ConnectorKind::Sink {
                layout.clone()
            } else {
                Vec::new()
            },
            lag: AtomicU64::new(0),
            last_swap: Mutex::new(None),
        });
        // Its lag is true from the start, not 0 until first measured.
        report.measure_lag(&*host.broker);
        let running = RunningConnector {
            current: Arc::new(RwLock::new(connector)),
            report,
            tasks: Mutex::new(Vec::new()),
            paused,
            host,
            state,
            layout,
        };
        for index in 0..parallelism as usize {
            let task = running.spawn(index, options.ignore_stored_offsets);
            running.tasks.lock().expect("tasks lock").push(Some(task));
        }
        Ok(running)
    }

    /// Its live report.
    pub fn report(&self) -> &Arc<ConnectorReport> {
        &self.report
    }

    /// The connector as it runs now (its module changes with a swap).
    pub fn current(&self) -> Arc<CheckedConnector> {
        self.current.read().expect("connector lock").clone()
    }

    /// Whether it is paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Starts instance `index`; a sink set aside its own stored offsets
    /// (once) if `ignore_stored`.
    fn spawn(&self, index: usize, ignore_stored: bool) -> JoinHandle<()> {
        let c = self.current();
        let name = c.config.name.get_ref().clone();
        let parallelism = *c.config.parallelism.get_ref();
        let control = self.report.instances[index].control.clone();
        let shared = Shared {
            current: self.current.clone(),
            host: self.host.clone(),
            setup: InstanceSetup {
                connector: name.as_str().into(),
                index: index as u32,
                count: parallelism,
                grants: c.grants.clone(),
                state: Some(self.state.clone()),
                redactor: self.host.redactor.clone(),
            },
            control: control.clone(),
        };
        let report = self.report.clone();
        let writes = self.host.seals.writers(&written_topic(&c.config));
        let group = (c.config.kind == ConnectorKind::Sink)
            .then(|| (self.host.broker.clone(), name.clone()));
        let policy = c.restart;
        let redactor = self.host.redactor.clone();
        let span = tracing::info_span!("instance", connector = %name, index);
        let (first_topic, first_partitions) = self.layout[0].clone();
        let kind = c.config.kind;
        let seals = self.host.seals.clone();
        report.instance_started();
        control.set_state(InstanceState::Starting);
        tokio::spawn(
            async move {
                let watcher = InstanceWatcher {
                    report: report.clone(),
                    index,
                };
                let stop = control.stop.clone();
                let end = match kind {
                    ConnectorKind::Source => {
                        let life = SourceLife {
                            producer: format!("{name}/{index}"),
                            partition: index as u32 % first_partitions,
                            topic: first_topic,
                            shared,
                        };
                        super::supervise(life, policy, &stop, &watcher, &redactor).await
                    }
                    ConnectorKind::Sink => {
                        let life = SinkLife {
                            shared,
                            seals,
                            ignore_stored,
                        };
                        super::supervise(life, policy, &stop, &watcher, &redactor).await
                    }
                };
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
                report.instance_ended(index, end);
            }
            .instrument(span),
        )
    }

    /// Asks every instance to stop at its next batch boundary.
    pub fn stop(&self) {
        for i in &self.report.instances {
            i.control.stop.stop();
        }
    }

    /// Waits until every instance has ended.
    pub async fn wait(&self) {
        for index in 0..self.report.instances.len() {
            let task = self.tasks.lock().expect("tasks lock")[index].take();
            if let Some(t) = task
                && let Err(e) = t.await
            {
                tracing::error!(error = %e, "an instance task panicked");
            }
        }
    }

    /// Stops every instance and waits for them to flush, commit and close.
    pub async fn stop_and_wait(&self) {
        self.stop();
        self.wait().await;
    }

    /// Pauses every instance at its next batch boundary (a sink flushes and
    /// commits first; paused instances stay open), or resumes them.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Stops one instance (flush, commit, close) and starts it again; an
    /// instance that had failed for good gets a new start.
    pub async fn restart_instance(&self, index: usize) -> anyhow::Result<()> {
        if index >= self.report.instances.len() {
            anyhow::bail!("the connector has no instance {index}");
        }
        let control = self.report.instances[index].control.clone();
        control.stop.stop();
        let task = self.tasks.lock().expect("tasks lock")[index].take();
        if let Some(t) = task {
            let _ = t.await;
        }
        control.stop.reset();
        self.report.forgive(index);
        let task = self.spawn(index, false);
        self.tasks.lock().expect("tasks lock")[index] = Some(task);
        Ok(())
    }

    /// Swaps the module of every running instance for `new`'s (same
    /// config, grants and parallelism), one instance at a time; see the
    /// module docs. Instances that have ended (finished, stopped, failed)
    /// take the new module when they next start. On success returns the
    /// longest pause and how many instances swapped live. On failure the
    /// connector runs its old module, and the error says why.
    pub async fn swap(&self, new: Arc<CheckedConnector>) -> anyhow::Result<(Duration, usize)> {
        let old = self.current();
        let record = |ok: bool, error: Option<String>, pause: Option<Duration>| SwapRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            from: old.plugin.name().to_owned(),
            to: new.plugin.name().to_owned(),
            ok,
            error,
            pause_ms: pause.map(|p| p.as_secs_f64() * 1000.0),
        };
        let mut longest = Duration::ZERO;
        let mut swapped = Vec::new();
        for index in 0..self.report.instances.len() {
            match self.swap_instance(index, &new).await {
                Ok(None) => {}
                Ok(Some(pause)) => {
                    longest = longest.max(pause);
                    swapped.push(index);
                }
                Err(e) => {
                    let e = e.context(format!(
                        "swapping instance {index} to module {}; the old module {} runs on",
                        new.plugin.name(),
                        old.plugin.name()
                    ));
                    for &back in &swapped {
                        if let Err(again) = self.swap_instance(back, &old).await {
                            tracing::error!(
                                connector = %self.report.name, instance = back, error = %format!("{again:#}"),
                                "swapping back to the old module failed; restarting the instance with it"
                            );
                            if let Err(e) = self.restart_instance(back).await {
                                tracing::error!(connector = %self.report.name, instance = back, error = %e, "restart failed");
                            }
                        }
                    }
                    // What a plugin said may hold the connector's secrets.
                    let text = self.host.redactor.redact(&format!("{e:#}")).into_owned();
                    *self.report.last_swap.lock().expect("report lock") =
                        Some(record(false, Some(text.clone()), None));
                    return Err(anyhow::anyhow!(text));
                }
            }
        }
        *self.current.write().expect("connector lock") = new.clone();
        *self.report.last_swap.lock().expect("report lock") =
            Some(record(true, None, (!swapped.is_empty()).then_some(longest)));
        tracing::info!(
            connector = %self.report.name,
            module = new.plugin.name(),
            instances = swapped.len(),
            pause_ms = longest.as_secs_f64() * 1000.0,
            "module swapped in every instance"
        );
        Ok((longest, swapped.len()))
    }

    /// Swaps one instance; `None` if it is not running (it starts with the
    /// connector's current module when it next does).
    async fn swap_instance(
        &self,
        index: usize,
        to: &Arc<CheckedConnector>,
    ) -> anyhow::Result<Option<Duration>> {
        let control = &self.report.instances[index].control;
        let (state, _) = control.state();
        if matches!(
            state,
            InstanceState::Failed | InstanceState::Finished | InstanceState::Stopped
        ) {
            return Ok(None);
        }
        let setup = InstanceSetup {
            connector: self.report.name.as_str().into(),
            index: index as u32,
            count: self.report.instances.len() as u32,
            grants: to.grants.clone(),
            state: Some(self.state.clone()),
            redactor: self.host.redactor.clone(),
        };
        // Instantiated and warmed (its first call made) while the old
        // instance runs: only `open` and the switch are in the pause.
        let replacement = match self.report.kind {
            ConnectorKind::Source => {
                let mut new = self.host.plugins.source(&to.plugin, &setup).await?;
                new.warm().await?;
                Replacement::Source(new)
            }
            ConnectorKind::Sink => {
                let mut new = self.host.plugins.sink(&to.plugin, &setup).await?;
                new.warm().await?;
                Replacement::Sink(new)
            }
        };
        let (done, answer) = oneshot::channel();
        control.request_swap(SwapRequest {
            replacement,
            config_json: to.config_json.clone(),
            done,
        });
        // The pump takes the request at its next batch boundary; once it
        // has, it answers after the new instance's `open` (which its `cpu`
        // grant bounds). If the caller is gone by then, the pump keeps the
        // old instance.
        let began = Instant::now();
        while control.swap_pending() {
            if began.elapsed() >= SWAP_TIMEOUT {
                if control.take_swap().is_some() {
                    anyhow::bail!(
                        "instance {index} did not reach a batch boundary within {SWAP_TIMEOUT:?}"
                    );
                }
                break; // taken just now
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match answer.await {
            Ok(Ok(pause)) => Ok(Some(pause)),
            Ok(Err(why)) => Err(anyhow::anyhow!("the new module's open failed: {why}")),
            Err(_) => Err(anyhow::anyhow!(
                "instance {index} ended before it could swap"
            )),
        }
    }
}

/// What every life of one instance shares.
struct Shared {
    current: Arc<RwLock<Arc<CheckedConnector>>>,
    host: HostParts,
    setup: InstanceSetup,
    control: Arc<InstanceControl>,
}

impl Shared {
    fn connector(&self) -> Arc<CheckedConnector> {
        self.current.read().expect("connector lock").clone()
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
        let c = s.connector();
        let index = s.setup.index;
        let mut instance = s.host.plugins.source(&c.plugin, &s.setup).await?;
        let resume = s.host.broker.source_position(&self.producer);
        instance
            .open(&c.config_json, resume.as_deref())
            .await
            .with_context(|| {
                format!(
                    "opening source {:?} instance {index}",
                    c.config.name.get_ref()
                )
            })?;
        s.control.set_state(InstanceState::Running);
        let pump = SourcePump {
            instance,
            broker: s.host.broker.clone(),
            topic: self.topic.clone(),
            partition: self.partition,
            producer: self.producer.clone(),
            config: SourcePumpConfig {
                max_records: c.config.batch.max_records,
                max_bytes: c.config.batch.max_bytes,
                linger: Duration::from_millis(c.config.batch.linger_ms),
                retry: c.restart,
            },
            stats: s.control.stats.clone(),
            stop: s.control.stop.clone(),
            control: s.control.clone(),
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
    /// Set after an offsets reset: the group's offsets win, once.
    ignore_stored: bool,
}

impl Life for SinkLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = s.connector();
        let name = c.config.name.get_ref();
        let index = s.setup.index;
        let mut instance = s.host.plugins.sink(&c.plugin, &s.setup).await?;
        let mut stored = instance
            .open(&c.config_json)
            .await
            .with_context(|| format!("opening sink {name:?} instance {index}"))?;
        if std::mem::take(&mut self.ignore_stored) && !stored.is_empty() {
            tracing::info!(
                "the sink's own stored offsets are set aside once: its offsets were reset"
            );
            stored.clear();
        }
        let broker = &s.host.broker;
        let dead_letter = c.config.dead_letter_topic();
        let dead_letter = DeadLetter {
            partitions: broker
                .ensure_topic(&dead_letter)
                .with_context(|| format!("creating dead-letter topic {dead_letter:?}"))?,
            topic: dead_letter,
            connector: s.setup.connector.clone(),
            unsynced: Default::default(),
            stats: s.control.stats.clone(),
        };
        let assignments = self.assignments(&c, &stored)?;
        if assignments.is_empty() {
            tracing::info!("no partition left for this instance; it stays idle");
            return Ok(LifeEnd::Finished);
        }
        s.control.set_state(InstanceState::Running);
        let pump = SinkPump {
            instance,
            broker: broker.clone(),
            group: name.clone(),
            assignments,
            config: SinkPumpConfig {
                max_bytes: c.config.batch.max_bytes,
                flush_interval: Duration::from_millis(c.config.flush_interval_ms),
                retry: c.restart,
            },
            stats: s.control.stats.clone(),
            stop: s.control.stop.clone(),
            control: s.control.clone(),
            connector: s.setup.connector.clone(),
            dead_letter,
        };
        pump.run().await?;
        Ok(if s.control.stop.is_stopped() {
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
    fn assignments(
        &self,
        c: &CheckedConnector,
        stored: &[SinkOffset],
    ) -> anyhow::Result<Vec<Assignment>> {
        let s = &self.shared;
        let broker = &s.host.broker;
        let name = c.config.name.get_ref();
        let parallelism = s.setup.count;
        let mut assignments = Vec::new();
        for topic in c.config.topic_names() {
            let partitions = broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            for partition in (0..partitions).filter(|p| p % parallelism == s.setup.index) {
                let wanted = stored
                    .iter()
                    .find(|o| o.topic == topic && o.partition == partition)
                    .map(|o| o.next_offset)
                    .or_else(|| broker.committed_offset(name, &topic, partition))
                    .unwrap_or(0);
                let end = broker.end_offset(&topic, partition)?;
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
