//! A connector's report: live counters, each instance's state, restarts and
//! last failure, the outcome once it has ended, its lag and its last swap.
//! Status, metrics and `sluice run`'s summary all read it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::broker::Broker;
use crate::manifest::ConnectorKind;
use crate::pump::{InstanceControl, InstanceState, PumpStats};
use crate::supervisor::{Failure, InstanceEnd, Watcher};

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
    pub(super) restarts: AtomicU32,
    pub(super) last_error: Mutex<Option<Failure>>,
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
    pub(super) ended: Mutex<Option<Instant>>,
    /// The worst outcome of its ended instances; see [`Self::outcome`].
    pub(super) worst: Mutex<ConnectorOutcome>,
    /// Instances still running.
    pub(super) running: AtomicU32,
    /// A sink's dead-letter topic.
    pub dead_letter_topic: Option<String>,
    /// The topics a sink reads, with their partition counts.
    pub(super) reads: Vec<(String, u32)>,
    /// Records in those topics that the sink's group has not committed.
    pub(super) lag: AtomicU64,
    /// The last module swap.
    pub(super) last_swap: Mutex<Option<SwapRecord>>,
}

impl ConnectorReport {
    /// A sink's or transform's lag: records in its topics that it has not
    /// committed, as last measured (see [`Self::measure_lag`]). `None` for a
    /// source.
    pub fn lag(&self) -> Option<u64> {
        matches!(self.kind, ConnectorKind::Sink | ConnectorKind::Transform)
            .then(|| self.lag.load(Ordering::Relaxed))
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

    pub(super) fn instance_ended(&self, index: usize, end: InstanceEnd) {
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
    pub(super) fn forgive(&self, index: usize) {
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

    pub(super) fn instance_started(&self) {
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
pub(super) struct InstanceWatcher {
    pub(super) report: Arc<ConnectorReport>,
    pub(super) index: usize,
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
