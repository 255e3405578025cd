//! Connections as a plugin opens them: TCP through `wasi:sockets`, or TLS
//! through the host (`wasi:tls`), both under the connector's `net` grant.

use std::io::{self, Read, Write};

use sluice_sdk::net::{TcpConn, TlsStream};

use crate::conn::Dial;

/// Opens plugin connections to brokers, with TLS when `tls` is set.
#[derive(Debug, Clone, Default)]
pub struct NetDial {
    /// Whether to speak TLS (the host does the handshake).
    pub tls: bool,
    /// The name every broker's certificate must be for; the host part of
    /// each broker's address when `None`.
    pub server_name: Option<String>,
}

/// A plugin's connection to a broker.
#[derive(Debug)]
pub enum NetStream {
    /// Plain TCP.
    Tcp(TcpConn),
    /// TLS through the host.
    Tls(TlsStream),
}

impl Dial for NetDial {
    type Stream = NetStream;

    fn dial(&mut self, addr: &str) -> io::Result<NetStream> {
        if self.tls {
            TlsStream::connect(addr, self.server_name.as_deref()).map(NetStream::Tls)
        } else {
            TcpConn::connect(addr).map(NetStream::Tcp)
        }
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NetStream::Tcp(s) => s.read(buf),
            NetStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            NetStream::Tcp(s) => s.write(buf),
            NetStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            NetStream::Tcp(s) => s.flush(),
            NetStream::Tls(s) => s.flush(),
        }
    }
}
