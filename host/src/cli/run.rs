//! `sluice run`: a manifest's pipeline in the foreground, with a progress
//! line on a terminal and a summary table at the end.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sluice::pipeline::{self, ConnectorOutcome, ConnectorReport};
use sluice::plugin::PluginHost;

use super::{EXIT_INTERRUPTED, load_checked, terminated, thousands};

/// The arguments of `sluice run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifest (TOML).
    manifest: PathBuf,
    /// Never show the progress line, even on a terminal.
    #[arg(long)]
    no_progress: bool,
    /// Swap a connector's module, without losing or repeating a record,
    /// whenever its `.wasm` file changes (for plugin authors).
    #[arg(long)]
    watch: bool,
}

/// Runs the pipeline until its bounded sources are done and its sinks
/// drained, or until Ctrl-C or SIGTERM.
pub async fn exec(args: Args, plugins: Arc<PluginHost>) -> anyhow::Result<ExitCode> {
    let progress = !args.no_progress && std::io::stderr().is_terminal();
    let (manifest, connectors) = match load_checked(&args.manifest, &plugins).await {
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
    let reports = running.wait(args.watch).await?;
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

/// Records (or bytes) per second.
fn rate(records: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        (records as f64 / secs) as u64
    } else {
        0
    }
}

/// The table printed when the run ends.
fn print_summary(reports: &[Arc<ConnectorReport>]) {
    println!(
        "{:<16} {:<9} {:>12} {:>11} {:>9} {:>12} {:>8} {:>10}  outcome",
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
            "{:<16} {:<9} {:>12} {:>11} {:>8.2}s {:>12} {:>8.1} {lag:>10}  {outcome}{restarts}{refused}",
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
