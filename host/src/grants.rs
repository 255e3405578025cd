//! Manifest grants turned into a plugin instance's WASI context.
//!
//! The context starts empty, as `WasiCtxBuilder` does: no directories, no
//! environment, no arguments, no standard streams, and a socket check that
//! refuses every address. Each grant in `[connector.grants]` opens exactly
//! one thing. Denying is the default because a connector plugin is code from
//! somewhere else, and an operator should be able to read what it can reach
//! from its manifest alone.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use wasmtime_wasi::cli::StdoutStream;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// Re-exported: the parsed entries of a `net` grant.
pub use crate::manifest::NetRule;

use crate::broker::StateQuota;
use crate::manifest::{
    ConnectorConfig, DEFAULT_CPU, DEFAULT_MEMORY_BYTES, DEFAULT_STATE_BYTES, DEFAULT_STATE_KEYS,
    FileMode, Manifest, SecretSource, format_size,
};
use crate::tls::TlsClient;

/// What one connector may reach, resolved against the manifest's folder.
/// Its `Debug` shows the names of environment variables, not their values.
#[derive(Clone, Default)]
pub struct GrantSet {
    /// Directories: host path, guest path, mode.
    pub files: Vec<(PathBuf, String, FileMode)>,
    /// May write to the host's standard output.
    pub stdout: bool,
    /// Most linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Longest a single plugin call may run.
    pub cpu: Duration,
    /// Addresses it may connect to.
    pub net: Vec<NetRule>,
    /// May it look names up.
    pub dns: bool,
    /// Environment variables passed through (name, value): those listed
    /// that the host has.
    pub env: Vec<(String, String)>,
    /// Names listed in `env` that the host does not have.
    pub env_missing: Vec<String>,
    /// Secret names and where they come from (never their values).
    pub secrets: Vec<(String, SecretSource)>,
    /// How much plugin state the connector may keep.
    pub state: StateQuota,
    /// `memory` or `cpu` was left to its default.
    pub default_memory: bool,
    /// See `default_memory`.
    pub default_cpu: bool,
    /// How the host makes TLS connections for the plugin. The check builds
    /// it once the secrets are read; until then, the system's roots.
    pub tls: TlsClient,
    /// The headers the host adds to the plugin's HTTP requests (secrets
    /// substituted by the check).
    pub http_headers: GrantedHeaders,
}

impl fmt::Debug for GrantSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantSet")
            .field("files", &self.files)
            .field("stdout", &self.stdout)
            .field("memory_bytes", &self.memory_bytes)
            .field("cpu", &self.cpu)
            .field("net", &self.net)
            .field("dns", &self.dns)
            .field("env", &self.env.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("secrets", &self.secrets)
            .field("state", &self.state)
            .field("tls", &self.tls)
            .field("http_headers", &self.http_headers)
            .finish_non_exhaustive()
    }
}

/// The headers `[connector.grants.http]` adds to every request, secrets
/// substituted. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct GrantedHeaders(Arc<Vec<(HeaderName, HeaderValue)>>);

impl fmt::Debug for GrantedHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl GrantedHeaders {
    /// The headers, from names and values already checked.
    pub fn new(headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        GrantedHeaders(Arc::new(headers))
    }

    /// Each header and its value.
    pub fn iter(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        self.0.iter()
    }

    /// The names, for `sluice validate`.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.to_string()).collect()
    }
}

/// A grant that cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A granted directory cannot be opened.
    #[error("cannot open granted directory {path}: {reason}")]
    Directory {
        /// The host path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The socket uses the `net` check refused for one instance: each refusal
/// is logged (at most one line a second, counting the rest) naming the
/// address and the grant that would allow it, and the last one is kept so
/// that an `open` failing after a refusal can say which grant it needs.
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<RefusalLog>>);

#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Refusal>,
    logged_at: Option<Instant>,
    unlogged: u64,
}

/// One socket use the grants refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The address.
    pub addr: SocketAddr,
    /// What the plugin tried.
    pub attempt: Attempt,
}

/// What a plugin tried to do with a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Connect to a peer (TCP).
    Connect,
    /// Send to a peer (UDP).
    Send,
    /// Bind a chosen address or port.
    Bind,
    /// Listen for connections.
    Listen,
    /// Accept a connection.
    Accept,
}

impl Attempt {
    fn of(use_: SocketAddrUse) -> Self {
        match use_ {
            SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => Attempt::Bind,
            SocketAddrUse::TcpListen => Attempt::Listen,
            SocketAddrUse::TcpAccept => Attempt::Accept,
            SocketAddrUse::TcpConnect => Attempt::Connect,
            SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => Attempt::Send,
        }
    }

    /// True for what only a server does, which no grant allows.
    fn serves(self) -> bool {
        matches!(self, Attempt::Bind | Attempt::Listen | Attempt::Accept)
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attempt::Connect => "connect to",
            Attempt::Send => "send to",
            Attempt::Bind => "bind",
            Attempt::Listen => "listen",
            Attempt::Accept => "accept",
        })
    }
}

impl Refusal {
    /// The grant that would allow it, as the manifest writes it, or why
    /// none can.
    pub fn fix(&self) -> String {
        if self.attempt.serves() {
            "a plugin may not serve: no grant allows binding, listening or accepting".into()
        } else {
            format!("grant it with net = [\"{}\"]", self.addr)
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refused to {} {}, which no `net` grant allows ({})",
            self.attempt,
            self.addr,
            self.fix()
        )
    }
}

/// How often a refusal is logged, at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

impl Refusals {
    fn record(&self, refusal: Refusal) {
        let mut log = self.0.lock().expect("refusals lock");
        let now = Instant::now();
        if log
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY)
        {
            let unlogged = std::mem::take(&mut log.unlogged);
            tracing::warn!(
                addr = %refusal.addr,
                attempt = %refusal.attempt,
                refused_since_last_line = unlogged,
                "{refusal}"
            );
            log.logged_at = Some(now);
        } else {
            log.unlogged += 1;
        }
        log.last = Some(refusal);
    }

    /// The last refusal, taken (so a later failure is not blamed on it).
    pub fn take_last(&self) -> Option<Refusal> {
        self.0.lock().expect("refusals lock").last.take()
    }
}

/// Decides one socket use against the `net` rules. The rules are an
/// allow-list of remote peers: a plugin may connect to them, send to them
/// and receive from them. It may not serve: binding a chosen address or
/// port, listening and accepting are refused whatever the rules say.
pub(crate) async fn check_socket(
    rules: Arc<Vec<NetRule>>,
    refusals: Refusals,
    addr: SocketAddr,
    use_: SocketAddrUse,
) -> bool {
    let allowed = match use_ {
        // The implicit bind before a connect or a send: any local address,
        // an ephemeral port. The remote address is checked next.
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
            addr.ip().is_unspecified() && addr.port() == 0
        }
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => false,
        SocketAddrUse::TcpConnect | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => {
            let mut ok = false;
            for rule in rules.iter() {
                if rule.allows(addr).await {
                    ok = true;
                    break;
                }
            }
            ok
        }
    };
    // A datagram from an ungranted peer is dropped silently: the plugin did
    // not ask for it.
    if !allowed && !matches!(use_, SocketAddrUse::UdpReceive) {
        refusals.record(Refusal {
            addr,
            attempt: Attempt::of(use_),
        });
    }
    allowed
}

impl GrantSet {
    /// Nothing granted: compute, log and exchange batches only.
    pub fn none() -> Self {
        GrantSet {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpu: DEFAULT_CPU,
            default_memory: true,
            default_cpu: true,
            ..GrantSet::default()
        }
    }

    /// The grants of `connector`, as written in `manifest` and parsed by its
    /// check (sizes, durations and net rules are already typed).
    pub fn from_manifest(manifest: &Manifest, connector: &ConnectorConfig) -> Self {
        let g = &connector.grants;
        let mut env = Vec::new();
        let mut env_missing = Vec::new();
        for name in &g.env {
            let name = name.get_ref();
            match std::env::var(name) {
                Ok(v) => env.push((name.clone(), v)),
                Err(_) => env_missing.push(name.clone()),
            }
        }
        let limits = &connector.limits;
        let state = StateQuota {
            bytes: limits.state.unwrap_or(DEFAULT_STATE_BYTES),
            keys: limits.state_keys.unwrap_or(DEFAULT_STATE_KEYS),
        };
        GrantSet {
            files: g
                .files
                .iter()
                .map(|f| (manifest.resolve(&f.host), f.guest.clone(), f.mode))
                .collect(),
            stdout: g.stdout,
            memory_bytes: limits.memory.unwrap_or(DEFAULT_MEMORY_BYTES),
            cpu: limits.cpu.unwrap_or(DEFAULT_CPU),
            net: limits.net.clone(),
            dns: g.dns,
            env,
            env_missing,
            secrets: g
                .secrets
                .iter()
                .map(|(n, s)| (n.clone(), s.get_ref().clone()))
                .collect(),
            state,
            default_memory: limits.memory.is_none(),
            default_cpu: limits.cpu.is_none(),
            tls: TlsClient::default(),
            http_headers: GrantedHeaders::default(),
        }
    }

    /// Builds the WASI context for one instance. What the plugin writes to
    /// standard error goes to the host's log, line by line, redacted; what
    /// it writes to standard output, if granted, is redacted too.
    pub fn wasi_ctx(
        &self,
        stdout: impl StdoutStream + 'static,
        stderr: impl StdoutStream + 'static,
        refusals: Refusals,
    ) -> Result<WasiCtx, GrantError> {
        let mut b = WasiCtxBuilder::new();
        for (host, guest, mode) in &self.files {
            // A read-write grant names a place to write; create it, as a
            // container runtime creates a volume's folder.
            if *mode == FileMode::ReadWrite && !host.exists() {
                std::fs::create_dir_all(host).map_err(|e| GrantError::Directory {
                    path: host.clone(),
                    reason: format!("cannot create it: {e}"),
                })?;
            }
            let perms = match mode {
                FileMode::ReadOnly => FsPerms::ReadOnly,
                FileMode::ReadWrite => FsPerms::ReadWrite,
            };
            b.preopened_dir(host, guest, perms)
                .map_err(|e| GrantError::Directory {
                    path: host.clone(),
                    reason: format!("{e:#}"),
                })?;
        }
        if self.stdout {
            b.stdout(stdout);
        }
        b.stderr(stderr);
        for (name, value) in &self.env {
            b.env(name, value);
        }
        // The check runs even with no `net` grant at all, so that every
        // refused use is logged and can be named when `open` fails.
        let rules = Arc::new(self.net.clone());
        b.allow_tcp(true);
        b.allow_udp(true);
        b.socket_addr_check(move |addr, use_| {
            Box::pin(check_socket(rules.clone(), refusals.clone(), addr, use_))
        });
        b.allow_ip_name_lookup(self.dns);
        Ok(b.build())
    }

    /// One line per kind of grant, for `sluice validate`: (grant, what it
    /// allows). Secrets show their names and sources, never values.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut rows = Vec::new();
        let files = self
            .files
            .iter()
            .map(|(host, guest, mode)| {
                let mode = match mode {
                    FileMode::ReadOnly => "read-only",
                    FileMode::ReadWrite => "read-write",
                };
                format!("{} as {guest} ({mode})", host.display())
            })
            .collect::<Vec<_>>();
        rows.push(("files", list_or_none(&files)));
        let net = self.net.iter().map(ToString::to_string).collect::<Vec<_>>();
        rows.push(("net", list_or_none(&net)));
        rows.push(("dns", if self.dns { "yes".into() } else { "no".into() }));
        let mut env: Vec<String> = self.env.iter().map(|(n, _)| n.clone()).collect();
        env.extend(
            self.env_missing
                .iter()
                .map(|n| format!("{n} (not set on this host)")),
        );
        rows.push(("env", list_or_none(&env)));
        let secrets = self
            .secrets
            .iter()
            .map(|(name, source)| match source {
                SecretSource { env: Some(v), .. } => format!("{name} from env {v}"),
                SecretSource { file: Some(f), .. } => format!("{name} from file {}", f.display()),
                _ => name.clone(),
            })
            .collect::<Vec<_>>();
        rows.push(("secrets", list_or_none(&secrets)));
        rows.push(("tls", self.tls.describe()));
        rows.push(("http headers", list_or_none(&self.http_headers.names())));
        rows.push((
            "stdout",
            if self.stdout {
                "yes".into()
            } else {
                "no".into()
            },
        ));
        let default = |d: bool| if d { " (default)" } else { "" };
        rows.push((
            "memory",
            format!(
                "{}{}",
                format_size(self.memory_bytes),
                default(self.default_memory)
            ),
        ));
        rows.push((
            "cpu",
            format!("{:?} per call{}", self.cpu, default(self.default_cpu)),
        ));
        rows.push((
            "state",
            format!(
                "{} in {} keys{}",
                format_size(self.state.bytes),
                self.state.keys,
                default(self.state == StateQuota::default())
            ),
        ));
        rows
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_net_grant_lets_a_plugin_reach_peers_but_never_serve() {
        let rules = Arc::new(vec![NetRule::parse("0.0.0.0/0:1-65535").unwrap()]);
        let refusals = Refusals::default();
        let check =
            |addr: &str, u| check_socket(rules.clone(), refusals.clone(), addr.parse().unwrap(), u);
        assert!(check("0.0.0.0:0", SocketAddrUse::TcpBind).await);
        assert!(check("10.0.0.1:80", SocketAddrUse::TcpConnect).await);
        assert!(check("10.0.0.1:53", SocketAddrUse::UdpSend).await);
        assert_eq!(refusals.take_last(), None);
        assert!(!check("0.0.0.0:8080", SocketAddrUse::TcpBind).await);
        assert!(!check("127.0.0.1:0", SocketAddrUse::UdpBind).await);
        assert!(!check("0.0.0.0:8080", SocketAddrUse::TcpListen).await);
        assert!(!check("10.0.0.1:40000", SocketAddrUse::TcpAccept).await);
        let last = refusals.take_last().unwrap();
        assert_eq!(last.attempt, Attempt::Accept);
        assert!(last.to_string().contains("may not serve"), "{last}");
    }

    #[tokio::test]
    async fn a_refusal_names_the_grant_that_would_allow_it() {
        let refusals = Refusals::default();
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        assert!(
            !check_socket(
                Arc::default(),
                refusals.clone(),
                addr,
                SocketAddrUse::TcpConnect
            )
            .await
        );
        let last = refusals.take_last().unwrap();
        assert_eq!(
            last.to_string(),
            "refused to connect to 127.0.0.1:5432, which no `net` grant allows \
             (grant it with net = [\"127.0.0.1:5432\"])"
        );
        assert_eq!(refusals.take_last(), None, "taken once");
    }
}
