//! The sink loop: read from the committed offset → write → flush → commit.
//!
//! Offsets are committed only after the sink's `flush` returns, so a crash
//! repeats at most what was written since the last flush; a sink that
//! stores its own offsets (returned from `open`) resumes from those instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_batch::BatchWriter;

use super::chain::Chain;
use super::dead_letter::{Came, DeadLetter, Origin, push_dead};
use super::swap::Swap;
use super::{
    InstanceControl, PumpStats, Retry, StopSignal, TopicSeal, Turns, interruptible, when_space,
};
use crate::broker::{Broker, StoredBatch};
use crate::manifest::RestartPolicy;
use crate::plugin::instance::Refused;
use crate::plugin::{PluginError, SinkInstance};

/// Settings of a sink pump.
#[derive(Debug, Clone)]
pub struct SinkPumpConfig {
    /// Most bytes read from the broker at once.
    pub max_bytes: u64,
    /// Most records handed to one `write`: consecutive batches of the log
    /// are joined up to this many.
    pub max_records: u32,
    /// Longest time between flushes while records flow.
    pub flush_interval: Duration,
    /// How `retriable` errors are retried in place.
    pub retry: RestartPolicy,
}

/// One partition a sink instance reads.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// The offset of the next record to write.
    pub next: u64,
    /// Whether the topic's sources have all ended.
    pub seal: TopicSeal,
}

/// Feeds one sink instance from its assigned partitions.
#[derive(Debug)]
pub struct SinkPump<B> {
    /// The instance, already opened.
    pub instance: SinkInstance,
    /// Where batches come from.
    pub broker: Arc<B>,
    /// The consumer group whose offsets this pump commits (the connector's name).
    pub group: String,
    /// What it reads, and from where.
    pub assignments: Vec<Assignment>,
    /// Settings.
    pub config: SinkPumpConfig,
    /// Shared counters.
    pub stats: Arc<PumpStats>,
    /// When to stop.
    pub stop: StopSignal,
    /// Pauses and module swaps.
    pub control: Arc<InstanceControl>,
    /// The connector's name, for logs.
    pub connector: Arc<str>,
    /// Where records the sink refuses on their merits go.
    pub dead_letter: DeadLetter,
    /// The transforms each batch goes through before the sink's `write`.
    pub chain: Chain,
}

/// The log's `batches` (consecutive, of one partition) joined into as few
/// as hold at most `max_records` each, so that a sink gets whole writes of
/// the size its connector asks for, whatever size its sources appended:
/// a database sink pays per transaction, whatever its rows.
pub(super) fn join_batches(
    batches: Vec<StoredBatch>,
    max_records: u32,
) -> anyhow::Result<Vec<StoredBatch>> {
    let mut out: Vec<StoredBatch> = Vec::with_capacity(batches.len());
    let mut group: Vec<StoredBatch> = Vec::new();
    let flush = |group: &mut Vec<StoredBatch>, out: &mut Vec<StoredBatch>| -> anyhow::Result<()> {
        match group.len() {
            0 => {}
            1 => out.append(group),
            _ => {
                let parts: Vec<&[u8]> = group.iter().map(|b| b.bytes.as_slice()).collect();
                let bytes = sluice_batch::join(&parts)?;
                out.push(StoredBatch {
                    first_offset: group[0].first_offset,
                    records: group.iter().map(|b| b.records).sum(),
                    value_bytes: group.iter().map(|b| b.value_bytes).sum(),
                    bytes,
                });
                group.clear();
            }
        }
        Ok(())
    };
    for b in batches {
        let fits = group.last().is_some_and(|last| {
            last.next_offset() == b.first_offset
                && group.iter().map(|g| u64::from(g.records)).sum::<u64>() + u64::from(b.records)
                    <= u64::from(max_records)
        });
        if !fits {
            flush(&mut group, &mut out)?;
        }
        group.push(b);
    }
    flush(&mut group, &mut out)?;
    Ok(out)
}

/// How long an idle sink waits for data before checking again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

impl<B: Broker> SinkPump<B> {
    /// Runs until drained (every topic sealed and read to its end), stopped,
    /// or failed. Flushes and commits before returning.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut pending = false;
        let mut last_flush = Instant::now();
        // An idle sink wakes on an append to any topic it reads (a routing
        // source may write any of them), or every IDLE_WAIT.
        let mut wake_topics: Vec<String> =
            self.assignments.iter().map(|a| a.topic.clone()).collect();
        wake_topics.sort();
        wake_topics.dedup();
        let mut turns = Turns::default();
        loop {
            if self.control.wants_attention() {
                self.attend_now(&mut pending, &mut last_flush).await?;
                if self.stop.is_stopped() {
                    break;
                }
            }
            let seen: Vec<u64> = wake_topics
                .iter()
                .map(|t| self.broker.data_version(t))
                .collect();
            let mut progressed = false;
            for i in 0..self.assignments.len() {
                let (topic, partition, next) = {
                    let a = &self.assignments[i];
                    (a.topic.clone(), a.partition, a.next)
                };
                let batches = self
                    .broker
                    .read_as(&self.group, &topic, partition, next, self.config.max_bytes)
                    .await?;
                // A chain's batches are the log's own, never joined: the
                // same on every read, so their dead letters are stored once
                // (see `write_chained`).
                let batches = if self.chain.is_empty() {
                    join_batches(batches, self.config.max_records)?
                } else {
                    batches
                };
                if let Some(first) = batches.first()
                    && first.first_offset > next
                {
                    tracing::warn!(
                        connector = %self.connector,
                        topic, partition,
                        "records {next}..{} were removed by retention before this sink read \
                         them (its group did not hold them); going on from {}",
                        first.first_offset, first.first_offset
                    );
                }
                for b in batches {
                    let took = Instant::now();
                    let next = b.next_offset();
                    let written = if self.chain.is_empty() {
                        self.write_plain(&topic, partition, &b, &mut pending, &mut last_flush)
                            .await?
                    } else {
                        self.write_chained(&topic, partition, &b, &mut pending, &mut last_flush)
                            .await?
                    };
                    let Some(appended) = written else { break };
                    self.dead_letter.unsynced.extend(appended);
                    self.stats
                        .add(u64::from(b.records), b.value_bytes, took.elapsed());
                    self.assignments[i].next = next;
                    pending = true;
                    progressed = true;
                    if self.stop.is_stopped() {
                        break;
                    }
                }
            }
            if self.stop.is_stopped() {
                break;
            }
            if pending && last_flush.elapsed() >= self.config.flush_interval {
                self.flush_and_commit().await?;
                pending = false;
                last_flush = Instant::now();
            }
            if progressed {
                turns.after_batch().await;
                continue;
            }
            if self.drained()? {
                break;
            }
            let wait = self
                .config
                .flush_interval
                .saturating_sub(last_flush.elapsed())
                .clamp(Duration::from_millis(1), IDLE_WAIT);
            let any_data = futures_util::future::select_all(
                wake_topics
                    .iter()
                    .zip(&seen)
                    .map(|(t, seen)| Box::pin(self.broker.wait_for_data(t, *seen, wait))),
            );
            tokio::select! {
                _ = any_data => {}
                () = self.stop.stopped() => {}
                () = self.control.wanted() => {}
            }
        }
        if pending {
            self.flush_and_commit().await?;
        }
        self.instance.close().await?;
        self.chain.close().await;
        Ok(())
    }

    /// Hands `bytes` (`records` records from `first_offset` of `topic`'s
    /// `partition`) to the sink's `write`, retrying `retriable` errors in
    /// place. A write whose wait is ended for a pause or swap is made again
    /// once the pump has attended. `None`: stopped first (not written).
    #[allow(clippy::too_many_arguments)] // one write's origin, and the pump's flush state
    async fn write(
        &mut self,
        (topic, partition, first_offset): (&str, u32, u64),
        bytes: &Vec<u8>,
        records: u32,
        pending: &mut bool,
        last_flush: &mut Instant,
    ) -> anyhow::Result<Option<Vec<Refused>>> {
        let mut retry = Retry::new(self.config.retry);
        loop {
            let interrupt = self.instance.interrupter();
            let write = self
                .instance
                .write(topic, partition, first_offset, bytes, records);
            let tried = interruptible(write, &self.stop, Some(&self.control), &interrupt).await;
            if interrupt.is_raised() && tried.as_ref().is_err_and(PluginError::is_returned) {
                // Its wait (a peer away, a full socket) was ended for a
                // stop, pause or swap: the batch is not written. Stopping,
                // it is left for the next start (its offset is not
                // committed); else it is written again once the pump has
                // attended.
                tracing::debug!(connector = %self.connector, "write interrupted");
                if self.stop.is_stopped() {
                    return Ok(None);
                }
                self.attend_now(pending, last_flush).await?;
                if self.stop.is_stopped() {
                    return Ok(None);
                }
                continue;
            }
            if let Some(refused) = retry.settle(tried, "write", &self.stop).await? {
                return Ok(Some(refused));
            }
        }
    }

    /// Writes batch `b` of `topic`'s `partition` as it is, and
    /// dead-letters what the sink refuses. `None`: stopped first;
    /// `Some(partition)`: the dead-letter partition appended to, if any.
    async fn write_plain(
        &mut self,
        topic: &str,
        partition: u32,
        b: &StoredBatch,
        pending: &mut bool,
        last_flush: &mut Instant,
    ) -> anyhow::Result<Option<Option<u32>>> {
        let origin = (topic, partition, b.first_offset);
        let Some(refused) = self
            .write(origin, &b.bytes, b.records, pending, last_flush)
            .await?
        else {
            return Ok(None);
        };
        if refused.is_empty() {
            return Ok(Some(None));
        }
        let from = Origin {
            topic,
            partition,
            first_offset: b.first_offset,
        };
        let appended = self
            .dead_letter
            .append(&*self.broker, &self.stop, from, &b.bytes, &refused)
            .await?;
        Ok(Some(appended))
    }

    /// Runs batch `b` of `topic`'s `partition` through the chain, writes
    /// what comes out, and dead-letters what the chain and the sink refuse,
    /// all of the batch's dead letters in one append (stored once: after a
    /// crash the same log batch comes again, whole, and its dead letters
    /// are not stored twice). As [`Self::write_plain`] returns.
    ///
    /// A sink's chain may drop, change and refuse records, not add them
    /// (Kafka Connect's transforms are one record in, at most one out): the
    /// sink is handed its `n` records as the offsets `next - n .. next`, so
    /// that the offset a sink stores itself after them is the log's next
    /// one, and its per-record offsets grow from batch to batch.
    async fn write_chained(
        &mut self,
        topic: &str,
        partition: u32,
        b: &StoredBatch,
        pending: &mut bool,
        last_flush: &mut Instant,
    ) -> anyhow::Result<Option<Option<u32>>> {
        let next = b.next_offset();
        let (first, last) = (b.first_offset, next.saturating_sub(1));
        let mut dead = BatchWriter::new();
        let dlq = &self.dead_letter;
        let connector = &*dlq.connector;
        let chained = self
            .chain
            .run(
                b.bytes.clone(),
                b.records,
                b.value_bytes,
                &self.stop,
                self.config.retry,
                |k, step, index, record, reason| {
                    // The first step's input is the log's batch itself.
                    let came = if k == 0 {
                        Came::At {
                            topic,
                            partition,
                            offset: first + index as u64,
                        }
                    } else {
                        Came::Within {
                            topic,
                            partition,
                            first,
                            last,
                        }
                    };
                    tracing::warn!(
                        connector, transform = step, reason, ?came,
                        dead_letter_topic = %dlq.topic, "transform refused a record; dead-lettered"
                    );
                    push_dead(&mut dead, record, reason, connector, Some(step), came);
                },
            )
            .await?;
        let Some(chained) = chained else {
            return Ok(None);
        };
        if chained.records > b.records {
            anyhow::bail!(
                "the chain of sink {connector:?} made {} records of {}: a sink's transforms may \
                 drop, change and refuse records, not add them (add records in a source's chain \
                 or a transform connector)",
                chained.records,
                b.records
            );
        }
        if chained.records > 0 {
            let origin = (topic, partition, next - u64::from(chained.records));
            let Some(refused) = self
                .write(origin, &chained.batch, chained.records, pending, last_flush)
                .await?
            else {
                return Ok(None);
            };
            self.dead_letter
                .refused_records(&mut dead, &chained.batch, &refused, None, |_| {
                    Some(Came::Within {
                        topic,
                        partition,
                        first,
                        last,
                    })
                })?;
        }
        self.dead_letter
            .append_batch(&*self.broker, &self.stop, (topic, partition), next, dead)
            .await
            .map(Some)
    }

    /// A batch boundary where the pump is asked for attention. A pause
    /// drains fully (flush, then commit). A swap needs only what the old
    /// instance wrote made durable (flush): the new one goes on from the
    /// offsets in hand, committed at the next interval as ever, which keeps
    /// the commit's fsyncs out of the swap's pause.
    async fn attend_now(
        &mut self,
        pending: &mut bool,
        last_flush: &mut Instant,
    ) -> anyhow::Result<()> {
        let since = Instant::now();
        if *pending {
            if self.control.is_paused() {
                self.flush_and_commit().await?;
                *pending = false;
                *last_flush = Instant::now();
            } else {
                // A flush a stop cut short commits nothing; the stop is seen next.
                let _flushed = self.flush().await?;
            }
        }
        self.attend(since).await;
        Ok(())
    }

    /// Between batches, with what the old instance wrote flushed: takes
    /// module swaps, and waits while the connector is paused. A new
    /// instance that opens goes on from the offsets in hand (or those it
    /// stored itself, where they are further on); if it does not open, the
    /// old one goes on.
    async fn attend(&mut self, mut since: Instant) {
        while let Some(mut swap) = Swap::<SinkInstance>::next(&self.control, &mut since).await {
            let opened = swap.new.open(&swap.config_json).await;
            let (broker, assignments) = (&self.broker, &mut self.assignments);
            swap.finish(&mut self.instance, opened, |stored| {
                for a in assignments {
                    if let Some(o) = stored
                        .iter()
                        .find(|o| o.topic == a.topic && o.partition == a.partition)
                    {
                        // Everything before `a.next` was just delivered (by
                        // the old module) and flushed. A new module that
                        // stored an older offset itself last ran before that
                        // (a swap back to an earlier module): it must not be
                        // handed those again.
                        let end = broker.end_offset(&a.topic, a.partition).unwrap_or(a.next);
                        a.next = o.next_offset.clamp(a.next, end.max(a.next));
                    }
                }
            })
            .await;
        }
    }

    /// True when every assigned topic is sealed and read to its end.
    fn drained(&self) -> anyhow::Result<bool> {
        for a in &self.assignments {
            // Check the seal first: a seal is set only after the last append.
            if !a.seal.is_sealed() || a.next < self.broker.end_offset(&a.topic, a.partition)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Makes what the instance was given durable (its `flush`). `false`:
    /// stopped while the flush waited (a peer away), so nothing since the
    /// last commit may be committed.
    async fn flush(&mut self) -> anyhow::Result<bool> {
        let mut retry = Retry::new(self.config.retry);
        loop {
            // Only a stop interrupts a flush: a pause or a swap needs it done.
            let interrupt = self.instance.interrupter();
            let flush = self.instance.flush();
            let tried = interruptible(flush, &self.stop, None, &interrupt).await;
            if interrupt.is_raised() && tried.as_ref().is_err_and(PluginError::is_returned) {
                tracing::warn!(
                    connector = %self.connector,
                    "stopped while the sink's flush waited: the offsets since the last commit \
                     are not committed, so those records are delivered again on the next start"
                );
                return Ok(false);
            }
            if let Some(()) = retry.settle(tried, "flush", &self.stop).await? {
                return Ok(true);
            }
        }
    }

    async fn flush_and_commit(&mut self) -> anyhow::Result<()> {
        if !self.flush().await? {
            return Ok(());
        }
        // What was dead-lettered must be on disk before the offsets that
        // skip it are.
        for p in std::mem::take(&mut self.dead_letter.unsynced) {
            let (broker, topic) = (&self.broker, &self.dead_letter.topic);
            if when_space(&self.stop, || async { broker.sync(topic, p) })
                .await?
                .is_none()
            {
                return Ok(());
            }
        }
        let offsets: Vec<(String, u32, u64)> = self
            .assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.next))
            .collect();
        let (broker, group) = (&self.broker, &self.group);
        let committed = when_space(&self.stop, || broker.commit_offsets(group, &offsets)).await?;
        if committed.is_none() {
            tracing::warn!(
                connector = %self.connector,
                "stopped while the disk was full: the offsets since the last commit are not \
                 committed, so those records are delivered again on the next start"
            );
        } else {
            tracing::debug!(connector = %self.connector, ?offsets, "flushed and committed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stored(first_offset: u64, values: &[&str]) -> StoredBatch {
        let mut w = sluice_batch::BatchWriter::new();
        for v in values {
            w.push(sluice_batch::record_ref(None, v.as_bytes(), None, &[]));
        }
        StoredBatch {
            first_offset,
            records: values.len() as u32,
            value_bytes: values.iter().map(|v| v.len() as u64).sum(),
            bytes: w.finish(),
        }
    }

    #[test]
    fn consecutive_batches_are_joined_up_to_max_records() {
        let batches = vec![
            stored(0, &["a", "b"]),
            stored(2, &["c"]),
            stored(3, &["d", "e"]),
            stored(5, &["f"]),
            // A gap: never joined across it.
            stored(9, &["j"]),
        ];
        let joined = join_batches(batches, 3).unwrap();
        let shape: Vec<(u64, u32, u64)> = joined
            .iter()
            .map(|b| (b.first_offset, b.records, b.value_bytes))
            .collect();
        assert_eq!(shape, [(0, 3, 3), (3, 3, 3), (9, 1, 1)]);
        let values: Vec<Vec<u8>> = sluice_batch::Batch::parse(&joined[1].bytes)
            .unwrap()
            .iter()
            .map(|r| r.value.to_vec())
            .collect();
        assert_eq!(values, [b"d".to_vec(), b"e".to_vec(), b"f".to_vec()]);
        // One larger than max_records goes as it is.
        let big = join_batches(vec![stored(0, &["a", "b", "c", "d"])], 3).unwrap();
        assert_eq!(big[0].records, 4);
    }
}
