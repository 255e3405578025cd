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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

/// Re-exported: the parsed entries of a `net` grant.
pub use crate::manifest::NetRule;
use crate::manifest::{
    ConnectorConfig, DEFAULT_CPU, DEFAULT_MEMORY_BYTES, FileMode, Manifest, SecretSource,
    format_size, parse_bytes, parse_duration,
};
use crate::secrets::Redactor;

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
    /// `memory` or `cpu` was left to its default.
    pub default_memory: bool,
    /// See `default_memory`.
    pub default_cpu: bool,
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
            .finish_non_exhaustive()
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

/// Decides one socket use against the `net` rules. The rules are an
/// allow-list of remote peers: a plugin may connect to them, send to them
/// and receive from them. It may not serve: binding a chosen address or
/// port, listening and accepting are refused whatever the rules say.
async fn check_socket(rules: Arc<Vec<NetRule>>, addr: SocketAddr, use_: SocketAddrUse) -> bool {
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
    if !allowed && !matches!(use_, SocketAddrUse::UdpReceive) {
        tracing::warn!(%addr, r#use = ?use_, "refused a socket use that no `net` grant allows");
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

    /// The grants of `connector`, as written in `manifest`. The manifest was
    /// checked when loaded, so sizes, durations and rules parse.
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
        let memory = g
            .memory
            .as_ref()
            .and_then(|m| parse_bytes(m.get_ref()).ok());
        let cpu = g
            .cpu
            .as_ref()
            .and_then(|c| parse_duration(c.get_ref()).ok());
        GrantSet {
            files: g
                .files
                .iter()
                .map(|f| (manifest.resolve(&f.host), f.guest.clone(), f.mode))
                .collect(),
            stdout: g.stdout,
            memory_bytes: memory.unwrap_or(DEFAULT_MEMORY_BYTES),
            cpu: cpu.unwrap_or(DEFAULT_CPU),
            net: g
                .net
                .iter()
                .filter_map(|r| NetRule::parse(r.get_ref()).ok())
                .collect(),
            dns: g.dns,
            env,
            env_missing,
            secrets: g
                .secrets
                .iter()
                .map(|(n, s)| (n.clone(), s.get_ref().clone()))
                .collect(),
            default_memory: memory.is_none(),
            default_cpu: cpu.is_none(),
        }
    }

    /// Builds the WASI context for one instance. What the plugin writes to
    /// standard error goes to the host's log, line by line, redacted; what
    /// it writes to standard output, if granted, is redacted too.
    pub fn wasi_ctx(
        &self,
        stderr: PluginStderr,
        redactor: &Redactor,
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
            b.stdout(PluginStdout::new(redactor.clone()));
        }
        b.stderr(stderr);
        for (name, value) in &self.env {
            b.env(name, value);
        }
        if !self.net.is_empty() {
            let rules = Arc::new(self.net.clone());
            b.allow_tcp(true);
            b.allow_udp(true);
            b.socket_addr_check(move |addr, use_| {
                Box::pin(check_socket(rules.clone(), addr, use_))
            });
        }
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

/// Splits a plugin's output stream into lines and masks secrets in each,
/// never cutting a secret in two.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

/// Longest line kept; a longer one is passed on in pieces.
const MAX_LINE: usize = 4096;

impl Lines {
    /// Takes `bytes` and hands each complete line (without its newline),
    /// redacted, to `emit`, with `true`; or a piece of an overlong line,
    /// with `false`.
    fn push(&mut self, bytes: &[u8], redactor: &Redactor, mut emit: impl FnMut(&str, bool)) {
        self.partial.extend_from_slice(bytes);
        loop {
            let (end, skip) = match self.partial.iter().position(|&b| b == b'\n') {
                Some(at) => (at, 1),
                None if self.partial.len() >= MAX_LINE => {
                    match redactor.safe_cut(&self.partial, MAX_LINE) {
                        0 => return,
                        cut => (cut, 0),
                    }
                }
                None => return,
            };
            let line: Vec<u8> = self.partial.drain(..end + skip).take(end).collect();
            emit(&redactor.redact(&String::from_utf8_lossy(&line)), skip == 1);
        }
    }

    /// Hands on what is left.
    fn finish(&mut self, redactor: &Redactor, mut emit: impl FnMut(&str, bool)) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            emit(&redactor.redact(&String::from_utf8_lossy(&rest)), false);
        }
    }
}

/// A plugin's standard error: each line goes to the host's log as a
/// warning, tagged with the connector and instance, with secrets masked.
/// The last line is kept for the error report if the plugin then traps (a
/// Rust plugin's panic message arrives this way).
#[derive(Clone)]
pub struct PluginStderr {
    connector: Arc<str>,
    instance: u32,
    redactor: Redactor,
    lines: Arc<Mutex<Lines>>,
    last: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for PluginStderr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginStderr")
            .field("connector", &self.connector)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl PluginStderr {
    /// The standard error of instance `instance` of `connector`.
    pub fn new(connector: Arc<str>, instance: u32, redactor: Redactor) -> Self {
        PluginStderr {
            connector,
            instance,
            redactor,
            lines: Arc::default(),
            last: Arc::default(),
        }
    }

    /// The last line written, redacted.
    pub fn last_line(&self) -> Option<String> {
        self.last.lock().expect("stderr lock").clone()
    }

    fn emit(&self, text: &str) {
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        tracing::warn!(connector = %self.connector, instance = self.instance, "plugin stderr: {text}");
        *self.last.lock().expect("stderr lock") = Some(text.to_owned());
    }
}

impl IsTerminal for PluginStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginStderr {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for PluginStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut lines = self.lines.lock().expect("stderr lock");
        lines.push(buf, &self.redactor, |l, _| self.emit(l));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut lines = self.lines.lock().expect("stderr lock");
        lines.finish(&self.redactor, |l, _| self.emit(l));
        Poll::Ready(Ok(()))
    }
}

/// A plugin's standard output, when granted: the host's standard output,
/// with secrets masked line by line (straight through when the manifest
/// has no secrets).
#[derive(Clone)]
pub struct PluginStdout {
    redactor: Redactor,
    lines: Arc<Mutex<Lines>>,
}

impl fmt::Debug for PluginStdout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginStdout").finish_non_exhaustive()
    }
}

impl PluginStdout {
    /// Standard output masking what `redactor` knows.
    pub fn new(redactor: Redactor) -> Self {
        PluginStdout {
            redactor,
            lines: Arc::default(),
        }
    }
}

impl IsTerminal for PluginStdout {
    fn is_terminal(&self) -> bool {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    }
}

impl StdoutStream for PluginStdout {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for PluginStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use std::io::Write;
        let out = std::io::stdout();
        let mut out = out.lock();
        if self.redactor.is_empty() {
            return Poll::Ready(out.write_all(buf).map(|()| buf.len()));
        }
        let mut result = Ok(());
        let mut lines = self.lines.lock().expect("stdout lock");
        lines.push(buf, &self.redactor, |l, whole| {
            if result.is_ok() {
                result = if whole {
                    writeln!(out, "{l}")
                } else {
                    write!(out, "{l}")
                };
            }
        });
        Poll::Ready(result.map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use std::io::Write;
        Poll::Ready(std::io::stdout().flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let mut lines = self.lines.lock().expect("stdout lock");
        lines.finish(&self.redactor, |l, _| {
            let _ = write!(out, "{l}");
        });
        Poll::Ready(out.flush())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_never_cut_a_secret_in_two() {
        let r = Redactor::new(["SECRET"]);
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let mut long = "x".repeat(MAX_LINE - 3);
        long.push_str("SECRET tail\n");
        for chunk in long.as_bytes().chunks(7) {
            lines.push(chunk, &r, |l, _| got.push(l.to_owned()));
        }
        let joined = got.concat();
        assert!(!joined.contains("SECRET"), "{joined}");
        assert!(joined.ends_with("*** tail"), "{joined}");
    }

    #[tokio::test]
    async fn a_net_grant_lets_a_plugin_reach_peers_but_never_serve() {
        let rules = Arc::new(vec![NetRule::parse("0.0.0.0/0:1-65535").unwrap()]);
        let check = |addr: &str, u| check_socket(rules.clone(), addr.parse().unwrap(), u);
        assert!(check("0.0.0.0:0", SocketAddrUse::TcpBind).await);
        assert!(check("10.0.0.1:80", SocketAddrUse::TcpConnect).await);
        assert!(check("10.0.0.1:53", SocketAddrUse::UdpSend).await);
        assert!(!check("0.0.0.0:8080", SocketAddrUse::TcpBind).await);
        assert!(!check("127.0.0.1:0", SocketAddrUse::UdpBind).await);
        assert!(!check("0.0.0.0:8080", SocketAddrUse::TcpListen).await);
        assert!(!check("10.0.0.1:40000", SocketAddrUse::TcpAccept).await);
    }
}
