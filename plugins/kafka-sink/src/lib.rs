//! `kafka-sink`: records into Kafka topics, written over the Kafka
//! protocol by the plugin's own client (`sluice-kafka`) through the
//! connections the connector's `net` grant allows (TLS through the host).
//!
//! - **Idempotent producer**: the sink asks for a producer id at `open`
//!   and stamps every batch with it and a sequence number per partition;
//!   `acks = all`. A batch sent again after an error or a lost answer is
//!   stored once by the broker, so retries never duplicate.
//! - **Partitions**: by the record's key, with the Java client's murmur2
//!   partitioner (the partition a Java producer picks for the key); a
//!   record without a key goes to one partition per batch, in turn.
//!   `partitioner = "source"` keeps the log partition's number instead
//!   (modulo the topic's partition count).
//! - **Topic**: `topic`, whose `{name}` parts are the record's header
//!   `name` (`topic = "cdc.{table}"`); a record without such a header is
//!   dead-lettered, and so is one whose topic does not exist.
//! - **Batches**: each batch the host hands over is written before
//!   `write` returns, as one Kafka record batch per partition (split at
//!   `batch_max_bytes`), all partitions' leaders asked at once. The host's
//!   `[connector.batch]` is the linger. A record the broker refuses as too
//!   large is dead-lettered with the broker's error; the rest go on.
//! - **A broker that goes away** pauses the flow: said once, tried again
//!   with backoff (the wait ends at once to stop, pause or swap); a
//!   partition whose leader moved is written to the new leader after a
//!   metadata refresh.
//! - **Delivery**: at least once. A crash between Kafka's acknowledgement
//!   and the host's offset commit writes those records again (with a new
//!   producer id, which Kafka cannot tell from new records). With
//!   `exactly_once = true`, exactly once for `read_committed` readers:
//!   each flush is a Kafka transaction holding the records and the offsets
//!   after them (see [`exactly_once`]).

mod config;
mod exactly_once;

use std::collections::BTreeMap;

use sluice_kafka::net::NetDial;
use sluice_kafka::partitioner::partition_for_key;
use sluice_kafka::records::{BatchBuilder, Compression, NewRecord, ProducerStamp};
use sluice_kafka::{Bytes, Client, KafkaError, ResponseError, TopicPartition};
use sluice_sdk::outage::Outage;
use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink, StoredOffset};

pub use config::{Config, Partitioner};
use exactly_once::Transactional;

/// The sink.
#[derive(Debug)]
pub struct KafkaSink {
    client: Client<NetDial>,
    topic: Template,
    partitioner: Partitioner,
    compression: Compression,
    batch_max_bytes: usize,
    timeout_ms: i32,
    producer: (i64, i16),
    /// The next sequence number of each partition.
    sequences: BTreeMap<TopicPartition, i32>,
    /// The partition the next keyless batch goes to, by topic.
    keyless: BTreeMap<String, u32>,
    cluster: Outage,
    connector: String,
    /// With `exactly_once`: the open transaction.
    txn: Option<Transactional>,
}

/// A topic name with `{header}` parts.
#[derive(Debug, Clone)]
enum Template {
    Fixed(String),
    /// Literal text and header names, in turn: `["cdc.", "table", ""]`.
    Parts(Vec<String>),
}

impl Template {
    fn parse(text: &str) -> Result<Template, Error> {
        if !text.contains('{') {
            return Ok(Template::Fixed(text.to_owned()));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c).ok_or_else(|| {
                Error::invalid_config(format!("topic {text:?}: a `{{` without its `}}`"))
            })?;
            parts.push(rest[..open].to_owned());
            let name = &rest[open + 1..close];
            if name.is_empty() {
                return Err(Error::invalid_config(format!(
                    "topic {text:?}: `{{}}` names no header"
                )));
            }
            parts.push(name.to_owned());
            rest = &rest[close + 1..];
        }
        parts.push(rest.to_owned());
        Ok(Template::Parts(parts))
    }

    /// The topic for a record with `headers`, or the header it lacks.
    fn render<'h>(
        &self,
        mut header: impl FnMut(&str) -> Option<&'h [u8]>,
    ) -> Result<String, String> {
        match self {
            Template::Fixed(t) => Ok(t.clone()),
            Template::Parts(parts) => {
                let mut out = String::new();
                for (i, part) in parts.iter().enumerate() {
                    if i % 2 == 0 {
                        out.push_str(part);
                    } else {
                        let value = header(part).ok_or_else(|| part.clone())?;
                        out.push_str(&String::from_utf8_lossy(value));
                    }
                }
                Ok(out)
            }
        }
    }
}

/// A record's place: its index in the batch, and its partition.
#[derive(Debug)]
struct Routed {
    tp: TopicPartition,
    indexes: Vec<usize>,
    /// How many of `indexes` are written.
    done: usize,
    /// Send one record a batch (a batch was refused as too large).
    one_at_a_time: bool,
}

impl Sink for KafkaSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        let compression = Compression::from_name(&config.compression).ok_or_else(|| {
            Error::invalid_config(format!(
                "compression = {:?}: use \"none\", \"gzip\", \"snappy\", \"lz4\" or \"zstd\"",
                config.compression
            ))
        })?;
        let topic = Template::parse(&config.topic)?;
        let (mut client, cluster) = sluice_kafka::net::client_for(
            sluice_kafka::net::Reach {
                plugin: "kafka-sink",
                bootstrap_servers: &config.bootstrap_servers,
                client_id: config.client_id.as_deref(),
                tls: config.tls,
                server_name: config.server_name.as_deref(),
                sasl: config.sasl.as_ref(),
                reconnect_ms: (config.reconnect_initial_ms, config.reconnect_max_ms),
            },
            ctx,
        )?;
        let failed =
            |e: KafkaError| sluice_kafka::net::open_failed("kafka-sink", &ctx.connector, &e);
        let topics = match &topic {
            Template::Fixed(t) if config.exactly_once => {
                Some(vec![t.clone(), config.offsets_topic.clone()])
            }
            Template::Fixed(t) => Some(vec![t.clone()]),
            Template::Parts(_) => None,
        };
        client.refresh_metadata(topics.as_deref()).map_err(failed)?;
        if let Template::Fixed(t) = &topic
            && !client.topics().contains_key(t)
        {
            return Err(Error::fatal(format!(
                "kafka-sink {}: topic {t:?} does not exist (make it first; the sink does not)",
                ctx.connector
            )));
        }
        let (producer, txn) = if config.exactly_once {
            if !client.topics().contains_key(&config.offsets_topic) {
                return Err(Error::fatal(format!(
                    "kafka-sink {}: the offsets topic {:?} does not exist (make it first, \
                     compacted: `cleanup.policy=compact`; or name another with `offsets_topic`)",
                    ctx.connector, config.offsets_topic
                )));
            }
            let transactional_id = config
                .transactional_id
                .clone()
                .unwrap_or_else(|| format!("sluice-{}-{}", ctx.connector, ctx.index));
            let txn = Transactional::begin(
                &mut client,
                &transactional_id,
                i32::try_from(config.transaction_timeout_ms).unwrap_or(i32::MAX),
                &config.offsets_topic,
                &ctx.connector,
            )
            .map_err(failed)?;
            let producer = (txn.producer.id, txn.producer.epoch);
            sluice_sdk::info!(
                "kafka-sink {}: transactional id {transactional_id}, producer id {}, epoch {}; {} stored offsets",
                ctx.connector,
                producer.0,
                producer.1,
                txn.stored().len()
            );
            (producer, Some(txn))
        } else {
            let producer = client.init_producer_id().map_err(failed)?;
            sluice_sdk::info!(
                "kafka-sink {}: producer id {}, epoch {}",
                ctx.connector,
                producer.0,
                producer.1
            );
            (producer, None)
        };
        Ok(KafkaSink {
            client,
            topic,
            partitioner: config.partitioner,
            compression,
            batch_max_bytes: config.batch_max_bytes.max(1),
            timeout_ms: i32::try_from(config.request_timeout_ms).unwrap_or(i32::MAX),
            producer,
            sequences: BTreeMap::new(),
            keyless: BTreeMap::new(),
            cluster,
            connector: ctx.connector.clone(),
            txn,
        })
    }

    fn stored_offsets(&self) -> Vec<StoredOffset> {
        self.txn
            .as_ref()
            .map(Transactional::stored)
            .unwrap_or_default()
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let Some(txn) = &self.txn else {
            return self.write_batch(origin, batch, rejects);
        };
        if let Some(why) = txn.broken().map(str::to_owned) {
            return Err(self.broken(why));
        }
        let records = batch.len();
        match self.write_batch(origin, batch, rejects) {
            Ok(()) => {
                if let Some(txn) = &mut self.txn {
                    txn.written(origin, records);
                }
                Ok(())
            }
            Err(e) => {
                // Part of the batch may be in the transaction: it must not
                // be committed (the host hands the batch again).
                let why = format!("a write failed part way ({e})");
                Err(self.broken(why))
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        let Some(txn) = &self.txn else {
            // Every write is acknowledged (acks = all) before it returns.
            return Ok(());
        };
        if let Some(why) = txn.broken().map(str::to_owned) {
            return Err(self.broken(why));
        }
        if !txn.is_open() {
            return Ok(());
        }
        match self.commit() {
            Ok(()) => Ok(()),
            // The commit may have landed or not (its answer lost, the wait
            // interrupted): the next instance reads which from the offsets
            // topic.
            Err(e) => Err(self.broken(format!("the commit failed ({e})"))),
        }
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(txn) = &mut self.txn {
            txn.abort(&mut self.client);
        }
        Ok(())
    }
}

impl KafkaSink {
    /// Writes one batch, each record to its partition.
    fn write_batch(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let records: Vec<_> = batch.iter().collect();
        let mut routed = self.route(origin, &records, rejects)?;
        let mut builder = BatchBuilder::new();
        while routed.iter().any(|r| r.done < r.indexes.len()) {
            // One round: a batch for each partition with records left.
            let mut round = Vec::new();
            let mut sizes = BTreeMap::new();
            for r in routed.iter().filter(|r| r.done < r.indexes.len()) {
                let seq = *self.sequences.get(&r.tp).unwrap_or(&0);
                let mut taken = 0;
                for &i in &r.indexes[r.done..] {
                    let record = &records[i];
                    if taken > 0
                        && (r.one_at_a_time
                            || builder.size() + record_size(record) > self.batch_max_bytes)
                    {
                        break;
                    }
                    builder.push(
                        NewRecord {
                            timestamp: record.timestamp.unwrap_or(-1),
                            key: record.key,
                            value: Some(record.value),
                        },
                        record.headers().map(|(k, v)| (k, Some(v))),
                    );
                    taken += 1;
                }
                let mut bytes = Vec::with_capacity(builder.size());
                let stamp = ProducerStamp {
                    id: self.producer.0,
                    epoch: self.producer.1,
                    base_sequence: seq,
                    transactional: self.txn.is_some(),
                };
                builder
                    .finish(self.compression, stamp, &mut bytes)
                    .map_err(|e| Error::fatal(format!("kafka-sink {}: {e}", self.connector)))?;
                sizes.insert(r.tp.clone(), taken);
                round.push((r.tp.clone(), Bytes::from(bytes)));
            }
            if let Some(txn) = &mut self.txn {
                match txn.register(&mut self.client, round.iter().map(|(tp, _)| tp)) {
                    Ok(()) => {}
                    Err(e) if e.is_interrupted() => {
                        return Err(Error::retriable("interrupted while writing to Kafka"));
                    }
                    Err(e) => {
                        return Err(Error::fatal(format!("kafka-sink {}: {e}", self.connector)));
                    }
                }
            }
            let transactional_id = self
                .txn
                .as_ref()
                .map(|t| t.producer.transactional_id.clone());
            let outcomes =
                match self
                    .client
                    .produce(round, transactional_id.as_deref(), self.timeout_ms)
                {
                    Ok(o) => o,
                    Err(e) if e.is_interrupted() => {
                        return Err(Error::retriable("interrupted while writing to Kafka"));
                    }
                    Err(e) => {
                        return Err(Error::fatal(format!("kafka-sink {}: {e}", self.connector)));
                    }
                };
            let mut away = None;
            for (tp, outcome) in outcomes {
                let taken = sizes[&tp];
                let r = routed.iter_mut().find(|r| r.tp == tp).expect("sent");
                match outcome {
                    // A batch the broker already has (its answer was lost).
                    Ok(_)
                    | Err(KafkaError::Broker {
                        code: ResponseError::DuplicateSequenceNumber,
                        ..
                    }) => {
                        r.done += taken;
                        // Kafka's sequence numbers wrap at i32::MAX to 0.
                        let seq = self.sequences.entry(tp).or_insert(0);
                        *seq = (*seq).wrapping_add(taken as i32) & i32::MAX;
                    }
                    Err(
                        e @ KafkaError::Broker {
                            code: ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge,
                            ..
                        },
                    ) => {
                        if taken > 1 {
                            r.one_at_a_time = true;
                        } else {
                            rejects.reject(r.indexes[r.done], &e);
                            r.done += 1;
                        }
                    }
                    Err(e) if e.is_retriable() => {
                        if e.wants_metadata() {
                            let _ = self.client.refresh_metadata(None);
                        }
                        away = Some(e);
                    }
                    Err(e) => {
                        return Err(Error::fatal(format!("kafka-sink {}: {e}", self.connector)));
                    }
                }
            }
            match away {
                Some(e) => {
                    if sluice_sdk::interrupted() {
                        return Err(Error::retriable("interrupted while waiting for Kafka"));
                    }
                    self.cluster.went_away(&e.to_string());
                    self.cluster.wait(None);
                    if sluice_sdk::interrupted() {
                        return Err(Error::retriable("interrupted while waiting for Kafka"));
                    }
                }
                None => self.cluster.back(),
            }
        }
        Ok(())
    }
}

/// About the bytes a record takes in a batch.
fn record_size(record: &sluice_sdk::RecordRef<'_>) -> usize {
    let headers: usize = record.headers().map(|(k, v)| k.len() + v.len() + 4).sum();
    record.value.len() + record.key.map_or(0, <[u8]>::len) + headers + 16
}

impl KafkaSink {
    /// With `exactly_once`: the open transaction cannot be committed.
    /// Aborts it and fails the instance, which the host restarts from
    /// the offsets the committed transactions stored.
    fn broken(&mut self, why: String) -> Error {
        if let Some(txn) = &mut self.txn {
            txn.break_off(why.clone());
            txn.abort(&mut self.client);
        }
        Error::fatal(format!(
            "kafka-sink {}: the open transaction is aborted: {why}; restarting from the stored \
             offsets",
            self.connector
        ))
    }

    /// With `exactly_once`: writes the offsets after the open
    /// transaction's batches into it, and commits it.
    fn commit(&mut self) -> Result<(), KafkaError> {
        let Some(txn) = &mut self.txn else {
            return Ok(());
        };
        let partitions = self
            .client
            .topics()
            .get(txn.offsets_topic())
            .map_or(0, |p| p.len() as u32);
        if partitions == 0 {
            return Err(KafkaError::Unsupported(format!(
                "the offsets topic {:?} has no partitions",
                txn.offsets_topic()
            )));
        }
        let records = txn.offsets_records(partitions);
        txn.register(&mut self.client, records.keys())?;
        let mut batches = Vec::new();
        for (tp, records) in &records {
            let mut builder = BatchBuilder::new();
            for (key, value) in records {
                builder.push(
                    NewRecord {
                        timestamp: -1,
                        key: Some(key),
                        value: Some(value),
                    },
                    std::iter::empty(),
                );
            }
            let stamp = ProducerStamp {
                id: self.producer.0,
                epoch: self.producer.1,
                base_sequence: *self.sequences.get(tp).unwrap_or(&0),
                transactional: true,
            };
            let mut bytes = Vec::new();
            builder
                .finish(Compression::None, stamp, &mut bytes)
                .map_err(|e| KafkaError::Unsupported(e.to_string()))?;
            batches.push((tp.clone(), Bytes::from(bytes), records.len()));
        }
        let transactional_id = txn.producer.transactional_id.clone();
        while !batches.is_empty() {
            let round = batches
                .iter()
                .map(|(tp, bytes, _)| (tp.clone(), bytes.clone()))
                .collect();
            let outcomes = self
                .client
                .produce(round, Some(&transactional_id), self.timeout_ms)?;
            let mut away = None;
            for (tp, outcome) in outcomes {
                match outcome {
                    Ok(_)
                    | Err(KafkaError::Broker {
                        code: ResponseError::DuplicateSequenceNumber,
                        ..
                    }) => {
                        let i = batches.iter().position(|b| b.0 == tp).expect("sent");
                        let (tp, _, count) = batches.swap_remove(i);
                        let seq = self.sequences.entry(tp).or_insert(0);
                        *seq = (*seq).wrapping_add(count as i32) & i32::MAX;
                    }
                    Err(e) if e.is_retriable() => {
                        if e.wants_metadata() {
                            let _ = self.client.refresh_metadata(None);
                        }
                        away = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = away {
                self.cluster.went_away(&e.to_string());
                self.cluster.wait(None);
                if sluice_sdk::interrupted() {
                    return Err(KafkaError::Unsupported(
                        "interrupted while waiting for Kafka".into(),
                    ));
                }
            }
        }
        let txn = self.txn.as_mut().expect("checked above");
        txn.commit(&mut self.client)?;
        self.cluster.back();
        Ok(())
    }

    /// Each record's topic and partition; records that cannot go anywhere
    /// are refused.
    fn route(
        &mut self,
        origin: &Origin,
        records: &[sluice_sdk::RecordRef<'_>],
        rejects: &mut Rejects,
    ) -> Result<Vec<Routed>, Error> {
        let mut by_tp: BTreeMap<TopicPartition, Vec<usize>> = BTreeMap::new();
        let mut keyless_pick: BTreeMap<String, u32> = BTreeMap::new();
        let mut refreshed = false;
        for (i, record) in records.iter().enumerate() {
            let topic = match self
                .topic
                .render(|name| record.headers().find(|(k, _)| *k == name).map(|(_, v)| v))
            {
                Ok(t) => t,
                Err(missing) => {
                    rejects.reject(i, format!("no header {missing:?}, which the topic names"));
                    continue;
                }
            };
            if !self.client.topics().contains_key(&topic) && !refreshed {
                refreshed = true;
                if let Err(e) = self.client.refresh_metadata(None) {
                    return Err(Error::retriable(format!(
                        "kafka-sink {}: {e}",
                        self.connector
                    )));
                }
            }
            let Some(count) = self.client.topics().get(&topic).map(|p| p.len() as u32) else {
                rejects.reject(i, format!("topic {topic:?} does not exist"));
                continue;
            };
            if count == 0 {
                rejects.reject(i, format!("topic {topic:?} has no partitions"));
                continue;
            }
            let partition = match (self.partitioner, record.key) {
                (Partitioner::Source, _) => origin.partition % count,
                (Partitioner::Key, Some(key)) => partition_for_key(key, count),
                (Partitioner::Key, None) => {
                    // One partition for a batch's keyless records, the next
                    // for the next batch's (as the Java client's sticky
                    // partitioner does per batch).
                    if let Some(&p) = keyless_pick.get(&topic) {
                        p
                    } else {
                        let next = self.keyless.entry(topic.clone()).or_insert(0);
                        let p = *next % count;
                        *next = next.wrapping_add(1);
                        keyless_pick.insert(topic.clone(), p);
                        p
                    }
                }
            };
            let tp = TopicPartition {
                topic,
                partition: partition as i32,
            };
            by_tp.entry(tp).or_default().push(i);
        }
        Ok(by_tp
            .into_iter()
            .map(|(tp, indexes)| Routed {
                tp,
                indexes,
                done: 0,
                one_at_a_time: false,
            })
            .collect())
    }
}

sluice_sdk::export_sink!(KafkaSink);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topic_templates_name_headers() {
        let t = Template::parse("cdc.{schema}.{table}").unwrap();
        let headers = [("schema", &b"public"[..]), ("table", &b"orders"[..])];
        let find = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        assert_eq!(t.render(find).unwrap(), "cdc.public.orders");
        assert_eq!(t.render(|_| None).unwrap_err(), "schema");
        assert!(Template::parse("a.{").is_err());
        assert!(Template::parse("a.{}").is_err());
        assert_eq!(
            Template::parse("plain").unwrap().render(|_| None).unwrap(),
            "plain"
        );
    }
}
