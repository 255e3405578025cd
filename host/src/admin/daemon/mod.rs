//! The daemon's connectors: their definitions on disk, their lifecycle, and
//! what the admin API reports of them.
//!
//! Each connector's definition is one file, `<data_dir>/connectors/<name>.json`:
//! its `[[connector]]` table as TOML text (checked exactly as in a manifest,
//! with the same located errors), the path it was read from (relative paths
//! in it start at that folder), and the state the operator asked for:
//! `running`, `paused` or `stopped`. Each change is written (atomically)
//! before it is acted on, so a daemon that is killed and started again
//! brings every connector back in the state it was in, and each resumes
//! from its committed position: no gap, nothing twice.
//!
//! Every sink connector, stopped ones included, is subscribed to its topics
//! for the daemon's whole run, so retention keeps what it has not committed.

//!
//! - `store`: the definitions on disk.
//! - `lifecycle`: the operations that change a connector (create, update,
//!   pause, stop, start, restart, delete, reset offsets).
//! - `views`: what the API shows (list, definition, status, offsets,
//!   plugins, metrics), read without waiting for an operation.

mod cluster;
mod lifecycle;
mod state;
mod store;
mod views;

pub use self::state::{StateKey, StateKeys, StateQuery, StateValue};
pub use self::store::{Definition, DesiredState};
pub use self::views::{
    ConnectorInfo, ConnectorStatus, ConnectorSummary, CreateRequest, ErrorInfo, InstanceStatus,
    Offsets, PartitionOffset, PluginInfo, ResetRequest, SourcePosition, SwapOutcome, Validation,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;

use self::store::{load_definitions, split};
use super::AdminError;
use super::metrics::{Metrics, Totals};
use crate::broker::{self, Broker, HostBroker};
use crate::check::{self, CheckedConnector};
use crate::cluster::{Cluster, ClusterConfig, ClusterError, Unit};
use crate::manifest::{ConnectorKind, Manifest};
use crate::plugin::PluginHost;
use crate::secrets::Redactor;
use crate::supervisor::{
    ConnectorReport, HostParts, RunningConnector, Seals, StartOptions, SwapRecord, topic_layout,
};

/// What the daemon is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Its data directory: the embedded log, offsets, state, definitions.
    pub data_dir: PathBuf,
    /// A manifest whose `[broker]` and `[topics]` settings the log uses and
    /// whose connectors are created at start unless they already exist.
    pub manifest: Option<Manifest>,
    /// Cluster mode: the connectors are shared with the other hosts on
    /// this NATS (see [`crate::cluster`]), and so is the broker.
    pub cluster: Option<ClusterConfig>,
}

/// What status and metrics show of a connector without waiting for an
/// operation on it to finish.
#[derive(Debug, Clone)]
struct Shown {
    report: Option<Arc<ConnectorReport>>,
    desired: DesiredState,
    since: SystemTime,
    plugin: String,
    version: String,
    last_swap: Option<SwapRecord>,
    /// Counters of earlier runs in this daemon (metrics are cumulative).
    carried: Totals,
}

struct Managed {
    def: Definition,
    checked: Arc<CheckedConnector>,
    running: Option<RunningConnector>,
    /// Set by `delete`: an operation that waited for the lock meanwhile
    /// finds the connector gone.
    deleted: bool,
    /// In cluster mode, the revision of the definition this host last read
    /// or wrote: a change is stored only if it is still the latest.
    revision: u64,
}

struct Entry {
    name: String,
    kind: ConnectorKind,
    managed: tokio::sync::Mutex<Managed>,
    shown: Mutex<Shown>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).finish()
    }
}

/// The daemon.
#[derive(Debug)]
pub struct Daemon {
    data_dir: PathBuf,
    plugins: Arc<PluginHost>,
    broker: Arc<HostBroker>,
    metrics: Arc<Metrics>,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    ready: AtomicBool,
    cluster: Option<Cluster>,
    /// In cluster mode, who held each lease at the last tick (for status).
    holders: Mutex<BTreeMap<Unit, (String, u64)>>,
}

impl Daemon {
    /// Opens the log, loads every stored definition, creates the start
    /// manifest's connectors that do not exist yet, and starts each
    /// connector in the state it was left in.
    pub async fn open(config: DaemonConfig, plugins: Arc<PluginHost>) -> anyhow::Result<Daemon> {
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(data_dir.join("connectors"))
            .with_context(|| format!("creating {}", data_dir.join("connectors").display()))?;
        let manifest = config.manifest.as_ref();
        let broker = match &config.cluster {
            Some(c) => {
                broker::open_cluster(c.servers.clone(), c.access.clone(), c.replicas, manifest)
                    .context("opening the cluster's nats broker")?
            }
            None => broker::open(&data_dir, manifest)
                .with_context(|| broker::opening(&data_dir, manifest))?,
        };
        let cluster = match config.cluster.clone() {
            Some(c) => Some(Cluster::join(c).await.context("joining the cluster")?),
            None => None,
        };
        let daemon = Daemon {
            data_dir,
            plugins,
            broker: Arc::new(broker),
            metrics: Arc::new(Metrics::new()),
            entries: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
            cluster,
            holders: Mutex::new(BTreeMap::new()),
        };
        if daemon.cluster.is_some() {
            daemon.open_cluster(config.manifest.as_ref()).await?;
            daemon.ready.store(true, Ordering::SeqCst);
            return Ok(daemon);
        }
        let defs = load_definitions(&daemon.data_dir.join("connectors"))?;
        for def in defs {
            let name = def.path.display().to_string();
            if let Err(e) = daemon.add(def, Stored::OnDisk).await {
                tracing::error!(definition = %name, error = %e, "a stored connector cannot be loaded; it is left out");
            }
        }
        if let Some(m) = &config.manifest {
            for def in split(&m.source, &m.path).map_err(|e| anyhow::anyhow!("{e}"))? {
                let exists = {
                    let entries = daemon.entries.lock().expect("entries lock");
                    let name = Manifest::parse(&def.path, &def.toml)
                        .map(|m| m.connectors[0].get_ref().name.get_ref().clone())
                        .unwrap_or_default();
                    entries.contains_key(&name)
                };
                if !exists {
                    daemon
                        .add(def, Stored::No)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
        }
        daemon.ready.store(true, Ordering::SeqCst);
        Ok(daemon)
    }

    /// True once every stored connector has been brought back.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The broker.
    pub fn broker(&self) -> &Arc<HostBroker> {
        &self.broker
    }

    /// Locks a connector for an operation; `NotFound` if it was deleted
    /// while the operation waited.
    async fn lock<'e>(
        &self,
        entry: &'e Entry,
    ) -> Result<tokio::sync::MutexGuard<'e, Managed>, AdminError> {
        let m = entry.managed.lock().await;
        if m.deleted {
            return Err(AdminError::NotFound(format!(
                "connector {:?} was deleted",
                entry.name
            )));
        }
        Ok(m)
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, AdminError> {
        self.entries
            .lock()
            .expect("entries lock")
            .get(name)
            .cloned()
            .ok_or_else(|| {
                AdminError::NotFound(format!(
                    "there is no connector named {name:?}; `sluice connectors list` shows them"
                ))
            })
    }

    /// Checks a stored definition. Its errors name the file it came from,
    /// marked as the stored text: its lines are those of the definition,
    /// which `sluice connectors get` prints.
    async fn check(&self, def: &Definition) -> Result<CheckedConnector, AdminError> {
        let file = def
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let label = def.path.with_file_name(format!("{file} (as stored)"));
        let manifest = Manifest::parse(&label, &def.toml).map_err(invalid)?;
        let checked = check::check(&manifest, &self.plugins)
            .await
            .map_err(invalid)?
            .remove(0);
        let c = &checked.config;
        if self.cluster.is_some() && c.kind == ConnectorKind::Source && c.route.is_none() {
            // Instance i writes partition i % partitions: two instances on
            // one partition could run on two hosts, each numbering offsets
            // from its own last write.
            let topic = &c.topic_names()[0];
            let partitions = self.broker.ensure_topic(topic).map_err(internal)?;
            let parallelism = *c.parallelism.get_ref();
            if parallelism > partitions {
                return Err(invalid(format!(
                    "{}: connector {:?}: parallelism = {parallelism} is more than the {partitions} \
                     partitions of topic {topic:?}; in a cluster each source instance needs a \
                     partition of its own: lower parallelism, or give the topic more partitions \
                     ([topics.{topic}] partitions)",
                    def.path.display(),
                    c.name.get_ref()
                )));
            }
        }
        Ok(checked)
    }

    /// The host that holds the lease of a connector's instance, as of the
    /// cluster loop's last listing.
    fn holder(&self, connector: &str, instance: u32) -> Option<String> {
        let unit = Unit {
            connector: connector.to_owned(),
            instance,
        };
        let holders = self.holders.lock().expect("holders lock");
        holders.get(&unit).map(|(host, _)| host.clone())
    }

    fn host_parts(&self, c: &CheckedConnector) -> HostParts {
        HostParts {
            plugins: self.plugins.clone(),
            broker: self.broker.clone(),
            redactor: Redactor::new(c.secrets.values()),
            seals: Arc::new(Seals::default()),
            stats: self.metrics.stats_factory(),
        }
    }

    /// Checks a definition, subscribes a sink, stores it unless it is
    /// stored already, and starts it in its state.
    async fn add(&self, def: Definition, stored: Stored) -> Result<String, AdminError> {
        let checked = Arc::new(self.check(&def).await?);
        let name = checked.config.name.get_ref().clone();
        let entry = Arc::new(Entry {
            name: name.clone(),
            kind: checked.config.kind,
            shown: Mutex::new(Shown {
                report: None,
                desired: def.state,
                since: SystemTime::now(),
                plugin: checked.plugin.name().to_owned(),
                version: checked.spec.version.clone(),
                last_swap: None,
                carried: Totals::default(),
            }),
            managed: tokio::sync::Mutex::new(Managed {
                def: def.clone(),
                checked: checked.clone(),
                running: None,
                deleted: false,
                revision: match stored {
                    Stored::InCluster(revision) => revision,
                    Stored::No | Stored::OnDisk => 0,
                },
            }),
        });
        // The name is taken here, atomically, before anything is stored.
        {
            let mut entries = self.entries.lock().expect("entries lock");
            if entries.contains_key(&name) {
                return Err(AdminError::Conflict(format!(
                    "a connector named {name:?} exists; delete it first or choose another name"
                )));
            }
            entries.insert(name.clone(), entry.clone());
        }
        let prepared = async {
            // Subscribed for the daemon's whole run, even while stopped.
            topic_layout(&*self.broker, &checked.config)?;
            if stored == Stored::No {
                match &self.cluster {
                    Some(cluster) => {
                        let json = serde_json::to_vec(&def).map_err(internal)?;
                        let Some(revision) = cluster
                            .create_definition(&name, json)
                            .await
                            .map_err(internal)?
                        else {
                            return Err(AdminError::Conflict(format!(
                                "a connector named {name:?} exists in the cluster; delete it \
                                 first or choose another name"
                            )));
                        };
                        entry.managed.lock().await.revision = revision;
                    }
                    None => self.store(&name, &def)?,
                }
            }
            Ok::<(), AdminError>(())
        }
        .await;
        if let Err(e) = prepared {
            self.entries.lock().expect("entries lock").remove(&name);
            return Err(e);
        }
        let mut m = entry.managed.lock().await;
        if m.def.state != DesiredState::Stopped {
            let paused = m.def.state == DesiredState::Paused;
            self.start_running(&entry, &mut m, paused)?;
        }
        tracing::info!(connector = %name, state = ?m.def.state, "connector loaded");
        Ok(name)
    }

    fn start_running(
        &self,
        entry: &Entry,
        m: &mut Managed,
        paused: bool,
    ) -> Result<(), AdminError> {
        let options = StartOptions {
            paused,
            ignore_stored_offsets: m.def.offsets_reset,
            // In a cluster, an instance starts once this host holds its lease.
            deferred: self.cluster.is_some(),
        };
        let running =
            RunningConnector::start(m.checked.clone(), self.host_parts(&m.checked), options)?;
        let mut shown = entry.shown.lock().expect("shown lock");
        if let Some(old) = shown.report.take() {
            shown.carried = shown.carried.plus(Totals::of(&old));
        }
        shown.report = Some(running.report().clone());
        shown.since = SystemTime::now();
        m.running = Some(running);
        Ok(())
    }

    /// Stops the connector's instances (flush, commit, close). A run that
    /// started after an offsets reset has now committed from there, so the
    /// reset is done with; until then it holds across daemon restarts.
    async fn stop_running(&self, name: &str, m: &mut Managed) {
        if let Some(r) = m.running.take() {
            r.stop_and_wait().await;
            self.broker.sync_all().ok();
            if m.def.offsets_reset {
                m.def.offsets_reset = false;
                if let Err(e) = self.save(name, m).await {
                    tracing::error!(connector = %name, error = %e, "storing the definition");
                }
            }
        }
    }

    /// Stores a connector's changed definition: in cluster mode only if
    /// no other host changed it since this one read it (409 otherwise).
    async fn save(&self, name: &str, m: &mut Managed) -> Result<(), AdminError> {
        let Some(cluster) = &self.cluster else {
            return self.store(name, &m.def);
        };
        let json = serde_json::to_vec(&m.def).map_err(internal)?;
        match cluster.update_definition(name, json, m.revision).await {
            Ok(revision) => {
                m.revision = revision;
                Ok(())
            }
            Err(e @ ClusterError::Changed(_)) => Err(AdminError::Conflict(format!(
                "{e}; read it again and retry"
            ))),
            Err(e) => Err(internal(e)),
        }
    }

    async fn set_desired(
        &self,
        entry: &Entry,
        m: &mut Managed,
        state: DesiredState,
    ) -> Result<(), AdminError> {
        let from = m.def.state;
        m.def.state = state;
        if let Err(e) = self.save(&entry.name, m).await {
            m.def.state = from;
            return Err(e);
        }
        if from != state {
            tracing::info!(connector = %entry.name, ?from, to = ?state, "connector's state changed");
        }
        let mut shown = entry.shown.lock().expect("shown lock");
        shown.desired = state;
        shown.since = SystemTime::now();
        Ok(())
    }

    /// Measures every running sink's lag.
    pub fn measure_lag(&self) {
        for (_, _, shown) in self.snapshot() {
            if let Some(r) = &shown.report {
                r.measure_lag(&*self.broker);
            }
        }
    }

    /// Every connector's entry, taken out of the lock.
    fn all_entries(&self) -> Vec<Arc<Entry>> {
        self.entries
            .lock()
            .expect("entries lock")
            .values()
            .cloned()
            .collect()
    }

    /// Every connector's name, kind and what is shown of it, now.
    fn snapshot(&self) -> Vec<(String, ConnectorKind, Shown)> {
        self.all_entries()
            .iter()
            .map(|e| {
                (
                    e.name.clone(),
                    e.kind,
                    e.shown.lock().expect("shown lock").clone(),
                )
            })
            .collect()
    }

    /// Stops every connector (flush, commit, close) and syncs the log; the
    /// definitions keep the state each was in, so the next start brings
    /// them back.
    pub async fn shutdown(&self) {
        self.ready.store(false, Ordering::SeqCst);
        let entries = self.all_entries();
        for e in &entries {
            let m = e.managed.lock().await;
            if let Some(r) = &m.running {
                r.stop();
            }
        }
        for e in &entries {
            let mut m = e.managed.lock().await;
            if m.running.is_some() {
                // Stopped above; this waits, and marks a reset as done.
                // The definition keeps the state asked for.
                self.stop_running(&e.name, &mut m).await;
            }
        }
        if let Err(e) = self.broker.sync_all() {
            tracing::error!(error = %e, "syncing the log at shutdown");
        }
    }
}

/// Where a definition [`Daemon::add`] is given is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stored {
    /// Nowhere yet: store it.
    No,
    /// In the data directory (read from there at start).
    OnDisk,
    /// In the cluster's bucket, at this revision.
    InCluster(u64),
}

fn invalid(e: impl std::fmt::Display) -> AdminError {
    AdminError::Invalid(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> AdminError {
    AdminError::Internal(e.to_string())
}
