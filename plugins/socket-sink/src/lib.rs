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

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};
use sluice_socket::{Conn, Framing, Peer};

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
    /// Connect over TLS, through the host: it does the handshake and checks
    /// the server's certificate with what `[connector.grants.tls]` trusts.
    /// Default false.
    #[serde(default)]
    pub tls: bool,
    /// The name the server's certificate must be for, with `tls`. Default:
    /// the host part of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// What is kept of recent frames to send again to a peer that comes
    /// back, in bytes. Default 16 MiB.
    #[serde(default = "default_resend_bytes")]
    pub resend_bytes: u64,
    /// First wait before connecting again, in milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_resend_bytes() -> u64 {
    16 << 20
}

/// The sink's state.
#[derive(Debug)]
pub struct SocketSink {
    config: Config,
    peer: Peer,
    stream: Option<Conn>,
    /// The frames of recent batches, newest last, and their size.
    sent: VecDeque<Vec<u8>>,
    sent_bytes: u64,
    /// The next connection gets the whole window first: the last one was
    /// dropped with what it had sent unknown (or a frame cut).
    resend: bool,
}

impl SocketSink {
    /// Sends the frames of the window from `from` on, connecting first if
    /// need be and waiting out a peer that is away; a new connection after
    /// a dropped one gets the whole window. `Err` when the host interrupts
    /// the wait (the batch is written again later) or the grant is missing.
    fn send(&mut self, mut from: usize) -> Result<(), Error> {
        let interrupted = || Error::retriable("interrupted while waiting for the peer");
        loop {
            if self.stream.is_none() {
                self.stream = self.peer.connect()?;
                if self.stream.is_none() {
                    self.peer.wait();
                    if sluice_sdk::interrupted() {
                        return Err(interrupted());
                    }
                    continue;
                }
                if std::mem::take(&mut self.resend) {
                    // Everything kept, again: the peer that died may not
                    // have read it.
                    sluice_sdk::debug!(
                        "socket-sink: sending the last {} bytes again",
                        self.sent_bytes
                    );
                    from = 0;
                }
            }
            let stream = self.stream.as_mut().expect("connected");
            let failed = self
                .sent
                .range(from..)
                .find_map(|frame| stream.write_all(frame).err());
            match failed {
                None => return Ok(()),
                Some(e) => {
                    // A frame may be cut: this connection cannot go on.
                    self.stream = None;
                    self.resend = true;
                    if sluice_sdk::interrupted() {
                        return Err(interrupted());
                    }
                    self.peer.went_away(&e.to_string());
                }
            }
        }
    }
}

impl Sink for SocketSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        let mut peer = Peer::new(
            "socket-sink",
            &config.addr,
            sluice_sdk::net::tls_server_name(
                config.tls,
                config.server_name.as_deref(),
                &config.addr,
            ),
            config.reconnect_initial_ms,
            config.reconnect_max_ms,
        )?;
        // Away at the start: said once, and the first write waits for it.
        let stream = peer.connect()?;
        Ok(SocketSink {
            config,
            peer,
            stream,
            sent: VecDeque::new(),
            sent_bytes: 0,
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
                    if memchr::memchr(b'\n', record.value).is_some() {
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
        self.send(self.sent.len() - 1)
    }

    fn flush(&mut self) -> Result<(), Error> {
        // A TCP stream buffers nothing of its own; a TLS one may hold the
        // last records. A connection that fails here is replaced, and the
        // new one gets the whole window before the flush is tried again.
        loop {
            self.send(self.sent.len())?;
            let stream = self.stream.as_mut().expect("connected");
            match stream.flush() {
                Ok(()) => return Ok(()),
                Err(_) if sluice_sdk::interrupted() => {
                    return Err(Error::retriable("interrupted while flushing to the peer"));
                }
                Err(e) => {
                    self.stream = None;
                    self.resend = true;
                    self.peer.went_away(&e.to_string());
                }
            }
        }
    }
}

sluice_sdk::export_sink!(SocketSink);
