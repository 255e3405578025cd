//! Chains of transforms on sources and sinks (`transforms = [...]`, Kafka
//! Connect's single message transforms): each record transformed once,
//! refused records dead-lettered with the transform that refused them,
//! also under a kill storm.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::transforms::assert_lanes;

/// datagen (`count` records) with the chain `["lanes"]` (the `seq-lanes`
/// fixture) routing into `lanes.{lane}` → a file sink per lane under
/// `out/even` and `out/odd`; the chain's dead letters under `dlq/`.
fn source_chain(dir: &Path, count: u64, rate: u64) -> PathBuf {
    let mut m = manifest()
        .transform("lanes", wasm("seq-lanes"), &[])
        .connector(
            gen_source(count, rate, 64)
                .set("topic", "lanes.{lane}")
                .set("transforms", vec!["lanes"]),
        )
        .connector(dead_letters("gen.dlq"));
    for lane in ["even", "odd"] {
        m = m.connector(
            sink(
                &format!("files-{lane}"),
                "file-sink",
                &format!("lanes.{lane}"),
            )
            .set("flush_interval_ms", 200)
            .config("path", "/out")
            .config("max_file_bytes", 200_000)
            .files(&format!("out/{lane}"), "/out", "read-write"),
        );
    }
    m.write(dir)
}

/// A dead letter of the source chain: named by the source and the
/// transform, from no topic (it never reached the log).
fn refused_by_source_chain(h: &serde_json::Value, _seq: u64) {
    assert_eq!(h["sluice.connector"], "gen", "{h}");
    assert_eq!(h["sluice.transform"], "lanes", "{h}");
    assert!(h.get("sluice.topic").is_none(), "{h}");
    assert!(h.get("sluice.offset").is_none(), "{h}");
}

#[test]
fn a_sources_chain_drops_splits_refuses_and_routes_each_record_once() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = source_chain(dir.path(), RECORDS, 0);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_lanes(dir.path(), RECORDS, refused_by_source_chain);
    let line = summary_line(&out, "gen");
    assert!(line.contains("2,000 dead-lettered to gen.dlq"), "{line}");
}

#[test]
fn a_sources_chain_killed_ten_times_stores_each_records_result_once() {
    const RECORDS: u64 = 400_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = source_chain(dir.path(), RECORDS, 100_000);
    crate::crash::storm(dir.path(), &manifest, 10, 100..700);
    assert_lanes(dir.path(), RECORDS, refused_by_source_chain);
}

/// datagen (`count` records into `events`) → a file sink under `out/`
/// whose chain is `filter` (keeping every record) then `seq-lanes` without
/// splits; the chain's and the sink's dead letters under `dlq/`.
fn sink_chain(dir: &Path, count: u64, rate: u64) -> PathBuf {
    manifest()
        .transform(
            "has-seq",
            "filter",
            &[("field", "/seq".into()), ("exists", true.into())],
        )
        .transform("lanes", wasm("seq-lanes"), &[("split", false.into())])
        .connector(gen_source(count, rate, 64))
        .connector(files_sink().set("transforms", vec!["has-seq", "lanes"]))
        .connector(dead_letters("files.dlq"))
        .write(dir)
}

/// Asserts that the sink chain's output under `dir` is every seq of
/// `0..count` once but those ending in 3 (dead-lettered by `lanes`, each
/// once, named with the batch it came in) and 7 (dropped).
fn assert_sink_chain_once(dir: &Path, count: u64) {
    let mut got = seqs(&dir.join("out"));
    got.sort_unstable();
    let want: Vec<u64> = (0..count).filter(|n| n % 10 != 3 && n % 10 != 7).collect();
    assert_eq!(got.len(), want.len(), "each kept seq once");
    assert_eq!(got, want);
    let mut dead = Vec::new();
    for line in output_lines(&dir.join("dlq")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let seq = json_line_seq(&r);
        let h = &r["headers"];
        assert_eq!(h["sluice.error"], format!("seq {seq} ends in 3"), "{r}");
        assert_eq!(h["sluice.connector"], "files", "{r}");
        assert_eq!(h["sluice.transform"], "lanes", "{r}");
        assert_eq!(h["sluice.topic"], "events", "{r}");
        // The second step of the chain: the batch's offsets, not one.
        let (first, last) = h["sluice.offsets"]
            .as_str()
            .unwrap()
            .split_once('-')
            .unwrap();
        let (first, last): (u64, u64) = (first.parse().unwrap(), last.parse().unwrap());
        assert!(first <= seq && seq <= last, "{r}");
        assert!(h.get("sluice.offset").is_none(), "{r}");
        dead.push(seq);
    }
    dead.sort_unstable();
    let want: Vec<u64> = (0..count).filter(|n| n % 10 == 3).collect();
    assert_eq!(dead, want, "each seq ending in 3 dead-lettered once");
}

#[test]
fn a_sinks_chain_hands_the_sink_each_record_transformed_once() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = sink_chain(dir.path(), RECORDS, 0);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_sink_chain_once(dir.path(), RECORDS);
    let line = summary_line(&out, "files");
    assert!(line.contains("2,000 dead-lettered to files.dlq"), "{line}");
}

#[test]
fn a_sinks_chain_killed_ten_times_delivers_each_record_transformed_once() {
    const RECORDS: u64 = 400_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = sink_chain(dir.path(), RECORDS, 100_000);
    crate::crash::storm(dir.path(), &manifest, 10, 100..700);
    assert_sink_chain_once(dir.path(), RECORDS);
}

#[test]
fn a_sinks_chain_that_adds_records_fails_the_sink_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .transform("lanes", wasm("seq-lanes"), &[])
        .connector(
            source("gen", wasm("emit-keyed"), "events")
                .config("records", keyed_records([("k", r#"{"seq":5}"#)])),
        )
        .connector(
            files_sink()
                .set("transforms", vec!["lanes"])
                .restart("attempts", 0),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("may") && err.contains("drop, change and refuse records, not add them"),
        "{err}"
    );
}
