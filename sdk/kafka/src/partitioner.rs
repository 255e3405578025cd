//! The Java client's default partitioner for keyed records: murmur2 of the
//! key's bytes, made positive, modulo the partition count
//! (`org.apache.kafka.clients.producer.internals.BuiltInPartitioner`).
//! librdkafka's `murmur2_random` partitioner picks the same partitions.
//!
//! ```
//! use sluice_kafka::partitioner::partition_for_key;
//! // Every producer that follows the Java client puts "21" in partition 0
//! // of 6, and in partition 41 of 97.
//! assert_eq!(partition_for_key(b"21", 6), 0);
//! assert_eq!(partition_for_key(b"21", 97), 41);
//! ```

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`):
/// seed `0x9747b28c`, the key read as little-endian 4-byte words.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (i, b) in tail.iter().enumerate().rev() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `partitions` the Java client picks for a record with
/// `key`: `(murmur2(key) & 0x7fffffff) % partitions`. A record without a
/// key is not hashed (the Java client spreads those), so it has no place
/// here.
///
/// # Panics
/// If `partitions` is 0: a topic has at least one.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Java client's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }

    /// The partitions librdkafka's `murmur2_random` partitioner chose for
    /// these keys in topics of 6 and 97 partitions (its mock cluster,
    /// librdkafka 2.x through the `rdkafka` crate, 2026-11-30).
    #[test]
    fn partitions_match_librdkafka() {
        let cases: [(&[u8], u32, u32); 13] = [
            ("abc".as_bytes(), 3, 77),
            ("orders-1".as_bytes(), 3, 65),
            ("1".as_bytes(), 3, 25),
            ("21".as_bytes(), 0, 41),
            ("foobar".as_bytes(), 0, 13),
            ("hello world".as_bytes(), 1, 70),
            ("a-little-bit-long-string".as_bytes(), 2, 56),
            ("k".as_bytes(), 2, 50),
            ("0".as_bytes(), 2, 69),
            ("2".as_bytes(), 2, 47),
            ("a-little-bit-longer-string".as_bytes(), 5, 47),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8".as_bytes(),
                5,
                10,
            ),
            ("3".as_bytes(), 5, 87),
        ];
        for (key, of_6, of_97) in cases {
            let key_text = String::from_utf8_lossy(key);
            assert_eq!(partition_for_key(key, 6), of_6, "{key_text} of 6");
            assert_eq!(partition_for_key(key, 97), of_97, "{key_text} of 97");
        }
    }

    #[test]
    fn a_partition_is_within_the_count() {
        for n in 1..50 {
            assert!(partition_for_key(b"any key", n) < n);
        }
        assert_eq!(partition_for_key(b"", 1), 0);
    }
}
