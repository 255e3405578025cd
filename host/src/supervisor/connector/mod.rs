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
//!
//! - `report`: what a connector's status and metrics read ([`ConnectorReport`]).
//! - `seals`: the topics it writes and reads, and the seals that tell a
//!   bounded run's sinks that their topics are complete.
//! - `lives`: one life of a source or sink instance, as the supervisor
//!   restarts it, and the [`HostParts`] every instance shares.

mod lives;
mod report;
mod seals;

pub use self::lives::{HostParts, StatsFactory, plain_stats};
pub use self::report::{ConnectorOutcome, ConnectorReport, InstanceReport, SwapRecord};
pub use self::seals::{Seals, topic_layout};

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use self::lives::{Shared, SinkLife, SourceLife, TransformLife};
use self::report::InstanceWatcher;
use crate::broker::Broker;
use crate::broker::StateStore;
use crate::check::CheckedConnector;
use crate::manifest::ConnectorKind;
use crate::plugin::{InstanceSetup, LogBudget};
use crate::pump::{Destination, InstanceControl, InstanceState, Replacement, SwapRequest};
use crate::supervisor::InstanceEnd;

/// Options of one start of a connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Start paused: instances open, then wait for [`RunningConnector::resume`].
    pub paused: bool,
    /// A sink ignores the offsets it stored itself and resumes from its
    /// group's committed offsets (after an offsets reset).
    pub ignore_stored_offsets: bool,
    /// Start no instance yet: each starts when asked to, with
    /// [`RunningConnector::start_instance`] (in a cluster, once this host
    /// holds the instance's lease).
    pub deferred: bool,
}

/// A connector whose instances run.
pub struct RunningConnector {
    current: Arc<RwLock<Arc<CheckedConnector>>>,
    report: Arc<ConnectorReport>,
    tasks: Mutex<Vec<Option<JoinHandle<()>>>>,
    paused: watch::Sender<bool>,
    host: HostParts,
    state: Arc<dyn StateStore>,
    /// The rate limit of what its instances log, shared by all of them
    /// and by their replacements across swaps and restarts.
    log_budget: LogBudget,
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
        let state = host
            .broker
            .connector_state(&name, connector.grants.state)
            .with_context(|| format!("opening the state of connector {name:?}"))?;
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
            dead_letter_topic: c.has_dead_letters().then(|| c.dead_letter_topic()),
            reads: if c.reads_topics() {
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
            log_budget: LogBudget::default(),
            layout,
        };
        for index in 0..parallelism as usize {
            let task =
                (!options.deferred).then(|| running.spawn(index, options.ignore_stored_offsets));
            running.tasks.lock().expect("tasks lock").push(task);
        }
        Ok(running)
    }

    /// Its plugin state, as its instances read and write it.
    pub fn state(&self) -> &Arc<dyn StateStore> {
        &self.state
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
                log_budget: self.log_budget.clone(),
            },
            control: control.clone(),
        };
        let report = self.report.clone();
        let writes = self.host.seals.written_by(&c.config);
        let group = c
            .config
            .reads_topics()
            .then(|| (self.host.broker.clone(), name.clone()));
        let policy = c.restart;
        let redactor = self.host.redactor.clone();
        let span = tracing::info_span!("instance", connector = %name, index);
        let destination = match (&c.config.route, c.config.output_topic()) {
            (Some(template), _) => Destination::Routed {
                template: template.clone(),
                instance: index as u32,
            },
            (None, Some(output)) => Destination::Partition {
                // Made by `topic_layout` before any instance starts.
                partition: index as u32
                    % self.host.broker.ensure_topic(&output).unwrap_or(1).max(1),
                topic: output,
            },
            (None, None) => {
                let (topic, partitions) = self.layout[0].clone();
                Destination::Partition {
                    topic,
                    partition: index as u32 % partitions,
                }
            }
        };
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
                            destination,
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
                    ConnectorKind::Transform => {
                        let life = TransformLife {
                            producer: format!("{name}/{index}"),
                            output: destination,
                            shared,
                            seals,
                        };
                        super::supervise(life, policy, &stop, &watcher, &redactor).await
                    }
                };
                if !matches!(end, InstanceEnd::Stopped) {
                    for w in writes {
                        w.ended();
                    }
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

    /// Starts instance `index` if it does not run (it never started, it
    /// ended, or it is stopping: then once it has ended); `false` if it
    /// runs already.
    pub async fn start_instance(&self, index: usize) -> anyhow::Result<bool> {
        let Some(report) = self.report.instances.get(index) else {
            anyhow::bail!("the connector has no instance {index}");
        };
        let task = self.tasks.lock().expect("tasks lock")[index].take();
        if let Some(t) = task {
            if !t.is_finished() && !report.control.stop.is_stopped() {
                self.tasks.lock().expect("tasks lock")[index] = Some(t);
                return Ok(false);
            }
            let _ = t.await;
        }
        report.control.stop.reset();
        self.report.forgive(index);
        let task = self.spawn(index, false);
        self.tasks.lock().expect("tasks lock")[index] = Some(task);
        Ok(true)
    }

    /// Stops instance `index` at its next batch boundary and waits until it
    /// has flushed, committed and closed; the others go on.
    pub async fn stop_instance(&self, index: usize) {
        let Some(report) = self.report.instances.get(index) else {
            return;
        };
        report.control.stop.stop();
        let task = self.tasks.lock().expect("tasks lock")[index].take();
        if let Some(t) = task
            && let Err(e) = t.await
        {
            tracing::error!(error = %e, "an instance task panicked");
        }
    }

    /// Whether instance `index` runs (it started, and has not ended).
    pub fn instance_runs(&self, index: usize) -> bool {
        self.tasks
            .lock()
            .expect("tasks lock")
            .get(index)
            .is_some_and(|t| t.as_ref().is_some_and(|t| !t.is_finished()))
    }

    /// Swaps the module of every running instance for `new`'s (same
    /// config, grants and parallelism), one instance at a time; see the
    /// module docs. Instances that have ended (finished, stopped, failed)
    /// take the new module when they next start. On success returns the
    /// longest pause and how many instances swapped live. On failure the
    /// connector runs its old module, and the error says why.
    pub async fn swap(&self, new: Arc<CheckedConnector>) -> anyhow::Result<(Duration, usize)> {
        let old = self.current();
        if old.hybrid.is_some() {
            // Which of its two sources a new module replaces depends on the
            // phase each instance is in: not decided yet.
            anyhow::bail!(
                "connector {:?} is a hybrid source: its modules are not swapped live; stop it, \
                 change its definition and start it again",
                self.report.name
            );
        }
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
        // Never started (deferred, in a cluster: it runs on another host),
        // or ended.
        if !self.instance_runs(index)
            || matches!(
                state,
                InstanceState::Failed | InstanceState::Finished | InstanceState::Stopped
            )
        {
            return Ok(None);
        }
        let setup = InstanceSetup {
            connector: self.report.name.as_str().into(),
            index: index as u32,
            count: self.report.instances.len() as u32,
            grants: to.grants.clone(),
            state: Some(self.state.clone()),
            redactor: self.host.redactor.clone(),
            log_budget: self.log_budget.clone(),
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
            ConnectorKind::Transform => {
                let mut new = self.host.plugins.transform(&to.plugin, &setup).await?;
                new.warm().await?;
                Replacement::Transform(new)
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
