//! Transforms: the `transform` world run by the host, one batch in and one
//! out, checked against the contract; the built-in `filter`; transform
//! connectors (`kind = "transform"`), exactly once under a kill storm.

#![allow(clippy::unwrap_used)]

use sluice::plugin::{
    CompileCache, InstanceSetup, PluginError, PluginHost, PluginRef, TransformInstance,
};
use sluice_batch::{Batch, BatchWriter};

use std::time::Duration;

use crate::common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A `filter` instance, opened with `config`.
async fn filter(config: &str) -> Result<TransformInstance, PluginError> {
    transform("filter", config).await
}

/// An instance of the transform `plugin` (a built-in name or a path),
/// opened with `config`.
async fn transform(plugin: &str, config: &str) -> Result<TransformInstance, PluginError> {
    let host = PluginHost::new(CompileCache::new(None)).unwrap();
    let plugin = host
        .load(&PluginRef::resolve(plugin, std::path::Path::new(".")).unwrap())
        .unwrap();
    let mut t = host
        .transform(&plugin, &InstanceSetup::isolated("filter-test"))
        .await?;
    t.open(config).await?;
    Ok(t)
}

#[test]
fn the_filter_transform_keeps_what_passes_whole_and_refuses_what_is_not_json() {
    runtime().block_on(async {
        let mut t = filter(r#"{"field": "/level", "one_of": ["error", "fatal"]}"#)
            .await
            .unwrap();
        let mut input = BatchWriter::new();
        input.push_parts(Some(b"a"), Some(1), &[("origin", b"x")], |v| {
            v.extend_from_slice(br#"{"level":"error","n":1}"#)
        });
        input.push_value(br#"{"level":"info","n":2}"#);
        input.push_value(b"not json");
        input.push_value(br#"{"level":"fatal","n":4}"#);
        let input = input.finish();
        let done = t.process(&input, 4).await.unwrap();
        assert_eq!(done.records, 2);
        let out = Batch::parse(&done.batch).unwrap();
        let kept: Vec<_> = out.iter().collect();
        assert_eq!(kept[0].value, br#"{"level":"error","n":1}"#);
        assert_eq!((kept[0].key, kept[0].timestamp), (Some(&b"a"[..]), Some(1)));
        assert_eq!(
            kept[0].headers().collect::<Vec<_>>(),
            [("origin", &b"x"[..])]
        );
        assert_eq!(kept[1].value, br#"{"level":"fatal","n":4}"#);
        assert_eq!(done.refused.len(), 1);
        assert_eq!(done.refused[0].index, 2);
        assert!(
            done.refused[0].reason.contains("not JSON"),
            "{}",
            done.refused[0].reason
        );
        // An empty batch in, an empty batch out.
        let empty = Batch::empty();
        let done = t.process(&empty, 0).await.unwrap();
        assert_eq!((done.records, done.refused.len()), (0, 0));
        t.close().await.unwrap();
    });
}

#[test]
fn a_filter_config_without_one_test_fails_at_open_with_what_to_write() {
    runtime().block_on(async {
        let e = filter(r#"{"field": "/level"}"#).await.unwrap_err();
        assert!(
            matches!(e, PluginError::InvalidConfig { .. }),
            "an invalid config: {e}"
        );
        assert!(e.to_string().contains("exactly one test"), "{e}");
    });
}

#[test]
fn the_cli_shows_filter_as_a_transform_and_a_source_cannot_use_it() {
    let out = run(&["plugins", "inspect", "filter"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("transform"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(
        &path,
        "[[connector]]\nname = \"f\"\nkind = \"source\"\nplugin = \"filter\"\ntopic = \"t\"\n[connector.config]\nfield = \"/a\"\nexists = true\n",
    )
    .unwrap();
    let out = run(&["validate", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("filter") && err.contains("transform"), "{err}");
}

#[test]
fn a_transform_that_refuses_a_record_it_was_not_given_or_one_twice_is_named_with_what_it_broke() {
    let path = wasm("bad-transform");
    let path = path.to_str().unwrap();
    runtime().block_on(async {
        let mut input = BatchWriter::new();
        input.push_value(b"{}");
        input.push_value(b"{}");
        let input = input.finish();
        for (mode, broke) in [
            ("beyond", "refused record 2 of a batch of 2"),
            ("twice", "refused record 0 twice"),
        ] {
            let mut t = transform(path, &format!(r#"{{"mode": "{mode}"}}"#))
                .await
                .unwrap();
            let e = t.process(&input, 2).await.unwrap_err();
            let said = e.to_string();
            assert!(
                matches!(e, PluginError::Contract { .. }) && said.contains(broke),
                "{mode}: {said}"
            );
            assert!(
                said.contains("bad_transform") || said.contains("bad-transform"),
                "{said}"
            );
        }
    });
}

/// datagen (`count` records into `events`) → the `seq-lanes` transform
/// connector `lanes` (output `lanes.{lane}`) → a file sink per lane under
/// `out/even` and `out/odd`, and its dead letters under `dlq/`.
fn lanes_manifest(dir: &std::path::Path, count: u64, rate: u64) -> std::path::PathBuf {
    let mut m = manifest()
        .connector(gen_source(count, rate, 64))
        .connector(
            crate::common::transform("lanes", wasm("seq-lanes"), "events", "lanes.{lane}")
                .set("flush_interval_ms", 200),
        )
        .connector(dead_letters("lanes.dlq"));
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

/// Asserts that the lanes and dead letters under `dir` hold what
/// `seq-lanes` makes of seqs `0..count`, each once: even seqs in the even
/// lane; odd ones in the odd lane, those ending in 5 twice (split), those
/// ending in 7 nowhere (dropped); those ending in 3 dead-lettered with
/// their reason and origin (from the transform connector `lanes`).
fn assert_lanes_once(dir: &std::path::Path, count: u64) {
    assert_lanes(dir, count, |h, seq| {
        assert_eq!(h["sluice.connector"], "lanes");
        assert_eq!(h["sluice.topic"], "events");
        // One source into one partition: offset = seq.
        assert_eq!(h["sluice.offset"], seq.to_string());
    });
}

/// [`assert_lanes_once`], with `origin` checking the headers of the dead
/// letter of each `seq`.
pub(crate) fn assert_lanes(
    dir: &std::path::Path,
    count: u64,
    origin: impl Fn(&serde_json::Value, u64),
) {
    let mut even = seqs(&dir.join("out/even"));
    even.sort_unstable();
    let want: Vec<u64> = (0..count).step_by(2).collect();
    assert_eq!(even.len(), want.len(), "even lane: each even seq once");
    assert_eq!(even, want, "even lane");
    let mut odd = seqs(&dir.join("out/odd"));
    odd.sort_unstable();
    let want: Vec<u64> = (0..count)
        .filter(|n| n % 2 == 1 && n % 10 != 3 && n % 10 != 7)
        .flat_map(|n| if n % 10 == 5 { vec![n, n] } else { vec![n] })
        .collect();
    assert_eq!(odd.len(), want.len(), "odd lane: 5s twice, 3s and 7s never");
    assert_eq!(odd, want, "odd lane");
    let mut dead = Vec::new();
    for line in output_lines(&dir.join("dlq")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let seq = json_line_seq(&r);
        let h = &r["headers"];
        assert_eq!(h["sluice.error"], format!("seq {seq} ends in 3"), "{r}");
        origin(h, seq);
        dead.push(seq);
    }
    dead.sort_unstable();
    let want: Vec<u64> = (0..count).filter(|n| n % 10 == 3).collect();
    assert_eq!(dead, want, "dead letters: each seq ending in 3 once");
}

#[test]
fn a_transform_connector_drops_splits_refuses_and_routes_each_record_once() {
    const RECORDS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let manifest = lanes_manifest(dir.path(), RECORDS, 0);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_lanes_once(dir.path(), RECORDS);
    let line = summary_line(&out, "lanes");
    assert!(line.contains("2,000 dead-lettered to lanes.dlq"), "{line}");
}

#[test]
fn a_transform_connector_killed_ten_times_stores_each_inputs_result_once() {
    const RECORDS: u64 = 400_000;
    let dir = tempfile::tempdir().unwrap();
    // 100,000 records/s: four seconds of running, so the kills land while
    // records flow through the transform.
    let manifest = lanes_manifest(dir.path(), RECORDS, 100_000);
    crate::crash::storm(dir.path(), &manifest, 10, 100..700);
    assert_lanes_once(dir.path(), RECORDS);
}

#[test]
fn a_transform_connectors_module_is_swapped_while_records_flow_losing_and_repeating_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &[]);
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let mut text = gen_source(0, 100_000, 32).to_string();
    text.push_str(
        &crate::common::transform("keep", "filter", "events", "kept")
            .config("field", "/seq")
            .config("exists", true)
            .to_string(),
    );
    text.push_str(
        &sink("files", "file-sink", "kept")
            .set("flush_interval_ms", 100)
            .config("path", "/out")
            .config("max_file_bytes", 1_000_000)
            .files("files", "/out", "read-write")
            .to_string(),
    );
    let manifest = dir.path().join("connectors.toml");
    std::fs::write(&manifest, text).unwrap();
    d.ok(&["create", manifest.to_str().unwrap()]);
    let records = |name: &str| d.status(name)["records_in"].as_u64().unwrap_or(0);
    wait_until("records flow", Duration::from_secs(60), || {
        records("files") > 50_000
    });
    assert_eq!(d.status("keep")["kind"], "transform");

    let v2 = wasm("tag-transform");
    let swapped = d.json(
        "connectors",
        &["update", "keep", "--plugin", v2.to_str().unwrap()],
    );
    assert_eq!(swapped["live"], true, "{swapped}");
    let at_swap = records("files");
    wait_until(
        "the new module's records reach the sink",
        Duration::from_secs(30),
        || records("files") > at_swap + 50_000,
    );
    let total = drain(&d, &["keep", "files"]);
    let status = d.status("keep");
    assert_eq!(status["last_swap"]["ok"], true, "{status}");

    let (plain, marked) = crate::admin::marked_seqs(&dir.path().join("files"));
    assert!(!plain.is_empty() && !marked.is_empty());
    let last_plain = *plain.iter().max().unwrap();
    assert!(
        marked.iter().all(|&s| s > last_plain),
        "every record after the swap point went through the new module"
    );
    assert_exactly_once([plain, marked].concat(), total);
}
