//! Cluster mode: several `sluice serve --cluster` hosts on one NATS server
//! share the connectors; hosts die and come back, and every record is
//! delivered once while no instance ever runs on two hosts at a time.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sluice_test_servers::nats::{Access, NatsServer, ServerTls};

use crate::common::*;
use crate::nats::{on_nats, secret_from, trusting_the_test_ca};

/// Records each generator instance makes.
const COUNT: u64 = 40_000;
/// Lease length: a dead host's instances move after about this long.
const LEASE: &str = "2s";

/// `sluice serve --cluster` host `i` of the test, its data under `dir/h<i>`.
fn start_host(dir: &Path, i: usize, nats: &str, manifest: &Path) -> Daemon {
    start_host_with(dir, i, nats, manifest, LEASE)
}

fn start_host_with(dir: &Path, i: usize, nats: &str, manifest: &Path, lease: &str) -> Daemon {
    let home = dir.join(format!("h{i}"));
    std::fs::create_dir_all(&home).unwrap();
    Daemon::start(
        &home,
        &[
            "--cluster",
            nats,
            "--lease",
            lease,
            "--host-id",
            &format!("h{i}"),
            "--manifest",
            manifest.to_str().unwrap(),
            "--log-format",
            "json",
        ],
    )
}

/// The `seq` values of each partition's output files under `out`, by
/// partition (the file-sink names its files `events-<p>-<first>.txt`).
fn seqs_by_partition(out: &Path) -> BTreeMap<u32, Vec<u64>> {
    let mut by = BTreeMap::new();
    for file in output_files(out) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let partition = name.split('-').nth(1).unwrap().parse().unwrap();
        let only = tempfile::tempdir().unwrap();
        std::fs::copy(&file, only.path().join(&name)).unwrap();
        by.entry(partition)
            .or_insert_with(Vec::new)
            .extend(seqs(only.path()));
    }
    by
}

/// One host's hold on an instance, from its log: `[from, to)`.
#[derive(Debug)]
struct Hold {
    host: String,
    revision: u64,
    from: SystemTime,
    to: SystemTime,
}

/// The holds in one incarnation's JSON log; one still open when the log
/// ends lasts until `ended` (when the process was killed or stopped).
fn holds(log: &str, ended: SystemTime) -> Vec<((String, u64), Hold)> {
    let mut open: BTreeMap<(String, u64), Hold> = BTreeMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let f = &v["fields"];
        let message = f["message"].as_str().unwrap_or_default();
        if !message.starts_with("lease ") {
            continue;
        }
        let at = humantime::parse_rfc3339(v["timestamp"].as_str().unwrap()).unwrap();
        let unit = (
            f["connector"].as_str().unwrap().to_owned(),
            f["instance"].as_u64().unwrap(),
        );
        let revision = f["revision"].as_u64().unwrap();
        let host = f["host"].as_str().unwrap().to_owned();
        match message {
            "lease taken" => {
                let hold = Hold {
                    host,
                    revision,
                    from: at,
                    to: ended,
                };
                assert!(
                    open.insert(unit.clone(), hold).is_none(),
                    "{unit:?} taken twice"
                );
            }
            "lease released" | "lease lost" => {
                let mut hold = open
                    .remove(&unit)
                    .unwrap_or_else(|| panic!("{message} of {unit:?}, never taken: {line}"));
                hold.to = at;
                out.push((unit, hold));
            }
            _ => {}
        }
    }
    out.extend(open);
    out
}

#[test]
fn three_hosts_one_killed_thirty_times_deliver_every_record_once_and_never_share_an_instance() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(manifest(), &nats.url())
        .broker("partitions", 3)
        .connector(gen_source(COUNT, 500, 64).set("parallelism", 3))
        .connector(files_sink().set("parallelism", 3))
        .write(dir.path());
    let mut hosts: Vec<Daemon> = (0..3)
        .map(|i| start_host(dir.path(), i, &nats.url(), &manifest))
        .collect();
    // Each incarnation's log, and when it ended.
    let mut logs: Vec<(String, SystemTime)> = Vec::new();
    let mut rng = kill_seed() | 1;
    for _ in 0..30 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(1500 + rng % 2000));
        let i = (rng >> 20) as usize % hosts.len();
        hosts[i].kill();
        logs.push((hosts[i].log(), SystemTime::now()));
        hosts[i] = start_host(dir.path(), i, &nats.url(), &manifest);
    }
    let out = dir.path().join("out");
    let done = || {
        let by = seqs_by_partition(&out);
        by.len() == 3 && by.values().all(|s| s.len() as u64 >= COUNT)
    };
    wait_until(
        "every record is in the output",
        Duration::from_secs(180),
        done,
    );
    let status = hosts[0].status("files");
    for mut host in hosts {
        assert_eq!(host.terminate(), Some(0), "{}", host.log());
        logs.push((host.log(), SystemTime::now()));
    }

    for (partition, seqs) in seqs_by_partition(&out) {
        eprintln!("partition {partition}: {} records", seqs.len());
        assert_exactly_once(seqs, COUNT);
    }
    // Every instance shows the host that runs it.
    let shown: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["host"].as_str().unwrap_or("-"))
        .collect();
    assert!(shown.iter().all(|h| h.starts_with('h')), "{status}");

    let mut by_unit: BTreeMap<(String, u64), Vec<Hold>> = BTreeMap::new();
    for (log, ended) in &logs {
        for (unit, hold) in holds(log, *ended) {
            by_unit.entry(unit).or_default().push(hold);
        }
    }
    assert_eq!(by_unit.len(), 6, "three instances each of gen and files");
    let taken: usize = by_unit.values().map(Vec::len).sum();
    eprintln!("{taken} leases taken");
    assert!(taken >= 30, "the kills moved instances only {taken} times");
    for (unit, mut holds) in by_unit {
        holds.sort_by_key(|h| h.from);
        for pair in holds.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                a.to <= b.from,
                "{unit:?} ran on {} (revision {}) until {} and on {} (revision {}) from {}",
                a.host,
                a.revision,
                humantime::format_rfc3339_micros(a.to),
                b.host,
                b.revision,
                humantime::format_rfc3339_micros(b.from),
            );
            assert!(a.revision < b.revision, "{unit:?}: {a:?} then {b:?}");
        }
    }
}

#[test]
fn a_change_through_a_host_that_has_not_seen_another_hosts_change_gets_409_then_sees_it() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = on_nats(manifest(), &nats.url())
        .connector(gen_source(0, 100, 64))
        .write(dir.path());
    // A long lease: a host reads the others' changes every 10 s.
    let a = start_host_with(dir.path(), 0, &nats.url(), &manifest, "60s");
    let b = start_host_with(dir.path(), 1, &nats.url(), &manifest, "60s");
    // b changes the connector; a, which has not listed it since, is
    // refused. (Should a's listing fall between the two, try again.)
    let mut refused = None;
    for verb in ["pause", "resume", "pause", "resume"] {
        b.ok(&[verb, "gen"]);
        let out = a.cli("connectors", &[verb, "gen"]);
        if out.status.code() == Some(4) {
            refused = Some((verb, String::from_utf8_lossy(&out.stderr).into_owned()));
            break;
        }
        assert!(out.status.success());
    }
    let (verb, error) = refused.expect("a change on a stale revision was refused");
    assert!(
        error.contains("changed meanwhile through another host; read it again and retry"),
        "{error}"
    );
    // a takes b's change from its next listing; then its own goes through.
    let state = if verb == "pause" { "paused" } else { "running" };
    wait_until("a sees b's change", Duration::from_secs(30), || {
        a.status("gen")["state"] == state
    });
    let (back, was) = if verb == "pause" {
        ("resume", "running")
    } else {
        ("pause", "paused")
    };
    a.ok(&[back, "gen"]);
    wait_until("b sees a's change", Duration::from_secs(30), || {
        b.status("gen")["state"] == was
    });
}

#[test]
fn a_cluster_host_connects_with_the_nats_user_and_tls_of_its_manifest() {
    let Some((dir, pki)) = crate::tls::with_pki() else {
        return;
    };
    let Some(nats) = NatsServer::start_with(Access {
        user: Some(("sluice".into(), "pa55-s3cr3t".into())),
        tls: Some(ServerTls {
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            verify_clients: None,
        }),
        ..Access::default()
    }) else {
        return;
    };
    std::fs::write(dir.path().join("nats.pass"), "pa55-s3cr3t\n").unwrap();
    let manifest = on_nats(datagen_to_files(1_000, 0), &nats.url())
        .broker("user", "sluice")
        .broker("password", secret_from("file", "nats.pass"))
        .broker("tls", trusting_the_test_ca(&pki))
        .write(dir.path());
    let host = start_host(dir.path(), 0, &nats.url(), &manifest);
    let out = dir.path().join("out");
    wait_until("the records arrive", Duration::from_secs(60), || {
        seqs(&out).len() >= 1_000
    });
    assert_exactly_once(seqs(&out), 1_000);
    assert!(!host.log().contains("s3cr3t"), "{}", host.log());
}
