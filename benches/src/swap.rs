//! Live module swaps of a sink while `datagen` writes at a fixed rate: the
//! pause each swap makes in the flow (from the old instance's drain to the
//! new one taking over), as the host itself measures it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sluice::manifest::Manifest;
use sluice::pipeline;
use sluice::plugin::{PluginHost, PluginRef};

use crate::end_to_end::{Filter, Run};

/// Pauses of `swaps` swaps of the `blackhole` sink's module, with `rate`
/// records per second of `payload` bytes flowing, in a pipeline under `dir`.
pub async fn pauses(
    plugins: Arc<PluginHost>,
    dir: &Path,
    swaps: usize,
    rate: u64,
    payload: u32,
) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("sluice.toml");
    let run = Run {
        payload,
        count: 0,
        rate,
        fsync: "interval",
        stamp: false,
        // A report written at each new instance's open would sit in the pause.
        report: false,
        shards: 0,
        filter: Filter::None,
    };
    std::fs::write(&path, run.manifest())?;
    let manifest = Manifest::load(&path)?;
    let connectors = pipeline::check(&manifest, &plugins).await?;
    let running = pipeline::start(&manifest, plugins.clone(), connectors).await?;
    let sink = running
        .connectors()
        .iter()
        .find(|c| c.report().name == "hole")
        .context("the sink is running")?;
    let module = PluginRef::resolve("blackhole", dir)?;
    // Swap only once records flow.
    while sink.report().records() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pauses = Vec::with_capacity(swaps);
    for _ in 0..swaps {
        // Loaded (from the compile cache), checked and instantiated before
        // the pause; only the switch itself stops the flow.
        let new = sink.current().with_module(&plugins, &module).await?;
        let (pause, swapped) = sink.swap(Arc::new(new)).await?;
        if swapped != 1 {
            bail!("expected the sink's one instance to swap, {swapped} did");
        }
        pauses.push(pause);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let records = sink.report().records();
    running.stop();
    running.wait(false).await?;
    if records == 0 {
        bail!("no record reached the sink");
    }
    Ok(pauses)
}
