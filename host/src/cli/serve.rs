//! `sluice serve`: the daemon, with its admin API, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use sluice::admin::{access, api, daemon};
use sluice::manifest::Manifest;
use sluice::pipeline;
use sluice::plugin::PluginHost;

use super::{EXIT_INVALID, terminated};

/// The arguments of `sluice serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Data directory: log, offsets, state, connector definitions
    /// (default: $SLUICE_DATA_DIR, else ~/.local/share/sluice).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address of the admin API. Any address but loopback requires a
    /// bearer token.
    #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
    listen: std::net::SocketAddr,
    /// A manifest whose [broker] and [topics] the log uses, and whose
    /// connectors are created at start unless they exist.
    #[arg(long, value_name = "FILE")]
    manifest: Option<PathBuf>,
    /// Require this bearer token (default: the one in the data
    /// directory, generated there when listening beyond loopback).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs the daemon until SIGTERM or Ctrl-C, then stops every connector
/// cleanly.
pub async fn exec(args: Args, plugins: Arc<PluginHost>) -> anyhow::Result<ExitCode> {
    let listen = args.listen;
    // Before anything slow: a SIGTERM while connectors load still stops
    // the daemon cleanly once they have.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let data_dir = args.data_dir.unwrap_or_else(access::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let manifest = match args.manifest.map(|m| Manifest::load(&m)).transpose() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let daemon = Arc::new(
        daemon::Daemon::open(
            daemon::DaemonConfig {
                data_dir: data_dir.clone(),
                manifest,
            },
            plugins,
        )
        .await
        .with_context(|| format!("starting the daemon on {}", data_dir.display()))?,
    );
    let token = access::token_for(&data_dir, listen, args.token)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    access::write_daemon_info(&data_dir, addr)?;
    tracing::info!(
        url = %format!("http://{addr}"),
        data_dir = %data_dir.display(),
        token_required = token.is_some(),
        "admin API listening"
    );
    let lag = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            loop {
                daemon.measure_lag();
                tokio::time::sleep(pipeline::LAG_EVERY).await;
            }
        })
    };
    api::serve(listener, daemon.clone(), token, async {
        terminated(term).await;
        tracing::info!("stopping: every connector flushes, commits and closes");
    })
    .await
    .context("serving the admin API")?;
    lag.abort();
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
