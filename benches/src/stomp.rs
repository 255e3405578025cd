//! `stomp-sink` and `stomp-source` against an ActiveMQ the bench starts
//! (`sluice-test-servers`: its own directory and ports), each beside a
//! native STOMP client (Rust over `std::net`, the test servers' own)
//! moving the same persistent messages of 100 B in the same run: sends
//! with a receipt each, 1,000 awaited at most, as the sink does; a
//! `client-individual` subscription with a prefetch of 1,000, as the
//! source has.

use std::path::Path;
use std::time::Instant;

use sluice_test_servers::activemq::ActiveMq;

use crate::report::{Figure, Report, say};

/// Messages each run moves.
const RECORDS: u64 = 200_000;

/// Every figure of the section; says why and returns when ActiveMQ is not
/// installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nstomp: {RECORDS} persistent messages of 100 B through ActiveMQ; stomp-sink and stomp-source beside a native STOMP client"
    ));
    let Some(amq) = ActiveMq::start() else {
        say(
            "stomp: skipped, ActiveMQ is not installed (Debian packages activemq, libmqtt-client-java)",
        );
        return Ok(());
    };
    // datagen's value of 100 B: `{"seq":N,"pad":"…"}`.
    let message = |i: u64| format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(80));

    let started = Instant::now();
    amq.send("/queue/native", (0..RECORDS).map(message));
    let native_send = RECORDS as f64 / started.elapsed().as_secs_f64();
    report.add(
        Figure::new(
            "stomp",
            "native: STOMP SEND with receipts",
            native_send,
            "rec/s",
        )
        .aside("Rust over std::net, one connection, 1,000 receipts awaited"),
    );
    let sink = sink_run(&amq, bin, work, cache)?;
    report.add(
        Figure::new("stomp", "datagen -> log -> stomp-sink", sink, "rec/s")
            .aside(format!("{:.2} of the native client", sink / native_send)),
    );

    let started = Instant::now();
    amq.drain("/queue/native", RECORDS);
    let native_drain = RECORDS as f64 / started.elapsed().as_secs_f64();
    report.add(
        Figure::new(
            "stomp",
            "native: STOMP client-individual drain",
            native_drain,
            "rec/s",
        )
        .aside("each message acknowledged as it comes, prefetch 1,000"),
    );
    amq.send("/queue/bench.in", (0..RECORDS).map(message));
    let source = source_run(&amq, bin, work, cache)?;
    report.add(
        Figure::new("stomp", "stomp-source -> log", source, "rec/s")
            .aside(format!("{:.2} of the native client", source / native_drain)),
    );
    Ok(())
}

/// `datagen` → log → `stomp-sink`: the sink's records/s from its start to
/// its last flush, as the run's summary says.
fn sink_run(amq: &ActiveMq, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let addr = amq.stomp_addr();
    let manifest = crate::files::datagen_into(
        RECORDS,
        100,
        &format!(
            r#"[[connector]]
name = "ssink"
kind = "sink"
plugin = "stomp-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
destination = "/queue/bench.out"
[connector.grants]
net = ["{addr}"]
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, "ssink")
}

/// `stomp-source` draining a queue → log → `blackhole`: records/s from the
/// first record's arrival to the last one's.
fn source_run(amq: &ActiveMq, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let addr = amq.stomp_addr();
    let source = format!(
        r#"[[connector]]
name = "ssrc"
kind = "source"
plugin = "stomp-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
addr = "{addr}"
destination = "/queue/bench.in"
end_after_idle_ms = 1000
[connector.grants]
net = ["{addr}"]
"#
    );
    let sink = crate::files::into_blackhole(bin, work, cache, &source, RECORDS)?;
    Ok(crate::arrival_rates(&sink).0)
}
