//! The source loop: poll → append (with the position) → commit.
//!
//! A source writes one partition, or, with a topic template
//! (`topic = "{schema}.{table}"`), routes each record to the topic its
//! headers name: the batch is split by topic and appended as one
//! ([`Broker::append_routed`]), so a crash never stores part of it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_batch::{Batch, BatchWriter};

use super::chain::{Chain, Chained};
use super::dead_letter::{Came, DeadLetter, push_dead};
use super::hybrid::HybridPosition;
use super::route::{Part, route};
use super::swap::Swap;
use super::{InstanceControl, PumpStats, Retry, StopSignal, Turns, interruptible, when_space};
use crate::broker::{Broker, RoutedPart, SourceCheckpoint};
use crate::manifest::{RestartPolicy, TopicTemplate};
use crate::plugin::{Polled, SourceInstance};

/// Batching settings of a source pump.
#[derive(Debug, Clone)]
pub struct SourcePumpConfig {
    /// Most records per appended batch.
    pub max_records: u32,
    /// Most encoded bytes per appended batch.
    pub max_bytes: u64,
    /// How long to keep polling for a fuller batch.
    pub linger: Duration,
    /// How `retriable` errors are retried in place.
    pub retry: RestartPolicy,
}

/// How a source pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceEnd {
    /// The source said it has nothing more, ever.
    EndOfStream,
    /// The stop signal came.
    Stopped,
}

/// Where a source's records go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Every record to one partition.
    Partition {
        /// The topic.
        topic: String,
        /// The partition this instance writes.
        partition: u32,
    },
    /// Each record to the topic its headers name, in partition
    /// `instance % partitions` of it (topics are created as records come).
    Routed {
        /// The source's `topic`.
        template: TopicTemplate,
        /// This instance's index.
        instance: u32,
    },
}

impl Destination {
    /// True if it is that one partition. A producer's positions go in the
    /// frames of its one partition, or all through its journal (a routed
    /// append): the log finds the newest of either, never of both.
    pub(super) fn is_partition(&self, topic: &str, partition: u32) -> bool {
        matches!(self, Destination::Partition { topic: t, partition: p } if t == topic && *p == partition)
    }
}

/// Moves one source instance's batches into a topic partition, or routes
/// them over topics.
#[derive(Debug)]
pub struct SourcePump<B> {
    /// The instance.
    pub instance: SourceInstance,
    /// Where batches go.
    pub broker: Arc<B>,
    /// Where its records go.
    pub destination: Destination,
    /// The partitions a routed source has written in this life, by topic.
    pub routes: HashMap<String, u32>,
    /// Buffers of routed parts, kept between batches: fresh ones would be
    /// mapped (and faulted in) again for every batch.
    pub spare: Vec<Vec<u8>>,
    /// `<connector>/<instance>`, the key of its stored position.
    pub producer: String,
    /// Batching.
    pub config: SourcePumpConfig,
    /// Shared counters.
    pub stats: Arc<PumpStats>,
    /// When to stop.
    pub stop: StopSignal,
    /// Pauses and module swaps.
    pub control: Arc<InstanceControl>,
    /// The transforms each batch goes through before it is stored.
    pub chain: Chain,
    /// Where the chain's refused records go (`Some` with a chain).
    pub dead_letter: Option<DeadLetter>,
    /// A hybrid source's phase, hand-over and plugin position, stored
    /// with each batch in the plugin's position's place (`None`: a plain
    /// source, whose own position is stored).
    pub hybrid: Option<HybridPosition>,
}

/// The longest an idle source waits before polling again.
const MAX_IDLE: Duration = Duration::from_millis(50);

/// What one round of polling gathered for one append.
#[derive(Debug, Default)]
struct Filled {
    /// Checked batches, in order.
    parts: Vec<Vec<u8>>,
    records: u32,
    value_bytes: u64,
    /// The last position the source gave.
    position: Option<Vec<u8>>,
    end_of_stream: bool,
    /// Whether polling stopped because the batch was full: the source had
    /// more, so polling it again will not wait.
    full: bool,
}

impl<B: Broker> SourcePump<B> {
    /// Runs until the source ends, the stop signal comes, or something
    /// fails; a hybrid source's position comes back with how it ended.
    ///
    /// While a full batch for one partition is being stored, the source
    /// polls the next one (the broker's acknowledgement is a round trip on
    /// NATS: 1.1 M records/s at 100 B when polling waited for it). Batches are
    /// still stored one at a time and in order, and committed in order,
    /// each after it is stored; a module swap, a pause or a stop waits
    /// until nothing is polled ahead.
    pub async fn run(mut self) -> anyhow::Result<(SourceEnd, Option<HybridPosition>)> {
        let mut idle = Duration::from_millis(1);
        let mut turns = Turns::default();
        let mut warned = None;
        // A batch polled while the one before it was stored, and when its
        // polling began.
        let mut ahead: Option<(Filled, Instant)> = None;
        let end = loop {
            let (filled, took) = match ahead.take() {
                Some(polled) => polled,
                None => {
                    if self.control.wants_attention() {
                        self.attend(Instant::now()).await;
                    }
                    if self.stop.is_stopped() || !self.hold_while_backlogged(&mut warned).await? {
                        break SourceEnd::Stopped;
                    }
                    let took = Instant::now();
                    (self.fill().await?, took)
                }
            };
            if filled.records > 0 {
                // Records and value bytes stored (a chain's output).
                let mut moved = (0, 0);
                let batch = if filled.parts.len() == 1 {
                    filled.parts.into_iter().next().expect("one part")
                } else {
                    let views = filled
                        .parts
                        .iter()
                        .map(|p| Batch::parse(p))
                        .collect::<Result<Vec<_>, _>>()?;
                    sluice_batch::concat(views)?
                };
                let (mut batch, mut records) = (batch, filled.records);
                let chained = !self.chain.is_empty();
                // A chain's output that is not one plain part (dead letters,
                // no records, routed) is stored by `store_parts`; one that is
                // goes the plain way, polling ahead.
                let mut parts = None;
                if chained {
                    let Some((out, dead)) =
                        self.run_chain(batch, records, filled.value_bytes).await?
                    else {
                        break SourceEnd::Stopped;
                    };
                    moved = (out.records, out.value_bytes);
                    let plain = dead.is_empty()
                        && out.records > 0
                        && matches!(self.destination, Destination::Partition { .. });
                    if plain {
                        (batch, records) = (out.batch, out.records);
                    } else {
                        parts = Some((out, dead));
                        batch = Vec::new();
                    }
                }
                // A hybrid source stores its phase and hand-over with the
                // position of the plugin that runs.
                let position = match &mut self.hybrid {
                    Some(h) => {
                        let stored = parts.as_ref().map_or(&batch, |(out, _)| &out.batch);
                        Some(h.after(stored, filled.position.as_deref()))
                    }
                    None => filled.position.clone(),
                };
                let appended = match &self.destination {
                    _ if parts.is_some() => {
                        let (out, dead) = parts.take().expect("checked");
                        self.store_parts(out, dead, position.as_deref()).await?
                    }
                    Destination::Partition { topic, partition } => {
                        let store = Store {
                            broker: self.broker.clone(),
                            stop: self.stop.clone(),
                            topic: topic.clone(),
                            partition: *partition,
                            producer: self.producer.clone(),
                        }
                        .store(batch, records, position);
                        // Only a source that filled its batch: one that had
                        // no more could wait in its next poll (a quiet
                        // socket), and hold this batch's commit back.
                        let poll_ahead = filled.full
                            && !filled.end_of_stream
                            && !self.stop.is_stopped()
                            && !self.control.wants_attention()
                            && self.fullest_backlog()?.is_none();
                        if poll_ahead {
                            let polling = Instant::now();
                            let (appended, polled) = tokio::join!(store, self.fill());
                            // A batch polled ahead of a failed one is not
                            // stored: the source starts again before both.
                            let appended = appended?;
                            ahead = Some((polled?, polling));
                            appended
                        } else {
                            store.await?
                        }
                    }
                    Destination::Routed { template, instance } => {
                        let parts = route(
                            &*self.broker,
                            &mut self.routes,
                            &mut self.spare,
                            template,
                            *instance,
                            batch,
                        )?;
                        let routed: Vec<RoutedPart<'_>> =
                            parts.iter().map(Part::as_routed).collect();
                        let (broker, producer) = (&self.broker, &self.producer);
                        let appended = when_space(&self.stop, || {
                            broker.append_routed(&routed, producer, position.as_deref())
                        })
                        .await?
                        .map(drop);
                        drop(routed);
                        // Kept for the next batch, as many as this one used
                        // (a one-topic batch hands over the polled buffer).
                        let used = parts.len();
                        self.spare.extend(parts.into_iter().map(|p| p.batch));
                        self.spare.truncate(used);
                        appended
                    }
                };
                if appended.is_none() {
                    // Stopped while the disk was full: the batch was never
                    // stored, and its position is not committed, so the
                    // source polls it again when it next starts (with any
                    // batch polled ahead of it).
                    break SourceEnd::Stopped;
                }
                if !chained {
                    moved = (filled.records, filled.value_bytes);
                }
                self.stats.add(u64::from(moved.0), moved.1, took.elapsed());
                if let Some(p) = &filled.position {
                    let mut retry = Retry::new(self.config.retry);
                    loop {
                        let tried = self.instance.commit(p).await;
                        if let Some(()) = retry.settle(tried, "commit", &self.stop).await? {
                            break;
                        }
                    }
                }
                idle = Duration::from_millis(1);
                turns.after_batch().await;
            } else if !filled.end_of_stream {
                // Nothing to send: back off a little, up to MAX_IDLE.
                self.stop.sleep(idle).await;
                idle = (idle * 2).min(MAX_IDLE);
            }
            if filled.end_of_stream {
                break SourceEnd::EndOfStream;
            }
        };
        self.instance.close().await?;
        self.chain.close().await;
        Ok((end, self.hybrid))
    }

    /// Runs a polled batch through the chain: its output, and the records
    /// it refused as dead letters. `None` if stopped first.
    async fn run_chain(
        &mut self,
        batch: Vec<u8>,
        records: u32,
        value_bytes: u64,
    ) -> anyhow::Result<Option<(Chained, BatchWriter)>> {
        let dlq = self
            .dead_letter
            .as_ref()
            .expect("a source with a chain has a dead-letter topic");
        let mut dead = BatchWriter::new();
        let connector = &*dlq.connector;
        let chained = self
            .chain
            .run(
                batch,
                records,
                value_bytes,
                &self.stop,
                self.config.retry,
                |_, step, _, record, reason| {
                    tracing::warn!(
                        connector, transform = step, reason,
                        dead_letter_topic = %dlq.topic, "transform refused a record; dead-lettered"
                    );
                    push_dead(
                        &mut dead,
                        record,
                        reason,
                        connector,
                        Some(step),
                        Came::Polled,
                    );
                },
            )
            .await?;
        Ok(chained.map(|c| (c, dead)))
    }

    /// Stores a chain's output, the records it refused (in the dead-letter
    /// topic) and the position after them as one write. `None` if stopped
    /// while the disk was full (nothing stored).
    async fn store_parts(
        &mut self,
        chained: Chained,
        dead: BatchWriter,
        position: Option<&[u8]>,
    ) -> anyhow::Result<Option<()>> {
        let dlq = self
            .dead_letter
            .as_ref()
            .expect("a source with a chain has a dead-letter topic");
        let (mut parts, instance) = match &self.destination {
            Destination::Partition { topic, partition } => (
                if chained.records == 0 {
                    Vec::new()
                } else {
                    vec![Part {
                        topic: topic.clone(),
                        partition: *partition,
                        batch: chained.batch,
                        records: chained.records,
                    }]
                },
                *partition,
            ),
            Destination::Routed { template, instance } => (
                if chained.records == 0 {
                    Vec::new()
                } else {
                    route(
                        &*self.broker,
                        &mut self.routes,
                        &mut self.spare,
                        template,
                        *instance,
                        chained.batch,
                    )?
                },
                *instance,
            ),
        };
        let dead_count = dead.len() as u32;
        if dead_count > 0 {
            parts.push(Part {
                topic: dlq.topic.clone(),
                partition: instance % dlq.partitions,
                batch: dead.finish(),
                records: dead_count,
            });
        }
        let (broker, producer, stop) = (&self.broker, &self.producer, &self.stop);
        let stored = match parts.as_slice() {
            [] if position.is_none() => Some(()),
            [part] if self.destination.is_partition(&part.topic, part.partition) => {
                let checkpoint = position.map(|position| SourceCheckpoint { producer, position });
                when_space(stop, || {
                    broker.append(
                        &part.topic,
                        part.partition,
                        &part.batch,
                        part.records,
                        checkpoint,
                    )
                })
                .await?
                .map(drop)
            }
            _ => {
                let routed: Vec<RoutedPart<'_>> = parts.iter().map(Part::as_routed).collect();
                when_space(stop, || broker.append_routed(&routed, producer, position))
                    .await?
                    .map(drop)
            }
        };
        if stored.is_none() {
            return Ok(None);
        }
        dlq.stats
            .refused
            .fetch_add(u64::from(dead_count), std::sync::atomic::Ordering::Relaxed);
        Ok(Some(()))
    }

    /// Between batches (everything polled is appended and committed): takes
    /// module swaps, and waits while the connector is paused. A new
    /// instance opens at the position stored with the last batch; if it
    /// does not open, the old one goes on as if nothing happened.
    pub(super) async fn attend(&mut self, mut since: Instant) {
        while let Some(mut swap) = Swap::<SourceInstance>::next(&self.control, &mut since).await {
            let opened = match self.broker.source_position(&self.producer) {
                Ok(resume) => swap.new.open(&swap.config_json, resume.as_deref()).await,
                Err(e) => Err(e.into()),
            };
            swap.finish(&mut self.instance, opened, |()| {}).await;
        }
    }

    /// Polls until the batch is full, the linger time is up, or the source
    /// has nothing more right now.
    async fn fill(&mut self) -> anyhow::Result<Filled> {
        let deadline = Instant::now() + self.config.linger;
        let mut filled = Filled::default();
        let mut bytes = 0u64;
        loop {
            let want = self.config.max_records - filled.records;
            let mut retry = Retry::new(self.config.retry);
            let Polled {
                batch,
                records: n,
                value_bytes,
                position,
                end_of_stream,
            } = loop {
                let interrupt = self.instance.interrupter();
                let poll = self.instance.poll(want);
                let tried = interruptible(poll, &self.stop, Some(&self.control), &interrupt).await;
                // Its wait was ended for a stop, pause or swap: what it
                // gathered stands; an error it returned
                // after that wait (a read that failed) is not its fault. A
                // trap is, interrupted or not.
                let tried = match tried {
                    Ok(polled) if interrupt.is_raised() => break polled,
                    Err(e) if interrupt.is_raised() && e.is_returned() => {
                        tracing::debug!("poll interrupted: {e:#}");
                        break Polled::default();
                    }
                    other => other,
                };
                if let Some(polled) = retry.settle(tried, "poll", &self.stop).await? {
                    break polled;
                }
            };
            if position.is_some() {
                filled.position = position;
            }
            if n > 0 {
                filled.records += n;
                filled.value_bytes += value_bytes;
                bytes += batch.len() as u64;
                filled.parts.push(batch);
            }
            filled.end_of_stream = end_of_stream;
            let full = filled.records >= self.config.max_records || bytes >= self.config.max_bytes;
            // Fewer records than asked for: the source has no more right
            // now, and asking again could wait (a quiet socket) with these
            // records held back from the log.
            if end_of_stream
                || full
                || n < want
                || Instant::now() >= deadline
                || self.stop.is_stopped()
            {
                filled.full = full;
                return Ok(filled);
            }
        }
    }
}

/// Where a source's batch for one partition is stored: owned, so that the
/// source can poll the next batch while this one is stored.
struct Store<B> {
    broker: Arc<B>,
    stop: StopSignal,
    topic: String,
    partition: u32,
    producer: String,
}

impl<B: Broker> Store<B> {
    /// Appends `batch` with the position after it; `None` if stopped
    /// while the disk was full.
    async fn store(
        self,
        batch: Vec<u8>,
        records: u32,
        position: Option<Vec<u8>>,
    ) -> Result<Option<()>, crate::broker::BrokerError> {
        let checkpoint = position.as_deref().map(|position| SourceCheckpoint {
            producer: &self.producer,
            position,
        });
        let broker = &self.broker;
        when_space(&self.stop, || {
            broker.append(&self.topic, self.partition, &batch, records, checkpoint)
        })
        .await
        .map(|appended| appended.map(drop))
    }
}
