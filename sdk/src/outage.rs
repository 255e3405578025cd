//! A peer that goes away and comes back, as a connector should treat it:
//! say once that it is away (not once a try), wait before trying again (the
//! peer's own `Retry-After` if it said one, else a backoff that doubles up
//! to a longest wait), and say once that it is back.
//!
//! ```
//! use sluice_sdk::outage::Outage;
//!
//! # fn main() -> Result<(), sluice_sdk::Error> {
//! let waits = ("retry_initial_ms", "retry_max_ms");
//! let mut peer = Outage::new("my-sink: db.internal:5432", (100, 5000), waits)?;
//! // A try failed:
//! peer.went_away("connection refused");
//! peer.wait(None); // free, and the host ends it early to stop, pause or swap
//! // A try worked:
//! peer.back();
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::Error;

/// The usual first wait before trying again, in milliseconds (a config's
/// `*_initial_ms` default).
pub fn default_initial_ms() -> u64 {
    100
}

/// The usual longest wait between tries, in milliseconds (a config's
/// `*_max_ms` default).
pub fn default_max_ms() -> u64 {
    5000
}

/// The usual longest `Retry-After` obeyed, in milliseconds.
pub fn default_max_retry_after_ms() -> u64 {
    60_000
}

/// One peer's outages: whether it is away, and the wait before the next
/// try.
#[derive(Debug)]
pub struct Outage {
    /// Who speaks and of what peer, e.g. `socket-sink: 127.0.0.1:9000`.
    who: String,
    initial: Duration,
    max: Duration,
    backoff: Duration,
    /// Why the peer is away, once said.
    away: Option<String>,
}

impl Outage {
    /// A peer tried again after `initial_ms`, doubling up to `max_ms`,
    /// which the config calls `fields` (`("reconnect_initial_ms",
    /// "reconnect_max_ms")`). Refuses settings that cannot work, naming
    /// them.
    pub fn new(
        who: impl Into<String>,
        (initial_ms, max_ms): (u64, u64),
        fields: (&str, &str),
    ) -> Result<Self, Error> {
        if initial_ms == 0 || max_ms < initial_ms {
            let (initial, max) = fields;
            return Err(Error::invalid_config(format!(
                "{initial} must be at least 1 and at most {max}"
            )));
        }
        let initial = Duration::from_millis(initial_ms);
        Ok(Outage {
            who: who.into(),
            initial,
            max: Duration::from_millis(max_ms),
            backoff: initial,
            away: None,
        })
    }

    /// The peer went away (or answered "not now"): says so once.
    pub fn went_away(&mut self, why: &str) {
        if self.away.is_none() {
            crate::warn!(
                "{} is away ({why}); trying again, at most every {:?}",
                self.who,
                self.max
            );
            self.away = Some(why.to_owned());
        }
    }

    /// A try worked: says once that the peer is back, and starts the
    /// backoff over.
    pub fn back(&mut self) {
        if let Some(why) = self.away.take() {
            crate::info!("{} is back (it was away: {why})", self.who);
        }
        self.backoff = self.initial;
    }

    /// True while the peer is away.
    pub fn is_away(&self) -> bool {
        self.away.is_some()
    }

    /// Waits before the next try: `asked` (what the peer asked for, such
    /// as a `Retry-After`; cap it as the config says), else the backoff,
    /// doubled for next time.
    /// The host ends the wait early to stop, pause or swap the instance
    /// ([`crate::interrupted`] then says so).
    pub fn wait(&mut self, asked: Option<Duration>) {
        let wait = asked.unwrap_or(self.backoff);
        std::thread::sleep(wait);
        self.backoff = (self.backoff * 2).min(self.max);
    }

    /// Sets the next wait (a server's own say, such as SSE's `retry`).
    pub fn set_backoff(&mut self, wait: Duration) {
        self.backoff = wait.min(self.max);
    }
}
