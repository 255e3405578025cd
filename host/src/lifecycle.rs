//! Lifecycle pieces that the pumps, the supervisor and the pipeline share:
//! the [`StopSignal`] that asks a connector's instances to stop at their next
//! batch boundary, and the [`RestartPolicy`] whose exponential backoff both
//! the supervisor (restarting a failed instance) and the pumps (retrying a
//! `retriable` call in place) follow.
//!
//! They live here, below all three, so that `pump` and `supervisor` need
//! not import each other.

use std::time::Duration;

use tokio::sync::watch;

use crate::manifest::{
    ConnectorConfig, DEFAULT_RESTART_ATTEMPTS, DEFAULT_RESTART_INITIAL, DEFAULT_RESTART_MAX,
    parse_duration,
};

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

    /// Takes the signal back, so that what it stopped can start again.
    pub fn reset(&self) {
        self.tx.send_replace(false);
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

/// How a connector's failed instances are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; each next wait doubles.
    pub initial: Duration,
    /// Longest wait. An instance up this long has recovered, and its count
    /// of failures starts over.
    pub max: Duration,
    /// Restarts in a row before giving up.
    pub attempts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: DEFAULT_RESTART_INITIAL,
            max: DEFAULT_RESTART_MAX,
            attempts: DEFAULT_RESTART_ATTEMPTS,
        }
    }
}

impl RestartPolicy {
    /// The policy in a connector's `[connector.restart]` (already checked).
    pub fn from_config(c: &ConnectorConfig) -> Self {
        let d = RestartPolicy::default();
        let parse = |v: &Option<toml::Spanned<String>>| {
            v.as_ref().and_then(|v| parse_duration(v.get_ref()).ok())
        };
        let initial = parse(&c.restart.initial).unwrap_or(d.initial);
        RestartPolicy {
            initial,
            max: parse(&c.restart.max).unwrap_or(d.max).max(initial),
            attempts: c.restart.attempts.unwrap_or(d.attempts),
        }
    }
}
