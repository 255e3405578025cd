//! The `sluice` command line: a thin layer over the `sluice` library.
//!
//! Exit codes scripts can rely on: 0 done, 1 a connector or the host failed
//! (or the daemon cannot be reached), 2 the manifest or a connector's config
//! is invalid (or the command line is), 3 no such connector or plugin, 4 not
//! allowed in the connector's state, 5 a module swap failed (the old module
//! runs on), 6 the daemon refused the token, 130 `run` stopped by Ctrl-C or
//! SIGTERM (`serve` exits 0 after a clean stop).

// This file is the CLI's own output; everything else logs through tracing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::manifest::Manifest;
use sluice::pipeline::{self, ConnectorOutcome, ConnectorReport};
use sluice::plugin::{CompileCache, PluginHost, PluginRef, builtin_names};

mod cli;

/// Sluice runs connector plugins compiled to WebAssembly components, moving
/// record batches between them through a durable broker.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Folder for compiled plugins (default: $SLUICE_CACHE_DIR, else
    /// ~/.cache/sluice).
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile plugins every time instead of caching them.
    #[arg(long, global = true)]
    no_cache: bool,

    /// How log lines are written to standard error: `text` (coloured only
    /// on a terminal, and never when NO_COLOR is set) or `json` (one object
    /// a line, for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SLUICE_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// For people.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a manifest's pipeline in the foreground until its bounded sources
    /// are done and its sinks drained, or until Ctrl-C.
    Run {
        /// The manifest (TOML).
        manifest: PathBuf,
        /// Never show the progress line, even on a terminal.
        #[arg(long)]
        no_progress: bool,
        /// Swap a connector's module, without losing or repeating a record,
        /// whenever its `.wasm` file changes (for plugin authors).
        #[arg(long)]
        watch: bool,
    },
    /// Run the daemon: connectors created and changed through the admin
    /// API (`sluice connectors …`), kept across restarts.
    Serve {
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
    },
    /// Create, inspect, steer and delete a daemon's connectors.
    Connectors {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// The plugins a daemon offers.
    Plugins {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Check a manifest and every connector's config against its plugin's
    /// schema, without running anything.
    Validate {
        /// The manifest (TOML).
        manifest: PathBuf,
    },
    /// Work with plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

/// Which daemon an admin verb talks to.
#[derive(Debug, clap::Args)]
struct Target {
    /// The daemon's URL (default: the one its data directory names).
    #[arg(long, env = "SLUICE_URL", global = true)]
    url: Option<String>,
    /// Bearer token (default: the one in the daemon's data directory).
    #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// The daemon's data directory (default: $SLUICE_DATA_DIR, else
    /// ~/.local/share/sluice).
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ConnectorsCommand {
    /// Create the connectors of a manifest (TOML) or of one JSON connector
    /// object, and start them.
    Create {
        /// A `.toml` manifest with [[connector]] tables, or a `.json` file.
        file: PathBuf,
    },
    /// Change a connector: its config (restarts it), or its module (a live
    /// swap while records flow).
    Update {
        /// The connector.
        name: String,
        /// A JSON or TOML file holding the new [connector.config].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The new module: a built-in name or a `.wasm` path.
        #[arg(long, value_name = "PLUGIN")]
        plugin: Option<String>,
    },
    /// Every connector, with its state.
    List,
    /// A connector's definition.
    Get {
        /// The connector.
        name: String,
    },
    /// A connector's status and its instances'.
    Status {
        /// The connector.
        name: String,
    },
    /// Pause at the next batch boundary (instances stay open).
    Pause {
        /// The connector.
        name: String,
    },
    /// Resume a paused connector.
    Resume {
        /// The connector.
        name: String,
    },
    /// Stop: flush, commit, close every instance.
    Stop {
        /// The connector.
        name: String,
    },
    /// Start a stopped connector from its committed position.
    Start {
        /// The connector.
        name: String,
    },
    /// Restart every instance, or one.
    Restart {
        /// The connector.
        name: String,
        /// Only this instance.
        #[arg(long)]
        instance: Option<u32>,
    },
    /// Stop and delete a connector, its offsets and its state.
    Delete {
        /// The connector.
        name: String,
    },
    /// Show a connector's offsets, or reset a stopped sink's.
    Offsets {
        /// The connector.
        name: String,
        /// Reset to `earliest`, `latest` or an offset (the sink must be
        /// stopped).
        #[arg(long, value_name = "TO")]
        reset: Option<String>,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition.
        #[arg(long)]
        partition: Option<u32>,
    },
    /// The daemon's metrics, in Prometheus text format.
    Metrics,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// The daemon's built-in plugins with their specs.
    List,
    /// One plugin's spec and config schema.
    Inspect {
        /// A built-in name or a `.wasm` path on the daemon's machine.
        plugin: String,
    },
    /// Check a config file (JSON or TOML) against a plugin's schema.
    Validate {
        /// The plugin.
        plugin: String,
        /// The config.
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// List the built-in plugins with their specs.
    List,
    /// Print a plugin's name, version, description and config schema.
    Inspect {
        /// A built-in name (e.g. `datagen`) or the path of a `.wasm` file.
        plugin: String,
        /// Print the spec as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for an invalid manifest or config.
const EXIT_INVALID: u8 = 2;
/// Exit code after Ctrl-C or SIGTERM.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Serve { .. }) {
        die_quietly_on_a_closed_pipe();
    }
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-worker")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_cli(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A verb whose output goes to a pipe that closes early (`sluice connectors
/// list | head`) ends as `ls | head` does, killed by SIGPIPE, instead of
/// panicking on the failed write. Rust ignores SIGPIPE by default; this puts
/// back the default action. Not for `run` and `serve`, which must get to
/// their clean stop (flush, commit) whatever happens to their output.
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: called first thing in `main`, before any other thread exists;
    // setting a signal's disposition to its default is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => {
            // Colour codes in a file or a pipe are noise for whoever reads it.
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init();
        }
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

async fn run_cli(cli: Cli) -> anyhow::Result<ExitCode> {
    let cache = if cli.no_cache {
        CompileCache::new(None)
    } else {
        CompileCache::new(cli.cache_dir.clone().or_else(CompileCache::default_dir))
    };
    let plugins = Arc::new(PluginHost::new(cache).context("starting the WebAssembly engine")?);
    match cli.command {
        Command::Run {
            manifest,
            no_progress,
            watch,
        } => {
            run(
                &manifest,
                plugins,
                !no_progress && std::io::stderr().is_terminal(),
                watch,
            )
            .await
        }
        Command::Serve {
            data_dir,
            listen,
            manifest,
            token,
        } => serve(data_dir, listen, manifest, token, plugins).await,
        Command::Connectors { target, command } => cli::admin::connectors(target, command).await,
        Command::Plugins { target, command } => cli::admin::plugins(target, command).await,
        Command::Validate { manifest } => validate(&manifest, &plugins).await,
        Command::Plugin { command } => match command {
            PluginCommand::List => plugin_list(&plugins).await,
            PluginCommand::Inspect { plugin, json } => {
                plugin_inspect(&plugins, &plugin, json).await
            }
        },
    }
}

async fn load_checked(
    path: &Path,
    plugins: &PluginHost,
) -> Result<(Manifest, Vec<pipeline::CheckedConnector>), ExitCode> {
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

async fn validate(path: &Path, plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    let (manifest, connectors) = match load_checked(path, plugins).await {
        Ok(ok) => ok,
        Err(code) => return Ok(code),
    };
    println!("{}: valid", manifest.path.display());
    for c in &connectors {
        println!(
            "  {:<16} {:<6} plugin {} {}  topics: {}",
            c.config.name.get_ref(),
            c.config.kind.to_string(),
            c.spec.name,
            c.spec.version,
            c.config.topic_names().join(", ")
        );
    }
    println!();
    print!("{}", grants_table(&connectors));
    Ok(ExitCode::SUCCESS)
}

/// What each connector may reach, one row per grant, for `validate`.
fn grants_table(connectors: &[pipeline::CheckedConnector]) -> String {
    let rows: Vec<(&str, &str, String)> = connectors
        .iter()
        .flat_map(|c| {
            c.grants
                .describe()
                .into_iter()
                .map(|(grant, allows)| (c.config.name.get_ref().as_str(), grant, allows))
        })
        .collect();
    let width = rows
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0)
        .max("connector".len());
    let mut out = format!("{:<width$}  {:<8} allows\n", "connector", "grant");
    let mut last = "";
    for (name, grant, allows) in &rows {
        let shown = if *name == last { "" } else { name };
        last = name;
        out.push_str(&format!("{shown:<width$}  {grant:<8} {allows}\n"));
    }
    out
}

async fn run(
    path: &Path,
    plugins: Arc<PluginHost>,
    progress: bool,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let (manifest, connectors) = match load_checked(path, &plugins).await {
        Ok(ok) => ok,
        Err(code) => return Ok(code),
    };
    let running = pipeline::start(&manifest, plugins, connectors)
        .await
        .with_context(|| format!("starting the pipeline of {}", manifest.path.display()))?;
    let stop = running.stop_signal();
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::spawn(async move {
            terminated(term).await;
            interrupted.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(
                "stopping: finishing the current batches, flushing and committing (Ctrl-C again to quit at once)"
            );
            stop.stop();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(i32::from(EXIT_INTERRUPTED));
            }
        });
    }
    let progress_task = progress.then(|| {
        let reports: Vec<Arc<ConnectorReport>> = running.reports().to_vec();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let line: Vec<String> = reports
                    .iter()
                    .map(|r| {
                        let lag = r
                            .lag()
                            .map_or_else(String::new, |l| format!(", lag {}", thousands(l)));
                        format!(
                            "{} {} rec ({}/s{lag})",
                            r.name,
                            thousands(r.records()),
                            thousands(rate(r.records(), r.elapsed()))
                        )
                    })
                    .collect();
                eprint!("\r\x1b[K{}", line.join("  |  "));
            }
        })
    });
    let reports = running.wait(watch).await?;
    if let Some(t) = progress_task {
        t.abort();
        eprint!("\r\x1b[K");
    }
    print_summary(&reports);
    let failed = reports
        .iter()
        .any(|r| matches!(r.outcome(), ConnectorOutcome::Failed(_)));
    Ok(if failed {
        ExitCode::FAILURE
    } else if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        ExitCode::from(EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// Waits for Ctrl-C or SIGTERM on `term` (registered early, so that a
/// signal that comes first is not lost).
async fn terminated(mut term: Option<tokio::signal::unix::Signal>) {
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

async fn serve(
    data_dir: Option<PathBuf>,
    listen: std::net::SocketAddr,
    manifest: Option<PathBuf>,
    token: Option<String>,
    plugins: Arc<PluginHost>,
) -> anyhow::Result<ExitCode> {
    use sluice::admin::{access, api, daemon};
    // Before anything slow: a SIGTERM while connectors load still stops
    // the daemon cleanly once they have.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let data_dir = data_dir.unwrap_or_else(access::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let manifest = match manifest.map(|m| Manifest::load(&m)).transpose() {
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
    let token = access::token_for(&data_dir, listen, token)?;
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

fn rate(records: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (records as f64 / secs) as u64
    } else {
        0
    }
}

pub(crate) fn thousands(n: u64) -> String {
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

fn print_summary(reports: &[Arc<ConnectorReport>]) {
    println!(
        "{:<16} {:<6} {:>12} {:>11} {:>9} {:>12} {:>8} {:>10}  outcome",
        "connector", "kind", "records", "bytes", "elapsed", "records/s", "MB/s", "lag"
    );
    for r in reports {
        let records = r.records();
        let elapsed = r.elapsed();
        let outcome = match r.outcome() {
            ConnectorOutcome::Running => "running".to_owned(),
            ConnectorOutcome::Finished => "finished".to_owned(),
            ConnectorOutcome::Stopped => "stopped".to_owned(),
            ConnectorOutcome::Failed(e) => format!("failed: {e}"),
        };
        let restarts = match r.restarts() {
            0 => String::new(),
            1 => " (restarted once)".to_owned(),
            n => format!(" (restarted {n} times)"),
        };
        let refused = r.refused();
        let refused = if refused > 0 {
            format!(
                " ({} dead-lettered to {})",
                thousands(refused),
                r.dead_letter_topic
                    .as_deref()
                    .unwrap_or("the dead-letter topic")
            )
        } else {
            String::new()
        };
        let lag = r.lag().map_or_else(|| "-".to_owned(), thousands);
        println!(
            "{:<16} {:<6} {:>12} {:>11} {:>8.2}s {:>12} {:>8.1} {lag:>10}  {outcome}{restarts}{refused}",
            r.name,
            r.kind.to_string(),
            thousands(records),
            sluice::manifest::format_bytes(r.bytes()),
            elapsed.as_secs_f64(),
            thousands(rate(records, elapsed)),
            rate(r.bytes(), elapsed) as f64 / 1e6,
        );
    }
}

async fn plugin_list(plugins: &PluginHost) -> anyhow::Result<ExitCode> {
    println!("{:<14} {:<9} {:<8} description", "name", "kind", "version");
    for name in builtin_names() {
        let reference = PluginRef::resolve(name, Path::new("."))?;
        let plugin = plugins.load(&reference)?;
        let spec = plugins.spec(&plugin).await?;
        println!(
            "{:<14} {:<9} {:<8} {}",
            spec.name,
            plugin.kind().to_string(),
            spec.version,
            spec.description
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn plugin_inspect(plugins: &PluginHost, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let reference = PluginRef::resolve(name, Path::new("."))?;
    let plugin = plugins.load(&reference)?;
    let spec = plugins.spec(&plugin).await?;
    if json {
        let mut value = serde_json::to_value(&spec)?;
        value["kind"] = plugin.kind().to_string().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:        {}", spec.name);
    println!("kind:        {}", plugin.kind());
    println!("version:     {}", spec.version);
    println!("description: {}", spec.description);
    println!("contract:    {}", plugin.kind().qualified());
    println!("config schema:");
    println!("{}", serde_json::to_string_pretty(&spec.config_schema)?);
    Ok(ExitCode::SUCCESS)
}
