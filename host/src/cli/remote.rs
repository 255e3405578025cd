//! What the admin verbs (`sluice connectors …`, `sluice plugins …`) share:
//! which daemon they talk to, a client of its admin API, and exit codes
//! scripts can rely on (see `main.rs`). Answers are printed as tables for
//! people or as JSON for scripts (`--json`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::client::{AdminClient, CallError};
use anyhow::Context as _;
use serde_json::Value;
use sluice::admin::access;

use super::{EXIT_INVALID, thousands};

/// Which daemon an admin verb talks to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The daemon's URL (default: the one its data directory names).
    #[arg(long, env = "SLUICE_URL", global = true)]
    pub url: Option<String>,
    /// Bearer token (default: the one in the daemon's data directory).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The daemon's data directory (default: $SLUICE_DATA_DIR, else
    /// ~/.local/share/sluice).
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The exit code for a refused call.
pub fn exit_for(e: &CallError) -> ExitCode {
    ExitCode::from(match e {
        CallError::Unreachable { .. } => 1,
        CallError::Refused { status, .. } => match status {
            400 => 2,
            404 => 3,
            409 => 4,
            422 => 5,
            401 | 403 => 6,
            _ => 1,
        },
    })
}

/// A client of the daemon `target` names.
pub fn client(target: &Target) -> anyhow::Result<AdminClient> {
    let data_dir = target
        .data_dir
        .clone()
        .unwrap_or_else(access::default_data_dir);
    AdminClient::locate(target.url.clone(), target.token.clone(), &data_dir)
}

/// Reads a JSON or TOML file as JSON.
pub fn read_document(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
    } else {
        let table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        Ok(serde_json::to_value(table)?)
    }
}

/// A plugin argument that names an existing file is sent as an absolute
/// path, so that the daemon finds it whatever its working directory.
pub fn absolute_plugin(plugin: &str) -> String {
    let p = Path::new(plugin);
    if p.exists() {
        std::path::absolute(p).map_or_else(|_| plugin.to_owned(), |a| a.display().to_string())
    } else {
        plugin.to_owned()
    }
}

/// `name` escaped for one segment of a URL path.
pub fn path_part(name: &str) -> String {
    if name.bytes().all(|b| b == b'.') {
        // `.` and `..` would be read as the path's own steps.
        return name.bytes().map(|_| "%2E").collect();
    }
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs an admin verb; input the CLI itself cannot read exits with
/// [`EXIT_INVALID`], as a request the daemon refuses as invalid does.
pub async fn with_local_input(
    verb: impl Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    match verb.await {
        Err(e) if e.downcast_ref::<LocalInput>().is_some() => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(EXIT_INVALID))
        }
        other => other,
    }
}

/// A local file the CLI could not read or parse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LocalInput(String);

/// `r`, its error marked as local input (exit code 2) and said with `what`.
pub fn local<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    r.map_err(|e| LocalInput(format!("{}: {e}", what())).into())
}

/// A JSON value in a table cell: `-` for null, numbers with separators.
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_u64().map_or_else(|| n.to_string(), thousands),
        other => other.to_string(),
    }
}
