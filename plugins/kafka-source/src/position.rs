//! The source's position: the next offset of every partition it reads.
//!
//! ```text
//! position := version:u8(1) count:u32 (topic_len:u16 topic partition:i32 next:i64)…
//! ```
//! little-endian, partitions in order.

use std::collections::BTreeMap;

use sluice_kafka::TopicPartition;
use sluice_sdk::Error;

const VERSION: u8 = 1;

/// Encodes `next`.
pub fn encode(next: &BTreeMap<TopicPartition, i64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + next.len() * 24);
    out.push(VERSION);
    out.extend_from_slice(&(next.len() as u32).to_le_bytes());
    for (tp, offset) in next {
        let name = tp.topic.as_bytes();
        // Kafka topic names are at most 249 characters.
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&tp.partition.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

/// Decodes a position [`encode`] wrote.
pub fn decode(bytes: &[u8]) -> Result<BTreeMap<TopicPartition, i64>, Error> {
    let bad = || Error::fatal("the stored position is not a kafka-source position");
    let mut r = bytes;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        if r.len() < n {
            return Err(bad());
        }
        let (head, tail) = r.split_at(n);
        r = tail;
        Ok(head)
    };
    if take(1)? != [VERSION] {
        return Err(bad());
    }
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?);
    let mut next = BTreeMap::new();
    for _ in 0..count {
        let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?);
        let topic = std::str::from_utf8(take(len.into())?)
            .map_err(|_| bad())?
            .to_owned();
        let partition = i32::from_le_bytes(take(4)?.try_into().map_err(|_| bad())?);
        let offset = i64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
        next.insert(TopicPartition { topic, partition }, offset);
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn positions_round_trip_and_garbage_is_refused() {
        let mut next = BTreeMap::new();
        for (t, p, o) in [("a", 0, 5), ("a", 3, 0), ("orders.eu", 11, 1 << 40)] {
            next.insert(
                TopicPartition {
                    topic: t.into(),
                    partition: p,
                },
                o,
            );
        }
        assert_eq!(decode(&encode(&next)).unwrap(), next);
        assert!(decode(b"").is_err());
        assert!(decode(&encode(&next)[..10]).is_err());
        assert!(decode(&[2, 0, 0, 0, 0]).is_err());
    }
}
