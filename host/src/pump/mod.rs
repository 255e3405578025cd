//! The loops that move batches: [`SourcePump`] (poll → append → commit
//! position) and [`SinkPump`] (read from the committed offset → write →
//! flush → commit offset).
//!
//! Each pump holds at most one batch (sources) or one read of `max_bytes`
//! (sinks) in memory: the broker is the buffer, and a pump that cannot keep
//! up simply reads further behind. Both check their [`StopSignal`] at batch
//! boundaries, so a stop never splits a batch from its commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

pub use self::sink::{Assignment, DeadLetter, SinkPump, SinkPumpConfig, dlq_headers};
pub use self::source::{SourceEnd, SourcePump, SourcePumpConfig};

/// Counters of one connector, shared by its instances.
#[derive(Debug, Default)]
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
}

impl PumpStats {
    pub(crate) fn add(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
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
}

/// Asks pumps to stop at their next batch boundary. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StopSignal {
    tx: watch::Sender<bool>,
}

impl Default for StopSignal {
    fn default() -> Self {
        StopSignal {
            tx: watch::channel(false).0,
        }
    }
}

impl StopSignal {
    /// A signal not yet given.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gives the signal.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// True once given.
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Waits until given.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Sleeps for `d`, or less if the signal comes first.
    pub async fn sleep(&self, d: Duration) {
        tokio::select! {
            () = tokio::time::sleep(d) => {}
            () = self.stopped() => {}
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

/// Makes a plugin call, retrying it in place while it fails with a
/// `retriable` error (see [`Retry`]); any other error, or one that
/// persists, returns from the enclosing function. Defined before the
/// `sink` and `source` modules so that they see it.
///
/// `retrying!(policy, &stop, "poll", self.instance.poll(want))`
macro_rules! retrying {
    ($policy:expr, $stop:expr, $call:literal, $attempt:expr) => {{
        let mut retry = $crate::pump::Retry::new($policy);
        loop {
            match $attempt.await {
                Ok(v) => break v,
                Err(e) if retry.again(&e, $call, $stop).await => {}
                Err(e) => return Err(e.into()),
            }
        }
    }};
}

pub mod sink;
pub mod source;

/// How often a write refused for want of space is tried again.
const DISK_FULL_RETRY: Duration = Duration::from_millis(250);

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
    policy: crate::supervisor::RestartPolicy,
    done: u32,
    delay: Duration,
}

impl Retry {
    pub(crate) fn new(policy: crate::supervisor::RestartPolicy) -> Self {
        Retry {
            policy,
            done: 0,
            delay: policy.initial,
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
    use crate::supervisor::RestartPolicy;

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
