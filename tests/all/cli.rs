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
    let m = write_manifest(dir.path(), &datagen_to_files(1000, 0));
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let m = write_manifest(dir.path(), &datagen_to_files(1000, 0));
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
