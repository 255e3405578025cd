//! `mqtt-sink` and `mqtt-source` against a mosquitto the bench starts
//! (`sluice-test-servers`: its own directory and port), each beside the
//! broker's own client moving the same messages of 100 B at QoS 1 in the
//! same run: `mosquitto_pub --repeat` publishing, `mosquitto_sub` draining
//! a persistent session.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail};
use sluice_test_servers::mosquitto::Mosquitto;

use crate::report::{Figure, Report, say};

/// Messages each run moves.
const RECORDS: u64 = 200_000;

/// Every figure of the section; says why and returns when mosquitto is not
/// installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nmqtt: {RECORDS} messages of 100 B at QoS 1 through mosquitto; mqtt-sink beside mosquitto_pub, mqtt-source beside mosquitto_sub"
    ));
    let Some(broker) = Mosquitto::start() else {
        say(
            "mqtt: skipped, mosquitto is not installed (Debian packages mosquitto, mosquitto-clients)",
        );
        return Ok(());
    };
    // datagen's value of 100 B: `{"seq":N,"pad":"…"}`.
    let message = |i: u64| format!("{{\"seq\":{i},\"pad\":\"{}\"}}", "x".repeat(80));

    let native_pub = publish_repeat(&broker, &message(0))?;
    report.add(
        Figure::new(
            "mqtt",
            "native: mosquitto_pub -q 1 --repeat",
            native_pub,
            "rec/s",
        )
        .aside("the broker's own client, one connection"),
    );
    let sink = sink_run(&broker, bin, work, cache)?;
    report.add(
        Figure::new("mqtt", "datagen -> log -> mqtt-sink qos 1", sink, "rec/s")
            .aside(format!("{:.2} of mosquitto_pub", sink / native_pub)),
    );

    // Each reader's session is made first, then filled, then drained.
    broker.make_session("native-sub", "native/sub");
    broker.publish("native/sub", (0..RECORDS).map(message));
    let native_sub = drain(&broker, "native-sub", "native/sub")?;
    report.add(
        Figure::new("mqtt", "native: mosquitto_sub -q 1", native_sub, "rec/s")
            .aside("draining a persistent session, one connection"),
    );
    broker.make_session("sluice-msrc-0", "bench/in");
    broker.publish("bench/in", (0..RECORDS).map(message));
    let source = source_run(&broker, bin, work, cache)?;
    report.add(
        Figure::new("mqtt", "mqtt-source -> log qos 1", source, "rec/s")
            .aside(format!("{:.2} of mosquitto_sub", source / native_sub)),
    );
    Ok(())
}

/// `mosquitto_pub` publishing `message` `RECORDS` times at QoS 1 (its
/// `-l`, a message a line, stops short at the end of its input in 2.0.11):
/// messages/s from its start to its exit.
fn publish_repeat(broker: &Mosquitto, message: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new(sluice_test_servers::mosquitto::PUB)
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-q", "1", "-t", "native/pub", "-m", message])
        .args(["--repeat", &RECORDS.to_string()])
        .stderr(Stdio::piped())
        .output()
        .context("running mosquitto_pub")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("mosquitto_pub: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(RECORDS as f64 / secs)
}

/// `mosquitto_sub` taking the `RECORDS` messages kept for the session
/// `client_id`: messages/s from its start to its exit.
fn drain(broker: &Mosquitto, client_id: &str, filter: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let out = Command::new("/usr/bin/mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-q", "1", "-c", "-i", client_id, "-t", filter])
        .args(["-C", &RECORDS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running mosquitto_sub")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(RECORDS as f64 / secs)
}

/// `datagen` → log → `mqtt-sink` at QoS 1: the sink's records/s from its
/// start to its last flush, as the run's summary says.
fn sink_run(broker: &Mosquitto, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    let addr = broker.addr();
    let manifest = crate::files::datagen_into(
        RECORDS,
        100,
        &format!(
            r#"[[connector]]
name = "msink"
kind = "sink"
plugin = "mqtt-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
topic = "bench/out"
[connector.grants]
net = ["{addr}"]
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, "msink")
}

/// `mqtt-source` draining its session → log → `blackhole`: records/s from
/// the first record's arrival to the last one's.
fn source_run(broker: &Mosquitto, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<f64> {
    let addr = broker.addr();
    let source = format!(
        r#"[[connector]]
name = "msrc"
kind = "source"
plugin = "mqtt-source"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
addr = "{addr}"
topics = ["bench/in"]
end_after_idle_ms = 500
[connector.grants]
net = ["{addr}"]
"#
    );
    let sink = crate::files::into_blackhole(bin, work, cache, &source, RECORDS)?;
    Ok(crate::arrival_rates(&sink).0)
}
