//! `socket-sink`: writes records to a TCP peer, as Flink's socket sink
//! does, in client mode: it connects to `addr` (which the connector must be
//! granted in `net`) and sends each record's value as one frame.
//!
//! - **Framing**: `"lines"` (the default), each value and a `\n` (a value
//!   holding a newline is refused to the dead-letter topic: it would read
//!   as two records); or `"length-prefixed"`, a 4-byte big-endian length
//!   and the value.
//! - **A peer that goes away** pauses the flow: the write waits, says so
//!   once, connects again after `reconnect_initial_ms` (doubling up to
//!   `reconnect_max_ms`), says once when the peer is back, and goes on.
//!   Waiting costs nothing, and the host interrupts it to stop, pause or
//!   swap (the batch is then written again later: nothing is lost).
//! - **At least once**: TCP says nothing of what a peer that died had read.
//!   So the sink keeps the last `resend_bytes` of what it sent (default
//!   16 MiB, more than a socket's send and receive buffers hold together),
//!   and sends them again, first, to a peer that comes back: a record sent
//!   just before the peer went away arrives twice rather than never. The
//!   host commits offsets only after `flush`, and a sink that is restarted
//!   sends again from the last commit.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::TcpStream;
use std::time::Duration;

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

/// Config of the `socket-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The peer, `host:port`, e.g. `"127.0.0.1:9999"`; grant it in `net`.
    pub addr: String,
    /// How records are framed on the wire.
    #[serde(default)]
    pub framing: Framing,
    /// What is kept of recent frames to send again to a peer that comes
    /// back, in bytes. Default 16 MiB.
    #[serde(default = "default_resend_bytes")]
    pub resend_bytes: u64,
    /// First wait before connecting again, in milliseconds. Default 100.
    #[serde(default = "default_reconnect_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// How records are framed.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// Each value and a newline.
    #[default]
    Lines,
    /// A 4-byte big-endian length, then the value.
    LengthPrefixed,
}

fn default_resend_bytes() -> u64 {
    16 << 20
}
fn default_reconnect_initial_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    5000
}

/// The sink's state.
#[derive(Debug)]
pub struct SocketSink {
    config: Config,
    peer: Option<TcpStream>,
    /// The frames of recent batches, newest last, and their size.
    sent: VecDeque<Vec<u8>>,
    sent_bytes: u64,
    /// Why the peer is away, once said.
    away: Option<String>,
    /// The next connection gets the whole window first: the last one was
    /// dropped with what it had sent unknown (or a frame cut).
    resend: bool,
}

impl SocketSink {
    /// Sends `frames` (already in the resend window), connecting first if
    /// need be, and waiting out a peer that is away. A peer that comes back
    /// gets the whole window. `Err` only when the host interrupts the wait
    /// or the grant is missing.
    fn send(&mut self, frames_start: usize) -> Result<(), Error> {
        let mut backoff = Duration::from_millis(self.config.reconnect_initial_ms);
        let mut from = frames_start;
        loop {
            if self.peer.is_none() {
                match TcpStream::connect(&self.config.addr) {
                    Ok(stream) => {
                        if let Some(why) = self.away.take() {
                            sluice_sdk::info!(
                                "socket-sink: {} is back (it was away: {why}); sending the last {} bytes again",
                                self.config.addr,
                                self.sent_bytes
                            );
                        }
                        if std::mem::take(&mut self.resend) {
                            // Everything kept, again: the peer that died may
                            // not have read it.
                            from = 0;
                        }
                        self.peer = Some(stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Err(Error::fatal(format!(
                            "connecting to {}: {e} (is it granted in net?)",
                            self.config.addr
                        )));
                    }
                    Err(e) => {
                        self.went_away(&format!("cannot connect: {e}"));
                        if sluice_sdk::interrupted() {
                            return Err(Error::retriable("interrupted while the peer is away"));
                        }
                        std::thread::sleep(backoff);
                        backoff =
                            (backoff * 2).min(Duration::from_millis(self.config.reconnect_max_ms));
                        if sluice_sdk::interrupted() {
                            return Err(Error::retriable("interrupted while the peer is away"));
                        }
                        continue;
                    }
                }
            }
            let peer = self.peer.as_mut().expect("connected");
            let mut failed = None;
            for frame in self.sent.range(from..) {
                if let Err(e) = peer.write_all(frame) {
                    failed = Some(e);
                    break;
                }
            }
            match failed {
                None => return Ok(()),
                Some(_) if sluice_sdk::interrupted() => {
                    // A frame may be cut: this connection cannot go on. The
                    // batch is written again later, on a new one.
                    self.peer = None;
                    self.resend = true;
                    return Err(Error::retriable("interrupted in the middle of a send"));
                }
                Some(e) => self.went_away(&e.to_string()),
            }
        }
    }

    /// The peer went away: say so once and drop the connection.
    fn went_away(&mut self, why: &str) {
        if self.away.is_none() {
            sluice_sdk::warn!(
                "socket-sink: {} went away ({why}); waiting for it, trying at most every {:?}",
                self.config.addr,
                Duration::from_millis(self.config.reconnect_max_ms)
            );
            self.away = Some(why.to_owned());
        }
        self.peer = None;
        self.resend = true;
    }
}

impl Sink for SocketSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        if config.reconnect_initial_ms == 0 || config.reconnect_max_ms < config.reconnect_initial_ms
        {
            return Err(Error::invalid_config(
                "reconnect_initial_ms must be at least 1 and at most reconnect_max_ms",
            ));
        }
        let peer = match TcpStream::connect(&config.addr) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::fatal(format!(
                    "connecting to {}: {e} (is it granted in net?)",
                    config.addr
                )));
            }
            // Away at the start: the first write waits for it.
            Err(_) => None,
        };
        Ok(SocketSink {
            config,
            peer,
            sent: VecDeque::new(),
            sent_bytes: 0,
            away: None,
            resend: false,
        })
    }

    fn write(
        &mut self,
        _origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut frames = Vec::with_capacity(batch.value_bytes() as usize + batch.len() * 4);
        for (i, record) in batch.iter().enumerate() {
            match self.config.framing {
                Framing::Lines => {
                    if record.value.contains(&b'\n') {
                        rejects.reject(
                            i,
                            "the value holds a newline, which lines framing cannot carry",
                        );
                        continue;
                    }
                    frames.extend_from_slice(record.value);
                    frames.push(b'\n');
                }
                Framing::LengthPrefixed => {
                    let Ok(len) = u32::try_from(record.value.len()) else {
                        rejects.reject(i, "the value is longer than 4 GiB");
                        continue;
                    };
                    frames.extend_from_slice(&len.to_be_bytes());
                    frames.extend_from_slice(record.value);
                }
            }
        }
        self.sent_bytes += frames.len() as u64;
        self.sent.push_back(frames);
        while self.sent_bytes > self.config.resend_bytes && self.sent.len() > 1 {
            let old = self.sent.pop_front().expect("not empty");
            self.sent_bytes -= old.len() as u64;
        }
        let start = self.sent.len() - 1;
        self.send(start)
    }

    fn flush(&mut self) -> Result<(), Error> {
        if let Some(peer) = &mut self.peer
            && let Err(e) = peer.flush()
        {
            self.went_away(&e.to_string());
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(SocketSink);
