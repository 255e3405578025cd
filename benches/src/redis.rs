//! `redis-sink` against a Redis the bench starts (`sluice-test-servers`:
//! its own directory and port, the append-only file synced every second),
//! beside `redis-benchmark`, the server's own tool, sending the same
//! commands with the same values in the same run, pipelined 1000 deep (as
//! a batch of 1000 goes in one `MULTI/EXEC`); and `redis-source` reading a
//! stream through a group, beside `redis-benchmark` reading it through a
//! group of its own, 1000 entries at a time.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use sluice_test_servers::redis::RedisServer;

use crate::report::{Figure, Report, say};

/// Records each run writes.
const RECORDS: u64 = 200_000;

/// Every figure of the section; says why and returns when Redis is not
/// installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nredis: datagen -> log -> redis-sink, {RECORDS} records of 100 B, one MULTI/EXEC a batch of 1000; beside redis-benchmark sending the same commands 1000 deep"
    ));
    let Some(redis) = RedisServer::start() else {
        say("redis: skipped, redis-server is not installed (Debian package redis-server)");
        return Ok(());
    };
    // datagen's value of 100 B: `{"seq":N,"pad":"…"}`.
    let value = format!("{{\"seq\":0,\"pad\":\"{}\"}}", "x".repeat(80));
    for (mode, command, key) in [
        (
            "xadd",
            vec!["XADD", "native", "*", "value", value.as_str()],
            "{topic}",
        ),
        (
            "set",
            vec!["SET", "native:__rand_int__", value.as_str()],
            "k:{partition}:{offset}",
        ),
        ("rpush", vec!["RPUSH", "native", value.as_str()], "{topic}"),
    ] {
        let native = benchmark(&redis, &command, RECORDS, 1000)?;
        report.add(
            Figure::new(
                "redis",
                format!("native: redis-benchmark {}", command[0]),
                native,
                "rec/s",
            )
            .aside("pipelined 1000 deep, one connection"),
        );
        redis.cli(&["FLUSHALL"]);
        let rate = sink_run(&redis, bin, work, cache, mode, key)?;
        let stored = redis.cli(&["HGET", &format!("sluice:offsets:{mode}"), "bench/0"]);
        if stored.trim() != RECORDS.to_string() {
            bail!("redis-sink {mode}: the offsets say {stored:?} of {RECORDS}");
        }
        report.add(
            Figure::new(
                "redis",
                format!("datagen -> log -> redis-sink {mode}"),
                rate,
                "rec/s",
            )
            .aside(format!("{:.2} of redis-benchmark", rate / native)),
        );
        redis.cli(&["FLUSHALL"]);
    }

    // redis-source: a stream of RECORDS entries, read through a group.
    redis.pipe((0..RECORDS).map(|_| {
        ["XADD", "src", "*", "value", value.as_str()]
            .map(str::to_owned)
            .to_vec()
    }));
    // The same reads through a group of its own: each takes the next 1000
    // new entries, as the source's do (never acknowledged here). The
    // median of three groups, and of three source runs: 200 reads take
    // half a second, and one run swings by a third.
    let mut natives = Vec::new();
    for group in ["native0", "native1", "native2"] {
        redis.cli(&["XGROUP", "CREATE", "src", group, "0"]);
        let read = [
            "XREADGROUP",
            "GROUP",
            group,
            "c",
            "COUNT",
            "1000",
            "STREAMS",
            "src",
            ">",
        ];
        natives.push(benchmark(&redis, &read, RECORDS / 1000, 1)? * 1000.0);
    }
    let native = crate::median(natives);
    report.add(
        Figure::new(
            "redis",
            "native: redis-benchmark XREADGROUP COUNT 1000 (median of 3)",
            native,
            "rec/s",
        )
        .aside("entries/s, a read at a time, one connection"),
    );
    let mut rates = Vec::new();
    for _ in 0..3 {
        redis.cli(&["XGROUP", "DESTROY", "src", "rsrc"]);
        rates.push(source_run(&redis, bin, work, cache)?);
    }
    let rate = crate::median(rates);
    report.add(
        Figure::new("redis", "redis-source -> log (median of 3)", rate, "rec/s").aside(format!(
            "{:.2} of redis-benchmark XREADGROUP",
            rate / native
        )),
    );
    Ok(())
}

/// `redis-source` reading the stream `src` to its end → log →
/// `blackhole`: records/s from the first record's arrival to the last.
fn source_run(redis: &RedisServer, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let addr = redis.addr();
    let source = format!(
        r#"[[connector]]
name = "rsrc"
kind = "source"
plugin = "redis-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
addr = "{addr}"
stream = "src"
bounded = true
[connector.grants]
net = ["{addr}"]
"#
    );
    let sink = crate::files::into_blackhole(bin, work, cache, &source, RECORDS)?;
    Ok(crate::arrival_rates(&sink).0)
}

/// `redis-benchmark` sending `command` `requests` times on one
/// connection, `pipeline` in flight: requests/s, as it reports them.
fn benchmark(
    redis: &RedisServer,
    command: &[&str],
    requests: u64,
    pipeline: u32,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string()])
        .args([
            "-c",
            "1",
            "-P",
            &pipeline.to_string(),
            "-n",
            &requests.to_string(),
            "-r",
            "1000000",
        ])
        .args(["--csv", "-q"])
        .args(command)
        .output()
        .context("running redis-benchmark")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("redis-benchmark: {}", String::from_utf8_lossy(&out.stderr));
    }
    // `"test","rps",…` then one row; fall back on the wall clock.
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .nth(1)
        .and_then(|row| row.split(',').nth(1))
        .and_then(|cell| cell.trim_matches('"').parse::<f64>().ok());
    Ok(rps.unwrap_or(requests as f64 / secs))
}

/// `datagen` → log → `redis-sink` in `mode` with `key`, as the connector
/// `mode`: the sink's records/s from its start to its last flush, as the
/// run's summary says.
fn sink_run(
    redis: &RedisServer,
    bin: &Path,
    work: &Path,
    cache: &Path,
    mode: &str,
    key: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let addr = redis.addr();
    let manifest = crate::files::datagen_into(
        RECORDS,
        100,
        &format!(
            r#"[[connector]]
name = "{mode}"
kind = "sink"
plugin = "redis-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
mode = "{mode}"
key = "{key}"
[connector.grants]
net = ["{addr}"]
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, mode)
}
