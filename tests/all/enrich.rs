//! Async enrichment: `http-enrich` as a transform connector asking a real
//! lookup service (`tests/peers/lookup_server.py`, answers after up to
//! 20 ms, different for each key) many keys at once.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use crate::common::*;
use crate::http::Receiver;

const RECORDS: u64 = 1_200;
const USERS: u64 = 60;

#[test]
fn http_enrich_looks_up_many_at_once_keeps_the_order_caches_retries_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Receiver::start_script(
        "lookup_server.py",
        &dir.path().join("service"),
        &["--delay-ms", "20"],
    );
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    let lines: String = (0..RECORDS)
        .map(|seq| format!(r#"{{"seq":{seq},"user_id":{}}}"#, seq % USERS) + "\n")
        .collect();
    std::fs::write(dir.path().join("in/events.jsonl"), lines).unwrap();
    let manifest = manifest()
        .connector(
            source("events", "file-source", "events")
                .config("path", "/in")
                .files("in", "/in", "read-only"),
        )
        .connector(
            transform("enrich", "http-enrich", "events", "enriched")
                .config(
                    "url",
                    format!("http://127.0.0.1:{}/users/{{key}}", server.port).as_str(),
                )
                .config("field", "/user_id")
                .config("into", "user")
                .config("concurrency", 32)
                .config("retries", 2)
                .config("backoff_ms", 10)
                .config("cache_ttl_ms", 600_000)
                .grant("net", vec![server.addr().as_str()]),
        )
        .connector(
            sink("files", "file-sink", "enriched")
                .config("path", "/out")
                .files("out", "/out", "read-write"),
        )
        .connector(dead_letters("enrich.dlq"))
        .write(dir.path());
    run_finished(&manifest);

    // In the order they came, each enriched, or kept as it was on a 404.
    let mut want = Vec::new();
    for line in output_lines(&dir.path().join("out")) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let (seq, user) = (v["seq"].as_u64().unwrap(), v["user_id"].as_u64().unwrap());
        if user % 13 == 0 {
            assert!(v.get("user").is_none(), "404: kept as it was: {line}");
        } else {
            assert_eq!(v["user"]["name"], format!("user-{user}"), "{line}");
            assert_eq!(v["user"]["tier"], user % 3, "{line}");
        }
        want.push(seq);
    }
    let expected: Vec<u64> = (0..RECORDS)
        .filter(|s| !(s % USERS).is_multiple_of(17))
        .collect();
    assert_eq!(want, expected, "every record not refused, in input order");

    // A lookup that fails for good: its records dead-lettered, saying why.
    let mut refused = Vec::new();
    for line in output_lines(&dir.path().join("dlq")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let v: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        let user = v["user_id"].as_u64().unwrap();
        assert_eq!(user % 17, 0, "{line}");
        let reason = r["headers"]["sluice.error"].as_str().unwrap();
        assert!(
            reason.contains(&format!("looking up key \"{user}\""))
                && reason.contains("the service answered 500 (3 tries)"),
            "{reason}"
        );
        refused.push(v["seq"].as_u64().unwrap());
    }
    refused.sort_unstable();
    let expected: Vec<u64> = (0..RECORDS)
        .filter(|s| (s % USERS).is_multiple_of(17))
        .collect();
    assert_eq!(refused, expected);

    // The cache: a key answered (found or 404) is asked once in the whole
    // run, a key answered 503 first twice; one that fails is asked again.
    let mut asked: BTreeMap<u64, u32> = BTreeMap::new();
    for path in lines_in(&dir.path().join("service/requests")) {
        *asked
            .entry(path.strip_prefix("/users/").unwrap().parse().unwrap())
            .or_default() += 1;
    }
    for user in 0..USERS {
        let n = asked[&user];
        match user {
            u if u % 17 == 0 => assert!(n >= 3 && n.is_multiple_of(3), "user {u}: {n}"),
            u if u % 13 != 0 && u % 7 == 0 => assert_eq!(n, 2, "user {u}"),
            u => assert_eq!(n, 1, "user {u}"),
        }
    }
}

fn lines_in(file: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}
