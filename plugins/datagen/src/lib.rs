//! `datagen`: a source that generates records, like Flink's DataGen.
//!
//! Each record's value is one JSON object, `{"seq":N,"pad":"…"}`, where `seq`
//! counts from 0 in each instance and `pad` fills the value out to
//! `payload_bytes` with letters drawn from `seed` (a window, at a random
//! start, into a run of letters made once at `open`: one random draw per
//! record rather than one per byte). The position is the next `seq`, so a
//! restarted instance continues exactly where the broker stopped.
//!
//! With `stamp = true` each record also carries a `sent-us` header, the wall
//! clock when it was made (µs since the Unix epoch, `u64` little-endian),
//! from which the `blackhole` sink measures end-to-end latency.
//!
//! With `shards = N` each record also carries a `shard` header, `seq % N` in
//! decimal: route them with `topic = "events.{shard}"`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sluice_sdk::{BatchWriter, Context, Error, Poll, Source, position};

/// Config of the `datagen` source.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Records to generate per instance; 0 means without end.
    #[serde(default)]
    pub count: u64,
    /// Records per second per instance; 0 means as fast as possible.
    #[serde(default)]
    pub rate: u64,
    /// Size of each record's value in bytes (at least the JSON it needs).
    #[serde(default = "default_payload_bytes")]
    #[schemars(range(min = 1, max = 16777216))]
    pub payload_bytes: u32,
    /// Seed for the padding letters, so runs are reproducible.
    #[serde(default)]
    pub seed: u64,
    /// Adds a `sent-us` header with the time each record was made, for
    /// measuring end-to-end latency.
    #[serde(default)]
    pub stamp: bool,
    /// Adds a `shard` header, `seq % shards` in decimal (0: none), to
    /// route records over topics.
    #[serde(default)]
    pub shards: u32,
}

/// The header `stamp` adds.
pub const SENT_HEADER: &str = "sent-us";

/// The header `shards` adds.
pub const SHARD_HEADER: &str = "shard";

/// How far the padding window's start moves between records.
const PAD_SPREAD: usize = 256;

fn default_payload_bytes() -> u32 {
    100
}

/// The generator's state.
#[derive(Debug)]
pub struct Datagen {
    next: u64,
    count: u64,
    rate: u64,
    payload_bytes: usize,
    rng: u64,
    /// `next` in decimal, counted up in place (no division per record).
    seq_text: Decimal,
    /// Letters to cut each record's padding from.
    pad: Vec<u8>,
    stamp: bool,
    /// The `shard` header's values, `"0"` to `"<shards - 1>"`.
    shard_names: Vec<String>,
    /// Start of rate accounting and how many records were due by then.
    started: Instant,
    emitted_since_start: u64,
}

impl Source for Datagen {
    type Config = Config;

    fn open(config: Config, ctx: &Context, resume_from: Option<&[u8]>) -> Result<Self, Error> {
        let next = resume_from.map_or(Ok(0), position::decode_u64)?;
        sluice_sdk::info!(
            "datagen instance {} of {} starting at seq {next}",
            ctx.index,
            ctx.count
        );
        // xorshift needs a non-zero state.
        let mut rng = config.seed ^ 0x9E37_79B9_7F4A_7C15;
        let payload_bytes = config.payload_bytes as usize;
        let pad = (0..payload_bytes + PAD_SPREAD)
            .map(|_| b'a' + (xorshift(&mut rng) % 26) as u8)
            .collect();
        Ok(Datagen {
            next,
            count: config.count,
            rate: config.rate,
            payload_bytes,
            rng,
            seq_text: Decimal::new(next),
            pad,
            stamp: config.stamp,
            shard_names: (0..config.shards).map(|i| i.to_string()).collect(),
            started: Instant::now(),
            emitted_since_start: 0,
        })
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        let mut budget = max_records as u64;
        if self.count > 0 {
            budget = budget.min(self.count - self.next);
        }
        if self.rate > 0 {
            let due = (self.started.elapsed().as_secs_f64() * self.rate as f64) as u64;
            budget = budget.min(due.saturating_sub(self.emitted_since_start));
        }
        let sent = self.stamp.then(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
                .to_le_bytes()
        });
        for _ in 0..budget {
            let seq = self.seq_text.as_bytes();
            let size = self.payload_bytes;
            let start = (xorshift(&mut self.rng) as usize) % PAD_SPREAD;
            let pad = &self.pad[start..];
            let shard = (!self.shard_names.is_empty()).then(|| {
                self.shard_names[(self.next % self.shard_names.len() as u64) as usize].as_bytes()
            });
            let value = |v: &mut Vec<u8>| write_value(v, seq, size, pad);
            match (&sent, shard) {
                (None, None) => out.push_value_with(value),
                (Some(sent), None) => out.push_parts(None, None, &[(SENT_HEADER, sent)], value),
                (None, Some(shard)) => out.push_parts(None, None, &[(SHARD_HEADER, shard)], value),
                (Some(sent), Some(shard)) => out.push_parts(
                    None,
                    None,
                    &[(SENT_HEADER, sent), (SHARD_HEADER, shard)],
                    value,
                ),
            }
            self.next += 1;
            self.seq_text.increment();
        }
        self.emitted_since_start += budget;
        let done = self.count > 0 && self.next >= self.count;
        Ok(Poll::at(position::encode_u64(self.next)).done_if(done))
    }
}

fn xorshift(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

/// Writes `{"seq":N,"pad":"…"}` padded to `size` bytes with letters from
/// `pad` (at least `size` of them).
fn write_value(v: &mut Vec<u8>, seq: &[u8], size: usize, pad: &[u8]) {
    v.reserve(size.max(32));
    let start = v.len();
    v.extend_from_slice(b"{\"seq\":");
    v.extend_from_slice(seq);
    const PAD_OPEN: &[u8] = b",\"pad\":\"";
    // The padding field needs 10 bytes around its letters: `,"pad":"` and `"}`.
    let used = v.len() - start;
    if size >= used + PAD_OPEN.len() + 2 {
        v.extend_from_slice(PAD_OPEN);
        let letters = size - used - PAD_OPEN.len() - 2;
        v.extend_from_slice(&pad[..letters]);
        v.push(b'"');
    }
    v.push(b'}');
}

/// A number in decimal that counts up by one without dividing: a `u64`
/// needs at most 20 digits.
#[derive(Debug)]
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        let mut digits = [b'0'; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Decimal { digits, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }

    fn increment(&mut self) {
        for i in (0..self.digits.len()).rev() {
            if self.digits[i] != b'9' {
                self.digits[i] += 1;
                self.start = self.start.min(i);
                return;
            }
            self.digits[i] = b'0';
        }
        // Past u64::MAX: wraps to 0 as the counter itself would.
        self.start = self.digits.len() - 1;
    }
}

sluice_sdk::export_source!(Datagen);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::Batch;

    fn open(count: u64, payload_bytes: u32, resume: Option<u64>) -> Datagen {
        let config = Config {
            count,
            rate: 0,
            payload_bytes,
            seed: 7,
            stamp: false,
            shards: 0,
        };
        let ctx = Context {
            connector: "gen".into(),
            index: 0,
            count: 1,
        };
        let resume = resume.map(position::encode_u64);
        Datagen::open(config, &ctx, resume.as_deref()).unwrap()
    }

    #[test]
    fn values_are_json_padded_to_size_and_count_up() {
        let mut g = open(5, 100, None);
        let mut out = BatchWriter::new();
        let poll = g.poll(&mut out, 3).unwrap();
        assert!(!poll.end_of_stream);
        let bytes = out.finish();
        let batch = Batch::parse(&bytes).unwrap();
        for (i, r) in batch.iter().enumerate() {
            assert_eq!(r.value.len(), 100);
            let text = std::str::from_utf8(r.value).unwrap();
            assert!(
                text.starts_with(&format!("{{\"seq\":{i},\"pad\":\"")),
                "{text}"
            );
            assert!(text.ends_with("\"}"));
        }
        let mut out = BatchWriter::new();
        let poll = g.poll(&mut out, 10).unwrap();
        assert_eq!(out.len(), 2);
        assert!(poll.end_of_stream);
        assert_eq!(poll.position, Some(position::encode_u64(5)));
    }

    #[test]
    fn resumes_after_the_stored_position() {
        let mut g = open(10, 1, Some(8));
        let mut out = BatchWriter::new();
        g.poll(&mut out, 100).unwrap();
        let bytes = out.finish();
        let values: Vec<&[u8]> = Batch::parse(&bytes)
            .unwrap()
            .iter()
            .map(|r| r.value)
            .collect();
        // payload_bytes smaller than the JSON needs: the bare object.
        assert_eq!(values, [&b"{\"seq\":8}"[..], b"{\"seq\":9}"]);
    }

    #[test]
    fn decimals_count_up_in_place() {
        for start in [0, 7, 9, 99, 12345, 999_999, u64::MAX - 3] {
            let mut d = Decimal::new(start);
            for n in start..start.saturating_add(3) {
                assert_eq!(d.as_bytes(), n.to_string().as_bytes());
                d.increment();
            }
        }
    }

    #[test]
    fn stamp_adds_the_time_a_record_was_made() {
        let ctx = Context {
            connector: "gen".into(),
            index: 0,
            count: 1,
        };
        let config = Config {
            count: 3,
            rate: 0,
            payload_bytes: 50,
            seed: 1,
            stamp: true,
            shards: 0,
        };
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let mut g = Datagen::open(config, &ctx, None).unwrap();
        let mut out = BatchWriter::new();
        g.poll(&mut out, 3).unwrap();
        let bytes = out.finish();
        for r in Batch::parse(&bytes).unwrap().iter() {
            assert_eq!(r.value.len(), 50);
            let headers: Vec<_> = r.headers().collect();
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].0, SENT_HEADER);
            let sent = u64::from_le_bytes(headers[0].1.try_into().unwrap());
            assert!(sent >= before, "{sent} < {before}");
        }
    }
}
