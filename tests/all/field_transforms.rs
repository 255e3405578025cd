//! The built-in transforms over a record's JSON fields (`key`, `timestamp`,
//! `fields`, `route`) as a user chains them on a source, and `fields`
//! masking with a keyed hash whose key is a granted secret.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

const REGIONS: [&str; 3] = ["eu", "us", "ap"];

/// Writes `in/events.jsonl`: `count` user events; every 50th (`id % 50 ==
/// 49`) has no region, so `route` refuses it.
fn write_events(dir: &Path, count: u64) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let lines: String = (0..count)
        .map(|id| {
            let region = match id % 50 {
                49 => String::new(),
                _ => format!(r#""region":"{}","#, REGIONS[(id % 3) as usize]),
            };
            format!(
                r#"{{"id":{id},{region}"at":"2026-12-04T05:00:{:02}.{:03}Z","user":{{"name":"u{id}","email":"u{id}@example.com","ssn":"{id:09}"}}}}"#,
                id % 60,
                id % 1000
            ) + "\n"
        })
        .collect();
    std::fs::write(dir.join("in/events.jsonl"), lines).unwrap();
}

/// The event time of record `id`, as `write_events` wrote it.
fn millis(id: u64) -> i64 {
    // 2026-12-04T05:00:00Z.
    1_796_360_400_000 + (id % 60) as i64 * 1000 + (id % 1000) as i64
}

/// The JSON lines under `dir`, by region.
fn by_region(dir: &Path) -> BTreeMap<String, Vec<serde_json::Value>> {
    REGIONS
        .iter()
        .map(|r| {
            let lines = output_lines(&dir.join("out").join(r))
                .iter()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            ((*r).to_owned(), lines)
        })
        .collect()
}

#[test]
fn a_sources_chain_of_key_timestamp_fields_and_route_shapes_and_routes_each_record() {
    const RECORDS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), RECORDS);
    let rename: toml::Table = [("/user/name".to_owned(), toml::Value::from("full_name"))]
        .into_iter()
        .collect();
    let mut m = manifest()
        .transform("by-id", "key", &[("field", "/id".into())])
        .transform("event-time", "timestamp", &[("field", "/at".into())])
        .transform(
            "pii",
            "fields",
            &[
                ("drop", vec!["/user/ssn", "/at"].into()),
                ("mask", vec!["/user/email"].into()),
                ("rename", rename.into()),
            ],
        )
        .transform("by-region", "route", &[("field", "/region".into())])
        .connector(
            source("events", "file-source", "events.{route}")
                .config("path", "/in")
                .files("in", "/in", "read-only")
                .set(
                    "transforms",
                    vec!["by-id", "event-time", "pii", "by-region"],
                ),
        )
        .connector(dead_letters("events.dlq"));
    for region in REGIONS {
        m = m.connector(
            sink(
                &format!("out-{region}"),
                "file-sink",
                &format!("events.{region}"),
            )
            .config("path", "/out")
            .config("format", "json")
            .files(&format!("out/{region}"), "/out", "read-write"),
        );
    }
    let manifest = m.write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let mut seen = Vec::new();
    for (region, records) in by_region(dir.path()) {
        for r in records {
            let id: u64 = r["key"].as_str().unwrap().parse().unwrap();
            assert_eq!(region, REGIONS[(id % 3) as usize], "{r}");
            assert_eq!(r["timestamp"], millis(id), "{r}");
            assert_eq!(r["headers"]["route"], region, "{r}");
            let value: serde_json::Value =
                serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            // The fields in the order they came, ssn and time dropped.
            assert_eq!(
                r["value"].as_str().unwrap(),
                format!(
                    r#"{{"id":{id},"region":"{region}","user":{{"full_name":"u{id}","email":"****"}}}}"#
                ),
                "{value}"
            );
            seen.push(id);
        }
    }
    seen.sort_unstable();
    let want: Vec<u64> = (0..RECORDS).filter(|id| id % 50 != 49).collect();
    assert_eq!(seen, want, "each routed record once");

    let mut refused = Vec::new();
    for line in output_lines(&dir.path().join("dlq")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let h = &r["headers"];
        assert_eq!(h["sluice.transform"], "by-region", "{r}");
        assert_eq!(
            h["sluice.error"], "the value has no field \"/region\" (or it is null)",
            "{r}"
        );
        // Refused by the last step: the earlier steps' work is what is stored.
        let id: u64 = r["key"].as_str().unwrap().parse().unwrap();
        assert_eq!(r["timestamp"], millis(id), "{r}");
        refused.push(id);
    }
    refused.sort_unstable();
    let want: Vec<u64> = (0..RECORDS).filter(|id| id % 50 == 49).collect();
    assert_eq!(
        refused, want,
        "each record without a region dead-lettered once"
    );
}

/// A `fields` transform connector reading `events` (raw users) into
/// `masked`, masking `/email` with the keyed hash of secret `pii_key`, and
/// a file sink of `masked` under `out/`.
fn masking_manifest(dir: &Path, grant: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let users: String = (0..100)
        .map(|i| format!(r#"{{"id":{i},"email":"u{}@example.com"}}"#, i % 10) + "\n")
        .collect();
    std::fs::write(dir.join("in/users.jsonl"), users).unwrap();
    std::fs::write(dir.join("pii.key"), "k3y-for-masking").unwrap();
    let mut mask = transform("mask", "fields", "events", "masked")
        .config("mask", vec!["/email"])
        .config("hash_key", "${secret:pii_key}");
    if grant {
        mask = mask.secret("pii_key", "file", "pii.key");
    }
    manifest()
        .connector(
            source("users", "file-source", "events")
                .config("path", "/in")
                .files("in", "/in", "read-only"),
        )
        .connector(mask)
        .connector(
            sink("files", "file-sink", "masked")
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .write(dir)
}

#[test]
fn fields_masks_with_a_keyed_hash_whose_key_is_a_granted_secret_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = masking_manifest(dir.path(), true);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("k3y-for-masking"),
        "{}",
        stderr(&out)
    );
    let lines = output_lines(&dir.path().join("out"));
    assert_eq!(lines.len(), 100);
    let mut masks = BTreeMap::new();
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_u64().unwrap();
        let mask = v["email"].as_str().unwrap().to_owned();
        assert_eq!(
            mask,
            hmac_hex("k3y-for-masking", &format!("u{}@example.com", id % 10))
        );
        assert!(!line.contains("example.com"), "{line}");
        // The same email, the same mask; another, another.
        assert_eq!(
            *masks.entry(id % 10).or_insert_with(|| mask.clone()),
            mask,
            "{line}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = masks.values().collect();
    assert_eq!(distinct.len(), 10);
}

/// The hex HMAC-SHA256 of `text` under `key`: what `fields` masks with.
fn hmac_hex(key: &str, text: &str) -> String {
    sluice_sdk::hash::hmac::<sha2::Sha256>(key.as_bytes(), text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file source of `users` whose chain masks `/email` with secret
/// `pii_key`, granted to the source or not, into `out/`.
fn chain_masking_manifest(dir: &Path, grant: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let users: String = (0..20)
        .map(|i| format!(r#"{{"id":{i},"email":"u{i}@example.com"}}"#) + "\n")
        .collect();
    std::fs::write(dir.join("in/users.jsonl"), users).unwrap();
    let mut users = source("users", "file-source", "masked")
        .config("path", "/in")
        .files("in", "/in", "read-only")
        .set("transforms", vec!["mask"]);
    if grant {
        users = users.secret("pii_key", "env", "SLUICE_TEST_PII_KEY");
    }
    manifest()
        .transform(
            "mask",
            "fields",
            &[
                ("mask", vec!["/email"].into()),
                ("hash_key", "${secret:pii_key}".into()),
            ],
        )
        .connector(users)
        .connector(
            sink("files", "file-sink", "masked")
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .write(dir)
}

#[test]
fn a_chains_transform_takes_its_secret_from_the_connector_that_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = chain_masking_manifest(dir.path(), true);
    let env = [("SLUICE_TEST_PII_KEY", "chain-k3y")];
    let out = run_env(&["validate", manifest.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("chain mask (fields)"), "{shown}");
    assert!(!shown.contains("chain-k3y"), "{shown}");
    let out = run_env(&["run", "--no-progress", manifest.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("chain-k3y"), "{}", stderr(&out));
    let lines = output_lines(&dir.path().join("out"));
    assert_eq!(lines.len(), 20);
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = v["id"].as_u64().unwrap();
        let want = hmac_hex("chain-k3y", &format!("u{id}@example.com"));
        assert_eq!(v["email"], want, "masked under the secret's value: {line}");
    }

    // Not granted to the source: refused, naming the transform's field.
    let dir = tempfile::tempdir().unwrap();
    let manifest = chain_masking_manifest(dir.path(), false);
    let out = run(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "transform \"mask\" uses secret \"pii_key\", which source \"users\" does not grant"
        ),
        "{err}"
    );
    assert!(err.contains("transform[0].config"), "{err}");
    assert!(err.contains("[connector.grants.secrets]"), "{err}");
}

#[test]
fn fields_without_the_secret_granted_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = masking_manifest(dir.path(), false);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("secret \"pii_key\", which is not granted"),
        "{err}"
    );
    assert!(output_lines(&dir.path().join("out")).is_empty());
}
