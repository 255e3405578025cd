//! The flow under strain: a stalled sink holds its sources back without the
//! host's memory or disk growing, a full disk pauses the pipeline, says so
//! once, and resumes without loss when space returns, and retention frees
//! only what the pipeline's sinks have committed.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// The resident set size of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Bytes in the files under `dir`, recursively.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap())
        .map(|e| {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                du(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

fn stall_manifest(count: u64, rate: u64, stall_after: u64, stall_ms: u64) -> ManifestBuilder {
    manifest()
        .topic("events", "max_backlog", "16 MiB")
        .connector(gen_source(count, rate, 64))
        .connector(
            sink("slow", wasm("stall-sink"), "events")
                .set("flush_interval_ms", 200)
                .config("path", "/out")
                .config("stall_after", stall_after as i64)
                .config("stall_ms", stall_ms as i64)
                .files("out", "/out", "read-write")
                .grant("cpu", format!("{}s", stall_ms / 1000 + 15)),
        )
}

/// The bound this test states for the host's resident memory while its
/// sink is stalled: the log is the buffer, so memory holds one batch per
/// pump whatever the backlog. Measured at about 20 MiB (two plugin
/// instances and the runtime, release build); the bound leaves room for
/// allocator slack and a debug build, and is far below the 200 MB the two
/// million records would take if they were buffered.
const RSS_BOUND: u64 = 64 << 20;
/// `max_backlog` in the manifest above.
const MAX_BACKLOG: u64 = 16 << 20;

#[test]
fn a_stalled_sink_holds_the_source_back_in_bounded_memory_and_then_everything_arrives() {
    const RECORDS: u64 = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    // As fast as datagen goes, unbounded by anything but the backlog; the
    // sink stalls for 30 s in its first write.
    let manifest = stall_manifest(RECORDS, 0, 1, 30_000).write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    host.wait_for_log("stalling for 30000 ms", Duration::from_secs(60));
    let stalled = Instant::now();
    host.wait_for_log("source waits", Duration::from_secs(20));
    let topic = dir.path().join("data/topics/events");
    let (mut max_rss, mut max_log) = (0, 0);
    let mut sizes = Vec::new();
    // Sampled for 22 of the stall's 30 s: well inside it however late the
    // test noticed its start.
    while stalled.elapsed() < Duration::from_secs(22) {
        max_rss = max_rss.max(rss(host.pid()).unwrap());
        let size = du(&topic);
        max_log = max_log.max(size);
        sizes.push(size);
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "during the stall: RSS at most {} MiB, log at most {} MiB",
        max_rss >> 20,
        max_log >> 20
    );
    assert!(
        max_rss < RSS_BOUND,
        "RSS reached {max_rss} bytes, over the bound of {RSS_BOUND}"
    );
    // The source waited: the log stopped at the backlog (plus the one batch
    // that crossed it) instead of taking in the two million records.
    assert!(
        max_log <= MAX_BACKLOG + (1 << 20),
        "the log grew to {max_log} bytes while the sink was stalled"
    );
    let last = &sizes[sizes.len() / 2..];
    assert!(
        last.iter().all(|s| *s == last[0]),
        "the log kept growing while the sink was stalled: {last:?}"
    );
    let during = host.log();
    assert!(!during.contains("stall over"), "sampled inside the stall");
    assert_eq!(
        during.matches("source waits").count(),
        1,
        "one message while held, not a flood:\n{during}"
    );
    assert!(during.contains("sink group `slow` is"), "{during}");
    assert!(during.contains("max_backlog of 16.0 MiB"), "{during}");

    let out = host.wait_for_exit(Duration::from_secs(180));
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("stall over"), "{text}");
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
    let slow = summary_line(&out, "slow");
    assert!(
        slow.contains("2,000,000") && slow.contains("finished"),
        "{slow}"
    );
    let lag = slow.split_whitespace().nth(8).unwrap();
    assert_eq!(lag, "0", "a drained sink has no lag: {slow}");
}

#[test]
fn the_summary_shows_the_lag_of_a_sink_stopped_while_behind() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    let manifest = stall_manifest(0, 20_000, 1, 3_000).write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    host.wait_for_log("stalling for 3000 ms", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    host.terminate();
    let out = host.wait_for_exit(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let gen_line = summary_line(&out, "gen");
    let slow = summary_line(&out, "slow");
    let number = |s: &str| s.replace(',', "").parse::<u64>().unwrap();
    let produced = number(gen_line.split_whitespace().nth(2).unwrap());
    let lag = number(slow.split_whitespace().nth(8).unwrap());
    // The sink committed what it wrote before the stop; the source went on
    // producing during the stall.
    assert!(
        lag > 0 && lag <= produced,
        "lag {lag} of {produced} produced:\n{gen_line}\n{slow}"
    );
    let delivered: u64 = seqs(&dir.path().join("out")).len() as u64;
    assert_eq!(delivered + lag, produced, "{gen_line}\n{slow}");
}

/// A size-limited tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one at `dir`; `None` (with the reason printed) where this
    /// machine does not allow it and `CI` is unset. Under `CI` a machine
    /// that cannot mount is a failure.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs for the disk-full test (it needs root): {why}"
        );
        eprintln!("skipped: cannot mount a tmpfs (it needs root): {why}");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A host whose data directory has filled up.
struct FullDisk {
    host: Host,
    /// Delete it to free the space.
    ballast: PathBuf,
    manifest: PathBuf,
    _tmpfs: Tmpfs,
}

/// Runs a `datagen` → `file-sink` pipeline of `records` over a data
/// directory on a 4 MiB tmpfs, 3.5 MiB of it ballast: the log fills at about
/// a quarter of 20,000 records. Returns once the host has said the disk is
/// full; `None` where no tmpfs can be mounted (see [`Tmpfs::mount`]).
fn fill_the_disk(dir: &Path, records: u64) -> Option<FullDisk> {
    let data = dir.join("data");
    let tmpfs = Tmpfs::mount(&data, "4m")?;
    let ballast = data.join("ballast");
    std::fs::write(&ballast, vec![0u8; 7 << 19]).unwrap();
    let manifest = datagen_to_files(records, 0).write(dir);
    let host = Host::run(dir, &manifest);
    host.wait_for_log("the disk is full", Duration::from_secs(60));
    Some(FullDisk {
        host,
        ballast,
        manifest,
        _tmpfs: tmpfs,
    })
}

#[test]
fn a_full_disk_pauses_the_pipeline_once_and_it_resumes_without_loss_when_space_returns() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `_tmpfs` is bound (not `..`) so that it stays mounted to the end.
    let Some(FullDisk {
        _tmpfs,
        mut host,
        ballast,
        manifest: _,
    }) = fill_the_disk(dir.path(), RECORDS)
    else {
        return;
    };
    // Paused: the process waits, and says so once however long it waits.
    std::thread::sleep(Duration::from_secs(3));
    assert!(host.is_running(), "{}", host.log());
    let text = host.log();
    assert_eq!(text.matches("the disk is full").count(), 1, "{text}");
    assert!(text.contains("nothing is dropped"), "{text}");
    let held = du(&data.join("topics"));
    assert!(held > 0, "the log took records until the disk filled");
    std::fs::remove_file(&ballast).unwrap();
    let out = host.wait_for_exit(Duration::from_secs(120));
    drop(host);
    let text = stderr(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("the disk is full").count(), 1, "{text}");
    assert!(text.contains("disk space is back"), "{text}");
    assert!(
        du(&data.join("topics")) > held,
        "the log grew once space returned"
    );
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}

#[test]
fn stopping_while_the_disk_is_full_commits_nothing_unwritten_and_loses_nothing() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let Some(FullDisk {
        _tmpfs,
        mut host,
        ballast,
        manifest,
    }) = fill_the_disk(dir.path(), RECORDS)
    else {
        return;
    };
    // Stopped (SIGTERM) while the source waits with a batch the log cannot
    // take and the sink with a commit it cannot write.
    std::thread::sleep(Duration::from_secs(1));
    host.terminate();
    let out = host.wait_for_exit(Duration::from_secs(60));
    drop(host);
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // With space back, the next run delivers the rest, each record once.
    std::fs::remove_file(&ballast).unwrap();
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
}

/// A `datagen` → two `file-sink`s (`a` into `out-a/`, `b` into `out-b/`)
/// manifest, with small segments and a 200 KiB retention.
fn retention_manifest(count: u64, rate: u64, with_b: bool) -> ManifestBuilder {
    let sink = |name: &str| {
        sink(name, "file-sink", "events")
            .set("flush_interval_ms", 100)
            .config("path", "/out")
            .files(&format!("out-{name}"), "/out", "read-write")
    };
    let m = manifest()
        .broker("segment_bytes", 100_000)
        .broker("retention_bytes", "200 KiB")
        .connector(gen_source(count, rate, 64))
        .connector(sink("a"));
    if with_b { m.connector(sink("b")) } else { m }
}

#[test]
fn retention_keeps_what_the_pipelines_sinks_need_and_a_returning_sink_is_told_what_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    for out in ["out-a", "out-b"] {
        std::fs::create_dir_all(dir.path().join(out)).unwrap();
    }
    let run_with = |manifest: ManifestBuilder| {
        let path = manifest.write(dir.path());
        let out = run(&["run", "--no-progress", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        out
    };
    // Both sinks take the first 20,000.
    run_with(retention_manifest(20_000, 0, true));
    // `b` leaves the pipeline; 30,000 more flow over 3 s, and retention
    // removes what `a` has committed, `b`'s offsets notwithstanding.
    run_with(retention_manifest(50_000, 10_000, false));
    let oldest: u64 = std::fs::read_dir(dir.path().join("data/topics/events/0"))
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse()
                .ok()
        })
        .min()
        .unwrap();
    assert!(
        oldest > 20_000,
        "retention removed what `b` had not read: log starts at {oldest}"
    );
    // `a` has everything, once.
    assert_exactly_once(seqs(&dir.path().join("out-a")), 50_000);
    // `b` comes back: it is told that records it had not read are gone, and
    // goes on from the oldest kept.
    let out = run_with(retention_manifest(50_000, 0, true));
    let err = stderr(&out);
    assert!(
        err.contains("records 20000..") && err.contains("were removed by retention"),
        "{err}"
    );
    let b = seqs(&dir.path().join("out-b"));
    assert!(b.contains(&19_999) && b.contains(&49_999), "b went on");
    assert!(
        !b.contains(&20_000),
        "b could not get what retention removed"
    );
    assert_exactly_once(seqs(&dir.path().join("out-a")), 50_000);
}

#[test]
fn a_sink_that_failed_for_good_does_not_hold_its_source_back() {
    let dir = tempfile::tempdir().unwrap();
    // The sink cannot open (its folder is not granted) and may not be
    // restarted: it fails at once, with 1 MiB of backlog allowed. The source
    // must still write its 100,000 records (about 7 MiB) and end.
    let manifest = manifest()
        .broker("max_backlog", "1 MiB")
        .connector(gen_source(100_000, 0, 64))
        .connector(
            sink("broken", wasm("reject-every-nth"), "events")
                .restart("attempts", 0)
                .config("path", "/nowhere"),
        )
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = host.wait_for_exit(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let gen_line = summary_line(&out, "gen");
    assert!(
        gen_line.contains("100,000") && gen_line.contains("finished"),
        "{gen_line}"
    );
    let broken = summary_line(&out, "broken");
    assert!(broken.contains("failed"), "{broken}");
    // Its lag is everything: retention keeps it for when it is fixed.
    assert_eq!(
        broken.split_whitespace().nth(8),
        Some("100,000"),
        "{broken}"
    );
}
