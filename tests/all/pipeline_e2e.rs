//! End to end: real plugins through the host and the embedded broker, driven
//! through the `sluice` binary as a user would.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn bounded_pipeline_delivers_every_record_once_and_a_second_run_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = datagen_to_files(20_000, 0).write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("20,000"),
        "summary shows the count: {summary}"
    );
    let first = seqs(&dir.path().join("out"));
    assert_exactly_once(first.clone(), 20_000);
    let files = output_files(&dir.path().join("out")).len();
    assert!(
        files > 1,
        "max_file_bytes makes the sink roll files, got {files}"
    );

    // The documented second run: the source resumes at its end and the sink
    // at its committed offset, so nothing is written again.
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(seqs(&dir.path().join("out")), first);
}

#[test]
fn a_pipeline_stopped_part_way_continues_from_its_committed_offsets() {
    let dir = tempfile::tempdir().unwrap();
    // Unbounded at 20,000 records/s, stopped with Ctrl-C (SIGINT)…
    let manifest = datagen_to_files(0, 20_000).write(dir.path());
    let child = sluice()
        .args(["run", "--no-progress", manifest.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out_dir = dir.path().join("out");
    let started = Instant::now();
    while seqs(&out_dir).len() < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no output after two minutes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(130),
        "Ctrl-C exits 130 after a clean stop"
    );
    let stopped = seqs(&out_dir);
    let n = stopped.len() as u64;
    assert!((2_000..60_000).contains(&n), "stopped after {n} records");
    // A clean stop flushes and commits everything it took from the log.
    assert_exactly_once(stopped, n);

    // …then run again, bounded: it continues where it stopped, no gap, no repeat.
    let manifest = datagen_to_files(60_000, 0).write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    assert_exactly_once(seqs(&out_dir), 60_000);
}

#[test]
fn file_source_reads_every_line_of_a_granted_directory() {
    let dir = tempfile::tempdir().unwrap();
    numbered_lines(
        &dir.path().join("in"),
        &[("a.txt", 0..3000), ("b.txt", 3000..5000)],
    );
    let manifest = manifest()
        .connector(
            source("lines", "file-source", "lines")
                .config("path", "/in")
                .files("in", "/in", "read-only"),
        )
        .connector(
            sink("files", "file-sink", "lines")
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    assert_exactly_once(seqs(&dir.path().join("out")), 5000);
}

/// Runs five datagen records into the `print` sink, with the `stdout`
/// grant or without.
fn run_print_pipeline(dir: &std::path::Path, stdout: bool) -> std::process::Output {
    let show = sink("show", "print", "t").config("prefix", "t> ");
    let manifest = manifest()
        .connector(
            source("gen", "datagen", "t")
                .config("count", 5)
                .config("payload_bytes", 1),
        )
        .connector(if stdout {
            show.grant("stdout", true)
        } else {
            show
        })
        .write(dir);
    run(&["run", manifest.to_str().unwrap()])
}

#[test]
fn print_sink_writes_values_to_stdout_when_granted() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_print_pipeline(dir.path(), true);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    for i in 0..5 {
        assert!(
            stdout.contains(&format!("t> {{\"seq\":{i}}}\n")),
            "{stdout}"
        );
    }
}

#[test]
fn print_sink_without_the_stdout_grant_writes_nothing_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_print_pipeline(dir.path(), false);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("t> "), "no grant, no stdout: {stdout}");
    assert!(
        stdout.contains("show"),
        "the summary still counts the sink: {stdout}"
    );
}

#[test]
fn a_read_only_grant_of_a_missing_directory_stops_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            source("lines", "file-source", "lines")
                .config("path", "/in")
                .files("missing", "/in", "read-only"),
        )
        .write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot open granted directory"), "{err}");
    assert!(err.contains("missing"), "names the directory: {err}");
    assert!(
        !dir.path().join("missing").exists(),
        "a read-only grant creates nothing"
    );
}

#[test]
fn a_committed_offset_past_the_end_of_the_log_resumes_at_the_end_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = datagen_to_files(1_000, 0).write(dir.path());
    assert!(run(&["run", manifest.to_str().unwrap()]).status.success());
    // As if the log lost acknowledged data (a power loss under fsync =
    // "never"): the group's offset and the offset the file-sink stored
    // itself both point past the end.
    std::fs::write(
        dir.path().join("data/groups/files.json"),
        r#"{"events/0": 5000}"#,
    )
    .unwrap();
    let marker = dir.path().join("out/.sluice-offset-events-0");
    let text = std::fs::read_to_string(&marker).unwrap();
    let (_, rest) = text.split_once(' ').unwrap();
    std::fs::write(&marker, format!("5000 {rest}")).unwrap();
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("the committed offset is past the end of the log"),
        "{}",
        stderr(&out)
    );
    assert_exactly_once(seqs(&dir.path().join("out")), 1_000);
}

#[test]
fn blackhole_reports_what_reached_it_and_names_its_folder_when_not_granted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("report")).unwrap();
    let source = gen_source(5_000, 0, 100).config("stamp", true);
    let hole = sink("hole", "blackhole", "events").config("report_dir", "/report");
    let granted = manifest()
        .connector(source.clone())
        .connector(hole.clone().files("report", "/report", "read-write"))
        .write(dir.path());
    let out = run(&["run", "--no-progress", granted.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/hole-0.json")).unwrap())
            .unwrap();
    assert_eq!(report["records"], 5_000);
    assert_eq!(report["value_bytes"], 500_000);
    assert_eq!(
        report["latency"]["count"], 5_000,
        "every record was stamped"
    );
    assert!(report["first_us"].as_u64() <= report["last_us"].as_u64());

    // The same sink without the grant: refused at open, naming the folder.
    let other = tempfile::tempdir().unwrap();
    let ungranted = manifest()
        .connector(source)
        .connector(hole)
        .write(other.path());
    let out = run(&["run", "--no-progress", ungranted.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("/report") && err.contains("granted"),
        "the error names the folder and the grant: {err}"
    );
}

#[test]
fn a_record_without_the_header_its_topic_template_names_fails_the_source_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // `shards` unset: no record has a `shard` header.
    let manifest = manifest()
        .connector(
            gen_source(100, 0, 64)
                .set("topic", "events.{shard}")
                .restart("attempts", 0),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "routes to no topic: it has no `shard` header, which topic \"events.{shard}\" needs"
        ),
        "{err}"
    );
    // Nothing of the batch was stored: not even a topic was made.
    let topics = dir.path().join("data/topics");
    let made: Vec<_> = std::fs::read_dir(&topics)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(made.is_empty(), "{made:?}");
}
