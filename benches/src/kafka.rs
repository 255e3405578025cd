//! `kafka-source` against librdkafka's mock cluster (in the bench's own
//! process, on a 127.0.0.1 port of its own), beside librdkafka's own
//! consumer reading the same records from the same cluster in the same run.
//! The records are written first by librdkafka's producer, whose rate is
//! the native figure a Kafka sink is measured against.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_test_servers::kafka::MockKafka;

use crate::report::{Figure, Report, Target, say};

/// Each case: record size, records, partitions. Many partitions: the mock
/// cluster keeps at most 5 MiB of each (it drops the oldest beyond that),
/// and the records must fit. Enough records for a second or more of
/// reading: at 80,000 of 1 KiB (a fifth of a second) the figures moved by
/// a third from run to run.
const CASES: [(usize, u64, i32); 2] = [(100, 800_000, 24), (1024, 400_000, 128)];

/// Every figure of the section.
pub fn section(
    report: &mut Report,
    bin: &Path,
    work: &Path,
    cache: &Path,
    only: Option<u32>,
) -> anyhow::Result<()> {
    for (payload, count, partitions) in CASES {
        if only.is_some_and(|p| p as usize != payload) {
            continue;
        }
        say(format!(
            "\nkafka: {count} records of {payload} B in a topic of {partitions} partitions on librdkafka's mock cluster; kafka-source (one instance, bounded) -> log -> blackhole beside librdkafka's consumer"
        ));
        let kafka = MockKafka::start(1);
        kafka.create_topic("bench", partitions, 1);
        let produced = produce_natively(&kafka, payload, count)?;
        report.add(
            Figure::new(
                "kafka",
                format!("native: librdkafka producer, {payload} B"),
                produced,
                "rec/s",
            )
            .aside("acks=all, lz4 off, linger 5 ms"),
        );
        let consumed = consume_natively(&kafka, count, partitions)?;
        report.add(
            Figure::new(
                "kafka",
                format!("native: librdkafka consumer, {payload} B"),
                consumed,
                "rec/s",
            )
            .aside("one consumer, all partitions"),
        );
        let source = source_run(&kafka, bin, work, cache, count)?;
        report.add(
            Figure::new(
                "kafka",
                format!("kafka-source -> log -> blackhole, {payload} B"),
                source,
                "rec/s",
            )
            .aside(format!("{:.2} of librdkafka's consumer", source / consumed))
            .target(Some(Target::at_least(0.7 * consumed))),
        );
        // Each run into a topic of its own: the mock cluster's first
        // writes to a partition cost it page faults that writes into one
        // whose oldest batches it drops do not (an exactly-once run into
        // the same topic went 1.0-1.6 times as fast as the run before it).
        kafka.create_topic("sink-bench", partitions, 1);
        let sink = sink_run(&kafka, bin, work, cache, payload, count, false)?;
        report.add(
            Figure::new(
                "kafka",
                format!("datagen -> log -> kafka-sink, {payload} B"),
                sink,
                "rec/s",
            )
            .aside(format!("{:.2} of librdkafka's producer", sink / produced))
            .target(Some(Target::at_least(0.7 * produced))),
        );
        // What exactly once costs: a transaction per flush (the host's
        // default interval), its offsets records and the coordinator's
        // round trips. The mock cluster speaks the transaction requests
        // but writes no markers, which costs a real broker a little more.
        kafka.create_topic("sluice-sink-offsets", 1, 1);
        kafka.create_topic("sink-bench-exactly-once", partitions, 1);
        let exactly_once = sink_run(&kafka, bin, work, cache, payload, count, true)?;
        report.add(
            Figure::new(
                "kafka",
                format!("datagen -> log -> kafka-sink exactly_once, {payload} B"),
                exactly_once,
                "rec/s",
            )
            .aside(format!(
                "{:.2} of the same sink without, {:.2} of librdkafka's producer",
                exactly_once / sink,
                exactly_once / produced
            )),
        );
    }
    Ok(())
}

/// `datagen` (`count` records of `payload` bytes, no key) → log →
/// `kafka-sink` into `sink-bench` (`sink-bench-exactly-once` with
/// transactions, for `exactly_once`):
/// the sink's records/s from its start to its last acknowledged batch, as
/// the run's summary says.
fn sink_run(
    kafka: &MockKafka,
    bin: &Path,
    work: &Path,
    cache: &Path,
    payload: usize,
    count: u64,
    exactly_once: bool,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let brokers = format!("{:?}", kafka.addrs());
    let topic = if exactly_once {
        "sink-bench-exactly-once"
    } else {
        "sink-bench"
    };
    let manifest = crate::files::datagen_into(
        count,
        payload as u32,
        &format!(
            r#"[[connector]]
name = "to-kafka"
kind = "sink"
plugin = "kafka-sink"
topic = "bench"
[connector.config]
bootstrap_servers = {brokers}
topic = "{topic}"
exactly_once = {exactly_once}
[connector.grants]
net = {brokers}
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, "to-kafka")
}

/// Writes `count` records of `payload` bytes with librdkafka's producer;
/// records/s from the first send to the last acknowledgement.
fn produce_natively(kafka: &MockKafka, payload: usize, count: u64) -> anyhow::Result<f64> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let value = vec![b'x'; payload];
    let started = Instant::now();
    for i in 0..count {
        let key = i.to_string();
        let mut record = BaseRecord::to("bench").key(&key).payload(&value);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// Reads every record with librdkafka's consumer (one consumer, every
/// partition assigned from the start); records/s from the first record to
/// the last (its start, a few hundred milliseconds, left out).
fn consume_natively(kafka: &MockKafka, count: u64, partitions: i32) -> anyhow::Result<f64> {
    let mut started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "bench-native")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset("bench", p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut seen = 0u64;
    while seen < count {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => {
                if seen == 0 {
                    started = Instant::now();
                }
                seen += 1;
            }
            Some(Err(e)) => bail!("librdkafka's consumer: {e}"),
            None => {
                bail!("librdkafka's consumer: {seen} of {count} records, then nothing for 10 s")
            }
        }
    }
    Ok((count - 1) as f64 / started.elapsed().as_secs_f64())
}

/// `kafka-source` (bounded: it finishes at the end of the topic) → log →
/// `blackhole`: records/s from the first record's arrival at the sink to
/// the last's (the start of the run, a few hundred milliseconds, left out,
/// as for librdkafka's consumer).
fn source_run(
    kafka: &MockKafka,
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
) -> anyhow::Result<f64> {
    let brokers = format!("{:?}", kafka.addrs());
    let source = format!(
        r#"[[connector]]
name = "kafka"
kind = "source"
plugin = "kafka-source"
topic = "bench"
[connector.config]
bootstrap_servers = {brokers}
topics = ["bench"]
bounded = true
[connector.grants]
net = {brokers}
"#
    );
    let sink = crate::files::into_blackhole(bin, work, cache, &source, count)?;
    Ok(crate::arrival_rates(&sink).0)
}
