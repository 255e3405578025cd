//! `http-sink` beside a native client: both post NDJSON batches of 1000
//! records to the same HTTP/1.1 receiver (a keep-alive server on
//! 127.0.0.1, in this process), one request in flight, and the receiver
//! says how many records came over what span.

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

/// `datagen` → log → `http-sink` posting to a receiver: records/s at the
/// receiver.
pub fn sink_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: u32,
) -> anyhow::Result<f64> {
    let receiver = Receiver::start(count)?;
    let dir = tempfile::tempdir_in(work)?;
    let port = receiver.port;
    let sink = format!(
        r#"[[connector]]
name = "post"
kind = "sink"
plugin = "http-sink"
topic = "bench"
[connector.config]
url = "http://127.0.0.1:{port}/ingest"
[connector.grants]
net = ["127.0.0.1:{port}"]
"#
    );
    let manifest = crate::files::datagen_into(count, payload, &sink);
    crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    receiver.rate(count)
}
