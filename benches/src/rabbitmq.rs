//! `rabbitmq-sink` and `rabbitmq-source` against a RabbitMQ node the bench
//! starts (`sluice-test-servers`: its own directory and ports), each beside
//! a native AMQP client (pika, `tests/peers/amqp_client.py`) moving the same
//! persistent messages of 100 B in the same run: the native publisher sends
//! as fast as it can and is timed until the queue holds everything (the
//! broker's intake); the native consumer has the source's prefetch (500)
//! and acknowledges every 100 with `multiple`.

use std::path::Path;

use sluice_test_servers::rabbitmq::RabbitMq;

use crate::report::{Figure, Report, say};

/// Messages each run moves.
const RECORDS: u64 = 200_000;

/// Every figure of the section; says why and returns when RabbitMQ or pika
/// is not installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nrabbitmq: {RECORDS} persistent messages of 100 B through RabbitMQ; rabbitmq-sink and rabbitmq-source beside a native AMQP client (pika)"
    ));
    let Some(rmq) = RabbitMq::start() else {
        say(
            "rabbitmq: skipped, RabbitMQ or pika is not installed (Debian packages rabbitmq-server, python3-pika)",
        );
        return Ok(());
    };
    let records = RECORDS.to_string();
    let rate = |out: String| -> anyhow::Result<f64> {
        out.split_whitespace()
            .next()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("amqp_client.py printed {out:?}"))
    };

    let native_publish = rate(rmq.client("bench-publish", &["native", &records, "100"]))?;
    report.add(
        Figure::new(
            "rabbitmq",
            "native: pika publish (until queued)",
            native_publish,
            "rec/s",
        )
        .aside("one connection, persistent, no confirms, timed until the queue holds all"),
    );
    rmq.client("declare", &["bench.out"]);
    let sink = sink_run(&rmq, bin, work, cache)?;
    report.add(
        Figure::new("rabbitmq", "datagen -> log -> rabbitmq-sink", sink, "rec/s")
            .aside(format!("{:.2} of the native client", sink / native_publish)),
    );

    let native_consume = rate(rmq.client("bench-consume", &["native", &records]))?;
    report.add(
        Figure::new("rabbitmq", "native: pika consume", native_consume, "rec/s")
            .aside("prefetch 500, acknowledged every 100 with multiple"),
    );
    // The sink's run filled bench.out: the source drains it.
    let source = source_run(&rmq, bin, work, cache)?;
    report.add(
        Figure::new("rabbitmq", "rabbitmq-source -> log", source, "rec/s").aside(format!(
            "{:.2} of the native client",
            source / native_consume
        )),
    );
    Ok(())
}

/// `datagen` → log → `rabbitmq-sink`: the sink's records/s from its start
/// to its last flush, as the run's summary says.
fn sink_run(rmq: &RabbitMq, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let addr = rmq.addr();
    let manifest = crate::files::datagen_into(
        RECORDS,
        100,
        &format!(
            r#"[[connector]]
name = "rsink"
kind = "sink"
plugin = "rabbitmq-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
routing_key = "bench.out"
user = "{user}"
password = "{password}"
[connector.grants]
net = ["{addr}"]
"#,
            user = rmq.user(),
            password = rmq.password(),
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, "rsink")
}

/// `rabbitmq-source` draining a queue → log → `blackhole`: records/s from
/// the first record's arrival to the last one's.
fn source_run(rmq: &RabbitMq, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let addr = rmq.addr();
    let source = format!(
        r#"[[connector]]
name = "rsrc"
kind = "source"
plugin = "rabbitmq-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
addr = "{addr}"
queue = "bench.out"
user = "{user}"
password = "{password}"
end_after_idle_ms = 1000
[connector.grants]
net = ["{addr}"]
"#,
        user = rmq.user(),
        password = rmq.password(),
    );
    let sink = crate::files::into_blackhole(bin, work, cache, &source, RECORDS)?;
    Ok(crate::arrival_rates(&sink).0)
}
