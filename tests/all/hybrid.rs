//! Hybrid sources (Flink's `HybridSource`): a bounded source over a backlog,
//! then a live one from the point the first hands over, each record once
//! across the switch, also when the host dies around it.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::common::*;
use crate::crash::storm;
use crate::http::{Receiver, lines_of};

const RECORDS: u64 = 1_000_000;

#[test]
fn a_hybrid_source_killed_twenty_times_across_its_switch_delivers_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    // Yesterday's lines, then today's: each half read at 100,000 lines/s,
    // so the kills land in both phases and around the switch.
    numbered_lines(&dir.path().join("old"), &[("a.txt", 0..RECORDS / 2)]);
    numbered_lines(&dir.path().join("new"), &[("b.txt", RECORDS / 2..RECORDS)]);
    let manifest = manifest()
        .connector(
            source("lines", "file-source", "lines")
                .config("path", "/old")
                .config("rate", 100_000)
                .files("old", "/old", "read-only")
                .files("new", "/new", "read-only")
                .hybrid(
                    "file-source",
                    &[("path", "/new".into()), ("rate", 100_000.into())],
                ),
        )
        .connector(
            sink("files", "file-sink", "lines")
                .set("flush_interval_ms", 50)
                .config("path", "/out")
                .config("max_file_bytes", 1_000_000)
                .files("out", "/out", "read-write"),
        )
        .write(dir.path());
    storm(dir.path(), &manifest, 20, 100..700);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
    let switched = (0..20)
        .filter(|i| {
            std::fs::read_to_string(dir.path().join(format!("run-{i}.log")))
                .unwrap()
                .contains("the bounded source ended")
        })
        .count();
    assert!(switched > 0, "no killed run had switched yet");
}

#[test]
fn a_hybrid_source_hands_over_its_newest_timestamp_and_switches_again_after_dying_in_the_switch() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The live service: pages of {"seq": i}, i in 1..=1000, after a cursor.
    // Down until the host has died once in the switch.
    let mut server =
        Receiver::start_script("event_server.py", &dir.path().join("server"), &["1000"]);
    server.kill();
    // The backlog holds 1..=400; each record's timestamp is its seq.
    numbered_lines(&dir.path().join("old"), &[("a.txt", 1..401)]);
    let url = format!("http://127.0.0.1:{}/items", server.port);
    let manifest = manifest()
        .transform("stamp", "timestamp", &[("field", "/seq".into())])
        .connector(
            source("events", "file-source", "events")
                .config("path", "/old")
                .files("old", "/old", "read-only")
                .set("transforms", vec!["stamp"])
                .grant("net", vec![server.addr().as_str()])
                .hybrid(
                    "http-source",
                    &[
                        ("url", url.as_str().into()),
                        ("mode", "poll".into()),
                        ("records_pointer", "/items".into()),
                        ("start_cursor", "${switch:timestamp_ms}".into()),
                        ("poll_interval_ms", 50.into()),
                        ("retry_initial_ms", 20.into()),
                        ("retry_max_ms", 200.into()),
                    ],
                ),
        )
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir.path());
    let out = dir.path().join("out");
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("the backlog is out", Duration::from_secs(60), || {
        seqs(&out).len() >= 400
    });
    host.wait_for_log("the bounded source ended", Duration::from_secs(30));
    // The live source waits for its service: the host dies in the switch.
    host.kill();
    let first = host.log();
    assert!(
        first.contains("switch_timestamp_ms=400"),
        "the newest timestamp of the backlog is handed over:\n{first}"
    );
    let again = Host::start(
        dir.path(),
        "again",
        &["run", "--no-progress", manifest.to_str().unwrap()],
    );
    again.wait_for_log("the bounded source ended", Duration::from_secs(30));
    server.start_again();
    let log = stop_after(again, dir.path(), 1000);
    assert_eq!(seqs(&out), (1..=1000).collect::<Vec<_>>(), "{log}");
    let requests = lines_of(&server.dir.join("requests"));
    assert!(
        requests
            .first()
            .is_some_and(|r| r.starts_with("/items?cursor=400 ")),
        "the live source starts after the backlog's newest record: {requests:?}"
    );
}

#[test]
fn a_hybrid_sources_hand_over_is_a_number_where_the_live_schema_takes_one_and_text_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    for (plugin, field) in [("kafka-source", "start"), ("http-source", "start_cursor")] {
        let live: Vec<(&str, toml::Value)> = match plugin {
            "kafka-source" => vec![
                ("bootstrap_servers", vec!["127.0.0.1:9092"].into()),
                ("topics", vec!["orders"].into()),
            ],
            _ => vec![("url", "http://127.0.0.1:8080/items".into())],
        };
        let mut live = live;
        live.push((field, "${switch:timestamp_ms}".into()));
        let m = manifest()
            .connector(
                source("events", "file-source", "events")
                    .config("path", "/old")
                    .files("old", "/old", "read-only")
                    .hybrid(plugin, &live),
            )
            .to_string();
        std::fs::create_dir_all(dir.path().join("old")).unwrap();
        let (code, err) = validate_in(dir.path(), &m);
        assert_eq!(code, Some(0), "{plugin}: {err}");
    }
}

#[test]
fn a_wrong_hybrid_source_is_refused_naming_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("old")).unwrap();
    let bounded = || {
        source("events", "file-source", "events")
            .config("path", "/old")
            .files("old", "/old", "read-only")
    };
    let cases: Vec<(Connector, &str, &str)> = vec![
        (
            sink("files", "file-sink", "events")
                .config("path", "/old")
                .hybrid("file-source", &[("path", "/old".into())]),
            "connector[0].hybrid",
            "only a source is hybrid",
        ),
        (
            bounded().hybrid(
                "file-source",
                &[("path", "/old".into()), ("tail", "${switch:offset}".into())],
            ),
            "connector[0].hybrid.config",
            "${switch:timestamp_ms}",
        ),
        (
            bounded().config("tail", "${switch:timestamp_ms}"),
            "connector[0].config",
            "only in `[connector.hybrid.config]`",
        ),
        (
            bounded().hybrid("file-sink", &[("path", "/old".into())]),
            "connector[0].hybrid.plugin",
            "goes on with a source plugin",
        ),
        (
            bounded().hybrid(
                "file-source",
                &[("path", "/old".into()), ("rate", "fast".into())],
            ),
            "connector[0].hybrid.config.rate",
            "sluice plugins inspect file-source",
        ),
        (
            bounded().hybrid("http-source", &[("url", "http://h/${secret:token}".into())]),
            "connector[0].hybrid.config",
            "[connector.grants.secrets]",
        ),
    ];
    for (c, field, fix) in cases {
        let (code, err) = validate_in(dir.path(), &manifest().connector(c).to_string());
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("sluice.toml:"),
            "names the file and line: {err}"
        );
        assert!(err.contains(field), "names {field}: {err}");
        assert!(err.contains(fix), "says the fix ({fix}): {err}");
    }
}

#[test]
fn the_hybrid_example_prints_the_archive_then_follows_the_live_folder() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hybrid");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["archive", "live"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        for f in std::fs::read_dir(example.join(sub)).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.path().join(sub).join(f.file_name())).unwrap();
        }
    }
    let manifest = dir.path().join("sluice.toml");
    std::fs::copy(example.join("sluice.toml"), &manifest).unwrap();
    let out = dir.path().join("host.out");
    let orders = || -> Vec<u64> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("order> "))
            .map(|v| {
                serde_json::from_str::<serde_json::Value>(v).unwrap()["order"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let mut host = Host::run(dir.path(), &manifest);
    wait_until(
        "the archive and today's order are out",
        Duration::from_secs(60),
        || orders().len() >= 6,
    );
    let mut today = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("live/today.log"))
        .unwrap();
    std::io::Write::write_all(
        &mut today,
        b"{\"ts\":1764810000000,\"order\":7,\"item\":\"tea\"}\n",
    )
    .unwrap();
    wait_until("the new order is out", Duration::from_secs(30), || {
        orders().len() >= 7
    });
    host.interrupt();
    let ended = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(ended.status.code(), Some(130), "{}", host.log());
    assert_eq!(orders(), (1..=7).collect::<Vec<_>>(), "{}", host.log());
}
