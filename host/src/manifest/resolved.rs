//! What the manifest check makes of the values that are small languages of
//! their own: sizes, durations, net rules, retention words. They are parsed
//! once, in `check`, with the defaults filled in; everything downstream reads
//! these typed values and never the strings they came from (Spin's manifest
//! `normalize`, ripgrep's low-level args becoming high-level args).

use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use rustls_pki_types::ServerName;

use super::net::NetRule;

/// Default `memory` grant.
pub const DEFAULT_MEMORY_BYTES: u64 = 256 * 1024 * 1024;
/// Default `cpu` grant.
pub const DEFAULT_CPU: Duration = Duration::from_secs(10);
/// Default `state` grant: room for cursors and small caches, and a bound on
/// what one connector can make the host hold.
pub const DEFAULT_STATE_BYTES: u64 = 16 << 20;
/// Default `state_keys` grant.
pub const DEFAULT_STATE_KEYS: u32 = 10_000;
/// Default first restart delay.
pub const DEFAULT_RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Default longest restart delay.
pub const DEFAULT_RESTART_MAX: Duration = Duration::from_secs(60);
/// Default restarts in a row before a connector is `failed`.
pub const DEFAULT_RESTART_ATTEMPTS: u32 = 10;
/// Default `retention_age`.
pub const DEFAULT_RETENTION_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Default `max_backlog`.
pub const DEFAULT_MAX_BACKLOG: u64 = 1 << 30;

/// A connector's `[connector.grants]` sizes, durations and net rules, and
/// its `[connector.restart]`, as the check parsed them. A limit that is
/// `None` was not written: the default applies, and `sluice validate` says
/// so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// `memory`, in bytes.
    pub memory: Option<u64>,
    /// `cpu`, per call.
    pub cpu: Option<Duration>,
    /// `state`, in bytes.
    pub state: Option<u64>,
    /// `state_keys`.
    pub state_keys: Option<u32>,
    /// `net`, one rule per entry, in order.
    pub net: Vec<NetRule>,
    /// `[connector.grants.tls]`.
    pub tls: TlsPolicy,
    /// `[connector.grants.http]` `headers`: each name, checked, and its
    /// value as written (`${secret:NAME}` substituted when the connector
    /// starts).
    pub http_headers: Vec<(HeaderName, String)>,
    /// `[connector.restart]`.
    pub restart: RestartPolicy,
}

/// A connector's `[connector.grants.tls]`, as the check parsed it. The
/// files and secrets it names are read when the connector starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    /// CA certificates to trust (PEM), resolved against the manifest's
    /// folder.
    pub ca_file: Option<PathBuf>,
    /// Trust the system's roots too.
    pub system_roots: bool,
    /// The secrets holding the client certificate chain and its key.
    pub client_identity: Option<ClientIdentity>,
    /// The name to check the server's certificate against, whatever the
    /// plugin asks for.
    pub server_name: Option<ServerName<'static>>,
}

impl Default for TlsPolicy {
    /// No table: the system's roots, no client certificate.
    fn default() -> Self {
        TlsPolicy {
            ca_file: None,
            system_roots: true,
            client_identity: None,
            server_name: None,
        }
    }
}

/// The names of the two secrets that make a client's TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The secret holding the certificate chain, PEM.
    pub cert_secret: String,
    /// The secret holding the private key, PEM.
    pub key_secret: String,
}

/// How a connector's failed instances are restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; each next wait doubles.
    pub initial: Duration,
    /// Longest wait. An instance up this long has recovered, and its count
    /// of failures starts over. Never less than `initial`.
    pub max: Duration,
    /// Restarts in a row before giving up.
    pub attempts: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: DEFAULT_RESTART_INITIAL,
            max: DEFAULT_RESTART_MAX,
            attempts: DEFAULT_RESTART_ATTEMPTS,
        }
    }
}

/// What the log enforces for one topic: `[broker]`'s defaults with the
/// topic's `[topics.<name>]` over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicPolicy {
    /// Partitions when created.
    pub partitions: u32,
    /// Most bytes of committed records kept per partition.
    pub retention_bytes: Option<u64>,
    /// Longest time committed records are kept.
    pub retention_age: Option<Duration>,
    /// Most bytes a group may be behind before sources wait.
    pub max_backlog: u64,
}

impl Default for TopicPolicy {
    /// The policy of a manifest that sets nothing.
    fn default() -> Self {
        TopicPolicy {
            partitions: 1,
            retention_bytes: None,
            retention_age: Some(DEFAULT_RETENTION_AGE),
            max_backlog: DEFAULT_MAX_BACKLOG,
        }
    }
}
