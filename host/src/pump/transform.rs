//! The transform loop: read from the input offsets → `process` → store the
//! output, the refused records and the input offsets after them in one
//! write.
//!
//! A transform connector (`kind = "transform"`, a Pulsar Function) is
//! exactly once through the log. Its input offsets are the position of its
//! producer (`<connector>/<instance>`), stored with each batch of output as
//! a source's position is; where a batch's output and dead letters go to
//! several partitions, the parts are one routed append
//! ([`Broker::append_routed`]), and where a transform drops every record of
//! a batch, the append stores the offsets alone. A crash at any moment
//! leaves a batch's output, dead letters and input offsets all stored, or
//! none of them, and the instance resumes from the offsets stored with its
//! last batch. Its group's committed offsets (the connector's name) follow
//! every `flush_interval_ms`, for lag and retention only.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sluice_batch::BatchWriter;

use super::dead_letter::{DeadLetter, Origin};
use super::route::{Part, route};
use super::sink::join_batches;
use super::source::Destination;
use super::swap::Swap;
use super::{
    Assignment, InstanceControl, PumpStats, Retry, StopSignal, Turns, interruptible, when_space,
};
use crate::broker::{Broker, RoutedPart, SourceCheckpoint, StoredBatch};
use crate::manifest::RestartPolicy;
use crate::plugin::{PluginError, Processed, TransformInstance};

/// Settings of a transform pump.
#[derive(Debug, Clone)]
pub struct TransformPumpConfig {
    /// Most bytes read from the broker at once.
    pub max_bytes: u64,
    /// Most records handed to one `process`.
    pub max_records: u32,
    /// How often the group's offsets are committed (for lag and retention;
    /// the input offsets stored with the output are what it resumes from).
    pub commit_interval: Duration,
    /// How `retriable` errors are retried in place.
    pub retry: RestartPolicy,
}

/// Feeds one transform instance from its assigned partitions, and stores
/// what it makes.
#[derive(Debug)]
pub struct TransformPump<B> {
    /// The instance, already opened.
    pub instance: TransformInstance,
    /// Where batches come from and go.
    pub broker: Arc<B>,
    /// The consumer group whose offsets it commits (the connector's name).
    pub group: String,
    /// `<connector>/<instance>`: the key of its stored input offsets.
    pub producer: String,
    /// What it reads, and from where.
    pub assignments: Vec<Assignment>,
    /// Where its output goes.
    pub output: Destination,
    /// The partitions a routed output has written in this life, by topic.
    pub routes: HashMap<String, u32>,
    /// Settings.
    pub config: TransformPumpConfig,
    /// Shared counters (records: input records processed).
    pub stats: Arc<PumpStats>,
    /// When to stop.
    pub stop: StopSignal,
    /// Pauses and module swaps.
    pub control: Arc<InstanceControl>,
    /// The connector's name, for logs.
    pub connector: Arc<str>,
    /// Where records the transform refuses on their merits go.
    pub dead_letter: DeadLetter,
}

/// How long an idle transform waits for data before checking again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// The version byte of [`encode_offsets`]' layout.
const OFFSETS_V1: u8 = 1;

/// The input offsets of `assignments` as the position stored with a
/// transform's output: a version byte, then per partition its topic (u16
/// length, bytes), partition (u32) and next offset (u64), little-endian.
pub(crate) fn encode_offsets<'a>(
    assignments: impl IntoIterator<Item = (&'a str, u32, u64)>,
) -> Vec<u8> {
    let mut out = vec![OFFSETS_V1];
    for (topic, partition, next) in assignments {
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&partition.to_le_bytes());
        out.extend_from_slice(&next.to_le_bytes());
    }
    out
}

/// Reads back what [`encode_offsets`] wrote: `(topic, partition, next)`.
pub(crate) fn decode_offsets(mut bytes: &[u8]) -> anyhow::Result<Vec<(String, u32, u64)>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> anyhow::Result<&'a [u8]> {
        let (field, rest) = bytes.split_at_checked(n).ok_or_else(|| {
            anyhow::anyhow!("the stored input offsets of a transform are cut short")
        })?;
        *bytes = rest;
        Ok(field)
    }
    if take(&mut bytes, 1)? != [OFFSETS_V1] {
        anyhow::bail!("the stored input offsets of a transform are of an unknown layout");
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into()?) as usize;
        let topic = String::from_utf8(take(&mut bytes, len)?.to_vec())?;
        let partition = u32::from_le_bytes(take(&mut bytes, 4)?.try_into()?);
        let next = u64::from_le_bytes(take(&mut bytes, 8)?.try_into()?);
        out.push((topic, partition, next));
    }
    Ok(out)
}

impl<B: Broker> TransformPump<B> {
    /// Runs until drained (every input topic sealed and read to its end),
    /// stopped, or failed. Commits the group's offsets before returning.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut uncommitted = false;
        let mut last_commit = Instant::now();
        let mut wake_topics: Vec<String> =
            self.assignments.iter().map(|a| a.topic.clone()).collect();
        wake_topics.sort();
        wake_topics.dedup();
        let mut turns = Turns::default();
        loop {
            if self.control.wants_attention() {
                self.attend(Instant::now()).await;
            }
            if self.stop.is_stopped() {
                break;
            }
            let seen: Vec<u64> = wake_topics
                .iter()
                .map(|t| self.broker.data_version(t))
                .collect();
            let mut progressed = false;
            'partitions: for i in 0..self.assignments.len() {
                let (topic, partition, next) = {
                    let a = &self.assignments[i];
                    (a.topic.clone(), a.partition, a.next)
                };
                let batches = self
                    .broker
                    .read_as(&self.group, &topic, partition, next, self.config.max_bytes)
                    .await?;
                let batches = join_batches(batches, self.config.max_records)?;
                if let Some(first) = batches.first()
                    && first.first_offset > next
                {
                    tracing::warn!(
                        connector = %self.connector, topic, partition,
                        "records {next}..{} were removed by retention before this transform \
                         read them; going on from {}",
                        first.first_offset, first.first_offset
                    );
                }
                for b in batches {
                    let took = Instant::now();
                    let Some(processed) = self.process(&b).await? else {
                        break 'partitions;
                    };
                    if !self.store(i, &b, processed).await? {
                        break 'partitions;
                    }
                    self.stats
                        .add(u64::from(b.records), b.value_bytes, took.elapsed());
                    progressed = true;
                    uncommitted = true;
                    if self.stop.is_stopped() || self.control.wants_attention() {
                        break 'partitions;
                    }
                }
            }
            if self.stop.is_stopped() {
                break;
            }
            if uncommitted && last_commit.elapsed() >= self.config.commit_interval {
                uncommitted = !self.commit().await?;
                last_commit = Instant::now();
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
                .commit_interval
                .saturating_sub(last_commit.elapsed())
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
        if uncommitted {
            self.commit().await?;
        }
        self.instance.close().await?;
        Ok(())
    }

    /// Calls `process` on one batch, retrying `retriable` errors in place.
    /// `None`: stopped while the call waited (nothing of the batch is
    /// stored; the next start processes it again).
    async fn process(&mut self, b: &StoredBatch) -> anyhow::Result<Option<Processed>> {
        let mut retry = Retry::new(self.config.retry);
        loop {
            let interrupt = self.instance.interrupter();
            let call = self.instance.process(&b.bytes, b.records);
            let tried = interruptible(call, &self.stop, Some(&self.control), &interrupt).await;
            if interrupt.is_raised() && tried.as_ref().is_err_and(PluginError::is_returned) {
                // Its wait (a lookup) was ended for a stop, pause or swap:
                // the batch goes again once the pump has attended.
                tracing::debug!(connector = %self.connector, "process interrupted");
                if self.stop.is_stopped() {
                    return Ok(None);
                }
                self.attend(Instant::now()).await;
                if self.stop.is_stopped() {
                    return Ok(None);
                }
                continue;
            }
            if let Some(processed) = retry.settle(tried, "process", &self.stop).await? {
                return Ok(Some(processed));
            }
        }
    }

    /// Stores what `process` made of batch `b` of assignment `i`: its
    /// output, its refused records, and the input offsets after `b`, as one
    /// write; then moves the assignment on. False if stopped while the disk
    /// was full (nothing stored).
    async fn store(&mut self, i: usize, b: &StoredBatch, done: Processed) -> anyhow::Result<bool> {
        let Processed {
            batch: output,
            records,
            value_bytes: _,
            refused,
        } = done;
        let next = b.next_offset();
        let position = encode_offsets(self.assignments.iter().enumerate().map(|(j, a)| {
            let next = if j == i { next } else { a.next };
            (a.topic.as_str(), a.partition, next)
        }));
        let mut parts: Vec<Part> = match &self.output {
            _ if records == 0 => Vec::new(),
            Destination::Partition { topic, partition } => vec![Part {
                topic: topic.clone(),
                partition: *partition,
                batch: output,
                records,
            }],
            Destination::Routed { template, instance } => route(
                &*self.broker,
                &mut self.routes,
                &mut Vec::new(),
                template,
                *instance,
                output,
            )?,
        };
        let mut dead = 0;
        if !refused.is_empty() {
            let a = &self.assignments[i];
            let mut w = BatchWriter::new();
            let from = Origin {
                topic: &a.topic,
                partition: a.partition,
                first_offset: b.first_offset,
            };
            self.dead_letter
                .records(&mut w, from, &b.bytes, &refused, 0)?;
            dead = w.len() as u32;
            parts.push(Part {
                topic: self.dead_letter.topic.clone(),
                partition: a.partition % self.dead_letter.partitions,
                batch: w.finish(),
                records: dead,
            });
        }
        let (broker, producer, stop) = (&self.broker, &self.producer, &self.stop);
        let stored = if let [part] = parts.as_slice()
            && self.output.is_partition(&part.topic, part.partition)
        {
            // Its one partition: the position goes in the frame, as a
            // source's.
            let checkpoint = SourceCheckpoint {
                producer,
                position: &position,
            };
            when_space(stop, || {
                broker.append(
                    &part.topic,
                    part.partition,
                    &part.batch,
                    part.records,
                    Some(checkpoint),
                )
            })
            .await?
            .map(drop)
        } else {
            let routed: Vec<RoutedPart<'_>> = parts.iter().map(Part::as_routed).collect();
            when_space(stop, || {
                broker.append_routed(&routed, producer, Some(&position))
            })
            .await?
            .map(drop)
        };
        if stored.is_none() {
            return Ok(false);
        }
        self.assignments[i].next = next;
        self.dead_letter
            .stats
            .refused
            .fetch_add(u64::from(dead), Ordering::Relaxed);
        Ok(true)
    }

    /// Commits the group's offsets (lag and retention). False if stopped
    /// while the disk was full.
    async fn commit(&mut self) -> anyhow::Result<bool> {
        let offsets: Vec<(String, u32, u64)> = self
            .assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.next))
            .collect();
        let (broker, group) = (&self.broker, &self.group);
        let committed = when_space(&self.stop, || broker.commit_offsets(group, &offsets)).await?;
        Ok(committed.is_some())
    }

    /// Between batches (everything processed is stored): takes module
    /// swaps, and waits while the connector is paused. A new instance that
    /// opens goes on from the offsets in hand; if it does not open, the old
    /// one goes on.
    async fn attend(&mut self, mut since: Instant) {
        while let Some(mut swap) = Swap::<TransformInstance>::next(&self.control, &mut since).await
        {
            let opened = swap.new.open(&swap.config_json).await;
            swap.finish(&mut self.instance, opened, |()| {}).await;
        }
    }

    /// True when every assigned topic is sealed and read to its end.
    fn drained(&self) -> anyhow::Result<bool> {
        for a in &self.assignments {
            if !a.seal.is_sealed() || a.next < self.broker.end_offset(&a.topic, a.partition)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn input_offsets_read_back_as_written() {
        let offsets = [("events", 0, 10), ("audit.log", 7, u64::MAX)];
        let bytes = encode_offsets(offsets);
        let back = decode_offsets(&bytes).unwrap();
        let back: Vec<(&str, u32, u64)> =
            back.iter().map(|(t, p, n)| (t.as_str(), *p, *n)).collect();
        assert_eq!(back, offsets);
        assert!(decode_offsets(&[]).is_err());
        assert!(decode_offsets(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_offsets(&[OFFSETS_V1]).unwrap().is_empty());
    }
}
