//! The daemon in cluster mode (see [`crate::cluster`]): every host keeps
//! the same connectors as the cluster's bucket of definitions, and runs the
//! instances it holds leases for.
//!
//! Two tasks per host. The lease keeper ([`crate::cluster::leases`])
//! renews the leases this host holds and stops the instance of any it
//! could not renew for half the lease. This loop, every `lease / 6`:
//! 1. brings this host's connectors in line with a fresh listing of the
//!    definitions (a connector created, changed, paused, stopped or
//!    deleted through any host);
//! 2. places the instances over the live hosts (rendezvous hashing): takes
//!    the free leases of those this host should run, and hands over one it
//!    should not (drained at a batch boundary first, then released), so
//!    instances move to a joining host gradually;
//! 3. starts the instances whose leases it took.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::store::{Definition, DesiredState, split};
use super::{Daemon, Entry, Managed, Stored, invalid};
use crate::cluster::leases::{Leases, Phase, within};
use crate::cluster::{Cluster, Revised, Unit, placement};
use crate::manifest::Manifest;

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
        let tick = cluster.lease() / 6;
        let leases = Arc::new(Leases::new(cluster.clone()));
        let about = serde_json::json!({ "host": cluster.host() }).to_string();
        let keeper = {
            let (leases, stop) = (leases.clone(), stop.clone());
            tokio::spawn(async move { leases.keep(about.into_bytes(), stop).await })
        };
        let mut refused = BTreeMap::new();
        while !*stop.borrow() {
            let began = Instant::now();
            if let Ok(listed) = within(tick * 2, cluster.definitions()).await {
                self.converge(&listed, &mut refused).await;
            }
            if let Ok(hosts) = within(tick, cluster.live_hosts()).await
                && hosts.contains_key(cluster.host())
            {
                self.place(&cluster, &hosts, &leases, tick).await;
            }
            if let Ok(holders) = within(tick, cluster.holders()).await {
                *self.holders.lock().expect("holders lock") = holders;
            }
            self.start_held(&leases).await;
            tokio::select! {
                _ = tokio::time::sleep_until((began + tick).into()) => {}
                _ = stop.changed() => {}
            }
        }
        // Leaving: first out of the listing, so that placement stops
        // naming this host; then every instance drains, and each lease goes
        // back once its instance has ended (the keeper renews them until).
        let _ = within(Duration::from_secs(2), cluster.leave()).await;
        leases.hand_over_all();
        keeper.await.ok();
    }

    /// Takes the free leases of the instances this host should run, and
    /// hands over (at most one per tick) one it should not.
    async fn place(
        &self,
        cluster: &Cluster,
        hosts: &BTreeMap<String, Vec<u8>>,
        leases: &Leases,
        tick: Duration,
    ) {
        // Whether each instance of every connector should run; connectors
        // under an operation are left as they are this tick.
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
        let held = leases.phases();
        let mut handed_over = false;
        for (unit, phase) in &held {
            if *phase != Phase::Holding || busy.contains(&unit.connector) {
                continue;
            }
            let keep = wanted.get(unit).copied().unwrap_or(false);
            let mine = owner(unit) == Some(me);
            if !keep || (!mine && !handed_over) {
                handed_over |= keep;
                leases.hand_over(unit);
                if keep {
                    tracing::info!(connector = %unit.connector, instance = unit.instance, to = ?owner(unit), "handing the instance over");
                }
            }
        }
        for (unit, runs) in wanted {
            if runs && !held.contains_key(&unit) && owner(&unit) == Some(me) {
                leases.take(&unit, tick).await;
            }
        }
    }

    /// Starts the instance of every lease held that does not run in its
    /// connector's current run.
    async fn start_held(&self, leases: &Leases) {
        for (unit, phase) in leases.phases() {
            if phase != Phase::Holding {
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
            if !leases.begin_start(&unit, running.report()) {
                continue;
            }
            let index = unit.instance as usize;
            if let Err(e) = running.start_instance(index).await {
                tracing::error!(connector = %unit.connector, instance = unit.instance, error = %e, "starting a leased instance");
            }
            if !leases.started(&unit, running.report().clone())
                && let Some(i) = running.report().instances.get(index)
            {
                // The lease was lost while it started.
                i.control.stop.stop();
            }
        }
    }
}
