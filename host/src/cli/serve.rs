//! `sluice serve`: the daemon, with its admin API, until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use sluice::admin::{access, api, daemon};
use sluice::broker::nats::NatsAccess;
use sluice::cluster::ClusterConfig;
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
    /// Cluster mode: share the connectors with every host on these NATS
    /// servers (comma-separated URLs), which are also the broker. The
    /// token and replicas come from the manifest's [broker], if any.
    #[arg(long, value_name = "URLS", value_parser = parse_servers)]
    cluster: Option<Servers>,
    /// Cluster mode: how long a host's lease on an instance lasts without
    /// renewal. A dead host's instances start elsewhere after about this
    /// long; a host that cannot renew stops them after half of it.
    #[arg(long, default_value = "6s", value_name = "DURATION", value_parser = parse_lease)]
    lease: std::time::Duration,
    /// Cluster mode: this host's name, unique in the cluster (default:
    /// the machine's hostname and the admin API's port).
    #[arg(long, value_name = "NAME")]
    host_id: Option<String>,
}

/// The servers of `--cluster`.
#[derive(Debug, Clone)]
struct Servers(Vec<async_nats::ServerAddr>);

fn parse_servers(text: &str) -> Result<Servers, String> {
    let servers = text
        .split(',')
        .map(|url| {
            url.trim()
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("{:?} is not a NATS server URL ({e})", url.trim()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Servers(servers))
}

fn parse_lease(text: &str) -> Result<std::time::Duration, String> {
    let lease =
        humantime::parse_duration(text).map_err(|e| format!("{e} (say e.g. 6s or 1500ms)"))?;
    if lease < std::time::Duration::from_millis(600) {
        return Err("a lease shorter than 600ms leaves no time to renew it; say e.g. 6s".into());
    }
    Ok(lease)
}

/// The machine's hostname, for the default `--host-id`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "sluice".into())
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
    // Bound first: the port names this host in a cluster.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    let cluster = match args.cluster {
        Some(Servers(servers)) => {
            let nats = manifest
                .as_ref()
                .filter(|m| m.broker.kind == sluice::manifest::BrokerKind::Nats);
            let access = match nats.map(NatsAccess::from_manifest).transpose() {
                Ok(access) => access.unwrap_or_default(),
                Err(why) => {
                    eprintln!("error: the [broker] settings cannot be used: {why}");
                    return Ok(ExitCode::from(EXIT_INVALID));
                }
            };
            Some(ClusterConfig {
                servers,
                access,
                host: args
                    .host_id
                    .unwrap_or_else(|| format!("{}-{}", hostname(), addr.port())),
                lease: args.lease,
                replicas: nats.map_or(1, |m| m.nats_replicas() as usize),
            })
        }
        None => None,
    };
    let daemon = Arc::new(
        daemon::Daemon::open(
            daemon::DaemonConfig {
                data_dir: data_dir.clone(),
                manifest,
                cluster: cluster.clone(),
            },
            plugins,
        )
        .await
        .with_context(|| format!("starting the daemon on {}", data_dir.display()))?,
    );
    let token = access::token_for(&data_dir, listen, args.token)?;
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
    let (leave, left) = tokio::sync::watch::channel(false);
    let member = cluster.map(|c| {
        tracing::info!(host = %c.host, lease = ?c.lease, "joined the cluster");
        tokio::spawn(daemon.clone().run_cluster(left))
    });
    api::serve(listener, daemon.clone(), token, async {
        terminated(term).await;
        tracing::info!("stopping: every connector flushes, commits and closes");
    })
    .await
    .context("serving the admin API")?;
    lag.abort();
    if let Some(member) = member {
        // Its instances stop and their leases go back before the rest stops.
        leave.send(true).ok();
        member.await.ok();
    }
    daemon.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
