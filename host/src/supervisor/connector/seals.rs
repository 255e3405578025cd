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
pub struct Seals {
    topics: HashMap<String, Arc<Writers>>,
    /// The topics each connector writes, by name.
    by_connector: HashMap<String, Vec<Arc<Writers>>>,
}

impl Seals {
    /// Seals for the topics `connectors` write: a source's topic, a
    /// transform's output, a sink's or transform's dead-letter topic, and
    /// each topic read in the run that a template could name.
    pub fn for_writers(connectors: &[CheckedConnector]) -> Self {
        let read: Vec<String> = connectors
            .iter()
            .filter(|c| c.config.reads_topics())
            .flat_map(|c| c.config.topic_names())
            .collect();
        let mut written: HashMap<String, Vec<&CheckedConnector>> = HashMap::new();
        for c in connectors {
            for topic in written_topics(&c.config, &read) {
                written.entry(topic).or_default().push(c);
            }
        }
        let mut seals = Seals::default();
        for (topic, writers) in written {
            let (sealer, seal) = TopicSeal::new();
            let n = writers
                .iter()
                .map(|c| *c.config.parallelism.get_ref())
                .sum();
            let w = Arc::new(Writers {
                sealer,
                seal,
                left: AtomicU32::new(n),
            });
            for c in writers {
                seals
                    .by_connector
                    .entry(c.config.name.get_ref().clone())
                    .or_default()
                    .push(w.clone());
            }
            seals.topics.insert(topic, w);
        }
        seals
    }

    /// The writers of the topics `c` writes, each told when an instance of
    /// `c` has ended.
    pub(super) fn written_by(&self, c: &ConnectorConfig) -> Vec<Arc<Writers>> {
        self.by_connector
            .get(c.name.get_ref())
            .cloned()
            .unwrap_or_default()
    }

    /// What a sink of `topic` watches.
    pub(super) fn seal(&self, topic: &str) -> TopicSeal {
        self.topics
            .get(topic)
            .map_or_else(TopicSeal::never, |w| w.seal.clone())
    }
}

/// The topics a connector's instances write: a source's topic or a
/// transform's output (for a template, those of `read` it matches), and
/// its dead-letter topic if it has one.
fn written_topics(c: &ConnectorConfig, read: &[String]) -> Vec<String> {
    let matching = |template: &crate::manifest::TopicTemplate| {
        let mut topics: Vec<String> = read
            .iter()
            .filter(|t| template.matches(t))
            .cloned()
            .collect();
        topics.sort();
        topics.dedup();
        topics
    };
    match (c.kind, &c.route) {
        (ConnectorKind::Source, route) => {
            let mut topics = match route {
                Some(template) => matching(template),
                None => c.topic_names(),
            };
            // A chain's refused records.
            topics.extend(c.has_dead_letters().then(|| c.dead_letter_topic()));
            topics
        }
        (ConnectorKind::Sink, _) => vec![c.dead_letter_topic()],
        (ConnectorKind::Transform, Some(template)) => {
            let mut topics = matching(template);
            topics.push(c.dead_letter_topic());
            topics
        }
        (ConnectorKind::Transform, None) => c
            .output_topic()
            .into_iter()
            .chain([c.dead_letter_topic()])
            .collect(),
    }
}

/// Creates the topics a connector writes (source, a transform's output) or
/// reads (sink, transform), and subscribes a sink or transform to those it
/// reads; returns the topics of [`ConnectorConfig::topic_names`], each with
/// its partitions.
pub fn topic_layout(
    broker: &impl Broker,
    c: &ConnectorConfig,
) -> anyhow::Result<Vec<(String, u32)>> {
    let name = c.name.get_ref();
    if let Some(output) = c.output_topic() {
        broker
            .ensure_topic(&output)
            .with_context(|| format!("creating topic {output:?}"))?;
    }
    c.topic_names()
        .into_iter()
        .map(|topic| {
            let partitions = broker
                .ensure_topic(&topic)
                .with_context(|| format!("creating topic {topic:?}"))?;
            if c.reads_topics() {
                broker
                    .subscribe(name, &topic)
                    .with_context(|| format!("subscribing {name} to topic {topic:?}"))?;
            }
            Ok((topic, partitions))
        })
        .collect()
}
