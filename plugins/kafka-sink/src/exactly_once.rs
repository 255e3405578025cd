//! `exactly_once = true`: the sink as a transactional producer.
//!
//! Everything written between two flushes is one Kafka transaction, and so
//! are the offsets after it: at `flush` the sink writes, for each log
//! partition it wrote from, a record `<connector>/<topic>/<partition>` →
//! the next offset (decimal text) into its offsets topic, then commits.
//! Records and offsets become visible to `read_committed` readers
//! together, or not at all.
//!
//! At `open` the sink asks the coordinator for its producer id under its
//! transactional id. That fences the instance that had the id before
//! (its next write fails), and ends the transaction it left open:
//! aborted, unless it had asked to commit. Then the sink reads its offsets
//! back, as `read_committed` would, and hands them to the host
//! ([`Sink::stored_offsets`](sluice_sdk::Sink::stored_offsets)), which
//! resumes from them: a crash before the commit writes the batches again
//! in a new transaction (the old one is aborted); a crash after it, before
//! the host committed its own offsets, does not write them again.
//!
//! A write that fails part way (the host interrupting it, a broker error)
//! leaves part of a batch in the open transaction. The host would hand the
//! batch again, and the part written would be there twice; so the
//! transaction is aborted instead, and the instance fails, to be restarted
//! from the stored offsets.

use std::collections::{BTreeMap, BTreeSet};

use sluice_kafka::net::NetDial;
use sluice_kafka::partitioner::partition_for_key;
use sluice_kafka::records::Batches;
use sluice_kafka::transaction::{Committed, TxnProducer};
use sluice_kafka::{Client, FetchLimits, Isolation, KafkaError, OffsetSpec, TopicPartition};
use sluice_sdk::{Origin, StoredOffset};

/// A record of the offsets topic: key and value.
pub(crate) type OffsetRecord = (Vec<u8>, Vec<u8>);

/// The sink's transaction state.
#[derive(Debug)]
pub(crate) struct Transactional {
    /// The coordinator of the transactional id.
    coordinator: i32,
    /// The producer id and epoch the coordinator gave.
    pub(crate) producer: TxnProducer,
    offsets_topic: String,
    /// `<connector>/`: the start of this connector's keys.
    prefix: String,
    /// Partitions registered with the open transaction.
    added: BTreeSet<TopicPartition>,
    /// The offset after the last batch written in the open transaction,
    /// by log topic and partition.
    pending: BTreeMap<(String, u32), u64>,
    /// What the offsets topic holds, as last read or committed.
    stored: BTreeMap<(String, u32), u64>,
    /// Why the open transaction cannot be committed (a write failed part
    /// way).
    broken: Option<String>,
}

impl Transactional {
    /// Takes over `transactional_id` (fencing its previous holder, ending
    /// its transaction) and reads the connector's stored offsets.
    pub(crate) fn begin(
        client: &mut Client<NetDial>,
        transactional_id: &str,
        timeout_ms: i32,
        offsets_topic: &str,
        connector: &str,
    ) -> Result<Self, KafkaError> {
        let coordinator = client.transaction_coordinator(transactional_id)?;
        let producer = client.init_transactions(coordinator, transactional_id, timeout_ms)?;
        let prefix = format!("{connector}/");
        let stored = read_stored(client, offsets_topic, &prefix)?;
        Ok(Transactional {
            coordinator,
            producer,
            offsets_topic: offsets_topic.to_owned(),
            prefix,
            added: BTreeSet::new(),
            pending: BTreeMap::new(),
            stored,
            broken: None,
        })
    }

    /// The offsets the topic holds, for the host.
    pub(crate) fn stored(&self) -> Vec<StoredOffset> {
        self.stored
            .iter()
            .map(|((topic, partition), &next_offset)| StoredOffset {
                topic: topic.clone(),
                partition: *partition,
                next_offset,
            })
            .collect()
    }

    /// Registers those of `partitions` the open transaction lacks.
    pub(crate) fn register<'p>(
        &mut self,
        client: &mut Client<NetDial>,
        partitions: impl IntoIterator<Item = &'p TopicPartition>,
    ) -> Result<(), KafkaError> {
        let new: Vec<TopicPartition> = partitions
            .into_iter()
            .filter(|tp| !self.added.contains(*tp))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        client.add_partitions_to_txn(self.coordinator, &self.producer, &new)?;
        self.added.extend(new);
        Ok(())
    }

    /// A batch of `records` from `origin` is written in the open
    /// transaction.
    pub(crate) fn written(&mut self, origin: &Origin, records: usize) {
        self.pending.insert(
            (origin.topic.clone(), origin.partition),
            origin.first_offset + records as u64,
        );
    }

    /// The open transaction lost part of a batch's write: it must not be
    /// committed.
    pub(crate) fn break_off(&mut self, why: String) {
        self.broken.get_or_insert(why);
    }

    /// Why the open transaction cannot be committed, if it cannot.
    pub(crate) fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Whether a transaction is open.
    pub(crate) fn is_open(&self) -> bool {
        !self.added.is_empty() || !self.pending.is_empty()
    }

    /// The offsets records to write before the commit, by the offsets
    /// topic's partition (murmur2 of the key, as the Java client would
    /// put them, so compaction keeps the last of each key).
    pub(crate) fn offsets_records(
        &self,
        partitions: u32,
    ) -> BTreeMap<TopicPartition, Vec<OffsetRecord>> {
        let mut out: BTreeMap<TopicPartition, Vec<OffsetRecord>> = BTreeMap::new();
        for ((topic, partition), next) in &self.pending {
            let key = format!("{}{topic}/{partition}", self.prefix).into_bytes();
            let tp = TopicPartition {
                topic: self.offsets_topic.clone(),
                partition: partition_for_key(&key, partitions) as i32,
            };
            out.entry(tp)
                .or_default()
                .push((key, next.to_string().into_bytes()));
        }
        out
    }

    /// Commits the open transaction.
    pub(crate) fn commit(&mut self, client: &mut Client<NetDial>) -> Result<(), KafkaError> {
        client.end_txn(self.coordinator, &self.producer, true)?;
        self.stored.append(&mut self.pending);
        self.added.clear();
        Ok(())
    }

    /// Aborts the open transaction, if one is, as well as it can: the next
    /// instance's `begin` aborts it anyway.
    pub(crate) fn abort(&mut self, client: &mut Client<NetDial>) {
        if self.is_open() {
            let _ = client.end_txn(self.coordinator, &self.producer, false);
        }
        self.pending.clear();
        self.added.clear();
    }

    /// The offsets topic.
    pub(crate) fn offsets_topic(&self) -> &str {
        &self.offsets_topic
    }
}

/// The offsets under `prefix` in `topic`, the last committed value of each
/// key, read to the end of every partition as `read_committed` does.
fn read_stored(
    client: &mut Client<NetDial>,
    topic: &str,
    prefix: &str,
) -> Result<BTreeMap<(String, u32), u64>, KafkaError> {
    let count = client.topics().get(topic).map_or(0, Vec::len);
    let partitions: Vec<TopicPartition> = (0..count)
        .map(|p| TopicPartition {
            topic: topic.to_owned(),
            partition: p as i32,
        })
        .collect();
    let starts = client.list_offsets(
        &partitions,
        OffsetSpec::Earliest,
        Isolation::ReadUncommitted,
    )?;
    let ends = client.list_offsets(&partitions, OffsetSpec::Latest, Isolation::ReadUncommitted)?;
    // The broker answers as soon as it has a byte (`min_bytes` 1); a wait
    // of 0 gets no partitions at all from some brokers (tansu).
    let limits = FetchLimits {
        max_wait_ms: 100,
        ..FetchLimits::default()
    };
    let mut stored = BTreeMap::new();
    for tp in partitions {
        let (mut next, end) = (starts[&tp], ends[&tp]);
        let mut reader = Committed::new();
        let mut seen = Vec::new();
        while next < end {
            let fetched = client
                .fetch(&[(tp.clone(), next)], limits, Isolation::ReadUncommitted)?
                .pop()
                .ok_or_else(|| KafkaError::Unsupported(format!("no answer for {tp}")))?;
            if let Some(e) = fetched.error {
                return Err(e);
            }
            let before = next;
            for batch in Batches::new(&fetched.records) {
                let batch = batch.map_err(|error| KafkaError::Records {
                    what: format!("{tp} at {next}"),
                    error,
                })?;
                if batch.next_offset() <= next {
                    continue;
                }
                reader
                    .push(&batch, &mut seen)
                    .map_err(|error| KafkaError::Records {
                        what: format!("{tp} at {}", batch.base_offset),
                        error,
                    })?;
                next = batch.next_offset();
            }
            if next == before {
                // Nothing more to read below the end (the rest removed by
                // compaction or retention, or not yet readable).
                break;
            }
        }
        for record in seen {
            let Some(key) = record
                .key
                .as_deref()
                .and_then(|k| std::str::from_utf8(k).ok())
            else {
                continue;
            };
            let Some((log_topic, partition)) = key
                .strip_prefix(prefix)
                .and_then(|rest| rest.rsplit_once('/'))
            else {
                continue;
            };
            let Ok(partition) = partition.parse::<u32>() else {
                continue;
            };
            let at = (log_topic.to_owned(), partition);
            match record.value.as_deref().map(std::str::from_utf8) {
                // A tombstone: the key was deleted.
                None => {
                    stored.remove(&at);
                }
                Some(Ok(text)) => {
                    if let Ok(next) = text.parse::<u64>() {
                        stored.insert(at, next);
                    }
                }
                Some(Err(_)) => {}
            }
        }
    }
    Ok(stored)
}
