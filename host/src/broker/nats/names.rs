//! How Sluice's names become NATS names.
//!
//! Topic, connector and producer names may hold characters that NATS gives
//! a meaning (`.` separates subject tokens; stream names refuse `.`, `*`,
//! `>` and spaces). Every name becomes one token of letters, digits and
//! `-`; any other byte is written `_XX` (its hex), `_` itself included, so
//! the mapping is one to one and can be read back.

/// `name` as one NATS token (a stream name part, a subject token, a key).
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// The stream that holds `topic`.
pub fn stream(topic: &str) -> String {
    format!("SLUICE_{}", token(topic))
}

/// Every subject of `topic`'s stream.
pub fn stream_subjects(topic: &str) -> String {
    format!("sluice.{}.>", token(topic))
}

/// The subjects of one partition: a subject per producer under it.
pub fn partition_filter(topic: &str, partition: u32) -> String {
    format!("sluice.{}.{partition}.*", token(topic))
}

/// The subject one producer writes in a partition.
pub fn subject(topic: &str, partition: u32, producer: &str) -> String {
    format!("sluice.{}.{partition}.{}", token(topic), token(producer))
}

/// The subjects one producer writes in any partition of `topic`.
pub fn producer_filter(topic: &str, producer: &str) -> String {
    format!("sluice.{}.*.{}", token(topic), token(producer))
}

/// The key of a group's committed offset in one partition.
pub fn offset_key(group: &str, topic: &str, partition: u32) -> String {
    format!("{}.{}.{partition}", token(group), token(topic))
}

/// The durable consumer through which `group` reads a partition (in the
/// topic's stream). `_p` never occurs in a [`token`] (`_` is followed by
/// two hex digits there), so the group's consumers are told by prefix.
pub fn consumer(group: &str, partition: u32) -> String {
    format!("{}{partition}", consumer_prefix(group))
}

/// The prefix of every consumer name of `group`.
pub fn consumer_prefix(group: &str) -> String {
    format!("{}_p", token(group))
}

/// The prefix of every key of `connector` (its offsets, its state).
pub fn key_prefix(connector: &str) -> String {
    format!("{}.", token(connector))
}

/// The key of one plugin-state key of `connector`.
pub fn state_key(connector: &str, key: &str) -> String {
    format!("{}.{}", token(connector), token(key))
}

/// Reads a [`token`] back; `None` if it is not one.
pub fn untoken(token: &str) -> Option<String> {
    let mut out = Vec::with_capacity(token.len());
    let mut bytes = token.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_hold_only_what_nats_allows_and_read_back() {
        for name in ["events", "public.users", "gen/0", "a_b", "é *>", ""] {
            let t = token(name);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{t}"
            );
            assert_eq!(untoken(&t).unwrap(), name);
        }
        assert_ne!(token("a.b"), token("a_b"));
        assert_eq!(
            subject("public.users", 2, "cdc/0"),
            "sluice.public_2Eusers.2.cdc_2F0"
        );
    }
}
