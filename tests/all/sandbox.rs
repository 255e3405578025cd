//! The sandbox, proven by plugins written to misbehave (`tests/fixtures/`).
//!
//! Every test runs one fixture beside a healthy `datagen` → `file-sink`
//! pair in the same host, and checks both: the fixture got exactly the
//! outcome its grants allow, and the healthy pair delivered every record
//! while the host kept running. A probe fixture reports what it found as
//! one JSON record, which a second `file-sink` writes under `probe-out/`.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

/// Records the healthy pair moves, at a rate that keeps it running while
/// the fixture misbehaves.
const HEALTHY: u64 = 20_000;
const HEALTHY_RATE: u64 = 10_000;

/// The host's epoch tick (`plugin::EPOCH_TICK`).
const TICK: Duration = Duration::from_millis(10);

/// A manifest with the healthy pair (`gen` → `files`, from
/// [`datagen_to_files`]), a file sink of `probe` into `probe-out/`, and the
/// fixture as source `fixture` writing topic `probe`, its table as `extra`
/// makes it.
fn fixture_manifest(
    dir: &Path,
    fixture: &str,
    extra: impl FnOnce(Connector) -> Connector,
) -> PathBuf {
    datagen_to_files(HEALTHY, HEALTHY_RATE)
        .connector(
            sink("probe-files", "file-sink", "probe")
                .set("flush_interval_ms", 100)
                .config("path", "/out")
                .files("probe-out", "/out", "read-write"),
        )
        .connector(extra(source("fixture", wasm(fixture), "probe")))
        .write(dir)
}

/// Nothing added to the fixture's table.
fn nothing(c: Connector) -> Connector {
    c
}

/// Runs the manifest to its end, with `env` set for the host.
fn run_with(manifest: &Path, env: &[(&str, &str)]) -> Output {
    run_env(&["run", "--no-progress", manifest.to_str().unwrap()], env)
}

/// The healthy pair delivered every record once, and the host ended by
/// itself (an exit code, not a signal or a crash).
fn assert_healthy(dir: &Path, out: &Output) {
    assert!(
        out.status.code().is_some(),
        "the host ended by itself: {:?}",
        out.status
    );
    assert_exactly_once(seqs(&dir.join("out")), HEALTHY);
    let line = summary_line(out, "files ");
    assert!(line.contains("finished"), "{line}");
}

/// Runs a fixture that must fail for good (the run exits 1) while the
/// healthy pair delivers everything; returns the folder, the output and
/// the fixture's summary line.
fn run_failing(
    fixture: &str,
    extra: impl FnOnce(Connector) -> Connector,
) -> (tempfile::TempDir, Output, String) {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), fixture, extra);
    let out = run_with(&m, &[]);
    assert_eq!(out.status.code(), Some(1), "the fixture's connector failed");
    assert_healthy(dir.path(), &out);
    let line = summary_line(&out, "fixture");
    assert!(line.contains("failed: "), "{line}");
    assert!(line.contains("(at 20"), "the failure has its time: {line}");
    (dir, out, line)
}

/// The lines the probe sink wrote.
fn probe_lines(dir: &Path) -> Vec<String> {
    output_lines(&dir.join("probe-out"))
}

/// The one outcome a probe fixture reported.
fn probe(dir: &Path) -> serde_json::Value {
    let lines = probe_lines(dir);
    assert_eq!(lines.len(), 1, "one outcome record: {lines:?}");
    serde_json::from_str(&lines[0]).unwrap()
}

/// Runs a probe fixture and returns its outcome, after checking the
/// healthy pair and a clean exit.
fn run_probe(
    fixture: &str,
    extra: impl FnOnce(Connector) -> Connector,
    setup: impl FnOnce(&Path),
) -> serde_json::Value {
    run_probe_env(fixture, extra, &[], setup)
}

fn run_probe_env(
    fixture: &str,
    extra: impl FnOnce(Connector) -> Connector,
    env: &[(&str, &str)],
    setup: impl FnOnce(&Path),
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path());
    let m = fixture_manifest(dir.path(), fixture, extra);
    let out = run_with(&m, env);
    assert_eq!(out.status.code(), Some(0), "every connector finished");
    assert_healthy(dir.path(), &out);
    let outcome = probe(dir.path());
    assert_eq!(outcome["fixture"], fixture);
    outcome
}

fn assert_denied(outcome: &serde_json::Value, kind: &str) {
    assert_eq!(outcome["outcome"], "denied", "{outcome}");
    assert_eq!(outcome["kind"], kind, "{outcome}");
}

/// The folder `granted/` (see [`granted_dir`]), granted read-only as
/// `/data`.
fn data_grant(c: Connector) -> Connector {
    c.files("granted", "/data", "read-only")
}

fn granted_dir(dir: &Path) -> PathBuf {
    let granted = dir.join("granted");
    std::fs::create_dir_all(&granted).unwrap();
    std::fs::write(granted.join("inside.txt"), "inside\n").unwrap();
    granted
}

// ---- files ----

#[test]
fn read_etc_passwd_without_a_grant_finds_nothing() {
    let outcome = run_probe("read-etc-passwd", nothing, |_| {});
    // With no directory granted, no path exists for the plugin at all.
    assert_denied(&outcome, "NotFound");
}

#[test]
fn read_etc_passwd_works_when_etc_is_granted() {
    let outcome = run_probe(
        "read-etc-passwd",
        |c| c.files("/etc", "/etc", "read-only"),
        |_| {},
    );
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
}

#[test]
fn escape_dotdot_is_denied() {
    let outcome = run_probe("escape-dotdot", data_grant, |d| {
        granted_dir(d);
    });
    assert_denied(&outcome, "PermissionDenied");
}

#[test]
fn escape_absolute_symlink_is_denied() {
    let outcome = run_probe("escape-absolute-symlink", data_grant, |d| {
        let granted = granted_dir(d);
        std::os::unix::fs::symlink("/etc/passwd", granted.join("absolute-link")).unwrap();
    });
    assert_denied(&outcome, "PermissionDenied");
}

#[test]
fn escape_relative_symlink_is_denied() {
    let outcome = run_probe("escape-relative-symlink", data_grant, |d| {
        let granted = granted_dir(d);
        std::os::unix::fs::symlink(
            "../../../../../../../../etc/passwd",
            granted.join("relative-link"),
        )
        .unwrap();
    });
    assert_denied(&outcome, "PermissionDenied");
}

#[test]
fn a_symlink_inside_the_grant_is_followed() {
    // The escapes above are refused for leaving the grant, not for being
    // symlinks.
    let outcome = run_probe(
        "escape-relative-symlink",
        |c| data_grant(c).config("path", "/data/relative-link"),
        |d| {
            let granted = granted_dir(d);
            std::os::unix::fs::symlink("inside.txt", granted.join("relative-link")).unwrap();
        },
    );
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
    assert_eq!(outcome["detail"], "read 7 bytes");
}

#[test]
fn write_read_only_is_denied_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let granted = granted_dir(dir.path());
    let m = fixture_manifest(dir.path(), "write-read-only", data_grant);
    let out = run_with(&m, &[]);
    assert_healthy(dir.path(), &out);
    assert_denied(&probe(dir.path()), "PermissionDenied");
    assert!(!granted.join("written-by-plugin").exists());
}

#[test]
fn write_read_write_works() {
    let dir = tempfile::tempdir().unwrap();
    let granted = granted_dir(dir.path());
    let m = fixture_manifest(dir.path(), "write-read-only", |c| {
        c.files("granted", "/data", "read-write")
    });
    let out = run_with(&m, &[]);
    assert_healthy(dir.path(), &out);
    assert_eq!(probe(dir.path())["outcome"], "allowed");
    assert_eq!(
        std::fs::read_to_string(granted.join("written-by-plugin")).unwrap(),
        "written by a plugin"
    );
}

// ---- net ----

/// A listener on a free port, and what the first client sent (if any
/// connected within the run).
fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

fn received(l: &TcpListener) -> Option<String> {
    let (mut s, _) = l.accept().ok()?;
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    Some(text)
}

#[test]
fn connect_ungranted_port_is_denied_and_nothing_connects() {
    let (l, port) = listener();
    // A grant for another port must not open this one.
    let other = port.wrapping_add(1).max(1);
    let extra = |c: Connector| {
        c.config("addr", format!("127.0.0.1:{port}"))
            .grant("net", vec![format!("127.0.0.1:{other}")])
    };
    let outcome = run_probe("connect-ungranted-port", extra, |_| {});
    assert_denied(&outcome, "PermissionDenied");
    assert_eq!(received(&l), None, "no connection reached the listener");
}

#[test]
fn connect_without_any_net_grant_is_denied() {
    let (l, port) = listener();
    let extra = |c: Connector| c.config("addr", format!("127.0.0.1:{port}"));
    let outcome = run_probe("connect-ungranted-port", extra, |_| {});
    assert_denied(&outcome, "PermissionDenied");
    assert_eq!(received(&l), None);
}

#[test]
fn a_refused_connection_is_logged_naming_the_address_and_the_grant() {
    let (_l, port) = listener();
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), "connect-ungranted-port", |c| {
        c.config("addr", format!("127.0.0.1:{port}"))
    });
    let out = run_with(&m, &[]);
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    let line = log
        .lines()
        .find(|l| l.contains("refused to connect to"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(line.contains("connector=fixture"), "{line}");
    assert!(
        line.contains(&format!(
            "refused to connect to 127.0.0.1:{port}, which no `net` grant allows (grant it with net = [\"127.0.0.1:{port}\"])"
        )),
        "{line}"
    );
}

#[test]
fn an_open_that_fails_after_a_refused_connection_fails_at_once_naming_the_grant() {
    let (_l, port) = listener();
    let extra = |c: Connector| c.config("addr", format!("127.0.0.1:{port}"));
    let (_dir, out, line) = run_failing("connect-in-open", extra);
    assert!(
        line.contains(&format!("grant it with net = [\"127.0.0.1:{port}\"]")),
        "{line}"
    );
    let log = stderr(&out);
    assert!(
        log.contains("it needs a grant it does not have; not restarting the instance"),
        "{log}"
    );
    assert!(!log.contains("restarting in"), "restarted: {log}");
}

#[test]
fn connect_granted_port_works() {
    let (l, port) = listener();
    let extra = |c: Connector| {
        c.config("addr", format!("127.0.0.1:{port}"))
            .grant("net", vec![format!("127.0.0.1:{port}")])
    };
    let outcome = run_probe("connect-granted-port", extra, |_| {});
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
    assert_eq!(received(&l).as_deref(), Some("hello"));
}

#[test]
fn connect_granted_by_name_and_cidr_works() {
    // `localhost` is resolved by the host when the plugin connects; the
    // plugin (without dns) connects by address.
    for rule in ["localhost:{port}", "127.0.0.0/8:{port}"] {
        let (l, port) = listener();
        let rule = rule.replace("{port}", &port.to_string());
        let extra = |c: Connector| {
            c.config("addr", format!("127.0.0.1:{port}"))
                .grant("net", vec![rule.clone()])
        };
        let outcome = run_probe("connect-granted-port", extra, |_| {});
        assert_eq!(outcome["outcome"], "allowed", "{rule}: {outcome}");
        assert_eq!(received(&l).as_deref(), Some("hello"), "{rule}");
    }
}

#[test]
fn lookup_without_dns_is_denied() {
    let outcome = run_probe("lookup-without-dns", nothing, |_| {});
    assert_eq!(outcome["outcome"], "denied", "{outcome}");
    // wasi:sockets answers `permanent-resolver-failure`; wasi-libc makes
    // that EAI_FAIL, which Rust reports as an uncategorized error.
    assert!(
        outcome["error"]
            .as_str()
            .unwrap()
            .contains("failed to lookup address information"),
        "{outcome}"
    );
}

#[test]
fn lookup_with_dns_works() {
    let outcome = run_probe("lookup-without-dns", |c| c.grant("dns", true), |_| {});
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
    let addrs = outcome["detail"].as_str().unwrap();
    assert!(
        addrs.contains("127.0.0.1") || addrs.contains("::1"),
        "{addrs}"
    );
}

// ---- env ----

#[test]
fn read_ungranted_env_sees_nothing() {
    let outcome = run_probe_env(
        "read-ungranted-env",
        |c| c.config("name", "SLUICE_TEST_VISIBLE"),
        &[("SLUICE_TEST_VISIBLE", "host-only")],
        |_| {},
    );
    assert_denied(&outcome, "NotFound");
}

#[test]
fn a_granted_env_variable_is_visible() {
    let outcome = run_probe_env(
        "read-ungranted-env",
        |c| {
            c.config("name", "SLUICE_TEST_VISIBLE")
                .grant("env", vec!["SLUICE_TEST_VISIBLE"])
        },
        &[("SLUICE_TEST_VISIBLE", "passed-through")],
        |_| {},
    );
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
    assert_eq!(outcome["detail"], "passed-through");
}

// ---- cpu and memory ----

/// The duration in "… ran 301.2ms in one call …" of a cpu interruption.
fn interrupted_after(text: &str, marker: &str) -> Duration {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {text}"));
    let rest = &text[at + marker.len()..];
    let end = rest.find(' ').unwrap();
    let d = &rest[..end].trim_end_matches(',');
    if let Some(ms) = d.strip_suffix("ms") {
        Duration::from_secs_f64(ms.parse::<f64>().unwrap() / 1e3)
    } else if let Some(s) = d.strip_suffix('s') {
        Duration::from_secs_f64(s.parse::<f64>().unwrap())
    } else {
        panic!("not a duration: {d}")
    }
}

fn loop_forever(mode: &str) -> (Output, String) {
    let (_dir, out, line) = run_failing("loop-forever", |c| {
        c.config("mode", mode)
            .grant("cpu", "300ms")
            .restart("initial", "100ms")
            .restart("attempts", 1)
    });
    assert!(line.contains("restarted once"), "{line}");
    (out, line)
}

/// The scheduling allowance on top of "the cpu grant plus one tick": the
/// ticker thread and the runtime share two cores with the other tests.
const SLACK: Duration = Duration::from_millis(40);

#[test]
fn loop_forever_spinning_is_interrupted_within_its_cpu_grant_plus_a_tick() {
    let (out, _) = loop_forever("spin");
    let err = stderr(&out);
    // Two lives (one restart), each interrupted.
    assert!(
        err.matches("past its cpu grant of 300ms").count() >= 2,
        "{err}"
    );
    let elapsed = interrupted_after(&err, "ran ");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(
        elapsed <= Duration::from_millis(300) + TICK + SLACK,
        "{elapsed:?}"
    );
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let (dir, _, line) = run_failing("memory-bomb", |c| {
        c.grant("memory", "32 MiB").restart("attempts", 0)
    });
    assert!(
        line.contains("to 32.1 MiB (33619968 bytes), past its memory grant of 32.0 MiB"),
        "{line}"
    );
    assert!(probe_lines(dir.path()).is_empty());
}

#[test]
fn memory_within_the_grant_works() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), "memory-bomb", |c| {
        c.config("mib", 16).grant("memory", "32 MiB")
    });
    let out = run_with(&m, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_healthy(dir.path(), &out);
    assert_eq!(probe_lines(dir.path()), ["{\"allocated_mib\":16}"]);
}

// ---- plugin state ----

/// 400 values of 64 KiB: 25 MiB, past the default grant of 16 MiB.
fn state_hog(c: Connector) -> Connector {
    c.config("puts", 400).config("value_bytes", 65536)
}

#[test]
fn plugin_state_is_bounded_by_the_default_state_grant() {
    let outcome = run_probe("state-hog", state_hog, |_| {});
    assert_denied(&outcome, "Other");
    let error = outcome["error"].as_str().unwrap();
    // 16 MiB holds 255 values of 64 KiB and their keys, not 256.
    assert!(error.contains("after 255 puts"), "{error}");
    assert!(
        error.contains("past its state grant of 16 MiB and 10000 keys"),
        "{error}"
    );
}

#[test]
fn a_state_grant_gives_more_room_and_bounds_the_keys() {
    let roomy = |c| state_hog(c).grant("state", "32 MiB");
    let outcome = run_probe("state-hog", roomy, |_| {});
    assert_eq!(outcome["outcome"], "allowed", "{outcome}");
    assert_eq!(outcome["detail"], "stored 400 puts");

    let few_keys = |c| state_hog(c).grant("state_keys", 100);
    let outcome = run_probe("state-hog", few_keys, |_| {});
    assert_denied(&outcome, "Other");
    let error = outcome["error"].as_str().unwrap();
    assert!(error.contains("after 100 puts"), "{error}");
    assert!(
        error.contains("in 101 keys, past its state grant of 16 MiB and 100 keys"),
        "{error}"
    );
}

// ---- containment and restart ----

#[test]
fn trap_on_third_batch_is_restarted_with_backoff_and_delivers_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), "trap-on-third-batch", |c| {
        c.config("count", 1000)
            .config("batch", 100)
            .config("times", 3)
            .restart("initial", "100ms")
            .restart("max", "1s")
            .restart("attempts", 5)
    });
    let out = run_with(&m, &[]);
    assert_eq!(out.status.code(), Some(0), "it recovered");
    assert_healthy(dir.path(), &out);
    assert_exactly_once(seqs(&dir.path().join("probe-out")), 1000);
    let err = stderr(&out);
    for delay in ["100ms", "200ms", "400ms"] {
        assert!(
            err.contains(&format!("restarting in {delay}")),
            "{delay}: {err}"
        );
    }
    assert!(
        !err.contains("restarting in 800ms"),
        "three traps, three restarts"
    );
    // The panic message reaches the log through the plugin's stderr.
    assert!(err.contains("trapping on purpose"), "{err}");
    let line = summary_line(&out, "fixture");
    assert!(line.contains("finished (restarted 3 times)"), "{line}");
}

// ---- secrets ----

const SECRET_A: &str = "correct-horse";
const SECRET_B: &str = "battery-staple-4711";

fn secret_manifest(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("key.txt"), format!("{SECRET_B}\n")).unwrap();
    fixture_manifest(dir, "log-the-secret", |c| {
        c.config("password", "${secret:a}/${secret:b}")
            .grant("stdout", true)
            .secret("a", "env", "SLUICE_TEST_SECRET")
            .secret("b", "file", "key.txt")
            .restart("initial", "50ms")
    })
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn log_the_secret_never_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = secret_manifest(dir.path());
    let out = run_with(&m, &[("SLUICE_TEST_SECRET", SECRET_A)]);
    assert_eq!(out.status.code(), Some(0));
    assert_healthy(dir.path(), &out);
    // The plugin did receive it: its record holds it reversed.
    let expected: String = format!("{SECRET_A}/{SECRET_B}").chars().rev().collect();
    assert_eq!(
        probe_lines(dir.path()),
        [format!("{{\"reversed\":\"{expected}\"}}")]
    );
    // It tried: failed open with it, logged it twice, wrote it to stderr.
    let err = stderr(&out);
    assert!(err.contains("login refused for password ***/***"), "{err}");
    assert!(err.contains("connecting with password ***/***"), "{err}");
    assert!(err.contains("password=***/***"), "{err}");
    assert!(
        err.contains("plugin stderr: stderr: password ***/***"),
        "{err}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for secret in [SECRET_A, SECRET_B] {
        assert!(!stdout.contains(secret), "stdout shows {secret}: {stdout}");
        assert!(!err.contains(secret), "stderr shows {secret}");
        for file in files_under(dir.path()) {
            if file.ends_with("key.txt") {
                continue;
            }
            let bytes = std::fs::read(&file).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} holds {secret}",
                file.display()
            );
        }
    }
    // validate names the secrets and their sources, never their values.
    let v = sluice()
        .args(["validate", m.to_str().unwrap()])
        .env("SLUICE_TEST_SECRET", SECRET_A)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "{text}");
    assert!(
        text.contains("a from env SLUICE_TEST_SECRET, b from file key.txt"),
        "{text}"
    );
    assert!(
        !text.contains(SECRET_A) && !text.contains(SECRET_B),
        "{text}"
    );
}

#[test]
fn a_secret_that_cannot_be_read_is_named_with_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let m = secret_manifest(dir.path());
    let out = sluice()
        .args(["validate", m.to_str().unwrap()])
        .env_remove("SLUICE_TEST_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("comes from environment variable SLUICE_TEST_SECRET, which is not set"),
        "{err}"
    );
    assert!(err.contains("connector[3].grants.secrets"), "{err}");
}

// ---- nothing granted ----

#[test]
fn a_plugin_with_no_grants_computes_logs_and_exchanges_batches() {
    // `trap-on-third-batch` with times = 0 computes, keeps host state, logs
    // and emits batches, with an empty grants table; every probe test above
    // shows that the same empty table denies files, sockets, names and
    // variables.
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), "trap-on-third-batch", |c| {
        c.config("count", 500).config("times", 0)
    });
    let out = run_with(&m, &[]);
    assert_eq!(out.status.code(), Some(0));
    assert_healthy(dir.path(), &out);
    assert_exactly_once(seqs(&dir.path().join("probe-out")), 500);
    assert!(stderr(&out).contains("trap-on-third-batch: life 1 starts at seq 0"));
}

#[test]
fn validate_prints_each_connectors_grants_as_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixture_manifest(dir.path(), "connect-granted-port", |c| {
        c.config("addr", "127.0.0.1:9")
            .grant("net", vec!["127.0.0.1:9", "10.0.0.0/8:9092-9094"])
            .grant("dns", true)
            .grant("env", vec!["SLUICE_TEST_VISIBLE"])
            .grant("memory", "64 MiB")
            .grant("cpu", "2s")
    });
    let out = sluice()
        .args(["validate", m.to_str().unwrap()])
        .env("SLUICE_TEST_VISIBLE", "x")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("connector "))
        .collect();
    assert!(
        table[0].contains("grant") && table[0].contains("allows"),
        "{text}"
    );
    let row = |name: &str, grant: &str| -> String {
        let start = table.iter().position(|l| l.starts_with(name)).unwrap();
        table[start..]
            .iter()
            .find(|l| l.split_whitespace().any(|w| w == grant))
            .unwrap()
            .to_string()
    };
    assert!(
        row("fixture", "net").contains("127.0.0.1:9, 10.0.0.0/8:9092-9094"),
        "{text}"
    );
    assert!(row("fixture", "dns").contains("yes"), "{text}");
    assert!(
        row("fixture", "env").contains("SLUICE_TEST_VISIBLE"),
        "{text}"
    );
    assert!(row("fixture", "memory").contains("64 MiB"), "{text}");
    assert!(row("fixture", "cpu").contains("2s per call"), "{text}");
    assert!(
        row("fixture", "tls").contains("trusts the system's roots"),
        "{text}"
    );
    assert!(row("gen ", "files").contains("none"), "{text}");
    assert!(
        row("gen ", "memory").contains("256 MiB (default)"),
        "{text}"
    );
    assert!(
        row("files ", "files").contains("as /out (read-write)"),
        "{text}"
    );
}

#[test]
fn a_plugin_that_breaks_the_contract_is_named_with_what_it_broke() {
    let (dir, _, line) = run_failing("break-the-contract", |c| {
        c.batch("max_records", 10)
            .restart("initial", "50ms")
            .restart("attempts", 1)
    });
    assert!(
        line.contains("break_the_contract.wasm"),
        "names the plugin: {line}"
    );
    assert!(
        line.contains(
            "broke the contract in `poll`: returned 11 records when asked for at most 10"
        ),
        "{line}"
    );
    assert!(line.contains("restarted once"), "{line}");
    assert!(
        probe_lines(dir.path()).is_empty(),
        "nothing of the bad batch reached the log"
    );
}
