//! The embedded broker: a durable, partitioned log on local disk.
//!
//! ```text
//! <data_dir>/topics/<topic>/<partition>/<base offset, 20 digits>.log   segments
//! <data_dir>/groups/<group>.json                                       committed offsets
//! <data_dir>/state/<connector>.state                                   plugin state
//! <data_dir>/journal/<connector>/<instance>.<0|1>                      routed batches
//! ```
//!
//! Appends go to the last segment of a partition as one checksummed frame
//! per batch (see [`segment`]); the segment rolls at `segment_bytes`. Syncing
//! follows the `fsync` policy. Opening the log scans every segment, rebuilds
//! the frame index and the source positions, and cuts off a torn tail of the
//! last segment; damage anywhere else stops the open with the file and byte.
//!
//! A partition's index of frames lives in memory (about 24 bytes a batch).
//!
//! - `partition`: one partition's segments, appends, syncs and recovery.
//! - [`segment`]: the frame format on disk.
//! - `retention`: what retention removes, and the housekeeping thread.
//! - `space`: what the log does when the disk is full.
//! - [`state`]: committed offsets and source positions.
//! - `journal`: the write-ahead record of a batch routed to several
//!   partitions; `routed`: appending one as one, and finishing it at open.
//! - `config`: the log's settings from a manifest.
//! - `plugin_state`: each connector's plugin state, a put at a time.

mod config;
mod journal;
mod partition;
mod plugin_state;
mod retention;
mod routed;
pub mod segment;
mod space;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sluice_batch::Batch;
use tokio::sync::watch;

use self::journal::Journal;
use self::partition::Partition;
use self::retention::{lowest_committed_by, start_housekeeper};
use self::space::{Full, space};
use super::{
    Backlog, Broker, BrokerError, RoutedPart, SourceCheckpoint, StateQuota, StateStore, StoredBatch,
};
use crate::manifest::TopicPolicy;

pub use self::config::LogConfig;
pub use self::plugin_state::ConnectorState;
use self::routed::roll_forward;

/// The embedded log. Cheap to clone; clones share one log.
#[derive(Debug, Clone)]
pub struct EmbeddedLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: LogConfig,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    positions: Mutex<HashMap<String, Vec<u8>>>,
    groups: Mutex<HashMap<String, BTreeMap<String, u64>>>,
    /// Set while writes fail for want of space; see [`space`].
    full: Mutex<Option<Full>>,
    full_flag: AtomicBool,
    /// Consumer groups subscribed in this run, and whether each still
    /// holds its sources back (see [`Broker::release`]).
    subscribed: Mutex<HashMap<String, bool>>,
    /// The journal of each producer that has routed a batch (see
    /// [`journal`]); all its appends go through it.
    journals: Mutex<HashMap<String, Arc<Mutex<Journal>>>>,
}

#[derive(Debug)]
struct Topic {
    policy: TopicPolicy,
    partitions: Vec<Mutex<Partition>>,
    /// Bumped on every append, for waiting readers.
    appended: watch::Sender<u64>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BrokerError + 'a {
    move |source| BrokerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a file's creation in `dir` durable; not every file system allows it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl EmbeddedLog {
    /// Opens the log in `dir`, creating it if needed, and recovers what it
    /// holds.
    pub fn open(dir: &Path, config: LogConfig) -> Result<EmbeddedLog, BrokerError> {
        let topics_dir = dir.join("topics");
        std::fs::create_dir_all(&topics_dir)
            .map_err(io("cannot create data folder", &topics_dir))?;
        // Positions whose frames retention removed; the frames still held
        // override them below.
        let mut positions = state::load_positions(&dir.join(POSITIONS_FILE))?;
        let mut topics = HashMap::new();
        for entry in std::fs::read_dir(&topics_dir).map_err(io("cannot list", &topics_dir))? {
            let entry = entry.map_err(io("cannot list", &topics_dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let topic = Topic::open(
                &topics_dir.join(&name),
                config.policy(&name),
                &mut positions,
            )?;
            topics.insert(name, Arc::new(topic));
        }
        let journals = roll_forward(dir, &config, &mut topics, &mut positions)?;
        let groups = state::load_groups(&dir.join("groups"))?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            config,
            topics: RwLock::new(topics),
            positions: Mutex::new(positions),
            groups: Mutex::new(groups),
            full: Mutex::new(None),
            full_flag: AtomicBool::new(false),
            subscribed: Mutex::new(HashMap::new()),
            journals: Mutex::new(journals),
        });
        start_housekeeper(Arc::downgrade(&inner));
        Ok(EmbeddedLog { inner })
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.inner
            .topics
            .read()
            .expect("topic map lock")
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::NoPartition {
                topic: name.to_owned(),
                partition: 0,
            })
    }

    fn partition<'t>(
        topic: &'t Topic,
        name: &str,
        partition: u32,
    ) -> Result<&'t Mutex<Partition>, BrokerError> {
        topic
            .partitions
            .get(partition as usize)
            .ok_or_else(|| BrokerError::NoPartition {
                topic: name.to_owned(),
                partition,
            })
    }
}

impl Topic {
    /// Opens a topic's folder; a new topic gets `policy.partitions`.
    fn open(
        dir: &Path,
        policy: TopicPolicy,
        positions: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Topic, BrokerError> {
        let mut count = 0u32;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                    count = count.max(p + 1);
                }
            }
        }
        if count == 0 {
            count = policy.partitions;
        }
        let partitions = (0..count)
            .map(|p| Partition::open(dir.join(p.to_string()), positions).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Topic {
            policy,
            partitions,
            appended: watch::channel(0).0,
        })
    }
}

fn sync_all(inner: &Inner) -> Result<(), BrokerError> {
    let journals: Vec<Arc<Mutex<Journal>>> = inner
        .journals
        .lock()
        .expect("journals lock")
        .values()
        .cloned()
        .collect();
    for j in journals {
        j.lock().expect("journal lock").sync()?;
    }
    let topics: Vec<Arc<Topic>> = inner
        .topics
        .read()
        .expect("topic map lock")
        .values()
        .cloned()
        .collect();
    for t in topics {
        for p in &t.partitions {
            p.lock().expect("partition lock").sync()?;
        }
    }
    Ok(())
}

/// Where the positions of frames removed by retention are kept.
const POSITIONS_FILE: &str = "positions.json";

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = sync_all(self) {
            tracing::error!(error = %e, "final sync of the log failed");
        }
    }
}

impl Broker for EmbeddedLog {
    /// Durable state for one connector's plugin, bounded by `quota`.
    fn connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<Arc<dyn StateStore>, BrokerError> {
        let state = ConnectorState::open(&self.inner.dir.join("state"), connector, quota)?;
        Ok(Arc::new(state))
    }

    fn read_connector_state(
        &self,
        connector: &str,
        _quota: StateQuota,
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, BrokerError> {
        plugin_state::read(&self.inner.dir.join("state"), connector)
    }

    /// Forgets a deleted connector: its group's committed offsets and
    /// subscription, and its plugin's durable state. Source positions stay
    /// in the log's frames, keyed by the connector's name: a connector
    /// created again under the same name resumes where the old one was.
    fn forget_connector(&self, connector: &str) -> Result<(), BrokerError> {
        self.inner
            .subscribed
            .lock()
            .expect("subscriptions lock")
            .remove(connector);
        self.inner
            .groups
            .lock()
            .expect("groups lock")
            .remove(connector);
        for path in [
            self.inner
                .dir
                .join("groups")
                .join(format!("{connector}.json")),
            self.inner
                .dir
                .join("state")
                .join(format!("{connector}.state")),
            // Where an older Sluice kept it.
            self.inner
                .dir
                .join("state")
                .join(format!("{connector}.json")),
        ] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing", &path)(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Syncs every partition with unsynced appends.
    fn sync_all(&self) -> Result<(), BrokerError> {
        sync_all(&self.inner)
    }

    fn ensure_topic(&self, topic: &str) -> Result<u32, BrokerError> {
        if let Ok(t) = self.topic(topic) {
            return Ok(t.partitions.len() as u32);
        }
        let mut topics = self.inner.topics.write().expect("topic map lock");
        if let Some(t) = topics.get(topic) {
            return Ok(t.partitions.len() as u32);
        }
        let mut positions = self.inner.positions.lock().expect("positions lock");
        let t = Topic::open(
            &self.inner.dir.join("topics").join(topic),
            self.inner.config.policy(topic),
            &mut positions,
        )?;
        let n = t.partitions.len() as u32;
        topics.insert(topic.to_owned(), Arc::new(t));
        Ok(n)
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
    ) -> Result<u64, BrokerError> {
        if let Some(c) = checkpoint
            && let Some(journal) = self.journal_if_any(c.producer)
        {
            let part = RoutedPart {
                topic,
                partition,
                batch,
                records,
            };
            return Ok(self.append_journaled(&journal, &[part], c.producer, Some(c.position))?[0]);
        }
        let t = self.topic(topic)?;
        let base = {
            let mut p = Self::partition(&t, topic, partition)?
                .lock()
                .expect("partition lock");
            let appended = p.append(batch, records, checkpoint, &self.inner.config);
            let base = space(&self.inner, batch.len() as u64, appended)?;
            if let Some(c) = checkpoint {
                self.inner
                    .positions
                    .lock()
                    .expect("positions lock")
                    .insert(c.producer.to_owned(), c.position.to_vec());
            }
            base
        };
        t.appended.send_modify(|v| *v += 1);
        Ok(base)
    }

    async fn append_routed(
        &self,
        parts: &[RoutedPart<'_>],
        producer: &str,
        position: Option<&[u8]>,
    ) -> Result<Vec<u64>, BrokerError> {
        let journal = self.journal(producer)?;
        self.append_journaled(&journal, parts, producer, position)
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let t = self.topic(topic)?;
        let frames = {
            let p = Self::partition(&t, topic, partition)?
                .lock()
                .expect("partition lock");
            if offset > p.next_offset {
                return Err(BrokerError::OffsetOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    end: p.next_offset,
                });
            }
            p.locate(offset, max_bytes)
        };
        let mut out = Vec::with_capacity(frames.len());
        for (file, path, meta) in frames {
            let frame = segment::read_frame(&file, &meta).map_err(io("cannot read", &path))?;
            let body = segment::verify(&frame, &path, meta.file_pos)?;
            let corrupt = |why: String| BrokerError::Corrupt {
                path: path.clone(),
                byte: meta.file_pos,
                why,
            };
            let batch =
                Batch::parse(body.batch).map_err(|e| corrupt(format!("stored batch: {e}")))?;
            if batch.len() as u32 != body.records {
                return Err(corrupt("record count does not match the batch".into()));
            }
            let skip = offset.saturating_sub(body.base_offset) as usize;
            let first_offset = body.base_offset + skip as u64;
            let records = body.records - skip as u32;
            let value_bytes = if skip == 0 {
                batch.value_bytes()
            } else {
                batch.iter().skip(skip).map(|r| r.value.len() as u64).sum()
            };
            let bytes = if skip > 0 {
                batch.skip(skip)
            } else {
                // The batch is the frame's tail: drop the header in place
                // rather than copying the batch out.
                let start = frame.len() - body.batch.len();
                let mut frame = frame;
                frame.drain(..start);
                frame
            };
            out.push(StoredBatch {
                first_offset,
                records,
                value_bytes,
                bytes,
            });
        }
        Ok(out)
    }

    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        let p = Self::partition(&t, topic, partition)?
            .lock()
            .expect("partition lock");
        Ok(p.next_offset)
    }

    fn data_version(&self, topic: &str) -> u64 {
        self.topic(topic).map(|t| *t.appended.borrow()).unwrap_or(0)
    }

    async fn wait_for_data(&self, topic: &str, seen: u64, timeout: Duration) {
        let Ok(t) = self.topic(topic) else {
            tokio::time::sleep(timeout).await;
            return;
        };
        let mut rx = t.appended.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v > seen)).await;
    }

    fn source_position(&self, producer: &str) -> Result<Option<Vec<u8>>, BrokerError> {
        Ok(self
            .inner
            .positions
            .lock()
            .expect("positions lock")
            .get(producer)
            .cloned())
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<u64> {
        self.inner
            .groups
            .lock()
            .expect("groups lock")
            .get(group)?
            .get(&format!("{topic}/{partition}"))
            .copied()
    }

    async fn commit_offsets(
        &self,
        group: &str,
        offsets: &[(String, u32, u64)],
    ) -> Result<(), BrokerError> {
        // A committed offset must never point past what the log holds on
        // disk, or a power loss would leave the group ahead of its topic.
        for (topic, partition, _) in offsets {
            let t = self.topic(topic)?;
            Self::partition(&t, topic, *partition)?
                .lock()
                .expect("partition lock")
                .sync()?;
        }
        // Held across the write: instances of one group commit concurrently.
        let mut groups = self.inner.groups.lock().expect("groups lock");
        let g = groups.entry(group.to_owned()).or_default();
        let before = g.clone();
        for (topic, partition, next) in offsets {
            g.insert(format!("{topic}/{partition}"), *next);
        }
        let stored = state::store_group(&self.inner.dir.join("groups"), group, g);
        if stored.is_err() {
            // What is not on disk is not committed.
            *g = before;
        }
        space(&self.inner, 0, stored)
    }

    fn subscribe(&self, group: &str, topic: &str) -> Result<(), BrokerError> {
        let t = self.topic(topic)?;
        self.inner
            .subscribed
            .lock()
            .expect("subscriptions lock")
            .insert(group.to_owned(), true);
        let mut groups = self.inner.groups.lock().expect("groups lock");
        let g = groups.entry(group.to_owned()).or_default();
        let before = g.clone();
        let mut added = false;
        for (i, p) in t.partitions.iter().enumerate() {
            if let std::collections::btree_map::Entry::Vacant(e) = g.entry(format!("{topic}/{i}")) {
                e.insert(p.lock().expect("partition lock").start_offset());
                added = true;
            }
        }
        if added {
            let stored = state::store_group(&self.inner.dir.join("groups"), group, g);
            if stored.is_err() {
                *g = before;
            }
            stored?;
        }
        Ok(())
    }

    fn release(&self, group: &str) {
        if let Some(holds) = self
            .inner
            .subscribed
            .lock()
            .expect("subscriptions lock")
            .get_mut(group)
        {
            *holds = false;
        }
    }

    fn backlog(&self, topic: &str, partition: u32) -> Result<Option<Backlog>, BrokerError> {
        let t = self.topic(topic)?;
        let Some((committed, group)) = lowest_committed_by(&self.inner, topic, partition, true)
        else {
            return Ok(None);
        };
        let p = Self::partition(&t, topic, partition)?
            .lock()
            .expect("partition lock");
        Ok(Some(Backlog {
            group,
            records: p
                .next_offset
                .saturating_sub(committed.max(p.start_offset())),
            bytes: p.bytes_from(committed),
            limit: t.policy.max_backlog,
        }))
    }

    fn sync(&self, topic: &str, partition: u32) -> Result<(), BrokerError> {
        let t = self.topic(topic)?;
        let synced = Self::partition(&t, topic, partition)?
            .lock()
            .expect("partition lock")
            .sync();
        space(&self.inner, 0, synced)
    }

    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64, BrokerError> {
        let t = self.topic(topic)?;
        let p = Self::partition(&t, topic, partition)?
            .lock()
            .expect("partition lock");
        Ok(p.start_offset())
    }
}

#[cfg(test)]
mod tests;
