//! Connections as a plugin opens them: TCP through `wasi:sockets`, or TLS
//! through the host (`wasi:tls`), both under the connector's `net` grant.

use std::io::{self, Read, Write};

use sluice_sdk::net::{TcpConn, TlsStream};

use sluice_sdk::outage::Outage;

use crate::client::Client;
use crate::conn::Dial;
use crate::error::KafkaError;
use crate::sasl::SaslConfig;

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

/// How a connector reaches its cluster, as both Kafka plugins' configs
/// write it.
#[derive(Debug, Clone, Copy)]
pub struct Reach<'a> {
    /// The plugin (`kafka-source`), for messages.
    pub plugin: &'a str,
    /// `bootstrap_servers`.
    pub bootstrap_servers: &'a [String],
    /// `client_id`; default `sluice-<connector>-<index>`.
    pub client_id: Option<&'a str>,
    /// `tls`.
    pub tls: bool,
    /// `server_name`.
    pub server_name: Option<&'a str>,
    /// `sasl`.
    pub sasl: Option<&'a SaslConfig>,
    /// `(reconnect_initial_ms, reconnect_max_ms)`.
    pub reconnect_ms: (u64, u64),
}

/// A connector's client of its cluster (nothing connected yet) and the
/// [`Outage`] that says when the cluster is away; refuses settings that
/// cannot work, naming them.
pub fn client_for(
    reach: Reach<'_>,
    ctx: &sluice_sdk::Context,
) -> Result<(Client<NetDial>, Outage), sluice_sdk::Error> {
    if reach.bootstrap_servers.is_empty() {
        return Err(sluice_sdk::Error::invalid_config(
            "bootstrap_servers: name at least one broker, as `bootstrap_servers = [\"host:9092\"]`",
        ));
    }
    let who = format!(
        "{} {}: {}",
        reach.plugin,
        ctx.connector,
        reach.bootstrap_servers.join(",")
    );
    let outage = Outage::new(
        who,
        reach.reconnect_ms,
        ("reconnect_initial_ms", "reconnect_max_ms"),
    )?;
    let credentials = reach.sasl.map(SaslConfig::credentials).transpose()?;
    let client_id = reach.client_id.map_or_else(
        || format!("sluice-{}-{}", ctx.connector, ctx.index),
        str::to_owned,
    );
    let dial = NetDial {
        tls: reach.tls,
        server_name: reach.server_name.map(str::to_owned),
    };
    let client = Client::new(dial, reach.bootstrap_servers.to_vec(), &client_id)
        .with_credentials(credentials);
    Ok((client, outage))
}

/// A failure to meet the cluster at `open`, as the error the host acts on:
/// a refused login (a wrong password, a mechanism the broker does not
/// offer) as an invalid config, since restarting cannot fix it; a cluster
/// that is away as retriable; anything else as fatal.
pub fn open_failed(plugin: &str, connector: &str, e: &KafkaError) -> sluice_sdk::Error {
    let message = format!("{plugin} {connector}: {e}");
    match e {
        KafkaError::Auth { .. } => sluice_sdk::Error::invalid_config(message),
        e if e.is_retriable() => sluice_sdk::Error::retriable(message),
        _ => sluice_sdk::Error::fatal(message),
    }
}
