//! A topic's stream: how batches are stored as messages (their headers),
//! where each partition starts and ends, and finding the message that
//! holds an offset. See the parent module for the mapping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};

use sluice_batch::Batch;

use super::super::{BrokerError, StoredBatch};
use super::{failed, names, nats_err};

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
    /// Whether a write's expected last sequence may name other subjects
    /// than its own (`Nats-Expected-Last-Subject-Sequence-Subject`, 2.11
    /// and newer): then a write is checked against its whole partition.
    pub(super) partition_fence: bool,
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
            partition_fence: (major, minor) >= (2, 11),
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
    /// The server's `max_payload`: headers and payload of one message.
    pub(super) max_payload: u64,
    /// Whether the stream takes atomic batches (NATS 2.12): a larger batch
    /// is then stored as several messages, all or none.
    pub(super) atomic: bool,
    /// Whether writes are checked against their partition's last message
    /// (see [`Server::partition_fence`]).
    pub(super) partition_fence: bool,
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
    /// The partition's next offset and last message, as this host knows
    /// them; `None` when they must be read from the stream again (after a
    /// failed write, whose batch may or may not be stored).
    pub(super) tail: Option<Tail>,
    /// The last stream sequence on each producer's subject.
    pub(super) last: HashMap<String, u64>,
}

/// Where a partition ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tail {
    /// The offset after its last record.
    pub(super) end: u64,
    /// The stream sequence of its last message, 0 if it has none.
    pub(super) sequence: u64,
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

/// The first offset and record count of the batch in the message at
/// `sequence`, from its headers.
pub(super) fn offsets_of(
    headers: &HeaderMap,
    sequence: u64,
    stream: &str,
) -> Result<(u64, u32), BrokerError> {
    match (header(headers, OFFSET), header(headers, RECORDS)) {
        (Some(o), Some(n)) => Ok((o, n)),
        _ => Err(BrokerError::Nats {
            what: format!("reading message {sequence} of stream {stream}"),
            why: format!("it has no {OFFSET} and {RECORDS} headers: it was not written by Sluice"),
        }),
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
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
            Ok(m) => part.start.store(
                offsets_of(&m.headers, m.sequence, &name)?.0,
                Ordering::Relaxed,
            ),
            Err(e) if is_not_found_direct(&e) => {}
            Err(e) => return Err(failed(format!("reading the start of {topic}/{p}"))(&e)),
        }
        parts.push(part);
    }
    let atomic = stream.cached_info().config.allow_atomic_publish;
    Ok(Topic {
        limit: server.max_payload.saturating_sub(HEADER_ROOM),
        max_payload: server.max_payload,
        atomic,
        partition_fence: server.partition_fence,
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
                let (first, records) = offsets_of(&m.headers, m.sequence, &name)?;
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
    Ok(partition_tail(stream, topic, partition).await?.end)
}

/// A partition's end and last message, through the stream's leader.
pub(super) async fn partition_tail(
    stream: &stream::Stream,
    topic: &str,
    partition: u32,
) -> Result<Tail, BrokerError> {
    let filter = names::partition_filter(topic, partition);
    match stream.get_last_raw_message_by_subject(&filter).await {
        Ok(m) => {
            let (first, records) = offsets_of(&m.headers, m.sequence, &names::stream(topic))?;
            Ok(Tail {
                end: first + u64::from(records),
                sequence: m.sequence,
            })
        }
        Err(e) if is_not_found_last(&e) => Ok(Tail::default()),
        Err(e) => Err(failed(format!("reading the end of {topic}/{partition}"))(
            &e,
        )),
    }
}

/// The last stream sequence on `subject`, 0 if it has none, through the
/// stream's leader.
pub(super) async fn last_sequence(
    stream: &stream::Stream,
    subject: &str,
) -> Result<u64, BrokerError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(m.sequence),
        Err(e) if is_not_found_last(&e) => Ok(0),
        Err(e) => Err(failed(format!("reading the last message on {subject}"))(&e)),
    }
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
        let (first, records) = offsets_of(&m.headers, m.sequence, &name)?;
        sequence = m.sequence + 1;
        let end = first + u64::from(records);
        if end <= next {
            continue;
        }
        let batch = stored(&m.payload, first, records, next, m.sequence, &name)?;
        bytes += batch.bytes.len() as u64;
        out.push(batch);
        next = end;
    }
    p.remember(next, sequence);
    // Another host's appends (cluster mode) are learnt as they are read.
    p.end.fetch_max(next, Ordering::AcqRel);
    Ok(out)
}

/// The batch in a message's `payload` (its headers say `first` and
/// `records`), checked, and trimmed to start at `next` if it starts before.
pub(super) fn stored(
    payload: &[u8],
    first: u64,
    records: u32,
    next: u64,
    sequence: u64,
    stream: &str,
) -> Result<StoredBatch, BrokerError> {
    let corrupt = |why: String| BrokerError::Nats {
        what: format!("reading message {sequence} of stream {stream}"),
        why,
    };
    let batch = Batch::parse(payload).map_err(|e| corrupt(format!("its batch: {e}")))?;
    if batch.len() != records as usize {
        return Err(corrupt(format!(
            "its batch holds {} records, its {RECORDS} header says {records}",
            batch.len()
        )));
    }
    let skip = next.saturating_sub(first) as usize;
    let (bytes, value_bytes) = if skip == 0 {
        (payload.to_vec(), batch.value_bytes())
    } else {
        let v = batch.iter().skip(skip).map(|r| r.value.len() as u64).sum();
        (batch.skip(skip), v)
    };
    Ok(StoredBatch {
        first_offset: first + skip as u64,
        records: records - skip as u32,
        value_bytes,
        bytes,
    })
}
