//! The supervisor: the lifecycle of connectors and their instances. It
//! keeps each instance running, restarting it with exponential backoff
//! when it fails, and gives up after a set number of failures in a row.
//! [`RunningConnector`] (in `connector.rs`) is one running connector: its
//! instances under [`supervise`], stop, pause, restart one instance, and
//! the live module swap. (A `retriable` plugin error is first retried in
//! place by the pump, with the same policy; see `pump::Retry`.)
//!
//! An instance's *life* runs from creating its `Store` and calling `open`
//! to the end of its pump. A trap, a `cpu` or `memory` limit, a contract
//! violation or a plugin error ends that life only: the instance's sandbox
//! is dropped, and after the backoff a new one opens from the last
//! committed position. A source resumes from the position stored with its
//! last batch in the log, so it neither loses nor repeats a record (if it
//! reports positions; one that does not starts over). A sink resumes from
//! the offsets it stored itself or its group's committed offsets, so it
//! loses nothing but is handed again what it had written since its last
//! flush: at least once, unless the sink stores its own offsets. Other
//! connectors never wait on it.
//!
//! A plugin that refuses its config (`invalid-config`), and an instance
//! whose grants cannot be given (a granted directory that cannot be opened),
//! are not restarted: the same config and grants would fail again.

mod connector;

pub use self::connector::{
    ConnectorOutcome, ConnectorReport, HostParts, InstanceReport, RunningConnector, Seals,
    StartOptions, StatsFactory, SwapRecord, plain_stats, topic_layout,
};

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt as _;

use crate::lifecycle::StopSignal;
/// Re-exported: the supervisor is what restarts by it.
pub use crate::manifest::RestartPolicy;
use crate::plugin::PluginError;
use crate::secrets::Redactor;

/// Why an instance, or its connector, failed for good, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The last error, secrets masked.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (at {})",
            self.reason,
            humantime::format_rfc3339_seconds(self.at)
        )
    }
}

/// How one life of an instance ended without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifeEnd {
    /// A bounded source reached its end, or a sink drained its topics.
    Finished,
    /// Stopped by request.
    Stopped,
}

/// One instance, as the supervisor sees it: something it can start again.
pub trait Life: Send {
    /// Opens a fresh instance from the last committed position and runs it
    /// until it ends or fails.
    fn run(&mut self) -> impl Future<Output = anyhow::Result<LifeEnd>> + Send;
}

/// What the supervisor tells the connector's report.
pub trait Watcher: Send + Sync {
    /// A life failed; the instance restarts after `delay` unless stopped.
    fn failed(&self, error: &Failure, delay: Duration);
    /// The instance is starting a new life after a failure.
    fn restarted(&self);
}

/// How an instance ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEnd {
    /// See [`LifeEnd::Finished`].
    Finished,
    /// See [`LifeEnd::Stopped`].
    Stopped,
    /// It failed and will not be restarted.
    Failed(Failure),
}

/// Runs `life` again and again until it ends, is stopped, or fails again
/// after `policy.attempts` restarts in a row. Failure reasons pass through
/// `redactor`. A panic in the host while running a life (a bug) fails the
/// instance rather than the whole task, so its connector is reported
/// `failed` and its topics can still drain.
pub async fn supervise(
    mut life: impl Life,
    policy: RestartPolicy,
    stop: &StopSignal,
    watcher: &dyn Watcher,
    redactor: &Redactor,
) -> InstanceEnd {
    let mut failures = 0u32;
    let mut delay = policy.initial;
    loop {
        let began = Instant::now();
        let outcome = AssertUnwindSafe(life.run()).catch_unwind().await;
        let error = match outcome {
            Ok(Ok(LifeEnd::Finished)) => return InstanceEnd::Finished,
            Ok(Ok(LifeEnd::Stopped)) => return InstanceEnd::Stopped,
            Ok(Err(e)) => e,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(ToString::to_string)
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                let failure = Failure {
                    reason: redactor
                        .redact(&format!("the host panicked running this instance: {what}"))
                        .into_owned(),
                    at: SystemTime::now(),
                };
                tracing::error!(error = %failure.reason, "host bug; not restarting the instance");
                return InstanceEnd::Failed(failure);
            }
        };
        let failure = Failure {
            reason: redactor.redact(&format!("{error:#}")).into_owned(),
            at: SystemTime::now(),
        };
        if stop.is_stopped() {
            tracing::error!(error = %failure.reason, "instance failed while stopping");
            return InstanceEnd::Failed(failure);
        }
        if let Some(why) = error
            .downcast_ref::<PluginError>()
            .and_then(PluginError::permanent_because)
        {
            tracing::error!(error = %failure.reason, "{why}; not restarting the instance");
            return InstanceEnd::Failed(failure);
        }
        if began.elapsed() >= policy.max {
            // It ran long enough to count as recovered.
            failures = 0;
            delay = policy.initial;
        }
        failures += 1;
        if failures > policy.attempts {
            tracing::error!(
                error = %failure.reason,
                restarts = policy.attempts,
                "instance failed again after its last restart; giving up: the connector is failed"
            );
            return InstanceEnd::Failed(failure);
        }
        tracing::warn!(
            error = %failure.reason,
            attempt = failures,
            of = policy.attempts,
            "instance failed; restarting in {delay:?} from its last committed position"
        );
        watcher.failed(&failure, delay);
        stop.sleep(delay).await;
        if stop.is_stopped() {
            return InstanceEnd::Stopped;
        }
        watcher.restarted();
        delay = (delay * 2).min(policy.max);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Mutex;

    use super::*;

    struct FailTimes(u32);
    impl Life for FailTimes {
        async fn run(&mut self) -> anyhow::Result<LifeEnd> {
            if self.0 == 0 {
                return Ok(LifeEnd::Finished);
            }
            self.0 -= 1;
            anyhow::bail!("broken")
        }
    }

    #[derive(Default)]
    struct Delays(Mutex<Vec<Duration>>);
    impl Watcher for Delays {
        fn failed(&self, _: &Failure, delay: Duration) {
            self.0.lock().unwrap().push(delay);
        }
        fn restarted(&self) {}
    }

    const POLICY: RestartPolicy = RestartPolicy {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(4),
        attempts: 3,
    };

    #[tokio::test]
    async fn backoff_doubles_up_to_max_then_recovers() {
        let delays = Delays::default();
        let end = supervise(
            FailTimes(3),
            POLICY,
            &StopSignal::new(),
            &delays,
            &Redactor::default(),
        )
        .await;
        assert_eq!(end, InstanceEnd::Finished);
        assert_eq!(
            *delays.0.lock().unwrap(),
            [1, 2, 4].map(Duration::from_millis)
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts() {
        let delays = Delays::default();
        let end = supervise(
            FailTimes(4),
            POLICY,
            &StopSignal::new(),
            &delays,
            &Redactor::default(),
        )
        .await;
        assert!(matches!(end, InstanceEnd::Failed(f) if f.reason == "broken"));
        assert_eq!(delays.0.lock().unwrap().len(), 3);
    }
}
