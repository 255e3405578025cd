//! A connection read and written through buffers, the way a protocol
//! client of a plugin wants one (`sluice-mqtt`, `sluice-stomp`,
//! `sluice-amqp`).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Stream;

/// How much is read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// A connection whose writes are queued in [`Framed::write`] and written
/// together by [`Framed::flush`] (one write a batch of frames: see the
/// module's note on Nagle's algorithm), and whose reads land in
/// [`Framed::read`] for the protocol's decoder to take whole frames from.
///
/// It keeps a connection's two clocks: we must write something at least
/// every so often (a keep-alive: MQTT's `PINGREQ`, a STOMP or AMQP
/// heartbeat), and a peer that said nothing for too long is gone. A
/// client's read loop is then: decode a frame out of `read`; if there is
/// none, [`Framed::wait_more`].
#[derive(Debug)]
pub struct Framed {
    stream: Stream,
    /// What was read and not yet decoded.
    pub read: BytesMut,
    /// What is queued to be written.
    pub write: BytesMut,
    chunk: Vec<u8>,
    keep_alive: Option<Duration>,
    silence_limit: Option<Duration>,
    last_write: Instant,
    last_read: Instant,
}

impl Framed {
    /// Connects to `addr`; over TLS (through the host), checking the
    /// server's certificate against `tls`, if it names the server.
    pub fn connect(addr: &str, tls: Option<&str>) -> io::Result<Framed> {
        Ok(Framed {
            stream: Stream::connect(addr, tls)?,
            read: BytesMut::with_capacity(READ_CHUNK),
            write: BytesMut::with_capacity(READ_CHUNK),
            chunk: vec![0; READ_CHUNK],
            keep_alive: None,
            silence_limit: None,
            last_write: Instant::now(),
            last_read: Instant::now(),
        })
    }

    /// The connection.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// We show we are alive by writing something at least every `every`
    /// (half of it, to be safe, when idle): [`Framed::wait_more`] writes
    /// the keep-alive then. `None` (or zero): never.
    pub fn set_keep_alive(&mut self, every: Option<Duration>) {
        self.keep_alive = every.filter(|d| !d.is_zero());
    }

    /// A peer silent for longer than `limit` is taken as gone. `None` (or
    /// zero): never.
    pub fn set_silence_limit(&mut self, limit: Option<Duration>) {
        self.silence_limit = limit.filter(|d| !d.is_zero());
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.write.is_empty() {
            self.stream.write_all(&self.write)?;
            self.stream.flush()?;
            self.write.clear();
            self.last_write = Instant::now();
        }
        Ok(())
    }

    /// True when nothing was written for a whole keep-alive period (the
    /// plugin was not called to use the connection, so it missed one):
    /// the peer may have given up on it (brokers allow one and a half to
    /// two periods). Make a new one, without calling it an outage.
    pub fn is_stale(&self) -> bool {
        self.keep_alive
            .is_some_and(|every| self.last_write.elapsed() > every)
    }

    /// Reads more, writing the keep-alive (what `keep_alive` queues) first
    /// if it is due: what has arrived when `deadline` is `None`, or what
    /// arrives by `deadline`, waking for the next keep-alive on the way.
    /// `Ok(false)` when the deadline passed, or nothing had arrived and it
    /// was not to wait; `Ok(true)` otherwise: something may have been read
    /// (decode, and call again if it is not a whole frame). A peer silent
    /// past the limit is an error
    /// (`TimedOut`), and so is one that closed the connection
    /// (`UnexpectedEof`); a wait the host interrupts is `Interrupted`.
    pub fn wait_more(
        &mut self,
        deadline: Option<Instant>,
        keep_alive: impl FnOnce(&mut BytesMut),
    ) -> io::Result<bool> {
        if let Some(every) = self.keep_alive
            && self.last_write.elapsed() >= every / 2
        {
            keep_alive(&mut self.write);
            self.flush()?;
        }
        if let Some(limit) = self.silence_limit
            && self.last_read.elapsed() > limit
        {
            // What arrived while we were not reading counts: look before
            // calling the peer silent.
            if self.fill(None)? {
                return Ok(true);
            }
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer was silent for {:?}, longer than the {limit:?} it agreed to",
                    self.last_read.elapsed()
                ),
            ));
        }
        let Some(deadline) = deadline else {
            return self.fill(None);
        };
        let mut wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Ok(false);
        }
        if let Some(every) = self.keep_alive {
            let due_in = (every / 2).saturating_sub(self.last_write.elapsed());
            wait = wait.min(due_in.max(Duration::from_millis(1)));
        }
        if let Some(limit) = self.silence_limit {
            let gone_in = limit.saturating_sub(self.last_read.elapsed());
            wait = wait.min(gone_in + Duration::from_millis(1));
        }
        // Nothing within a wait cut short is not the deadline passing.
        self.fill(Some(wait)).map(|_| true)
    }

    /// Reads what has arrived (`wait` `None`) or what arrives within
    /// `wait`. `Ok(false)` when nothing came.
    fn fill(&mut self, wait: Option<Duration>) -> io::Result<bool> {
        let got = match wait {
            None => self.stream.read_ready(&mut self.chunk),
            Some(wait) => self.stream.read_within(&mut self.chunk, wait),
        };
        match got {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            Ok(n) => {
                self.read.extend_from_slice(&self.chunk[..n]);
                self.last_read = Instant::now();
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
