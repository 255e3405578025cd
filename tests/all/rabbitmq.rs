//! The RabbitMQ connectors against a real RabbitMQ (Debian's
//! `rabbitmq-server` 3.10) started by the test (`sluice-test-servers`):
//! its own directory and ports, killed at the end; the test's own
//! publishing and reading by a third-party client (pika,
//! `tests/peers/amqp_client.py`). `rabbitmq-source` with
//! `dedupe = "message-id"` claims exactly once, and is checked for it;
//! `rabbitmq-sink` claims at least once with one `message_id` a record:
//! the tests count the repeats, and check the ids tell them.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use sluice_test_servers::rabbitmq::RabbitMq;

use crate::common::*;

/// A `rabbitmq-source` named `rsrc` consuming `queue` into `events`.
fn rabbitmq_source(rmq: &RabbitMq, queue: &str) -> Connector {
    source("rsrc", "rabbitmq-source", "events")
        .config("addr", rmq.addr().as_str())
        .config("queue", queue)
        .config("user", rmq.user())
        .config("password", rmq.password())
        .grant("net", vec![rmq.addr().as_str()])
}

/// A `rabbitmq-sink` named `rsink` publishing `events` with `routing_key`
/// through the default exchange.
fn rabbitmq_sink(rmq: &RabbitMq, routing_key: &str) -> Connector {
    sink("rsink", "rabbitmq-sink", "events")
        .config("addr", rmq.addr().as_str())
        .config("routing_key", routing_key)
        .config("user", rmq.user())
        .config("password", rmq.password())
        .grant("net", vec![rmq.addr().as_str()])
}

/// What `amqp_client.py drain` printed: each message's id and datagen
/// `seq`.
fn drained(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .map(|l| {
            let (id, body) = l.split_once('\t').unwrap();
            let rest = body.strip_prefix("{\"seq\":").unwrap();
            let seq = rest[..rest.find([',', '}']).unwrap()].parse().unwrap();
            (id.to_owned(), seq)
        })
        .collect()
}

#[test]
fn a_rabbitmq_source_with_message_ids_killed_at_random_moments_stores_each_exactly_once() {
    const RECORDS: u64 = 200_000;
    let Some(rmq) = RabbitMq::start() else {
        return;
    };
    let records = RECORDS.to_string();
    rmq.client("publish", &["in", &records, "--ids"]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            rabbitmq_source(&rmq, "in")
                .config("dedupe", "message-id")
                .config("end_after_idle_ms", 3000)
                .batch("max_records", 500),
        )
        .connector(files_sink())
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 300..1000);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
    // A producer that publishes the last 1,000 again (as one retrying
    // after a lost connection does): a run started after them knows their
    // ids from the position it resumes at, and stores none of them.
    let from = (RECORDS - 1000).to_string();
    rmq.client("publish", &["in", "1000", "--from", &from, "--ids"]);
    run_finished(&manifest);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
    // … and acknowledged them all.
    assert_eq!(rmq.client("drain", &["in", "--idle", "0.5"]), "");
}

#[test]
fn a_rabbitmq_sink_killed_at_random_moments_publishes_each_record_at_least_once_with_one_id() {
    const RECORDS: u64 = 200_000;
    let Some(rmq) = RabbitMq::start() else {
        return;
    };
    rmq.client("declare", &["out"]);
    // 20,000 records/s: the 200,000 take ten seconds of running, so the
    // kills land while records flow.
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(gen_source(RECORDS, 20_000, 64))
        // Committed every 200 ms: most runs last under the default 1 s,
        // and each would send all the log again.
        .connector(rabbitmq_sink(&rmq, "out").set("flush_interval_ms", 200))
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 300..1000);
    let messages = drained(&rmq.client("drain", &["out"]));
    let seqs: Vec<u64> = messages.iter().map(|(_, s)| *s).collect();
    let duplicates = assert_at_least_once(seqs, RECORDS);
    // A repeat carries its first's id: a consumer keeping one message an
    // id keeps each record once.
    let mut by_id: HashMap<&str, u64> = HashMap::new();
    for (id, seq) in &messages {
        assert!(id.starts_with("events/"), "{id}");
        assert_eq!(
            *by_id.entry(id).or_insert(*seq),
            *seq,
            "{id} names two records"
        );
    }
    assert_eq!(by_id.len() as u64, RECORDS);
    eprintln!("rabbitmq-sink: {duplicates} duplicates of {RECORDS} after 10 kills");
}

#[test]
fn through_a_rabbitmq_restart_the_relay_pauses_each_side_once_and_loses_nothing() {
    const RECORDS: u64 = 60_000;
    let Some(mut rmq) = RabbitMq::start() else {
        return;
    };
    rmq.client("declare", &["relay"]);
    let dir = tempfile::tempdir().unwrap();
    // datagen → rabbitmq-sink → RabbitMQ queue → rabbitmq-source →
    // file-sink. The source drops the sink's repeats by their ids.
    let manifest = manifest()
        .connector(gen_source(RECORDS, 20_000, 64))
        .connector(rabbitmq_sink(&rmq, "relay"))
        .connector(
            rabbitmq_source(&rmq, "relay")
                .set("topic", "relayed")
                .config("dedupe", "message-id")
                .config("end_after_idle_ms", 8000),
        )
        .connector(files_sink().set("topic", "relayed"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("records flow", Duration::from_secs(30), || {
        seqs(&out).len() > 1000
    });
    rmq.stop();
    std::thread::sleep(Duration::from_millis(1500));
    rmq.resume();
    let ended = host.wait_for_exit(Duration::from_secs(180));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(0), "{log}");
    let duplicates = assert_at_least_once(seqs(&out), RECORDS);
    eprintln!("rabbitmq relay: {duplicates} duplicates of {RECORDS} across a broker restart");
    assert_each_away_once_then_back(&log, &["rabbitmq-sink", "rabbitmq-source"], &rmq.addr());
}

#[test]
fn a_rabbitmq_broker_that_stops_answering_is_gone_after_two_heartbeats_and_nothing_is_lost() {
    const RECORDS: u64 = 20_000;
    let Some(rmq) = RabbitMq::start() else {
        return;
    };
    rmq.client("declare", &["frozen"]);
    let dir = tempfile::tempdir().unwrap();
    // Heartbeats every second: a broker silent for two is gone.
    let manifest = manifest()
        .connector(gen_source(RECORDS, 4_000, 64))
        .connector(rabbitmq_sink(&rmq, "frozen").config("heartbeat_secs", 1))
        .connector(
            rabbitmq_source(&rmq, "frozen")
                .set("topic", "relayed")
                .config("heartbeat_secs", 1)
                .config("dedupe", "message-id")
                .config("end_after_idle_ms", 5000),
        )
        .connector(files_sink().set("topic", "relayed"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("records flow", Duration::from_secs(30), || {
        seqs(&out).len() > 1000
    });
    // Hung, not dead: the connections stay open and quiet.
    rmq.freeze();
    std::thread::sleep(Duration::from_secs(4));
    rmq.thaw();
    let ended = host.wait_for_exit(Duration::from_secs(120));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(0), "{log}");
    let duplicates = assert_at_least_once(seqs(&out), RECORDS);
    eprintln!("rabbitmq frozen: {duplicates} duplicates of {RECORDS}");
    assert_each_away_once_then_back(&log, &["rabbitmq-sink", "rabbitmq-source"], &rmq.addr());
    assert!(log.contains("silent for"), "{log}");
}

#[test]
fn under_a_disk_alarm_the_rabbitmq_sink_waits_says_so_once_and_loses_nothing() {
    const RECORDS: u64 = 5_000;
    let Some(rmq) = RabbitMq::start() else {
        return;
    };
    rmq.client("declare", &["alarm"]);
    // The disk is "full": less free than this. The broker blocks every
    // connection that publishes.
    rmq.ctl(&["set_disk_free_limit", "1000000000000000000"]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(gen_source(RECORDS, 0, 64))
        .connector(rabbitmq_sink(&rmq, "alarm"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until(
        "the sink says it is blocked",
        Duration::from_secs(30),
        || host.log().contains("blocks publishers"),
    );
    std::thread::sleep(Duration::from_secs(3));
    rmq.ctl(&["set_disk_free_limit", "1000000"]);
    let ended = host.wait_for_exit(Duration::from_secs(120));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(0), "{log}");
    assert_eq!(log.matches("blocks publishers").count(), 1, "{log}");
    assert!(log.contains("takes publishes again"), "{log}");
    assert!(!log.contains("is away"), "a block is not an outage: {log}");
    let seqs: Vec<u64> = drained(&rmq.client("drain", &["alarm"]))
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_exactly_once(seqs, RECORDS);
}

#[test]
fn rabbitmq_connectors_refuse_what_to_fix_at_open_and_dead_letter_an_unroutable_record() {
    const PASSWORD: &str = "right-AMQP-s3cr3t";
    let Some(rmq) = RabbitMq::start_with_login("sluice", PASSWORD) else {
        return;
    };
    rmq.client("declare", &["allowed.in", "allowed.out"]);
    let dir = tempfile::tempdir().unwrap();
    let login = |c: Connector| {
        c.config("password", "${secret:amqp}")
            .secret("amqp", "file", "amqp-password")
    };
    let attempt = |connectors: Vec<Connector>, password: &str| {
        run_with_secret(dir.path(), "amqp-password", password, connectors)
    };
    let sink_run = |c: Connector| vec![gen_source(10, 0, 64), c];
    let source_run = |c: Connector| vec![c.config("end_after_idle_ms", 500), files_sink()];
    let addr = rmq.addr();

    // Granted another port only.
    for connectors in [
        sink_run(login(rabbitmq_sink(&rmq, "allowed.out")).grant("net", vec!["127.0.0.1:1"])),
        source_run(login(rabbitmq_source(&rmq, "allowed.in")).grant("net", vec!["127.0.0.1:1"])),
    ] {
        let (code, all) = attempt(connectors, PASSWORD);
        assert_ne!(code, Some(0), "{all}");
        assert!(all.contains(&addr) && all.contains("grant"), "{all}");
    }

    // The wrong password: the broker's reason, the address and the user.
    for connectors in [
        sink_run(login(rabbitmq_sink(&rmq, "allowed.out"))),
        source_run(login(rabbitmq_source(&rmq, "allowed.in"))),
    ] {
        let (code, all) = attempt(connectors, "wrong-s3cr3t");
        assert_ne!(code, Some(0), "{all}");
        assert!(
            all.contains(&addr) && all.contains("logging in") && all.contains("ACCESS_REFUSED"),
            "{all}"
        );
    }

    // A queue that is not there, one the user may not read, an exchange
    // that is not there: each fails at open with the broker's word.
    for (connectors, says) in [
        (
            source_run(login(rabbitmq_source(&rmq, "allowed.missing"))),
            "404: NOT_FOUND - no queue 'allowed.missing'",
        ),
        (
            source_run(login(rabbitmq_source(&rmq, "forbidden.in"))),
            "403: ACCESS_REFUSED - access to queue 'forbidden.in'",
        ),
        (
            sink_run(login(rabbitmq_sink(&rmq, "allowed.out")).config("exchange", "allowed.nox")),
            "404: NOT_FOUND - no exchange 'allowed.nox'",
        ),
    ] {
        let (code, all) = attempt(connectors, PASSWORD);
        assert_ne!(code, Some(0), "{all}");
        assert!(all.contains(says), "{all}");
    }

    // The right one, in a directory of its own (the log above holds the
    // records of the refused runs): the records arrive; one no queue takes
    // is dead-lettered with the broker's word.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("amqp-password"), PASSWORD).unwrap();
    let records = keyed_records([
        ("allowed.out", "{\"seq\":1}"),
        ("allowed.nowhere", "{\"seq\":2}"),
        ("allowed.out", "{\"seq\":3}"),
    ]);
    let manifest = manifest()
        .connector(source("keyed", wasm("emit-keyed"), "events").config("records", records))
        .connector(login(rabbitmq_sink(&rmq, "{key}")))
        .connector(dead_letters("rsink.dlq"))
        .write(dir.path());
    run_finished(&manifest);
    let heard: Vec<u64> = drained(&rmq.client("drain", &["allowed.out", "--idle", "1"]))
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(heard, [1, 3]);
    let dead = output_lines(&dir.path().join("dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("the broker returned it: 312 NO_ROUTE")
            && dead[0].contains("allowed.nowhere"),
        "{}",
        dead[0]
    );
}

#[test]
fn the_rabbitmq_to_files_example_stores_each_order_once() {
    let Some(rmq) = RabbitMq::start() else {
        return;
    };
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/rabbitmq-to-files/sluice.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:5672", &rmq.addr());
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sluice.toml");
    std::fs::write(&manifest, text).unwrap();
    let mut host = Host::run(dir.path(), &manifest);
    // Each order twice, as a publisher retrying would.
    for _ in 0..2 {
        rmq.client("publish", &["orders", "3", "--ids"]);
    }
    let out = dir.path().join("out");
    wait_until("three orders in the files", Duration::from_secs(30), || {
        output_lines(&out).len() >= 3
    });
    std::thread::sleep(Duration::from_millis(1500));
    host.interrupt();
    let ended = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(ended.status.code(), Some(130), "{}", host.log());
    let lines = output_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(
            line.contains(&format!("m{i}")) && line.contains("amqp.message-id"),
            "{line}"
        );
    }
    assert_eq!(rmq.client("drain", &["orders", "--idle", "0.5"]), "");
}
