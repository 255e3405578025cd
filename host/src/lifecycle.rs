//! What the pumps, the supervisor and the pipeline share of a connector's
//! lifecycle: the [`StopSignal`] that asks its instances to stop at their
//! next batch boundary. (The restart backoff both follow is the manifest's
//! [`crate::manifest::RestartPolicy`], parsed once by its check.)
//!
//! It lives here, below all three, so that `pump` and `supervisor` need
//! not import each other.

use std::time::Duration;

use tokio::sync::watch;

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
