//! What `socket-source` and `socket-sink` share: how records are framed on
//! the wire, connecting to a granted peer (over TLS through the host, if
//! asked), and waiting out a peer that went away (saying so once, trying
//! again with backoff).

use std::io::{self, Read, Write};
use std::net::TcpStream;

use sluice_sdk::Error;
use sluice_sdk::net::TlsStream;
use sluice_sdk::outage::Outage;

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

/// A connection to the peer: plain TCP (`std`'s, as any Rust program opens
/// it), or TLS through the host.
#[derive(Debug)]
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS: the host did the handshake and holds the keys.
    Tls(TlsStream),
}

impl Conn {
    /// Reads what has already arrived, without waiting: `WouldBlock` if
    /// nothing has, `Ok(0)` if the peer closed (see
    /// [`TcpConn::read_ready`](sluice_sdk::net::TcpConn::read_ready)).
    pub fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => {
                s.set_nonblocking(true)?;
                let got = s.read(buf);
                s.set_nonblocking(false)?;
                got
            }
            Conn::Tls(s) => s.read_ready(buf),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// A peer, its state (there or away), and the wait before the next try
/// while it is away.
#[derive(Debug)]
pub struct Peer {
    /// `host:port`.
    pub addr: String,
    /// Connect over TLS, checking the server's certificate against this
    /// name.
    tls: Option<String>,
    outage: Outage,
}

impl Peer {
    /// A peer at `addr`, tried again after `initial_ms`, doubling up to
    /// `max_ms`; over TLS if `tls` names the server (see
    /// [`sluice_sdk::net::tls_server_name`]). `who` speaks in the log (`socket-source`).
    /// Refuses settings that cannot work.
    pub fn new(
        who: &'static str,
        addr: &str,
        tls: Option<String>,
        initial_ms: u64,
        max_ms: u64,
    ) -> Result<Self, Error> {
        Ok(Peer {
            addr: addr.to_owned(),
            tls,
            outage: Outage::new(
                format!("{who}: {addr}"),
                (initial_ms, max_ms),
                ("reconnect_initial_ms", "reconnect_max_ms"),
            )?,
        })
    }

    /// Connects. `Ok(None)`: the peer is away (said once); `Err` when the
    /// connector is not granted the peer.
    pub fn connect(&mut self) -> Result<Option<Conn>, Error> {
        let conn = match &self.tls {
            None => TcpStream::connect(&self.addr).map(Conn::Plain),
            Some(name) => TlsStream::connect(&self.addr, Some(name)).map(Conn::Tls),
        };
        match conn {
            Ok(stream) => {
                self.outage.back();
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
        self.outage.went_away(why);
    }

    /// Waits before the next try (the host may end the wait early), and
    /// doubles the next wait up to the longest.
    pub fn wait(&mut self) {
        self.outage.wait(None);
    }
}
