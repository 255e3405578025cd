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

/// `{"seq":N}` lines for each N in `range`.
fn seq_lines(range: std::ops::Range<u64>) -> Vec<u8> {
    range
        .flat_map(|i| format!("{{\"seq\":{i}}}\n").into_bytes())
        .collect()
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

/// Stops the host with Ctrl-C once `out/` holds `n` lines; returns its log.
fn stop_after(mut host: Host, dir: &Path, n: usize) -> String {
    let out = dir.join("out");
    wait_until(
        &format!("{n} lines arrive"),
        Duration::from_secs(60),
        || seqs(&out).len() >= n,
    );
    host.interrupt();
    let output = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(130), "{}", host.log());
    host.log()
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
        log.matches("went away").count(),
        1,
        "the outage is said once, however many tries it took:\n{log}"
    );
    assert_eq!(log.matches("is back").count(), 1, "{log}");
}
