// Long: the tests of the embedded log, one per behaviour, with the helpers they share.
//! Tests of the embedded log: appends surviving a reopen, recovery from a
//! torn or damaged tail, retention, backlog, and durable group offsets.

#![allow(clippy::unwrap_used)]
use std::fs::OpenOptions;

use super::partition::segment_name;
use super::retention::enforce_retention;

use super::*;
use crate::broker::testing::{batch, values};
use crate::manifest::FsyncPolicy;

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
    assert_eq!(
        log.source_position("src/0").unwrap().unwrap(),
        50u32.to_le_bytes()
    );
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
    assert_eq!(
        log.source_position("src/0").unwrap().unwrap(),
        2u32.to_le_bytes()
    );
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
    assert_eq!(
        log.source_position("src/0").unwrap().unwrap(),
        50u32.to_le_bytes()
    );
    assert_eq!(log.source_position("other/0").unwrap().unwrap(), b"p1");
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

/// Tries to route batch `n` of `cdc/0` as two parts, 3 records to `a` and
/// 2 to `b`, with position `n` (none when `positioned` is false).
async fn try_route(log: &EmbeddedLog, n: u32, positioned: bool) -> Result<Vec<u64>, BrokerError> {
    let (pa, pb) = (batch(n * 10, 3), batch(n * 10 + 3, 2));
    let pos = n.to_le_bytes();
    let parts = [
        RoutedPart {
            topic: "a",
            partition: 0,
            batch: &pa,
            records: 3,
        },
        RoutedPart {
            topic: "b",
            partition: 0,
            batch: &pb,
            records: 2,
        },
    ];
    log.append_routed(&parts, "cdc/0", positioned.then_some(&pos[..]))
        .await
}

/// Routes batch `n` (see [`try_route`]) and returns the segment lengths of
/// both partitions before it.
async fn route(log: &EmbeddedLog, n: u32) -> (u64, u64) {
    let len = |t: &str| {
        std::fs::metadata(
            log.dir()
                .join("topics")
                .join(t)
                .join("0")
                .join(segment_name(0)),
        )
        .map_or(0, |m| m.len())
    };
    let before = (len("a"), len("b"));
    let ends = [
        log.end_offset("a", 0).unwrap(),
        log.end_offset("b", 0).unwrap(),
    ];
    let bases = try_route(log, n, true).await.unwrap();
    assert_eq!(bases, ends);
    before
}

async fn routed_log(dir: &Path) -> EmbeddedLog {
    let log = EmbeddedLog::open(dir, config()).unwrap();
    log.ensure_topic("a").unwrap();
    log.ensure_topic("b").unwrap();
    log
}

async fn all_values(log: &EmbeddedLog, topic: &str) -> Vec<String> {
    values(&log.read(topic, 0, 0, u64::MAX).await.unwrap())
}

#[tokio::test]
async fn a_routed_batch_broken_off_by_a_crash_is_finished_when_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    let (_, b_before) = route(&log, 1).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        1u32.to_le_bytes()
    );
    drop(log);
    // The crash came after the journal and the first part: the second
    // part never reached its partition.
    let b = dir.path().join("topics/b/0").join(segment_name(0));
    OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(b_before)
        .unwrap();
    let log = routed_log(dir.path()).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        1u32.to_le_bytes()
    );
    assert_eq!(
        all_values(&log, "a").await,
        [
            "value-00000",
            "value-00001",
            "value-00002",
            "value-00010",
            "value-00011",
            "value-00012"
        ]
    );
    assert_eq!(
        all_values(&log, "b").await,
        ["value-00003", "value-00004", "value-00013", "value-00014"]
    );
    // Opening again changes nothing: every part is in.
    drop(log);
    let log = routed_log(dir.path()).await;
    assert_eq!(all_values(&log, "a").await.len(), 6);
    assert_eq!(all_values(&log, "b").await.len(), 4);
    // And the next batch follows on.
    route(&log, 2).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        2u32.to_le_bytes()
    );
}

#[tokio::test]
async fn a_journal_write_torn_by_a_crash_leaves_the_position_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    let (a_before, b_before) = route(&log, 1).await;
    drop(log);
    // The crash tore the journal record of batch 1 (slot 0: its seq is 2),
    // so none of its parts was begun.
    for (t, len) in [("a", a_before), ("b", b_before)] {
        let seg = dir
            .path()
            .join("topics")
            .join(t)
            .join("0")
            .join(segment_name(0));
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    let slot = dir.path().join("journal/cdc/0.0");
    let mut torn = std::fs::read(&slot).unwrap();
    torn.truncate(torn.len() / 2);
    std::fs::write(&slot, torn).unwrap();
    let log = routed_log(dir.path()).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    assert_eq!(all_values(&log, "a").await.len(), 3);
    assert_eq!(all_values(&log, "b").await.len(), 2);
}

#[tokio::test]
async fn a_routed_producer_keeps_its_position_in_the_journal_when_it_stops_routing() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    // Before routing, its position travelled in its frames.
    let one = batch(100, 1);
    let old = 7u32.to_le_bytes();
    let cp = SourceCheckpoint {
        producer: "cdc/0",
        position: &old,
    };
    log.append("a", 0, &one, 1, Some(cp)).await.unwrap();
    route(&log, 1).await;
    // Routed no more: a plain append still goes through the journal.
    let new = 9u32.to_le_bytes();
    let cp = SourceCheckpoint {
        producer: "cdc/0",
        position: &new,
    };
    log.append("b", 0, &one, 1, Some(cp)).await.unwrap();
    drop(log);
    let log = routed_log(dir.path()).await;
    assert_eq!(log.source_position("cdc/0").unwrap().unwrap(), new);
    assert_eq!(all_values(&log, "a").await.len(), 4);
    assert_eq!(all_values(&log, "b").await.len(), 3);
}

#[tokio::test]
async fn a_routed_batch_that_fails_part_way_is_not_stored_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    // Fill `a`'s segment, so that the next part rolls it and is then cut
    // off from the fresh segment.
    let big = batch(1000, 200);
    log.append("a", 0, &big, 200, None).await.unwrap();
    let a_end = log.end_offset("a", 0).unwrap();
    // The second part's partition refuses appends (as after a failed cut).
    let b = log.topic("b").unwrap();
    b.partitions[0].lock().unwrap().failed = Some("test".into());
    assert!(try_route(&log, 1, true).await.is_err());
    // The first part was cut off again, and the position is the one before.
    assert_eq!(log.end_offset("a", 0).unwrap(), a_end);
    assert_eq!(all_values(&log, "a").await.len(), 203);
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    b.partitions[0].lock().unwrap().failed = None;
    drop(b);
    drop(log);
    // Nor does opening the log roll the taken-back record forward.
    let log = routed_log(dir.path()).await;
    assert_eq!(log.end_offset("a", 0).unwrap(), a_end);
    assert_eq!(all_values(&log, "b").await.len(), 2);
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    route(&log, 1).await;
    assert_eq!(all_values(&log, "a").await.len(), 206);
}

#[tokio::test]
async fn a_journal_record_whose_sync_failed_is_taken_back_before_anything_else_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    log.journal("cdc/0")
        .unwrap()
        .lock()
        .unwrap()
        .fail_after_write = true;
    assert!(try_route(&log, 1, true).await.is_err());
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    // Another producer appends where the record said its parts would go.
    log.append("a", 0, &batch(500, 1), 1, None).await.unwrap();
    drop(log);
    // The record was made invalid: the open does not take the other
    // producer's record for a part of it.
    let log = routed_log(dir.path()).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    assert_eq!(all_values(&log, "a").await.len(), 4);
    assert_eq!(all_values(&log, "b").await.len(), 2);
}

#[tokio::test]
async fn a_record_that_cannot_be_taken_back_holds_its_partitions_until_the_log_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    {
        let j = log.journal("cdc/0").unwrap();
        let mut j = j.lock().unwrap();
        (j.fail_after_write, j.fail_invalidate) = (true, true);
    }
    assert!(try_route(&log, 1, true).await.is_err());
    // Its offsets stay free: nothing else may append to its partitions,
    // and the journal takes no other record.
    let refused = log.append("a", 0, &batch(500, 1), 1, None).await;
    assert!(refused.is_err());
    assert!(try_route(&log, 2, true).await.is_err());
    drop(log);
    // Opened again, the log stores the batch whole, and the source goes on
    // after it.
    let log = routed_log(dir.path()).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        1u32.to_le_bytes()
    );
    assert_eq!(all_values(&log, "a").await.len(), 6);
    assert_eq!(all_values(&log, "b").await.len(), 4);
    route(&log, 2).await;
}

#[tokio::test]
async fn a_routed_batch_without_a_position_keeps_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let log = routed_log(dir.path()).await;
    route(&log, 0).await;
    try_route(&log, 1, false).await.unwrap();
    try_route(&log, 2, false).await.unwrap();
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    drop(log);
    let log = routed_log(dir.path()).await;
    assert_eq!(
        log.source_position("cdc/0").unwrap().unwrap(),
        0u32.to_le_bytes()
    );
    assert_eq!(all_values(&log, "a").await.len(), 9);
    // A producer that never gave a position has none.
    let pb = batch(0, 1);
    let part = [RoutedPart {
        topic: "b",
        partition: 0,
        batch: &pb,
        records: 1,
    }];
    log.append_routed(&part, "other/0", None).await.unwrap();
    assert_eq!(log.source_position("other/0").unwrap(), None);
}
