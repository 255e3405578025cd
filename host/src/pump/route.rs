//! Routing: a batch split by the topic each record's headers name (a
//! source's `topic = "{schema}.{table}"`, a transform's `output`), keeping
//! the records' order within each topic, into parts appended as one.

use std::collections::HashMap;

use sluice_batch::Batch;

use crate::broker::{Broker, RoutedPart};
use crate::manifest::TopicTemplate;

/// The records of a routed batch that go to one partition.
#[derive(Debug)]
pub(super) struct Part {
    pub(super) topic: String,
    pub(super) partition: u32,
    pub(super) batch: Vec<u8>,
    pub(super) records: u32,
}

impl Part {
    /// The part as the broker takes it.
    pub(super) fn as_routed(&self) -> RoutedPart<'_> {
        RoutedPart {
            topic: &self.topic,
            partition: self.partition,
            batch: &self.batch,
            records: self.records,
        }
    }
}

/// Splits `batch` by the topic `template` names for each record, keeping
/// the records' order within each topic; creates topics met for the first
/// time. Returns the parts in order of first appearance. A record the template cannot name a topic for fails the
/// batch: nothing of it is stored, and the source is restarted from the
/// position before it.
pub(super) fn route(
    broker: &impl Broker,
    routes: &mut HashMap<String, u32>,
    spare: &mut Vec<Vec<u8>>,
    template: &TopicTemplate,
    instance: u32,
    batch: Vec<u8>,
) -> anyhow::Result<Vec<Part>> {
    let parsed = Batch::parse(&batch)?;
    // Each record's part, and the parts in order of appearance. A topic is
    // rendered once per distinct header key in the batch.
    let mut which: Vec<usize> = Vec::with_capacity(parsed.len());
    let mut by_key: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut parts: Vec<Part> = Vec::new();
    let (mut key, mut topic) = (Vec::new(), String::new());
    let mut last: Option<usize> = None;
    let mut last_key = Vec::new();
    for (i, r) in parsed.iter().enumerate() {
        let refused = |e| {
            anyhow::anyhow!("the source gave record {i} of a batch that routes to no topic: {e}")
        };
        template.key_into(r.headers(), &mut key).map_err(refused)?;
        // Runs of one table (a transaction's changes) skip the lookup.
        if let Some(part) = last.filter(|_| key == last_key) {
            which.push(part);
            parts[part].records += 1;
            continue;
        }
        if let Some(&part) = by_key.get(&key) {
            last = Some(part);
            last_key.clone_from(&key);
            which.push(part);
            parts[part].records += 1;
            continue;
        }
        template
            .render_into(r.headers(), &mut topic)
            .map_err(refused)?;
        let part = match index.get(topic.as_str()) {
            Some(&part) => part,
            None => {
                let partition = match routes.get(&topic) {
                    Some(p) => *p,
                    None => {
                        let partitions = broker.ensure_topic(&topic).map_err(|e| {
                            anyhow::anyhow!("creating topic {topic:?} for routed records: {e}")
                        })?;
                        routes.insert(topic.clone(), instance % partitions);
                        instance % partitions
                    }
                };
                index.insert(topic.clone(), parts.len());
                parts.push(Part {
                    topic: topic.clone(),
                    partition,
                    batch: Vec::new(),
                    records: 0,
                });
                parts.len() - 1
            }
        };
        by_key.insert(key.clone(), part);
        last = Some(part);
        last_key.clone_from(&key);
        which.push(part);
        parts[part].records += 1;
    }
    if let [only] = parts.as_mut_slice() {
        // One topic: the batch goes as it is.
        only.batch = batch;
        return Ok(parts);
    }
    // Records are copied as they are encoded, not encoded again.
    let mut writers: Vec<sluice_batch::BatchWriter> = parts
        .iter()
        .map(|p| {
            let share = batch.len() as u64 * u64::from(p.records) / parsed.len() as u64;
            let mut buf = spare.pop().unwrap_or_default();
            buf.reserve(share as usize + 64);
            sluice_batch::BatchWriter::reuse(buf)
        })
        .collect();
    let mut records = parsed.iter();
    for part in which {
        let raw = records.peek_encoded().expect("one record per routed index");
        records.next();
        writers[part].push_encoded(raw);
    }
    for (p, w) in parts.iter_mut().zip(writers) {
        p.batch = w.finish();
    }
    Ok(parts)
}
