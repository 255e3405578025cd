//! What `socket-source` and `socket-sink` share: how records are framed on
//! the wire, connecting to a granted peer, and waiting out a peer that went
//! away (saying so once, trying again with backoff).

use std::net::TcpStream;
use std::time::Duration;

use sluice_sdk::Error;

/// How records are framed on the wire.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// One record a line: the value and a newline (`\r\n` is read too).
    #[default]
    Lines,
    /// A 4-byte big-endian length, then the value.
    LengthPrefixed,
}

/// Default `reconnect_initial_ms`.
pub fn default_reconnect_initial_ms() -> u64 {
    100
}

/// Default `reconnect_max_ms`.
pub fn default_reconnect_max_ms() -> u64 {
    5000
}

/// A peer, its state (there or away), and the wait before the next try
/// while it is away.
#[derive(Debug)]
pub struct Peer {
    /// `host:port`.
    pub addr: String,
    /// Who speaks in the log (`socket-source`, `socket-sink`).
    who: &'static str,
    initial: Duration,
    max: Duration,
    backoff: Duration,
    /// Why the peer is away, once said.
    away: Option<String>,
}

impl Peer {
    /// A peer at `addr`, tried again after `initial_ms`, doubling up to
    /// `max_ms`. Refuses settings that cannot work.
    pub fn new(who: &'static str, addr: &str, initial_ms: u64, max_ms: u64) -> Result<Self, Error> {
        if initial_ms == 0 || max_ms < initial_ms {
            return Err(Error::invalid_config(
                "reconnect_initial_ms must be at least 1 and at most reconnect_max_ms",
            ));
        }
        let initial = Duration::from_millis(initial_ms);
        Ok(Peer {
            addr: addr.to_owned(),
            who,
            initial,
            max: Duration::from_millis(max_ms),
            backoff: initial,
            away: None,
        })
    }

    /// Connects. `Ok(None)`: the peer is away (said once); `Err` when the
    /// connector is not granted the peer.
    pub fn connect(&mut self) -> Result<Option<TcpStream>, Error> {
        match TcpStream::connect(&self.addr) {
            Ok(stream) => {
                if let Some(why) = self.away.take() {
                    sluice_sdk::info!("{}: {} is back (it was away: {why})", self.who, self.addr);
                }
                self.backoff = self.initial;
                Ok(Some(stream))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(Error::fatal(
                format!("connecting to {}: {e} (is it granted in net?)", self.addr),
            )),
            Err(e) => {
                self.went_away(&format!("cannot connect: {e}"));
                Ok(None)
            }
        }
    }

    /// The peer went away: says so once.
    pub fn went_away(&mut self, why: &str) {
        if self.away.is_none() {
            sluice_sdk::warn!(
                "{}: {} went away ({why}); trying again, at most every {:?}",
                self.who,
                self.addr,
                self.max
            );
            self.away = Some(why.to_owned());
        }
    }

    /// Waits before the next try (the host may end the wait early), and
    /// doubles the next wait up to the longest.
    pub fn wait(&mut self) {
        std::thread::sleep(self.backoff);
        self.backoff = (self.backoff * 2).min(self.max);
    }
}
