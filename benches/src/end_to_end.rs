//! The real product end to end: the `sluice` binary runs `datagen` →
//! embedded log → `blackhole`, and `blackhole`'s report says what arrived
//! and when. Also the disk's own limit, which `fsync = "always"` is held
//! against, and the time from `sluice run` to the first record.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use blackhole::Report as SinkReport;
use sluice_batch::BatchWriter;

/// Records per source batch in every run (and in the disk baseline).
pub const BATCH_RECORDS: u32 = 1000;

/// The `sluice` binary beside this one.
pub fn sluice_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("sluice");
    if !bin.exists() {
        bail!(
            "{} is missing; build it first with `cargo build --release -p sluice` (`just bench` does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// One end-to-end run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Value size.
    pub payload: u32,
    /// Records to generate.
    pub count: u64,
    /// Records per second, 0 for as fast as possible.
    pub rate: u64,
    /// `"interval"` or `"always"`.
    pub fsync: &'static str,
    /// Stamp records for latency.
    pub stamp: bool,
    /// Have the sink write its report (what [`run`] reads).
    pub report: bool,
    /// Route the records over this many topics (`bench.{shard}`), 0 for
    /// one topic.
    pub shards: u32,
    /// Where a `filter` that keeps every record runs, if anywhere.
    pub filter: Filter,
}

/// Where a run's `filter` (keeping every record: `exists` on `/seq`) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Nowhere.
    None,
    /// In the source's chain.
    Chain,
    /// As a transform connector between the source's topic and the sink's.
    Connector,
    /// Not a filter: a `timestamp` step in the source's chain, setting each
    /// record's time from its `seq` (one JSON field read, the record copied
    /// with a new timestamp), the cost of the field transforms.
    Timestamp,
}

impl Run {
    /// The run's manifest: `gen` → topic `bench` → `hole`.
    pub fn manifest(&self) -> String {
        let report = if self.report {
            "\n[connector.config]\nreport_dir = \"/report\"\n\n[connector.grants]\n\
             files = [{ host = \"report\", guest = \"/report\", mode = \"read-write\" }]\n"
        } else {
            ""
        };
        let (source_topic, sink_topics) = if self.shards == 0 {
            let read = if self.filter == Filter::Connector {
                "kept"
            } else {
                "bench"
            };
            ("bench".to_owned(), format!("topic = \"{read}\""))
        } else {
            let topics: Vec<String> = (0..self.shards).map(|i| format!("\"bench.{i}\"")).collect();
            (
                "bench.{shard}".to_owned(),
                format!("topics = [{}]", topics.join(", ")),
            )
        };
        format!(
            r#"[broker]
kind = "embedded"
data_dir = "data"
fsync = "{fsync}"

{filter_table}
[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "{source_topic}"{chain}

[connector.batch]
max_records = {batch}
max_bytes = 16777216

[connector.config]
count = {count}
rate = {rate}
payload_bytes = {payload}
stamp = {stamp}
shards = {shards}

{filter_connector}
[[connector]]
name = "hole"
kind = "sink"
plugin = "blackhole"
{sink_topics}
{report}"#,
            filter_table = match self.filter {
                Filter::Chain => {
                    "[[transform]]\nname = \"keep\"\nplugin = \"filter\"\n[transform.config]\n\
                     field = \"/seq\"\nexists = true\n"
                }
                Filter::Timestamp => {
                    "[[transform]]\nname = \"keep\"\nplugin = \"timestamp\"\n[transform.config]\n\
                     field = \"/seq\"\n"
                }
                Filter::None | Filter::Connector => "",
            },
            chain = if matches!(self.filter, Filter::Chain | Filter::Timestamp) {
                "\ntransforms = [\"keep\"]"
            } else {
                ""
            },
            filter_connector = if self.filter == Filter::Connector {
                "[[connector]]\nname = \"keep\"\nkind = \"transform\"\nplugin = \"filter\"\n\
                 topic = \"bench\"\noutput = \"kept\"\n[connector.batch]\nmax_records = 1000\n\
                 [connector.config]\nfield = \"/seq\"\nexists = true\n"
            } else {
                ""
            },
            fsync = self.fsync,
            batch = BATCH_RECORDS,
            count = self.count,
            rate = self.rate,
            payload = self.payload,
            stamp = self.stamp,
            shards = self.shards,
            report = report,
        )
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The sink's own report.
    pub sink: SinkReport,
    /// Wall clock (µs since the Unix epoch) just before `sluice` was started.
    pub spawned_us: u64,
}

impl Outcome {
    /// From the first record's arrival at the sink to the last one's.
    pub fn span(&self) -> Duration {
        let (Some(first), Some(last)) = (self.sink.first_us, self.sink.last_us) else {
            return Duration::ZERO;
        };
        Duration::from_micros(last.saturating_sub(first))
    }

    /// From `sluice run` to the first record at the sink.
    pub fn to_first_record(&self) -> Duration {
        Duration::from_micros(
            self.sink
                .first_us
                .unwrap_or(0)
                .saturating_sub(self.spawned_us),
        )
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Runs `run` to its end in a fresh folder under `work`, with the compile
/// cache in `cache`, and reads the sink's report.
pub fn run(bin: &Path, work: &Path, cache: &Path, run: &Run) -> anyhow::Result<Outcome> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::create_dir(dir.path().join("report"))?;
    let manifest = dir.path().join("sluice.toml");
    std::fs::write(&manifest, run.manifest())?;
    let spawned_us = now_us();
    let out = Command::new(bin)
        .args(["--cache-dir"])
        .arg(cache)
        .args(["run", "--no-progress"])
        .arg(&manifest)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
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
    let report = dir.path().join("report").join("hole-0.json");
    let sink: SinkReport = serde_json::from_slice(
        &std::fs::read(&report).with_context(|| format!("reading {}", report.display()))?,
    )?;
    if sink.records != run.count {
        bail!(
            "the sink saw {} records of the {} generated",
            sink.records,
            run.count
        );
    }
    Ok(Outcome { sink, spawned_us })
}

/// Bytes of one batch of [`BATCH_RECORDS`] unstamped `payload`-byte records,
/// as the log appends them.
pub fn batch_bytes(payload: u32) -> u64 {
    let value = vec![b'x'; payload as usize];
    let mut batch = BatchWriter::new();
    for _ in 0..BATCH_RECORDS {
        batch.push_value(&value);
    }
    batch.encoded_len() as u64
}

/// The disk's group-commit limit: batches of `bytes` appended to a plain
/// file in `dir`, each followed by `fdatasync` (as the log does under
/// `always`), for about `budget`. Returns batches per second.
pub fn fsyncs_per_second(dir: &Path, bytes: u64, budget: Duration) -> anyhow::Result<f64> {
    let path = dir.join("fsync-baseline.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let buf = vec![0x5a; bytes as usize];
    let started = Instant::now();
    let mut batches = 0u64;
    while started.elapsed() < budget {
        file.write_all(&buf)?;
        file.sync_data()?;
        batches += 1;
    }
    let rate = batches as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}
