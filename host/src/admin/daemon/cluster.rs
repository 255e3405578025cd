//! The daemon in cluster mode (see [`crate::cluster`]): every host keeps
//! the same connectors as the cluster's bucket of definitions, and runs the
//! instances it holds leases for.
//!
//! One loop per host, every `lease / 6`:
//! 1. say it is alive, and renew each lease it holds;
//! 2. stop every instance whose lease it has not renewed for `lease / 2`
//!    (or that another host took): it has stopped before the lease can
//!    pass on;
//! 3. bring its connectors in line with a fresh listing of the definitions
//!    (a connector created, changed, paused, stopped or deleted through any
//!    host);
//! 4. place the instances over the live hosts (rendezvous hashing): take
//!    the free leases of those it should run, and hand over one it should
//!    not (drained at a batch boundary first, then released), so instances
//!    move to a joining host gradually;
//! 5. start the instances whose leases it took.
//!
//! Every lease taken, released or lost is logged with its revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::store::{Definition, DesiredState, split};
use super::{Daemon, Entry, Managed, Stored, invalid};
use crate::cluster::{Cluster, Revised, Unit, placement};
use crate::manifest::Manifest;
use crate::pump::InstanceState;
use crate::supervisor::ConnectorReport;

/// A lease this host holds.
struct Held {
    revision: u64,
    /// When the last renewal the server confirmed was sent.
    renewed: Instant,
    /// The run its instance was started in (a connector restarted on this
    /// host is a new run, whose instance starts again).
    run: Option<Arc<ConnectorReport>>,
    phase: Phase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its instance runs (or is about to).
    Holding,
    /// Its instance is draining; the lease goes once it has stopped.
    Releasing,
    /// It was not renewed in time, or another host took it: its instance
    /// is stopping, and it is forgotten once it has.
    Lost,
}

impl Held {
    /// Asks its instance to stop at its next batch boundary.
    fn stop(&self, unit: &Unit) {
        if let Some(run) = &self.run
            && let Some(i) = run.instances.get(unit.instance as usize)
        {
            i.control.stop.stop();
        }
    }

    /// Whether its instance is not running (it ended, or never started).
    fn ended(&self, unit: &Unit) -> bool {
        self.run
            .as_ref()
            .and_then(|run| run.instances.get(unit.instance as usize))
            .is_none_or(|i| {
                matches!(
                    i.control.state().0,
                    InstanceState::Stopped | InstanceState::Finished | InstanceState::Failed
                )
            })
    }
}

impl Daemon {
    fn cluster(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// At start in cluster mode: adds the start manifest's connectors that
    /// the cluster does not have yet, and loads every definition.
    pub(super) async fn open_cluster(&self, manifest: Option<&Manifest>) -> anyhow::Result<()> {
        if let Some(m) = manifest {
            for def in split(&m.source, &m.path).map_err(|e| anyhow::anyhow!("{e}"))? {
                let parsed = Manifest::parse(&def.path, &def.toml).map_err(invalid)?;
                let name = parsed.connectors[0].get_ref().name.get_ref().clone();
                self.check(&def).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let json = serde_json::to_vec(&def)?;
                if self
                    .cluster()
                    .create_definition(&name, json)
                    .await?
                    .is_some()
                {
                    tracing::info!(connector = %name, "connector created in the cluster");
                }
            }
        }
        let listed = self.cluster().definitions().await?;
        self.converge(&listed, &mut BTreeMap::new()).await;
        Ok(())
    }

    /// Brings this host's connectors in line with the cluster's
    /// definitions. A definition this host cannot load is logged once per
    /// revision in `refused`.
    async fn converge(
        &self,
        listed: &BTreeMap<String, Revised>,
        refused: &mut BTreeMap<String, u64>,
    ) {
        for (name, stored) in listed {
            let def: Definition = match serde_json::from_slice(&stored.value) {
                Ok(def) => def,
                Err(e) => {
                    if refused.insert(name.clone(), stored.revision) != Some(stored.revision) {
                        tracing::error!(connector = %name, error = %e, "a stored definition does not read");
                    }
                    continue;
                }
            };
            let entry = self
                .entries
                .lock()
                .expect("entries lock")
                .get(name)
                .cloned();
            let result = match entry {
                None => self
                    .add(def, Stored::InCluster(stored.revision))
                    .await
                    .map(|_| ()),
                Some(entry) => {
                    // An operation on it runs: the next tick sees its result.
                    let Ok(mut m) = entry.managed.try_lock() else {
                        continue;
                    };
                    if m.deleted || m.revision >= stored.revision {
                        continue;
                    }
                    self.apply(&entry, &mut m, def, stored.revision).await
                }
            };
            match result {
                Ok(()) => {
                    refused.remove(name);
                }
                Err(e) => {
                    if refused.insert(name.clone(), stored.revision) != Some(stored.revision) {
                        tracing::error!(connector = %name, error = %e, "this host cannot run the connector's definition");
                    }
                }
            }
        }
        for entry in self.all_entries() {
            if listed.contains_key(&entry.name) {
                continue;
            }
            let Ok(mut m) = entry.managed.try_lock() else {
                continue;
            };
            // Revision 0: being created here, not yet in the listing.
            if m.deleted || m.revision == 0 {
                continue;
            }
            if let Some(r) = m.running.take() {
                r.stop_and_wait().await;
            }
            m.deleted = true;
            self.entries
                .lock()
                .expect("entries lock")
                .remove(&entry.name);
            tracing::info!(connector = %entry.name, "connector deleted through another host");
        }
    }

    /// Applies a definition another host stored.
    async fn apply(
        &self,
        entry: &Entry,
        m: &mut Managed,
        def: Definition,
        revision: u64,
    ) -> Result<(), super::AdminError> {
        let (from, to) = (m.def.state, def.state);
        if def.toml != m.def.toml || def.path != m.def.path {
            let checked = Arc::new(self.check(&def).await?);
            if let Some(r) = m.running.take() {
                r.stop_and_wait().await;
            }
            {
                let mut shown = entry.shown.lock().expect("shown lock");
                shown.plugin = checked.plugin.name().to_owned();
                shown.version = checked.spec.version.clone();
            }
            m.checked = checked;
            (m.def, m.revision) = (def, revision);
            if to != DesiredState::Stopped {
                self.start_running(entry, m, to == DesiredState::Paused)?;
            }
            tracing::info!(connector = %entry.name, revision, "definition changed through another host; restarted with it");
        } else {
            if from != to {
                match to {
                    DesiredState::Stopped => {
                        if let Some(r) = m.running.take() {
                            r.stop_and_wait().await;
                        }
                    }
                    _ if m.running.is_none() => {
                        self.start_running(entry, m, to == DesiredState::Paused)?;
                    }
                    _ => {
                        if let Some(r) = &m.running {
                            r.set_paused(to == DesiredState::Paused);
                        }
                    }
                }
                tracing::info!(connector = %entry.name, ?from, ?to, "connector's state changed through another host");
            }
            (m.def, m.revision) = (def, revision);
        }
        let mut shown = entry.shown.lock().expect("shown lock");
        shown.desired = to;
        if from != to {
            shown.since = std::time::SystemTime::now();
        }
        Ok(())
    }

    /// Runs this host's part of the cluster until `stop` turns true, then
    /// stops the instances it runs and gives their leases back.
    pub async fn run_cluster(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let cluster = self.cluster().clone();
        let lease = cluster.lease();
        let tick = lease / 6;
        let about = serde_json::json!({ "host": cluster.host() }).to_string();
        let mut held: BTreeMap<Unit, Held> = BTreeMap::new();
        let mut refused = BTreeMap::new();
        let mut unreachable = false;
        while !*stop.borrow() {
            let began = Instant::now();
            let mut reached = within(tick, cluster.heartbeat(about.as_bytes()))
                .await
                .is_ok();
            self.renew(&cluster, &mut held, tick).await;
            match within(tick * 2, cluster.definitions()).await {
                Ok(listed) => self.converge(&listed, &mut refused).await,
                Err(_) => reached = false,
            }
            match within(tick, cluster.live_hosts()).await {
                Ok(hosts) if hosts.contains_key(cluster.host()) => {
                    self.place(&cluster, &hosts, &mut held, tick).await;
                }
                _ => reached = false,
            }
            if let Ok(holders) = within(tick, cluster.holders()).await {
                *self.holders.lock().expect("holders lock") = holders;
            }
            self.start_held(&mut held).await;
            if reached == unreachable {
                unreachable = !reached;
                if unreachable {
                    tracing::warn!(host = %cluster.host(), "the cluster's NATS does not answer; instances stop if their leases cannot be renewed");
                } else {
                    tracing::info!(host = %cluster.host(), "in touch with the cluster");
                }
            }
            let next = began + tick;
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stop.changed() => {}
            }
        }
        self.leave(&cluster, held).await;
    }

    /// Renews every lease held; stops the instances of those lost.
    async fn renew(&self, cluster: &Cluster, held: &mut BTreeMap<Unit, Held>, tick: Duration) {
        let fence = cluster.lease() / 2;
        for (unit, h) in held.iter_mut() {
            // Renewed at most every half tick (the leaving loop calls this
            // more often).
            if h.phase != Phase::Lost && h.renewed.elapsed() >= tick / 2 {
                let sent = Instant::now();
                match within(tick, cluster.renew(unit, h.revision)).await {
                    Ok(Some(revision)) => (h.revision, h.renewed) = (revision, sent),
                    Ok(None) => {
                        tracing::warn!(connector = %unit.connector, instance = unit.instance, revision = h.revision, "another host took the lease; stopping the instance");
                        h.phase = Phase::Lost;
                    }
                    Err(_) => {}
                }
            }
            if h.phase != Phase::Lost && h.renewed.elapsed() >= fence {
                tracing::warn!(connector = %unit.connector, instance = unit.instance, revision = h.revision, "lease not renewed for half its length; stopping the instance");
                h.phase = Phase::Lost;
            }
            if h.phase == Phase::Lost {
                h.stop(unit);
            }
        }
        let mut gone = Vec::new();
        for (unit, h) in held.iter() {
            if h.phase == Phase::Holding || !h.ended(unit) {
                continue;
            }
            // Logged before the release: the instance has ended by now,
            // and another host may take the lease the moment it is gone.
            if h.phase == Phase::Releasing {
                tracing::info!(connector = %unit.connector, instance = unit.instance, revision = h.revision, host = %cluster.host(), "lease released");
                if within(tick, cluster.release(unit, h.revision))
                    .await
                    .is_err()
                {
                    // The lease runs out by itself; nothing runs under it.
                    tracing::warn!(connector = %unit.connector, instance = unit.instance, "the lease could not be released; it expires instead");
                }
            } else {
                tracing::info!(connector = %unit.connector, instance = unit.instance, revision = h.revision, host = %cluster.host(), "lease lost");
            }
            gone.push(unit.clone());
        }
        for unit in gone {
            held.remove(&unit);
        }
    }

    /// Takes the free leases of the instances this host should run, and
    /// hands over (at most one per tick) one it should not.
    async fn place(
        &self,
        cluster: &Cluster,
        hosts: &BTreeMap<String, Vec<u8>>,
        held: &mut BTreeMap<Unit, Held>,
        tick: Duration,
    ) {
        // The instances of every connector that should run; `None` for a
        // connector under an operation (left as it is this tick).
        let mut wanted: BTreeMap<Unit, bool> = BTreeMap::new();
        let mut busy = Vec::new();
        for entry in self.all_entries() {
            let Ok(m) = entry.managed.try_lock() else {
                busy.push(entry.name.clone());
                continue;
            };
            let runs = m.running.is_some() && m.def.state != DesiredState::Stopped;
            for instance in 0..*m.checked.config.parallelism.get_ref() {
                let unit = Unit {
                    connector: entry.name.clone(),
                    instance,
                };
                wanted.insert(unit, runs);
            }
        }
        let me = cluster.host();
        let owner =
            |unit: &Unit| placement::owner(hosts.keys().map(String::as_str), &unit.to_string());
        let mut handed_over = false;
        for (unit, h) in held.iter_mut() {
            if h.phase != Phase::Holding || busy.contains(&unit.connector) {
                continue;
            }
            let keep = wanted.get(unit).copied().unwrap_or(false);
            let mine = owner(unit) == Some(me);
            if !keep || (!mine && !handed_over) {
                handed_over |= keep;
                h.phase = Phase::Releasing;
                h.stop(unit);
                tracing::info!(connector = %unit.connector, instance = unit.instance, to = ?owner(unit), "handing the instance over");
            }
        }
        for (unit, runs) in wanted {
            if !runs || held.contains_key(&unit) || owner(&unit) != Some(me) {
                continue;
            }
            let sent = Instant::now();
            if let Ok(Some(revision)) = within(tick, cluster.take(&unit)).await {
                tracing::info!(connector = %unit.connector, instance = unit.instance, revision, host = %me, "lease taken");
                held.insert(
                    unit,
                    Held {
                        revision,
                        renewed: sent,
                        run: None,
                        phase: Phase::Holding,
                    },
                );
            }
        }
    }

    /// Starts the instance of every lease held that does not run in its
    /// connector's current run.
    async fn start_held(&self, held: &mut BTreeMap<Unit, Held>) {
        for (unit, h) in held.iter_mut() {
            if h.phase != Phase::Holding {
                continue;
            }
            let Ok(entry) = self.entry(&unit.connector) else {
                continue;
            };
            let Ok(m) = entry.managed.try_lock() else {
                continue;
            };
            let Some(running) = &m.running else {
                continue;
            };
            if h.run
                .as_ref()
                .is_some_and(|r| Arc::ptr_eq(r, running.report()))
            {
                continue;
            }
            match running.start_instance(unit.instance as usize).await {
                Ok(_) => h.run = Some(running.report().clone()),
                Err(e) => {
                    tracing::error!(connector = %unit.connector, instance = unit.instance, error = %e, "starting a leased instance");
                }
            }
        }
    }

    /// Stops every instance this host runs and gives their leases back, so
    /// that other hosts take them at once rather than when they expire.
    /// The leases are renewed while the instances drain.
    async fn leave(&self, cluster: &Cluster, mut held: BTreeMap<Unit, Held>) {
        for (unit, h) in held.iter_mut() {
            if h.phase == Phase::Holding {
                h.phase = Phase::Releasing;
            }
            h.stop(unit);
        }
        let tick = cluster.lease() / 6;
        let deadline = Instant::now() + cluster.lease();
        while !held.is_empty() && Instant::now() < deadline {
            self.renew(cluster, &mut held, tick).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = within(Duration::from_secs(2), cluster.leave()).await;
    }
}

/// `call` if it finishes within `limit`; `Err(())` if it fails or is late.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ()> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "a cluster call failed");
            Err(())
        }
        Err(_) => Err(()),
    }
}
