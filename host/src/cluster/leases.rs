//! The leases one host holds, kept by a task of their own ([`Leases::keep`])
//! so that nothing else the host does (listing definitions, starting or
//! stopping connectors) can delay a renewal or the fence.
//!
//! Every 50 ms the keeper stops the instance of each lease whose last
//! confirmed renewal was sent `lease / 2` ago or more; every `lease / 6` it
//! says the host is alive and renews every lease at once (one timeout for
//! all). A lease is released (or, lost, forgotten) only once its instance
//! has ended, and each is logged with its revision: `lease taken`, `lease
//! released`, `lease lost`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Cluster, Unit};
use crate::pump::InstanceState;
use crate::supervisor::ConnectorReport;

/// How often the keeper looks at the fence.
const FENCE_EVERY: Duration = Duration::from_millis(50);

/// Where a held lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its instance runs (or is about to).
    Holding,
    /// Its instance is draining; the lease goes once it has ended.
    Releasing,
    /// It was not renewed in time, or another host took it: its instance
    /// is stopping, and it is forgotten once it has ended.
    Lost,
}

struct Held {
    revision: u64,
    /// When the last renewal the server confirmed was sent (before the
    /// server stamped it: the safe side).
    renewed: Instant,
    /// The run its instance was started in (a connector restarted on this
    /// host is a new run, whose instance starts again).
    run: Option<Arc<ConnectorReport>>,
    phase: Phase,
    /// Its instance is being started: kept until it is, so that an
    /// instance never runs without its lease held.
    starting: bool,
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

/// The leases this host holds.
pub struct Leases {
    cluster: Cluster,
    held: Mutex<BTreeMap<Unit, Held>>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("host", &self.cluster.host())
            .field("held", &self.phases())
            .finish()
    }
}

impl Leases {
    /// None held yet.
    pub fn new(cluster: Cluster) -> Leases {
        Leases {
            cluster,
            held: Mutex::new(BTreeMap::new()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<Unit, Held>> {
        self.held.lock().expect("leases lock")
    }

    /// The units held, and each one's phase.
    pub fn phases(&self) -> BTreeMap<Unit, Phase> {
        self.held()
            .iter()
            .map(|(u, h)| (u.clone(), h.phase))
            .collect()
    }

    /// Whether `unit`'s instance should be started in `current` (its
    /// connector's run on this host): its lease is held, it does not run
    /// there yet, and the lease was renewed recently enough for it to start
    /// well before the fence. If so, the lease is kept until
    /// [`Leases::started`].
    pub fn begin_start(&self, unit: &Unit, current: &Arc<ConnectorReport>) -> bool {
        let fence = self.cluster.lease() / 2;
        let mut held = self.held();
        let Some(h) = held.get_mut(unit) else {
            return false;
        };
        let due = h.phase == Phase::Holding
            && h.renewed.elapsed() < fence / 2
            && !h.run.as_ref().is_some_and(|r| Arc::ptr_eq(r, current));
        h.starting |= due;
        due
    }

    /// Notes that `unit`'s instance was started (or tried to be) in `run`;
    /// `false` if the lease was lost meanwhile: the caller stops it.
    pub fn started(&self, unit: &Unit, run: Arc<ConnectorReport>) -> bool {
        let mut held = self.held();
        let Some(h) = held.get_mut(unit) else {
            return false;
        };
        h.starting = false;
        h.run = Some(run);
        h.phase == Phase::Holding
    }

    /// Takes the lease of `unit` if it is free: whether it did.
    pub async fn take(&self, unit: &Unit, limit: Duration) -> bool {
        let sent = Instant::now();
        let Ok(Ok(Some(revision))) = tokio::time::timeout(limit, self.cluster.take(unit)).await
        else {
            return false;
        };
        tracing::info!(connector = %unit.connector, instance = unit.instance, revision, host = %self.cluster.host(), "lease taken");
        self.held().insert(
            unit.clone(),
            Held {
                revision,
                renewed: sent,
                run: None,
                phase: Phase::Holding,
                starting: false,
            },
        );
        true
    }

    /// Stops `unit`'s instance at a batch boundary; its lease goes once it
    /// has ended.
    pub fn hand_over(&self, unit: &Unit) {
        if let Some(h) = self.held().get_mut(unit)
            && h.phase == Phase::Holding
        {
            h.phase = Phase::Releasing;
            h.stop(unit);
        }
    }

    /// Hands every lease over (the host is leaving).
    pub fn hand_over_all(&self) {
        let units: Vec<Unit> = self.held().keys().cloned().collect();
        for unit in units {
            self.hand_over(&unit);
        }
    }

    /// Keeps the leases until `stop` turns true and none is held any more
    /// (after [`Leases::hand_over_all`], once every instance has ended).
    /// Says the host is alive meanwhile, with `about`.
    pub async fn keep(&self, about: Vec<u8>, stop: watch::Receiver<bool>) {
        let tick = self.cluster.lease() / 6;
        let mut beat: Option<Instant> = None;
        let mut unreachable = false;
        loop {
            if *stop.borrow() && self.held().is_empty() {
                return;
            }
            self.fence();
            if beat.is_none_or(|b| b.elapsed() >= tick) {
                beat = Some(Instant::now());
                // Not while leaving: the host's key is gone already.
                let alive = !*stop.borrow();
                let heartbeat =
                    async { !alive || within(tick, self.cluster.heartbeat(&about)).await.is_ok() };
                let (reached, ()) = tokio::join!(heartbeat, self.renew(tick));
                if reached == unreachable {
                    unreachable = !reached;
                    if unreachable {
                        tracing::warn!(host = %self.cluster.host(), "the cluster's NATS does not answer; instances stop if their leases cannot be renewed");
                    } else {
                        tracing::info!(host = %self.cluster.host(), "in touch with the cluster");
                    }
                }
            }
            self.let_go(tick).await;
            tokio::time::sleep(FENCE_EVERY).await;
        }
    }

    /// Stops the instance of every lease not renewed for half its length.
    fn fence(&self) {
        let fence = self.cluster.lease() / 2;
        for (unit, h) in self.held().iter_mut() {
            if h.phase != Phase::Lost && h.renewed.elapsed() >= fence {
                tracing::warn!(connector = %unit.connector, instance = unit.instance, revision = h.revision, "lease not renewed for half its length; stopping the instance");
                h.phase = Phase::Lost;
            }
            if h.phase == Phase::Lost {
                h.stop(unit);
            }
        }
    }

    /// Renews every lease not lost, all at once, within `limit`.
    async fn renew(&self, limit: Duration) {
        let due: Vec<(Unit, u64)> = self
            .held()
            .iter()
            .filter(|(_, h)| h.phase != Phase::Lost)
            .map(|(u, h)| (u.clone(), h.revision))
            .collect();
        let sent = Instant::now();
        let renewals = due.iter().map(|(u, r)| self.cluster.renew(u, *r));
        let Ok(results) =
            tokio::time::timeout(limit, futures_util::future::join_all(renewals)).await
        else {
            return;
        };
        let mut held = self.held();
        for ((unit, was), result) in due.into_iter().zip(results) {
            let Some(h) = held.get_mut(&unit).filter(|h| h.revision == was) else {
                continue;
            };
            match result {
                Ok(Some(revision)) if h.phase != Phase::Lost => {
                    (h.revision, h.renewed) = (revision, sent);
                }
                Ok(None) if h.phase != Phase::Lost => {
                    tracing::warn!(connector = %unit.connector, instance = unit.instance, revision = h.revision, "another host took the lease; stopping the instance");
                    h.phase = Phase::Lost;
                    h.stop(&unit);
                }
                _ => {}
            }
        }
    }

    /// Releases (or forgets, if lost) every lease let go of whose instance
    /// has ended.
    async fn let_go(&self, limit: Duration) {
        let ended: Vec<(Unit, u64, Phase)> = self
            .held()
            .iter()
            .filter(|(u, h)| h.phase != Phase::Holding && !h.starting && h.ended(u))
            .map(|(u, h)| (u.clone(), h.revision, h.phase))
            .collect();
        let host = self.cluster.host();
        for (unit, revision, phase) in ended {
            self.held().remove(&unit);
            // Logged before the release: the instance has ended by now,
            // and another host may take the lease the moment it is gone.
            if phase == Phase::Lost {
                tracing::info!(connector = %unit.connector, instance = unit.instance, revision, host = %host, "lease lost");
                continue;
            }
            tracing::info!(connector = %unit.connector, instance = unit.instance, revision, host = %host, "lease released");
            if within(limit, self.cluster.release(&unit, revision))
                .await
                .is_err()
            {
                // Nothing runs under it; it expires instead.
                tracing::warn!(connector = %unit.connector, instance = unit.instance, "the lease could not be released; it expires instead");
            }
        }
    }
}

/// `call` if it finishes within `limit`; `Err(())` if it fails or is late.
pub(crate) async fn within<T, E: std::fmt::Display>(
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
