//! `socket-source`: reads records from a TCP peer, as Flink's socket source
//! does, in client mode: it connects to `addr` (which the connector must be
//! granted in `net`) and turns what the peer sends into records.
//!
//! - **Framing**: `"lines"` (the default), one record a line without its
//!   line ending (`\n` or `\r\n`); or `"length-prefixed"`, each record a
//!   4-byte big-endian length and that many bytes. A frame longer than
//!   `max_record_bytes` fails the connector (its config or its peer is
//!   wrong).
//! - **Waiting**: `poll` blocks in the read until the peer sends, which
//!   costs nothing and does not count against the `cpu` grant; the host
//!   interrupts the wait to stop, pause or swap. A batch is the frames one
//!   read completed (up to the batch size); a frame cut by the end of a
//!   read waits for the rest in the source's buffer.
//! - **A peer that goes away** (refuses, closes, resets) pauses the flow:
//!   the source says so once, tries again after `reconnect_initial_ms`,
//!   doubling up to `reconnect_max_ms`, and says once when it is back.
//!   A socket is not a replayable log: what the peer sent before it went
//!   away and the source had read is in the topic, and what it sends after
//!   the source reconnects is read; nothing in between is the source's to
//!   keep.
//! - **Position**: none; a restarted source reads what the peer sends next.

use std::io::Read as _;

use sluice_sdk::{BatchWriter, Context, Error, Poll, ReadBuf, Source};
use sluice_socket::{Conn, Framing, Peer};

/// Config of the `socket-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The peer, `host:port`, e.g. `"127.0.0.1:9999"`; grant it in `net`.
    pub addr: String,
    /// How records are framed on the wire.
    #[serde(default)]
    pub framing: Framing,
    /// Connect over TLS, through the host: it does the handshake and checks
    /// the server's certificate with what `[connector.grants.tls]` trusts.
    /// Default false.
    #[serde(default)]
    pub tls: bool,
    /// The name the server's certificate must be for, with `tls`. Default:
    /// the host part of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Longest record accepted, in bytes. Default 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u32,
    /// First wait before connecting again, in milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_max_record_bytes() -> u32 {
    1 << 20
}

/// The source's state.
#[derive(Debug)]
pub struct SocketSource {
    config: Config,
    peer: Peer,
    stream: Option<Conn>,
    /// Bytes read and not yet framed. A frame cut by the end of a read (or
    /// by an interrupted wait) waits here for the rest.
    buf: ReadBuf,
}

/// Bytes asked for by one read.
const READ_BYTES: usize = 64 * 1024;

impl SocketSource {
    /// Connects if not connected. `Ok(false)`: the peer is away (said once)
    /// and the wait before the next try has passed.
    fn connect(&mut self) -> Result<bool, Error> {
        if self.stream.is_none() {
            self.stream = self.peer.connect()?;
            if self.stream.is_none() {
                self.peer.wait();
            }
        }
        Ok(self.stream.is_some())
    }

    /// The peer went away: say so once, drop the connection and what was
    /// left of a frame, and wait before the next try.
    fn went_away(&mut self, why: &str) {
        self.peer.went_away(why);
        self.stream = None;
        self.buf.clear();
        self.peer.wait();
    }

    /// The next whole frame in the buffer, consumed: its value's range in
    /// `buf`. `Err` for a frame past `max_record_bytes`.
    fn next_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, Error> {
        let max = self.config.max_record_bytes as usize;
        let rest = self.buf.rest();
        let (value, used) = match self.config.framing {
            Framing::Lines => match memchr::memchr(b'\n', rest) {
                Some(at) => {
                    let end = if at > 0 && rest[at - 1] == b'\r' {
                        at - 1
                    } else {
                        at
                    };
                    (0..end, at + 1)
                }
                None if rest.len() > max + 1 => return Err(too_long(max)),
                None => return Ok(None),
            },
            Framing::LengthPrefixed => {
                let Some(len) = rest.get(..4) else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                if len > max {
                    return Err(too_long(max));
                }
                if rest.len() < 4 + len {
                    return Ok(None);
                }
                (4..4 + len, 4 + len)
            }
        };
        if value.len() > max {
            return Err(too_long(max));
        }
        Ok(Some(self.buf.take(used, value)))
    }

    /// Reads what the peer has sent, waiting until it sends something if
    /// `wait`, else `WouldBlock` if it has sent nothing. `Ok(0)`: it closed
    /// the connection.
    fn read_more(&mut self, wait: bool) -> std::io::Result<usize> {
        let stream = self.stream.as_mut().expect("connected");
        self.buf.read_with(|into| {
            if wait {
                stream.read(into)
            } else {
                stream.read_ready(into)
            }
        })
    }
}

fn too_long(max: usize) -> Error {
    Error::fatal(format!(
        "the peer sent a record longer than max_record_bytes ({max}); raise it, or check the framing"
    ))
}

impl Source for SocketSource {
    type Config = Config;

    fn open(config: Config, _ctx: &Context, _resume: Option<&[u8]>) -> Result<Self, Error> {
        let peer = Peer::new(
            "socket-source",
            &config.addr,
            sluice_sdk::net::tls_server_name(
                config.tls,
                config.server_name.as_deref(),
                &config.addr,
            ),
            config.reconnect_initial_ms,
            config.reconnect_max_ms,
        )?;
        let mut source = SocketSource {
            config,
            peer,
            stream: None,
            buf: ReadBuf::new(READ_BYTES),
        };
        source.connect()?;
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        if !self.connect()? {
            return Ok(Poll::default());
        }
        let mut n = 0;
        // Frames already read first, then what else has arrived, up to the
        // batch; a poll waits for the peer only when it has no record in
        // hand, and one with records never waits: they go out now.
        while n < max_records {
            if let Some(value) = self.next_frame()? {
                out.push_value(&self.buf[value]);
                n += 1;
                continue;
            }
            match self.read_more(n == 0) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Ok(0) => {
                    self.went_away("it closed the connection");
                    break;
                }
                Ok(_) => {}
                // Interrupted by the host (to stop, pause or swap): return
                // what was framed; the connection is still good, and a cut
                // frame waits in the buffer.
                Err(_) if sluice_sdk::interrupted() => break,
                Err(e) => {
                    self.went_away(&e.to_string());
                    break;
                }
            }
        }
        Ok(Poll::default())
    }
}

sluice_sdk::export_source!(SocketSource);
