//! The Kafka connectors against a real Kafka-protocol cluster of the
//! test's own (librdkafka's mock cluster, in this process, on 127.0.0.1
//! ports of its own), with a third-party client (Confluent's Python client,
//! `tests/peers/kafka_client.py`) writing and reading the same topics.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_test_servers::kafka::{MockKafka, confluent_kafka};

use crate::common::*;

/// The third-party client, or `None` (the test skips) where it is not
/// installed and `CI` is unset.
fn python() -> Option<std::path::PathBuf> {
    let found = confluent_kafka();
    sluice_test_servers::required(
        "Confluent's Python Kafka client",
        found.as_ref().map(|_| ()).map_err(Clone::clone),
    )
    .then(|| found.unwrap())
}

fn client_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/peers/kafka_client.py")
}

/// Produces records `from..from+count` with the Python client (see
/// `kafka_client.py`): record i in partition i % partitions.
fn produce(python: &Path, kafka: &MockKafka, topic: &str, from: u64, count: u64, partitions: u32) {
    let out = Command::new(python)
        .arg(client_script())
        .args(["produce", &kafka.bootstrap(), topic])
        .args([count.to_string(), partitions.to_string()])
        .args(["--from", &from.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("produced"),
        "the Python client produced: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A `kafka-source` reading `topics` from `kafka` into the log topic `in`.
fn kafka_source(kafka: &MockKafka, topics: &[&str]) -> Connector {
    source("kafka", "kafka-source", "in")
        .config("bootstrap_servers", kafka.addrs())
        .config("topics", topics.to_vec())
        .grant("net", kafka.addrs())
}

/// A `file-sink` writing the log topic `topic` as JSON lines into `out/`.
fn json_files(topic: &str) -> Connector {
    sink("files", "file-sink", topic)
        .set("flush_interval_ms", 100)
        .config("path", "/out")
        .config("format", "json")
        .files("out", "/out", "read-write")
}

/// One record as the file-sink wrote it: (i, key, value, headers,
/// timestamp), `i` from its `i` header.
type Line = (
    u64,
    Option<String>,
    String,
    Vec<(String, String)>,
    Option<i64>,
);

fn lines(dir: &Path) -> Vec<Line> {
    output_lines(&dir.join("out"))
        .iter()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let headers: Vec<(String, String)> = r["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let i = headers
                .iter()
                .find(|(k, _)| k == "i")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or_else(|| panic!("no i header: {line}"));
            (
                i,
                r["key"].as_str().map(str::to_owned),
                r["value"].as_str().unwrap().to_owned(),
                headers,
                r["timestamp"].as_i64(),
            )
        })
        .collect()
}

/// Asserts the log holds records `0..n` each once, and each Kafka
/// partition's (`i % partitions`) in the order Kafka has them.
fn assert_each_once_in_partition_order(got: &[Line], n: u64, partitions: u64) {
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (i, ..) in got {
        if let Some(&before) = last.get(&(i % partitions)) {
            assert!(
                *i > before,
                "record {i} after {before} in partition {}",
                i % partitions
            );
        }
        last.insert(i % partitions, *i);
    }
    let mut seen: Vec<u64> = got.iter().map(|l| l.0).collect();
    seen.sort_unstable();
    let total = seen.len();
    seen.dedup();
    assert_eq!(total, seen.len(), "{} records twice", total - seen.len());
    assert_eq!(seen.len() as u64, n, "as many records as were produced");
    assert_eq!(seen.last().copied(), n.checked_sub(1));
}

#[test]
fn kafka_source_reads_what_a_third_party_client_wrote_key_value_headers_and_timestamp_unchanged() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(3);
    kafka.create_topic("orders", 6, 3);
    produce(&python, &kafka, "orders", 0, 20_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .broker("partitions", 3)
        .connector(kafka_source(&kafka, &["orders"]).set("parallelism", 3))
        .connector(json_files("in"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("every record is in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 20_000
    });
    // More, while it runs.
    produce(&python, &kafka, "orders", 20_000, 10_000, 6);
    wait_until("the later records are in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 30_000
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());

    let got = lines(dir.path());
    assert_each_once_in_partition_order(&got, 30_000, 6);
    for (i, key, value, headers, timestamp) in &got {
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_str()));
        assert_eq!(*value, format!("v{i}"));
        assert_eq!(
            *headers,
            vec![
                ("i".to_owned(), i.to_string()),
                ("src".to_owned(), "python".to_owned())
            ]
        );
        assert_eq!(*timestamp, Some(1_700_000_000_000 + *i as i64));
    }
}

#[test]
fn kafka_source_killed_at_random_moments_stores_each_of_a_million_records_once_in_partition_order()
{
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(3);
    kafka.create_topic("events", 6, 3);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .broker("partitions", 3)
        .connector(
            kafka_source(&kafka, &["events"])
                .set("parallelism", 3)
                .batch("max_records", 2000),
        )
        .connector(json_files("in"))
        .write(dir.path());
    // The records arrive while the host is killed and started again.
    let bootstrap = kafka.bootstrap();
    let producer = std::thread::spawn({
        let python = python.clone();
        move || {
            let out = Command::new(python)
                .arg(client_script())
                .args(["produce", &bootstrap, "events", "1000000", "6"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    let mut host = Host::run(dir.path(), &manifest);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill seed {seed}");
    let mut rng = seed | 1;
    for i in 0..8 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(300 + rng % 1200));
        host.kill();
        host = Host::start(
            dir.path(),
            &format!("run-{i}"),
            &["run", "--no-progress", manifest.to_str().unwrap()],
        );
    }
    producer.join().unwrap();
    wait_until("every record is in", Duration::from_secs(300), || {
        output_lines(&dir.path().join("out")).len() >= 1_000_000
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    assert_each_once_in_partition_order(&lines(dir.path()), 1_000_000, 6);
}

#[test]
fn kafka_source_waits_out_a_cluster_that_goes_away_says_so_once_and_loses_nothing() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    kafka.create_topic("t", 2, 1);
    produce(&python, &kafka, "t", 0, 1_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(kafka_source(&kafka, &["t"]))
        .connector(json_files("in"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("the first records are in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 1_000
    });
    kafka.down();
    std::thread::sleep(Duration::from_secs(3));
    kafka.up();
    produce(&python, &kafka, "t", 1_000, 1_000, 2);
    wait_until("the later records are in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 2_000
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    assert_each_once_in_partition_order(&lines(dir.path()), 2_000, 2);
    let log = host.log();
    assert_eq!(log.matches("is away").count(), 1, "{log}");
    assert_eq!(log.matches("is back").count(), 1, "{log}");
}

#[test]
fn kafka_source_without_a_net_grant_for_the_brokers_is_refused_at_open() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("t", 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            source("kafka", "kafka-source", "in")
                .config("bootstrap_servers", kafka.addrs())
                .config("topics", vec!["t"])
                .restart("attempts", 0),
        )
        .connector(json_files("in"))
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&kafka.addrs()[0]) && err.contains("grant"),
        "{err}"
    );
}
