//! How the CLI finds the daemon, and the bearer token that guards it.
//!
//! At start the daemon writes `<data_dir>/daemon.json` with the URL it
//! listens on (the port chosen, if it was asked for port 0). A daemon that
//! listens beyond the loopback interface requires a bearer token: the one
//! given (`--token` or `SLUICE_TOKEN`), else the one in
//! `<data_dir>/admin.token`, generated at first start with owner-only
//! permissions. The CLI reads both files from the same data directory, so
//! on the daemon's machine nothing needs to be passed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The file naming the daemon's URL.
pub const DAEMON_FILE: &str = "daemon.json";
/// The file holding the daemon's token.
pub const TOKEN_FILE: &str = "admin.token";

/// The default data directory: `$SLUICE_DATA_DIR`, else
/// `$XDG_DATA_HOME/sluice`, else `~/.local/share/sluice`, else `./sluice-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SLUICE_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(d).join("sluice");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/sluice");
    }
    PathBuf::from("sluice-data")
}

/// What the daemon writes about itself.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonInfo {
    /// Where its API answers, e.g. `http://127.0.0.1:7070`.
    pub url: String,
    /// Its process id.
    pub pid: u32,
}

/// Writes `daemon.json` into `data_dir`.
pub fn write_daemon_info(data_dir: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let info = DaemonInfo {
        url: format!("http://{addr}"),
        pid: std::process::id(),
    };
    let path = data_dir.join(DAEMON_FILE);
    std::fs::write(&path, serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `daemon.json` from `data_dir`.
pub fn read_daemon_info(data_dir: &Path) -> anyhow::Result<DaemonInfo> {
    let path = data_dir.join(DAEMON_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no daemon found: cannot read {} (start one with `sluice serve`; or name its data \
             directory with --data-dir or SLUICE_DATA_DIR, or its address with --url or SLUICE_URL)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// The token in `data_dir`, if there is one.
pub fn read_token(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(data_dir.join(TOKEN_FILE))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

/// The token the daemon enforces: `given`, else the one in the data
/// directory, else (when listening beyond loopback) a new one written
/// there. `None`: no token is required (loopback, none given).
pub fn token_for(
    data_dir: &Path,
    listen: SocketAddr,
    given: Option<String>,
) -> anyhow::Result<Option<String>> {
    let token = match given.filter(|t| !t.is_empty()) {
        Some(t) => Some(t),
        None => match read_token(data_dir) {
            Some(t) => Some(t),
            None if listen.ip().is_loopback() => None,
            None => Some(generate_token()?),
        },
    };
    if let Some(t) = &token {
        write_owner_only(&data_dir.join(TOKEN_FILE), t)?;
    }
    Ok(token)
}

fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?;
    std::io::Read::read_exact(&mut f, &mut bytes).context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn write_owner_only(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the admin token to {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(token.as_bytes())?;
    Ok(())
}

/// Compares a presented token with the right one in constant time.
pub fn token_matches(presented: &str, right: &str) -> bool {
    let (a, b) = (presented.as_bytes(), right.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_token_is_generated_owner_only_beyond_loopback_and_not_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(token_for(dir.path(), loopback, None).unwrap(), None);
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let token = token_for(dir.path(), any, None).unwrap().unwrap();
        assert_eq!(token.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Kept across restarts, and then required on loopback too.
        assert_eq!(
            token_for(dir.path(), loopback, None).unwrap(),
            Some(token.clone())
        );
        assert!(token_matches(&token, &token));
        assert!(!token_matches("wrong", &token));
    }
}
