//! The file connectors end to end, each beside the same work done by a
//! plain native program on the same disk in the same run:
//! - `file-source` → embedded log → `blackhole`, against reading the same
//!   files line by line with a `BufReader`;
//! - `datagen` → embedded log → `file-sink`, against writing the same lines
//!   with a `BufWriter` and syncing the file once at the end.

use std::fs::File;
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use blackhole::Report as SinkReport;

/// Files the source reads, and lines in each.
const FILES: u64 = 4;
const LINES_PER_FILE: u64 = 500_000;

/// Writes the source's input: [`FILES`] files of [`LINES_PER_FILE`] lines
/// of `payload` bytes (newline included) under `dir`.
pub fn write_input(dir: &Path, payload: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut line = vec![b'x'; payload.saturating_sub(1)];
    line.push(b'\n');
    for f in 0..FILES {
        let mut out = BufWriter::new(File::create(dir.join(format!("input-{f}.txt")))?);
        for _ in 0..LINES_PER_FILE {
            out.write_all(&line)?;
        }
        out.flush()?;
    }
    Ok(())
}

/// The native limit of the source: reads every line of the files in `dir`
/// with a `BufReader`, as a plain program would. Returns (lines, bytes,
/// elapsed).
pub fn read_natively(dir: &Path) -> anyhow::Result<(u64, u64, Duration)> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let started = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut line = Vec::with_capacity(2048);
    for name in names {
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&name)?);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            lines += 1;
            // Values without their newline, as file-source emits them.
            bytes += (n - 1) as u64;
        }
    }
    Ok((lines, bytes, started.elapsed()))
}

/// The native limit of the sink: writes `count` lines of `payload` bytes
/// with a `BufWriter` and syncs the file once. Returns the elapsed time.
pub fn write_natively(dir: &Path, count: u64, payload: usize) -> anyhow::Result<Duration> {
    let path = dir.join("native-sink.txt");
    let value = vec![b'x'; payload];
    let started = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&path)?);
    for _ in 0..count {
        out.write_all(&value)?;
        out.write_all(b"\n")?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(elapsed)
}

/// Runs `manifest` in `dir` with `sluice run` to its end; returns its
/// standard output (the summary).
pub fn sluice_run(bin: &Path, cache: &Path, dir: &Path, manifest: &str) -> anyhow::Result<String> {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, manifest)?;
    let out = Command::new(bin)
        .arg("--cache-dir")
        .arg(cache)
        .args(["run", "--no-progress"])
        .arg(&path)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "sluice run exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `file-source` reading `input` → log → `blackhole`: what the sink's
/// report says arrived, and from its first record to its last.
pub fn source_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    input: &Path,
) -> anyhow::Result<SinkReport> {
    let source = format!(
        r#"[[connector]]
name = "files"
kind = "source"
plugin = "file-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
path = "/in"
[connector.grants]
files = [{{ host = {input:?}, guest = "/in", mode = "read-only" }}]
"#
    );
    into_blackhole(bin, work, cache, &source, FILES * LINES_PER_FILE)
}

/// `source` (a connector writing the topic `bench`) → log → `blackhole`,
/// which must see `count` records: what its report says arrived, and from
/// its first record to its last.
pub fn into_blackhole(
    bin: &Path,
    work: &Path,
    cache: &Path,
    source: &str,
    count: u64,
) -> anyhow::Result<SinkReport> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::create_dir(dir.path().join("report"))?;
    let manifest = format!(
        r#"[broker]
data_dir = "data"

{source}
[[connector]]
name = "hole"
kind = "sink"
plugin = "blackhole"
topic = "bench"
[connector.config]
report_dir = "/report"
[connector.grants]
files = [{{ host = "report", guest = "/report", mode = "read-write" }}]
"#
    );
    sluice_run(bin, cache, dir.path(), &manifest)?;
    let report = dir.path().join("report").join("hole-0.json");
    let sink: SinkReport = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )?;
    if sink.records != count {
        bail!("the sink saw {} of the {count} records", sink.records);
    }
    Ok(sink)
}

/// `datagen` (`count` records of `payload` bytes) → log → `file-sink`:
/// the sink's records per second, from its start to its last flush, as the
/// run's summary says.
pub fn sink_run(
    bin: &Path,
    work: &Path,
    cache: &Path,
    count: u64,
    payload: u32,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let manifest = datagen_into(
        count,
        payload,
        r#"[[connector]]
name = "files"
kind = "sink"
plugin = "file-sink"
topic = "bench"
[connector.config]
path = "/out"
max_file_bytes = 1073741824
[connector.grants]
files = [{ host = "out", guest = "/out", mode = "read-write" }]
"#,
    );
    let summary = sluice_run(bin, cache, dir.path(), &manifest)?;
    summary_rate(&summary, "files")
}

/// A manifest of `datagen` writing `count` records of `payload` bytes into
/// topic `bench`, followed by `sink` (a `[[connector]]` table reading it).
pub fn datagen_into(count: u64, payload: u32, sink: &str) -> String {
    datagen_on("[broker]\ndata_dir = \"data\"\n", count, payload, sink)
}

/// [`datagen_into`] on the broker of `broker` (a `[broker]` table).
pub fn datagen_on(broker: &str, count: u64, payload: u32, sink: &str) -> String {
    format!(
        r#"{broker}
[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
count = {count}
payload_bytes = {payload}

{sink}"#
    )
}

/// The records/s column of `connector`'s row in a `sluice run` summary:
/// `files sink 1,000,000 95.4 MiB 0.90s 1,108,849 110.9 0 finished`.
pub fn summary_rate(summary: &str, connector: &str) -> anyhow::Result<f64> {
    let row = summary
        .lines()
        .find(|l| l.split_whitespace().next() == Some(connector))
        .with_context(|| format!("no row for {connector} in the summary:\n{summary}"))?;
    let cells: Vec<&str> = row.split_whitespace().collect();
    let elapsed = cells
        .iter()
        .position(|c| c.ends_with('s') && c[..c.len() - 1].parse::<f64>().is_ok())
        .with_context(|| format!("no elapsed time in {row:?}"))?;
    let rate = cells
        .get(elapsed + 1)
        .with_context(|| format!("no records/s in {row:?}"))?;
    Ok(rate.replace(',', "").parse()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_sink_rate_is_read_from_its_summary_row() {
        let summary = "connector  kind  records  bytes  elapsed  records/s  MB/s  lag  outcome\n\
                       gen  source  1,000,000  95.4 MiB  0.61s  1,636,869  163.7  -  finished\n\
                       files  sink  1,000,000  95.4 MiB  0.90s  1,108,849  110.9  0  finished\n";
        assert_eq!(summary_rate(summary, "files").unwrap(), 1_108_849.0);
        assert!(summary_rate(summary, "nobody").is_err());
    }

    #[test]
    fn the_native_reader_counts_what_the_source_would_emit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.path().join("b.txt"), "three\n").unwrap();
        let (lines, bytes, _) = read_natively(dir.path()).unwrap();
        assert_eq!((lines, bytes), (3, 11));
    }
}
