//! Running a manifest: validate every connector against its plugin, open the
//! broker, start one pump per instance, and report when it is done.
//!
//! A pipeline whose sources are all bounded finishes by itself: each topic is
//! sealed once every source writing it has ended, and a sink finishes once
//! every topic it reads is sealed and read to the end. A pipeline with an
//! unbounded source runs until [`RunningPipeline::stop`] (Ctrl-C in the CLI).
//!
//! Each instance runs under the [`crate::supervisor`]: a failing instance is
//! restarted with backoff on its own, and a connector whose instance has
//! failed for good is `failed` while every other connector runs on.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::broker::embedded::{EmbeddedLog, LogConfig};
use crate::grants::GrantSet;
use crate::manifest::{ConnectorConfig, ConnectorKind, Manifest, ManifestError};
use crate::plugin::{Plugin, PluginHost, PluginKind, PluginRef, Spec};
use crate::pump::StopSignal;
use crate::secrets::{Redactor, Secrets};
use crate::supervisor::RestartPolicy;
pub use crate::supervisor::{ConnectorOutcome, ConnectorReport};
use crate::supervisor::{
    HostParts, RunningConnector, Seals, StartOptions, plain_stats, topic_layout,
};

/// A connector whose plugin is loaded and whose config its schema accepts.
/// Its `Debug` leaves out the config document, which may hold secrets.
#[derive(Clone)]
pub struct CheckedConnector {
    /// As written in the manifest.
    pub config: ConnectorConfig,
    /// The loaded plugin.
    pub plugin: Plugin,
    /// Where it was loaded from.
    pub plugin_ref: PluginRef,
    /// What the plugin says of itself.
    pub spec: Spec,
    /// The config as the JSON document the plugin receives.
    pub config_json: String,
    /// What it may reach.
    pub grants: GrantSet,
    /// Its resolved secrets (already substituted into `config_json`).
    pub secrets: Secrets,
    /// How its failed instances are restarted.
    pub restart: RestartPolicy,
}

impl std::fmt::Debug for CheckedConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedConnector")
            .field("name", self.config.name.get_ref())
            .field("plugin", &self.plugin)
            .field("grants", &self.grants)
            .field("secrets", &self.secrets)
            .finish_non_exhaustive()
    }
}

impl CheckedConnector {
    /// The same connector with another module: loaded, of the same kind,
    /// and accepting the same config.
    pub async fn with_module(
        &self,
        plugins: &PluginHost,
        reference: &PluginRef,
    ) -> anyhow::Result<CheckedConnector> {
        let plugin = plugins.load(reference)?;
        plugin.expect_kind(match self.config.kind {
            ConnectorKind::Source => PluginKind::Source,
            ConnectorKind::Sink => PluginKind::Sink,
        })?;
        let spec = plugins.spec(&plugin).await?;
        let validator = jsonschema::validator_for(&spec.config_schema).map_err(|e| {
            anyhow::anyhow!(
                "plugin {} publishes a config schema that is not valid JSON Schema: {e}",
                plugin.name()
            )
        })?;
        let config: serde_json::Value = serde_json::from_str(&self.config_json)?;
        let problems: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| e.to_string())
            .collect();
        if !problems.is_empty() {
            anyhow::bail!(
                "module {} does not accept the connector's config: {}",
                plugin.name(),
                Redactor::new(self.secrets.values()).redact(&problems.join("; "))
            );
        }
        Ok(CheckedConnector {
            plugin,
            plugin_ref: reference.clone(),
            spec,
            ..self.clone()
        })
    }
}

/// Every problem found in a manifest's connectors, not only the first.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n\n"))]
pub struct ValidationErrors(pub Vec<anyhow::Error>);

/// Loads each connector's plugin, checks its kind, and checks its config
/// against the plugin's own JSON Schema.
pub async fn check(
    manifest: &Manifest,
    plugins: &PluginHost,
) -> Result<Vec<CheckedConnector>, ValidationErrors> {
    let mut checked = Vec::new();
    let mut errors = Vec::new();
    for (index, c) in manifest.connectors.iter().enumerate() {
        let c = c.get_ref();
        match check_one(manifest, plugins, index, c).await {
            Ok(ok) => checked.push(ok),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(ValidationErrors(errors))
    }
}

async fn check_one(
    manifest: &Manifest,
    plugins: &PluginHost,
    index: usize,
    c: &ConnectorConfig,
) -> anyhow::Result<CheckedConnector> {
    let name = c.name.get_ref();
    let at_plugin = |e: &dyn std::fmt::Display| {
        ManifestError::at(
            &manifest.path,
            &manifest.source,
            Some(c.plugin.span()),
            e.to_string(),
        )
        .field(format!("connector[{index}].plugin"))
    };
    let reference = PluginRef::resolve(c.plugin.get_ref(), &manifest.base_dir)
        .map_err(|e| at_plugin(&e).help("`sluice plugin list` shows the built-in plugins"))?;
    let plugin = plugins.load(&reference).map_err(|e| at_plugin(&e))?;
    let needed = match c.kind {
        ConnectorKind::Source => PluginKind::Source,
        ConnectorKind::Sink => PluginKind::Sink,
    };
    plugin.expect_kind(needed).map_err(|e| {
        at_plugin(&e).help(format!(
            "use a {needed} plugin here, or change `kind` to match the plugin"
        ))
    })?;
    let spec = plugins.spec(&plugin).await.with_context(|| {
        format!(
            "reading the spec of plugin {} for connector {name:?}",
            plugin.name()
        )
    })?;
    let secrets = Secrets::resolve(manifest, c).map_err(|e| {
        let span = c.grants.secrets.values().next().map_or(c.name.span(), |s| s.span());
        ManifestError::at(&manifest.path, &manifest.source, Some(span), e.to_string())
            .field(format!("connector[{index}].grants.secrets"))
            .help("set the variable or create the file before running; the manifest names only where a secret comes from")
    })?;
    let redactor = Redactor::new(secrets.values());
    let mut config =
        serde_json::to_value(&c.config).context("turning [connector.config] into JSON")?;
    secrets.substitute(&mut config);
    let validator = jsonschema::validator_for(&spec.config_schema).map_err(|e| {
        anyhow::anyhow!(
            "plugin {} publishes a config schema that is not valid JSON Schema: {e}",
            plugin.name()
        )
    })?;
    let mut problems = Vec::new();
    for error in validator.iter_errors(&config) {
        let pointer = error.instance_path().as_str().to_owned();
        let field = pointer.trim_start_matches('/').replace('/', ".");
        let span = manifest
            .config_span(index, &pointer)
            .or(Some(c.plugin.span()));
        let mut e = ManifestError::at(
            &manifest.path,
            &manifest.source,
            span,
            format!(
                "connector {name:?}: {error} (checked against the config schema of plugin {})",
                plugin.name()
            ),
        )
        .field(if field.is_empty() {
            format!("connector[{index}].config")
        } else {
            format!("connector[{index}].config.{field}")
        });
        e = e.help(schema_help(&spec.config_schema, &pointer, plugin.name()));
        problems.push(redactor.redact(&e.to_string()).into_owned());
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n\n"));
    }
    Ok(CheckedConnector {
        config: c.clone(),
        grants: GrantSet::from_manifest(manifest, c),
        plugin,
        plugin_ref: reference,
        spec,
        config_json: config.to_string(),
        secrets,
        restart: RestartPolicy::from_config(c),
    })
}

/// What the schema says of the field at `pointer`, for the fix line.
fn schema_help(schema: &serde_json::Value, pointer: &str, plugin: &str) -> String {
    let mut node = schema;
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        match node.get("properties").and_then(|p| p.get(part)) {
            Some(n) => node = n,
            None => break,
        }
    }
    let mut help = String::new();
    if !pointer.is_empty() {
        if let Some(ty) = node.get("type") {
            let _ = write!(help, "expects {ty}");
        }
        if let Some(d) = node.get("description").and_then(|d| d.as_str()) {
            let d = d.trim_end_matches('.');
            let _ = write!(help, "{}{d}", if help.is_empty() { "" } else { ": " });
        }
    } else if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        let names: Vec<&str> = props.keys().map(String::as_str).collect();
        let _ = write!(help, "its fields are: {}", names.join(", "));
    }
    if !help.is_empty() {
        help.push_str("; ");
    }
    let _ = write!(
        help,
        "`sluice plugin inspect {plugin}` shows the whole schema"
    );
    help
}

/// A pipeline that is running: every connector of a manifest.
#[derive(Debug)]
pub struct RunningPipeline {
    stop: StopSignal,
    connectors: Vec<RunningConnector>,
    reports: Vec<Arc<ConnectorReport>>,
    broker: Arc<EmbeddedLog>,
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
        EmbeddedLog::open(&data_dir, LogConfig::from_manifest(manifest))
            .with_context(|| format!("opening the embedded broker in {}", data_dir.display()))?,
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
