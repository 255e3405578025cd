//! Nothing lost, nothing twice: the host killed with SIGKILL at random
//! moments and restarted each time, checked by sequence numbers, as Kafka
//! Connect's hard-kill tests do.
//!
//! Each storm prints its seed; `SLUICE_STORM_SEED=<seed>` replays one.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// A small xorshift generator: the storm needs reproducible, not good,
/// randomness.
struct Rng(u64);

impl Rng {
    fn from_env_or_clock() -> Self {
        let seed = std::env::var("SLUICE_STORM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("storm seed: {seed} (SLUICE_STORM_SEED={seed} replays it)");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Starts `sluice run` on `manifest`, kills it with SIGKILL after a random
/// wait in `window` (unless it has ended by then), `kills` times; then runs
/// it to its end. Most kills must land while records flow.
pub(crate) fn storm(dir: &Path, manifest: &Path, kills: u32, window: std::ops::Range<u64>) {
    let mut rng = Rng::from_env_or_clock();
    let mut cut = 0;
    for i in 0..kills {
        let log = std::fs::File::create(dir.join(format!("run-{i}.log"))).unwrap();
        let mut child = sluice()
            .args(["run", "--no-progress", manifest.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let wait = window.start + rng.below(window.end - window.start);
        std::thread::sleep(Duration::from_millis(wait));
        match child.try_wait().unwrap() {
            Some(status) => assert!(
                status.success(),
                "run {i} ended by itself but failed: {status:?} (see run-{i}.log)"
            ),
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                cut += 1;
            }
        }
    }
    eprintln!("{cut} of {kills} runs were killed mid-flight");
    assert!(
        cut >= kills / 2,
        "most kills must land while records flow, got {cut}"
    );
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "the last run finishes the work");
}

const RECORDS: u64 = 1_000_000;

#[test]
fn a_datagen_to_file_sink_pipeline_killed_twenty_times_delivers_every_seq_once() {
    let dir = tempfile::tempdir().unwrap();
    // 200,000 records/s: the million takes five seconds of running, so the
    // kills land while records flow.
    let manifest = datagen_to_files(RECORDS, 200_000).write(dir.path());
    storm(dir.path(), &manifest, 20, 100..700);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}

#[test]
fn a_source_routing_each_record_to_a_topic_of_its_own_killed_ten_times_delivers_every_seq_once() {
    const SHARDS: u64 = 3;
    let dir = tempfile::tempdir().unwrap();
    // Every batch holds records of all three topics, so each is stored as
    // three parts: kills land between them too.
    let mut m = manifest().connector(
        gen_source(RECORDS, 200_000, 64)
            .set("topic", "events.{shard}")
            .config("shards", SHARDS as i64),
    );
    for shard in 0..SHARDS {
        m = m.connector(
            sink(
                &format!("files-{shard}"),
                "file-sink",
                &format!("events.{shard}"),
            )
            .set("flush_interval_ms", 200)
            .config("path", "/out")
            .config("max_file_bytes", 200_000)
            .files(&format!("out/{shard}"), "/out", "read-write"),
        );
    }
    let manifest = m.write(dir.path());
    // The last run ends by itself: each sink knows its topic is done once
    // the routing source has ended.
    storm(dir.path(), &manifest, 10, 100..700);
    for shard in 0..SHARDS {
        let got = seqs(&dir.path().join("out").join(shard.to_string()));
        let want: Vec<u64> = (shard..RECORDS).step_by(SHARDS as usize).collect();
        assert_eq!(got.len(), want.len(), "topic events.{shard}");
        if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "events.{shard}: record {i} is seq {}, not {}",
                got[i], want[i]
            );
        }
    }
}

#[test]
fn a_file_source_to_file_sink_pipeline_killed_twenty_times_delivers_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    // Two files of numbered lines, so a kill can land in either, or
    // between them; read at 200,000 lines/s so the kills land while lines
    // flow.
    numbered_lines(
        &dir.path().join("in"),
        &[("a.txt", 0..RECORDS / 2), ("b.txt", RECORDS / 2..RECORDS)],
    );
    let manifest = manifest()
        .connector(
            source("lines", "file-source", "lines")
                .config("path", "/in")
                .config("rate", 200_000)
                .files("in", "/in", "read-only"),
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
}

/// Runs a source-only manifest (bounded `datagen` into `events`) in `dir`,
/// then returns the path of the topic's last segment.
fn produce_only(dir: &Path, count: u64) -> std::path::PathBuf {
    let manifest = manifest()
        .broker("segment_bytes", 200_000)
        .connector(
            source("gen", "datagen", "events")
                .batch("max_records", 100)
                .config("count", count as i64)
                .config("payload_bytes", 64),
        )
        .write(dir);
    assert!(run(&["run", manifest.to_str().unwrap()]).status.success());
    let partition = dir.join("data/topics/events/0");
    let mut segments: Vec<_> = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    assert!(segments.len() > 1, "the log rolled segments");
    segments.pop().unwrap()
}

#[test]
fn a_torn_tail_is_cut_to_the_last_whole_batch_and_the_source_continues_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let last = produce_only(dir.path(), 20_000);
    // Cut the last segment in the middle of its last batch, as a crash
    // during a write leaves it.
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 1000).unwrap();
    drop(file);
    // The source resumes after the last whole batch, so what was cut is
    // produced again; the sink sees every seq once.
    let manifest = datagen_to_files(20_000, 0).write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("torn"),
        "the recovery says what it cut: {}",
        stderr(&out)
    );
    assert_exactly_once(seqs(&dir.path().join("out")), 20_000);
}

#[test]
fn a_flipped_byte_mid_segment_is_refused_naming_file_and_offset_and_nothing_reaches_a_sink() {
    let dir = tempfile::tempdir().unwrap();
    let last = produce_only(dir.path(), 20_000);
    let first = last.with_file_name(format!("{:020}.log", 0));
    let mut bytes = std::fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let manifest = datagen_to_files(20_000, 0).write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("00000000000000000000.log"),
        "names the file: {err}"
    );
    assert!(err.contains("at byte "), "names the offset: {err}");
    // Depending on where the byte falls: inside a frame's body, or in its
    // header (then no frame starts where the damaged one says the next is).
    assert!(
        err.contains("corrupt log data in")
            && (err.contains("checksum mismatch") || err.contains("no frame starts here")),
        "says what is wrong: {err}"
    );
    assert!(
        err.contains("restore the file from a copy"),
        "says what to do: {err}"
    );
    assert!(
        seqs(&dir.path().join("out")).is_empty(),
        "no record reached the sink"
    );
}

/// A `datagen` → `reject-every-nth` pipeline, with a `file-sink` (JSON)
/// reading the dead-letter topic into `dlq/`.
fn poison_manifest(dir: &Path, produced: u64, sink_config: &[(&str, i64)]) -> std::path::PathBuf {
    let picky = sink_config.iter().fold(
        sink("picky", wasm("reject-every-nth"), "events")
            .restart("initial", "20ms")
            .config("path", "/out")
            .files("accepted", "/out", "read-write"),
        |picky, (key, value)| picky.config(key, *value),
    );
    manifest()
        .connector(gen_source(produced, 0, 32))
        .connector(picky)
        .connector(dead_letters("picky.dlq"))
        .write(dir)
}

#[test]
fn poison_records_go_to_the_dead_letter_topic_each_with_its_error_and_origin() {
    const PRODUCED: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = poison_manifest(dir.path(), PRODUCED, &[("every", 1000)]);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a bounded run ends, DLQ included"
    );
    let delivered = seqs(&dir.path().join("accepted"));
    let mut dead = Vec::new();
    for f in output_files(&dir.path().join("dlq")) {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let seq = json_line_seq(&r);
            assert_eq!(r["topic"], "picky.dlq");
            let h = &r["headers"];
            assert_eq!(
                h["sluice.error"],
                format!("seq {seq} is a multiple of 1000"),
                "{r}"
            );
            assert_eq!(h["sluice.connector"], "picky");
            assert_eq!(h["sluice.topic"], "events");
            assert_eq!(h["sluice.partition"], "0");
            // One producer into one partition: offset = seq.
            assert_eq!(h["sluice.offset"], seq.to_string());
            dead.push(seq);
        }
    }
    let expected: Vec<u64> = (0..PRODUCED).step_by(1000).collect();
    dead.sort_unstable();
    assert_eq!(dead, expected, "exactly the refused records, once each");
    assert_eq!(
        delivered.len() as u64 + dead.len() as u64,
        PRODUCED,
        "delivered + dead-lettered = produced"
    );
    let mut all = delivered;
    all.extend(&dead);
    assert_exactly_once(all, PRODUCED);
    let line = summary_line(&out, "picky");
    assert!(line.contains("100 dead-lettered to picky.dlq"), "{line}");

    // A crash after the dead-letter appends but before the commit: the sink
    // is fed the same batches again and refuses the same records, which
    // must not reach the dead-letter topic twice.
    std::fs::remove_file(dir.path().join("data/groups/picky.json")).unwrap();
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = summary_line(&out, "picky");
    assert_eq!(
        line.split_whitespace().nth(2),
        Some("100,000"),
        "fed again: {line}"
    );
    assert!(!line.contains("dead-lettered"), "{line}");
    let dead_again: usize = output_files(&dir.path().join("dlq"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    assert_eq!(dead_again, expected.len(), "each refused record once");
}

#[test]
fn retriable_errors_are_retried_in_place_and_never_dead_lettered() {
    const PRODUCED: u64 = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = poison_manifest(
        dir.path(),
        PRODUCED,
        &[("every", 1_000_000), ("fail_first", 3)],
    );
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert_eq!(
        err.matches("retriable error in `write`; calling again")
            .count(),
        3,
        "{err}"
    );
    for delay in ["20ms", "40ms", "80ms"] {
        assert!(err.contains(&format!("calling again in {delay}")), "{err}");
    }
    // Seq 0 is a multiple of every `every`: the one refusal on its merits.
    assert_eq!(output_files(&dir.path().join("dlq")).len(), 1);
    let mut all = seqs(&dir.path().join("accepted"));
    all.push(0);
    assert_exactly_once(all, PRODUCED);
    let line = summary_line(&out, "picky");
    assert!(!line.contains("restarted"), "retried in place: {line}");
    assert!(line.contains("1 dead-lettered"), "{line}");
}
