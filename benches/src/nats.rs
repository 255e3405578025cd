//! The NATS JetStream broker: `datagen` → NATS → `blackhole` at 100 B and
//! 1 KiB, beside a native `async-nats` publisher and consumer moving the
//! same bytes to the same server in the same run, and beside the same
//! pipeline on the embedded log.
//!
//! The native side publishes the bytes Sluice stores, as messages of 1000
//! records each (the pipeline's batches), with up to [`IN_FLIGHT`]
//! acknowledgements outstanding, then reads them back with a pull
//! consumer: what a program using the client well gets from this server.
//! Two more native figures put the pipeline's in context: publishing with
//! one acknowledgement outstanding (a partition's writes are fenced one
//! after the other), and publishing and reading at once (the pipeline's
//! shape, where both share the server and the two cores).

use std::collections::VecDeque;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use async_nats::jetstream;
use futures_util::StreamExt as _;
use sluice_test_servers::nats::NatsServer;

use crate::report::{Figure, Report, say};

/// Records per message, as the pipeline's `max_records` and the batches
/// [`crate::end_to_end::batch_bytes`] measures.
const PER_MESSAGE: u64 = crate::end_to_end::BATCH_RECORDS as u64;

/// Acknowledgements the native publisher lets be outstanding.
const IN_FLIGHT: usize = 64;

/// (record bytes, records) of each case.
const CASES: [(u32, u64); 2] = [(100, 1_000_000), (1024, 200_000)];

/// Every figure of the section; says why and returns when there is no
/// `nats-server`.
pub fn section(
    report: &mut Report,
    bin: &Path,
    work: &Path,
    cache: &Path,
    only: Option<u32>,
) -> anyhow::Result<()> {
    if let Err(why) = sluice_test_servers::nats::binary() {
        say(format!("\nnats: skipped, {why}"));
        return Ok(());
    }
    for (payload, count) in CASES {
        if only.is_some_and(|p| p != payload) {
            continue;
        }
        say(format!(
            "\nnats: {count} records of {payload} B; datagen -> NATS JetStream -> blackhole (one instance each, bounded) beside async-nats publishing and reading the same bytes, and beside the embedded log"
        ));
        let server = NatsServer::start().context("nats-server is there but did not start")?;
        let native = native(&server.url(), payload, count)?;
        let (published, consumed) = (native.published, native.consumed);
        report.add(
            Figure::new(
                "nats",
                format!("native: async-nats publish, {payload} B"),
                published,
                "rec/s",
            )
            .aside(format!(
                "{PER_MESSAGE} records a message, {IN_FLIGHT} acks in flight"
            )),
        );
        report.add(
            Figure::new(
                "nats",
                format!("native: publish one ack at a time, {payload} B"),
                native.one_at_a_time,
                "rec/s",
            )
            .aside("as a partition's fenced writes go"),
        );
        report.add(
            Figure::new(
                "nats",
                format!("native: async-nats pull consumer, {payload} B"),
                consumed,
                "rec/s",
            )
            .aside("the same messages read back"),
        );
        report.add(
            Figure::new(
                "nats",
                format!("native: publish and read at once, {payload} B"),
                native.both,
                "rec/s",
            )
            .aside("the pipeline's shape, until all is read"),
        );

        let dir = tempfile::tempdir_in(work)?;
        let broker = format!("[broker]\nkind = \"nats\"\nurl = \"{}\"\n", server.url());
        let summary =
            crate::files::sluice_run(bin, cache, dir.path(), &manifest(&broker, payload, count))?;
        let source = crate::files::summary_rate(&summary, "gen")?;
        let sink = crate::files::summary_rate(&summary, "out")?;
        report.add(
            Figure::new(
                "nats",
                format!("datagen -> NATS, {payload} B"),
                source,
                "rec/s",
            )
            .aside(format!(
                "{:.2} of the publisher, {:.2} of one ack at a time",
                source / published,
                source / native.one_at_a_time
            )),
        );
        report.add(
            Figure::new(
                "nats",
                format!("NATS -> blackhole, {payload} B"),
                sink,
                "rec/s",
            )
            .aside(format!(
                "{:.2} of the consumer, {:.2} of publish and read at once",
                sink / consumed,
                sink / native.both
            )),
        );

        let dir = tempfile::tempdir_in(work)?;
        let broker = "[broker]\ndata_dir = \"data\"\n";
        let summary =
            crate::files::sluice_run(bin, cache, dir.path(), &manifest(broker, payload, count))?;
        let source = crate::files::summary_rate(&summary, "gen")?;
        let sink = crate::files::summary_rate(&summary, "out")?;
        report.add(
            Figure::new(
                "nats",
                format!("embedded log: datagen -> log, {payload} B"),
                source,
                "rec/s",
            )
            .aside("the same pipeline, for comparison"),
        );
        report.add(Figure::new(
            "nats",
            format!("embedded log: log -> blackhole, {payload} B"),
            sink,
            "rec/s",
        ));
    }
    Ok(())
}

/// `datagen` → the broker `broker` says → `blackhole`, in batches of
/// [`PER_MESSAGE`] records (`datagen_into`'s).
fn manifest(broker: &str, payload: u32, count: u64) -> String {
    crate::files::datagen_on(
        broker,
        count,
        payload,
        "[[connector]]\nname = \"out\"\nkind = \"sink\"\nplugin = \"blackhole\"\ntopic = \"bench\"\n",
    )
}

/// What a program using `async-nats` well gets from the server, in
/// records/s.
struct Native {
    /// Publishing with [`IN_FLIGHT`] acknowledgements outstanding.
    published: f64,
    /// Publishing with one acknowledgement outstanding: how a partition's
    /// writes go when each must follow the one before.
    one_at_a_time: f64,
    /// Reading back with an ordered consumer.
    consumed: f64,
    /// Publishing and reading at once (the pipeline's shape): until the
    /// reader has everything.
    both: f64,
}

/// Publishes `count` records' worth of bytes as messages of
/// [`PER_MESSAGE`] records and reads them back, in the ways [`Native`]
/// lists, each on a stream of its own.
fn native(url: &str, payload: u32, count: u64) -> anyhow::Result<Native> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await?;
        let js = jetstream::new(client);
        // As many bytes as a batch of as many records in the batch format.
        let message =
            bytes::Bytes::from(vec![b'x'; crate::end_to_end::batch_bytes(payload) as usize]);
        let messages = count / PER_MESSAGE;
        let rate = |started: Instant| count as f64 / started.elapsed().as_secs_f64();

        let stream = make_stream(&js, "NATIVE").await?;
        let started = Instant::now();
        publish(&js, "native.NATIVE", &message, messages, IN_FLIGHT).await?;
        let published = rate(started);
        let started = Instant::now();
        read(&stream, messages, message.len()).await?;
        let consumed = rate(started);

        make_stream(&js, "SERIAL").await?;
        let started = Instant::now();
        publish(&js, "native.SERIAL", &message, messages, 1).await?;
        let one_at_a_time = rate(started);

        let stream = make_stream(&js, "BOTH").await?;
        let started = Instant::now();
        let (sent, received) = tokio::join!(
            publish(&js, "native.BOTH", &message, messages, IN_FLIGHT),
            read(&stream, messages, message.len())
        );
        sent?;
        received?;
        let both = rate(started);
        Ok(Native {
            published,
            one_at_a_time,
            consumed,
            both,
        })
    })
}

async fn make_stream(
    js: &jetstream::Context,
    name: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    Ok(js
        .create_stream(jetstream::stream::Config {
            name: name.into(),
            subjects: vec![format!("native.{name}")],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?)
}

/// Publishes `messages` copies of `message` with up to `in_flight`
/// acknowledgements outstanding.
async fn publish(
    js: &jetstream::Context,
    subject: &'static str,
    message: &bytes::Bytes,
    messages: u64,
    in_flight: usize,
) -> anyhow::Result<()> {
    let mut acks = VecDeque::with_capacity(in_flight);
    for _ in 0..messages {
        acks.push_back(js.publish(subject, message.clone()).await?);
        if acks.len() == in_flight {
            acks.pop_front().context("an ack")?.await?;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// Reads `messages` messages of `size` bytes with a pull consumer that
/// keeps a window of them on the way (without acknowledgements), as much
/// as a sink's (256 messages, 32 MiB). An ordered consumer's default
/// window stalled on messages of 1 MiB (about 1000 records of 1 KiB).
async fn read(
    stream: &jetstream::stream::Stream,
    messages: u64,
    size: usize,
) -> anyhow::Result<()> {
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let mut read = consumer
        .stream()
        .max_messages_per_batch(256)
        .max_bytes_per_batch(32 << 20)
        .messages()
        .await?;
    let mut bytes = 0usize;
    for _ in 0..messages {
        let m = read.next().await.context("the stream ended early")??;
        bytes += m.payload.len();
    }
    anyhow::ensure!(bytes == size * messages as usize, "read {bytes} bytes");
    Ok(())
}
