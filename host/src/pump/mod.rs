//! The loops that move batches: [`SourcePump`] (poll → append → commit
//! position), [`SinkPump`] (read from the committed offset → write →
//! flush → commit offset) and [`TransformPump`] (read → process → append
//! the output with the input offsets after it).
//!
//! Each pump holds at most one batch (sources) or one read of `max_bytes`
//! (sinks) in memory: the broker is the buffer, and a pump that cannot keep
//! up simply reads further behind. Both check their [`StopSignal`] at batch
//! boundaries, so a stop never splits a batch from its commit. Between
//! batches both take module swaps by the one step in `swap.rs`. A hybrid
//! source's positions (a bounded source, then a live one) are in
//! `hybrid.rs`; a source held while its sinks are behind, in `hold.rs`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use metrics::Histogram;
use tokio::sync::{Notify, watch};

use crate::manifest::RestartPolicy;
use crate::plugin::Interrupt;

/// Re-exported: pumps are what it stops.
pub use crate::lifecycle::StopSignal;

pub use self::chain::{Chain, ChainStep};
pub use self::dead_letter::{DeadLetter, dlq_headers};
pub use self::hybrid::{HybridPosition, NotHybrid};
pub use self::sink::{Assignment, SinkPump, SinkPumpConfig};
pub use self::source::{Destination, SourceEnd, SourcePump, SourcePumpConfig};
pub use self::swap::{Replacement, SwapRequest};
pub use self::transform::{TransformPump, TransformPumpConfig};

/// Counters of one instance.
#[derive(Debug)]
pub struct PumpStats {
    /// Records moved.
    pub records: AtomicU64,
    /// Value bytes moved.
    pub bytes: AtomicU64,
    /// Batches moved.
    pub batches: AtomicU64,
    /// Records a sink refused on their merits (sent to its dead-letter
    /// topic).
    pub refused: AtomicU64,
    /// When the last record moved, in milliseconds since the Unix epoch
    /// (0: none yet).
    last_record_ms: AtomicU64,
    /// Seconds from taking a batch to having handed it on: a source's poll
    /// to its append, a sink's read to its write.
    pub batch_seconds: Histogram,
}

impl Default for PumpStats {
    fn default() -> Self {
        PumpStats::with_histogram(Histogram::noop())
    }
}

impl PumpStats {
    /// Counters that record batch latency into `batch_seconds` (the
    /// daemon's metrics); [`Default`] records it nowhere.
    pub fn with_histogram(batch_seconds: Histogram) -> Self {
        PumpStats {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_record_ms: AtomicU64::new(0),
            batch_seconds,
        }
    }

    pub(crate) fn add(&self, records: u64, bytes: u64, took: Duration) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last_record_ms.store(now, Ordering::Relaxed);
        self.batch_seconds.record(took.as_secs_f64());
    }

    /// Records moved so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Value bytes moved so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Records refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// When the last record moved.
    pub fn last_record(&self) -> Option<SystemTime> {
        match self.last_record_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }
}

/// What an instance is doing, for its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Creating its sandbox and calling `open`.
    Starting,
    /// Moving batches (or waiting for some).
    Running,
    /// Paused by request, between batches, with everything flushed and
    /// committed.
    Paused,
    /// Failed; restarting after its backoff.
    Restarting,
    /// A bounded source reached its end, or a sink drained its topics.
    Finished,
    /// Stopped by request.
    Stopped,
    /// Failed, and not restarted.
    Failed,
}

/// Awaits a plugin `call`, and raises the instance's `interrupt` if the
/// pump is asked to stop, or (given its `control`) to pause or swap, while
/// the call is under way: a plugin blocked waiting (a read from a quiet
/// socket, a sleep) then returns within a tick instead of holding the pump.
/// The call is never dropped: it returns, and the plugin stays whole.
pub(crate) async fn interruptible<T>(
    call: impl Future<Output = T>,
    stop: &StopSignal,
    control: Option<&InstanceControl>,
    interrupt: &Interrupt,
) -> T {
    tokio::pin!(call);
    let wanted = async {
        match control {
            Some(control) => control.wanted().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        out = &mut call => return out,
        () = stop.stopped() => {}
        () = wanted => {}
    }
    interrupt.raise();
    call.await
}

/// How the host steers one instance between batches, besides stopping it:
/// pausing, and swapping its module. Lives as long as the instance's
/// connector runs, across restarts.
#[derive(Debug)]
pub struct InstanceControl {
    /// Stops this instance alone.
    pub stop: StopSignal,
    /// True while the connector is paused.
    paused: watch::Receiver<bool>,
    swap: Mutex<Option<SwapRequest>>,
    /// Mirrors `swap.is_some()`, so that the check between batches takes
    /// no lock.
    swap_pending: AtomicBool,
    swap_wanted: Notify,
    state: Mutex<(InstanceState, SystemTime)>,
    /// Its counters.
    pub stats: Arc<PumpStats>,
}

impl InstanceControl {
    /// Control of one instance of a connector whose pause switch is `paused`.
    pub fn new(paused: watch::Receiver<bool>, stats: Arc<PumpStats>) -> Self {
        InstanceControl {
            stop: StopSignal::new(),
            paused,
            swap: Mutex::new(None),
            swap_pending: AtomicBool::new(false),
            swap_wanted: Notify::new(),
            state: Mutex::new((InstanceState::Starting, SystemTime::now())),
            stats,
        }
    }

    /// What it is doing, and since when.
    pub fn state(&self) -> (InstanceState, SystemTime) {
        *self.state.lock().expect("state lock")
    }

    /// Says what it is doing now (a no-op if it already was).
    pub fn set_state(&self, state: InstanceState) {
        let mut s = self.state.lock().expect("state lock");
        if s.0 != state {
            *s = (state, SystemTime::now());
        }
    }

    /// Asks the pump to swap at its next batch boundary. A request not yet
    /// taken is answered as replaced.
    pub fn request_swap(&self, request: SwapRequest) {
        let mut slot = self.swap.lock().expect("swap lock");
        if let Some(old) = slot.replace(request) {
            let _ = old.done.send(Err("replaced by a newer swap".to_owned()));
        }
        self.swap_pending.store(true, Ordering::Release);
        drop(slot);
        self.swap_wanted.notify_one();
    }

    /// True while a swap asked for has not been taken.
    pub(crate) fn swap_pending(&self) -> bool {
        self.swap_pending.load(Ordering::Acquire)
    }

    /// A swap asked for and not yet taken, if any.
    pub(crate) fn take_swap(&self) -> Option<SwapRequest> {
        let mut slot = self.swap.lock().expect("swap lock");
        self.swap_pending.store(false, Ordering::Release);
        slot.take()
    }

    /// True while the connector is paused.
    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// True when the pump has something to do between batches. Checked
    /// once per batch, so it takes no lock.
    pub(crate) fn wants_attention(&self) -> bool {
        self.swap_pending() || self.is_paused()
    }

    /// Between batches: the next swap to make, waiting while the connector
    /// is paused; `None` once neither is asked (or when stopped). `since`
    /// is when the pump stopped taking batches, for the swap's pause; a
    /// pause moves it on (a swap asked during a pause pauses nothing more).
    pub(crate) async fn next_swap(&self, since: &mut Instant) -> Option<SwapRequest> {
        loop {
            if let Some(request) = self.take_swap() {
                return Some(request);
            }
            if !self.paused_wait().await {
                return None;
            }
            *since = Instant::now();
        }
    }

    /// While the connector is paused (and nothing else is asked), waits
    /// for a change and returns true; otherwise says the instance runs and
    /// returns false.
    async fn paused_wait(&self) -> bool {
        let mut paused = self.paused.clone();
        if !*paused.borrow_and_update() || self.stop.is_stopped() {
            self.set_state(InstanceState::Running);
            return false;
        }
        self.set_state(InstanceState::Paused);
        tokio::select! {
            _ = paused.changed() => {}
            () = self.swap_wanted.notified() => {}
            () = self.stop.stopped() => {}
        }
        true
    }

    /// Resolves when a swap is asked for or the pause switch moves: what an
    /// idle pump waits on besides data and its stop signal.
    pub(crate) async fn wanted(&self) {
        let mut paused = self.paused.clone();
        paused.borrow_and_update();
        tokio::select! {
            _ = paused.changed() => {}
            () = self.swap_wanted.notified() => {}
        }
    }
}

/// Says when every source writing a topic has reached its end, so sinks
/// of a bounded pipeline know when they have drained it.
#[derive(Debug, Clone)]
pub struct TopicSeal {
    /// `None` for a topic that no bounded source in this run writes.
    rx: Option<watch::Receiver<bool>>,
}

/// The writing side of a [`TopicSeal`].
#[derive(Debug)]
pub struct TopicSealer {
    tx: watch::Sender<bool>,
}

impl TopicSeal {
    /// A seal and the sealer that closes it.
    pub fn new() -> (TopicSealer, TopicSeal) {
        let (tx, rx) = watch::channel(false);
        (TopicSealer { tx }, TopicSeal { rx: Some(rx) })
    }

    /// A seal that never closes (a topic no bounded source in this run writes).
    pub fn never() -> TopicSeal {
        TopicSeal { rx: None }
    }

    /// True once every source of the topic has ended.
    pub fn is_sealed(&self) -> bool {
        self.rx.as_ref().is_some_and(|rx| *rx.borrow())
    }
}

impl TopicSealer {
    /// Seals the topic.
    pub fn seal(&self) {
        self.tx.send_replace(true);
    }
}

mod chain;
mod dead_letter;
mod hold;
mod hybrid;
mod route;
pub mod sink;
pub mod source;
mod swap;
pub mod transform;

/// How often a write refused for want of space is tried again.
const DISK_FULL_RETRY: Duration = Duration::from_millis(250);

/// How long a busy pump keeps its worker before handing it back.
const TURN: Duration = Duration::from_millis(1);

/// Hands a busy pump's worker back to the runtime between batches, now and
/// then. Plugin calls and appends never wait on the runtime, so a busy pump
/// would otherwise keep its worker until it next idles, and the task it
/// woke (a sink, parked in that worker's LIFO slot, which no other worker
/// steals) would wait with it: 100-700 ms of latency under
/// `fsync = "always"` at 100,000 records/s before this. Yielding after every
/// batch instead costs a fifth of a source's throughput in wake-ups of the
/// idle worker, so it is once per [`TURN`].
#[derive(Debug)]
pub(crate) struct Turns {
    since: Instant,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            since: Instant::now(),
        }
    }
}

impl Turns {
    /// After a batch: yields if the pump has held its worker for a turn.
    pub(crate) async fn after_batch(&mut self) {
        if self.since.elapsed() >= TURN {
            tokio::task::yield_now().await;
            self.since = Instant::now();
        }
    }
}

/// Makes a broker write, and makes it again while it fails because the disk
/// is full (the broker says so once, not at every try). `None` if the stop
/// signal came first: the write never happened, and nothing after it may be
/// committed.
pub(crate) async fn when_space<T, F>(
    stop: &StopSignal,
    mut write: impl FnMut() -> F,
) -> Result<Option<T>, crate::broker::BrokerError>
where
    F: std::future::Future<Output = Result<T, crate::broker::BrokerError>>,
{
    loop {
        match write().await {
            Err(e) if e.is_disk_full() => {
                if stop.is_stopped() {
                    return Ok(None);
                }
                stop.sleep(DISK_FULL_RETRY).await;
            }
            done => return done.map(Some),
        }
    }
}

/// Retries a call that failed with a `retriable` plugin error, with
/// exponential backoff, in place: the instance is not restarted and nothing
/// is dead-lettered. After `attempts` retries in a row the error stands and
/// the instance fails (its supervisor takes over).
#[derive(Debug)]
pub(crate) struct Retry {
    policy: RestartPolicy,
    done: u32,
    delay: Duration,
}

impl Retry {
    pub(crate) fn new(policy: RestartPolicy) -> Self {
        Retry {
            policy,
            done: 0,
            delay: policy.initial,
        }
    }

    /// Settles one try of a plugin call: its value; `None`, having waited,
    /// when it failed with a `retriable` error and is to be made again; or
    /// the error that stands. The caller makes the call in a loop:
    /// `let v = loop { if let Some(v) = retry.settle(call().await, …)? { break v } }`.
    ///
    /// A loop at each call rather than a function taking the call as an
    /// async closure: a closure that borrows what the call hands on (the
    /// batch, the position) makes the pump's future fail the `Send` check
    /// its supervisor needs (rust-lang/rust#149407).
    pub(crate) async fn settle<T>(
        &mut self,
        tried: Result<T, crate::plugin::PluginError>,
        call: &str,
        stop: &StopSignal,
    ) -> Result<Option<T>, crate::plugin::PluginError> {
        match tried {
            Ok(v) => Ok(Some(v)),
            Err(e) if self.again(&e, call, stop).await => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// After `error`: true (having waited) if the call should be made
    /// again.
    pub(crate) async fn again(
        &mut self,
        error: &crate::plugin::PluginError,
        call: &str,
        stop: &StopSignal,
    ) -> bool {
        if !error.is_retriable() || self.done >= self.policy.attempts || stop.is_stopped() {
            return false;
        }
        self.done += 1;
        tracing::warn!(
            error = %error,
            attempt = self.done,
            of = self.policy.attempts,
            "retriable error in `{call}`; calling again in {:?}",
            self.delay
        );
        stop.sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.policy.max);
        !stop.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::PluginError;

    fn error(retriable: bool) -> PluginError {
        let (plugin, call, message) = ("p".to_owned(), "write", "m".to_owned());
        if retriable {
            PluginError::Retriable {
                plugin,
                call,
                message,
            }
        } else {
            PluginError::Fatal {
                plugin,
                call,
                message,
            }
        }
    }

    #[tokio::test]
    async fn retriable_errors_are_retried_up_to_the_attempts_and_others_never() {
        let policy = RestartPolicy {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            attempts: 2,
        };
        let stop = StopSignal::new();
        let mut retry = Retry::new(policy);
        assert!(retry.again(&error(true), "write", &stop).await);
        assert!(retry.again(&error(true), "write", &stop).await);
        assert!(
            !retry.again(&error(true), "write", &stop).await,
            "attempts spent"
        );
        assert!(
            !Retry::new(policy)
                .again(&error(false), "write", &stop)
                .await
        );
        stop.stop();
        assert!(
            !Retry::new(policy).again(&error(true), "write", &stop).await,
            "stopping"
        );
    }
}
