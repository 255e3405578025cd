//! The `sluice` command line: a thin layer over the `sluice` library. This
//! file parses the command line, sets up logging and dispatches; each verb
//! is a module of `cli/` with its arguments and its `exec`.
//!
//! Exit codes scripts can rely on: 0 done, 1 a connector or the host failed
//! (or the daemon cannot be reached), 2 the manifest or a connector's config
//! is invalid (or the command line is), 3 no such connector or plugin, 4 not
//! allowed in the connector's state, 5 a module swap failed (the old module
//! runs on), 6 the daemon refused the token, 130 `run` stopped by Ctrl-C or
//! SIGTERM (`serve` exits 0 after a clean stop).

// This binary (here and `cli/`) is the CLI's own output; everything else
// logs through tracing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::plugin::{CompileCache, PluginHost};

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
    Run(cli::run::Args),
    /// Run the daemon: connectors created and changed through the admin
    /// API (`sluice connectors …`), kept across restarts.
    Serve(cli::serve::Args),
    /// Create, inspect, steer and delete a daemon's connectors.
    Connectors(cli::connectors::Args),
    /// The plugins there are, their specs, and a config checked against
    /// one: a daemon's when one is found, else this binary's.
    #[command(alias = "plugin")]
    Plugins(cli::plugins::Args),
    /// Check a manifest and every connector's config against its plugin's
    /// schema, without running anything.
    Validate(cli::validate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Serve(_)) {
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
        // The NATS client's own notices (each connect) are noise; its
        // warnings and errors are not.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => {
            // Colour codes in a file or a pipe are noise for whoever reads it.
            let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
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
        Command::Run(args) => cli::run::exec(args, plugins).await,
        Command::Serve(args) => cli::serve::exec(args, plugins).await,
        Command::Connectors(args) => cli::connectors::exec(args).await,
        Command::Plugins(args) => cli::plugins::exec(args, &plugins).await,
        Command::Validate(args) => cli::validate::exec(args, &plugins).await,
    }
}
