//! Writing a batch to a partition: its messages and their headers, the
//! checks the server makes on them (fencing), and the split of a batch
//! larger than one message. See the parent module for the mapping.

use std::sync::atomic::Ordering;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use sluice_batch::{Batch, BatchWriter};

use super::super::{BrokerError, SourceCheckpoint};
use super::topic::{
    OFFSET, POSITION, Partition, RECORDS, Topic, Writer, hex, last_sequence, partition_tail,
};
use super::{NO_PRODUCER, failed, names, nats_err};
use NotSent::{Failed, Refused};

/// At most the bytes of a write's headers besides two subjects' worth
/// (in the message id and the expected sequence's subjects) and the
/// position (hex): their names, the numbers, the framing.
const WRITE_HEADERS: u64 = 320;

/// A partition's writes are tried again this many times when other
/// producers' writes keep coming first.
const RACES: u32 = 20;

/// Writes one batch to a partition whose writer is held; returns its first
/// offset and its stream sequence.
///
/// Each write is checked by the server against what this writer knows:
/// on NATS 2.11 and newer, the partition's last message (so that two
/// producers on two hosts writing one partition never number the same
/// offsets: the one that finds another's write first reads the end again
/// and writes after it); before, its own subject's last message. A write
/// refused while the producer's own subject has moved on is a zombie's:
/// [`BrokerError::Fenced`].
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
    // One message when the batch and the headers this write gives it fit:
    // a batch of 1000 records of 1 KiB is just under 1 MiB, and split in
    // two (an atomic batch) it was stored at half the speed.
    let headers = WRITE_HEADERS
        + 2 * subject.len() as u64
        + 2 * checkpoint.map_or(0, |c| c.position.len() as u64);
    let chunks = if batch.len() as u64 + headers <= t.max_payload {
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
    let fenced = || BrokerError::Fenced {
        producer: checkpoint.map_or(NO_PRODUCER, |c| c.producer).to_owned(),
        topic: topic.to_owned(),
        partition,
    };
    let mut race = 0;
    loop {
        let tail = match w.tail {
            Some(tail) => tail,
            None => {
                let tail = partition_tail(&t.stream, topic, partition).await?;
                w.tail = Some(tail);
                p.end.store(tail.end, Ordering::Release);
                tail
            }
        };
        let own = match checkpoint {
            Some(_) => Some(match w.last.get(subject) {
                Some(s) => *s,
                None => {
                    // Kept, so that a retry expects the same: a write that
                    // lands on this subject meanwhile is a zombie's.
                    let s = last_sequence(&t.stream, subject).await?;
                    w.last.insert(subject.to_owned(), s);
                    s
                }
            }),
            None => None,
        };
        let fence = if t.partition_fence {
            Some((
                tail.sequence,
                Some(names::partition_filter(topic, partition)),
            ))
        } else {
            own.map(|s| (s, None))
        };
        match send(
            t, topic, partition, subject, &chunks, tail.end, fence, checkpoint,
        )
        .await
        {
            Ok(sequence) => return Ok((tail.end, sequence)),
            Err(Refused) if !t.partition_fence => return Err(fenced()),
            Err(Refused) => {
                // Someone else wrote the partition: another producer (go
                // on after it), or another instance as this producer.
                let now = partition_tail(&t.stream, topic, partition).await?;
                if let Some(own) = own
                    && last_sequence(&t.stream, subject).await? != own
                {
                    return Err(fenced());
                }
                race += 1;
                if race > RACES {
                    return Err(BrokerError::Nats {
                        what: format!("writing a batch to {topic}/{partition}"),
                        why: format!("other producers' writes came first {RACES} times in a row"),
                    });
                }
                w.tail = Some(now);
                p.end.store(now.end, Ordering::Release);
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(race))).await;
            }
            Err(Failed(e)) => return Err(e),
        }
    }
}

/// The id of an atomic batch: unique among the batches open on a stream
/// (this writer's, on this subject, from this offset), and within the 64
/// characters the server allows, whatever the subject's length.
fn batch_id(writer: u64, subject: &str, first: u64) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::hash::DefaultHasher::new();
    subject.hash(&mut hasher);
    format!("{writer:x}-{:x}-{first}", hasher.finish())
}

/// Why [`send`] did not store a batch.
enum NotSent {
    /// The server found another last sequence than the expected one.
    Refused,
    Failed(BrokerError),
}

/// Sends a batch's messages, the first offset `first`, expecting `fence`
/// (a last sequence, on the subjects named or the message's own); returns
/// the last message's stream sequence.
#[allow(clippy::too_many_arguments)]
async fn send(
    t: &Topic,
    topic: &str,
    partition: u32,
    subject: &str,
    chunks: &[(Bytes, u32)],
    first: u64,
    fence: Option<(u64, Option<String>)>,
    checkpoint: Option<SourceCheckpoint<'_>>,
) -> Result<u64, NotSent> {
    // Several messages are one atomic batch (NATS 2.12): all are stored,
    // or none, so a crash never leaves part of a batch without its position.
    let parts = chunks.len();
    let batch_id = (parts > 1).then(|| batch_id(t.writer, subject, first));
    let what = || format!("writing a batch to {topic}/{partition}");
    let mut offset = first;
    for (i, (payload, n)) in chunks.iter().enumerate() {
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
        if let (0, Some((last, on))) = (i, &fence) {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                last.to_string().as_str(),
            );
            if let Some(on) = on {
                headers.insert(EXPECTED_ON, on.as_str());
            }
        }
        headers.insert(OFFSET, offset.to_string().as_str());
        headers.insert(RECORDS, n.to_string().as_str());
        offset += u64::from(*n);
        if i + 1 < parts {
            t.js.client()
                .publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await
                .map_err(|e| Failed(nats_err(what())(e)))?;
            continue;
        }
        if batch_id.is_some() {
            headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
        }
        if let Some(c) = checkpoint {
            headers.insert(POSITION, hex(c.position).as_str());
        }
        let ack =
            t.js.publish_with_headers(subject.to_owned(), headers, payload.clone())
                .await
                .map_err(|e| Failed(nats_err(what())(e)))?
                .await;
        return match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Err(Refused)
            }
            Err(e) => Err(Failed(failed(what())(&e))),
        };
    }
    unreachable!("a batch has at least one part")
}

/// The header that names the subjects a write's expected last sequence is
/// of (NATS 2.11).
const EXPECTED_ON: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

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

#[cfg(test)]
mod tests {
    use super::batch_id;

    #[test]
    fn a_batch_id_fits_the_servers_64_characters_and_differs_by_subject() {
        let long = format!("sluice.{}.0.{}", "t".repeat(200), "p".repeat(200));
        let id = batch_id(u64::MAX, &long, u64::MAX);
        assert!(id.len() <= 64, "{id} is {} long", id.len());
        assert_ne!(id, batch_id(u64::MAX, "sluice.t.0.p", u64::MAX));
        assert_ne!(id, batch_id(u64::MAX, &long, u64::MAX - 1));
    }
}
