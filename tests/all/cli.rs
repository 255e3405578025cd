//! The command line as an operator meets it, apart from any one verb: a
//! closed output pipe, logs written to a file.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;

use crate::common::*;

#[test]
fn a_verb_whose_output_pipe_closes_early_ends_quietly() {
    // `sluice plugin list | head -0`: the reader is gone before the first
    // write, as `head` is after its lines.
    let mut child = sluice()
        .args(["plugin", "list"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
    // As `ls | head` does: ended by SIGPIPE, or done.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.signal() == Some(13) || out.status.success(),
        "{:?}: {err}",
        out.status
    );
}

#[test]
fn logs_to_a_file_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let m = datagen_to_files(1000, 0).write(dir.path());
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = datagen_to_files(1000, 0).write(dir.path());
    let out = run(&[
        "run",
        "--no-progress",
        "--log-format",
        "json",
        m.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    let mut lines = 0;
    for line in log.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["fields"]["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
}

#[test]
fn plugins_answers_without_a_daemon() {
    let out = run(&["plugins", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("datagen ") && l.contains("source")),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "count = 10\npayload_bytes = 64\n").unwrap();
    let out = run(&["plugins", "validate", "datagen", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"payload_bytes": "big"}"#).unwrap();
    let out = run(&[
        "plugins",
        "validate",
        "datagen",
        bad.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["valid"], false);
    assert!(
        answer["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("payload_bytes: \"big\" is not of type"),
        "{answer}"
    );

    let out = run(&["plugins", "inspect", "no-such-plugin"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

#[test]
fn plugins_asks_a_daemon_it_finds_unless_told_local() {
    // A data directory naming a daemon that is not there: `plugins` asks
    // it (and says it cannot reach it); `--local` answers from the binary.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("daemon.json"),
        r#"{"url": "http://127.0.0.1:1", "pid": 1}"#,
    )
    .unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let env = [("SLUICE_DATA_DIR", data_dir)];
    let out = run_env(&["plugins", "list"], &env);
    assert_eq!(out.status.code(), Some(1), "it asked the daemon");
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));
    let out = run_env(&["plugins", "list", "--local"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("datagen "));
}

#[test]
fn an_admin_verb_with_no_daemon_says_how_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "connectors",
        "list",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no daemon found"), "{err}");
    assert!(err.contains("--data-dir or SLUICE_DATA_DIR"), "{err}");
}
