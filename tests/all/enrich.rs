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

#[test]
fn http_enrich_without_its_service_in_net_is_refused_before_a_request_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Receiver::start_script("lookup_server.py", &dir.path().join("service"), &[]);
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/events.jsonl"), "{\"user_id\":1}\n").unwrap();
    let other = format!("127.0.0.1:{}", server.port + 1);
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
                .grant("net", vec![other.as_str()])
                .restart("attempts", 0),
        )
        .write(dir.path());
    let err = run_refused(&manifest);
    assert!(
        err.contains(&format!(
            "refused to connect to {}, which no `net` grant allows",
            server.addr()
        )) && err.contains("the connector's net grant does not allow this peer"),
        "{err}"
    );
    assert!(
        !dir.path().join("service/requests").exists(),
        "no request reached the service"
    );
}

/// `examples/enrich/lookup.py` on `port`, killed on drop.
struct Lookup(std::process::Child);

impl Lookup {
    fn start(port: u16) -> Lookup {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/enrich/lookup.py");
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        assert_eq!(first.trim(), format!("listening {port}"));
        Lookup(child)
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_enrich_example_waits_for_its_service_and_enriches_every_order_once() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/enrich/sluice.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:8099", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sluice.toml");
    std::fs::write(&manifest, text).unwrap();
    // The service is not up yet: the transform waits for it, refusing
    // nothing.
    let mut host = Host::run(dir.path(), &manifest);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _service = Lookup::start(port);
    let ended = host.wait_for_exit(std::time::Duration::from_secs(120));
    assert_eq!(ended.status.code(), Some(0), "{}", host.log());

    let lines = output_lines(&dir.path().join("out"));
    assert_eq!(lines.len(), 5000);
    for (seq, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["seq"], seq, "in order: {line}");
        assert!(v.get("pad").is_none(), "trimmed: {line}");
        if seq % 13 == 0 {
            assert!(v.get("user").is_none(), "404, as it was: {line}");
        } else {
            assert_eq!(v["user"]["name"], format!("user-{seq}"), "{line}");
        }
    }
    assert!(
        host.log().contains("the lookup service is down or failing"),
        "the wait is said: {}",
        host.log()
    );
}
