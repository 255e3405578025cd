//! The component boundary alone: `datagen` → host → `blackhole`, in memory,
//! no broker, on one thread, against the same two plugins compiled into
//! this binary as plain Rust (the native baseline).
//!
//! Both sides do the same work per batch: the source's SDK glue encodes the
//! batch, the host checks it as it checks every batch a plugin returns
//! (`Batch::parse`, the record count, the value bytes), and the sink's SDK
//! glue parses it again before `blackhole` counts it. The wasm side adds
//! exactly what the boundary costs: two copies of the batch (out of the
//! source's memory, into the sink's), the calls themselves, and the CPU
//! deadline armed before each call.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sluice::plugin::{InstanceSetup, PluginHost, PluginRef};
use sluice_batch::Batch;
use sluice_sdk::__private as glue;

/// One configuration of the boundary bench.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// Size of each record's value.
    pub payload: u32,
    /// Records asked for per poll (and so per write).
    pub batch: u32,
}

/// What one timed run moved.
#[derive(Debug, Clone, Copy, Default)]
pub struct Moved {
    /// Records through the sink.
    pub records: u64,
    /// Bytes of their values.
    pub value_bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl Moved {
    fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The run of median rate (a run of nothing when there is none).
    pub fn median(mut runs: Vec<Moved>) -> Moved {
        runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        runs.get(runs.len() / 2).copied().unwrap_or(Moved {
            elapsed: Duration::from_secs(1),
            ..Moved::default()
        })
    }
}

fn datagen_config(payload: u32) -> String {
    format!(r#"{{"count":0,"rate":0,"payload_bytes":{payload},"seed":1}}"#)
}

/// How many batches between looks at the clock, so that reading it costs
/// nothing next to the work even at batch size 1.
fn check_every(batch: u32) -> u64 {
    (4096 / u64::from(batch.max(1))).max(1)
}

/// The wasm pipeline: both plugins as components in the real host.
pub async fn wasm(plugins: &PluginHost, case: Case, budget: Duration) -> anyhow::Result<Moved> {
    let source = plugins.load(&PluginRef::resolve("datagen", ".".as_ref())?)?;
    let sink = plugins.load(&PluginRef::resolve("blackhole", ".".as_ref())?)?;
    let mut source = plugins
        .source(&source, &InstanceSetup::isolated("bench-source"))
        .await?;
    let mut sink = plugins
        .sink(&sink, &InstanceSetup::isolated("bench-sink"))
        .await?;
    source.open(&datagen_config(case.payload), None).await?;
    sink.open("{}").await?;
    let mut step = async || -> anyhow::Result<(u64, u64)> {
        let polled = source.poll(case.batch).await?;
        sink.write("bench", 0, 0, &polled.batch, polled.records)
            .await?;
        Ok((u64::from(polled.records), polled.value_bytes))
    };
    // Warm up: first calls grow memories and fill caches.
    let warm = Instant::now();
    while warm.elapsed() < budget / 5 {
        step().await?;
    }
    let mut moved = Moved::default();
    let every = check_every(case.batch);
    let started = Instant::now();
    'run: loop {
        for _ in 0..every {
            let (records, bytes) = step().await?;
            moved.records += records;
            moved.value_bytes += bytes;
        }
        if started.elapsed() >= budget {
            break 'run;
        }
    }
    moved.elapsed = started.elapsed();
    source.close().await?;
    sink.close().await?;
    Ok(moved)
}

/// The native baseline: the same plugin crates, called through the same SDK
/// glue the export macros generate, with the host's check in between.
pub fn native(case: Case, budget: Duration) -> anyhow::Result<Moved> {
    let ctx = sluice_sdk::Context {
        connector: "bench".into(),
        index: 0,
        count: 1,
    };
    let source = RefCell::new(None::<datagen::Datagen>);
    let sink = RefCell::new(None::<blackhole::Blackhole>);
    glue::source_open(&source, &datagen_config(case.payload), &ctx, None)
        .map_err(anyhow::Error::msg)?;
    glue::sink_open(&sink, "{}", &ctx).map_err(anyhow::Error::msg)?;
    let origin = sluice_sdk::Origin {
        topic: "bench".into(),
        partition: 0,
        first_offset: 0,
    };
    let step = || -> anyhow::Result<(u64, u64)> {
        let polled = glue::source_poll(&source, case.batch).map_err(anyhow::Error::msg)?;
        // What the host checks of every polled batch.
        let batch = Batch::parse(&polled.batch).context("datagen returned a malformed batch")?;
        let (records, bytes) = (batch.len() as u64, batch.value_bytes());
        glue::sink_write(&sink, &origin, &polled.batch).map_err(anyhow::Error::msg)?;
        Ok((records, bytes))
    };
    let warm = Instant::now();
    while warm.elapsed() < budget / 5 {
        step()?;
    }
    let mut moved = Moved::default();
    let every = check_every(case.batch);
    let started = Instant::now();
    loop {
        for _ in 0..every {
            let (records, bytes) = std::hint::black_box(step()?);
            moved.records += records;
            moved.value_bytes += bytes;
        }
        if started.elapsed() >= budget {
            break;
        }
    }
    moved.elapsed = started.elapsed();
    glue::sink_close(&sink).map_err(anyhow::Error::msg)?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice::plugin::CompileCache;

    /// The baseline is only a baseline if it does the same work: both sides
    /// produce the same batch bytes for the same config.
    #[tokio::test(flavor = "current_thread")]
    async fn native_and_wasm_datagen_make_the_same_batches() {
        let plugins = PluginHost::new(CompileCache::new(None)).unwrap();
        let plugin = plugins
            .load(&PluginRef::resolve("datagen", ".".as_ref()).unwrap())
            .unwrap();
        let mut wasm = plugins
            .source(&plugin, &InstanceSetup::isolated("bench"))
            .await
            .unwrap();
        wasm.open(&datagen_config(100), None).await.unwrap();
        let ctx = sluice_sdk::Context {
            connector: "bench".into(),
            index: 0,
            count: 1,
        };
        let native = RefCell::new(None::<datagen::Datagen>);
        glue::source_open(&native, &datagen_config(100), &ctx, None).unwrap();
        for batch in [1, 64, 1024] {
            let w = wasm.poll(batch).await.unwrap();
            let n = glue::source_poll(&native, batch).unwrap();
            assert_eq!(w.records, batch);
            assert_eq!(w.batch, n.batch, "batch of {batch} differs");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn both_sides_move_records() {
        let plugins = PluginHost::new(CompileCache::new(None)).unwrap();
        let case = Case {
            payload: 100,
            batch: 64,
        };
        let budget = Duration::from_millis(50);
        let w = wasm(&plugins, case, budget).await.unwrap();
        let n = native(case, budget).unwrap();
        for moved in [w, n] {
            assert!(moved.records > 0 && moved.records % 64 == 0, "{moved:?}");
            assert_eq!(moved.value_bytes, moved.records * 100);
        }
    }
}
