//! Retention, and the log's housekeeping thread that applies it: segments
//! go once every consumer group subscribed in this run has committed past
//! them and the topic's `retention_bytes` or `retention_age` allows it. The
//! same thread syncs under `fsync = "interval"`.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use super::partition::Segment;
use super::space::space;
use super::{Inner, POSITIONS_FILE, Topic, state, sync_all};
use crate::broker::BrokerError;
use crate::manifest::FsyncPolicy;

/// How often retention is checked.
const RETENTION_EVERY: Duration = Duration::from_secs(1);

/// Until the log is dropped: syncs dirty partitions every fsync interval
/// (under [`FsyncPolicy::Interval`]) and applies retention every second.
pub(super) fn start_housekeeper(inner: Weak<Inner>) {
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
pub(super) fn enforce_retention(inner: &Inner) -> Result<(), BrokerError> {
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
pub(super) fn lowest_committed_by(
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
