//! The HTTP connectors beside native clients of the same servers (in this
//! process, on 127.0.0.1):
//! - `http-sink` and a plain client both post NDJSON batches of 1000
//!   records to a keep-alive HTTP/1.1 receiver, one request in flight, and
//!   the receiver says how many records came over what span;
//! - `http-source` (`mode = "sse"`) → log → `blackhole` and a plain reader
//!   both read the same stream of Server-Sent Events from a server that
//!   writes them as fast as the socket takes them.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Records the runs post.
pub const RECORDS: u64 = 1_000_000;
/// Records a request.
const BATCH: u64 = 1000;

/// A keep-alive HTTP/1.1 receiver: counts the lines of every POST's body
/// (`Content-Length` bodies), answers `200` with no body, and says when it
/// has `count` lines and over what span (first request to last).
struct Receiver {
    port: u16,
    done: mpsc::Receiver<Duration>,
}

impl Receiver {
    fn start(count: u64) -> anyhow::Result<Receiver> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        let lines = Arc::new(AtomicU64::new(0));
        let first = Arc::new(std::sync::OnceLock::<Instant>::new());
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for conn in l.incoming().map_while(Result::ok) {
                let (lines, first, tx) = (lines.clone(), first.clone(), tx.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, count, &lines, &first, &tx);
                });
            }
        });
        Ok(Receiver { port, done })
    }

    /// Records/s from the first request to the last, once all have come.
    fn rate(self, count: u64) -> anyhow::Result<f64> {
        match self.done.recv_timeout(Duration::from_secs(300)) {
            Ok(span) => Ok(count as f64 / span.as_secs_f64()),
            Err(_) => bail!("the HTTP receiver did not get {count} records"),
        }
    }
}

/// One connection's requests, one after another.
fn serve(
    conn: TcpStream,
    count: u64,
    lines: &AtomicU64,
    first: &std::sync::OnceLock<Instant>,
    done: &mpsc::Sender<Duration>,
) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::with_capacity(256 * 1024, conn);
    let mut body = Vec::new();
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let started = *first.get_or_init(Instant::now);
        body.resize(length, 0);
        r.read_exact(&mut body)?;
        let n = body.iter().filter(|&&b| b == b'\n').count() as u64;
        w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")?;
        let total = lines.fetch_add(n, Ordering::Relaxed) + n;
        if total >= count && total - n < count {
            let _ = done.send(started.elapsed());
        }
    }
}

/// A plain client on one keep-alive connection posting `count` records of
/// `payload` bytes, `BATCH` a request: records/s at the receiver.
pub fn post_natively(count: u64, payload: usize) -> anyhow::Result<f64> {
    let receiver = Receiver::start(count)?;
    let line = format!("{}\n", "x".repeat(payload));
    let body = line.as_bytes().repeat(BATCH as usize);
    let head = format!(
        "POST /ingest HTTP/1.1\r\nhost: 127.0.0.1:{}\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        receiver.port,
        body.len()
    );
    let conn = TcpStream::connect(("127.0.0.1", receiver.port))?;
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    for _ in 0..count / BATCH {
        w.write_all(head.as_bytes())?;
        w.write_all(&body)?;
        // The answer: a status line and headers, no body.
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                bail!("the receiver hung up");
            }
            if line == "\r\n" {
                break;
            }
        }
    }
    receiver.rate(count)
}

/// `datagen` → log → `http-sink` posting to a receiver, requests of
/// `BATCH` records, `in_flight` of them at once: records/s at the receiver.
pub fn sink_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: u32,
    in_flight: u32,
) -> anyhow::Result<f64> {
    let receiver = Receiver::start(count)?;
    let dir = tempfile::tempdir_in(work)?;
    let port = receiver.port;
    let batch = BATCH * u64::from(in_flight);
    let sink = format!(
        r#"[[connector]]
name = "post"
kind = "sink"
plugin = "http-sink"
topic = "bench"
[connector.batch]
max_records = {batch}
[connector.config]
url = "http://127.0.0.1:{port}/ingest"
records_per_request = {BATCH}
max_in_flight = {in_flight}
[connector.grants]
net = ["127.0.0.1:{port}"]
"#
    );
    let manifest = crate::files::datagen_into(count, payload, &sink);
    crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    receiver.rate(count)
}

/// A server of one Server-Sent Events stream: the first connection's
/// request is read, then it gets `count` events of `payload` bytes
/// (`data: …` and a blank line) as fast as the socket takes them, and the
/// connection is closed.
fn event_sender(count: u64, payload: usize) -> anyhow::Result<(u16, std::thread::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let event = format!("data: {}\n\n", "x".repeat(payload));
    let body = event.as_bytes().repeat(count as usize);
    let sending = std::thread::spawn(move || {
        let Ok((conn, _)) = l.accept() else { return };
        let Ok(mut w) = conn.try_clone() else { return };
        let mut r = BufReader::new(conn);
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let head =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
        let _ = w.write_all(head).and_then(|()| w.write_all(&body));
    });
    Ok((port, sending))
}

/// A plain reader of an [`event_sender`]'s stream: a `GET`, then the events
/// counted line by line. Records/s and MB/s of event data.
pub fn read_events_natively(count: u64, payload: usize) -> anyhow::Result<(f64, f64)> {
    let (port, sending) = event_sender(count, payload)?;
    let conn = TcpStream::connect(("127.0.0.1", port))?;
    let mut w = conn.try_clone()?;
    w.write_all(b"GET /events HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")?;
    let mut r = BufReader::with_capacity(64 * 1024, conn);
    let started = Instant::now();
    let mut line = Vec::new();
    // The response's head.
    while r.read_until(b'\n', &mut line)? > 0 && line != b"\r\n" {
        line.clear();
    }
    let (mut events, mut bytes, mut data) = (0u64, 0u64, false);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        match line.strip_prefix(b"data: ") {
            Some(value) => {
                bytes += value.len() as u64 - 1;
                data = true;
            }
            None if line == b"\n" && data => {
                events += 1;
                data = false;
            }
            None => {}
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = sending.join();
    if events != count {
        bail!("the native reader got {events} of {count} events");
    }
    Ok((events as f64 / secs, bytes as f64 / secs / 1e6))
}

/// `http-source` reading an [`event_sender`]'s stream → log → `blackhole`:
/// what the sink's report says arrived, from its first record to its last.
pub fn source_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: usize,
) -> anyhow::Result<blackhole::Report> {
    let (port, sending) = event_sender(count, payload)?;
    let source = format!(
        r#"[broker]
data_dir = "data"

[[connector]]
name = "events"
kind = "source"
plugin = "http-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
url = "http://127.0.0.1:{port}/events"
mode = "sse"
[connector.grants]
net = ["127.0.0.1:{port}"]
"#
    );
    let report = crate::network::to_blackhole(bin, work, cache, count, &source)?;
    let _ = sending.join();
    Ok(report)
}
