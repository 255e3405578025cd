//! The network connectors against real peers the tests start on ports of
//! their own: `socket-source` reading a TCP server (a plain `std::net`
//! server in the test, sending what a test says, hanging up and coming
//! back as a real peer would).

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;

/// `socket-source` reading 127.0.0.1:`port` with `framing` into `events`,
/// and a `file-sink` writing them under `out/`.
fn socket_to_files(dir: &Path, port: u16, framing: &str) -> PathBuf {
    let addr = format!("127.0.0.1:{port}");
    manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", addr.as_str())
                .config("framing", framing)
                .config("reconnect_initial_ms", 20)
                .config("reconnect_max_ms", 200)
                .grant("net", vec![addr.as_str()]),
        )
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir)
}

/// Accepts one connection on `l` (within a minute) and sends it `bytes`;
/// returns the stream, still open.
fn serve(l: &TcpListener, bytes: &[u8]) -> TcpStream {
    l.set_nonblocking(true).unwrap();
    let mut accepted = None;
    wait_until("the source connects", Duration::from_secs(60), || {
        accepted = l.accept().ok();
        accepted.is_some()
    });
    let (mut s, _) = accepted.unwrap();
    s.set_nonblocking(false).unwrap();
    s.write_all(bytes).unwrap();
    s
}

#[test]
fn socket_source_reads_lines_from_its_peer_in_order() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::run(dir.path(), &socket_to_files(dir.path(), port, "lines"));
    let _peer = serve(&l, &seq_lines(0..5000));
    stop_after(host, dir.path(), 5000);
    let got = seqs(&dir.path().join("out"));
    assert_eq!(got, (0..5000).collect::<Vec<_>>(), "in order, each once");
}

#[test]
fn socket_source_reads_length_prefixed_frames() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::run(
        dir.path(),
        &socket_to_files(dir.path(), port, "length-prefixed"),
    );
    let mut frames = Vec::new();
    for i in 0..1000u64 {
        let record = format!("{{\"seq\":{i}}}");
        frames.extend_from_slice(&(record.len() as u32).to_be_bytes());
        frames.extend_from_slice(record.as_bytes());
    }
    let _peer = serve(&l, &frames);
    stop_after(host, dir.path(), 1000);
    assert_exactly_once(seqs(&dir.path().join("out")), 1000);
}

#[test]
fn socket_source_rides_out_its_peer_going_away_and_coming_back() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::run(dir.path(), &socket_to_files(dir.path(), port, "lines"));
    // The first peer sends 0..500, hangs up and is gone for a while (the
    // source's tries are refused meanwhile)…
    drop(serve(&l, &seq_lines(0..500)));
    drop(l);
    wait_until("the first 500 arrive", Duration::from_secs(60), || {
        seqs(&dir.path().join("out")).len() >= 500
    });
    std::thread::sleep(Duration::from_millis(800));
    // …then a peer on the same port sends the rest.
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let _peer = serve(&l, &seq_lines(500..1000));
    let log = stop_after(host, dir.path(), 1000);
    assert_exactly_once(seqs(&dir.path().join("out")), 1000);
    assert_eq!(
        log.matches("is away").count(),
        1,
        "the outage is said once, however many tries it took:\n{log}"
    );
    assert_eq!(log.matches("is back").count(), 1, "{log}");
}

/// A receiver on `l`: takes connections one after another and keeps every
/// line it reads, until `lines` have come in all (duplicates counted).
fn receive(l: TcpListener, lines: usize) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        while got.len() < lines {
            let (s, _) = l.accept().unwrap();
            for line in std::io::BufRead::lines(std::io::BufReader::new(s)) {
                let Ok(line) = line else { break };
                got.push(parse_seq(&line));
                if got.len() >= lines {
                    break;
                }
            }
        }
        got
    })
}

/// N of a `{"seq":N,…}` line.
fn parse_seq(line: &str) -> u64 {
    let rest = line.strip_prefix("{\"seq\":").unwrap();
    rest[..rest.find([',', '}']).unwrap()].parse().unwrap()
}

/// `datagen` (`count` records at `rate` a second) → `socket-sink` to
/// 127.0.0.1:`port`.
fn gen_to_socket(dir: &Path, port: u16, count: u64, rate: u64) -> PathBuf {
    let addr = format!("127.0.0.1:{port}");
    manifest()
        .connector(gen_source(count, rate, 16))
        .connector(
            sink("sock", "socket-sink", "events")
                .set("flush_interval_ms", 50)
                .config("addr", addr.as_str())
                .config("reconnect_initial_ms", 20)
                .config("reconnect_max_ms", 200)
                .grant("net", vec![addr.as_str()]),
        )
        .write(dir)
}

#[test]
fn socket_sink_sends_every_record_to_its_peer_in_order() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let receiver = receive(l, 5000);
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "run",
        "--no-progress",
        gen_to_socket(dir.path(), port, 5000, 0).to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(receiver.join().unwrap(), (0..5000).collect::<Vec<_>>());
}

#[test]
fn socket_sink_rides_out_its_peer_going_away_and_delivers_at_least_once() {
    const RECORDS: u64 = 20_000;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    // 10,000 records a second for two seconds; the first receiver takes
    // 3,000 lines and dies, and a new one comes a moment later.
    let mut host = Host::run(
        dir.path(),
        &gen_to_socket(dir.path(), port, RECORDS, 10_000),
    );
    let first = receive(l, 3000).join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // The rest, and the window sent again: read until the last record.
    let second = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(s)) {
            let n = parse_seq(&line.unwrap());
            got.push(n);
            if n == RECORDS - 1 {
                break;
            }
        }
        got
    });
    let second = second.join().unwrap();
    let out = host.wait_for_exit(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", host.log());
    let mut all: Vec<u64> = first.iter().chain(&second).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "every record at least once"
    );
    let log = host.log();
    assert_eq!(log.matches("is away").count(), 1, "{log}");
    assert_eq!(log.matches("is back").count(), 1, "{log}");
}

#[test]
fn ctrl_c_while_socket_sink_waits_for_its_peer_exits_at_once_and_keeps_the_records() {
    // A port nobody listens on: the sink's first write waits for the peer.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let m = gen_to_socket(dir.path(), port, 1000, 0);
    let mut host = Host::run(dir.path(), &m);
    host.wait_for_log("is away", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let pressed = std::time::Instant::now();
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    let took = pressed.elapsed();
    eprintln!("Ctrl-C to exit: {took:?}");
    assert_eq!(out.status.code(), Some(130), "{}", host.log());
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Nothing was committed: the next run, with the peer there, sends all.
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let receiver = receive(l, 1000);
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut got = receiver.join().unwrap();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn socket_connectors_without_a_net_grant_fail_at_once_naming_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    for (kind, plugin) in [("source", "socket-source"), ("sink", "socket-sink")] {
        let dir = tempfile::tempdir().unwrap();
        let c = if kind == "source" {
            source("sock", plugin, "events")
        } else {
            sink("sock", plugin, "events")
        };
        let mut m = manifest().connector(c.config("addr", addr.as_str()));
        if kind == "sink" {
            m = m.connector(gen_source(10, 0, 16));
        }
        let m = m.write(dir.path());
        let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{plugin}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("grant it with net = [\"{addr}\"]")),
            "{plugin}: {err}"
        );
        assert!(
            !err.contains("restarting in"),
            "{plugin} failed at once: {err}"
        );
    }
    l.set_nonblocking(true).unwrap();
    assert!(l.accept().is_err(), "nothing reached the peer");
}

#[test]
fn socket_source_fails_on_a_record_past_max_record_bytes_and_on_a_reconnect_that_cannot_work() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let m = manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", addr.as_str())
                .config("max_record_bytes", 10)
                .restart("attempts", 0)
                .grant("net", vec![addr.as_str()]),
        )
        .write(dir.path());
    let mut host = Host::run(dir.path(), &m);
    let _peer = serve(&l, b"a line far longer than ten bytes\n");
    let out = host.wait_for_exit(Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1), "{}", host.log());
    assert!(
        host.log()
            .contains("a record longer than max_record_bytes (10)"),
        "{}",
        host.log()
    );

    let m = manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", addr.as_str())
                .config("reconnect_initial_ms", 500)
                .config("reconnect_max_ms", 100)
                .grant("net", vec![addr.as_str()]),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out)
            .contains("reconnect_initial_ms must be at least 1 and at most reconnect_max_ms"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn records_a_source_has_read_go_out_though_its_peer_then_goes_quiet() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", format!("127.0.0.1:{port}").as_str())
                .grant("net", vec![format!("127.0.0.1:{port}").as_str()])
                .batch("max_records", 100),
        )
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    // 150 lines in one read, then a quiet peer: the second batch's first
    // poll returns the 50 left over at once, and its next poll waits in the
    // read; the batch's linger must not wait with it.
    let _peer = serve(&l, &seq_lines(0..150));
    stop_after(host, dir.path(), 150);
    assert_eq!(seqs(&dir.path().join("out")), (0..150).collect::<Vec<_>>());
}

#[test]
fn socket_sink_dead_letters_a_value_holding_a_newline_and_sends_the_rest() {
    // Length-prefixed frames can carry a newline; lines cannot.
    let peer = TcpListener::bind("127.0.0.1:0").unwrap();
    let from = format!("127.0.0.1:{}", peer.local_addr().unwrap().port());
    let receiver = TcpListener::bind("127.0.0.1:0").unwrap();
    let to = format!("127.0.0.1:{}", receiver.local_addr().unwrap().port());
    let received = receive(receiver, 90);
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", from.as_str())
                .config("framing", "length-prefixed")
                .grant("net", vec![from.as_str()]),
        )
        .connector(
            sink("lines", "socket-sink", "events")
                .set("flush_interval_ms", 50)
                .config("addr", to.as_str())
                .grant("net", vec![to.as_str()]),
        )
        .connector(
            sink("dlq-reader", "file-sink", "lines.dlq")
                .set("flush_interval_ms", 50)
                .config("path", "/out")
                .config("format", "json")
                .files("out", "/out", "read-write"),
        )
        .write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    let mut frames = Vec::new();
    for i in 0..100u64 {
        let record = if i % 10 == 3 {
            format!("{{\"seq\":{i},\n\"bad\":true}}")
        } else {
            format!("{{\"seq\":{i}}}")
        };
        frames.extend_from_slice(&(record.len() as u32).to_be_bytes());
        frames.extend_from_slice(record.as_bytes());
    }
    let _peer = serve(&peer, &frames);
    let good: Vec<u64> = (0..100).filter(|i| i % 10 != 3).collect();
    assert_eq!(received.join().unwrap(), good, "the rest, in order");
    stop_after(host, dir.path(), 10);
    let mut dead = Vec::new();
    for line in output_lines(&dir.path().join("out")) {
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        let error = r["headers"]["sluice.error"].as_str().unwrap();
        assert!(error.contains("holds a newline"), "{r}");
        dead.push(parse_seq(r["value"].as_str().unwrap()));
    }
    dead.sort_unstable();
    assert_eq!(dead, [3, 13, 23, 33, 43, 53, 63, 73, 83, 93]);
}
