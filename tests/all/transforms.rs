//! Transforms: the `transform` world run by the host, one batch in and one
//! out, checked against the contract; the built-in `filter`.
//!
//! Not yet wired into the pumps (a transform connector, a chain on a
//! source or sink): these call the instance as the pumps will.

#![allow(clippy::unwrap_used)]

use sluice::plugin::{
    CompileCache, InstanceSetup, PluginError, PluginHost, PluginRef, TransformInstance,
};
use sluice_batch::{Batch, BatchWriter};

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
