//! The `sluice` binary's own modules (not part of the library): one module
//! per verb, as cargo's `commands/<verb>.rs`, each with its clap arguments
//! (`Args`) and its `exec`. What several verbs share is here; what the admin
//! verbs share (talking to a daemon) is in [`remote`].

pub mod client;
pub mod connectors;
pub mod plugins;
pub mod remote;
pub mod run;
pub mod serve;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use sluice::manifest::Manifest;
use sluice::pipeline::{self, CheckedConnector};
use sluice::plugin::PluginHost;

/// Exit code for an invalid manifest or config (or input the CLI itself
/// cannot read, as for a request the daemon refuses as invalid).
pub const EXIT_INVALID: u8 = 2;
/// Exit code after Ctrl-C or SIGTERM.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Loads and checks a manifest, printing its errors; the exit code if it
/// is not valid.
pub async fn load_checked(
    path: &Path,
    plugins: &PluginHost,
) -> Result<(Manifest, Vec<CheckedConnector>), ExitCode> {
    let manifest = match Manifest::load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Err(ExitCode::from(EXIT_INVALID));
        }
    };
    match pipeline::check(&manifest, plugins).await {
        Ok(c) => Ok((manifest, c)),
        Err(errors) => {
            for e in errors.0 {
                eprintln!("error: {e:#}\n");
            }
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// Waits for Ctrl-C or SIGTERM on `term` (registered early, so that a
/// signal that comes first is not lost).
pub async fn terminated(mut term: Option<tokio::signal::unix::Signal>) {
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = sigterm => {}
    }
}

/// `n` with thousands separators: `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
