//! The Kafka connectors against tansu, a second broker written apart from
//! librdkafka's mock cluster (`sluice_test_servers::tansu`): transactions
//! with real commit and abort markers (the exactly-once sink) and SASL/SCRAM
//! users, which the mock cluster has neither of.
//!
//! What a `read_committed` consumer sees is read here natively with
//! `sluice_kafka`'s [`Committed`], which decides each transaction by the
//! markers in the log: tansu stops a `read_committed` fetch at the last
//! stable offset but sends no list of aborted transactions, so a consumer
//! that relies on that list (librdkafka, the Java client) would show it
//! aborted records.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::net::TcpStream;
use std::time::Duration;

use sluice_kafka::records::Batches;
use sluice_kafka::transaction::{Committed, OwnedRecord};
use sluice_kafka::{Client, Dial, FetchLimits, Isolation, OffsetSpec, TopicPartition};
use sluice_test_servers::tansu::Tansu;

use crate::common::*;

struct Native;

impl Dial for Native {
    type Stream = TcpStream;
    fn dial(&mut self, addr: &str) -> std::io::Result<TcpStream> {
        TcpStream::connect(addr)
    }
}

/// Every partition of `topic` to its end: the records a `read_committed`
/// consumer sees, by partition, and how many records the log holds in all
/// (aborted and open transactions' too).
fn read_committed(tansu: &Tansu, topic: &str) -> (Vec<(i32, OwnedRecord)>, usize) {
    let mut client = Client::new(Native, vec![tansu.addr()], "sluice-test-reader");
    client.refresh_metadata(Some(&[topic.to_owned()])).unwrap();
    let partitions: Vec<TopicPartition> = (0..client.topics()[topic].len())
        .map(|p| TopicPartition {
            topic: topic.to_owned(),
            partition: p as i32,
        })
        .collect();
    let ends = client
        .list_offsets(&partitions, OffsetSpec::Latest, Isolation::ReadUncommitted)
        .unwrap();
    let limits = FetchLimits {
        max_wait_ms: 100,
        ..FetchLimits::default()
    };
    let (mut seen, mut written) = (Vec::new(), 0);
    for tp in partitions {
        let mut reader = Committed::new();
        let mut records = Vec::new();
        let mut next = 0;
        while next < ends[&tp] {
            let fetched = client
                .fetch(&[(tp.clone(), next)], limits, Isolation::ReadUncommitted)
                .unwrap();
            for f in fetched {
                assert!(f.error.is_none(), "{:?}", f.error);
                for batch in Batches::new(&f.records) {
                    let batch = batch.unwrap();
                    if batch.next_offset() <= next {
                        continue;
                    }
                    if !batch.is_control() {
                        written += batch.count as usize;
                    }
                    reader.push(&batch, &mut records).unwrap();
                    next = batch.next_offset();
                }
            }
        }
        seen.extend(records.into_iter().map(|r| (tp.partition, r)));
    }
    (seen, written)
}

/// The `seq` of a datagen record's value.
fn seq(record: &OwnedRecord) -> u64 {
    let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
    let rest = value.strip_prefix("{\"seq\":").unwrap();
    rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
}

/// An exactly-once `kafka-sink` from the log topic `events` into `out`.
fn exactly_once_sink(tansu: &Tansu) -> Connector {
    sink("to-kafka", "kafka-sink", "events")
        .set("flush_interval_ms", 200)
        .config("bootstrap_servers", vec![tansu.addr()])
        .config("topic", "out")
        .config("exactly_once", true)
        .grant("net", vec![tansu.addr()])
}

#[test]
fn kafka_sink_exactly_once_killed_at_random_moments_commits_each_record_once() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    tansu.create_topic("out", 3, &[]);
    tansu.create_topic("sluice-sink-offsets", 1, &["cleanup.policy=compact"]);
    let n = 200_000;
    let dir = tempfile::tempdir().unwrap();
    // The records arrive over about 5 s while the host is killed.
    let manifest = manifest()
        .connector(gen_source(n, 40_000, 64))
        .connector(exactly_once_sink(&tansu).batch("max_records", 1000))
        .write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    let moments = (Duration::from_millis(300), Duration::from_millis(1200));
    let (mut host, _) = kill_at_random(host, dir.path(), &manifest, kill_seed(), 6, moments);
    // The last run ends by itself: the source is bounded, and the sink
    // drains the log and commits.
    let out = host.wait_for_exit(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", host.log());

    let (seen, written) = read_committed(&tansu, "out");
    eprintln!(
        "{} records committed, {written} written (the rest in aborted transactions)",
        seen.len()
    );
    assert_exactly_once(seen.iter().map(|(_, r)| seq(r)).collect(), n);
    // Keyless records go to one partition a batch: in each, seq ascends.
    for p in 0..3 {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, r)| seq(r))
            .collect();
        assert!(seqs.is_sorted(), "partition {p} out of order");
    }

    // A host that lost its own offsets resumes from those the transactions
    // stored in Kafka, as after a crash between the commit and the host's:
    // it writes nothing again. (A new data directory, whose log the source
    // fills with the same records again before the sink starts.)
    let again = tempfile::tempdir().unwrap();
    let refill = crate::common::manifest()
        .connector(gen_source(n, 0, 64))
        .write(again.path());
    let out = run(&["run", "--no-progress", refill.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lost = crate::common::manifest()
        .connector(gen_source(n, 0, 64))
        .connector(exactly_once_sink(&tansu))
        .write(again.path());
    let out = run(&["run", "--no-progress", lost.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (seen, _) = read_committed(&tansu, "out");
    assert_exactly_once(seen.iter().map(|(_, r)| seq(r)).collect(), n);
}

#[test]
fn kafka_sink_exactly_once_swapped_while_records_flow_commits_each_record_once() {
    let Some(tansu) = Tansu::start() else {
        return;
    };
    tansu.create_topic("out", 3, &[]);
    tansu.create_topic("sluice-sink-offsets", 1, &["cleanup.policy=compact"]);
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let definitions = manifest()
        .connector(gen_source(0, 20_000, 64))
        .connector(exactly_once_sink(&tansu).batch("max_records", 500))
        .write(dir.path());
    d.ok(&["create", definitions.to_str().unwrap()]);
    let taken = || d.status("to-kafka")["records_in"].as_u64().unwrap_or(0);
    wait_until("records flow", Duration::from_secs(60), || taken() > 10_000);
    // The same module again, twice: each swap drains the old instance
    // (its last transaction committed), opens the new one (which fences
    // the old transactional producer) and goes on from the offsets.
    let module = wasm("kafka-sink");
    for _ in 0..2 {
        let swapped = d.json(
            "connectors",
            &["update", "to-kafka", "--plugin", module.to_str().unwrap()],
        );
        assert_eq!(swapped["live"], true, "{swapped}");
        let at_swap = taken();
        wait_until(
            "the new instance takes records",
            Duration::from_secs(60),
            || taken() > at_swap + 10_000,
        );
    }
    let total = drain(&d, &["to-kafka"]);
    let status = d.status("to-kafka");
    assert_eq!(status["last_swap"]["ok"], true, "{status}");
    assert_eq!(status["state"], "running", "{status}");

    let (seen, _) = read_committed(&tansu, "out");
    assert_exactly_once(seen.iter().map(|(_, r)| seq(r)).collect(), total);
}

/// The password tansu knows for `sluice`.
const PASSWORD: &str = "the-Right-password-7";

#[test]
#[ignore = "needs tansu built with SQLite storage: `just tansu` builds it, `just test-tansu` runs this"]
fn kafka_connectors_log_in_with_sasl_scram_and_a_wrong_password_fails_at_open_unshown() {
    let Some(tansu) =
        Tansu::start_with_users(&[("sluice", PASSWORD, "scram512")], &[("logins", 1)])
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sasl = |secret: &str| {
        let mut t = toml::Table::new();
        t.insert("mechanism".into(), "SCRAM-SHA-512".into());
        t.insert("username".into(), "sluice".into());
        t.insert("password".into(), format!("${{secret:{secret}}}").into());
        toml::Value::Table(t)
    };
    std::fs::write(dir.path().join("right"), PASSWORD).unwrap();
    let wrong = "not-the-password-42";
    std::fs::write(dir.path().join("wrong"), wrong).unwrap();

    // The right password: records into the topic and back out of it.
    let write = manifest()
        .connector(gen_source(1000, 0, 32))
        .connector(
            sink("to-kafka", "kafka-sink", "events")
                .config("bootstrap_servers", vec![tansu.addr()])
                .config("topic", "logins")
                .config("sasl", sasl("right"))
                .grant("net", vec![tansu.addr()])
                .secret("right", "file", "right"),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", write.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let read = manifest()
        .connector(
            source("from-kafka", "kafka-source", "back")
                .config("bootstrap_servers", vec![tansu.addr()])
                .config("topics", vec!["logins"])
                .config("bounded", true)
                .config("sasl", sasl("right"))
                .grant("net", vec![tansu.addr()])
                .secret("right", "file", "right"),
        )
        .connector(
            sink("files", "file-sink", "back")
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", read.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(seqs(&dir.path().join("out")), 1000);

    // The wrong one: refused at open, naming the broker and the mechanism.
    for c in [
        source("from-kafka", "kafka-source", "back")
            .config("topics", vec!["logins"])
            .config("bounded", true),
        sink("to-kafka", "kafka-sink", "events").config("topic", "logins"),
    ] {
        let refused = manifest()
            .connector(gen_source(10, 0, 32))
            .connector(
                c.config("bootstrap_servers", vec![tansu.addr()])
                    .config("sasl", sasl("wrong"))
                    .grant("net", vec![tansu.addr()])
                    .secret("wrong", "file", "wrong"),
            )
            .write(dir.path());
        let out = run(&["run", "--no-progress", refused.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0));
        let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        for expected in [
            format!("broker {}", tansu.addr()),
            "SASL SCRAM-SHA-512 login as \"sluice\" refused".to_owned(),
            "open".to_owned(),
        ] {
            assert!(all.contains(&expected), "expected {expected:?} in:\n{all}");
        }
        assert!(!all.contains(wrong), "the password shows:\n{all}");
        assert!(!all.contains(PASSWORD), "the password shows:\n{all}");
    }
}
