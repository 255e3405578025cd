//! Kafka transactions, both sides: what a transactional producer asks its
//! coordinator ([`Client::transaction_coordinator`],
//! [`Client::init_transactions`], [`Client::add_partitions_to_txn`],
//! [`Client::end_txn`]), and a reader that sees a partition as a
//! `read_committed` consumer does, from the log alone ([`Committed`]).
//!
//! A transactional producer's life, as the Java client's:
//!
//! 1. find the coordinator of its transactional id, and ask it for a
//!    producer id (`InitProducerId` with the id). That bumps the id's
//!    epoch, which fences any older producer with the same id (its next
//!    request fails with `PRODUCER_FENCED` or `INVALID_PRODUCER_EPOCH`),
//!    and ends the transaction that producer left open: aborted if it
//!    had not asked to commit, committed if it had.
//! 2. Before the first write to a partition in a transaction, register it
//!    with the coordinator (`AddPartitionsToTxn`); then produce batches
//!    flagged transactional, with the producer id, epoch and sequences.
//! 3. `EndTxn`: the coordinator writes a commit (or abort) marker into
//!    every partition of the transaction. Readers with `read_committed`
//!    see the records once the marker is written, and never those of an
//!    aborted transaction.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, EndTxnRequest, InitProducerIdRequest, ProducerId, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::{Client, TopicPartition};
use crate::conn::Dial;
use crate::error::KafkaError;
use crate::records::{Batch, RecordsError};

/// A transactional producer's identity: its transactional id, and the
/// producer id and epoch the coordinator gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnProducer {
    /// The transactional id (stable across restarts: it is what fences).
    pub transactional_id: String,
    /// The producer id.
    pub id: i64,
    /// Its epoch.
    pub epoch: i16,
}

/// How often a coordinator that answers "busy" is asked again, and how
/// long between: it is finishing the previous producer's transaction
/// (writing its markers), which takes milliseconds.
const BUSY_TRIES: u32 = 100;
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// Whether the coordinator asks to be asked again shortly: it is busy with
/// a transaction's end, or still loading its state.
fn busy(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::Broker {
            code: ResponseError::ConcurrentTransactions | ResponseError::CoordinatorLoadInProgress,
            ..
        }
    )
}

fn txn_id(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_owned()))
}

impl<D: Dial> Client<D> {
    /// The broker that coordinates the transactions of `transactional_id`
    /// (its id), asking any broker.
    pub fn transaction_coordinator(&mut self, transactional_id: &str) -> Result<i32, KafkaError> {
        let what = format!("transactional id {transactional_id}");
        self.find_coordinator(transactional_id, 1, &what)
    }

    /// A producer id for `transactional_id` from its coordinator, with the
    /// epoch bumped: any older producer with the id is fenced from now on,
    /// and the transaction it left open is ended. A transaction the
    /// coordinator does not hear of for `timeout_ms` is aborted by it.
    pub fn init_transactions(
        &mut self,
        coordinator: i32,
        transactional_id: &str,
        timeout_ms: i32,
    ) -> Result<TxnProducer, KafkaError> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(txn_id(transactional_id)))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        self.when_not_busy(|client| {
            let (addr, response) = client.call_on(coordinator, &request, 0..=4)?;
            KafkaError::check(
                &addr,
                format!("InitProducerId for transactional id {transactional_id}"),
                response.error_code,
            )?;
            Ok(TxnProducer {
                transactional_id: transactional_id.to_owned(),
                id: response.producer_id.0,
                epoch: response.producer_epoch,
            })
        })
    }

    /// Registers `partitions` with the producer's open transaction (one is
    /// begun by the first), before anything is written to them in it.
    pub fn add_partitions_to_txn(
        &mut self,
        coordinator: i32,
        producer: &TxnProducer,
        partitions: &[TopicPartition],
    ) -> Result<(), KafkaError> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            topics.entry(&tp.topic).or_default().push(tp.partition);
        }
        // Versions 4 and up are the brokers' own batched form.
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txn_id(&producer.transactional_id))
            .with_v3_and_below_producer_id(ProducerId(producer.id))
            .with_v3_and_below_producer_epoch(producer.epoch)
            .with_v3_and_below_topics(
                topics
                    .into_iter()
                    .map(|(name, ps)| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                            .with_partitions(ps)
                    })
                    .collect(),
            );
        self.when_not_busy(|client| {
            let (addr, response) = client.call_on(coordinator, &request, 0..=3)?;
            for topic in &response.results_by_topic_v3_and_below {
                for p in &topic.results_by_partition {
                    KafkaError::check(
                        &addr,
                        format!(
                            "AddPartitionsToTxn {}/{} for transactional id {}",
                            &*topic.name.0, p.partition_index, producer.transactional_id
                        ),
                        p.partition_error_code,
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Ends the producer's open transaction: `commit` writes its records
    /// for `read_committed` readers, else they are dropped for them.
    pub fn end_txn(
        &mut self,
        coordinator: i32,
        producer: &TxnProducer,
        commit: bool,
    ) -> Result<(), KafkaError> {
        let request = EndTxnRequest::default()
            .with_transactional_id(txn_id(&producer.transactional_id))
            .with_producer_id(ProducerId(producer.id))
            .with_producer_epoch(producer.epoch)
            .with_committed(commit);
        // Version 5 bumps the epoch at every end (KIP-890); this client
        // keeps one epoch for a producer's life.
        self.when_not_busy(|client| {
            let (addr, response) = client.call_on(coordinator, &request, 0..=4)?;
            KafkaError::check(
                &addr,
                format!(
                    "EndTxn ({}) for transactional id {}",
                    if commit { "commit" } else { "abort" },
                    producer.transactional_id
                ),
                response.error_code,
            )
        })
    }

    /// Runs `call` until the coordinator is not busy (or it fails
    /// otherwise). A host interrupt cuts a wait short, and the next call
    /// then returns it.
    fn when_not_busy<T>(
        &mut self,
        mut call: impl FnMut(&mut Self) -> Result<T, KafkaError>,
    ) -> Result<T, KafkaError> {
        let mut tries = 0;
        loop {
            match call(self) {
                Err(e) if busy(&e) && tries < BUSY_TRIES => {
                    tries += 1;
                    std::thread::sleep(BUSY_WAIT);
                }
                done => return done,
            }
        }
    }
}

/// A record of a partition that a `read_committed` reader sees, copied out
/// of its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Its offset.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value.
    pub value: Option<Vec<u8>>,
    /// Its headers, in order.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// One partition's batches, read in offset order, as a `read_committed`
/// consumer sees them, decided by the markers in the log itself: a
/// transactional producer's records are held until its commit marker
/// (then given) or abort marker (then dropped); records written outside
/// transactions are given at once.
///
/// Kafka's brokers tell a `read_committed` fetch which transactions
/// aborted, and stop it at the last stable offset; not every broker that
/// speaks the protocol sends that list, and the markers say the same.
/// Reading to the high watermark, records of transactions still open at
/// the end are held, not given: [`Committed::open_transactions`] counts
/// them.
#[derive(Debug, Default)]
pub struct Committed {
    /// Records of each producer's open transaction.
    open: HashMap<i64, Vec<OwnedRecord>>,
    scratch: Vec<u8>,
}

impl Committed {
    /// A reader with nothing read.
    pub fn new() -> Self {
        Committed::default()
    }

    /// Reads one batch (the next in the partition), adding the records it
    /// makes visible to `out`.
    pub fn push(
        &mut self,
        batch: &Batch<'_>,
        out: &mut Vec<OwnedRecord>,
    ) -> Result<(), RecordsError> {
        if batch.is_control() {
            let commit = batch.control_is_commit(&mut self.scratch)?;
            if let Some(records) = self.open.remove(&batch.producer_id)
                && commit
            {
                out.extend(records);
            }
            return Ok(());
        }
        let mut owned = Vec::with_capacity(usize::try_from(batch.count).unwrap_or(0));
        for record in batch.records(&mut self.scratch)? {
            let record = record?;
            let headers = record
                .headers()
                .map(|h| h.map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec))))
                .collect::<Result<_, _>>()?;
            owned.push(OwnedRecord {
                offset: record.offset,
                timestamp: record.timestamp,
                key: record.key.map(<[u8]>::to_vec),
                value: record.value.map(<[u8]>::to_vec),
                headers,
            });
        }
        if batch.is_transactional() {
            self.open
                .entry(batch.producer_id)
                .or_default()
                .extend(owned);
        } else {
            out.extend(owned);
        }
        Ok(())
    }

    /// How many producers' transactions are open at what was read last.
    pub fn open_transactions(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::records::Batches;
    use crate::records::testing::{data_batch, marker_batch};

    #[test]
    fn aborted_and_open_transactions_are_not_seen() {
        let mut log = Vec::new();
        data_batch(&mut log, 0, 7, &["a1", "a2"]); // producer 7: committed below
        data_batch(&mut log, 2, 8, &["b1"]); // producer 8: aborted below
        data_batch(&mut log, 3, -1, &["plain"]); // no transaction
        marker_batch(&mut log, 4, 8, false);
        data_batch(&mut log, 5, 7, &["a3"]);
        marker_batch(&mut log, 6, 7, true);
        data_batch(&mut log, 7, 9, &["c1"]); // producer 9: still open
        let mut reader = Committed::new();
        let mut seen = Vec::new();
        for batch in Batches::new(&log) {
            reader.push(&batch.unwrap(), &mut seen).unwrap();
        }
        let values: Vec<&[u8]> = seen.iter().map(|r| r.value.as_deref().unwrap()).collect();
        assert_eq!(values, [&b"plain"[..], b"a1", b"a2", b"a3"]);
        assert_eq!(seen[1].offset, 0);
        assert_eq!(reader.open_transactions(), 1);
    }
}
