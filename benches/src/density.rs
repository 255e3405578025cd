//! Many idle instances in one host: what each costs to start and to keep.

use std::time::{Duration, Instant};

use sluice::plugin::{InstanceSetup, PluginHost, PluginRef, SinkInstance};

/// What starting `count` idle instances cost.
#[derive(Debug, Clone, Copy)]
pub struct Density {
    /// Summed time in instantiation (store, sandbox, component instance).
    pub instantiate: Duration,
    /// Summed time in their `open` calls.
    pub open: Duration,
    /// Growth of the process's resident memory while they were held, MiB.
    pub rss_mib: f64,
}

/// Resident memory of this process, MiB.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts `count` `blackhole` sink instances, each in its own store with
/// nothing granted, opens each, and holds them all while measuring.
pub async fn start_idle(plugins: &PluginHost, count: usize) -> anyhow::Result<Density> {
    let plugin = plugins.load(&PluginRef::resolve("blackhole", ".".as_ref())?)?;
    let before = rss_mib();
    let mut held: Vec<SinkInstance> = Vec::with_capacity(count);
    let (mut instantiate, mut open) = (Duration::ZERO, Duration::ZERO);
    for index in 0..count {
        let mut setup = InstanceSetup::isolated("idle");
        setup.index = index as u32;
        setup.count = count as u32;
        let started = Instant::now();
        let mut instance = plugins.sink(&plugin, &setup).await?;
        let instantiated = Instant::now();
        instance.open("{}").await?;
        instantiate += instantiated - started;
        open += instantiated.elapsed();
        held.push(instance);
    }
    let rss = rss_mib() - before;
    for mut instance in held {
        instance.close().await?;
    }
    Ok(Density {
        instantiate,
        open,
        rss_mib: rss,
    })
}
