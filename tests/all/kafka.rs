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
    // The records arrive while the host is killed and started again,
    // compressed: the mock cluster keeps 5 MiB a partition, and a million
    // plain records are more.
    let bootstrap = kafka.bootstrap();
    let producer = std::thread::spawn({
        let python = python.clone();
        move || {
            let out = Command::new(python)
                .arg(client_script())
                .args(["produce", &bootstrap, "events", "1000000", "6"])
                .args(["--compression", "lz4"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    let host = Host::run(dir.path(), &manifest);
    let moments = (Duration::from_millis(300), Duration::from_millis(1200));
    let (mut host, _) = kill_at_random(host, dir.path(), &manifest, kill_seed(), 8, moments);
    producer.join().unwrap();
    wait_until("every record is in", Duration::from_secs(300), || {
        output_lines(&dir.path().join("out")).len() >= 1_000_000
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    assert_each_once_in_partition_order(&lines(dir.path()), 1_000_000, 6);
    let logs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        !logs.contains("no longer holds"),
        "the cluster dropped records before they were read"
    );
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
fn kafka_source_reads_the_topics_a_pattern_names_and_starts_at_the_latest_offset_when_asked() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    for topic in ["orders.eu", "orders.us", "other", "xorders.eu"] {
        kafka.create_topic(topic, 2, 1);
    }
    produce(&python, &kafka, "orders.eu", 0, 100, 2);
    produce(&python, &kafka, "orders.us", 100, 100, 2);
    produce(&python, &kafka, "other", 200, 100, 2);
    produce(&python, &kafka, "xorders.eu", 300, 100, 2);

    // The pattern matches whole names: orders.eu and orders.us only.
    let dir = tempfile::tempdir().unwrap();
    let by_pattern = manifest()
        .connector(
            source("kafka", "kafka-source", "in")
                .config("bootstrap_servers", kafka.addrs())
                .config("topic_pattern", "orders\\..*")
                .config("bounded", true)
                .grant("net", kafka.addrs()),
        )
        .connector(json_files("in"))
        .write(dir.path());
    run_finished(&by_pattern);
    let mut got: Vec<u64> = lines(dir.path()).iter().map(|l| l.0).collect();
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>());

    // `start = "latest"`: what was there before the source began is not read.
    let dir = tempfile::tempdir().unwrap();
    let from_latest = manifest()
        .connector(kafka_source(&kafka, &["other"]).config("start", "latest"))
        .connector(json_files("in"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &from_latest);
    host.wait_for_log("other/1 from offset", Duration::from_secs(30));
    produce(&python, &kafka, "other", 1_000, 50, 2);
    wait_until("the new records are in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 50
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    let mut got: Vec<u64> = lines(dir.path()).iter().map(|l| l.0).collect();
    got.sort_unstable();
    assert_eq!(got, (1_000..1_050).collect::<Vec<_>>());
}

#[test]
fn kafka_source_whose_offset_retention_deleted_starts_again_at_the_earliest_and_says_so() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    kafka.create_topic("t", 1, 1);
    produce(&python, &kafka, "t", 0, 100, 1);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(kafka_source(&kafka, &["t"]).config("bounded", true))
        .connector(json_files("in"))
        .write(dir.path());
    run_finished(&manifest);
    assert_eq!(lines(dir.path()).len(), 100);
    // 8 MB more: the mock cluster keeps the last 5 MiB of a partition, so
    // offset 100, where the source goes on, is deleted.
    let out = Command::new(&python)
        .arg(client_script())
        .args(["produce", &kafka.bootstrap(), "t", "8000", "1"])
        .args(["--from", "100", "--value-bytes", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let said = stderr(&run_finished(&manifest));
    assert!(
        said.contains("t/0 no longer holds offset 100 (retention deleted it)"),
        "{said}"
    );
    let got: Vec<u64> = lines(dir.path()).iter().map(|l| l.0).collect();
    assert_eq!(got[..100], (0..100).collect::<Vec<_>>());
    let rest = &got[100..];
    let first = rest[0];
    assert!(
        first > 100,
        "read from {first}, which the cluster no longer has"
    );
    assert_eq!(
        rest,
        (first..8_100).collect::<Vec<_>>(),
        "from the earliest on, each once"
    );
}

#[test]
fn kafka_sink_refuses_at_open_a_topic_or_an_offsets_topic_that_does_not_exist_saying_so() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("out", 1, 1);
    let dir = tempfile::tempdir().unwrap();
    let refused = |sink: Connector| {
        let manifest = manifest()
            .connector(gen_source(10, 0, 16))
            .connector(
                sink.config("bootstrap_servers", kafka.addrs())
                    .grant("net", kafka.addrs())
                    .restart("attempts", 0),
            )
            .write(dir.path());
        let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0));
        stderr(&out)
    };
    let said = refused(sink("to-kafka", "kafka-sink", "events").config("topic", "nope"));
    assert!(
        said.contains("topic \"nope\" does not exist (make it first; the sink does not)"),
        "{said}"
    );
    let said = refused(
        sink("to-kafka", "kafka-sink", "events")
            .config("topic", "out")
            .config("exactly_once", true),
    );
    assert!(
        said.contains("the offsets topic \"sluice-sink-offsets\" does not exist"),
        "{said}"
    );
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

/// What the Python client read from `topic` (`partitions` of them), in
/// each partition's order: (partition, i, key, value, headers, timestamp).
type Consumed = (
    i32,
    u64,
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
    i64,
);

fn consume(
    python: &Path,
    kafka: &MockKafka,
    topic: &str,
    partitions: u32,
    count: u64,
) -> Vec<Consumed> {
    let out = Command::new(python)
        .arg(client_script())
        .args(["consume", &kafka.bootstrap(), topic])
        .args([partitions.to_string(), count.to_string()])
        .args(["--timeout", "20"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let headers: Vec<(String, String)> = r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    (
                        h[0].as_str().unwrap().to_owned(),
                        h[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let i = headers
                .iter()
                .find(|(k, _)| k == "i")
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(u64::MAX);
            (
                r["partition"].as_i64().unwrap() as i32,
                i,
                r["key"].as_str().map(str::to_owned),
                r["value"].as_str().map(str::to_owned),
                headers,
                r["timestamp"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Python client → `in` → kafka-source → log → kafka-sink → `out`: the
/// Python client reads back what `out` holds.
fn round_trip(kafka: &MockKafka, dir: &Path, sink: impl FnOnce(Connector) -> Connector) -> Host {
    let manifest = manifest()
        .broker("partitions", 2)
        .connector(kafka_source(kafka, &["in"]).set("parallelism", 2))
        .connector(sink(
            crate::common::sink("to-kafka", "kafka-sink", "in")
                .config("bootstrap_servers", kafka.addrs())
                .config("topic", "out")
                .grant("net", kafka.addrs()),
        ))
        .write(dir);
    Host::run(dir, &manifest)
}

#[test]
fn kafka_sink_writes_each_record_to_the_partition_the_java_client_picks_for_its_key() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(3);
    kafka.create_topic("in", 6, 3);
    kafka.create_topic("out", 7, 3);
    produce(&python, &kafka, "in", 0, 20_000, 6);
    let dir = tempfile::tempdir().unwrap();
    let mut host = round_trip(&kafka, dir.path(), |s| s);
    let got = consume(&python, &kafka, "out", 7, 20_000);
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());

    let mut seen: Vec<u64> = got.iter().map(|c| c.1).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(got.len(), 20_000, "every record once");
    assert_eq!(seen.len(), 20_000, "every record once");
    for (partition, i, key, value, headers, timestamp) in &got {
        let key = key.as_deref().unwrap();
        assert_eq!(key, format!("k{i}"));
        assert_eq!(
            *partition as u32,
            sluice_kafka::partitioner::partition_for_key(key.as_bytes(), 7),
            "record {i}"
        );
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_str()));
        assert_eq!(
            *headers,
            vec![
                ("i".to_owned(), i.to_string()),
                ("src".to_owned(), "python".to_owned())
            ]
        );
        assert_eq!(*timestamp, 1_700_000_000_000 + *i as i64);
    }
    // Within a key's partition, records keep the order they had in theirs.
    let mut last: BTreeMap<(i32, u64), u64> = BTreeMap::new();
    for (partition, i, ..) in &got {
        let from = (*partition, i % 6);
        if let Some(before) = last.insert(from, *i) {
            assert!(*i > before, "{i} after {before}");
        }
    }
}

#[test]
fn kafka_sink_retries_what_the_brokers_refuse_for_a_while_and_waits_out_a_cluster_that_goes_away() {
    use sluice_test_servers::kafka::{ApiKey, ErrorCode};
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    kafka.create_topic("in", 2, 1);
    kafka.create_topic("out", 3, 1);
    // Refused before they are stored: the sink must send them again.
    kafka.fail_requests(
        ApiKey::Produce,
        &[
            ErrorCode::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ErrorCode::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            ErrorCode::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            ErrorCode::RD_KAFKA_RESP_ERR__TRANSPORT,
        ],
    );
    produce(&python, &kafka, "in", 0, 5_000, 2);
    let dir = tempfile::tempdir().unwrap();
    let mut host = round_trip(&kafka, dir.path(), |s| s);
    let first = consume(&python, &kafka, "out", 3, 5_000);
    assert_eq!(first.len(), 5_000);
    kafka.down();
    produce_later(&python, &kafka, "in", 5_000, 5_000, 2);
    let got = consume(&python, &kafka, "out", 3, 10_000);
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    let mut seen: Vec<u64> = got.iter().map(|c| c.1).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(
        (got.len(), seen.len()),
        (10_000, 10_000),
        "every record once"
    );
    let log = host.log();
    assert!(
        log.contains("kafka-sink to-kafka") && log.contains("is away"),
        "{log}"
    );
    assert_eq!(
        log.matches("is away").count(),
        log.matches("is back").count(),
        "{log}"
    );
}

/// Brings the cluster back after a few seconds and then produces, from a
/// thread of its own, while the test waits.
fn produce_later(
    python: &Path,
    kafka: &MockKafka,
    topic: &str,
    from: u64,
    count: u64,
    partitions: u32,
) {
    std::thread::sleep(Duration::from_secs(3));
    kafka.up();
    produce(python, kafka, topic, from, count, partitions);
}

#[test]
fn kafka_sink_names_each_records_topic_from_its_headers_and_dead_letters_a_record_without_them() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    for t in ["in", "by-src-python"] {
        kafka.create_topic(t, 1, 1);
    }
    produce(&python, &kafka, "in", 0, 100, 1);
    // Records 100..150 have no `src` header.
    let out = Command::new(&python)
        .arg(client_script())
        .args([
            "produce",
            &kafka.bootstrap(),
            "in",
            "50",
            "1",
            "--from",
            "100",
            "--no-src",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(kafka_source(&kafka, &["in"]))
        .connector(
            sink("to-kafka", "kafka-sink", "in")
                .config("bootstrap_servers", kafka.addrs())
                .config("topic", "by-src-{src}")
                .grant("net", kafka.addrs()),
        )
        .connector(dead_letters("to-kafka.dlq"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let got = consume(&python, &kafka, "by-src-python", 1, 100);
    wait_until("the dead letters are in", Duration::from_secs(30), || {
        output_lines(&dir.path().join("dlq")).len() >= 50
    });
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    let ids: Vec<u64> = got.iter().map(|c| c.1).collect();
    assert_eq!(ids, (0..100).collect::<Vec<_>>());
    let dead = output_lines(&dir.path().join("dlq"));
    assert_eq!(dead.len(), 50);
    assert!(dead[0].contains("no header \\\"src\\\""), "{}", dead[0]);
}

/// What the Python client says `group` has committed for `topic`'s
/// partitions.
fn group_offsets(
    python: &Path,
    kafka: &MockKafka,
    group: &str,
    topic: &str,
    partitions: u32,
) -> Vec<i64> {
    let out = Command::new(python)
        .arg(client_script())
        .args([
            "committed",
            &kafka.bootstrap(),
            group,
            topic,
            &partitions.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect()
}

#[test]
fn kafka_source_takes_over_from_a_consumer_groups_offsets_and_commits_what_the_log_holds_to_it() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    kafka.create_topic("t", 2, 1);
    produce(&python, &kafka, "t", 0, 1_000, 2);
    // A Kafka consumer of group `g` had read 100 of partition 0 and 200 of 1.
    let out = Command::new(&python)
        .arg(client_script())
        .args(["commit", &kafka.bootstrap(), "g", "t", "0:100", "1:200"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(group_offsets(&python, &kafka, "g", "t", 2), [100, 200]);

    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            kafka_source(&kafka, &["t"])
                .config("group_id", "g")
                .config("group_commit_interval_ms", 100),
        )
        .connector(json_files("in"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("the rest is in", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 700
    });
    wait_until(
        "the group's offsets are the log's",
        Duration::from_secs(30),
        || group_offsets(&python, &kafka, "g", "t", 2) == [500, 500],
    );
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    let log = host.log();
    assert!(
        log.contains("reading t/0 from offset 100, group g's"),
        "{log}"
    );
    let mut got: Vec<u64> = lines(dir.path()).iter().map(|l| l.0).collect();
    got.sort_unstable();
    // Partition 0 holds the even records, from its offset 100 (record
    // 200); partition 1 the odd, from its offset 200 (record 401).
    let want: Vec<u64> = (0..1_000)
        .filter(|i| if i % 2 == 0 { *i >= 200 } else { *i >= 401 })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn the_kafka_example_does_what_its_readme_says() {
    let Some(python) = python() else { return };
    let kafka = MockKafka::start(1);
    kafka.create_topic("orders", 3, 1);
    kafka.create_topic("generated", 3, 1);
    produce(&python, &kafka, "orders", 0, 100, 3);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kafka/sluice.toml");
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:9092", &kafka.addrs()[0]);
    let manifest = dir.path().join("sluice.toml");
    std::fs::write(&manifest, text).unwrap();
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("orders are in files", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 100
    });
    let generated = consume(&python, &kafka, "generated", 3, 1_000);
    produce(&python, &kafka, "orders", 100, 50, 3);
    wait_until("later orders are in files", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 150
    });
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    assert_eq!(generated.len(), 1_000);
    let first: serde_json::Value =
        serde_json::from_str(&output_lines(&dir.path().join("out"))[0]).unwrap();
    assert_eq!(first["topic"], "orders");
    assert_eq!(first["headers"]["src"], "python");
    assert_each_once_in_partition_order(&lines(dir.path()), 150, 3);
}
