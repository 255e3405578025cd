//! A sink's reading: one durable pull consumer per group (connector) and
//! partition, named for both, that the server streams messages from, in
//! order, with explicit acknowledgements.
//!
//! - The consumer starts at the stream sequence of the message holding the
//!   offset the sink reads from (`ByStartSequence`): its committed offset,
//!   or the one it stores itself. A read from any other offset than where
//!   the last one stopped (a restart, `offsets --reset`, an interrupted
//!   write read again) makes the consumer again from there.
//! - Messages arrive while the sink writes: the server keeps a window of
//!   them on the way (`max_messages_per_batch`, `max_bytes_per_batch`),
//!   where a direct get costs a round trip per message (measured: 1.1 M
//!   records/s at 100 B with direct gets; see BENCHMARKS.md).
//! - A commit acknowledges, with the server's confirmation, the last
//!   message the committed offset covers whole (`AckPolicy::All`
//!   acknowledges everything before it too), after the offset is written
//!   to the offsets bucket. The bucket stays the exact record (a commit may
//!   fall inside a message, and `offsets --reset` may move it anywhere);
//!   the acknowledgement is what the server and its tools see:
//!   `nats consumer info SLUICE_<topic> <group>_p<partition>` shows a
//!   sink's lag.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, ErrorCode, stream};
use futures_util::StreamExt;

use super::super::{BrokerError, StoredBatch};
use super::topic::{Partition, Topic, offsets_of, seek, stored};
use super::{failed, names, nats_err};

/// The longest a read waits for a first message when none is here yet.
const FIRST_WAIT: Duration = Duration::from_millis(20);

/// Messages the server keeps on the way to a reader, at most…
const WINDOW_MESSAGES: usize = 256;
/// …and bytes.
const WINDOW_BYTES: usize = 32 << 20;

/// A consumer waits this long for an acknowledgement before it delivers a
/// message again: longer than any flush interval a sink would choose, so
/// that a redelivery is an accident (and it is skipped when it comes).
const ACK_WAIT: Duration = Duration::from_secs(3600);

/// One group's reading of one partition.
pub(super) struct Cursor {
    messages: pull::Stream,
    /// The offset after the last record delivered.
    next: u64,
    /// The last stream sequence delivered: an older one is a redelivery.
    sequence: u64,
    /// Delivered messages not yet acknowledged: the offset after each,
    /// and how to acknowledge it.
    unacked: VecDeque<(u64, Acker)>,
    /// Whether a message came since the consumer was made.
    delivered: bool,
    /// Whether the consumer skipped messages (see [`Cursor::read`]): it
    /// must be made again.
    pub(super) skipped: bool,
}

impl Cursor {
    /// Makes (again) `group`'s consumer of a partition, starting at the
    /// message that holds `offset`.
    pub(super) async fn open(
        t: &Topic,
        p: &Partition,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Cursor, BrokerError> {
        let filter = names::partition_filter(topic, partition);
        let start = match p.hint(offset) {
            Some(s) => s,
            None => seek(&t.stream, &filter, offset).await?,
        };
        let name = names::consumer(group, partition);
        let what = || format!("making consumer {name} of {topic}/{partition} for {group}");
        // A consumer's start cannot be changed: it is made anew.
        delete(&t.stream, &name).await.map_err(nats_err(what()))?;
        let consumer: consumer::PullConsumer = t
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!(
                    "Sluice sink {group:?} reading {topic:?} partition {partition}"
                )),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                max_ack_pending: -1,
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .map_err(nats_err(what()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(WINDOW_MESSAGES)
            .max_bytes_per_batch(WINDOW_BYTES)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(nats_err(what()))?;
        Ok(Cursor {
            messages,
            next: offset,
            sequence: start.saturating_sub(1),
            unacked: VecDeque::new(),
            delivered: false,
            skipped: false,
        })
    }

    /// Where the next read continues.
    pub(super) fn next(&self) -> u64 {
        self.next
    }

    /// Takes the messages that are here (waiting a little for a first),
    /// up to about `max_bytes`.
    ///
    /// A message that starts after the last one delivered ended means the
    /// consumer skipped some: messages on their way to this host when its
    /// server went away count as delivered, and come again only after
    /// [`ACK_WAIT`]. The read then stops there and says
    /// [`Cursor::skipped`], so that the consumer is made again from where
    /// the sink is. (The first message may start later than asked: what
    /// was asked for is gone.)
    pub(super) async fn read(
        &mut self,
        p: &Partition,
        topic: &str,
        partition: u32,
        max_bytes: u64,
    ) -> Result<Vec<StoredBatch>, BrokerError> {
        let stream_name = names::stream(topic);
        let (mut out, mut bytes) = (Vec::new(), 0u64);
        while bytes < max_bytes {
            let item = if out.is_empty() {
                match tokio::time::timeout(FIRST_WAIT, self.messages.next()).await {
                    Ok(item) => item,
                    Err(_) => break,
                }
            } else {
                match futures_util::FutureExt::now_or_never(self.messages.next()) {
                    Some(item) => item,
                    None => break,
                }
            };
            let m = match item {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(failed(format!("reading {topic}/{partition}"))(&e)),
                None => {
                    return Err(BrokerError::Nats {
                        what: format!("reading {topic}/{partition}"),
                        why: "the consumer's message stream ended".into(),
                    });
                }
            };
            let sequence = m
                .info()
                .map_err(nats_err(format!("reading {topic}/{partition}")))?
                .stream_sequence;
            if sequence <= self.sequence {
                continue;
            }
            self.sequence = sequence;
            let (message, acker) = m.split();
            let empty = async_nats::HeaderMap::new();
            let headers = message.headers.as_ref().unwrap_or(&empty);
            let (first, records) = offsets_of(headers, sequence, &stream_name)?;
            let end = first + u64::from(records);
            if self.delivered && first > self.next {
                self.skipped = true;
                break;
            }
            self.delivered = true;
            self.unacked.push_back((end, acker));
            if end <= self.next {
                continue;
            }
            let batch = stored(
                &message.payload,
                first,
                records,
                self.next,
                sequence,
                &stream_name,
            )?;
            bytes += batch.bytes.len() as u64;
            out.push(batch);
            self.next = end;
            p.remember(end, sequence + 1);
        }
        Ok(out)
    }

    /// Acknowledges, and waits for the server to confirm, every message
    /// that ends at or before `next`.
    pub(super) async fn ack(&mut self, next: u64, what: &str) -> Result<(), BrokerError> {
        let mut last = None;
        while self.unacked.front().is_some_and(|(end, _)| *end <= next) {
            last = self.unacked.pop_front().map(|(_, acker)| acker);
        }
        if let Some(acker) = last {
            acker
                .double_ack()
                .await
                .map_err(|e| failed(what.to_owned())(&e))?;
        }
        Ok(())
    }
}

/// Deletes every consumer of `group` in the stream, whatever partition.
pub(super) async fn delete_all(stream: &stream::Stream, group: &str) -> Result<(), BrokerError> {
    let prefix = names::consumer_prefix(group);
    let name = stream.cached_info().config.name.clone();
    let what = || format!("deleting the consumers of {group} on {name}");
    let mut names = stream.consumer_names();
    let mut found = Vec::new();
    while let Some(consumer) = names.next().await {
        let consumer = consumer.map_err(nats_err(what()))?;
        if consumer.starts_with(&prefix) {
            found.push(consumer);
        }
    }
    for consumer in found {
        delete(stream, &consumer).await.map_err(nats_err(what()))?;
    }
    Ok(())
}

/// Deletes consumer `name` of `stream`, if it is there.
async fn delete(stream: &stream::Stream, name: &str) -> Result<(), stream::ConsumerError> {
    match stream.delete_consumer(name).await {
        Err(e)
            if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            Ok(())
        }
        done => done.map(drop),
    }
}

/// The consumers of every Sluice stream whose group is `group`, deleted.
pub(super) async fn forget(js: &jetstream::Context, group: &str) -> Result<(), BrokerError> {
    let mut streams = js.stream_names();
    let mut found = Vec::new();
    while let Some(name) = streams.next().await {
        let name = name.map_err(nats_err(format!("listing streams to forget {group}")))?;
        if name.starts_with("SLUICE_") {
            found.push(name);
        }
    }
    for name in found {
        let stream = js
            .get_stream(&name)
            .await
            .map_err(nats_err(format!("opening stream {name} to forget {group}")))?;
        delete_all(&stream, group).await?;
    }
    Ok(())
}
