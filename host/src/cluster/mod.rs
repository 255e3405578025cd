//! Cluster mode: several `sluice serve --cluster <url>` hosts on one NATS
//! JetStream share the connectors, as Kafka Connect workers share a Kafka
//! cluster's. Nothing here is a protocol of our own: three KV buckets and
//! the server's compare-and-set do all the agreeing.
//!
//! - `SLUICE_CONNECTORS`: one key per connector, its definition. Every
//!   change through any host's admin API is an `update` on the revision
//!   that host last read, so of two concurrent changes one fails (409).
//! - `SLUICE_HOSTS`: one key per live host, rewritten every tick; the
//!   bucket's `max_age` (the lease length) removes a host that stopped.
//! - `SLUICE_LEASES`: one key per connector instance (`<connector>.<i>`),
//!   whose value names the host that runs it. A host takes a lease with
//!   `create` (it fails while another holds it) and renews it with
//!   `update(revision)`; the revision is the fencing token, and the
//!   bucket's `max_age` frees a lease whose host stopped renewing.
//!
//! Which host should run an instance is decided by rendezvous hashing over
//! the live hosts ([`placement`]): every host computes the same answer
//! from the same listing, a host that leaves moves only its own
//! instances, and a host that joins takes only those it now ranks first.
//!
//! **Timing.** With lease length `L` a host renews every `L/6`. A host that
//! has not had a renewal confirmed for `L/2` (counted from when it sent
//! the renewal, which is before the server stamped it) stops the
//! instance, so it has stopped before the lease can pass to another host
//! at `L` after the last renewal the server stored (the zombie-task lesson
//! of Kafka Connect, KAFKA-9184). When a host dies, its instances start
//! elsewhere after `L` plus a tick; the default `L` is 6 s. The lease keeper
//! ([`leases`]) runs apart from everything else a host does, and looks at
//! the fence every 50 ms. Every host must use the same `L`: the first one
//! sets it in the buckets, and a host asking for another is refused.

pub mod leases;
pub mod placement;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::TryStreamExt as _;

use crate::broker::nats::names::{token, untoken};
use crate::broker::nats::{NatsAccess, servers_shown};

/// The bucket of connector definitions.
const DEFINITIONS: &str = "SLUICE_CONNECTORS";
/// The bucket of live hosts.
const HOSTS: &str = "SLUICE_HOSTS";
/// The bucket of instance leases.
const LEASES: &str = "SLUICE_LEASES";

/// The lease length unless `--lease` says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

/// How a host joins a cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The NATS servers (any one will do).
    pub servers: Vec<async_nats::ServerAddr>,
    /// How the host authenticates and checks the servers (`[broker]`'s
    /// settings when a manifest gives them).
    pub access: NatsAccess,
    /// This host's name in the cluster: unique among the live hosts.
    pub host: String,
    /// How long a lease (and a host's liveness) lasts without renewal.
    pub lease: Duration,
    /// Copies of each bucket in a NATS cluster.
    pub replicas: usize,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("host", &self.host)
            .field("lease", &self.lease)
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

/// What went wrong talking to the cluster's buckets.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS refused or did not answer.
    #[error("NATS: {what}: {why}")]
    Nats {
        /// What was being done.
        what: String,
        /// What NATS said.
        why: String,
    },
    /// The key changed since the revision given (another host wrote it).
    #[error("{0} was changed meanwhile through another host")]
    Changed(String),
    /// This host asks for a lease length other than the cluster's.
    #[error(
        "the cluster's leases last {}, set by the host that made its buckets; this host asks \
         for {}: start it with --lease {0} (every host must agree)",
        humantime::format_duration(*cluster),
        humantime::format_duration(*asked)
    )]
    Lease {
        /// The cluster's.
        cluster: Duration,
        /// This host's `--lease`.
        asked: Duration,
    },
}

fn nats<E: fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> ClusterError {
    let what = what.into();
    move |e| ClusterError::Nats {
        what,
        why: e.to_string(),
    }
}

/// A value in a bucket and the revision that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revised {
    /// The bucket's revision of the write.
    pub revision: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// One connector instance, the unit a lease covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unit {
    /// The connector.
    pub connector: String,
    /// The instance's index.
    pub instance: u32,
}

impl Unit {
    fn key(&self) -> String {
        format!("{}.{}", token(&self.connector), self.instance)
    }

    fn from_key(key: &str) -> Option<Unit> {
        let (connector, instance) = key.rsplit_once('.')?;
        Some(Unit {
            connector: untoken(connector)?,
            instance: instance.parse().ok()?,
        })
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.connector, self.instance)
    }
}

/// This host's handle on the cluster's buckets.
#[derive(Debug, Clone)]
pub struct Cluster {
    host: String,
    lease: Duration,
    definitions: kv::Store,
    hosts: kv::Store,
    leases: kv::Store,
}

impl Cluster {
    /// Connects to NATS and opens (or makes) the cluster's buckets.
    pub async fn join(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let client = config
            .access
            .connect(
                format!("sluice host {}", config.host),
                config.servers.clone(),
            )
            .await
            .map_err(nats(format!(
                "connecting to the NATS server at {}",
                servers_shown(&config.servers)
            )))?;
        let js = jetstream::new(client);
        let bucket = |name: &str, what: &str, max_age: Duration| kv::Config {
            bucket: name.to_owned(),
            description: format!("Sluice cluster: {what}"),
            history: 1,
            max_age,
            num_replicas: config.replicas,
            ..Default::default()
        };
        let open = |c: kv::Config| {
            let js = js.clone();
            async move {
                if let Ok(store) = js.get_key_value(&c.bucket).await {
                    return Ok(store);
                }
                let what = format!("making the KV bucket {}", c.bucket);
                js.create_key_value(c).await.map_err(nats(what))
            }
        };
        let leases = open(bucket(LEASES, "instance leases", config.lease)).await?;
        // A host fencing at half a lease other than the bucket's would
        // fence too late.
        let made = leases
            .status()
            .await
            .map_err(nats("reading the lease bucket"))?
            .max_age();
        if made != config.lease {
            return Err(ClusterError::Lease {
                cluster: made,
                asked: config.lease,
            });
        }
        Ok(Cluster {
            definitions: open(bucket(DEFINITIONS, "connector definitions", Duration::ZERO)).await?,
            hosts: open(bucket(HOSTS, "live hosts", config.lease)).await?,
            leases,
            host: config.host,
            lease: config.lease,
        })
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Every connector's definition, listed afresh.
    pub async fn definitions(&self) -> Result<BTreeMap<String, Revised>, ClusterError> {
        let listed = list(&self.definitions, "listing the connector definitions").await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, v)| Some((untoken(&key)?, v)))
            .collect())
    }

    /// Stores a new connector's definition; `None` if one by that name
    /// exists.
    pub async fn create_definition(
        &self,
        name: &str,
        value: Vec<u8>,
    ) -> Result<Option<u64>, ClusterError> {
        match self.definitions.create(token(name), value.into()).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats(format!("storing the definition of {name:?}"))(e)),
        }
    }

    /// Replaces a definition if it is still at `revision`.
    pub async fn update_definition(
        &self,
        name: &str,
        value: Vec<u8>,
        revision: u64,
    ) -> Result<u64, ClusterError> {
        match self
            .definitions
            .update(token(name), value.into(), revision)
            .await
        {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(
                ClusterError::Changed(format!("the definition of connector {name:?}")),
            ),
            Err(e) => Err(nats(format!("storing the definition of {name:?}"))(e)),
        }
    }

    /// Deletes a definition if it is still at `revision`.
    pub async fn delete_definition(&self, name: &str, revision: u64) -> Result<(), ClusterError> {
        self.definitions
            .delete_expect_revision(token(name), Some(revision))
            .await
            .map_err(|e| {
                if e.to_string().contains("wrong last sequence") {
                    ClusterError::Changed(format!("the definition of connector {name:?}"))
                } else {
                    nats(format!("deleting the definition of {name:?}"))(e)
                }
            })
    }

    /// Says this host is alive, with what it tells the others (its admin
    /// API's address).
    pub async fn heartbeat(&self, about: &[u8]) -> Result<(), ClusterError> {
        self.hosts
            .put(token(&self.host), about.to_vec().into())
            .await
            .map(|_| ())
            .map_err(nats("renewing this host's liveness"))
    }

    /// Every live host, with what each says about itself.
    pub async fn live_hosts(&self) -> Result<BTreeMap<String, Vec<u8>>, ClusterError> {
        let listed = list(&self.hosts, "listing the live hosts").await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, v)| Some((untoken(&key)?, v.value)))
            .collect())
    }

    /// Says this host is leaving (it holds no lease any more).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        self.hosts
            .delete(token(&self.host))
            .await
            .map_err(nats("removing this host's liveness"))
    }

    /// Takes the lease of `unit`: its revision, or `None` if another host
    /// holds it.
    pub async fn take(&self, unit: &Unit) -> Result<Option<u64>, ClusterError> {
        match self
            .leases
            .create(unit.key(), self.host.clone().into_bytes().into())
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(nats(format!("taking the lease of {unit}"))(e)),
        }
    }

    /// Renews a lease held at `revision`: the new revision, or `None` if
    /// the lease is no longer this host's.
    pub async fn renew(&self, unit: &Unit, revision: u64) -> Result<Option<u64>, ClusterError> {
        match self
            .leases
            .update(unit.key(), self.host.clone().into_bytes().into(), revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(nats(format!("renewing the lease of {unit}"))(e)),
        }
    }

    /// Gives up a lease held at `revision` (a no-op if it is no longer
    /// this host's).
    pub async fn release(&self, unit: &Unit, revision: u64) -> Result<(), ClusterError> {
        match self
            .leases
            .delete_expect_revision(unit.key(), Some(revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.to_string().contains("wrong last sequence") => Ok(()),
            Err(e) => Err(nats(format!("releasing the lease of {unit}"))(e)),
        }
    }

    /// Who holds each lease now, and at which revision.
    pub async fn holders(&self) -> Result<BTreeMap<Unit, (String, u64)>, ClusterError> {
        let listed = list(&self.leases, "listing the leases").await?;
        Ok(listed
            .into_iter()
            .filter_map(|(key, v)| {
                let host = String::from_utf8(v.value).ok()?;
                Some((Unit::from_key(&key)?, (host, v.revision)))
            })
            .collect())
    }
}

/// Every key of `store` with its value, from a fresh listing (a watch can
/// stop silently after a reconnect; a listing cannot go stale).
async fn list(store: &kv::Store, what: &str) -> Result<BTreeMap<String, Revised>, ClusterError> {
    let keys: Vec<String> = store
        .keys()
        .await
        .map_err(nats(what))?
        .try_collect()
        .await
        .map_err(nats(what))?;
    let mut out = BTreeMap::new();
    for key in keys {
        // Gone between the listing and the read: left out.
        if let Some(entry) = store.entry(key.clone()).await.map_err(nats(what))?
            && entry.operation == kv::Operation::Put
        {
            out.insert(
                key,
                Revised {
                    revision: entry.revision,
                    value: entry.value.to_vec(),
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_unit_key_reads_back_whatever_the_connector_is_called() {
        for name in ["gen", "public.users", "a_b.3"] {
            let unit = Unit {
                connector: name.into(),
                instance: 7,
            };
            assert_eq!(Unit::from_key(&unit.key()), Some(unit));
        }
    }
}
