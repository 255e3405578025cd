//! `blackhole`: a sink that counts and discards, like Flink's `DiscardingSink`.
//!
//! It measures what reached it: records, value bytes, when the first and the
//! last record arrived, and, for records that carry datagen's `sent-us`
//! header (datagen's `stamp = true`), the end-to-end latency from the moment
//! the record was made. With `report_dir` set (and a read-write grant on that
//! folder) each instance writes what it saw to
//! `<report_dir>/<connector>-<index>.json` when it flushes and when it closes,
//! which is how `just bench` reads its figures.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

/// The header datagen's `stamp` writes: microseconds since the Unix epoch at
/// which the record was made, as a little-endian `u64`.
pub const SENT_HEADER: &str = "sent-us";

/// Config of the `blackhole` sink.
#[derive(Debug, Default, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder (granted read-write) to write `<connector>-<index>.json` into,
    /// with counts, timing and latency; no report when absent.
    #[serde(default)]
    pub report_dir: Option<String>,
}

/// What one instance saw, as written to its report.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Records written to the sink.
    pub records: u64,
    /// Bytes of their values.
    pub value_bytes: u64,
    /// Batches written.
    pub batches: u64,
    /// Wall clock (µs since the Unix epoch) when the first record arrived.
    pub first_us: Option<u64>,
    /// Wall clock (µs since the Unix epoch) when the last record arrived.
    pub last_us: Option<u64>,
    /// End-to-end latency of stamped records, in µs.
    pub latency: Option<Latency>,
}

/// Latency percentiles over every stamped record, in microseconds, from a
/// log-linear histogram (within about 3 %).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Stamped records seen.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// The sink's state.
#[derive(Debug)]
pub struct Blackhole {
    report_path: Option<PathBuf>,
    report: Report,
    histogram: Histogram,
    /// Reports are written at most this often on flush.
    last_written: Option<Instant>,
}

const REPORT_EVERY: Duration = Duration::from_millis(500);

impl Sink for Blackhole {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        let report_path = config
            .report_dir
            .map(|dir| PathBuf::from(dir).join(format!("{}-{}.json", ctx.connector, ctx.index)));
        let mut sink = Blackhole {
            report_path,
            report: Report::default(),
            histogram: Histogram::default(),
            last_written: None,
        };
        // Fail at open, not at the first flush, when the folder is not
        // granted: a config to fix, not a fault to retry.
        sink.write_report().map_err(|e| match e {
            Error::Retriable(m) => Error::InvalidConfig(m),
            other => other,
        })?;
        Ok(sink)
    }

    fn write(
        &mut self,
        _origin: &Origin,
        batch: Batch<'_>,
        _rejects: &mut Rejects,
    ) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let now = now_us();
        self.report.first_us.get_or_insert(now);
        self.report.last_us = Some(now);
        self.report.batches += 1;
        self.report.records += batch.len() as u64;
        self.report.value_bytes += batch.value_bytes();
        for record in batch.iter() {
            for (name, value) in record.headers() {
                if name == SENT_HEADER
                    && let Ok(sent) = <[u8; 8]>::try_from(value)
                {
                    self.histogram
                        .record(now.saturating_sub(u64::from_le_bytes(sent)));
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self
            .last_written
            .is_none_or(|t| t.elapsed() >= REPORT_EVERY)
        {
            self.write_report()?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        self.write_report()
    }
}

impl Blackhole {
    fn write_report(&mut self) -> Result<(), Error> {
        self.last_written = Some(Instant::now());
        let Some(path) = &self.report_path else {
            return Ok(());
        };
        self.report.latency = self.histogram.summary();
        let json = serde_json::to_vec_pretty(&self.report)
            .map_err(|e| Error::fatal(format!("cannot encode the report: {e}")))?;
        // Written whole, then renamed, so a reader never sees half a report.
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                Error::retriable(format!(
                    "cannot write the report {} (is its folder granted read-write?): {e}",
                    path.display()
                ))
            })
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Counts of values in log-linear buckets: exact below 64, then 32 buckets
/// per power of two.
#[derive(Debug)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 5;
const EXACT: u64 = 64;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; bucket(u64::MAX) + 1],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 6
    let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (EXACT + u64::from(exp - 6) * (1 << SUB_BITS) + sub) as usize
}

/// The largest value that falls in bucket `i`.
fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let exp = (i - EXACT) / (1 << SUB_BITS) + 6;
    let sub = (i - EXACT) % (1 << SUB_BITS);
    let low = ((1 << SUB_BITS) + sub) << (exp - u64::from(SUB_BITS));
    low + (1 << (exp - u64::from(SUB_BITS))) - 1
}

impl Histogram {
    fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    fn quantile(&self, q: f64) -> u64 {
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_high(i).min(self.max);
            }
        }
        self.max
    }

    fn summary(&self) -> Option<Latency> {
        (self.total > 0).then(|| Latency {
            count: self.total,
            p50_us: self.quantile(0.50),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: self.max,
        })
    }
}

sluice_sdk::export_sink!(Blackhole);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::BatchWriter;

    #[test]
    fn buckets_are_ordered_and_bound_their_values() {
        let mut last = 0;
        for v in (0..5000).chain([1 << 20, (1 << 20) + 12345, u64::MAX / 3]) {
            let b = bucket(v);
            assert!(b >= last || v > 5000, "bucket of {v} went back");
            last = b;
            assert!(bucket_high(b) >= v, "{v} above its bucket's top");
            // Within 1/32 of the value.
            assert!(bucket_high(b) - v <= v / 32, "{v} in too wide a bucket");
        }
        assert_eq!(bucket(u64::MAX), Histogram::default().counts.len() - 1);
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = Histogram::default();
        for v in 1..=1000 {
            h.record(v);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((490..=515).contains(&s.p50_us), "{s:?}");
        assert!((985..=1000).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
    }

    #[test]
    fn counts_records_and_latency_of_stamped_ones() {
        let ctx = Context {
            connector: "bh".into(),
            index: 0,
            count: 1,
        };
        let mut sink = Blackhole::open(Config::default(), &ctx).unwrap();
        let sent = (now_us() - 1500).to_le_bytes();
        let mut w = BatchWriter::new();
        w.push_value(b"plain");
        w.push_parts(None, None, &[(SENT_HEADER, &sent)], |v| {
            v.extend_from_slice(b"stamped")
        });
        let bytes = w.finish();
        let origin = Origin {
            topic: "t".into(),
            partition: 0,
            first_offset: 0,
        };
        let mut rejects = Rejects::default();
        sink.write(&origin, Batch::parse(&bytes).unwrap(), &mut rejects)
            .unwrap();
        assert_eq!(sink.report.records, 2);
        assert_eq!(sink.report.value_bytes, 12);
        let latency = sink.histogram.summary().unwrap();
        assert_eq!(latency.count, 1);
        assert!(latency.p50_us >= 1500, "{latency:?}");
    }
}
