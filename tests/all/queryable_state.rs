//! Queryable state: an aggregating transform's counts, kept in its plugin
//! state, read through the daemon's admin API and CLI while it runs and
//! once it is stopped, under the daemon's token.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::admin::http;
use crate::common::*;

const KEYS: u64 = 7;
const RECORDS: u64 = 700;

#[test]
fn an_aggregating_transforms_state_is_read_by_key_through_the_cli_and_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), &["--token", "st4te-token"]);
    let records = keyed_records((0..RECORDS).map(|i| (format!("k{}", i % KEYS), i.to_string())));
    let manifest = manifest()
        .connector(source("gen", wasm("emit-keyed"), "events").config("records", records))
        .connector(transform(
            "counts",
            wasm("count-by-key"),
            "events",
            "counted",
        ))
        .write(dir.path());
    d.ok(&["create", manifest.to_str().unwrap()]);

    // While it runs: the total, once every record went through.
    wait_until(
        "the transform counts every record",
        Duration::from_secs(60),
        || {
            let out = d.cli("connectors", &["state", "counts", "records"]);
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).trim() == RECORDS.to_string()
        },
    );
    let value = d.json("connectors", &["state", "counts", "count/k3"]);
    assert_eq!(value["text"], (RECORDS / KEYS).to_string(), "{value}");
    assert_eq!(value["bytes"], 3, "{value}");

    // The keys, all or by prefix, with their sizes.
    let all = d.json("connectors", &["state", "counts"]);
    assert_eq!(all["count"], KEYS + 1, "{all}");
    assert_eq!(all["truncated"], false, "{all}");
    let some = d.json(
        "connectors",
        &["state", "counts", "--prefix", "count/", "--limit", "3"],
    );
    let keys: Vec<&str> = some["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["count/k0", "count/k1", "count/k2"], "{some}");
    assert_eq!(some["count"], KEYS, "{some}");
    assert_eq!(some["truncated"], true, "{some}");
    let shown =
        String::from_utf8_lossy(&d.cli("connectors", &["state", "counts"]).stdout).into_owned();
    assert!(shown.contains("count/k6"), "{shown}");

    // A key it does not hold, or a connector that is not there: 404, exit 3.
    let out = d.cli("connectors", &["state", "counts", "count/nobody"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("holds no state under key \"count/nobody\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        d.cli("connectors", &["state", "nobody"]).status.code(),
        Some(3)
    );

    // Stopped, it is read from where every put is durable.
    d.ok(&["stop", "counts"]);
    let value = d.json("connectors", &["state", "counts", "records"]);
    assert_eq!(value["text"], RECORDS.to_string(), "{value}");

    // The token rules of every other read.
    let url = d.url();
    for path in [
        "/v1/connectors/counts/state",
        "/v1/connectors/counts/state/records",
    ] {
        assert_eq!(http(&url, "GET", path, None, ""), 401, "{path}");
        assert_eq!(http(&url, "GET", path, Some("wrong"), ""), 401, "{path}");
        assert_eq!(
            http(&url, "GET", path, Some("st4te-token"), ""),
            200,
            "{path}"
        );
    }
}
