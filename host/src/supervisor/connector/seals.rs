//! The topics a connector writes and reads, and the seals of a bounded run:
//! a topic is sealed once every instance writing it has ended, so a sink
//! that has read a sealed topic to its end knows it is done.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context as _;

use crate::broker::Broker;
use crate::check::CheckedConnector;
use crate::manifest::{ConnectorConfig, ConnectorKind};
use crate::pump::{TopicSeal, TopicSealer};

/// The instances writing one topic in a bounded run, and the seal that
/// closes when the last of them has ended.
#[derive(Debug)]
pub(crate) struct Writers {
    sealer: TopicSealer,
    seal: TopicSeal,
    left: AtomicU32,
}

impl Writers {
    /// One writer has ended for good: a source reached its end or failed, a
    /// sink drained its topics or failed. Either way it writes no more.
    pub(super) fn ended(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.sealer.seal();
        }
    }
}

/// The writers of each topic written in a `sluice run`, so that its sinks
/// know when they have drained a bounded pipeline. The daemon has none: its
/// sinks wait for more records until stopped.
#[derive(Debug, Default)]
pub struct Seals(HashMap<String, Arc<Writers>>);

impl Seals {
    /// Seals for the topics `connectors` write.
    pub fn for_writers(connectors: &[CheckedConnector]) -> Self {
        let mut writers: HashMap<String, u32> = HashMap::new();
        for c in connectors {
            *writers.entry(written_topic(&c.config)).or_default() +=
                *c.config.parallelism.get_ref();
        }
        Seals(
            writers
                .into_iter()
                .map(|(topic, n)| {
                    let (sealer, seal) = TopicSeal::new();
                    let left = AtomicU32::new(n);
                    (topic, Arc::new(Writers { sealer, seal, left }))
                })
                .collect(),
        )
    }

    pub(super) fn writers(&self, topic: &str) -> Option<Arc<Writers>> {
        self.0.get(topic).cloned()
    }

    /// What a sink of `topic` watches.
    pub(super) fn seal(&self, topic: &str) -> TopicSeal {
        self.0
            .get(topic)
            .map_or_else(TopicSeal::never, |w| w.seal.clone())
    }
}

/// The topic a connector's instances write: a source's topic, or a sink's
/// dead-letter topic.
pub(super) fn written_topic(c: &ConnectorConfig) -> String {
    match c.kind {
        ConnectorKind::Source => c.topic_names().remove(0),
        ConnectorKind::Sink => c.dead_letter_topic(),
    }
}

/// Creates the topics a connector writes (source) or reads (sink), and
/// subscribes a sink to those it reads; returns each with its partitions.
pub fn topic_layout(
    broker: &impl Broker,
    c: &ConnectorConfig,
) -> anyhow::Result<Vec<(String, u32)>> {
    let name = c.name.get_ref();
    c.topic_names()
        .into_iter()
        .map(|topic| {
            let partitions = broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            if c.kind == ConnectorKind::Sink {
                broker
                    .subscribe(name, &topic)
                    .with_context(|| format!("subscribing {name} to topic {topic:?}"))?;
            }
            Ok((topic, partitions))
        })
        .collect()
}
