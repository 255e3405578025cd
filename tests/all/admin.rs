//! The daemon, driven only through the CLI as an operator would: create
//! connectors, read their status, swap a module while records flow (and
//! a swap that fails), kill and restart the daemon, reset offsets, the
//! bearer token, `/metrics`, and `sluice run --watch`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use crate::common;

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::{Daemon, drain, wait_until};

use serde_json::Value;

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// A generator (endless, at `rate` a second) and file sinks named
/// `sinks`, each writing under `<dir>/<name>/`.
fn connectors(dir: &Path, rate: u64, sinks: &[&str]) -> PathBuf {
    let mut text = common::gen_source(0, rate, 32).to_string();
    for s in sinks {
        std::fs::create_dir_all(dir.join(s)).unwrap();
        let sink = common::sink(s, "file-sink", "events")
            .set("flush_interval_ms", 100)
            .config("path", "/out")
            .config("max_file_bytes", 1_000_000)
            .files(s, "/out", "read-write");
        text.push_str(&sink.to_string());
    }
    let path = dir.join("connectors.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every `seq` in the lines under `dir`: those without a mark, and those
/// marked `v2 ` or `v3 ` by a newer module.
pub(crate) fn marked_seqs(dir: &Path) -> (Vec<u64>, Vec<u64>) {
    let (mut plain, mut marked) = (Vec::new(), Vec::new());
    for f in common::output_files(dir) {
        let (p, m) = marked_seqs_of(&f);
        plain.extend(p);
        marked.extend(m);
    }
    (plain, marked)
}

/// [`marked_seqs`] of one file.
fn marked_seqs_of(f: &Path) -> (Vec<u64>, Vec<u64>) {
    let (mut plain, mut marked) = (Vec::new(), Vec::new());
    let text = std::fs::read_to_string(f).unwrap();
    for line in text.lines() {
        let (list, line) = match line.strip_prefix("v2 ").or(line.strip_prefix("v3 ")) {
            Some(rest) => (&mut marked, rest),
            None => (&mut plain, line),
        };
        let rest = line
            .strip_prefix("{\"seq\":")
            .unwrap_or_else(|| panic!("not a datagen line in {}: {line:?}", f.display()));
        list.push(rest[..rest.find([',', '}']).unwrap()].parse().unwrap());
    }
    (plain, marked)
}

#[test]
fn a_sink_module_is_swapped_while_records_flow_and_a_failing_swap_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let manifest = connectors(dir.path(), 100_000, &["files"]);
    d.ok(&["create", manifest.to_str().unwrap()]);
    wait_until("records flow", Duration::from_secs(60), || {
        n(&d.status("files")["records_in"]) > 50_000
    });
    let status = d.status("files");
    assert_eq!(status["state"], "running");
    assert_eq!(status["plugin"], "file-sink");
    assert_eq!(status["instances"][0]["state"], "running");

    // A module whose open fails: exit 5, the old module runs on.
    let broken = common::wasm("open-fails-sink");
    let out = d.cli(
        "connectors",
        &["update", "files", "--plugin", broken.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("this version is broken"));
    let status = d.status("files");
    assert_eq!(status["state"], "running");
    assert_eq!(status["plugin"], "file-sink");
    assert_eq!(status["last_swap"]["ok"], false);
    assert!(
        status["last_swap"]["error"]
            .as_str()
            .unwrap()
            .contains("the old module file-sink runs on")
    );
    let before = n(&status["records_in"]);
    wait_until("the old module goes on", Duration::from_secs(30), || {
        n(&d.status("files")["records_in"]) > before + 20_000
    });

    // The second version, while records flow.
    let v2 = common::wasm("tag-sink");
    let swapped = d.json(
        "connectors",
        &["update", "files", "--plugin", v2.to_str().unwrap()],
    );
    assert_eq!(swapped["live"], true);
    let at_swap = n(&d.status("files")["records_in"]);
    wait_until(
        "the new module takes records",
        Duration::from_secs(30),
        || n(&d.status("files")["records_in"]) > at_swap + 50_000,
    );
    let total = drain(&d, &["files"]);

    let status = d.status("files");
    assert!(
        status["plugin"]
            .as_str()
            .unwrap()
            .ends_with("tag_sink.wasm")
    );
    let swap = &status["last_swap"];
    assert_eq!(swap["ok"], true, "{swap}");
    let pause = swap["pause_ms"].as_f64().unwrap();
    assert!(pause > 0.0, "the pause is measured: {swap}");
    eprintln!("swap pause: {pause:.1} ms; {total} records");

    let (plain, marked) = marked_seqs(&dir.path().join("files"));
    assert!(!plain.is_empty() && !marked.is_empty());
    let last_plain = *plain.iter().max().unwrap();
    assert!(
        marked.iter().all(|&s| s > last_plain),
        "every line after the swap point has the new module's mark"
    );
    common::assert_exactly_once([plain, marked].concat(), total);

    // /metrics passes promtool, and its counter is what was delivered.
    let metrics = d.cli("connectors", &["metrics"]);
    assert!(metrics.status.success());
    let text = String::from_utf8(metrics.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("sluice_connector_records_total{connector=\"files\""))
        .unwrap_or_else(|| panic!("no records counter for files in:\n{text}"));
    assert_eq!(
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(),
        total
    );
    assert!(text.contains("sluice_connector_batch_seconds_bucket{connector=\"files\""));
    promtool_check(&text);
}

/// `promtool check metrics` on `text`; skipped only where promtool is
/// missing and `CI` is unset.
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is required under CI (Debian package prometheus): {e}"
            );
            eprintln!("skipping promtool: {e} (apt-get install prometheus)");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_killed_daemon_brings_every_connector_back_in_its_state_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[]);
    let manifest = connectors(dir.path(), 20_000, &["files", "held", "idle"]);
    d.ok(&["create", manifest.to_str().unwrap()]);
    wait_until("records flow", Duration::from_secs(60), || {
        n(&d.status("files")["records_in"]) > 10_000
    });
    d.ok(&["pause", "held"]);
    d.ok(&["stop", "idle"]);
    assert_eq!(d.status("held")["state"], "paused");
    wait_until("held's instance pauses", Duration::from_secs(10), || {
        d.status("held")["instances"][0]["state"] == "paused"
    });
    std::thread::sleep(Duration::from_millis(500));
    d.kill();

    let d = Daemon::start(dir.path(), &[]);
    wait_until("connectors come back", Duration::from_secs(30), || {
        d.status("files")["state"] == "running"
    });
    let states: Vec<(String, String)> = d
        .json("connectors", &["list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("files", "running"),
        ("gen", "running"),
        ("held", "paused"),
        ("idle", "stopped"),
    ]
    .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(states, want);
    // Not allowed in these states: exit 4.
    assert_eq!(
        d.cli("connectors", &["pause", "idle"]).status.code(),
        Some(4)
    );
    assert_eq!(
        d.cli("connectors", &["start", "files"]).status.code(),
        Some(4)
    );
    wait_until("records flow again", Duration::from_secs(30), || {
        n(&d.status("files")["records_in"]) > 10_000
    });
    d.ok(&["resume", "held"]);
    d.ok(&["start", "idle"]);
    let total = drain(&d, &["files", "held", "idle"]);
    assert!(total > 20_000);
    for s in ["files", "held", "idle"] {
        common::assert_exactly_once(common::seqs(&dir.path().join(s)), total);
    }
}

#[test]
fn offsets_reset_to_earliest_delivers_the_topic_again_and_only_while_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let manifest = connectors(dir.path(), 50_000, &["files"]);
    d.ok(&["create", manifest.to_str().unwrap()]);
    wait_until("records flow", Duration::from_secs(60), || {
        n(&d.status("files")["records_in"]) > 20_000
    });
    let total = drain(&d, &["files"]);

    // A source's position cannot be reset: exit 2.
    let out = d.cli("connectors", &["offsets", "gen", "--reset", "earliest"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a source"));
    // Not while it runs (KIP-875): exit 4, nothing changes.
    let out = d.cli("connectors", &["offsets", "files", "--reset", "earliest"]);
    assert_eq!(out.status.code(), Some(4));
    let committed =
        |d: &Daemon| n(&d.json("connectors", &["offsets", "files"])["partitions"][0]["committed"]);
    assert_eq!(committed(&d), total);

    d.ok(&["stop", "files"]);
    let reset = d.json("connectors", &["offsets", "files", "--reset", "earliest"]);
    assert_eq!(reset["partitions"][0]["committed"], 0);
    d.ok(&["start", "files"]);
    wait_until(
        "the topic is delivered again",
        Duration::from_secs(60),
        || n(&d.status("files")["records_in"]) == total && d.status("files")["lag"] == 0,
    );
    assert_eq!(committed(&d), total);
    // Delivered twice: once before the reset, once after.
    let mut seqs = common::seqs(&dir.path().join("files"));
    seqs.sort_unstable();
    let twice: Vec<u64> = (0..total).flat_map(|s| [s, s]).collect();
    assert!(
        seqs == twice,
        "every record once before the reset and once after"
    );
}

/// One raw HTTP request; the status code.
pub fn http(url: &str, method: &str, path: &str, auth: Option<&str>, body: &str) -> u16 {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = auth.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn with_a_token_requests_without_it_get_401_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--token", "s3cret-token"]);
    let url = d.url();
    let manifest = connectors(dir.path(), 1000, &["files"]);
    let body =
        serde_json::json!({ "toml": std::fs::read_to_string(&manifest).unwrap() }).to_string();
    for auth in [None, Some("wrong")] {
        assert_eq!(
            http(&url, "GET", "/v1/connectors", auth, ""),
            401,
            "read, {auth:?}"
        );
        assert_eq!(
            http(&url, "POST", "/v1/connectors", auth, &body),
            401,
            "write, {auth:?}"
        );
        assert_eq!(http(&url, "GET", "/metrics", auth, ""), 401);
    }
    assert_eq!(http(&url, "GET", "/healthz", None, ""), 200);
    // The CLI with a wrong token: exit 6.
    let out = d.cli("connectors", &["--token", "wrong", "list"]);
    assert_eq!(out.status.code(), Some(6));
    // Nothing was created; the CLI finds the right token in the data dir.
    assert_eq!(d.json("connectors", &["list"]), serde_json::json!([]));
    assert_eq!(
        http(&url, "GET", "/v1/connectors", Some("s3cret-token"), ""),
        200
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.data.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn the_daemon_stops_cleanly_on_sigterm_and_serves_its_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(dir.path(), &[]);
    let url = d.url();
    assert_eq!(http(&url, "GET", "/openapi.json", None, ""), 200);
    assert_eq!(http(&url, "GET", "/readyz", None, ""), 200);
    let plugins = d.json("plugins", &["list"]);
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "file-sink")
    );
    let inspect = d.json("plugins", &["inspect", "file-sink"]);
    assert_eq!(inspect["kind"], "sink");
    assert!(inspect["config_schema"]["properties"]["path"].is_object());
    let cfg = dir.path().join("cfg.toml");
    std::fs::write(&cfg, "count = 10\nrate = 5\n").unwrap();
    assert!(
        d.cli("plugins", &["validate", "datagen", cfg.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::write(&cfg, "count = -1\n").unwrap();
    let bad = d.cli("plugins", &["validate", "datagen", cfg.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stdout).contains("count"));
    // A body that is not JSON: 400; a file the CLI cannot read: exit 2.
    assert_eq!(http(&url, "POST", "/v1/connectors", None, "{not json"), 400);
    let missing = dir.path().join("missing.toml");
    let out = d.cli("connectors", &["create", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = d.cli("connectors", &["status", "nope"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connector named \"nope\""));
    assert_eq!(d.terminate(), Some(0));
    assert!(d.log().contains("stopped"));
}

#[test]
fn run_watch_swaps_a_rebuilt_sink_plugin_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("my-sink.wasm");
    std::fs::copy(common::wasm("file-sink"), &plugin).unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let manifest = common::manifest()
        .connector(common::gen_source(0, 20_000, 32))
        .connector(
            common::sink("files", "my-sink.wasm", "events")
                .set("flush_interval_ms", 100)
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .write(dir.path());
    let mut host = common::Host::start(
        dir.path(),
        "run",
        &[
            "run",
            "--watch",
            "--no-progress",
            manifest.to_str().unwrap(),
        ],
    );
    let out_dir = dir.path().join("out");
    wait_until("records arrive", Duration::from_secs(60), || {
        common::output_files(&out_dir)
            .iter()
            .any(|f| std::fs::metadata(f).is_ok_and(|m| m.len() > 0))
    });
    // A broken build first: it does not load, and the old module runs on.
    let tmp = dir.path().join("my-sink.wasm.new");
    std::fs::write(&tmp, b"not a component").unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    host.wait_for_log("was not swapped in", Duration::from_secs(30));
    // A rebuild: the new module lands over the old file.
    std::fs::copy(common::wasm("tag-sink"), &tmp).unwrap();
    std::fs::rename(&tmp, &plugin).unwrap();
    host.wait_for_log("module swapped in every instance", Duration::from_secs(30));
    wait_until("the new module writes", Duration::from_secs(30), || {
        std::fs::metadata(out_dir.join("tagged-0.txt")).is_ok_and(|m| m.len() > 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    host.terminate();
    let out = host.wait_for_exit(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    let field = |name: &str, nth: usize| -> u64 {
        common::summary_line(&out, name)
            .split_whitespace()
            .nth(nth)
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    let (produced, lag) = (field("gen", 2), field("files", 8));
    let (plain, marked) = marked_seqs(&out_dir);
    let last_plain = *plain.iter().max().unwrap();
    assert!(marked.iter().all(|&s| s > last_plain));
    // Delivered, each once, in order of the topic; the rest is the lag.
    let delivered = [plain, marked].concat();
    common::assert_exactly_once(delivered.clone(), produced - lag);
}

#[test]
fn parallel_instances_share_partitions_and_all_swap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    // A start manifest: the log's settings, and connectors created at start.
    let start = common::manifest()
        .broker("partitions", 2)
        .connector(common::gen_source(0, 20_000, 32).set("parallelism", 2))
        .connector(
            common::sink("files", "file-sink", "events")
                .set("parallelism", 2)
                .set("flush_interval_ms", 100)
                .config("path", "/out")
                .files("files", "/out", "read-write"),
        )
        .write_to(&dir.path().join("start.toml"));
    let d = Daemon::start(dir.path(), &["--manifest", start.to_str().unwrap()]);
    wait_until(
        "both instances take records",
        Duration::from_secs(60),
        || {
            let s = d.status("files");
            let i = s["instances"].as_array().unwrap();
            i.len() == 2 && i.iter().all(|i| n(&i["records"]) > 5_000)
        },
    );
    // A version that opens in instance 0 and not in instance 1: instance
    // 0 is swapped, instance 1 fails, and instance 0 is swapped back.
    let half = common::wasm("breaks-on-instance-1");
    let out = d.cli(
        "connectors",
        &["update", "files", "--plugin", half.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(5));
    let status = d.status("files");
    assert_eq!(status["plugin"], "file-sink");
    let error = status["last_swap"]["error"].as_str().unwrap();
    assert!(error.contains("swapping instance 1"), "{error}");
    let at = n(&status["records_in"]);
    wait_until("both instances go on", Duration::from_secs(30), || {
        let s = d.status("files");
        n(&s["records_in"]) > at + 10_000
            && s["instances"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| i["state"] == "running")
    });

    let v2 = common::wasm("tag-sink");
    let swapped = d.json(
        "connectors",
        &["update", "files", "--plugin", v2.to_str().unwrap()],
    );
    assert_eq!(swapped["live"], true);
    wait_until("both new instances write", Duration::from_secs(30), || {
        (0..2).all(|i| {
            std::fs::metadata(dir.path().join(format!("files/tagged-{i}.txt")))
                .is_ok_and(|m| m.len() > 0)
        })
    });
    // Each generator instance counts from 0 into its own partition.
    d.ok(&["stop", "gen"]);
    let o = d.json("connectors", &["offsets", "files"]);
    let ends: Vec<u64> = o["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| n(&p["end"]))
        .collect();
    assert_eq!(ends.len(), 2);
    wait_until("files catches up", Duration::from_secs(60), || {
        d.status("files")["lag"] == 0
    });
    let (plain, marked) = marked_seqs(&dir.path().join("files"));
    let mut all = [plain, marked].concat();
    all.sort_unstable();
    let mut want: Vec<u64> = ends.iter().flat_map(|&e| 0..e).collect();
    want.sort_unstable();
    assert!(
        all == want,
        "each instance's records, each exactly once; ends {ends:?}; {}\nfiles: {}\nthe daemon's log:\n{}",
        multiset_difference(&all, &want),
        files_summary(&dir.path().join("files")),
        d.log()
    );
}

#[test]
fn a_sink_swapped_away_and_back_across_a_stop_writes_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let manifest = connectors(dir.path(), 20_000, &["files"]);
    d.ok(&["create", manifest.to_str().unwrap()]);
    wait_until("records flow", Duration::from_secs(60), || {
        n(&d.status("files")["records_in"]) > 5_000
    });
    // To a module that stores no offsets of its own: the file-sink's
    // marker stays where it was.
    let v2 = common::wasm("tag-sink");
    let swapped = d.json(
        "connectors",
        &["update", "files", "--plugin", v2.to_str().unwrap()],
    );
    assert_eq!(swapped["live"], true);
    let at = n(&d.status("files")["records_in"]);
    wait_until("the new module writes", Duration::from_secs(30), || {
        n(&d.status("files")["records_in"]) > at + 5_000
    });
    // Back to the file-sink while stopped: it opens with its marker behind
    // the group's commits, and goes on from the commits.
    d.ok(&["stop", "files"]);
    d.ok(&["update", "files", "--plugin", "file-sink"]);
    d.ok(&["start", "files"]);
    let at = n(&d.status("files")["records_in"]);
    wait_until(
        "the file-sink writes again",
        Duration::from_secs(30),
        || n(&d.status("files")["records_in"]) > at + 5_000,
    );
    let total = drain(&d, &["files"]);
    let (plain, marked) = marked_seqs(&dir.path().join("files"));
    assert!(!marked.is_empty());
    let mut all = [plain, marked].concat();
    all.sort_unstable();
    let want: Vec<u64> = (0..total).collect();
    assert!(
        all == want,
        "each record once; {}\nfiles: {}\nthe daemon's log:\n{}",
        multiset_difference(&all, &want),
        files_summary(&dir.path().join("files")),
        d.log()
    );
    assert!(d.log().contains("going on from the group's"), "{}", d.log());
}

/// Each output file's name, line count and first and last seq.
fn files_summary(dir: &Path) -> String {
    common::output_files(dir)
        .iter()
        .map(|f| {
            let (plain, marked) = marked_seqs_of(f);
            let seqs = [plain, marked].concat();
            format!(
                "{} ({} lines, {:?}..={:?})",
                f.file_name().unwrap().to_string_lossy(),
                seqs.len(),
                seqs.first(),
                seqs.last()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `got` (sorted) holds beyond `want` (sorted) and lacks of it, the
/// first few of each: a failure's description.
fn multiset_difference(got: &[u64], want: &[u64]) -> String {
    let (mut extra, mut missing) = (Vec::new(), Vec::new());
    let (mut g, mut w) = (got.iter().peekable(), want.iter().peekable());
    loop {
        match (g.peek(), w.peek()) {
            (Some(a), Some(b)) if a == b => {
                g.next();
                w.next();
            }
            (Some(a), Some(b)) if a < b => extra.push(*g.next().unwrap()),
            (Some(_), Some(_)) | (None, Some(_)) => missing.push(*w.next().unwrap()),
            (Some(_), None) => extra.push(*g.next().unwrap()),
            (None, None) => break,
        }
    }
    let few = |v: &[u64]| {
        v.iter()
            .take(20)
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "{} more than wanted (e.g. {}), {} missing (e.g. {})",
        extra.len(),
        few(&extra),
        missing.len(),
        few(&missing)
    )
}

#[test]
fn create_from_json_update_the_config_and_bad_input_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    std::fs::create_dir_all(dir.path().join("jout")).unwrap();

    // A bad field: exit 2, the file, the line and the field are named.
    let bad = dir.path().join("bad.toml");
    let text = "[[connector]]\nname = \"gen\"\nkind = \"source\"\nplugin = \"datagen\"\n\
                topic = \"events\"\n\n[connector.config]\ncount = 0\nrate = \"fast\"\n";
    std::fs::write(&bad, text).unwrap();
    let out = d.cli("connectors", &["create", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:9:8:"),
        "the line of `rate` in the file: {err}"
    );
    assert!(err.contains("connector[0].config.rate"), "{err}");
    assert_eq!(d.json("connectors", &["list"]), serde_json::json!([]));

    // One connector as JSON.
    let source = dir.path().join("gen.toml");
    std::fs::write(&source, common::gen_source(0, 5000, 32).to_string()).unwrap();
    d.ok(&["create", source.to_str().unwrap()]);
    let json = dir.path().join("sink.json");
    std::fs::write(
        &json,
        serde_json::json!({
            "name": "j", "kind": "sink", "plugin": "file-sink", "topic": "events",
            "flush_interval_ms": 100,
            "config": { "path": "/out" },
            "grants": { "files": [{ "host": "jout", "guest": "/out", "mode": "read-write" }] }
        })
        .to_string(),
    )
    .unwrap();
    d.ok(&["create", json.to_str().unwrap()]);
    let again = d.cli("connectors", &["create", json.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(4), "the name is taken");
    wait_until("j takes records", Duration::from_secs(30), || {
        n(&d.status("j")["records_in"]) > 2_000
    });

    // A new config: checked against the schema, then the sink restarts with it.
    let cfg = dir.path().join("cfg.json");
    std::fs::write(&cfg, r#"{ "path": "/out", "max_file_bytes": -1 }"#).unwrap();
    let out = d.cli(
        "connectors",
        &["update", "j", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cfg.json: max_file_bytes: -1 is less than the minimum"),
        "the error names the file the config came from: {err}"
    );
    assert!(!err.contains("as stored"), "{err}");
    std::fs::write(&cfg, r#"{ "path": "/out", "max_file_bytes": 4096 }"#).unwrap();
    d.ok(&["update", "j", "--config", cfg.to_str().unwrap()]);
    let info = d.json("connectors", &["get", "j"]);
    assert_eq!(info["config"]["max_file_bytes"], 4096);
    assert_eq!(d.status("j")["state"], "running");
    wait_until(
        "j takes records with its new config",
        Duration::from_secs(30),
        || n(&d.status("j")["records_in"]) > 2_000,
    );
    let total = drain(&d, &["j"]);
    let files = common::output_files(&dir.path().join("jout"));
    assert!(files.len() > 2, "small files after the new config");
    common::assert_exactly_once(common::seqs(&dir.path().join("jout")), total);

    let out = d.cli("connectors", &["restart", "j", "--instance", "5"]);
    assert_eq!(out.status.code(), Some(3), "no instance 5");
    for verb in ["pause", "resume", "stop", "start", "restart"] {
        d.ok(&[verb, "j"]);
    }
    // Deleting forgets it; its name can be used again.
    d.ok(&["delete", "j"]);
    assert_eq!(d.cli("connectors", &["status", "j"]).status.code(), Some(3));
    assert!(!d.data.join("groups/j.json").exists());
    assert!(!d.data.join("connectors/j.json").exists());

    // Every change asked for is in the log: what, which connector, who,
    // and the answer (a refused one too).
    let log = d.log();
    let audited = |op: &str, status: &str| {
        log.lines().any(|l| {
            l.contains("admin request")
                && l.contains(&format!("op=\"{op}\""))
                && l.contains("caller=\"127.0.0.1:")
                && l.contains(&format!("status={status}"))
        })
    };
    assert!(audited("create", "400"), "the refused create: {log}");
    for op in [
        "create",
        "update config",
        "pause",
        "resume",
        "stop",
        "start",
        "restart",
        "delete",
    ] {
        assert!(audited(op, "20"), "{op} is not in the audit trail:\n{log}");
    }
    assert!(audited("restart", "404"), "the refused restart: {log}");
    assert!(
        log.contains(r#"keys=["max_file_bytes"]"#),
        "the config change names the keys it changed: {log}"
    );
}

#[test]
fn the_list_shows_an_instance_that_is_restarting_and_the_status_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    let m = dir.path().join("trap.toml");
    let trap = common::source("trap", common::wasm("trap-on-third-batch"), "t")
        .config("count", 1_000_000)
        .config("times", 1000)
        .restart("initial", "30s");
    std::fs::write(&m, trap.to_string()).unwrap();
    d.ok(&["create", m.to_str().unwrap()]);
    wait_until(
        "the list says the connector is restarting",
        Duration::from_secs(30),
        || d.json("connectors", &["list"])[0]["state"] == "restarting",
    );
    let status = d.status("trap");
    assert_eq!(status["state"], "restarting", "{status}");
    let why = status["last_error"]["message"].as_str().unwrap();
    assert!(why.contains("stopped in `poll`: trapped"), "{why}");
    let table = String::from_utf8_lossy(&d.cli("connectors", &["list"]).stdout).into_owned();
    assert!(table.contains("restarting"), "{table}");
}

#[test]
fn a_swap_skips_an_idle_instance_and_a_paused_sink_takes_nothing_more_when_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    // Two instances on a one-partition topic: instance 1 has nothing to
    // read and ends; a swap goes on without it.
    let manifest = connectors(dir.path(), 20_000, &["files"]);
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("name = \"files\"", "name = \"files\"\nparallelism = 2");
    std::fs::write(&manifest, text).unwrap();
    d.ok(&["create", manifest.to_str().unwrap()]);
    wait_until("instance 1 ends idle", Duration::from_secs(60), || {
        let s = d.status("files");
        s["instances"][1]["state"] == "finished" && n(&s["records_in"]) > 5_000
    });
    let v2 = common::wasm("tag-sink");
    let swapped = d.json(
        "connectors",
        &["update", "files", "--plugin", v2.to_str().unwrap()],
    );
    assert_eq!(swapped["live"], true, "{swapped}");

    // Paused: flushed, committed, and idle; stopping it takes nothing more.
    d.ok(&["pause", "files"]);
    wait_until("the instance pauses", Duration::from_secs(10), || {
        d.status("files")["instances"][0]["state"] == "paused"
    });
    let held = n(&d.status("files")["records_in"]);
    std::thread::sleep(Duration::from_millis(300));
    d.ok(&["stop", "files"]);
    let status = d.status("files");
    assert_eq!(status["state"], "stopped");
    assert_eq!(n(&status["records_in"]), held, "a paused sink took records");
    assert_eq!(status["instances"][0]["state"], "stopped");
    d.ok(&["start", "files"]);
    let total = drain(&d, &["files"]);
    let (plain, marked) = marked_seqs(&dir.path().join("files"));
    common::assert_exactly_once([plain, marked].concat(), total);
}

#[test]
fn a_source_blocked_in_a_read_pauses_resumes_and_swaps_at_once() {
    let peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = peer.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    // `block-on-read` with the default cpu grant (10 s): before waits were
    // interruptible, each of these waited for the grant to run out.
    let reader = common::source("reader", common::wasm("block-on-read"), "lines")
        .config("addr", addr.as_str())
        .grant("net", vec![addr.as_str()]);
    let m = dir.path().join("reader.toml");
    std::fs::write(&m, reader.to_string()).unwrap();
    d.ok(&["create", m.to_str().unwrap()]);
    let (mut first, _) = peer.accept().unwrap();
    let waiting = |n: usize| {
        wait_until(
            "the reader waits for a line",
            Duration::from_secs(30),
            || d.log().matches("block-on-read: waiting for a line").count() >= n,
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    waiting(1);

    // Pause: the instance is paused within moments of the request.
    let asked = std::time::SystemTime::now();
    d.ok(&["pause", "reader"]);
    wait_until("the instance pauses", Duration::from_secs(5), || {
        d.status("reader")["instances"][0]["state"] == "paused"
    });
    let since = d.status("reader")["instances"][0]["since"]
        .as_str()
        .unwrap()
        .to_owned();
    let paused_at = humantime::parse_rfc3339(&since).unwrap();
    let took = paused_at.duration_since(asked).unwrap_or_default();
    eprintln!("pause request to paused: {took:?} (including the CLI's start)");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Resume: it reads on, on the same connection; a line sent now arrives.
    d.ok(&["resume", "reader"]);
    waiting(2);
    first.write_all(b"one\n").unwrap();
    wait_until("the line is read", Duration::from_secs(10), || {
        n(&d.status("reader")["records_out"]) == 1
    });

    // A live swap to the same module while it waits: done in moments, not
    // after its cpu grant.
    waiting(3);
    let began = std::time::Instant::now();
    let module = common::wasm("block-on-read");
    let swapped = d.json(
        "connectors",
        &["update", "reader", "--plugin", module.to_str().unwrap()],
    );
    let took = began.elapsed();
    eprintln!("swap of a waiting source: {took:?} (the CLI round trip)");
    assert_eq!(swapped["live"], true, "{swapped}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let (mut second, _) = peer.accept().unwrap();
    second.write_all(b"two\n").unwrap();
    wait_until("the new module reads", Duration::from_secs(10), || {
        n(&d.status("reader")["records_out"]) == 2
    });
    assert!(!d.log().contains("restarting in"), "{}", d.log());
}
