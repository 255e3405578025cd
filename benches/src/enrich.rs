//! Async enrichment: `datagen -> log -> http-enrich -> log -> blackhole`,
//! each record's `seq` looked up in a keep-alive HTTP/1.1 service (in this
//! process, on 127.0.0.1) that answers each request 20 ms after it came, as
//! a remote lookup would; one lookup at a time (`concurrency = 1`) and 200
//! at once. Beside them, in the same run, a native client of the same
//! service: one connection asking one key after another, and 200 threads
//! each asking on a connection of its own, the limit the service allows.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::report::{Figure, Report, Target, say};

/// How long the service takes to answer.
const LATENCY: Duration = Duration::from_millis(20);
/// Lookups at once in the concurrent runs.
const CONCURRENCY: u64 = 200;
/// Records of the one-at-a-time run (about 2 s).
const SEQUENTIAL: u64 = 100;
/// Records of the concurrent run.
const CONCURRENT: u64 = 40_000;

/// Every figure of the section.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nenrich: datagen -> log -> http-enrich -> log -> blackhole, each record looked up in an HTTP service that answers in {} ms; beside a native client of the same service",
        LATENCY.as_millis()
    ));
    let port = service()?;
    let native_one = native(port, 1, SEQUENTIAL)?;
    report.add(Figure::new(
        "enrich",
        "native: one lookup at a time",
        native_one,
        "lookups/s",
    ));
    let native_many = native(port, CONCURRENCY, CONCURRENT)?;
    report.add(Figure::new(
        "enrich",
        format!("native: {CONCURRENCY} lookups at once"),
        native_many,
        "lookups/s",
    ));
    let one = run(bin, work, cache, port, 1, SEQUENTIAL)?;
    report.add(
        Figure::new("enrich", "http-enrich, concurrency 1", one, "rec/s")
            .aside(format!("{:.0} % of native", 100.0 * one / native_one)),
    );
    let many = run(bin, work, cache, port, CONCURRENCY, CONCURRENT)?;
    report.add(
        Figure::new(
            "enrich",
            format!("http-enrich, concurrency {CONCURRENCY}"),
            many,
            "rec/s",
        )
        .aside(format!(
            "{:.0}x concurrency 1; {:.0} % of native",
            many / one,
            100.0 * many / native_many
        ))
        .target(Target::at_least(100.0 * one)),
    );
    Ok(())
}

/// Starts the lookup service: a thread a connection, each request read,
/// then answered `LATENCY` later. Returns its port.
fn service() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = serve(conn);
            });
        }
    });
    Ok(port)
}

/// One connection's requests, one after another.
fn serve(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    loop {
        let mut key = None;
        loop {
            line.clear();
            if r.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(path) = line.strip_prefix("GET /users/") {
                key = path.split(' ').next().map(str::to_owned);
            }
        }
        std::thread::sleep(LATENCY);
        let body = format!(
            r#"{{"id":"{}","name":"a user","tier":1}}"#,
            key.unwrap_or_default()
        );
        write!(
            w,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
    }
}

/// `count` lookups by `clients` threads, each on a keep-alive connection of
/// its own: lookups/s.
fn native(port: u16, clients: u64, count: u64) -> anyhow::Result<f64> {
    let began = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let conn = TcpStream::connect(("127.0.0.1", port))?;
                conn.set_nodelay(true)?;
                let mut w = conn.try_clone()?;
                let mut r = BufReader::new(conn);
                let mut line = String::new();
                for key in (c..count).step_by(clients as usize) {
                    write!(w, "GET /users/{key} HTTP/1.1\r\nhost: lookup\r\n\r\n")?;
                    let mut length = 0;
                    loop {
                        line.clear();
                        r.read_line(&mut line)?;
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                        if let Some(n) = line.strip_prefix("content-length: ") {
                            length = n.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    std::io::Read::read_exact(&mut r, &mut body)?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a lookup thread panicked"))??;
    }
    Ok(count as f64 / began.elapsed().as_secs_f64())
}

/// `sluice run` of datagen's `count` records through `http-enrich` at
/// `concurrency`: the transform's records/s (its summary row).
fn run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    port: u16,
    concurrency: u64,
    count: u64,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let rest = format!(
        r#"[[connector]]
name = "enrich"
kind = "transform"
plugin = "http-enrich"
topic = "bench"
output = "enriched"
[connector.batch]
max_records = 1000
[connector.config]
url = "http://127.0.0.1:{port}/users/{{key}}"
field = "/seq"
into = "user"
concurrency = {concurrency}
timeout_ms = 5000
[connector.grants]
net = ["127.0.0.1:{port}"]

[[connector]]
name = "sink"
kind = "sink"
plugin = "blackhole"
topic = "enriched"
"#
    );
    let manifest = crate::files::datagen_into(count, 100, &rest);
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, "enrich")
}
