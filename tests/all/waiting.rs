//! Waiting is not computing: a plugin may block waiting for its peer (the
//! `block-on-read` fixture reads a socket the natural way, as a Pulsar IO
//! source's `read()` does) for far longer than its `cpu` grant, and a stop
//! still lands at once, interrupting the wait.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;

/// A listener on a free port of 127.0.0.1.
fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// `block-on-read` reading 127.0.0.1:`port`, granted it, with `cpu`.
fn reader(dir: &std::path::Path, port: u16, cpu: &str) -> std::path::PathBuf {
    let addr = format!("127.0.0.1:{port}");
    manifest()
        .connector(
            source("reader", wasm("block-on-read"), "lines")
                .config("addr", addr.as_str())
                .grant("net", vec![addr.as_str()])
                .grant("cpu", cpu)
                .restart("initial", "50ms"),
        )
        .write(dir)
}

#[test]
fn a_source_blocked_in_a_read_far_past_its_cpu_grant_is_not_restarted() {
    let (l, port) = listener();
    let dir = tempfile::tempdir().unwrap();
    let m = reader(dir.path(), port, "1s");
    // The peer says nothing for 3 s (three times the grant), then one line,
    // then hangs up.
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        s.write_all(b"at last\n").unwrap();
    });
    let began = Instant::now();
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    peer.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(began.elapsed() >= Duration::from_secs(3));
    let log = stderr(&out);
    assert!(!log.contains("past its cpu grant"), "{log}");
    assert!(!log.contains("restarting in"), "{log}");
    let line = summary_line(&out, "reader");
    assert!(
        line.contains(" 1 ") && line.contains("finished"),
        "one record, then the end: {line}"
    );
}

#[test]
fn ctrl_c_during_a_blocked_read_exits_130_at_once_with_the_summary() {
    let (l, port) = listener();
    let dir = tempfile::tempdir().unwrap();
    let m = reader(dir.path(), port, "1s");
    let mut host = Host::run(dir.path(), &m);
    // The peer accepts and says nothing, for as long as the test lasts.
    let (_peer, _) = l.accept().unwrap();
    host.wait_for_log("block-on-read: waiting for a line", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let pressed = Instant::now();
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    let took = pressed.elapsed();
    eprintln!("Ctrl-C to exit: {took:?}");
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let line = summary_line(&out, "reader");
    assert!(line.contains("stopped"), "{line}");
    assert!(!stderr(&out).contains("failed"), "{}", stderr(&out));
    // The process's own exit (a clean stop: close, sync, the summary) is
    // inside this bound; the wait itself ends within a tick.
    assert!(
        took < Duration::from_millis(200),
        "the blocked read held the stop for {took:?}"
    );
}

#[test]
fn a_plugin_sleeping_past_its_cpu_grant_is_not_interrupted() {
    // `loop-forever` in `sleep` mode sleeps 1.5 s in one `poll`, five times
    // its 300 ms grant, then ends its stream.
    let dir = tempfile::tempdir().unwrap();
    let m = manifest()
        .connector(
            source("sleeper", wasm("loop-forever"), "t")
                .config("mode", "sleep")
                .config("sleep_ms", 1500)
                .grant("cpu", "300ms")
                .restart("attempts", 0),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", m.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("past its cpu grant"));
    assert!(summary_line(&out, "sleeper").contains("finished"));
}

#[test]
fn a_file_read_after_an_interrupted_wait_still_reads_the_file() {
    // The host ends the fixture's sleep to stop; the read of a file that
    // follows, in the same call, must not be ended with it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/big"), vec![b'x'; 1 << 20]).unwrap();
    let m = manifest()
        .connector(
            source("reader", wasm("wait-then-read-file"), "t")
                .config("path", "/data/big")
                .files("data", "/data", "read-only")
                .restart("attempts", 0),
        )
        .write(dir.path());
    let mut host = Host::run(dir.path(), &m);
    host.wait_for_log("wait-then-read-file: waiting", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(!stderr(&out).contains("failed"), "{}", stderr(&out));
    let line = summary_line(&out, "reader");
    assert!(
        line.contains(" 1 ") && line.contains("stopped"),
        "the file read, one record: {line}"
    );
}
