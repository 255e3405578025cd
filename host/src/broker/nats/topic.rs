//! A topic's stream: how batches are stored as messages (their headers),
//! where each partition starts and ends, and finding the message that
//! holds an offset. See the parent module for the mapping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use sluice_batch::{Batch, BatchWriter};

use super::super::{BrokerError, SourceCheckpoint, StoredBatch};
use super::{NO_PRODUCER, failed, names, nats_err};

/// The header with a batch's first offset.
pub(super) const OFFSET: &str = "Sluice-Offset";
/// The header with a batch's record count.
pub(super) const RECORDS: &str = "Sluice-Records";
/// The header with the source position after a batch, hex.
pub(super) const POSITION: &str = "Sluice-Position";

/// What the server allows, from its INFO.
#[derive(Debug, Clone, Copy)]
pub(super) struct Server {
    /// Its `max_payload`.
    pub(super) max_payload: u64,
    /// Whether it takes atomic batches (2.12 and newer).
    pub(super) atomic: bool,
}

impl Server {
    /// From the server's INFO.
    pub(super) fn of(info: &async_nats::ServerInfo) -> Server {
        let mut version = info
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (version.next().unwrap_or(0), version.next().unwrap_or(0));
        Server {
            max_payload: info.max_payload as u64,
            atomic: (major, minor) >= (2, 12),
        }
    }
}

/// Room kept in a message for its headers, under `max_payload`.
pub(super) const HEADER_ROOM: u64 = 4096;

/// Frames whose place (stream sequence) a partition remembers, by offset.
const HINTS: usize = 1024;

/// One topic's stream and what this host knows of its partitions.
pub(super) struct Topic {
    /// The most bytes of batch one message takes (`max_payload` less room
    /// for headers).
    pub(super) limit: u64,
    /// Whether the stream takes atomic batches (NATS 2.12): a larger batch
    /// is then stored as several messages, all or none.
    pub(super) atomic: bool,
    /// This host's writer id, unique per broker opened: part of every
    /// `Nats-Msg-Id`, so that a write sent again by this host is stored
    /// once, while one by another writer at the same offset (a zombie) is
    /// never taken for it.
    pub(super) writer: u64,
    /// The client, to publish.
    pub(super) js: jetstream::Context,
    /// The topic's stream.
    pub(super) stream: stream::Stream,
    /// Its partitions, by index.
    pub(super) partitions: Vec<Partition>,
    /// Counts this host's appends, for
    /// [`crate::broker::Broker::wait_for_data`].
    pub(super) appended: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct Partition {
    /// Held while a batch is written: one at a time per partition.
    pub(super) writer: tokio::sync::Mutex<Writer>,
    /// The next offset, as far as this host knows.
    pub(super) end: AtomicU64,
    /// The first offset kept, as far as this host knows.
    pub(super) start: AtomicU64,
    /// The stream sequence at or after which the batch starting at an
    /// offset is: where the last reads stopped.
    pub(super) hints: Mutex<HashMap<u64, u64>>,
}

#[derive(Default)]
pub(super) struct Writer {
    /// The next offset; `None` when it must be read from the stream again
    /// (after a failed write, whose batch may or may not be stored).
    pub(super) end: Option<u64>,
    /// The last stream sequence on each producer's subject.
    pub(super) last: HashMap<String, u64>,
}

impl Partition {
    pub(super) fn hint(&self, offset: u64) -> Option<u64> {
        self.hints.lock().expect("hints lock").get(&offset).copied()
    }

    pub(super) fn remember(&self, offset: u64, sequence: u64) {
        let mut hints = self.hints.lock().expect("hints lock");
        if hints.len() >= HINTS {
            hints.clear();
        }
        hints.insert(offset, sequence);
    }
}

fn header<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.as_str().parse().ok()
}

/// The first offset and record count of the batch in `m`.
pub(super) fn offsets_of(
    m: &jetstream::message::StreamMessage,
    stream: &str,
) -> Result<(u64, u32), BrokerError> {
    match (header(&m.headers, OFFSET), header(&m.headers, RECORDS)) {
        (Some(o), Some(n)) => Ok((o, n)),
        _ => Err(BrokerError::Nats {
            what: format!("reading message {} of stream {stream}", m.sequence),
            why: format!("it has no {OFFSET} and {RECORDS} headers: it was not written by Sluice"),
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(1 + 2 * bytes.len());
    s.push('h');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_prefix('h')?;
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Whether a get found no message (rather than failing).
pub(super) fn is_not_found_direct(e: &stream::DirectGetError) -> bool {
    matches!(e.kind(), stream::DirectGetErrorKind::NotFound)
}

pub(super) fn is_not_found_last(e: &stream::LastRawMessageError) -> bool {
    matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound)
}

/// Opens (or makes) the stream of `topic`, and reads where each partition
/// starts and ends.
pub(super) async fn open_topic(
    js: jetstream::Context,
    topic: String,
    partitions: u32,
    replicas: usize,
    server: Server,
    writer: u64,
) -> Result<Topic, BrokerError> {
    let name = names::stream(&topic);
    let stream = js
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![names::stream_subjects(&topic)],
            description: Some(describe(&topic, partitions)),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_direct: true,
            allow_atomic_publish: server.atomic,
            ..Default::default()
        })
        .await
        .map_err(nats_err(format!("opening stream {name} (topic {topic:?})")))?;
    let description = stream.cached_info().config.description.clone();
    let partitions = description
        .as_deref()
        .and_then(|d| partitions_described(&topic, d))
        .ok_or_else(|| BrokerError::Nats {
            what: format!("opening stream {name} (topic {topic:?})"),
            why: format!(
                "its description {description:?} does not say its partitions: the stream was not made by Sluice"
            ),
        })?;
    let mut parts = Vec::with_capacity(partitions as usize);
    for p in 0..partitions {
        let filter = names::partition_filter(&topic, p);
        let part = Partition::default();
        part.end
            .store(partition_end(&stream, &topic, p).await?, Ordering::Relaxed);
        match stream.direct_get_next_for_subject(&filter, None).await {
            Ok(m) => part
                .start
                .store(offsets_of(&m, &name)?.0, Ordering::Relaxed),
            Err(e) if is_not_found_direct(&e) => {}
            Err(e) => return Err(failed(format!("reading the start of {topic}/{p}"))(&e)),
        }
        parts.push(part);
    }
    let atomic = stream.cached_info().config.allow_atomic_publish;
    Ok(Topic {
        limit: server.max_payload.saturating_sub(HEADER_ROOM),
        atomic,
        writer,
        js,
        stream,
        partitions: parts,
        appended: tokio::sync::watch::Sender::new(0),
    })
}

/// A Sluice stream's description: it carries the partition count.
fn describe(topic: &str, partitions: u32) -> String {
    format!("Sluice topic {topic:?}: {partitions} partitions")
}

/// The partition count a [`describe`]d description gives.
fn partitions_described(topic: &str, description: &str) -> Option<u32> {
    let rest = description.strip_prefix(&format!("Sluice topic {topic:?}: "))?;
    rest.strip_suffix(" partitions")?.parse().ok()
}

/// The first stream sequence from which the partition's next message is
/// the batch that holds `offset` (or a later one, if retention removed
/// it): a binary search over the stream's sequences.
pub(super) async fn seek(
    stream: &stream::Stream,
    filter: &str,
    offset: u64,
) -> Result<u64, BrokerError> {
    let name = stream.cached_info().config.name.clone();
    let info = stream
        .get_info()
        .await
        .map_err(nats_err(format!("reading stream {name}")))?;
    let (mut lo, mut hi) = (
        info.state.first_sequence.max(1),
        info.state.last_sequence + 1,
    );
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match stream.direct_get_next_for_subject(filter, Some(mid)).await {
            Ok(m) => {
                let (first, records) = offsets_of(&m, &name)?;
                if first + u64::from(records) > offset {
                    hi = mid;
                } else {
                    lo = m.sequence + 1;
                }
            }
            Err(e) if is_not_found_direct(&e) => hi = mid,
            Err(e) => return Err(failed(format!("reading stream {name}"))(&e)),
        }
    }
    Ok(lo)
}

/// A partition's end (the offset after its last record), through the
/// stream's leader.
pub(super) async fn partition_end(
    stream: &stream::Stream,
    topic: &str,
    partition: u32,
) -> Result<u64, BrokerError> {
    let filter = names::partition_filter(topic, partition);
    match stream.get_last_raw_message_by_subject(&filter).await {
        Ok(m) => {
            let (first, records) = offsets_of(&m, &names::stream(topic))?;
            Ok(first + u64::from(records))
        }
        Err(e) if is_not_found_last(&e) => Ok(0),
        Err(e) => Err(failed(format!("reading the end of {topic}/{partition}"))(
            &e,
        )),
    }
}

/// The last stream sequence on `subject`, 0 if it has none, through the
/// stream's leader.
async fn last_sequence(stream: &stream::Stream, subject: &str) -> Result<u64, BrokerError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(m.sequence),
        Err(e) if is_not_found_last(&e) => Ok(0),
        Err(e) => Err(failed(format!("reading the last message on {subject}"))(&e)),
    }
}

/// Writes one batch to a partition whose writer is held; returns its first
/// offset and its stream sequence.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write(
    t: &Topic,
    p: &Partition,
    w: &mut Writer,
    topic: &str,
    partition: u32,
    subject: &str,
    batch: &[u8],
    records: u32,
    checkpoint: Option<SourceCheckpoint<'_>>,
) -> Result<(u64, u64), BrokerError> {
    let first = match w.end {
        Some(end) => end,
        None => {
            let end = partition_end(&t.stream, topic, partition).await?;
            w.end = Some(end);
            p.end.store(end, Ordering::Release);
            end
        }
    };
    let chunks = if batch.len() as u64 <= t.limit {
        vec![(Bytes::copy_from_slice(batch), records)]
    } else if t.atomic {
        split(batch, t.limit).map_err(|e| BrokerError::Nats {
            what: format!("splitting a batch for {topic}/{partition}"),
            why: e.to_string(),
        })?
    } else {
        return Err(BrokerError::TooLarge {
            topic: topic.to_owned(),
            partition,
            bytes: batch.len() as u64,
            limit: t.limit,
        });
    };
    let expected = match checkpoint {
        Some(_) => Some(match w.last.get(subject) {
            Some(s) => *s,
            None => last_sequence(&t.stream, subject).await?,
        }),
        None => None,
    };
    // Several messages are one atomic batch (NATS 2.12): all are stored,
    // or none, so a crash never leaves part of a batch without its position.
    let parts = chunks.len();
    let batch_id = (parts > 1).then(|| format!("{}-{first}", names::token(subject)));
    let what = || format!("writing a batch to {topic}/{partition}");
    let mut offset = first;
    let mut acked = None;
    for (i, (payload, n)) in chunks.into_iter().enumerate() {
        let mut headers = HeaderMap::new();
        match &batch_id {
            None => headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{subject}/{first}/{:x}", t.writer).as_str(),
            ),
            Some(id) => {
                headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
                headers.insert(
                    async_nats::header::NATS_BATCH_SEQUENCE,
                    (i + 1).to_string().as_str(),
                );
            }
        }
        if let (0, Some(last)) = (i, expected) {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last.to_string().as_str(),
            );
        }
        headers.insert(OFFSET, offset.to_string().as_str());
        headers.insert(RECORDS, n.to_string().as_str());
        offset += u64::from(n);
        if i + 1 < parts {
            t.js.client()
                .publish_with_headers(subject.to_owned(), headers, payload)
                .await
                .map_err(nats_err(what()))?;
            continue;
        }
        if batch_id.is_some() {
            headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
        }
        if let Some(c) = checkpoint {
            headers.insert(POSITION, hex(c.position).as_str());
        }
        let ack =
            t.js.publish_with_headers(subject.to_owned(), headers, payload)
                .await
                .map_err(nats_err(what()))?
                .await;
        acked = Some(match ack {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                return Err(BrokerError::Fenced {
                    producer: checkpoint.map_or(NO_PRODUCER, |c| c.producer).to_owned(),
                    topic: topic.to_owned(),
                    partition,
                });
            }
            Err(e) => return Err(failed(what())(&e)),
        });
    }
    Ok((first, acked.expect("a batch has a last part")))
}

/// Splits a batch into batches of at most `limit` bytes where its records
/// allow (a record larger than that is a batch of its own), with their
/// record counts.
fn split(batch: &[u8], limit: u64) -> Result<Vec<(Bytes, u32)>, sluice_batch::BatchError> {
    // Parts of about equal size: a batch just over the limit makes two
    // halves, not a full message and a small one.
    let parts = (batch.len() as u64).div_ceil(limit);
    let target = (batch.len() as u64).div_ceil(parts).min(limit);
    let mut out = Vec::new();
    let mut part = BatchWriter::new();
    let mut records = Batch::parse(batch)?.iter();
    while let Some(record) = records.peek_encoded() {
        let size = (part.encoded_len() + record.len()) as u64;
        if !part.is_empty() && (size > limit || (part.encoded_len() as u64) >= target) {
            let count = part.len() as u32;
            out.push((Bytes::from(std::mem::take(&mut part).finish()), count));
        }
        part.push_encoded(record);
        records.next();
    }
    if !part.is_empty() {
        let count = part.len() as u32;
        out.push((Bytes::from(part.finish()), count));
    }
    Ok(out)
}

/// Reads whole batches of a partition from `offset` (the first one trimmed
/// to start there), up to about `max_bytes`, and remembers where it
/// stopped for the next read.
pub(super) async fn read(
    t: &Topic,
    p: &Partition,
    topic: &str,
    partition: u32,
    offset: u64,
    max_bytes: u64,
) -> Result<Vec<StoredBatch>, BrokerError> {
    let filter = names::partition_filter(topic, partition);
    let name = names::stream(topic);
    let mut sequence = match p.hint(offset) {
        Some(s) => s,
        None => seek(&t.stream, &filter, offset).await?,
    };
    let (mut out, mut next, mut bytes) = (Vec::new(), offset, 0u64);
    while bytes < max_bytes {
        let m = match t
            .stream
            .direct_get_next_for_subject(&filter, Some(sequence))
            .await
        {
            Ok(m) => m,
            Err(e) if is_not_found_direct(&e) => break,
            Err(e) => return Err(failed(format!("reading {topic}/{partition}"))(&e)),
        };
        let (first, records) = offsets_of(&m, &name)?;
        sequence = m.sequence + 1;
        let end = first + u64::from(records);
        if end <= next {
            continue;
        }
        let corrupt = |why: String| BrokerError::Nats {
            what: format!("reading message {} of stream {name}", m.sequence),
            why,
        };
        let batch = Batch::parse(&m.payload).map_err(|e| corrupt(format!("its batch: {e}")))?;
        if batch.len() != records as usize {
            return Err(corrupt(format!(
                "its batch holds {} records, its {RECORDS} header says {records}",
                batch.len()
            )));
        }
        let skip = next.saturating_sub(first) as usize;
        let (bytes_out, value_bytes) = if skip == 0 {
            (m.payload.to_vec(), batch.value_bytes())
        } else {
            let v = batch.iter().skip(skip).map(|r| r.value.len() as u64).sum();
            (batch.skip(skip), v)
        };
        bytes += bytes_out.len() as u64;
        out.push(StoredBatch {
            first_offset: first + skip as u64,
            records: records - skip as u32,
            value_bytes,
            bytes: bytes_out,
        });
        next = end;
    }
    p.remember(next, sequence);
    // Another host's appends (cluster mode) are learnt as they are read.
    p.end.fetch_max(next, Ordering::AcqRel);
    Ok(out)
}
