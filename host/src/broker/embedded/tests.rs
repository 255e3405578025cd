//! Tests of the embedded log: appends surviving a reopen, recovery from a
//! torn or damaged tail, retention, backlog, and durable group offsets.

#![allow(clippy::unwrap_used)]
use std::fs::OpenOptions;

use super::partition::segment_name;
use super::retention::enforce_retention;
use sluice_batch::BatchWriter;

use super::*;

/// One partition, kept forever, a backlog no test reaches.
const KEEP_ALL: TopicPolicy = TopicPolicy {
    partitions: 1,
    retention_bytes: None,
    retention_age: None,
    max_backlog: 1 << 30,
};

fn config() -> LogConfig {
    policy_config(KEEP_ALL)
}

fn policy_config(policy: TopicPolicy) -> LogConfig {
    LogConfig {
        fsync: FsyncPolicy::Never,
        fsync_interval: Duration::from_millis(100),
        segment_bytes: 4096,
        default_policy: policy,
        policies: BTreeMap::new(),
    }
}

fn segment_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count()
}

fn batch(from: u32, n: u32) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for i in from..from + n {
        w.push_value(format!("value-{i:05}").as_bytes());
    }
    w.finish()
}

fn values(batches: &[StoredBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            Batch::parse(&b.bytes)
                .unwrap()
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn fill(log: &EmbeddedLog, batches: u32) {
    log.ensure_topic("t").unwrap();
    for i in 0..batches {
        let pos = (i + 1).to_le_bytes();
        let cp = SourceCheckpoint {
            producer: "src/0",
            position: &pos,
        };
        let base = log
            .append("t", 0, &batch(i * 10, 10), 10, Some(cp))
            .await
            .unwrap();
        assert_eq!(base, u64::from(i) * 10);
    }
}

/// Writes `batches` batches into one segment and returns its path.
async fn one_segment_log(dir: &Path, batches: u32) -> PathBuf {
    let one_segment = LogConfig {
        segment_bytes: 1 << 30,
        ..config()
    };
    let log = EmbeddedLog::open(dir, one_segment).unwrap();
    fill(&log, batches).await;
    dir.join("topics/t/0").join(segment_name(0))
}

#[tokio::test]
async fn appends_survive_reopen_with_positions_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        fill(&log, 50).await;
    }
    let segments = std::fs::read_dir(dir.path().join("topics/t/0"))
        .unwrap()
        .count();
    assert!(segments > 1, "a 4 KiB segment limit must roll: {segments}");
    let log = EmbeddedLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.end_offset("t", 0).unwrap(), 500);
    assert_eq!(log.source_position("src/0").unwrap(), 50u32.to_le_bytes());
    // Reading from the middle of a batch starts at exactly that record.
    let got = log.read("t", 0, 123, 1 << 20).await.unwrap();
    let v = values(&got);
    assert_eq!(v.len(), 500 - 123);
    assert_eq!(v[0], "value-00123");
    assert_eq!(v.last().unwrap(), "value-00499");
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let seg = one_segment_log(dir.path(), 3).await;
    let len = std::fs::metadata(&seg).unwrap().len();
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 7).unwrap(); // a crash in the middle of the last frame
    drop(f);
    let log = EmbeddedLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.end_offset("t", 0).unwrap(), 20);
    assert_eq!(log.source_position("src/0").unwrap(), 2u32.to_le_bytes());
    let base = log.append("t", 0, &batch(20, 10), 10, None).await.unwrap();
    assert_eq!(base, 20);
    let v = values(&log.read("t", 0, 0, 1 << 20).await.unwrap());
    assert_eq!(v.len(), 30);
}

#[tokio::test]
async fn a_half_written_header_and_zeros_after_a_power_loss_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let seg = one_segment_log(dir.path(), 2).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(b"SL");
    bytes.extend_from_slice(&[0u8; 5000]);
    std::fs::write(&seg, bytes).unwrap();
    let log = EmbeddedLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.end_offset("t", 0).unwrap(), 20);
}

#[tokio::test]
async fn a_flipped_byte_mid_segment_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let seg = one_segment_log(dir.path(), 3).await;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[40] ^= 0xff; // inside the first frame's body
    std::fs::write(&seg, bytes).unwrap();
    let err = EmbeddedLog::open(dir.path(), config())
        .unwrap_err()
        .to_string();
    assert!(err.contains("00000000000000000000.log"), "{err}");
    assert!(err.contains("at byte 0"), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[tokio::test]
async fn retention_removes_only_what_every_group_committed_and_keeps_positions() {
    let dir = tempfile::tempdir().unwrap();
    let small = policy_config(TopicPolicy {
        retention_bytes: Some(8192),
        ..KEEP_ALL
    });
    {
        let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
        log.ensure_topic("t").unwrap();
        log.subscribe("slow", "t").unwrap();
        log.subscribe("fast", "t").unwrap();
        assert_eq!(log.committed_offset("slow", "t", 0), Some(0));
        fill(&log, 50).await;
        let before = segment_files(dir.path());
        assert!(before > 3, "{before}");
        // Over its size, but `slow` has committed nothing: all kept.
        log.commit_offsets("fast", &[("t".into(), 0, 500)])
            .await
            .unwrap();
        enforce_retention(&log.inner).unwrap();
        assert_eq!(segment_files(dir.path()), before);
        assert_eq!(log.start_offset("t", 0).unwrap(), 0);
        // Once both have committed it all, it shrinks to its size.
        log.commit_offsets("slow", &[("t".into(), 0, 500)])
            .await
            .unwrap();
        enforce_retention(&log.inner).unwrap();
        let after = segment_files(dir.path());
        assert!(after < before && after <= 3, "{before} -> {after}");
        let start = log.start_offset("t", 0).unwrap();
        assert!(start > 0);
        // A reader from below the start gets what is kept.
        let got = log.read("t", 0, 0, 1 << 20).await.unwrap();
        assert_eq!(got[0].first_offset, start);
        assert_eq!(values(&got).last().unwrap(), "value-00499");
    }
    // The source position survives though its frames are gone: a
    // source that wrote only the removed segments still resumes.
    {
        let log = EmbeddedLog::open(dir.path(), small.clone()).unwrap();
        log.ensure_topic("u").unwrap();
        let cp = SourceCheckpoint {
            producer: "other/0",
            position: b"p1",
        };
        log.append("u", 0, &batch(0, 10), 10, Some(cp))
            .await
            .unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), small).unwrap();
    assert_eq!(log.source_position("src/0").unwrap(), 50u32.to_le_bytes());
    assert_eq!(log.source_position("other/0").unwrap(), b"p1");
    assert!(log.start_offset("t", 0).unwrap() > 0);
    assert_eq!(log.end_offset("t", 0).unwrap(), 500);
}

#[tokio::test]
async fn retention_removes_nothing_when_it_cannot_store_the_positions() {
    let dir = tempfile::tempdir().unwrap();
    let small = policy_config(TopicPolicy {
        retention_bytes: Some(8192),
        ..KEEP_ALL
    });
    let log = EmbeddedLog::open(dir.path(), small).unwrap();
    fill(&log, 50).await;
    let before = segment_files(dir.path());
    // A folder where the file goes: the rename onto it fails.
    std::fs::create_dir(dir.path().join(POSITIONS_FILE)).unwrap();
    let err = enforce_retention(&log.inner).unwrap_err().to_string();
    assert!(err.contains("positions.json"), "{err}");
    assert_eq!(segment_files(dir.path()), before);
    assert_eq!(log.start_offset("t", 0).unwrap(), 0);
    std::fs::remove_dir(dir.path().join(POSITIONS_FILE)).unwrap();
    enforce_retention(&log.inner).unwrap();
    assert!(segment_files(dir.path()) < before);
}

#[tokio::test]
async fn retention_by_age_removes_old_committed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let aged = policy_config(TopicPolicy {
        retention_age: Some(Duration::from_secs(2)),
        ..KEEP_ALL
    });
    let log = EmbeddedLog::open(dir.path(), aged).unwrap();
    fill(&log, 50).await;
    let before = segment_files(dir.path());
    enforce_retention(&log.inner).unwrap();
    assert_eq!(segment_files(dir.path()), before, "too young");
    std::thread::sleep(Duration::from_millis(2100));
    enforce_retention(&log.inner).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        1,
        "only the active segment stays"
    );
    assert_eq!(log.end_offset("t", 0).unwrap(), 500);
}

#[tokio::test]
async fn backlog_is_the_slowest_group_and_full_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(
        dir.path(),
        policy_config(TopicPolicy {
            max_backlog: 2000,
            ..KEEP_ALL
        }),
    )
    .unwrap();
    log.ensure_topic("t").unwrap();
    assert_eq!(
        log.backlog("t", 0).unwrap(),
        None,
        "no consumer, no backlog"
    );
    log.subscribe("g", "t").unwrap();
    fill(&log, 50).await;
    let b = log.backlog("t", 0).unwrap().unwrap();
    assert_eq!((b.group.as_str(), b.records), ("g", 500));
    let total: u64 = std::fs::read_dir(dir.path().join("topics/t/0"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(b.bytes, total);
    assert!(b.is_full());
    log.commit_offsets("g", &[("t".into(), 0, 495)])
        .await
        .unwrap();
    let b = log.backlog("t", 0).unwrap().unwrap();
    assert_eq!(b.records, 5);
    assert!(b.bytes > 0 && !b.is_full(), "{b:?}");
    // A sink that failed for good no longer holds its sources back.
    log.subscribe("stuck", "t").unwrap();
    assert!(log.backlog("t", 0).unwrap().unwrap().is_full());
    log.release("stuck");
    assert_eq!(log.backlog("t", 0).unwrap().unwrap().group, "g");
    drop(log);
    // Nor does a group of an earlier run that this run did not
    // subscribe (a sink since removed from the manifest).
    let log = EmbeddedLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.committed_offset("stuck", "t", 0), Some(0));
    assert_eq!(log.backlog("t", 0).unwrap(), None);
}

#[tokio::test]
async fn group_offsets_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), config()).unwrap();
        log.ensure_topic("t").unwrap();
        log.commit_offsets("g", &[("t".into(), 0, 42)])
            .await
            .unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), config()).unwrap();
    assert_eq!(log.committed_offset("g", "t", 0), Some(42));
    assert_eq!(log.committed_offset("g", "t", 1), None);
}
