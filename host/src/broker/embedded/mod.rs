//! The embedded broker: a durable, partitioned log on local disk.
//!
//! ```text
//! <data_dir>/topics/<topic>/<partition>/<base offset, 20 digits>.log   segments
//! <data_dir>/groups/<group>.json                                       committed offsets
//! <data_dir>/state/<connector>.state                                   plugin state
//! ```
//!
//! Appends go to the last segment of a partition as one checksummed frame
//! per batch (see [`segment`]); the segment rolls at `segment_bytes`. Syncing
//! follows the `fsync` policy. Opening the log scans every segment, rebuilds
//! the frame index and the source positions, and cuts off a torn tail of the
//! last segment; damage anywhere else stops the open with the file and byte.
//!
//! A partition's index of frames lives in memory (about 24 bytes a batch).

mod plugin_state;
pub mod segment;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use sluice_batch::Batch;
use tokio::sync::watch;

use self::segment::FrameMeta;
use super::{Backlog, Broker, BrokerError, SourceCheckpoint, StateQuota, StoredBatch};
use crate::manifest::{FsyncPolicy, Manifest, TopicPolicy};

pub use self::plugin_state::ConnectorState;

/// Settings of an [`EmbeddedLog`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// When to sync.
    pub fsync: FsyncPolicy,
    /// Period of the background sync under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Roll segments at this size.
    pub segment_bytes: u64,
    /// Partitions, retention and backlog of topics not in `policies`.
    pub default_policy: TopicPolicy,
    /// Those of topics named in the manifest.
    pub policies: BTreeMap<String, TopicPolicy>,
}

impl LogConfig {
    /// The settings a manifest gives.
    pub fn from_manifest(m: &Manifest) -> Self {
        let (default_policy, policies) = m.topic_policies();
        LogConfig {
            fsync: m.broker.fsync,
            fsync_interval: Duration::from_millis(m.broker.fsync_interval_ms.max(1)),
            segment_bytes: m.broker.segment_bytes,
            default_policy,
            policies,
        }
    }

    /// The settings of a manifest with no `[broker]` or `[topics]`.
    pub fn defaults() -> Self {
        let b = crate::manifest::BrokerConfig::default();
        LogConfig {
            fsync: b.fsync,
            fsync_interval: Duration::from_millis(b.fsync_interval_ms.max(1)),
            segment_bytes: b.segment_bytes,
            default_policy: b.default_policy(),
            policies: BTreeMap::new(),
        }
    }

    fn policy(&self, topic: &str) -> TopicPolicy {
        self.policies
            .get(topic)
            .copied()
            .unwrap_or(self.default_policy)
    }
}

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
}

/// Since when writes have failed for want of space, and the largest write
/// that failed.
#[derive(Debug)]
struct Full {
    since: Instant,
    needed: u64,
}

#[derive(Debug)]
struct Topic {
    policy: TopicPolicy,
    partitions: Vec<Mutex<Partition>>,
    /// Bumped on every append, for waiting readers.
    appended: watch::Sender<u64>,
}

#[derive(Debug)]
struct Segment {
    base_offset: u64,
    path: PathBuf,
    reader: Arc<File>,
    frames: Vec<FrameMeta>,
    /// Bytes in the file (for the active segment, see `Partition::active_len`).
    len: u64,
    /// When its last frame was written; `None` while it is the active one.
    closed_at: Option<SystemTime>,
}

#[derive(Debug)]
struct Partition {
    dir: PathBuf,
    segments: Vec<Segment>,
    writer: File,
    active_len: u64,
    next_offset: u64,
    dirty: bool,
    /// Set when a write or sync failed in a way that may leave the file and
    /// the index disagreeing; the partition then refuses appends until the
    /// log is reopened (which recovers from the file).
    failed: Option<String>,
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

fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

impl Partition {
    /// Opens (or creates) a partition folder, recovering its segments.
    fn open(
        dir: PathBuf,
        positions: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Partition, BrokerError> {
        std::fs::create_dir_all(&dir).map_err(io("cannot create partition folder", &dir))?;
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io("cannot list partition folder", &dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
            let path = dir.join(segment_name(0));
            File::create(&path).map_err(io("cannot create log segment", &path))?;
            sync_dir(&dir);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let mut next_offset = bases[0];
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(*base));
            let last = i + 1 == bases.len();
            let scan = segment::scan(&path, last)?;
            if scan.torn_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = scan.valid_len,
                    cut_bytes = scan.torn_bytes,
                    "cut a torn write off the end of the log (a crash during an append); \
                     the batch it held was never acknowledged"
                );
                segment::truncate(&path, scan.valid_len)
                    .map_err(io("cannot cut the torn tail of", &path))?;
            }
            if let Some(first) = scan.frames.first()
                && first.base_offset != next_offset
                && i > 0
            {
                return Err(BrokerError::Corrupt {
                    path,
                    byte: 0,
                    why: format!(
                        "segment starts at offset {} but the previous one ends at {next_offset}",
                        first.base_offset
                    ),
                });
            }
            if let Some(last_frame) = scan.frames.last() {
                next_offset = last_frame.base_offset + u64::from(last_frame.records);
            } else {
                next_offset = next_offset.max(*base);
            }
            for (producer, position) in scan.checkpoints {
                positions.insert(producer, position);
            }
            let reader = File::open(&path).map_err(io("cannot open log segment", &path))?;
            let closed_at = if last {
                None
            } else {
                // Its last write; failing that, now (keeping it longer).
                Some(
                    reader
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or_else(|_| SystemTime::now()),
                )
            };
            segments.push(Segment {
                base_offset: *base,
                path,
                reader: Arc::new(reader),
                frames: scan.frames,
                len: scan.valid_len,
                closed_at,
            });
        }
        let active = segments.last().expect("at least one segment");
        let writer = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(io("cannot open log segment for appending", &active.path))?;
        let active_len = writer
            .metadata()
            .map_err(io("cannot stat log segment", &active.path))?
            .len();
        Ok(Partition {
            dir,
            segments,
            writer,
            active_len,
            next_offset,
            dirty: false,
            failed: None,
        })
    }

    fn append(
        &mut self,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
        config: &LogConfig,
    ) -> Result<u64, BrokerError> {
        if let Some(why) = &self.failed {
            return Err(BrokerError::Io {
                what: "refusing to append after an earlier failure in",
                path: self.dir.clone(),
                source: std::io::Error::other(why.clone()),
            });
        }
        if self.active_len >= config.segment_bytes {
            self.roll()?;
        }
        let base = self.next_offset;
        let (producer, position) = checkpoint.map_or(("", &[][..]), |c| (c.producer, c.position));
        let head = segment::encode_head(base, records, producer, position, batch);
        let frame_len = head.len() + batch.len();
        if let Err(e) = segment::write_frame(&mut self.writer, &head, batch) {
            // Leave no partial frame behind: a full disk must not tear the log.
            self.cut_back();
            return Err(io("cannot append to", self.active_path())(e));
        }
        if config.fsync == FsyncPolicy::Always {
            if let Err(e) = self.writer.sync_data() {
                // The frame is in the file but not acknowledged; appending
                // after it would give two frames one offset. Cut it off.
                self.cut_back();
                return Err(io("cannot sync", self.active_path())(e));
            }
        } else {
            self.dirty = true;
        }
        let seg = self.segments.last_mut().expect("at least one segment");
        seg.frames.push(FrameMeta {
            base_offset: base,
            records,
            file_pos: self.active_len,
            len: frame_len as u32,
        });
        self.active_len += frame_len as u64;
        self.next_offset += u64::from(records);
        Ok(base)
    }

    /// The segment appends go to.
    fn active_path(&self) -> &Path {
        &self.segments.last().expect("at least one segment").path
    }

    /// Cuts the active segment back to what the index holds, after a write
    /// that failed part-way; if even that fails, the partition refuses
    /// appends until the log is reopened (which recovers from the file).
    fn cut_back(&mut self) {
        if let Err(cut) = self.writer.set_len(self.active_len) {
            self.failed = Some(format!("a partial frame could not be cut off: {cut}"));
        }
    }

    fn roll(&mut self) -> Result<(), BrokerError> {
        self.writer
            .sync_data()
            .map_err(io("cannot sync", self.active_path()))?;
        let path = self.dir.join(segment_name(self.next_offset));
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("cannot create log segment", &path))?;
        sync_dir(&self.dir);
        let reader = File::open(&path).map_err(io("cannot open log segment", &path))?;
        let closed = self.segments.last_mut().expect("at least one segment");
        closed.len = self.active_len;
        closed.closed_at = Some(SystemTime::now());
        self.segments.push(Segment {
            base_offset: self.next_offset,
            path,
            reader: Arc::new(reader),
            frames: Vec::new(),
            len: 0,
            closed_at: None,
        });
        self.writer = writer;
        self.active_len = 0;
        self.dirty = false;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), BrokerError> {
        if self.dirty {
            self.writer
                .sync_data()
                .map_err(io("cannot sync", self.active_path()))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The offset of the oldest record kept.
    fn start_offset(&self) -> u64 {
        self.segments[0].base_offset
    }

    fn segment_len(&self, i: usize) -> u64 {
        if i + 1 == self.segments.len() {
            self.active_len
        } else {
            self.segments[i].len
        }
    }

    /// Bytes held from `offset` to the end.
    fn bytes_from(&self, offset: u64) -> u64 {
        let si = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let mut total = 0;
        for (i, seg) in self.segments.iter().enumerate().skip(si) {
            let len = self.segment_len(i);
            let fi = seg
                .frames
                .partition_point(|f| f.base_offset + u64::from(f.records) <= offset);
            total += len - seg.frames.get(fi).map_or(len, |f| f.file_pos);
        }
        total
    }

    /// How many of the oldest segments retention removes: closed segments
    /// below `committed` (the lowest offset a consumer group still needs),
    /// while the partition is over `retention_bytes` or the segment is older
    /// than `retention_age`.
    fn expired(&self, committed: u64, policy: &TopicPolicy, now: SystemTime) -> usize {
        let mut size: u64 = (0..self.segments.len()).map(|i| self.segment_len(i)).sum();
        let mut n = 0;
        while n + 1 < self.segments.len() && self.segments[n + 1].base_offset <= committed {
            let seg = &self.segments[n];
            let too_big = policy.retention_bytes.is_some_and(|max| size > max);
            let too_old = policy.retention_age.is_some_and(|age| {
                seg.closed_at
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|d| d > age)
            });
            if !too_big && !too_old {
                break;
            }
            size -= seg.len;
            n += 1;
        }
        n
    }

    /// Frames to read for `offset`, up to about `max_bytes`.
    fn locate(&self, offset: u64, max_bytes: u64) -> Vec<(Arc<File>, PathBuf, FrameMeta)> {
        let mut out = Vec::new();
        if offset >= self.next_offset {
            return out;
        }
        let si = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let mut bytes = 0u64;
        for seg in &self.segments[si..] {
            let fi = seg
                .frames
                .partition_point(|f| f.base_offset + u64::from(f.records) <= offset);
            for f in &seg.frames[fi..] {
                if !out.is_empty() && bytes + u64::from(f.len) > max_bytes {
                    return out;
                }
                bytes += u64::from(f.len);
                out.push((seg.reader.clone(), seg.path.clone(), *f));
            }
        }
        out
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
        });
        start_housekeeper(Arc::downgrade(&inner));
        Ok(EmbeddedLog { inner })
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Durable state for one connector's plugin, bounded by `quota`.
    pub fn connector_state(
        &self,
        connector: &str,
        quota: StateQuota,
    ) -> Result<ConnectorState, BrokerError> {
        ConnectorState::open(&self.inner.dir.join("state"), connector, quota)
    }

    /// Forgets a deleted connector: its group's committed offsets and
    /// subscription, and its plugin's durable state. Source positions stay
    /// in the log's frames, keyed by the connector's name: a connector
    /// created again under the same name resumes where the old one was.
    pub fn forget_connector(&self, connector: &str) -> Result<(), BrokerError> {
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
    pub fn sync_all(&self) -> Result<(), BrokerError> {
        sync_all(&self.inner)
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

/// How often retention is checked.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// Until the log is dropped: syncs dirty partitions every fsync interval
/// (under [`FsyncPolicy::Interval`]) and applies retention every second.
fn start_housekeeper(inner: Weak<Inner>) {
    let spawned = std::thread::Builder::new()
        .name("sluice-log".into())
        .spawn(move || {
            let (tick, sync_every) = {
                let Some(inner) = inner.upgrade() else { return };
                match inner.config.fsync {
                    FsyncPolicy::Interval => (
                        inner.config.fsync_interval.min(RETENTION_EVERY),
                        Some(inner.config.fsync_interval),
                    ),
                    _ => (RETENTION_EVERY, None),
                }
            };
            let (mut last_retention, mut last_sync) = (Instant::now(), Instant::now());
            loop {
                std::thread::sleep(tick);
                let Some(inner) = inner.upgrade() else { return };
                if let Some(every) = sync_every
                    && last_sync.elapsed() >= every
                {
                    last_sync = Instant::now();
                    background(&inner, "syncing", sync_all(&inner));
                }
                if last_retention.elapsed() >= RETENTION_EVERY {
                    last_retention = Instant::now();
                    background(&inner, "applying retention to", enforce_retention(&inner));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(
            error = %e,
            "cannot start the log's housekeeping thread; syncing only at shutdown, and no retention"
        );
    }
}

/// Reports a failure of the housekeeping thread: a full disk through
/// [`space`] (said once), anything else as an error. Its successes prove
/// nothing about space (a sync may have had nothing to write).
fn background(inner: &Inner, doing: &str, result: Result<(), BrokerError>) {
    match result {
        Err(e) if e.is_disk_full() => {
            let _ = space(inner, 0, Err::<(), _>(e));
        }
        Err(e) => tracing::error!(error = %e, "{doing} the log in the background failed"),
        Ok(()) => {}
    }
}

/// Removes the segments retention allows: see [`Partition::expired`].
///
/// First it finds them; then it stores the source positions of the whole
/// log (synced first, so that no stored position is ahead of the records on
/// disk), because some are carried only by frames about to go; only then
/// does it take the segments out of the index and delete their files. If
/// the positions cannot be stored (a full disk), nothing is removed.
/// Readers that already hold a removed file finish reading it.
fn enforce_retention(inner: &Inner) -> Result<(), BrokerError> {
    let topics: Vec<(String, Arc<Topic>)> = inner
        .topics
        .read()
        .expect("topic map lock")
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let now = SystemTime::now();
    // (topic, partition, the base offset of the first segment kept)
    let mut plan = Vec::new();
    for (name, topic) in &topics {
        for (i, p) in topic.partitions.iter().enumerate() {
            let committed = lowest_committed(inner, name, i as u32).map_or(u64::MAX, |(o, _)| o);
            let p = p.lock().expect("partition lock");
            let n = p.expired(committed, &topic.policy, now);
            if n > 0 {
                plan.push((topic.clone(), name, i, p.segments[n].base_offset));
            }
        }
    }
    if plan.is_empty() {
        return Ok(());
    }
    let positions = inner.positions.lock().expect("positions lock").clone();
    sync_all(inner)?;
    state::store_positions(&inner.dir.join(POSITIONS_FILE), &positions)?;
    for (topic, name, i, keep_from) in plan {
        let removed: Vec<Segment> = {
            let mut p = topic.partitions[i].lock().expect("partition lock");
            let n = p.segments.partition_point(|s| s.base_offset < keep_from);
            p.segments.drain(..n).collect()
        };
        tracing::info!(
            topic = %name,
            partition = i,
            segments = removed.len(),
            bytes = removed.iter().map(|s| s.len).sum::<u64>(),
            below_offset = keep_from,
            "retention removed segments that every consumer group has committed"
        );
        for seg in removed {
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(
                    segment = %seg.path.display(),
                    error = %e,
                    "cannot delete a segment retention removed"
                );
            }
        }
    }
    Ok(())
}

/// The lowest offset committed in a partition by a group subscribed in this
/// run (see [`Broker::subscribe`]); with `holding`, only by a group that
/// still holds its sources back (see [`Broker::release`]).
fn lowest_committed_by(
    inner: &Inner,
    topic: &str,
    partition: u32,
    holding: bool,
) -> Option<(u64, String)> {
    let key = format!("{topic}/{partition}");
    let subscribed = inner.subscribed.lock().expect("subscriptions lock");
    let groups = inner.groups.lock().expect("groups lock");
    groups
        .iter()
        .filter(|(g, _)| subscribed.get(*g).is_some_and(|holds| *holds || !holding))
        .filter_map(|(g, offsets)| Some((*offsets.get(&key)?, g)))
        .min()
        .map(|(offset, g)| (offset, g.clone()))
}

/// The lowest offset committed in a partition by a group subscribed in this
/// run: retention keeps everything from there.
fn lowest_committed(inner: &Inner, topic: &str, partition: u32) -> Option<(u64, String)> {
    lowest_committed_by(inner, topic, partition, false)
}

/// Passes `result` of a write of `bytes` through, saying once when writes
/// start failing for want of space, and once when they succeed again. Only
/// a write at least as large as one that failed counts as space being back:
/// a small commit may fit where a batch does not.
fn space<T>(inner: &Inner, bytes: u64, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
    match &result {
        Err(e) if e.is_disk_full() => {
            let mut full = inner.full.lock().expect("disk-full lock");
            match &mut *full {
                Some(f) => f.needed = f.needed.max(bytes),
                None => {
                    *full = Some(Full {
                        since: Instant::now(),
                        needed: bytes,
                    });
                    inner.full_flag.store(true, Ordering::Relaxed);
                    tracing::error!(
                        data_dir = %inner.dir.display(),
                        error = %e,
                        "the disk is full: the log refuses writes, so sources wait and sinks hold \
                         their commits; nothing is dropped. Free space and the flow resumes by itself"
                    );
                }
            }
        }
        Ok(_) if inner.full_flag.load(Ordering::Relaxed) => {
            let mut full = inner.full.lock().expect("disk-full lock");
            if let Some(f) = full.take_if(|f| bytes >= f.needed) {
                inner.full_flag.store(false, Ordering::Relaxed);
                tracing::info!(
                    data_dir = %inner.dir.display(),
                    "disk space is back: writes resumed after {:.1}s",
                    f.since.elapsed().as_secs_f64()
                );
            }
        }
        _ => {}
    }
    result
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = sync_all(self) {
            tracing::error!(error = %e, "final sync of the log failed");
        }
    }
}

impl Broker for EmbeddedLog {
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

    fn source_position(&self, producer: &str) -> Option<Vec<u8>> {
        self.inner
            .positions
            .lock()
            .expect("positions lock")
            .get(producer)
            .cloned()
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_batch::BatchWriter;

    /// One partition, kept forever, a backlog no test reaches.
    const KEEP_ALL: TopicPolicy = TopicPolicy {
        partitions: 1,
        retention_bytes: None,
        retention_age: None,
        max_backlog: 1 << 30,
    };

    fn config() -> LogConfig {
        policy_config(KEEP_ALL)
    }

    fn policy_config(policy: TopicPolicy) -> LogConfig {
        LogConfig {
            fsync: FsyncPolicy::Never,
            fsync_interval: Duration::from_millis(100),
            segment_bytes: 4096,
            default_policy: policy,
            policies: BTreeMap::new(),
        }
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("topics/t/0"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
            .count()
    }

    fn batch(from: u32, n: u32) -> Vec<u8> {
        let mut w = BatchWriter::new();
        for i in from..from + n {
            w.push_value(format!("value-{i:05}").as_bytes());
        }
        w.finish()
    }

    fn values(batches: &[StoredBatch]) -> Vec<String> {
        batches
            .iter()
            .flat_map(|b| {
                Batch::parse(&b.bytes)
                    .unwrap()
                    .iter()
                    .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    async fn fill(log: &EmbeddedLog, batches: u32) {
        log.ensure_topic("t").unwrap();
        for i in 0..batches {
            let pos = (i + 1).to_le_bytes();
            let cp = SourceCheckpoint {
                producer: "src/0",
                position: &pos,
            };
            let base = log
                .append("t", 0, &batch(i * 10, 10), 10, Some(cp))
                .await
                .unwrap();
            assert_eq!(base, u64::from(i) * 10);
        }
    }

    /// Writes `batches` batches into one segment and returns its path.
    async fn one_segment_log(dir: &Path, batches: u32) -> PathBuf {
        let one_segment = LogConfig {
            segment_bytes: 1 << 30,
            ..config()
        };
        let log = EmbeddedLog::open(dir, one_segment).unwrap();
        fill(&log, batches).await;
        dir.join("topics/t/0").join(segment_name(0))
    }

    #[tokio::test]
    async fn appends_survive_reopen_with_positions_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), config()).unwrap();
            fill(&log, 50).await;
        }
        let segments = std::fs::read_dir(dir.path().join("topics/t/0"))
            .unwrap()
            .count();
        assert!(segments > 1, "a 4 KiB segment limit must roll: {segments}");
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.end_offset("t", 0).unwrap(), 500);
        assert_eq!(log.source_position("src/0").unwrap(), 50u32.to_le_bytes());
        // Reading from the middle of a batch starts at exactly that record.
        let got = log.read("t", 0, 123, 1 << 20).await.unwrap();
        let v = values(&got);
        assert_eq!(v.len(), 500 - 123);
        assert_eq!(v[0], "value-00123");
        assert_eq!(v.last().unwrap(), "value-00499");
    }

    #[tokio::test]
    async fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let seg = one_segment_log(dir.path(), 3).await;
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 7).unwrap(); // a crash in the middle of the last frame
        drop(f);
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.end_offset("t", 0).unwrap(), 20);
        assert_eq!(log.source_position("src/0").unwrap(), 2u32.to_le_bytes());
        let base = log.append("t", 0, &batch(20, 10), 10, None).await.unwrap();
        assert_eq!(base, 20);
        let v = values(&log.read("t", 0, 0, 1 << 20).await.unwrap());
        assert_eq!(v.len(), 30);
    }

    #[tokio::test]
    async fn a_half_written_header_and_zeros_after_a_power_loss_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let seg = one_segment_log(dir.path(), 2).await;
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.extend_from_slice(b"SL");
        bytes.extend_from_slice(&[0u8; 5000]);
        std::fs::write(&seg, bytes).unwrap();
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.end_offset("t", 0).unwrap(), 20);
    }

    #[tokio::test]
    async fn a_flipped_byte_mid_segment_is_refused_with_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let seg = one_segment_log(dir.path(), 3).await;
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[40] ^= 0xff; // inside the first frame's body
        std::fs::write(&seg, bytes).unwrap();
        let err = EmbeddedLog::open(dir.path(), config())
            .unwrap_err()
            .to_string();
        assert!(err.contains("00000000000000000000.log"), "{err}");
        assert!(err.contains("at byte 0"), "{err}");
        assert!(err.contains("checksum mismatch"), "{err}");
    }

    #[tokio::test]
    async fn retention_removes_only_what_every_group_committed_and_keeps_positions() {
        let dir = tempfile::tempdir().unwrap();
        let small = policy_config(TopicPolicy {
            retention_bytes: Some(8192),
            ..KEEP_ALL
        });
        {
            let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
            log.ensure_topic("t").unwrap();
            log.subscribe("slow", "t").unwrap();
            log.subscribe("fast", "t").unwrap();
            assert_eq!(log.committed_offset("slow", "t", 0), Some(0));
            fill(&log, 50).await;
            let before = segment_files(dir.path());
            assert!(before > 3, "{before}");
            // Over its size, but `slow` has committed nothing: all kept.
            log.commit_offsets("fast", &[("t".into(), 0, 500)])
                .await
                .unwrap();
            enforce_retention(&log.inner).unwrap();
            assert_eq!(segment_files(dir.path()), before);
            assert_eq!(log.start_offset("t", 0).unwrap(), 0);
            // Once both have committed it all, it shrinks to its size.
            log.commit_offsets("slow", &[("t".into(), 0, 500)])
                .await
                .unwrap();
            enforce_retention(&log.inner).unwrap();
            let after = segment_files(dir.path());
            assert!(after < before && after <= 3, "{before} -> {after}");
            let start = log.start_offset("t", 0).unwrap();
            assert!(start > 0);
            // A reader from below the start gets what is kept.
            let got = log.read("t", 0, 0, 1 << 20).await.unwrap();
            assert_eq!(got[0].first_offset, start);
            assert_eq!(values(&got).last().unwrap(), "value-00499");
        }
        // The source position survives though its frames are gone: a
        // source that wrote only the removed segments still resumes.
        {
            let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
            log.ensure_topic("u").unwrap();
            let cp = SourceCheckpoint {
                producer: "other/0",
                position: b"p1",
            };
            log.append("u", 0, &batch(0, 10), 10, Some(cp))
                .await
                .unwrap();
        }
        let log = EmbeddedLog::open(dir.path(), small).unwrap();
        assert_eq!(log.source_position("src/0").unwrap(), 50u32.to_le_bytes());
        assert_eq!(log.source_position("other/0").unwrap(), b"p1");
        assert!(log.start_offset("t", 0).unwrap() > 0);
        assert_eq!(log.end_offset("t", 0).unwrap(), 500);
    }

    #[tokio::test]
    async fn retention_removes_nothing_when_it_cannot_store_the_positions() {
        let dir = tempfile::tempdir().unwrap();
        let small = policy_config(TopicPolicy {
            retention_bytes: Some(8192),
            ..KEEP_ALL
        });
        let log = EmbeddedLog::open(dir.path(), small).unwrap();
        fill(&log, 50).await;
        let before = segment_files(dir.path());
        // A folder where the file goes: the rename onto it fails.
        std::fs::create_dir(dir.path().join(POSITIONS_FILE)).unwrap();
        let err = enforce_retention(&log.inner).unwrap_err().to_string();
        assert!(err.contains("positions.json"), "{err}");
        assert_eq!(segment_files(dir.path()), before);
        assert_eq!(log.start_offset("t", 0).unwrap(), 0);
        std::fs::remove_dir(dir.path().join(POSITIONS_FILE)).unwrap();
        enforce_retention(&log.inner).unwrap();
        assert!(segment_files(dir.path()) < before);
    }

    #[tokio::test]
    async fn retention_by_age_removes_old_committed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let aged = policy_config(TopicPolicy {
            retention_age: Some(Duration::from_secs(2)),
            ..KEEP_ALL
        });
        let log = EmbeddedLog::open(dir.path(), aged).unwrap();
        fill(&log, 50).await;
        let before = segment_files(dir.path());
        enforce_retention(&log.inner).unwrap();
        assert_eq!(segment_files(dir.path()), before, "too young");
        std::thread::sleep(Duration::from_millis(2100));
        enforce_retention(&log.inner).unwrap();
        assert_eq!(
            segment_files(dir.path()),
            1,
            "only the active segment stays"
        );
        assert_eq!(log.end_offset("t", 0).unwrap(), 500);
    }

    #[tokio::test]
    async fn backlog_is_the_slowest_group_and_full_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let log = EmbeddedLog::open(
            dir.path(),
            policy_config(TopicPolicy {
                max_backlog: 2000,
                ..KEEP_ALL
            }),
        )
        .unwrap();
        log.ensure_topic("t").unwrap();
        assert_eq!(
            log.backlog("t", 0).unwrap(),
            None,
            "no consumer, no backlog"
        );
        log.subscribe("g", "t").unwrap();
        fill(&log, 50).await;
        let b = log.backlog("t", 0).unwrap().unwrap();
        assert_eq!((b.group.as_str(), b.records), ("g", 500));
        let total: u64 = std::fs::read_dir(dir.path().join("topics/t/0"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert_eq!(b.bytes, total);
        assert!(b.is_full());
        log.commit_offsets("g", &[("t".into(), 0, 495)])
            .await
            .unwrap();
        let b = log.backlog("t", 0).unwrap().unwrap();
        assert_eq!(b.records, 5);
        assert!(b.bytes > 0 && !b.is_full(), "{b:?}");
        // A sink that failed for good no longer holds its sources back.
        log.subscribe("stuck", "t").unwrap();
        assert!(log.backlog("t", 0).unwrap().unwrap().is_full());
        log.release("stuck");
        assert_eq!(log.backlog("t", 0).unwrap().unwrap().group, "g");
        drop(log);
        // Nor does a group of an earlier run that this run did not
        // subscribe (a sink since removed from the manifest).
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.committed_offset("stuck", "t", 0), Some(0));
        assert_eq!(log.backlog("t", 0).unwrap(), None);
    }

    #[tokio::test]
    async fn group_offsets_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = EmbeddedLog::open(dir.path(), config()).unwrap();
            log.ensure_topic("t").unwrap();
            log.commit_offsets("g", &[("t".into(), 0, 42)])
                .await
                .unwrap();
        }
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        assert_eq!(log.committed_offset("g", "t", 0), Some(42));
        assert_eq!(log.committed_offset("g", "t", 1), None);
    }
}
