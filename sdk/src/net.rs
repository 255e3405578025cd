//! TCP and TLS connections, as a plugin should open them.
//!
//! [`TcpConn::connect`] opens a TCP connection through `wasi:sockets`;
//! [`TlsStream::connect`] opens one and then asks the host for a TLS client
//! stream over it (`wasi:tls`). Both are plain `Read + Write` streams whose
//! reads block until data arrives, which is how a source should wait (see
//! [`Source::poll`](crate::Source::poll)).
//!
//! The host does the TLS handshake and checks the server's certificate: the
//! plugin carries no TLS library, no certificates and no client key. What
//! the host trusts, the client certificate it presents and a server name it
//! insists on are the manifest's `[connector.grants.tls]`. The connection
//! itself needs a `net` grant for the peer, like any other; a host name
//! needs the `dns` grant too, or write the address.
//!
//! ```no_run
//! use std::io::{BufRead, BufReader};
//!
//! # fn main() -> std::io::Result<()> {
//! let tls = sluice_sdk::net::TlsStream::connect("db.internal:5433", None)?;
//! let mut lines = BufReader::new(tls).lines();
//! # Ok(()) }
//! ```
//!
//! **Write a request whole.** Nagle's algorithm is on for a plugin's
//! sockets (`wasi:sockets` has no `TCP_NODELAY`): a small write made while
//! an earlier small one is unacknowledged waits for the peer's ACK, up to
//! its delayed-ACK timer (40 ms on Linux). Build a request (or a pipeline of
//! them) in a buffer and write it at once, as `sluice-postgres` does; a
//! stream of pieces should be pieces of 128 KiB or more (two loopback
//! segments), which the peer acknowledges as it reads them.
//!
//! A wait the host interrupts (to stop, pause or swap the instance) fails
//! with [`std::io::ErrorKind::Interrupted`] here, connecting included; the
//! connection, once made, is still good (see [`crate::interrupted`]).

mod framed;

pub use framed::Framed;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use wasip2::clocks::monotonic_clock::subscribe_duration;
use wasip2::io::poll::poll;
use wasip2::io::streams::{InputStream, OutputStream, StreamError};
use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::ip_name_lookup::resolve_addresses;
use wasip2::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress,
};
use wasip2::sockets::tcp::TcpSocket;
use wasip2::sockets::tcp_create_socket::create_tcp_socket;

/// A TCP connection to a peer.
#[derive(Debug)]
pub struct TcpConn {
    // Fields drop in order: the streams before the socket they belong to.
    input: InputStream,
    output: OutputStream,
    socket: TcpSocket,
    peer: SocketAddr,
}

impl TcpConn {
    /// Connects to `addr`, `host:port` (an IP address, `[v6]:port`, or a
    /// name the host looks up, which needs the `dns` grant).
    pub fn connect(addr: &str) -> io::Result<TcpConn> {
        let mut last = None;
        for peer in resolve(addr)? {
            match Self::connect_to(peer) {
                Ok(conn) => return Ok(conn),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{addr} resolves to no address"),
            )
        }))
    }

    /// Connects to one address.
    pub fn connect_to(peer: SocketAddr) -> io::Result<TcpConn> {
        let network = instance_network();
        let family = match peer {
            SocketAddr::V4(_) => IpAddressFamily::Ipv4,
            SocketAddr::V6(_) => IpAddressFamily::Ipv6,
        };
        let failed = |e: ErrorCode| socket_error(e, &format!("connecting to {peer}"));
        let socket = create_tcp_socket(family).map_err(failed)?;
        socket
            .start_connect(&network, wasi_addr(peer))
            .map_err(failed)?;
        let ready = socket.subscribe();
        let (input, output) = loop {
            match socket.finish_connect() {
                Ok(streams) => break streams,
                Err(ErrorCode::WouldBlock) => {
                    if crate::interrupted() {
                        return Err(interrupted(&format!("connecting to {peer}")));
                    }
                    ready.block();
                }
                Err(e) => return Err(failed(e)),
            }
        };
        drop(ready);
        Ok(TcpConn {
            input,
            output,
            socket,
            peer,
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl TcpConn {
    /// Reads what has already arrived, without waiting: `WouldBlock` if
    /// nothing has, `Ok(0)` if the peer closed. A source that has records
    /// in hand takes what else is there this way, and waits in [`Read::read`]
    /// only when it has nothing.
    pub fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_ready(&self.input, buf)
    }

    /// Reads, waiting at most `timeout` for something to arrive:
    /// `TimedOut` if nothing has. A client that must speak on its own when
    /// the peer is quiet (a keep-alive ping) waits this way.
    pub fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        read_within(&self.input, buf, timeout)
    }
}

impl Read for TcpConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.input, buf)
    }
}

impl Write for TcpConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(&self.output, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        flush(&self.output)
    }
}

/// A TLS client connection: the handshake and the certificate checks ran
/// on the host, which holds the keys; the plugin reads and writes plain
/// bytes.
#[derive(Debug)]
pub struct TlsStream {
    // The streams before the connection they belong to, then the socket.
    input: InputStream,
    output: OutputStream,
    connection: tls::ClientConnection,
    _socket: TcpSocket,
    peer: SocketAddr,
}

impl TlsStream {
    /// Connects to `addr` (as [`TcpConn::connect`]) and makes a TLS
    /// connection over it, checking the server's certificate against
    /// `server_name`, or the host part of `addr` when `None`. The grants'
    /// `tls.server_name`, when set, wins over both.
    pub fn connect(addr: &str, server_name: Option<&str>) -> io::Result<TlsStream> {
        let name = server_name.unwrap_or_else(|| host_part(addr));
        Self::over(TcpConn::connect(addr)?, name)
    }

    /// Makes a TLS connection over `tcp` (a protocol that upgrades a plain
    /// connection, such as PostgreSQL's `SSLRequest`).
    pub fn over(tcp: TcpConn, server_name: &str) -> io::Result<TlsStream> {
        let TcpConn {
            input,
            output,
            socket,
            peer,
        } = tcp;
        let handshake = tls::ClientHandshake::new(server_name, input, output);
        let pending = tls::ClientHandshake::finish(handshake);
        let ready = pending.subscribe();
        let (connection, input, output) = loop {
            match pending.get() {
                None => {
                    if crate::interrupted() {
                        return Err(interrupted(&format!("the TLS handshake with {peer}")));
                    }
                    ready.block();
                }
                Some(Ok(Ok(streams))) => break streams,
                Some(Ok(Err(e))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("{} ({peer})", e.to_debug_string()),
                    ));
                }
                Some(Err(())) => unreachable!("the handshake's result is taken once"),
            }
        };
        drop(ready);
        Ok(TlsStream {
            input,
            output,
            connection,
            _socket: socket,
            peer,
        })
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Sends the TLS close notification: the server reads the end of the
    /// stream. Reading still works.
    pub fn close_output(&mut self) -> io::Result<()> {
        flush(&self.output)?;
        self.connection.close_output();
        Ok(())
    }
}

impl TlsStream {
    /// Reads what has already arrived, without waiting, as
    /// [`TcpConn::read_ready`].
    pub fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_ready(&self.input, buf)
    }

    /// Reads, waiting at most `timeout`, as [`TcpConn::read_within`].
    pub fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        read_within(&self.input, buf, timeout)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read(&self.input, buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write(&self.output, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        flush(&self.output)
    }
}

/// A client's connection, whichever it is: plain TCP, or TLS through the
/// host. What a protocol client keeps (`sluice-postgres`, `sluice-redis`).
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpConn),
    /// TLS: the host did the handshake and holds the keys.
    Tls(TlsStream),
}

impl Stream {
    /// Connects to `addr`; over TLS, checking the server's certificate
    /// against `tls`, if it names the server.
    pub fn connect(addr: &str, tls: Option<&str>) -> io::Result<Stream> {
        Ok(match tls {
            None => Stream::Plain(TcpConn::connect(addr)?),
            Some(name) => Stream::Tls(TlsStream::connect(addr, Some(name))?),
        })
    }

    /// Reads what has already arrived, without waiting (see
    /// [`TcpConn::read_ready`]).
    pub fn read_ready(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_ready(buf),
            Stream::Tls(s) => s.read_ready(buf),
        }
    }

    /// Reads, waiting at most `timeout` (see [`TcpConn::read_within`]).
    pub fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read_within(buf, timeout),
            Stream::Tls(s) => s.read_within(buf, timeout),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The addresses `addr` (`host:port`) stands for.
fn resolve(addr: &str) -> io::Result<Vec<SocketAddr>> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{addr:?} is not host:port"),
            )
        })?;
    let failed = |e: ErrorCode| socket_error(e, &format!("looking up {host}"));
    let found = resolve_addresses(&instance_network(), host).map_err(failed)?;
    let ready = found.subscribe();
    let mut all = Vec::new();
    loop {
        match found.resolve_next_address() {
            Ok(Some(ip)) => all.push(SocketAddr::new(from_wasi(ip), port)),
            Ok(None) => break,
            Err(ErrorCode::WouldBlock) => {
                if crate::interrupted() {
                    return Err(interrupted(&format!("looking up {host}")));
                }
                ready.block();
            }
            Err(e) => return Err(failed(e)),
        }
    }
    Ok(all)
}

/// The name a TLS connection checks the server's certificate against, for
/// a connector's usual `tls` and `server_name` settings: `server_name`, or
/// the host part of `addr`; `None` without `tls`.
pub fn tls_server_name(tls: bool, server_name: Option<&str>, addr: &str) -> Option<String> {
    tls.then(|| server_name.unwrap_or_else(|| host_part(addr)).to_owned())
}

/// `host` of `host:port`, without the brackets of an IPv6 address.
pub fn host_part(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn wasi_addr(a: SocketAddr) -> IpSocketAddress {
    match a {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port: v4.port(),
                address: (a, b, c, d),
            })
        }
        SocketAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.ip().segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: v6.port(),
                flow_info: v6.flowinfo(),
                address: (a, b, c, d, e, f, g, h),
                scope_id: v6.scope_id(),
            })
        }
    }
}

fn from_wasi(ip: IpAddress) -> IpAddr {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

/// A socket error as the `std::io` error a Rust programmer expects, saying
/// what was being done.
fn socket_error(e: ErrorCode, doing: &str) -> io::Error {
    use io::ErrorKind as K;
    let (kind, why) = match e {
        ErrorCode::AccessDenied => (
            K::PermissionDenied,
            "the connector's grants do not allow it (`net`, and `dns` for a name)",
        ),
        ErrorCode::ConnectionRefused => (K::ConnectionRefused, "connection refused"),
        ErrorCode::ConnectionReset => (K::ConnectionReset, "connection reset"),
        ErrorCode::ConnectionAborted => (K::ConnectionAborted, "connection aborted"),
        ErrorCode::Timeout => (K::TimedOut, "timed out"),
        ErrorCode::RemoteUnreachable => (K::HostUnreachable, "unreachable"),
        ErrorCode::NameUnresolvable => (K::NotFound, "no such name"),
        other => (K::Other, other.name()),
    };
    io::Error::new(kind, format!("{doing}: {why}"))
}

fn interrupted(doing: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Interrupted,
        format!("{doing}: interrupted by the host"),
    )
}

fn stream_error(e: StreamError) -> io::Error {
    match e {
        StreamError::Closed => io::ErrorKind::UnexpectedEof.into(),
        StreamError::LastOperationFailed(e) => {
            let kind = if crate::interrupted() {
                io::ErrorKind::Interrupted
            } else {
                io::ErrorKind::Other
            };
            io::Error::new(kind, e.to_debug_string())
        }
    }
}

fn read(input: &InputStream, buf: &mut [u8]) -> io::Result<usize> {
    let want = u64::try_from(buf.len()).unwrap_or(u64::MAX);
    copy_chunk(input.blocking_read(want), buf)
}

/// [`read`] without waiting: `WouldBlock` when nothing has arrived.
pub(crate) fn read_ready(input: &InputStream, buf: &mut [u8]) -> io::Result<usize> {
    let want = u64::try_from(buf.len()).unwrap_or(u64::MAX);
    match input.read(want) {
        Ok(chunk) if chunk.is_empty() && !buf.is_empty() => Err(io::ErrorKind::WouldBlock.into()),
        got => copy_chunk(got, buf),
    }
}

/// [`read`] waiting at most `timeout`: `TimedOut` when nothing arrived.
fn read_within(input: &InputStream, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    match read_ready(input, buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        got => return got,
    }
    let data = input.subscribe();
    let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    let timer = subscribe_duration(nanos);
    poll(&[&data, &timer]);
    drop((data, timer));
    if crate::interrupted() {
        return Err(interrupted("waiting for the peer"));
    }
    match read_ready(input, buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(io::ErrorKind::TimedOut.into()),
        got => got,
    }
}

/// A chunk a read returned, into `buf`; `Ok(0)` at the end of the stream.
fn copy_chunk(got: Result<Vec<u8>, StreamError>, buf: &mut [u8]) -> io::Result<usize> {
    match got {
        Ok(chunk) => {
            let n = chunk.len().min(buf.len());
            buf[..n].copy_from_slice(&chunk[..n]);
            Ok(n)
        }
        Err(StreamError::Closed) => Ok(0),
        Err(e) => Err(stream_error(e)),
    }
}

fn write(output: &OutputStream, buf: &[u8]) -> io::Result<usize> {
    let room = loop {
        match output.check_write() {
            Ok(0) => output.subscribe().block(),
            Ok(room) => break room,
            Err(e) => return Err(stream_error(e)),
        }
    };
    let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
    output.write(&buf[..n]).map_err(stream_error)?;
    Ok(n)
}

fn flush(output: &OutputStream) -> io::Result<()> {
    output.blocking_flush().map_err(stream_error)
}

/// `wasi:tls`, the host's TLS, over the `wasi:io` streams of `wasip2`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod tls {
    wit_bindgen::generate!({
        path: "wit",
        world: "sluice:sdk/tls",
        features: ["tls"],
        with: {
            "wasi:io/error@0.2.12": wasip2::io::error,
            "wasi:io/poll@0.2.12": wasip2::io::poll,
            "wasi:io/streams@0.2.12": wasip2::io::streams,
            "wasi:tls/types@0.2.0-draft": generate,
        },
    });
    pub use self::wasi::tls::types::{ClientConnection, ClientHandshake};
}
