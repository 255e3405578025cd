//! Dead letters: records a plugin refused on their merits (a sink's
//! `write`, a transform's `process`, a step of a chain), each stored in the
//! connector's dead-letter topic with the reason and where it came from in
//! headers ([`dlq_headers`]), never just dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_batch::{Batch, BatchWriter, RecordRef};

use super::{PumpStats, StopSignal, when_space};
use crate::broker::{Broker, SourceCheckpoint};
use crate::plugin::Refused;

/// A connector's dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The topic.
    pub topic: String,
    /// Its partitions.
    pub partitions: u32,
    /// The connector, named in each record's headers.
    pub connector: Arc<str>,
    /// Counts what it takes.
    pub stats: Arc<PumpStats>,
    /// Its partitions appended to since the last commit.
    pub unsynced: std::collections::BTreeSet<u32>,
}

/// Where a batch handed to a sink or a transform came from.
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: u32,
    pub(super) first_offset: u64,
}

/// Header names on a dead-lettered record (besides its own headers).
pub mod dlq_headers {
    /// The plugin's reason.
    pub const ERROR: &str = "sluice.error";
    /// The connector that refused it (or whose chain did).
    pub const CONNECTOR: &str = "sluice.connector";
    /// The transform of the connector's chain that refused it, if one did.
    pub const TRANSFORM: &str = "sluice.transform";
    /// Where it came from.
    pub const TOPIC: &str = "sluice.topic";
    /// See [`TOPIC`].
    pub const PARTITION: &str = "sluice.partition";
    /// See [`TOPIC`].
    pub const OFFSET: &str = "sluice.offset";
    /// Instead of [`OFFSET`], for a record a transform made: `first-last`,
    /// the offsets of the batch it came in.
    pub const OFFSETS: &str = "sluice.offsets";
}

/// Where a dead-lettered record came from, as its headers say.
#[derive(Debug, Clone, Copy)]
pub(super) enum Came<'a> {
    /// The record at `offset` of the log.
    At {
        topic: &'a str,
        partition: u32,
        offset: u64,
    },
    /// A record a transform made of the records from `first` to `last`
    /// (a later step of a sink's chain, or what a sink with a chain was
    /// given): the offsets of the batch it came in.
    Within {
        topic: &'a str,
        partition: u32,
        first: u64,
        last: u64,
    },
    /// A record a source polled, refused by its chain before it reached
    /// the log.
    Polled,
}

/// Writes `record` into `out` as a dead letter: its own key, timestamp,
/// headers and value, and the reason, the connector, the transform that
/// refused it (if one did) and where it came from.
pub(super) fn push_dead(
    out: &mut BatchWriter,
    record: RecordRef<'_>,
    reason: &str,
    connector: &str,
    transform: Option<&str>,
    came: Came<'_>,
) {
    let mut headers: Vec<(&str, &[u8])> = record.headers().collect();
    headers.push((dlq_headers::ERROR, reason.as_bytes()));
    headers.push((dlq_headers::CONNECTOR, connector.as_bytes()));
    if let Some(t) = transform {
        headers.push((dlq_headers::TRANSFORM, t.as_bytes()));
    }
    let (partition, at);
    match came {
        Came::At {
            topic,
            partition: p,
            offset,
        } => {
            (partition, at) = (p.to_string(), offset.to_string());
            headers.push((dlq_headers::TOPIC, topic.as_bytes()));
            headers.push((dlq_headers::PARTITION, partition.as_bytes()));
            headers.push((dlq_headers::OFFSET, at.as_bytes()));
        }
        Came::Within {
            topic,
            partition: p,
            first,
            last,
        } => {
            (partition, at) = (p.to_string(), format!("{first}-{last}"));
            headers.push((dlq_headers::TOPIC, topic.as_bytes()));
            headers.push((dlq_headers::PARTITION, partition.as_bytes()));
            headers.push((dlq_headers::OFFSETS, at.as_bytes()));
        }
        Came::Polled => {}
    }
    out.push_parts(record.key, record.timestamp, &headers, |v| {
        v.extend_from_slice(record.value)
    });
}

impl DeadLetter {
    /// Writes into `out` the records of the batch `bytes` (from `from`)
    /// that `refused` names, each with its reason and origin in headers,
    /// leaving out those whose origin offset is before `skip_before`
    /// (dead-lettered before a crash). Returns the origin offset after the
    /// last one written (0 if none).
    pub(super) fn records(
        &self,
        out: &mut BatchWriter,
        from: Origin<'_>,
        bytes: &[u8],
        refused: &[Refused],
        skip_before: u64,
    ) -> anyhow::Result<u64> {
        let Origin {
            topic,
            partition,
            first_offset,
        } = from;
        let next_origin = std::cell::Cell::new(0);
        self.refused_records(out, bytes, refused, None, |index| {
            let offset = first_offset + index as u64;
            (offset >= skip_before).then(|| {
                next_origin.set(offset + 1);
                Came::At {
                    topic,
                    partition,
                    offset,
                }
            })
        })?;
        Ok(next_origin.get())
    }

    /// Writes into `out` the records of the batch `bytes` that `refused`
    /// names (by index, each once), refused by `transform` if a transform
    /// did, each from where `came` says (`None`: left out).
    pub(super) fn refused_records<'a>(
        &self,
        out: &mut BatchWriter,
        bytes: &[u8],
        refused: &[Refused],
        transform: Option<&str>,
        came: impl Fn(usize) -> Option<Came<'a>>,
    ) -> anyhow::Result<()> {
        let connector = &*self.connector;
        let batch = Batch::parse(bytes)?;
        // By record index, so one pass over the batch finds them all.
        let mut by_index: Vec<&Refused> = refused.iter().collect();
        by_index.sort_by_key(|r| r.index);
        by_index.dedup_by_key(|r| r.index);
        let mut next = by_index.into_iter().peekable();
        for (index, record) in batch.iter().enumerate() {
            let Some(r) = next.next_if(|r| r.index as usize == index) else {
                continue;
            };
            let Some(from) = came(index) else { continue };
            tracing::warn!(
                connector, transform, reason = %r.reason, from = ?from,
                dead_letter_topic = %self.topic, "record refused; dead-lettered"
            );
            push_dead(out, record, &r.reason, connector, transform, from);
        }
        Ok(())
    }

    /// Appends the refused records of a batch to the dead-letter topic,
    /// each with its reason and origin in headers, before the batch's
    /// offsets can be committed: a refused record is never just dropped.
    /// Returns the partition appended to, if any.
    ///
    /// The append carries, as a checkpoint, the origin offset after its last
    /// record, so that a batch refused again after a crash (appended, but
    /// not yet committed) is not dead-lettered twice.
    pub(super) async fn append<B: Broker>(
        &self,
        broker: &B,
        stop: &StopSignal,
        from: Origin<'_>,
        bytes: &[u8],
        refused: &[Refused],
    ) -> anyhow::Result<Option<u32>> {
        let producer = self.producer(from.topic, from.partition);
        let done = stored_origin(broker, &producer)?;
        let mut out = BatchWriter::new();
        let next_origin = self
            .records(&mut out, from, bytes, refused, done)?
            .max(done);
        self.store(broker, stop, &producer, from.partition, out, next_origin)
            .await
    }

    /// Appends `out`, the dead letters of the batch of `topic`'s
    /// `partition` that ends before offset `next` (as
    /// [`DeadLetter::refused_records`] wrote them), unless the dead letters
    /// of a batch ending there or later are already stored (before a
    /// crash: the batch is being delivered again). Returns the partition
    /// appended to, if any.
    pub(super) async fn append_batch<B: Broker>(
        &self,
        broker: &B,
        stop: &StopSignal,
        (topic, partition): (&str, u32),
        next: u64,
        out: BatchWriter,
    ) -> anyhow::Result<Option<u32>> {
        let producer = self.producer(topic, partition);
        if next <= stored_origin(broker, &producer)? {
            return Ok(None);
        }
        self.store(broker, stop, &producer, partition, out, next)
            .await
    }

    /// The producer whose position says how far the dead letters of a
    /// partition are stored.
    fn producer(&self, topic: &str, partition: u32) -> String {
        format!("{}/dlq/{topic}/{partition}", self.connector)
    }

    /// Appends `out` with `next_origin` as `producer`'s position.
    async fn store<B: Broker>(
        &self,
        broker: &B,
        stop: &StopSignal,
        producer: &str,
        partition: u32,
        out: BatchWriter,
        next_origin: u64,
    ) -> anyhow::Result<Option<u32>> {
        let dlq = self;
        let count = out.len() as u32;
        if count == 0 {
            return Ok(None);
        }
        let batch = out.finish();
        let dlq_partition = partition % dlq.partitions;
        let position = next_origin.to_le_bytes();
        let checkpoint = SourceCheckpoint {
            producer,
            position: &position,
        };
        let appended = when_space(stop, || {
            broker.append(&dlq.topic, dlq_partition, &batch, count, Some(checkpoint))
        })
        .await?;
        if appended.is_none() {
            anyhow::bail!(
                "stopped while the disk was full, before {count} refused records reached the \
                 dead-letter topic {}; their batch is delivered again on the next start",
                dlq.topic
            );
        }
        self.stats
            .refused
            .fetch_add(u64::from(count), Ordering::Relaxed);
        Ok(Some(dlq_partition))
    }
}

/// How far the dead letters of `producer` are stored: the origin offset
/// after the last.
fn stored_origin<B: Broker>(broker: &B, producer: &str) -> anyhow::Result<u64> {
    Ok(broker
        .source_position(producer)?
        .and_then(|p| Some(u64::from_le_bytes(p.try_into().ok()?)))
        .unwrap_or(0))
}
