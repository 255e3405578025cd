//! A source held while its sinks are behind: the backlog check between
//! batches, so that a stalled sink slows its sources instead of filling
//! the disk.

use std::time::{Duration, Instant};

use super::source::{Destination, SourcePump};
use crate::broker::{Backlog, Broker};

/// How often a held source checks the backlog again.
const HOLD_CHECK: Duration = Duration::from_millis(50);

/// A source says it is held at most this often.
const HOLD_WARNING_EVERY: Duration = Duration::from_secs(60);

impl<B: Broker> SourcePump<B> {
    /// Waits while the slowest consumer group of the partition is
    /// `max_backlog` or more behind, so that a stalled sink slows its
    /// sources instead of filling the disk. False if stopped meanwhile.
    /// `warned` is when it last said so.
    pub(super) async fn hold_while_backlogged(
        &mut self,
        warned: &mut Option<Instant>,
    ) -> anyhow::Result<bool> {
        let mut held: Option<Instant> = None;
        loop {
            let Some((topic, partition, b)) = self.fullest_backlog()? else {
                break;
            };
            if held.is_none() {
                held = Some(Instant::now());
                if !warned.is_some_and(|t| t.elapsed() < HOLD_WARNING_EVERY) {
                    *warned = Some(Instant::now());
                    tracing::warn!(
                        topic = %topic,
                        partition,
                        group = %b.group,
                        lag_records = b.records,
                        lag_bytes = b.bytes,
                        "source waits: sink group `{}` is {} records ({}) behind, at the topic's \
                         max_backlog of {}; it goes on as the sink catches up",
                        b.group,
                        b.records,
                        crate::manifest::format_bytes(b.bytes),
                        crate::manifest::format_bytes(b.limit),
                    );
                }
            }
            if self.stop.is_stopped() {
                return Ok(false);
            }
            if self.control.wants_attention() {
                self.attend(Instant::now()).await;
            }
            self.stop.sleep(HOLD_CHECK).await;
        }
        if let Some(since) = held
            && since.elapsed() >= HOLD_CHECK * 20
        {
            tracing::info!(
                producer = %self.producer,
                "source goes on after waiting {:.1}s for its sinks",
                since.elapsed().as_secs_f64()
            );
        }
        Ok(true)
    }

    /// A partition this source writes whose slowest consumer group is at
    /// or past the topic's `max_backlog`, if any.
    pub(super) fn fullest_backlog(&self) -> anyhow::Result<Option<(String, u32, Backlog)>> {
        let full = |topic: &str, partition: u32| -> anyhow::Result<_> {
            Ok(self
                .broker
                .backlog(topic, partition)?
                .filter(Backlog::is_full)
                .map(|b| (topic.to_owned(), partition, b)))
        };
        match &self.destination {
            Destination::Partition { topic, partition } => full(topic, *partition),
            Destination::Routed { .. } => {
                for (topic, partition) in &self.routes {
                    if let Some(f) = full(topic, *partition)? {
                        return Ok(Some(f));
                    }
                }
                Ok(None)
            }
        }
    }
}
