//! Running a manifest: validate every connector against its plugin (see
//! [`crate::check`]), open the broker, start one pump per instance, and
//! report when it is done.
//!
//! A pipeline whose sources are all bounded finishes by itself: each topic is
//! sealed once every source writing it has ended, and a sink finishes once
//! every topic it reads is sealed and read to the end. A pipeline with an
//! unbounded source runs until [`RunningPipeline::stop`] (Ctrl-C in the CLI).
//!
//! Each instance runs under the [`crate::supervisor`]: a failing instance is
//! restarted with backoff on its own, and a connector whose instance has
//! failed for good is `failed` while every other connector runs on.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::broker::{self, Broker, HostBroker};
/// Re-exported: checking is the first half of running a manifest.
pub use crate::check::{CheckedConnector, ValidationErrors, check};
use crate::lifecycle::StopSignal;
use crate::manifest::Manifest;
use crate::plugin::{PluginHost, PluginRef};
use crate::secrets::Redactor;
pub use crate::supervisor::{ConnectorOutcome, ConnectorReport};
use crate::supervisor::{
    HostParts, RunningConnector, Seals, StartOptions, plain_stats, topic_layout,
};

/// A pipeline that is running: every connector of a manifest.
#[derive(Debug)]
pub struct RunningPipeline {
    stop: StopSignal,
    connectors: Vec<RunningConnector>,
    reports: Vec<Arc<ConnectorReport>>,
    broker: Arc<HostBroker>,
    /// Kept for the instances' lifetime: its epoch ticker enforces `cpu`.
    plugins: Arc<PluginHost>,
    lag_task: tokio::task::JoinHandle<()>,
}

/// Opens the broker and starts every instance under its supervisor.
pub async fn start(
    manifest: &Manifest,
    plugins: Arc<PluginHost>,
    connectors: Vec<CheckedConnector>,
) -> anyhow::Result<RunningPipeline> {
    let data_dir = manifest.data_dir();
    let broker = Arc::new(
        broker::open(&data_dir, Some(manifest))
            .with_context(|| broker::opening(&data_dir, Some(manifest)))?,
    );
    // Every secret of the manifest is masked in every connector's output.
    let redactor = Redactor::new(connectors.iter().flat_map(|c| c.secrets.values()));
    let host = HostParts {
        plugins: plugins.clone(),
        broker: broker.clone(),
        redactor: redactor.clone(),
        seals: Arc::new(Seals::for_writers(&connectors)),
        stats: plain_stats(),
    };
    // Every topic exists, and every sink has subscribed, before any source
    // writes, so that retention keeps every record a sink has not committed.
    let layouts = connectors
        .iter()
        .map(|c| topic_layout(&*broker, &c.config))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut running = Vec::new();
    for (c, layout) in connectors.into_iter().zip(layouts) {
        running.push(RunningConnector::start_with_layout(
            Arc::new(c),
            host.clone(),
            StartOptions::default(),
            layout,
        )?);
    }
    let reports: Vec<Arc<ConnectorReport>> = running.iter().map(|c| c.report().clone()).collect();
    let stop = StopSignal::new();
    let lag_task = {
        let (broker, reports) = (Arc::downgrade(&broker), reports.clone());
        tokio::spawn(async move {
            // Until the pipeline is gone.
            while let Some(broker) = broker.upgrade() {
                for r in &reports {
                    r.measure_lag(&*broker);
                }
                drop(broker);
                tokio::time::sleep(LAG_EVERY).await;
            }
        })
    };
    Ok(RunningPipeline {
        stop,
        connectors: running,
        reports,
        broker,
        plugins,
        lag_task,
    })
}

/// How often sinks' lag is measured while the pipeline runs.
pub const LAG_EVERY: Duration = Duration::from_millis(250);

impl RunningPipeline {
    /// Asks every pump to stop at its next batch boundary.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops the pipeline from elsewhere.
    pub fn stop_signal(&self) -> StopSignal {
        self.stop.clone()
    }

    /// The running connectors, in manifest order (to pause, restart or swap
    /// one while the pipeline runs).
    pub fn connectors(&self) -> &[RunningConnector] {
        &self.connectors
    }

    /// Live reports, one per connector, in manifest order.
    pub fn reports(&self) -> &[Arc<ConnectorReport>] {
        &self.reports
    }

    /// Waits for every instance to end (or for the stop signal, which it
    /// passes on to every instance), syncs the log, and returns the reports.
    /// With `watch`, meanwhile swaps the module of every connector whose
    /// plugin is a `.wasm` file each time that file changes.
    pub async fn wait(self, watch: bool) -> anyhow::Result<Vec<Arc<ConnectorReport>>> {
        let connectors = &self.connectors;
        let waiting = async {
            for c in connectors {
                c.wait().await;
            }
        };
        tokio::pin!(waiting);
        let watching = async {
            if watch {
                watch_modules(connectors, &self.plugins).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = &mut waiting => {}
            () = watching => {}
            () = self.stop.stopped() => {
                for c in connectors {
                    c.stop();
                }
                // The same wait: it holds the instance it was waiting on.
                waiting.await;
            }
        }
        self.lag_task.abort();
        for r in &self.reports {
            r.measure_lag(&*self.broker);
        }
        self.broker
            .sync_all()
            .context("syncing the log at shutdown")?;
        Ok(self.reports)
    }
}

/// What `--watch` compares: a file's modification time and length.
type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

/// How often `--watch` looks at the plugin files.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Swaps a connector's module whenever its `.wasm` file changes (a rebuild
/// by its author), once the file has stopped changing for one look. A file
/// that does not load or a module that does not open is reported, and the
/// old module runs on. Never returns.
async fn watch_modules(connectors: &[RunningConnector], plugins: &PluginHost) {
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut files: Vec<Option<(std::path::PathBuf, Stamp)>> =
        connectors
            .iter()
            .map(|c| {
                let current = c.current();
                match current.plugin_ref.clone() {
                    PluginRef::File(path) => {
                        let s = stamp(&path);
                        tracing::info!(connector = %current.config.name.get_ref(), file = %path.display(), "watching the plugin file; a change swaps the module");
                        Some((path, s))
                    }
                    PluginRef::Builtin(..) => None,
                }
            })
            .collect();
    let mut changing: Vec<Stamp> = vec![None; files.len()];
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        for (i, c) in connectors.iter().enumerate() {
            let Some((path, seen)) = files[i].as_mut() else {
                continue;
            };
            let now = stamp(path);
            if now.is_none() || now == *seen {
                changing[i] = None;
                continue;
            }
            if changing[i] != now {
                // Still being written: look again next time.
                changing[i] = now;
                continue;
            }
            *seen = now;
            changing[i] = None;
            let name = c.report().name.clone();
            let reference = PluginRef::File(path.clone());
            let swapped = async {
                let new = c.current().with_module(plugins, &reference).await?;
                c.swap(Arc::new(new)).await
            }
            .await;
            match swapped {
                Ok((pause, _)) => tracing::info!(
                    connector = %name, file = %path.display(),
                    pause_ms = pause.as_secs_f64() * 1000.0,
                    "the plugin file changed; module swapped"
                ),
                Err(e) => tracing::error!(
                    connector = %name, file = %path.display(), error = %format!("{e:#}"),
                    "the plugin file changed, but its module was not swapped in; the old one runs on"
                ),
            }
        }
    }
}
