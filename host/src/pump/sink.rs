//! The sink loop: read from the committed offset → write → flush → commit.
//!
//! Offsets are committed only after the sink's `flush` returns, so a crash
//! repeats at most what was written since the last flush; a sink that
//! stores its own offsets (returned from `open`) resumes from those instead.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{PumpStats, StopSignal, TopicSeal};
use crate::broker::Broker;
use crate::plugin::SinkInstance;

/// Settings of a sink pump.
#[derive(Debug, Clone)]
pub struct SinkPumpConfig {
    /// Most bytes read from the broker at once.
    pub max_bytes: u64,
    /// Longest time between flushes while records flow.
    pub flush_interval: Duration,
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
    /// The connector's name, for logs.
    pub connector: Arc<str>,
}

/// How long an idle sink waits for data before checking again.
const IDLE_WAIT: Duration = Duration::from_millis(100);

impl<B: Broker> SinkPump<B> {
    /// Runs until drained (every topic sealed and read to its end), stopped,
    /// or failed. Flushes and commits before returning.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut pending = false;
        let mut last_flush = Instant::now();
        // Sinks wake on appends to their first topic; others are polled
        // every IDLE_WAIT.
        let wake_topic = self.assignments[0].topic.clone();
        loop {
            let seen = self.broker.data_version(&wake_topic);
            let mut progressed = false;
            for i in 0..self.assignments.len() {
                let (topic, partition, next) = {
                    let a = &self.assignments[i];
                    (a.topic.clone(), a.partition, a.next)
                };
                let batches = self
                    .broker
                    .read(&topic, partition, next, self.config.max_bytes)
                    .await?;
                for b in batches {
                    let next = b.next_offset();
                    let refused = self
                        .instance
                        .write(&topic, partition, b.first_offset, b.bytes, b.records)
                        .await?;
                    for r in &refused {
                        tracing::warn!(
                            connector = %self.connector,
                            topic = %topic,
                            partition,
                            offset = b.first_offset + u64::from(r.index),
                            reason = %r.reason,
                            "sink refused a record"
                        );
                    }
                    self.stats
                        .refused
                        .fetch_add(refused.len() as u64, Ordering::Relaxed);
                    self.stats.add(u64::from(b.records), b.value_bytes);
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
            tokio::select! {
                () = self.broker.wait_for_data(&wake_topic, seen, wait) => {}
                () = self.stop.stopped() => {}
            }
        }
        if pending {
            self.flush_and_commit().await?;
        }
        self.instance.close().await?;
        Ok(())
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

    async fn flush_and_commit(&mut self) -> anyhow::Result<()> {
        self.instance.flush().await?;
        let offsets: Vec<(String, u32, u64)> = self
            .assignments
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.next))
            .collect();
        self.broker.commit_offsets(&self.group, &offsets).await?;
        tracing::debug!(connector = %self.connector, ?offsets, "flushed and committed");
        Ok(())
    }
}
