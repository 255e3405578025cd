//! `just bench`: every figure of issue #6 in one run on this machine, each
//! printed beside its target and the machine's own limits. A measurement,
//! never a test: nothing here passes or fails on a timing.
//!
//! Writes `results.md` (the tables for BENCHMARKS.md), `results.json` and
//! `throughput.png` (records/s against batch and record size) into `--out`.

mod boundary;
mod density;
mod end_to_end;
mod enrich;
mod files;
mod http;
mod kafka;
mod machine;
mod mariadb;
mod mqtt;
mod nats;
mod network;
mod plot;
mod postgres;
mod rabbitmq;
mod redis;
mod report;
mod stomp;
mod swap;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use sluice::plugin::{CompileCache, PluginHost};

use crate::end_to_end::{Filter, Run};
use crate::plot::Point;
use crate::report::{Figure, Report, Target, quantile, rates, say};

#[derive(Debug, Parser)]
#[command(about = "Sluice's benchmarks: figures beside their targets")]
struct Args {
    /// Sections to run (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Seconds each boundary case runs (after a fifth as long warming up).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Runs of each boundary case and end-to-end throughput figure; the
    /// median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Boundary, kafka and nats: only this record size (for profiling one case).
    #[arg(long)]
    payload: Option<u32>,
    /// Boundary: only this batch size (for profiling one case).
    #[arg(long)]
    batch: Option<u32>,
    /// Boundary: skip the native baseline (for profiling the wasm side).
    #[arg(long)]
    wasm_only: bool,
    /// Also write the figures into BENCHMARKS.md and the plot into
    /// docs/benchmarks/.
    #[arg(long)]
    publish: bool,
    /// Where results, the plot and the bench's data go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Boundary,
    EndToEnd,
    Startup,
    Density,
    Swap,
    Files,
    Network,
    Postgres,
    Mariadb,
    Redis,
    Mqtt,
    Stomp,
    Rabbitmq,
    Kafka,
    Nats,
    Enrich,
}

const PAYLOADS: [u32; 2] = [100, 1024];
const BATCHES: [u32; 3] = [1, 64, 1024];

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wants = |s| args.only.is_empty() || args.only.contains(&s);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let work = tempfile::tempdir_in(&args.out)?;
    let machine = machine::Machine::describe(work.path());
    say(format!("machine: {}", machine.summary()));
    let memcpy = machine::memcpy_gbps(Duration::from_millis(500));
    say(format!(
        "limits:  one core copies memory at {memcpy:.1} GB/s; a batch crosses the boundary as two copies"
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let plugins = Arc::new(PluginHost::new(CompileCache::new(Some(
        work.path().join("cache"),
    )))?);
    let mut report = Report::default();
    let mut points = Vec::new();
    let budget = Duration::from_secs_f64(args.seconds);

    if wants(Section::Boundary) {
        say("\nboundary: datagen -> host -> blackhole in memory, one thread, no broker");
        for payload in PAYLOADS
            .into_iter()
            .filter(|p| args.payload.is_none_or(|x| x == *p))
        {
            for batch in BATCHES
                .into_iter()
                .filter(|b| args.batch.is_none_or(|x| x == *b))
            {
                let case = boundary::Case { payload, batch };
                // Alternating sides, so that a passing disturbance of the
                // machine does not fall on one side only; the median run of each.
                let (mut wasm, mut native) = (Vec::new(), Vec::new());
                for _ in 0..args.runs {
                    wasm.push(runtime.block_on(boundary::wasm(&plugins, case, budget))?);
                    if !args.wasm_only {
                        native.push(boundary::native(case, budget)?);
                    }
                }
                let wasm = boundary::Moved::median(wasm);
                let native = boundary::Moved::median(native);
                let (w, w_mb) = rates(wasm.records, wasm.value_bytes, wasm.elapsed);
                let (n, n_mb) = rates(native.records, native.value_bytes, native.elapsed);
                points.push(Point {
                    wasm: true,
                    payload,
                    batch,
                    rate: w,
                });
                points.push(Point {
                    wasm: false,
                    payload,
                    batch,
                    rate: n,
                });
                let headline = payload == 100 && batch == 1024;
                report.add(
                    Figure::new(
                        "boundary",
                        format!("wasm   {payload} B, batch {batch}"),
                        w,
                        "rec/s",
                    )
                    .aside(format!("{w_mb:.0} MB/s"))
                    .target(headline.then(|| Target::at_least(20e6))),
                );
                report.add(
                    Figure::new(
                        "boundary",
                        format!("native {payload} B, batch {batch}"),
                        n,
                        "rec/s",
                    )
                    .aside(format!("{n_mb:.0} MB/s")),
                );
                report.add(
                    Figure::new(
                        "boundary",
                        format!("wasm/native {payload} B, batch {batch}"),
                        w / n,
                        "x",
                    )
                    .target(Target::at_least(0.8)),
                );
            }
        }
    }

    if wants(Section::EndToEnd) || wants(Section::Startup) {
        let bin = end_to_end::sluice_binary()?;
        let cache = work.path().join("cache");
        if wants(Section::EndToEnd) {
            end_to_end_section(&mut report, &bin, work.path(), &cache, args.runs.max(1))?;
        }
        if wants(Section::Startup) {
            startup_section(&mut report, &bin, work.path())?;
        }
    }

    if wants(Section::Files) {
        let bin = end_to_end::sluice_binary()?;
        files_section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Network) {
        let bin = end_to_end::sluice_binary()?;
        network_section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Enrich) {
        let bin = end_to_end::sluice_binary()?;
        enrich::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Postgres) {
        let bin = end_to_end::sluice_binary()?;
        postgres::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Mariadb) {
        let bin = end_to_end::sluice_binary()?;
        mariadb::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Redis) {
        let bin = end_to_end::sluice_binary()?;
        redis::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Mqtt) {
        let bin = end_to_end::sluice_binary()?;
        mqtt::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Stomp) {
        let bin = end_to_end::sluice_binary()?;
        stomp::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Rabbitmq) {
        let bin = end_to_end::sluice_binary()?;
        rabbitmq::section(&mut report, &bin, work.path(), &work.path().join("cache"))?;
    }

    if wants(Section::Kafka) {
        let bin = end_to_end::sluice_binary()?;
        kafka::section(
            &mut report,
            &bin,
            work.path(),
            &work.path().join("cache"),
            args.payload,
        )?;
    }

    if wants(Section::Nats) {
        let bin = end_to_end::sluice_binary()?;
        nats::section(
            &mut report,
            &bin,
            work.path(),
            &work.path().join("cache"),
            args.payload,
        )?;
    }

    if wants(Section::Density) {
        say("\ndensity: idle blackhole instances held in one host (instantiate + open each)");
        for count in [1, 100, 1000] {
            let d = runtime.block_on(density::start_idle(&plugins, count))?;
            let per = d.instantiate.as_secs_f64() * 1e6 / count as f64;
            let open = d.open.as_secs_f64() * 1e6 / count as f64;
            report.add(
                Figure::new(
                    "density",
                    format!("{count} instances: instantiate, each"),
                    per,
                    "µs",
                )
                .aside(format!("open {open:.1} µs"))
                .target(Target::at_most(100.0)),
            );
            report.add(
                Figure::new(
                    "density",
                    format!("{count} instances: resident memory"),
                    d.rss_mib,
                    "MiB",
                )
                .aside(format!("{:.0} KiB each", d.rss_mib * 1024.0 / count as f64))
                .target((count == 1000).then(|| Target::at_most(1024.0))),
            );
        }
    }

    if wants(Section::Swap) {
        say("\nswap: 100 live swaps of the sink's module at 100,000 records/s of 100 B");
        let dir = tempfile::tempdir_in(work.path())?;
        let mut pauses: Vec<f64> = runtime
            .block_on(swap::pauses(plugins.clone(), dir.path(), 100, 100_000, 100))?
            .iter()
            .map(|p| p.as_secs_f64() * 1e3)
            .collect();
        pauses.sort_by(f64::total_cmp);
        report.add(Figure::new(
            "swap",
            "pause p50",
            quantile(&pauses, 0.5),
            "ms",
        ));
        report.add(
            Figure::new("swap", "pause p99", quantile(&pauses, 0.99), "ms")
                .aside(format!("max {:.2} ms", quantile(&pauses, 1.0)))
                .target(Target::at_most(5.0)),
        );
    }

    let summary = machine.summary();
    std::fs::write(args.out.join("results.md"), report.markdown(&summary))?;
    std::fs::write(
        args.out.join("results.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "machine": summary,
            "memcpy_gbps": memcpy,
            "figures": report.figures,
        }))?,
    )?;
    let png = args.out.join("throughput.png");
    match plot::throughput(&points, &png) {
        Ok(true) => say(format!("\nplot:    {}", png.display())),
        Ok(false) => {}
        Err(e) => say(format!("\nplot:    not drawn: {e:#}")),
    }
    say(format!(
        "results: {}",
        args.out.join("results.md").display()
    ));
    if args.publish {
        publish(&report.markdown(&summary), memcpy, &png)?;
    }
    Ok(())
}

/// Where BENCHMARKS.md keeps the figures of the latest published run.
const FIGURES_BEGIN: &str = "<!-- figures: written by `just bench --publish` -->";
const FIGURES_END: &str = "<!-- end of figures -->";

/// Puts this run's figures into BENCHMARKS.md (between its markers) and its
/// plot into docs/benchmarks/, so that both always come from one run.
fn publish(figures: &str, memcpy: f64, png: &std::path::Path) -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("benches/ sits in the workspace")?;
    let doc = root.join("BENCHMARKS.md");
    let text =
        std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
    let (Some(begin), Some(end)) = (text.find(FIGURES_BEGIN), text.find(FIGURES_END)) else {
        anyhow::bail!(
            "{} has no figures block: put the lines `{FIGURES_BEGIN}` and `{FIGURES_END}` where the figures go",
            doc.display()
        );
    };
    let block = format!(
        "{FIGURES_BEGIN}\n{figures}\nOne core copied memory at {memcpy:.1} GB/s during this run.\n\n"
    );
    let updated = format!("{}{block}{}", &text[..begin], &text[end..]);
    std::fs::write(&doc, updated)?;
    let plots = root.join("docs").join("benchmarks");
    std::fs::create_dir_all(&plots)?;
    if png.exists() {
        std::fs::copy(png, plots.join("throughput.png"))?;
    }
    say(format!(
        "published: {} and {}",
        doc.display(),
        plots.join("throughput.png").display()
    ));
    Ok(())
}

fn end_to_end_section(
    report: &mut Report,
    bin: &std::path::Path,
    work: &std::path::Path,
    cache: &std::path::Path,
    runs: usize,
) -> anyhow::Result<()> {
    say("\nend to end: sluice run, datagen -> embedded log -> blackhole");
    for fsync in ["interval", "always"] {
        for payload in PAYLOADS {
            let bytes = end_to_end::batch_bytes(payload);
            let disk_limit = (fsync == "always")
                .then(|| end_to_end::fsyncs_per_second(work, bytes, Duration::from_secs(2)))
                .transpose()?
                .map(|batches| batches * f64::from(end_to_end::BATCH_RECORDS));
            if let Some(limit) = disk_limit {
                let syncs = limit / f64::from(end_to_end::BATCH_RECORDS);
                report.add(
                    Figure::new(
                        "end to end",
                        format!("disk: {} KiB appends + fdatasync", bytes / 1024),
                        limit,
                        "rec/s",
                    )
                    .aside(format!("{syncs:.0} syncs/s")),
                );
            }
            // About two seconds of work at the rate last measured here.
            let count = match (fsync, payload) {
                ("interval", 100) => 4_000_000,
                ("interval", _) => 1_000_000,
                (_, 100) => 1_000_000,
                _ => 300_000,
            };
            let flat_out = |shards| Run {
                payload,
                count,
                rate: 0,
                fsync,
                stamp: false,
                report: true,
                shards,
                filter: Filter::None,
            };
            let mut throughput = Vec::new();
            for _ in 0..runs {
                let outcome = end_to_end::run(bin, work, cache, &flat_out(0))?;
                throughput.push(rates(
                    outcome.sink.records,
                    outcome.sink.value_bytes,
                    outcome.span(),
                ));
            }
            throughput.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (r, mb) = throughput[throughput.len() / 2];
            let target = match (fsync, disk_limit) {
                ("interval", _) if payload == 100 => Some(Target::at_least(5e6)),
                (_, Some(limit)) => Some(Target::at_least(0.8 * limit)),
                _ => None,
            };
            report.add(
                Figure::new(
                    "end to end",
                    format!("fsync {fsync}, {payload} B"),
                    r,
                    "rec/s",
                )
                .aside(format!("{mb:.0} MB/s"))
                .target(target),
            );
            if payload == 100 && fsync == "interval" {
                transforms_figures(report, bin, work, cache, runs, &flat_out(0), r)?;
            }
            if payload == 100 {
                // The same records routed over three topics: each batch is
                // split, written ahead to the journal, then to each topic.
                let routed = end_to_end::run(bin, work, cache, &flat_out(3))?;
                let (routed, _) =
                    rates(routed.sink.records, routed.sink.value_bytes, routed.span());
                report.add(
                    Figure::new(
                        "end to end",
                        format!("fsync {fsync}, {payload} B, routed over 3 topics"),
                        routed,
                        "rec/s",
                    )
                    .aside(format!("{:.2} of one topic", routed / r)),
                );
            }
            let rate = 100_000;
            let latency = end_to_end::run(
                bin,
                work,
                cache,
                &Run {
                    payload,
                    count: 2 * rate,
                    rate,
                    fsync,
                    stamp: true,
                    report: true,
                    shards: 0,
                    filter: Filter::None,
                },
            )?;
            let l = latency
                .sink
                .latency
                .context("blackhole measured no latency")?;
            report.add(Figure::new(
                "end to end",
                format!("fsync {fsync}, {payload} B at 100k rec/s: latency p50"),
                l.p50_us as f64 / 1e3,
                "ms",
            ));
            report.add(
                Figure::new(
                    "end to end",
                    format!("fsync {fsync}, {payload} B at 100k rec/s: latency p99"),
                    l.p99_us as f64 / 1e3,
                    "ms",
                )
                .aside(format!("max {:.1} ms", l.max_us as f64 / 1e3)),
            );
        }
    }
    Ok(())
}

/// The cost of a transform on the end-to-end figure `plain` (records/s of
/// `run` without one): a `filter` keeping every record in the source's
/// chain, and as a transform connector (a second hop through the log); and
/// a `timestamp` in the chain, for the field transforms (`key`, `route`,
/// `timestamp`: one field read, the record copied).
/// Target: a one-transform chain costs under 30 %.
fn transforms_figures(
    report: &mut Report,
    bin: &std::path::Path,
    work: &std::path::Path,
    cache: &std::path::Path,
    runs: usize,
    run: &Run,
    plain: f64,
) -> anyhow::Result<()> {
    for (filter, what) in [
        (Filter::Chain, "a filter in the source's chain"),
        (Filter::Connector, "a filter transform connector"),
        (Filter::Timestamp, "a timestamp in the source's chain"),
    ] {
        let mut throughput = Vec::new();
        for _ in 0..runs {
            let outcome = end_to_end::run(bin, work, cache, &Run { filter, ..*run })?;
            throughput.push(
                rates(
                    outcome.sink.records,
                    outcome.sink.value_bytes,
                    outcome.span(),
                )
                .0,
            );
        }
        let r = median(throughput);
        report.add(
            Figure::new(
                "end to end",
                format!("fsync {}, {} B, {what}", run.fsync, run.payload),
                r,
                "rec/s",
            )
            .aside(format!(
                "costs {:.0} % of the plain run",
                100.0 * (1.0 - r / plain)
            ))
            .target((filter == Filter::Chain).then(|| Target::at_least(0.7 * plain))),
        );
    }
    Ok(())
}

/// The file connectors, each beside a plain native reader or writer of the
/// same lines on the same disk, measured in the same run.
fn files_section(
    report: &mut Report,
    bin: &std::path::Path,
    work: &std::path::Path,
    cache: &std::path::Path,
) -> anyhow::Result<()> {
    say("\nfiles: file-source -> log -> blackhole, datagen -> log -> file-sink, 100 B lines");
    let payload = 100;
    let input = work.join("file-input");
    files::write_input(&input, payload as usize)?;

    let (lines, bytes, elapsed) = files::read_natively(&input)?;
    let (native, native_mb) = rates(lines, bytes, elapsed);
    report.add(
        Figure::new("files", "native: BufReader lines", native, "rec/s")
            .aside(format!("{native_mb:.0} MB/s")),
    );
    let sink = files::source_run(bin, work, cache, &input)?;
    let (r, mb) = arrival_rates(&sink);
    report.add(
        Figure::new("files", "file-source -> log -> blackhole", r, "rec/s")
            .aside(format!("{mb:.0} MB/s"))
            .target(Target::at_least(0.8 * native)),
    );
    std::fs::remove_dir_all(&input)?;

    let count = 2_000_000;
    let elapsed = files::write_natively(work, count, payload as usize)?;
    let (native, native_mb) = rates(count, count * payload, elapsed);
    report.add(
        Figure::new(
            "files",
            "native: BufWriter lines + one sync",
            native,
            "rec/s",
        )
        .aside(format!("{native_mb:.0} MB/s")),
    );
    let r = files::sink_run(bin, work, cache, count, payload as u32)?;
    report.add(
        Figure::new("files", "datagen -> log -> file-sink", r, "rec/s")
            .aside(format!("{:.0} MB/s", r * payload as f64 / 1e6))
            .target(Target::at_least(0.8 * native)),
    );
    Ok(())
}

/// The middle of `values` (of three runs, say: one run on this machine
/// swings by a third).
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Records/s and MB/s at a `blackhole`, from its first record's arrival to
/// its last.
pub(crate) fn arrival_rates(sink: &blackhole::Report) -> (f64, f64) {
    let span = Duration::from_micros(
        sink.last_us
            .unwrap_or(0)
            .saturating_sub(sink.first_us.unwrap_or(0)),
    );
    rates(sink.records, sink.value_bytes, span)
}

/// The network connectors, each beside a plain native client of the same
/// peer, measured in the same run; and what idle ones cost.
fn network_section(
    report: &mut Report,
    bin: &std::path::Path,
    work: &std::path::Path,
    cache: &std::path::Path,
) -> anyhow::Result<()> {
    say(
        "\nnetwork: socket-source -> log -> blackhole, datagen -> log -> socket-sink, 100 B lines over TCP on 127.0.0.1; datagen -> log -> http-sink, NDJSON batches of 1000 to a keep-alive HTTP/1.1 receiver; http-source -> log -> blackhole, a stream of Server-Sent Events; idle sources",
    );
    let payload = 100;
    let (native, native_mb) = network::read_natively(network::LINES, payload)?;
    report.add(
        Figure::new(
            "network",
            "native: BufReader lines from a socket",
            native,
            "rec/s",
        )
        .aside(format!("{native_mb:.0} MB/s")),
    );
    let sink = network::source_run(bin, work, cache, network::LINES, payload)?;
    let (r, mb) = arrival_rates(&sink);
    report.add(
        Figure::new("network", "socket-source -> log -> blackhole", r, "rec/s")
            .aside(format!("{mb:.0} MB/s"))
            .target(Target::at_least(0.8 * native)),
    );
    let native = network::write_natively(network::LINES, payload)?;
    report.add(
        Figure::new(
            "network",
            "native: BufWriter lines to a socket",
            native,
            "rec/s",
        )
        .aside(format!("{:.0} MB/s", native * payload as f64 / 1e6)),
    );
    let r = network::sink_run(bin, work, cache, network::LINES, payload as u32)?;
    report.add(
        Figure::new("network", "datagen -> log -> socket-sink", r, "rec/s")
            .aside(format!("{:.0} MB/s", r * payload as f64 / 1e6))
            .target(Target::at_least(0.8 * native)),
    );
    let native = http::post_natively(http::RECORDS, payload)?;
    report.add(
        Figure::new(
            "network",
            "native: HTTP/1.1 client posting NDJSON batches",
            native,
            "rec/s",
        )
        .aside(format!("{:.0} MB/s", native * payload as f64 / 1e6)),
    );
    let r = http::sink_run(bin, work, cache, http::RECORDS, payload as u32, 1)?;
    report.add(
        Figure::new("network", "datagen -> log -> http-sink", r, "rec/s")
            .aside(format!("{:.0} MB/s", r * payload as f64 / 1e6))
            .target(Target::at_least(0.8 * native)),
    );
    // The same requests, but a batch of four of them in flight together
    // (`max_in_flight`): what a receiver that answers in parallel allows.
    let r = http::sink_run(bin, work, cache, http::RECORDS, payload as u32, 4)?;
    report.add(
        Figure::new(
            "network",
            "datagen -> log -> http-sink, 4 requests in flight",
            r,
            "rec/s",
        )
        .aside(format!("{:.0} MB/s", r * payload as f64 / 1e6)),
    );
    let (native, native_mb) = http::read_events_natively(network::LINES, payload)?;
    report.add(
        Figure::new(
            "network",
            "native: reader of a Server-Sent Events stream",
            native,
            "rec/s",
        )
        .aside(format!("{native_mb:.0} MB/s")),
    );
    let sink = http::source_run(bin, work, cache, network::LINES, payload)?;
    let (r, mb) = arrival_rates(&sink);
    report.add(
        Figure::new(
            "network",
            "http-source (SSE) -> log -> blackhole",
            r,
            "rec/s",
        )
        .aside(format!("{mb:.0} MB/s"))
        .target(Target::at_least(0.8 * native)),
    );
    let instances = 100;
    let cpu = network::idle_cpu(bin, work, cache, instances, 5)?;
    report.add(
        Figure::new(
            "network",
            format!("{instances} idle socket-source instances: host CPU"),
            cpu,
            "% of a core",
        )
        .target(Target::at_most(1.0)),
    );
    Ok(())
}

fn startup_section(
    report: &mut Report,
    bin: &std::path::Path,
    work: &std::path::Path,
) -> anyhow::Result<()> {
    say("\nstartup: from `sluice run` to the first record at the sink");
    let small = Run {
        payload: 100,
        count: 1000,
        rate: 0,
        fsync: "interval",
        stamp: false,
        report: true,
        shards: 0,
        filter: Filter::None,
    };
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..3 {
        let cache = tempfile::tempdir_in(work)?;
        let first = end_to_end::run(bin, work, cache.path(), &small)?;
        cold.push(first.to_first_record().as_secs_f64() * 1e3);
        for _ in 0..3 {
            let again = end_to_end::run(bin, work, cache.path(), &small)?;
            warm.push(again.to_first_record().as_secs_f64() * 1e3);
        }
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    report.add(
        Figure::new(
            "startup",
            "to first record, compile cache warm (median)",
            quantile(&warm, 0.5),
            "ms",
        )
        .aside(format!("{} runs", warm.len()))
        .target(Target::at_most(100.0)),
    );
    report.add(
        Figure::new(
            "startup",
            "to first record, no cache (median)",
            quantile(&cold, 0.5),
            "ms",
        )
        .aside(format!("{} runs", cold.len())),
    );
    Ok(())
}
