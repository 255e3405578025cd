//! The network connectors, each beside the machine's own limit measured in
//! the same run: `socket-source` → log → `blackhole` against a plain
//! `std::net` reader of the same lines from the same sender, and what 100
//! idle `socket-source` instances (blocked in their reads) cost the host.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use blackhole::Report as SinkReport;

/// Lines the throughput runs send.
pub const LINES: u64 = 2_000_000;

/// `count` lines of `payload` bytes (and a newline), as one buffer.
fn lines(count: u64, payload: usize) -> Vec<u8> {
    let line = format!("{}\n", "x".repeat(payload));
    line.as_bytes().repeat(count as usize)
}

/// A sender on a port of 127.0.0.1: the first connection gets `data` as
/// fast as the socket takes it, then the sender hangs up.
fn sender(data: Vec<u8>) -> anyhow::Result<(u16, std::thread::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let sending = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(&data);
        }
    });
    Ok((port, sending))
}

/// A plain `BufReader` reading `count` lines of `payload` bytes from a
/// sender: records/s and MB/s.
pub fn read_natively(count: u64, payload: usize) -> anyhow::Result<(f64, f64)> {
    let (port, sending) = sender(lines(count, payload))?;
    let mut r = BufReader::with_capacity(64 * 1024, TcpStream::connect(("127.0.0.1", port))?);
    let started = Instant::now();
    let (mut n, mut bytes, mut line) = (0u64, 0u64, Vec::new());
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        bytes += line.len() as u64 - 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = sending.join();
    if n != count {
        bail!("the native reader got {n} of {count} lines");
    }
    Ok((n as f64 / secs, bytes as f64 / secs / 1e6))
}

/// A manifest whose `socket-source` `name` reads 127.0.0.1:`port` (granted)
/// into `topic`, with `extra` in its table.
fn socket_source(name: &str, topic: &str, port: u16, extra: &str) -> String {
    format!(
        r#"[broker]
data_dir = "data"

[[connector]]
name = "{name}"
kind = "source"
plugin = "socket-source"
topic = "{topic}"
{extra}
[connector.config]
addr = "127.0.0.1:{port}"
[connector.grants]
net = ["127.0.0.1:{port}"]
"#
    )
}

/// Starts `sluice run` on `manifest` in `dir`, its log in `dir/sluice.log`
/// (see [`log_tail`]).
fn start(bin: &Path, cache: &Path, dir: &Path, manifest: &str) -> anyhow::Result<Child> {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, manifest)?;
    Command::new(bin)
        .arg("--cache-dir")
        .arg(cache)
        .args(["run", "--no-progress"])
        .arg(&path)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sluice.log"))?)
        .spawn()
        .with_context(|| format!("running {}", bin.display()))
}

/// The last lines of the log of the run in `dir`, for an error.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("sluice.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Stops `child` as Ctrl-C does, and waits for it.
fn stop(mut child: Child) -> anyhow::Result<()> {
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    child.wait()?;
    Ok(())
}

/// `socket-source` reading `count` lines of `payload` bytes from a sender
/// → log → `blackhole`: what the sink's report says arrived, from its first
/// record to its last.
pub fn source_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: usize,
) -> anyhow::Result<SinkReport> {
    let (port, sending) = sender(lines(count, payload))?;
    let source = socket_source(
        "sock",
        "bench",
        port,
        "[connector.batch]\nmax_records = 1000",
    );
    let report = to_blackhole(bin, work, cache, count, &source)?;
    let _ = sending.join();
    Ok(report)
}

/// `source` (a manifest's `[broker]` and source tables, writing topic
/// `bench`) → log → `blackhole`, until the sink has `count` records: what
/// its report says arrived, from its first record to its last.
pub fn to_blackhole(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    source: &str,
) -> anyhow::Result<SinkReport> {
    to_blackhole_from(bin, work, cache, count, source, "bench")
}

/// [`to_blackhole`] with the sink reading `topic`.
pub fn to_blackhole_from(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    source: &str,
    topic: &str,
) -> anyhow::Result<SinkReport> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::create_dir(dir.path().join("report"))?;
    let manifest = source.to_owned()
        + &format!(
            r#"
[[connector]]
name = "hole"
kind = "sink"
plugin = "blackhole"
topic = "{topic}"
flush_interval_ms = 100
[connector.config]
report_dir = "/report"
[connector.grants]
files = [{{ host = "report", guest = "/report", mode = "read-write" }}]
"#
        );
    let child = start(bin, cache, dir.path(), &manifest)?;
    // The sink has everything once its group has committed the last
    // offset; its report is whole once it has closed.
    let committed = dir.path().join("data").join("groups").join("hole.json");
    let began = Instant::now();
    loop {
        let offset = std::fs::read(&committed)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v[format!("{topic}/0")].as_u64());
        if offset.is_some_and(|o| o >= count) {
            break;
        }
        if began.elapsed() > Duration::from_secs(120) {
            stop(child)?;
            bail!(
                "the sink did not commit {count} records in two minutes:\n{}",
                log_tail(dir.path())
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(child)?;
    let report = dir.path().join("report").join("hole-0.json");
    let sink: SinkReport = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )?;
    if sink.records != count {
        bail!("the sink saw {} of the {count} lines", sink.records);
    }
    Ok(sink)
}

/// The CPU time of process `pid` so far (user and system).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').context("no command in /proc stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks()? as f64,
    ))
}

/// Clock ticks a second, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> anyhow::Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// What `instances` `socket-source` instances cost the host while each is
/// blocked in a read from a peer that says nothing: the host's CPU over
/// `seconds`, as a percentage of one core.
pub fn idle_cpu(
    bin: &Path,
    work: &Path,
    cache: &Path,
    instances: u32,
    seconds: u64,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let manifest = socket_source("idle", "idle", port, &format!("parallelism = {instances}"));
    let child = start(bin, cache, dir.path(), &manifest)?;
    // Every instance connects; the peer holds the connections and is quiet.
    let mut held = Vec::new();
    l.set_nonblocking(true)?;
    let began = Instant::now();
    while held.len() < instances as usize {
        match l.accept() {
            Ok((s, _)) => held.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if began.elapsed() > Duration::from_secs(60) {
                    stop(child)?;
                    bail!(
                        "{} of {instances} instances connected:\n{}",
                        held.len(),
                        log_tail(dir.path())
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Let start-up settle, then measure.
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_time(child.id())?;
    std::thread::sleep(Duration::from_secs(seconds));
    let used = cpu_time(child.id())? - before;
    stop(child)?;
    Ok(used.as_secs_f64() / seconds as f64 * 100.0)
}

/// A receiver on a port of 127.0.0.1: reads lines from one connection
/// until `count` have come; says how many and over what span (first line
/// to last).
fn receiver(count: u64) -> anyhow::Result<(u16, std::thread::JoinHandle<(u64, Duration)>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let receiving = std::thread::spawn(move || {
        let Ok((s, _)) = l.accept() else {
            return (0, Duration::ZERO);
        };
        let mut r = BufReader::with_capacity(64 * 1024, s);
        let (mut n, mut line, mut first) = (0u64, Vec::new(), None);
        while n < count {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    first.get_or_insert_with(Instant::now);
                    n += 1;
                }
            }
        }
        (n, first.map_or(Duration::ZERO, |f| f.elapsed()))
    });
    Ok((port, receiving))
}

/// What a [`receiver`] took: records/s from its first line to its last,
/// if it took all `count`.
fn received(
    receiving: std::thread::JoinHandle<(u64, Duration)>,
    count: u64,
) -> anyhow::Result<f64> {
    let (n, span) = receiving
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver panicked"))?;
    if n != count {
        bail!("the receiver got {n} of {count} lines");
    }
    Ok(n as f64 / span.as_secs_f64())
}

/// A plain `BufWriter` writing `count` lines of `payload` bytes to a
/// receiver: records/s at the receiver.
pub fn write_natively(count: u64, payload: usize) -> anyhow::Result<f64> {
    let (port, receiving) = receiver(count)?;
    let mut w =
        std::io::BufWriter::with_capacity(64 * 1024, TcpStream::connect(("127.0.0.1", port))?);
    let line = format!("{}\n", "x".repeat(payload));
    for _ in 0..count {
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    received(receiving, count)
}

/// `datagen` (`count` records of `payload` bytes) → log → `socket-sink` to
/// a receiver: records/s at the receiver.
pub fn sink_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: u32,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let (port, receiving) = receiver(count)?;
    let manifest = crate::files::datagen_into(
        count,
        payload,
        &format!(
            r#"[[connector]]
name = "sock"
kind = "sink"
plugin = "socket-sink"
topic = "bench"
[connector.config]
addr = "127.0.0.1:{port}"
[connector.grants]
net = ["127.0.0.1:{port}"]
"#
        ),
    );
    crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    received(receiving, count)
}
