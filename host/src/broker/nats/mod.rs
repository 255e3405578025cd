// Long: the guide to how Sluice maps onto JetStream, and the Broker impl, one method per trait method.
//! NATS JetStream as the broker (`[broker] kind = "nats"`): records rest in
//! a NATS server (or cluster) that several hosts can share.
//!
//! # How Sluice's words map onto JetStream's
//!
//! - A **topic** is a stream, `SLUICE_<topic>` (names are escaped by
//!   [`names::token`]). Its partition count is in the stream's
//!   description, fixed when the stream is made, as in the embedded log.
//! - A **partition** is a subject prefix, `sluice.<topic>.<partition>`;
//!   each producer writes a subject of its own under it,
//!   `sluice.<topic>.<partition>.<producer>`, and readers take the
//!   partition's subjects together (`…<partition>.*`), in stream order.
//! - A **batch** is one message: the Sluice frame as the embedded log stores
//!   it (the encoded batch), with headers: `Sluice-Offset` (its first
//!   record's offset), `Sluice-Records`, and, for a source's batch,
//!   `Sluice-Position`, the source position after it.
//! - An **offset** is a record's index in its partition, as everywhere in
//!   Sluice (a sink's next offset is its batch's first plus its count). The
//!   host numbers a partition's batches in the order the stream stores them,
//!   and writes a partition's batches one at a time. To read from an offset
//!   the broker finds the message that holds it: by the stream sequence of
//!   the batch read last (the common case), or by a binary search over
//!   stream sequences (after a restart), a direct get each step.
//!   `sluice offsets --reset` moves a sink's committed offset, as on the
//!   embedded log.
//!
//! # Delivery
//!
//! - **A source's position is written atomically with its batch**: both are
//!   one message. On restart the position is read from the last message on
//!   the producer's subjects, through the stream's leader (the
//!   `STREAM.MSG.GET` API, not a direct get a replica may answer late).
//! - Each write carries `Nats-Msg-Id` (producer, partition, first offset),
//!   so a write sent again after a lost acknowledgement is stored once, and
//!   `Nats-Expected-Last-Subject-Sequence`: the partition's last message
//!   as the writer knows it (on NATS 2.11 and newer, with
//!   `…-Subject` naming the partition's subjects), or, before 2.11, the
//!   producer's own subject's. A second instance writing as the same
//!   producer (a zombie) is refused ([`BrokerError::Fenced`]) instead of
//!   interleaving with it; a producer that finds another producer's write
//!   first (two hosts writing one partition) reads the end again and
//!   writes after it.
//! - Sinks' committed offsets and plugins' state live in two KV buckets,
//!   `SLUICE_OFFSETS` and `SLUICE_STATE`, written before the call returns.
//! - A sink reads through a durable pull consumer of its own per
//!   partition, started at the message that holds the offset it reads
//!   from; a commit acknowledges the messages it covers whole, after the
//!   offset is in the bucket (see [`consumer`]).
//! - A partition's batches are written one at a time (each carries the
//!   expected last sequence of the one before, and a clustered stream
//!   takes one such write per subject at a time); the source polls its
//!   next batch while one is being stored.
//!
//! # Not yet (see the later steps)
//! - Retention: streams keep every message (no limits are set), so nothing
//!   a sink has not committed is ever removed; `retention_*` and
//!   `max_backlog` apply to the embedded log only.
//! - Sources whose batches are routed over several topics (a topic
//!   template): one message cannot span streams, so the manifest check
//!   refuses them on this broker.
//! - A batch larger than the server's `max_payload` is split by the host
//!   into several messages sent as one atomic batch (NATS 2.12 and newer):
//!   stored all or none, the position in the last. An older server cannot,
//!   so there a source's batches are capped below `max_payload`
//!   ([`Broker::max_append_bytes`]) and a larger one is refused.

mod client;
mod config;
mod consumer;
pub mod names;
mod state;
mod topic;
mod write;

use self::client::{bucket, failed, nats_err, wait, writer_id};
pub use self::config::{NatsAccess, NatsAuth, NatsConfig, servers_shown};
use self::consumer::Cursor;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::runtime::Handle;

use self::topic::{
    HEADER_ROOM, POSITION, Partition, Server, Tail, Topic, is_not_found_last, open_topic,
    partition_end, partition_tail, unhex,
};
use self::write::write;
use super::{
    Backlog, Broker, BrokerError, RoutedPart, SourceCheckpoint, StateQuota, StateStore, StoredBatch,
};

/// The longest a sink waits for data before it reads again: appends made
/// by other hosts are not announced to this one.
const MAX_WAIT: Duration = Duration::from_millis(100);

/// The KV bucket of sinks' committed offsets.
const OFFSETS_BUCKET: &str = "SLUICE_OFFSETS";
/// The KV bucket of plugins' state.
const STATE_BUCKET: &str = "SLUICE_STATE";

/// The producer name of writes that carry no position (dead letters'
/// own writes carry one; this is for the rest).
const NO_PRODUCER: &str = "-";

/// A broker on a NATS JetStream server. See the module docs.
pub struct NatsBroker {
    /// The client's own runtime: the blocking calls of [`Broker`] wait on
    /// it from any thread, whatever runtime (if any) the caller is on.
    runtime: Option<tokio::runtime::Runtime>,
    handle: Handle,
    js: jetstream::Context,
    offsets: kv::Store,
    state: kv::Store,
    config: NatsConfig,
    server: Server,
    /// Tells this broker's writes from any other's (see [`Topic`]).
    writer: u64,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Source positions read or written, by producer.
    positions: Mutex<HashMap<String, Option<Vec<u8>>>>,
    /// Committed offsets read or written, by group, topic and partition.
    committed: Mutex<HashMap<(String, String, u32), u64>>,
    /// Sinks' durable consumers, by group, topic and partition.
    cursors: Mutex<HashMap<(String, String, u32), Arc<CursorSlot>>>,
}

/// A group's cursor in one partition, once its first read made it.
type CursorSlot = tokio::sync::Mutex<Option<Cursor>>;

impl fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// Connects to the server, and makes the buckets Sluice keeps there if
    /// they are not yet. Blocks on the network.
    pub fn open(config: NatsConfig) -> Result<NatsBroker, BrokerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-nats")
            .enable_all()
            .build()
            .map_err(nats_err("starting the NATS client"))?;
        let handle = runtime.handle().clone();
        let (servers, shown) = (config.servers.clone(), config.servers_shown());
        let (access, replicas) = (config.access.clone(), config.replicas);
        let connected = wait(&handle, async move {
            let client = access
                .connect("sluice", servers)
                .await
                .map_err(nats_err(format!(
                    "connecting to the NATS server at {shown}"
                )))?;
            let js = jetstream::new(client.clone());
            let offsets = bucket(&js, OFFSETS_BUCKET, "sinks' committed offsets", replicas).await?;
            let state = bucket(&js, STATE_BUCKET, "connectors' plugin state", replicas).await?;
            Ok::<_, BrokerError>((client, js, offsets, state))
        });
        let (client, js, offsets, state) = match connected {
            Ok(connected) => connected,
            Err(e) => {
                // Dropped on an async worker, a runtime may not wait for
                // its threads.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        Ok(NatsBroker {
            runtime: Some(runtime),
            handle,
            js,
            offsets,
            state,
            server: Server::of(&client.server_info()),
            writer: writer_id(),
            config,
            topics: RwLock::default(),
            positions: Mutex::default(),
            committed: Mutex::default(),
            cursors: Mutex::default(),
        })
    }

    /// `group`'s cursor slot in a partition.
    fn cursor(&self, group: &str, topic: &str, partition: u32) -> Arc<CursorSlot> {
        self.cursors
            .lock()
            .expect("cursors lock")
            .entry((group.to_owned(), topic.to_owned(), partition))
            .or_default()
            .clone()
    }

    /// Drops `group`'s cursors: their consumers stop streaming to this host
    /// (they stay on the server).
    fn drop_cursors(&self, group: &str) {
        self.cursors
            .lock()
            .expect("cursors lock")
            .retain(|(g, _, _), _| g != group);
    }

    /// Remembers `group`'s committed offset in a partition as its KV entry
    /// says (none without one).
    fn remember_committed(&self, group: &str, topic: &str, partition: u32, value: Option<Bytes>) {
        let key = (group.to_owned(), topic.to_owned(), partition);
        let mut committed = self.committed.lock().expect("committed lock");
        match value.and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok()) {
            Some(offset) => committed.insert(key, offset),
            None => committed.remove(&key),
        };
    }

    /// Runs `fut` on the client's runtime and waits for it.
    fn wait<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        wait(&self.handle, fut)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.topics
            .read()
            .expect("topics lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::NoPartition {
                topic: name.to_owned(),
                partition: 0,
            })
    }

    fn partition<'t>(
        t: &'t Topic,
        topic: &str,
        partition: u32,
    ) -> Result<&'t Partition, BrokerError> {
        t.partitions
            .get(partition as usize)
            .ok_or_else(|| BrokerError::NoPartition {
                topic: topic.to_owned(),
                partition,
            })
    }
}

impl Drop for NatsBroker {
    fn drop(&mut self) {
        // Dropped on an async worker, a runtime may not wait for its threads.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Broker for NatsBroker {
    fn ensure_topic(&self, topic: &str) -> Result<u32, BrokerError> {
        if let Ok(t) = self.topic(topic) {
            return Ok(t.partitions.len() as u32);
        }
        let partitions = self
            .config
            .partitions
            .get(topic)
            .copied()
            .unwrap_or(self.config.default_partitions);
        let opened = self.wait(open_topic(
            self.js.clone(),
            topic.to_owned(),
            partitions,
            self.config.replicas,
            self.server,
            self.writer,
        ))?;
        let mut topics = self.topics.write().expect("topics lock");
        let t = topics
            .entry(topic.to_owned())
            .or_insert_with(|| Arc::new(opened));
        Ok(t.partitions.len() as u32)
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
    ) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        let p = Self::partition(&t, topic, partition)?;
        let producer = checkpoint.map_or(NO_PRODUCER, |c| c.producer);
        let subject = names::subject(topic, partition, producer);
        let mut w = p.writer.lock().await;
        let stored = write(
            &t, p, &mut w, topic, partition, &subject, batch, records, checkpoint,
        )
        .await;
        match stored {
            Ok((first, sequence)) => {
                let next = first + u64::from(records);
                w.tail = Some(Tail {
                    end: next,
                    sequence,
                });
                w.last.insert(subject, sequence);
                p.end.store(next, Ordering::Release);
                p.remember(next, sequence + 1);
                if let Some(c) = checkpoint {
                    self.positions
                        .lock()
                        .expect("positions lock")
                        .insert(c.producer.to_owned(), Some(c.position.to_vec()));
                }
                drop(w);
                t.appended.send_modify(|v| *v += 1);
                Ok(first)
            }
            Err(e) => {
                // The batch may be stored even so (a lost acknowledgement):
                // what follows reads the end and the position again.
                w.tail = None;
                w.last.remove(&subject);
                if let Some(c) = checkpoint {
                    self.positions
                        .lock()
                        .expect("positions lock")
                        .remove(c.producer);
                }
                Err(e)
            }
        }
    }

    async fn append_routed(
        &self,
        parts: &[RoutedPart<'_>],
        producer: &str,
        position: Option<&[u8]>,
    ) -> Result<Vec<u64>, BrokerError> {
        // The manifest check refuses routed sources on NATS; a batch that
        // touches one partition is stored as any other.
        match parts {
            [part] => {
                let checkpoint = position.map(|position| SourceCheckpoint { producer, position });
                Ok(vec![
                    self.append(
                        part.topic,
                        part.partition,
                        part.batch,
                        part.records,
                        checkpoint,
                    )
                    .await?,
                ])
            }
            _ => Err(BrokerError::Nats {
                what: format!(
                    "storing a batch of {producer} over {} partitions",
                    parts.len()
                ),
                why:
                    "one NATS message cannot span streams: routed sources need the embedded broker"
                        .into(),
            }),
        }
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let t = self.topic(topic)?;
        let p = Self::partition(&t, topic, partition)?;
        topic::read(&t, p, topic, partition, offset, max_bytes).await
    }

    async fn read_as(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let t = self.topic(topic)?;
        let p = Self::partition(&t, topic, partition)?;
        let slot = self.cursor(group, topic, partition);
        let mut cursor = slot.lock().await;
        if cursor.as_ref().is_none_or(|c| c.next() != offset) {
            *cursor = None;
            *cursor = Some(Cursor::open(&t, p, group, topic, partition, offset).await?);
        }
        let c = cursor.as_mut().expect("cursor just made");
        let read = c.read(p, topic, partition, max_bytes).await;
        if read.is_err() || c.skipped {
            // Made again at the next read, from where the sink then is.
            *cursor = None;
        } else {
            // Another host's appends (cluster mode) are learnt as they are read.
            p.end.fetch_max(c.next(), Ordering::AcqRel);
        }
        read
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        Ok(Self::partition(&t, topic, partition)?
            .end
            .load(Ordering::Acquire))
    }

    fn data_version(&self, topic: &str) -> u64 {
        self.topic(topic).map(|t| *t.appended.borrow()).unwrap_or(0)
    }

    async fn wait_for_data(&self, topic: &str, seen: u64, timeout: Duration) {
        let timeout = timeout.min(MAX_WAIT);
        let Ok(t) = self.topic(topic) else {
            tokio::time::sleep(timeout).await;
            return;
        };
        let mut rx = t.appended.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > seen)).await;
    }

    fn source_position(&self, producer: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        if let Some(p) = self.positions.lock().expect("positions lock").get(producer) {
            return Ok(p.clone());
        }
        let topics: Vec<(String, Arc<Topic>)> = self
            .topics
            .read()
            .expect("topics lock")
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let who = producer.to_owned();
        let found = self.wait(async move {
            // The partitions' ends first, then the producer's last
            // messages: a write of an earlier life of this producer that
            // lands in between (its acknowledgement was lost) is then
            // either in the position read, or makes the first write here
            // find the partition moved and the producer's subject with it
            // (fenced), never written over.
            for (topic, t) in &topics {
                for (p, part) in t.partitions.iter().enumerate() {
                    let tail = partition_tail(&t.stream, topic, p as u32).await?;
                    let mut w = part.writer.lock().await;
                    w.tail = Some(tail);
                    w.last.remove(&names::subject(topic, p as u32, &who));
                }
            }
            let mut latest: Option<(jetstream::message::StreamMessage, String)> = None;
            for (topic, t) in &topics {
                match t
                    .stream
                    .get_last_raw_message_by_subject(&names::producer_filter(topic, &who))
                    .await
                {
                    Ok(m) => {
                        // The producer's last message here is what its
                        // writes expect on their subject.
                        let written = (0..t.partitions.len())
                            .find(|&p| m.subject.as_str() == names::subject(topic, p as u32, &who));
                        if let Some(p) = written {
                            let mut w = t.partitions[p].writer.lock().await;
                            w.last.insert(m.subject.to_string(), m.sequence);
                        }
                        if latest.as_ref().is_none_or(|(l, _)| m.time > l.time) {
                            latest = Some((m, topic.clone()));
                        }
                    }
                    Err(e) if is_not_found_last(&e) => {
                        for (p, part) in t.partitions.iter().enumerate() {
                            let mut w = part.writer.lock().await;
                            w.last.insert(names::subject(topic, p as u32, &who), 0);
                        }
                    }
                    Err(e) => {
                        return Err(failed(format!("reading the position of {who} in {topic}"))(
                            &e,
                        ));
                    }
                }
            }
            Ok(latest)
        })?;
        let position = match found {
            None => None,
            Some((m, topic)) => {
                let text = m.headers.get(POSITION).map(|v| v.as_str().to_owned());
                Some(
                    text.as_deref()
                        .and_then(unhex)
                        .ok_or_else(|| BrokerError::Nats {
                            what: format!("reading the position of {producer} in {topic}"),
                            why: format!(
                                "message {} has no readable {POSITION} header",
                                m.sequence
                            ),
                        })?,
                )
            }
        };
        self.positions
            .lock()
            .expect("positions lock")
            .insert(producer.to_owned(), position.clone());
        Ok(position)
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.committed
            .lock()
            .expect("committed lock")
            .get(&(group.to_owned(), topic.to_owned(), partition))
            .copied()
    }

    fn subscribe(&self, group: &str, topic: &str) -> Result<(), BrokerError> {
        let partitions = self.topic(topic)?.partitions.len() as u32;
        let store = self.offsets.clone();
        let keys: Vec<(u32, String)> = (0..partitions)
            .map(|p| (p, names::offset_key(group, topic, p)))
            .collect();
        let what = format!("reading the committed offsets of {group} in {topic}");
        let read = self.wait(async move {
            let mut read = Vec::new();
            for (p, key) in keys {
                let value = store.get(key).await.map_err(nats_err(what.clone()))?;
                read.push((p, value));
            }
            Ok::<_, BrokerError>(read)
        })?;
        for (p, value) in read {
            self.remember_committed(group, topic, p, value);
        }
        Ok(())
    }

    fn release(&self, group: &str) {
        // Nothing holds sources back on NATS yet (see the module docs); a
        // sink failed for good stops its consumers' flow to this host.
        self.drop_cursors(group);
    }

    fn sync(&self, _topic: &str, _partition: u32) -> Result<(), BrokerError> {
        // A write returns once the server has stored it.
        Ok(())
    }

    fn backlog(&self, _topic: &str, _partition: u32) -> Result<Option<Backlog>, BrokerError> {
        Ok(None)
    }

    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        Ok(Self::partition(&t, topic, partition)?
            .start
            .load(Ordering::Relaxed))
    }

    fn connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<Arc<dyn StateStore>, BrokerError> {
        let state =
            state::NatsState::open(self.state.clone(), self.handle.clone(), connector, quota)?;
        Ok(Arc::new(state))
    }

    fn reopen_producer(&self, producer: &str) -> Result<(), BrokerError> {
        self.positions
            .lock()
            .expect("positions lock")
            .remove(producer);
        let topics: Vec<(String, Arc<Topic>)> = self
            .topics
            .read()
            .expect("topics lock")
            .iter()
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect();
        let producer = producer.to_owned();
        self.wait(async move {
            for (name, t) in topics {
                for (p, part) in t.partitions.iter().enumerate() {
                    let subject = names::subject(&name, p as u32, &producer);
                    let mut w = part.writer.lock().await;
                    if w.last.remove(&subject).is_some() {
                        w.tail = None;
                    }
                }
            }
        });
        Ok(())
    }

    fn reopen_partition(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<(), BrokerError> {
        let t = self.topic(topic)?;
        Self::partition(&t, topic, partition)?;
        let (store, key) = (
            self.offsets.clone(),
            names::offset_key(group, topic, partition),
        );
        let what = format!("reading the committed offset of {group} in {topic}/{partition}");
        let (stream, name) = (t.stream.clone(), topic.to_owned());
        let (value, end) = self.wait(async move {
            let value = store.get(key).await.map_err(nats_err(what))?;
            let end = partition_end(&stream, &name, partition).await?;
            Ok::<_, BrokerError>((value, end))
        })?;
        self.remember_committed(group, topic, partition, value);
        self.cursors.lock().expect("cursors lock").remove(&(
            group.to_owned(),
            topic.to_owned(),
            partition,
        ));
        t.partitions[partition as usize]
            .end
            .fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    fn forget_connector(&self, connector: &str) -> Result<(), BrokerError> {
        let prefix = names::key_prefix(connector);
        let (offsets, state) = (self.offsets.clone(), self.state.clone());
        let what = format!("forgetting connector {connector:?}");
        let (js, group) = (self.js.clone(), connector.to_owned());
        self.drop_cursors(connector);
        self.wait(async move {
            consumer::forget(&js, &group).await?;
            for store in [offsets, state] {
                for key in state::keys_with_prefix(&store, &prefix)
                    .await
                    .map_err(nats_err(what.clone()))?
                {
                    store.purge(&key).await.map_err(nats_err(what.clone()))?;
                }
            }
            Ok::<_, BrokerError>(())
        })?;
        self.committed
            .lock()
            .expect("committed lock")
            .retain(|(group, _, _), _| group != connector);
        Ok(())
    }

    fn sync_all(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        for (topic, partition, next) in offsets {
            self.offsets
                .put(
                    names::offset_key(group, topic, *partition),
                    Bytes::from(next.to_string()),
                )
                .await
                .map_err(nats_err(format!(
                    "committing the offset of {group} in {topic}/{partition}"
                )))?;
            self.committed
                .lock()
                .expect("committed lock")
                .insert((group.to_owned(), topic.clone(), *partition), *next);
            let slot = self
                .cursors
                .lock()
                .expect("cursors lock")
                .get(&(group.to_owned(), topic.clone(), *partition))
                .cloned();
            if let Some(slot) = slot
                && let Some(cursor) = slot.lock().await.as_mut()
            {
                let what = format!("acknowledging {topic}/{partition} up to {next} for {group}");
                cursor.ack(*next, &what).await?;
            }
        }
        Ok(())
    }

    fn max_append_bytes(&self) -> u64 {
        if self.server.atomic {
            u64::MAX
        } else {
            self.server.max_payload.saturating_sub(HEADER_ROOM)
        }
    }
}

#[cfg(test)]
mod tests;
