//! The STOMP connectors against a real ActiveMQ (Debian's `activemq` 5.17)
//! started by the test (`sluice-test-servers`): its own directory and
//! ports, killed at the end. Both connectors claim at least once: the tests
//! check that every record arrives, and count and report the duplicates.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::time::Duration;

use sluice_test_servers::activemq::ActiveMq;

use crate::common::*;

/// A `stomp-source` named `ssrc` consuming `destination` into `events`.
fn stomp_source(amq: &ActiveMq, destination: &str) -> Connector {
    source("ssrc", "stomp-source", "events")
        .config("addr", amq.stomp_addr().as_str())
        .config("destination", destination)
        .grant("net", vec![amq.stomp_addr().as_str()])
}

/// A `stomp-sink` named `ssink` sending `events` to `destination`.
fn stomp_sink(amq: &ActiveMq, destination: &str) -> Connector {
    sink("ssink", "stomp-sink", "events")
        .config("addr", amq.stomp_addr().as_str())
        .config("destination", destination)
        .grant("net", vec![amq.stomp_addr().as_str()])
}

/// The datagen `seq`s in a consumer's output (a body a line).
fn consumed_seqs(file: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| l.strip_prefix("{\"seq\":"))
        .map(|rest| rest[..rest.find([',', '}']).unwrap()].parse().unwrap())
        .collect()
}

#[test]
fn a_stomp_source_killed_at_random_moments_stores_every_message_at_least_once() {
    const RECORDS: u64 = 200_000;
    let Some(amq) = ActiveMq::start() else {
        return;
    };
    // Not persistent: the broker is not restarted here, and persistent
    // sends would take a minute of the test's time (each is journalled).
    amq.send_transient(
        "/queue/in",
        (0..RECORDS).map(|i| format!("{{\"seq\":{i}}}")),
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            stomp_source(&amq, "/queue/in")
                .config("end_after_idle_ms", 3000)
                .batch("max_records", 500),
        )
        .connector(files_sink())
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 300..1000);
    let duplicates = assert_at_least_once(seqs(&dir.path().join("out")), RECORDS);
    eprintln!("stomp-source: {duplicates} duplicates of {RECORDS} after 10 kills");
}

#[test]
fn a_stomp_sink_killed_at_random_moments_sends_every_record_at_least_once() {
    const RECORDS: u64 = 200_000;
    // The host is killed, not the machine: the broker's journal need not
    // be synced before each receipt.
    let Some(amq) = ActiveMq::start_without_disk_syncs() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard");
    let _consumer = amq.consume("/queue/out", &heard);
    // 20,000 records/s: the 200,000 take ten seconds of running, so the
    // kills land while records flow.
    let manifest = manifest()
        .connector(gen_source(RECORDS, 20_000, 64))
        .connector(stomp_sink(&amq, "/queue/out"))
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 300..1000);
    wait_until(
        "the consumer has every record",
        Duration::from_secs(60),
        || {
            let mut s = consumed_seqs(&heard);
            s.sort_unstable();
            s.dedup();
            s.len() as u64 == RECORDS
        },
    );
    let duplicates = assert_at_least_once(consumed_seqs(&heard), RECORDS);
    eprintln!("stomp-sink: {duplicates} duplicates of {RECORDS} after 10 kills");
}

#[test]
fn through_an_activemq_restart_the_stomp_relay_pauses_each_side_once_and_loses_nothing() {
    const RECORDS: u64 = 60_000;
    // A journal synced before each receipt: the broker is killed here (with
    // syncs off, ActiveMQ's MQTT transport was seen to lose an acknowledged
    // message to a SIGKILL).
    let Some(mut amq) = ActiveMq::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // datagen → stomp-sink → ActiveMQ queue → stomp-source → file-sink.
    let manifest = manifest()
        .connector(gen_source(RECORDS, 20_000, 64))
        .connector(stomp_sink(&amq, "/queue/relay").config("heart_beat_ms", 1000))
        .connector(
            stomp_source(&amq, "/queue/relay")
                .set("topic", "relayed")
                .config("heart_beat_ms", 1000)
                .config("end_after_idle_ms", 8000),
        )
        .connector(files_sink().set("topic", "relayed"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("records flow", Duration::from_secs(30), || {
        seqs(&out).len() > 1000
    });
    amq.stop();
    std::thread::sleep(Duration::from_millis(1500));
    amq.resume();
    let ended = host.wait_for_exit(Duration::from_secs(180));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(0), "{log}");
    let duplicates = assert_at_least_once(seqs(&out), RECORDS);
    eprintln!("stomp relay: {duplicates} duplicates of {RECORDS} across a broker restart");
    assert_each_away_once_then_back(&log, &["stomp-sink", "stomp-source"], &amq.stomp_addr());
}

#[test]
fn stomp_connectors_refuse_at_open_an_ungranted_broker_a_wrong_password_and_a_forbidden_queue() {
    const PASSWORD: &str = "right-STOMP-s3cr3t";
    let Some(amq) = ActiveMq::start_with_login("sluice", PASSWORD) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let login = |c: Connector| {
        c.config("user", "sluice")
            .config("password", "${secret:stomp}")
            .secret("stomp", "file", "stomp-password")
    };
    let attempt = |connectors: Vec<Connector>, password: &str| {
        run_with_secret(dir.path(), "stomp-password", password, connectors)
    };
    let sink_run = |c: Connector| vec![gen_source(10, 0, 64), c];
    let source_run = |c: Connector| vec![c.config("end_after_idle_ms", 500), files_sink()];
    let addr = amq.stomp_addr();

    // Granted another port only.
    for connectors in [
        sink_run(login(stomp_sink(&amq, "/queue/allowed.out")).grant("net", vec!["127.0.0.1:1"])),
        source_run(
            login(stomp_source(&amq, "/queue/allowed.in")).grant("net", vec!["127.0.0.1:1"]),
        ),
    ] {
        let (code, all) = attempt(connectors, PASSWORD);
        assert_ne!(code, Some(0), "{all}");
        assert!(all.contains(&addr) && all.contains("grant"), "{all}");
    }

    // The wrong password: the broker's reason and address.
    for connectors in [
        sink_run(login(stomp_sink(&amq, "/queue/allowed.out"))),
        source_run(login(stomp_source(&amq, "/queue/allowed.in"))),
    ] {
        let (code, all) = attempt(connectors, "wrong-s3cr3t");
        assert_ne!(code, Some(0), "{all}");
        assert!(
            all.contains(&addr) && all.contains("logging in") && all.contains("password"),
            "{all}"
        );
    }

    // A queue the user may not read: the source fails at open, naming it.
    let (code, all) = attempt(
        source_run(login(stomp_source(&amq, "/queue/forbidden.in"))),
        PASSWORD,
    );
    assert_ne!(code, Some(0), "{all}");
    assert!(
        all.contains("refused to subscribe to \"/queue/forbidden.in\""),
        "{all}"
    );

    // The right one, in a directory of its own (the log above holds the
    // records of the refused runs): the records arrive; one for a queue
    // the user may not write is dead-lettered with the broker's word.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stomp-password"), PASSWORD).unwrap();
    let heard = dir.path().join("heard");
    let _consumer = amq.consume("/queue/allowed.out", &heard);
    let records = keyed_records([
        ("allowed.out", "1"),
        ("forbidden.out", "2"),
        ("allowed.out", "3"),
    ]);
    let manifest = manifest()
        .connector(source("keyed", wasm("emit-keyed"), "events").config("records", records))
        .connector(login(stomp_sink(&amq, "/queue/{key}")))
        .connector(dead_letters("ssink.dlq"))
        .write(dir.path());
    run_finished(&manifest);
    wait_until("the consumer has both", Duration::from_secs(10), || {
        std::fs::read_to_string(&heard).unwrap_or_default() == "1\n3\n"
    });
    let dead = output_lines(&dir.path().join("dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("the broker refused the send") && dead[0].contains("forbidden.out"),
        "{}",
        dead[0]
    );
}
