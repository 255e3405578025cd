//! The plugin contract as an operator meets it: `sluice plugins inspect`,
//! `sluice validate`, and refusals of plugins that do not fit.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use sluice::plugin::CONTRACT_VERSION;

fn source_manifest(plugin: &str, config: &[(&str, toml::Value)]) -> String {
    let src = config.iter().fold(source("src", plugin, "t"), |c, (k, v)| {
        c.config(k, v.clone())
    });
    manifest().connector(src).to_string()
}

#[test]
fn inspect_prints_name_version_description_and_config_schema() {
    let out = run(&["plugins", "inspect", "datagen"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("name:        datagen"), "{text}");
    assert!(
        text.contains(&format!("version:     {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("description: Generates JSON records"),
        "{text}"
    );
    for field in ["\"count\"", "\"rate\"", "\"payload_bytes\"", "\"seed\""] {
        assert!(text.contains(field), "schema lists {field}: {text}");
    }

    // `plugin` is the old spelling of the same verb.
    let out = run(&["plugin", "inspect", "--json", "file-sink"]);
    assert!(out.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spec["name"], "file-sink");
    assert_eq!(spec["kind"], "sink");
    assert_eq!(
        spec["config_schema"]["required"],
        serde_json::json!(["path"])
    );
}

#[test]
fn a_plugin_exporting_the_wrong_interface_is_refused_naming_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let m = source_manifest("file-sink", &[("path", "/x".into())]);
    let (code, err) = validate_in(dir.path(), &m);
    assert_eq!(code, Some(2));
    assert!(
        err.contains(&format!(
            "does not export sluice:connector/source-api@{CONTRACT_VERSION}"
        )),
        "names the missing interface: {err}"
    );
    assert!(
        err.contains(&format!(
            "it exports sluice:connector/sink-api@{CONTRACT_VERSION}"
        )),
        "{err}"
    );
    let line = m.lines().position(|l| l.starts_with("plugin =")).unwrap() + 1;
    assert!(
        err.contains(&format!("sluice.toml:{line}:10")),
        "points at the plugin line: {err}"
    );
}

#[test]
fn a_plugin_built_against_another_contract_version_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = wasm("wrong-contract-version");
    let (code, err) = validate_in(dir.path(), &source_manifest(path.to_str().unwrap(), &[]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("built against sluice:connector@0.0.9"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "this host speaks sluice:connector@{CONTRACT_VERSION}"
        )),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm at all").unwrap();
    let (code, err) = validate_in(dir.path(), &source_manifest("junk.wasm", &[]));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("is not a valid WebAssembly component"),
        "{err}"
    );
}

#[test]
fn validate_rejects_a_config_its_plugin_schema_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let m = source_manifest(
        "datagen",
        &[("count", 10.into()), ("payload_bytes", "big".into())],
    );
    let (code, err) = validate_in(dir.path(), &m);
    assert_eq!(code, Some(2));
    let line = m
        .lines()
        .position(|l| l.starts_with("payload_bytes"))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("sluice.toml:{line}:17")),
        "file:line:column of the value: {err}"
    );
    assert!(err.contains("connector[0].config.payload_bytes"), "{err}");
    assert!(err.contains("\"big\" is not of type \"integer\""), "{err}");
    assert!(
        err.contains("Size of each record's value in bytes"),
        "help from the schema: {err}"
    );

    let (code, err) = validate_in(
        dir.path(),
        &source_manifest("datagen", &[("colour", "red".into())]),
    );
    assert_eq!(code, Some(2));
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn validate_accepts_the_quickstart() {
    let quickstart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart/sluice.toml"
    );
    let out = run(&["validate", quickstart]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("valid"), "{text}");
    assert!(text.contains("generator"), "{text}");
}

#[test]
fn a_plugin_that_refuses_its_config_at_open_stops_the_run_with_its_words() {
    let dir = tempfile::tempdir().unwrap();
    // Valid by schema, but the directory is not granted: the plugin says so.
    let manifest = manifest()
        .connector(sink("files", "file-sink", "t").config("path", "/out"))
        .write(dir.path());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("plugin file-sink refused its config"), "{err}");
    assert!(
        err.contains("is it granted under [connector.grants] files?"),
        "{err}"
    );
}

#[test]
fn compiled_plugins_are_cached_on_disk_by_content_and_engine() {
    use sluice::plugin::{CompileCache, PluginHost, PluginRef};
    let cache = tempfile::tempdir().unwrap();
    let datagen = PluginRef::resolve("datagen", std::path::Path::new(".")).unwrap();

    let host = PluginHost::new(CompileCache::new(Some(cache.path().to_path_buf()))).unwrap();
    let (hit, _) = host.load(&datagen).unwrap().load_info();
    assert!(!hit, "an empty cache compiles");
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one entry per component");

    // A new host (a new process, as far as the cache can tell) loads it back.
    let host = PluginHost::new(CompileCache::new(Some(cache.path().to_path_buf()))).unwrap();
    let (hit, _) = host.load(&datagen).unwrap().load_info();
    assert!(hit, "the second load comes from the cache");
    let (hit, _) = host
        .load(&PluginRef::resolve("print", std::path::Path::new(".")).unwrap())
        .unwrap()
        .load_info();
    assert!(!hit, "another component is another entry");
}
