// Long: the Broker trait and HostBroker, which forwards each of its methods
// to the kind it opened; they change together.
//! Where records rest between sources and sinks.
//!
//! [`Broker`] is what the rest of the host needs from one: append a batch
//! (with the source position it brings the source to), read batches from an
//! offset, wait for new data, keep consumer-group offsets and source
//! positions durably, keep each connector's plugin state ([`StateStore`],
//! bounded by a [`StateQuota`]), forget a deleted connector, and sync.
//! [`embedded::EmbeddedLog`] is the default, a durable log on local disk in
//! this process; distributed brokers (NATS JetStream, later Kafka) implement
//! the same trait.
//!
//! Nothing above this module names a kind of broker: the host opens the
//! manifest's broker with [`open`] and holds a [`HostBroker`], an enum over
//! the kinds: the embedded log, or [`nats::NatsBroker`] on a NATS JetStream
//! server.

pub mod embedded;
pub mod nats;

use std::path::Path;
use std::sync::Arc;

use std::future::Future;
use std::time::Duration;

/// A batch as stored: its first offset, record count and encoded records.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    /// Offset of the first record.
    pub first_offset: u64,
    /// Records in the batch.
    pub records: u32,
    /// Total size of the records' values, for throughput counters.
    pub value_bytes: u64,
    /// The batch, in the Sluice batch format.
    pub bytes: Vec<u8>,
}

impl StoredBatch {
    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.first_offset + u64::from(self.records)
    }
}

/// The position a source reached with an appended batch, stored in the same
/// write so a restart resumes exactly after what the broker holds.
#[derive(Debug, Clone, Copy)]
pub struct SourceCheckpoint<'a> {
    /// Who: `<connector>/<instance index>`.
    pub producer: &'a str,
    /// The source's own position after the batch.
    pub position: &'a [u8],
}

/// One part of a routed batch: the records of a source batch that go to one
/// partition (see [`Broker::append_routed`]).
#[derive(Debug, Clone, Copy)]
pub struct RoutedPart<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The partition.
    pub partition: u32,
    /// The part's records, in the Sluice batch format.
    pub batch: &'a [u8],
    /// How many.
    pub records: u32,
}

/// Why the broker refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Reading or writing the disk failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Stored data fails its checksum or does not parse.
    #[error(
        "corrupt log data in {path} at byte {byte}: {why}. Sluice will not serve or cut data \
         past it; restore the file from a copy, or move the segment aside to drop its records"
    )]
    Corrupt {
        /// The segment file.
        path: std::path::PathBuf,
        /// Where in it.
        byte: u64,
        /// What is wrong.
        why: String,
    },
    /// The topic or partition does not exist.
    #[error("no partition {partition} in topic {topic:?}")]
    NoPartition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// The NATS server could not be reached, or refused a request.
    #[error("NATS: {what}: {why}")]
    Nats {
        /// What was being done.
        what: String,
        /// Why it failed.
        why: String,
    },
    /// Another writer stored a batch as the same producer since this one
    /// last did: two instances of one source run at once (a zombie).
    #[error(
        "another instance writes as {producer} to {topic}/{partition}: this one stops rather than \
         interleave with it"
    )]
    Fenced {
        /// The producer, `<connector>/<instance>`.
        producer: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
    },
    /// A batch larger than the broker takes in one write.
    #[error(
        "a batch of {bytes} bytes for {topic}/{partition} is larger than the broker takes in one \
         write ({limit} bytes): lower the connector's batch max_bytes, or raise the server's limit"
    )]
    TooLarge {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The batch's size.
        bytes: u64,
        /// The most one write takes.
        limit: u64,
    },
    /// A record offset outside the log.
    #[error("offset {offset} is beyond the end ({end}) of {topic}/{partition}")]
    OffsetOutOfRange {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Asked for.
        offset: u64,
        /// The log's end.
        end: u64,
    },
}

/// How far the slowest consumer group of a partition is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// The group.
    pub group: String,
    /// Records it has not committed.
    pub records: u64,
    /// Bytes of stored batches it has not committed.
    pub bytes: u64,
    /// The topic's `max_backlog`: at or past it, sources wait.
    pub limit: u64,
}

impl Backlog {
    /// True when sources writing the partition should wait.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.limit
    }
}

impl BrokerError {
    /// True when a write failed for want of space (`ENOSPC`, `EDQUOT`): the
    /// flow waits for space instead of failing.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, BrokerError::Io { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
    }
}

/// How much plugin state a connector may keep: its `state` grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateQuota {
    /// Bytes of keys and values together.
    pub bytes: u64,
    /// Number of keys.
    pub keys: u32,
}

impl Default for StateQuota {
    /// The manifest's default `state` and `state_keys` grants.
    fn default() -> Self {
        StateQuota {
            bytes: crate::manifest::DEFAULT_STATE_BYTES,
            keys: crate::manifest::DEFAULT_STATE_KEYS,
        }
    }
}

impl StateQuota {
    /// Whether `connector`'s state, holding `values` (`live` bytes of keys
    /// and values), may take `key` = `value`: the bytes it would then hold,
    /// or why not.
    pub fn admit(
        &self,
        connector: &str,
        values: &std::collections::BTreeMap<String, Vec<u8>>,
        live: u64,
        key: &str,
        value: &[u8],
    ) -> Result<u64, StateError> {
        let old = values.get(key).map_or(0, |v| (key.len() + v.len()) as u64);
        let bytes = live - old + (key.len() + value.len()) as u64;
        let keys = values.len() + usize::from(!values.contains_key(key));
        if bytes > self.bytes || keys as u64 > u64::from(self.keys) {
            return Err(StateError::QuotaExceeded {
                connector: connector.to_owned(),
                bytes,
                keys,
                quota: *self,
            });
        }
        Ok(bytes)
    }
}

/// Why a plugin's state put was refused. Either way, nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The put would take the state past the connector's `state` grant.
    #[error(
        "the state of connector {connector:?} would hold {} in {keys} keys, past its state grant of {} and {} keys",
        crate::manifest::format_bytes(*bytes),
        crate::manifest::format_size(quota.bytes),
        quota.keys
    )]
    QuotaExceeded {
        /// The connector.
        connector: String,
        /// Bytes it would hold.
        bytes: u64,
        /// Keys it would hold.
        keys: usize,
        /// Its grant.
        quota: StateQuota,
    },
    /// The store cannot take the write now (a full disk, an I/O error).
    #[error("cannot store the state of connector {connector:?}: {source}")]
    Unavailable {
        /// The connector.
        connector: String,
        /// Why.
        #[source]
        source: BrokerError,
    },
}

/// A connector's durable key/value state, behind the plugin's
/// `state-get`/`state-put` imports. Both calls may block on disk (or, for
/// a distributed broker, on the network): the sandbox calls them off the
/// async workers.
pub trait StateStore: Send + Sync {
    /// Reads a key.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Writes a key durably, within the connector's quota.
    fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError>;
    /// The keys that start with `prefix`, in order, each with the length of
    /// its value (for queryable state).
    fn keys(&self, prefix: &str) -> Vec<(String, usize)>;
}

/// The keys of `values` that start with `prefix`, in order, each with the
/// length of its value: [`StateStore::keys`] of a state held as a map.
pub fn keys_in(
    values: &std::collections::BTreeMap<String, Vec<u8>>,
    prefix: &str,
) -> Vec<(String, usize)> {
    values
        .range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.len()))
        .collect()
}

/// The broker a host runs on, whichever kind its manifest chose.
#[derive(Debug)]
pub enum HostBroker {
    /// `kind = "embedded"`: a durable log on local disk.
    Embedded(embedded::EmbeddedLog),
    /// `kind = "nats"`: streams on a NATS JetStream server.
    /// `kind = "nats"`: streams on a NATS JetStream server (boxed: its
    /// client is large).
    Nats(Box<nats::NatsBroker>),
}

/// Opens the broker the `[broker]` and `[topics]` settings of `manifest`
/// choose (the embedded log in `data_dir` without one), recovering what it
/// holds (reading the secrets a NATS `[broker]` names). Blocks on disk or
/// the network: call it before serving.
pub fn open(
    data_dir: &Path,
    manifest: Option<&crate::manifest::Manifest>,
) -> Result<HostBroker, BrokerError> {
    match manifest {
        Some(m) if m.broker.kind == crate::manifest::BrokerKind::Nats => {
            let access = nats::NatsAccess::from_manifest(m).map_err(|why| BrokerError::Nats {
                what: "reading the [broker] settings".into(),
                why,
            })?;
            let config = nats::NatsConfig::from_manifest(m, access);
            Ok(HostBroker::Nats(Box::new(nats::NatsBroker::open(config)?)))
        }
        _ => {
            let config = manifest.map_or_else(
                embedded::LogConfig::defaults,
                embedded::LogConfig::from_manifest,
            );
            Ok(HostBroker::Embedded(embedded::EmbeddedLog::open(
                data_dir, config,
            )?))
        }
    }
}

/// Opens the NATS broker a cluster shares (`sluice serve --cluster`) at
/// `servers`, with `manifest`'s topic settings if one is given.
pub fn open_cluster(
    servers: Vec<async_nats::ServerAddr>,
    access: nats::NatsAccess,
    replicas: usize,
    manifest: Option<&crate::manifest::Manifest>,
) -> Result<HostBroker, BrokerError> {
    let mut config = match manifest {
        Some(m) => nats::NatsConfig::from_manifest(m, nats::NatsAccess::default()),
        None => nats::NatsConfig {
            servers: Vec::new(),
            access: nats::NatsAccess::default(),
            replicas,
            default_partitions: crate::manifest::TopicPolicy::default().partitions,
            partitions: Default::default(),
        },
    };
    (config.servers, config.access, config.replicas) = (servers, access, replicas);
    Ok(HostBroker::Nats(Box::new(nats::NatsBroker::open(config)?)))
}

/// What [`open`] does, for the context of its error: "opening the broker in
/// data" or "opening the nats broker".
pub fn opening(data_dir: &Path, manifest: Option<&crate::manifest::Manifest>) -> String {
    match manifest {
        Some(m) if m.broker.kind == crate::manifest::BrokerKind::Nats => {
            "opening the nats broker".into()
        }
        _ => format!("opening the broker in {}", data_dir.display()),
    }
}

/// Calls the same method on whichever broker `self` is.
macro_rules! each {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            HostBroker::Embedded($b) => $call,
            HostBroker::Nats($b) => $call,
        }
    };
}

impl Broker for HostBroker {
    fn ensure_topic(&self, topic: &str) -> Result<u32, BrokerError> {
        each!(self, b => b.ensure_topic(topic))
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
    ) -> Result<u64, BrokerError> {
        each!(self, b => b.append(topic, partition, batch, records, checkpoint).await)
    }

    async fn append_routed(
        &self,
        parts: &[RoutedPart<'_>],
        producer: &str,
        position: Option<&[u8]>,
    ) -> Result<Vec<u64>, BrokerError> {
        each!(self, b => b.append_routed(parts, producer, position).await)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        each!(self, b => b.read(topic, partition, offset, max_bytes).await)
    }

    async fn read_as(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        each!(self, b => b.read_as(group, topic, partition, offset, max_bytes).await)
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        each!(self, b => b.end_offset(topic, partition))
    }

    fn data_version(&self, topic: &str) -> u64 {
        each!(self, b => b.data_version(topic))
    }

    async fn wait_for_data(&self, topic: &str, seen: u64, timeout: Duration) {
        each!(self, b => b.wait_for_data(topic, seen, timeout).await)
    }

    fn source_position(&self, producer: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        each!(self, b => b.source_position(producer))
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        each!(self, b => b.committed_offset(group, topic, partition))
    }

    fn subscribe(&self, group: &str, topic: &str) -> Result<(), BrokerError> {
        each!(self, b => b.subscribe(group, topic))
    }

    fn release(&self, group: &str) {
        each!(self, b => b.release(group))
    }

    fn sync(&self, topic: &str, partition: u32) -> Result<(), BrokerError> {
        each!(self, b => b.sync(topic, partition))
    }

    fn backlog(&self, topic: &str, partition: u32) -> Result<Option<Backlog>, BrokerError> {
        each!(self, b => b.backlog(topic, partition))
    }

    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        each!(self, b => b.start_offset(topic, partition))
    }

    fn connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<Arc<dyn StateStore>, BrokerError> {
        each!(self, b => b.connector_state(connector, quota))
    }

    fn read_connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, BrokerError> {
        each!(self, b => b.read_connector_state(connector, quota))
    }

    fn reopen_producer(&self, producer: &str) -> Result<(), BrokerError> {
        each!(self, b => b.reopen_producer(producer))
    }

    fn reopen_partition(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<(), BrokerError> {
        each!(self, b => b.reopen_partition(group, topic, partition))
    }

    fn forget_connector(&self, connector: &str) -> Result<(), BrokerError> {
        each!(self, b => b.forget_connector(connector))
    }

    fn sync_all(&self) -> Result<(), BrokerError> {
        each!(self, b => b.sync_all())
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        each!(self, b => b.commit_offsets(group, offsets).await)
    }

    fn max_append_bytes(&self) -> u64 {
        each!(self, b => b.max_append_bytes())
    }
}

/// What the host needs from a broker.
///
/// Which calls may block: the `async` ones wait on the broker without
/// holding a worker (an append under `fsync = "always"` syncs, a read may
/// read the disk); of the plain ones, [`Broker::ensure_topic`],
/// [`Broker::subscribe`], [`Broker::sync`], [`Broker::sync_all`],
/// [`Broker::connector_state`] and [`Broker::forget_connector`] may block on
/// disk (or, for a distributed broker, the network) and are called at a
/// connector's start or stop, or at a sink's commit, never per record; the
/// rest answer from memory.
pub trait Broker: Send + Sync + 'static {
    /// Creates the topic if it does not exist; returns its partition count.
    fn ensure_topic(&self, topic: &str) -> Result<u32, BrokerError>;

    /// Appends one batch of `records` records; returns its first offset.
    fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
    ) -> impl Future<Output = Result<u64, BrokerError>> + Send;

    /// Appends a source batch of `producer` split over several partitions
    /// (a topic per table) as one: after an error, or a crash at any moment,
    /// either every part is in its partition and `position` (if the batch
    /// brings one) is the producer's, or no part is and the position is the
    /// one before. Each partition appears at most once in `parts`, and each
    /// topic exists. Returns each part's first offset.
    fn append_routed(
        &self,
        parts: &[RoutedPart<'_>],
        producer: &str,
        position: Option<&[u8]>,
    ) -> impl Future<Output = Result<Vec<u64>, BrokerError>> + Send;

    /// Reads whole batches starting at `offset` (the first one trimmed to
    /// start there), up to about `max_bytes`. Empty at the end of the log.
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<StoredBatch>, BrokerError>> + Send;

    /// Reads as [`Broker::read`] does, for consumer group `group` (a sink
    /// connector), which reads the partition alone and commits its offsets
    /// with [`Broker::commit_offsets`]: a broker may keep a cursor for it
    /// between reads (NATS: a durable consumer the server streams from).
    fn read_as(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<StoredBatch>, BrokerError>> + Send {
        let _ = group;
        self.read(topic, partition, offset, max_bytes)
    }

    /// The offset the next appended record will get.
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError>;

    /// A number that grows with every append to `topic`. Take it before
    /// reading, and pass it to [`Broker::wait_for_data`], so that an append
    /// between the read and the wait is not missed.
    fn data_version(&self, topic: &str) -> u64;

    /// Waits until `topic`'s data version passes `seen`, or `timeout`.
    fn wait_for_data(
        &self,
        topic: &str,
        seen: u64,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send;

    /// The last position stored for `producer`, if any. May block on the
    /// network (a distributed broker reads it once, at a source's start).
    fn source_position(&self, producer: &str) -> Result<Option<Vec<u8>>, BrokerError>;

    /// The committed next offset of `group` in a partition, if any.
    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64>;

    /// Makes `group` a consumer of `topic` for this run: in each partition
    /// where it has no committed offset yet, it starts at the oldest record
    /// kept. From then on retention keeps what the group has not committed,
    /// and sources wait while it is `max_backlog` behind. Groups not
    /// subscribed in this run (a sink since removed) hold nothing back.
    fn subscribe(&self, group: &str, topic: &str) -> Result<(), BrokerError>;

    /// Says that `group` no longer holds its sources back: its sink has
    /// failed for good, and waiting for it would stall the pipeline.
    /// Retention still keeps what it has not committed.
    fn release(&self, group: &str);

    /// Makes the data appended to a partition so far durable, whatever the
    /// fsync policy (a sink syncs its dead-letter partitions before it
    /// commits the offsets of the records it dead-lettered).
    fn sync(&self, topic: &str, partition: u32) -> Result<(), BrokerError>;

    /// The slowest consumer group of a partition that holds its sources
    /// back, if it has any.
    fn backlog(&self, topic: &str, partition: u32) -> Result<Option<Backlog>, BrokerError>;

    /// The offset of the oldest record kept (retention removes older ones).
    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError>;

    /// The durable plugin state of `connector`, bounded by `quota`. May
    /// block on disk.
    fn connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<Arc<dyn StateStore>, BrokerError>;

    /// What `connector`'s durable plugin state holds now, read without
    /// changing anything (for queryable state while it is not running
    /// here). May block on disk or the network.
    fn read_connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, BrokerError> {
        let state = self.connector_state(connector, quota)?;
        Ok(state
            .keys("")
            .into_iter()
            .filter_map(|(k, _)| state.get(&k).map(|v| (k, v)))
            .collect())
    }

    /// Forgets what this host remembers of `producer`'s writes (its
    /// position, the stream sequence its next write expects, the ends of
    /// the partitions it wrote), so that its next read or write asks the
    /// broker. Called when a source instance starts: in cluster mode
    /// another host may have run it meanwhile. The embedded log, the only
    /// writer of its data, remembers nothing it must read again. May block
    /// on the network.
    fn reopen_producer(&self, _producer: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Reads again `group`'s committed offset in a partition, and the
    /// partition's end, which another host may have moved (cluster mode).
    /// Called when a sink instance starts reading the partition. May block
    /// on the network.
    fn reopen_partition(
        &self,
        _group: &str,
        _topic: &str,
        _partition: u32,
    ) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Forgets a deleted connector: its group's committed offsets and
    /// subscription, and its plugin state. Source positions stay: a
    /// connector created again under the same name resumes where the old
    /// one was. May block on disk.
    fn forget_connector(&self, connector: &str) -> Result<(), BrokerError>;

    /// Makes everything appended so far durable, whatever the fsync policy
    /// (at a clean stop). May block on disk.
    fn sync_all(&self) -> Result<(), BrokerError>;

    /// The most bytes one appended batch may hold.
    fn max_append_bytes(&self) -> u64 {
        u64::MAX
    }

    /// Durably commits `group`'s next offsets.
    fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> impl Future<Output = Result<(), BrokerError>> + Send;
}

/// What the brokers' tests share.
#[cfg(test)]
pub(crate) mod testing;
