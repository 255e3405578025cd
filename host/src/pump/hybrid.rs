//! A hybrid source's positions (Flink's `HybridSource`): a bounded source
//! runs first, over a backlog, until it ends; then a live source runs from
//! the point the first hands over (`${switch:timestamp_ms}` in its config:
//! the newest record timestamp the first stored).
//!
//! # Exactly once across the switch
//!
//! Every position a hybrid source stores with a batch is a
//! [`HybridPosition`]: which source wrote the batch, the newest record
//! timestamp the bounded source stored, and that source's own position.
//! The switch itself writes nothing. The live source's first batch is the
//! first stored with a live position, so until it is stored the stored
//! position is the bounded source's last. A host that dies in between
//! opens the bounded source there again; it has nothing more and ends at
//! once, and the switch happens again with the same hand-over (kept in the
//! stored position). The live source had stored nothing, so opening it
//! afresh again repeats nothing. Once a live batch is stored, a restart
//! opens only the live source, at its own position, with the same
//! hand-over.

use sluice_batch::Batch;

/// What a hybrid source stores as its position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HybridPosition {
    /// The live source wrote the batch (else the bounded one did).
    pub live: bool,
    /// The newest record timestamp the bounded source stored, in
    /// milliseconds since the epoch; `None` while none carried one.
    pub newest_ms: Option<i64>,
    /// The position of the source that wrote the batch, if it gave one.
    pub inner: Option<Vec<u8>>,
}

/// Marks a stored position as a hybrid source's, and its layout's version.
const MAGIC: &[u8; 4] = b"SLH1";

/// The stored position is not a hybrid source's.
#[derive(Debug, thiserror::Error)]
#[error(
    "the stored position of {producer} is not a hybrid source's ({why}): was the connector a \
     plain source before? Give the hybrid source a new name, or delete the old connector's data"
)]
pub struct NotHybrid {
    /// `<connector>/<instance>`.
    pub producer: String,
    why: &'static str,
}

impl HybridPosition {
    /// The bytes stored: `SLH1`, the phase (0 bounded, 1 live), the newest
    /// timestamp (i64 LE, `i64::MIN` for none), 1 if a position follows,
    /// and the position.
    pub fn encode(&self) -> Vec<u8> {
        let inner = self.inner.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(14 + inner.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::from(self.live));
        out.extend_from_slice(&self.newest_ms.unwrap_or(i64::MIN).to_le_bytes());
        out.push(u8::from(self.inner.is_some()));
        out.extend_from_slice(inner);
        out
    }

    /// Reads what [`HybridPosition::encode`] wrote for `producer`.
    pub fn decode(producer: &str, stored: &[u8]) -> Result<HybridPosition, NotHybrid> {
        let not = |why| NotHybrid {
            producer: producer.to_owned(),
            why,
        };
        let rest = stored.strip_prefix(MAGIC).ok_or(not("no hybrid mark"))?;
        let [phase, t0, t1, t2, t3, t4, t5, t6, t7, has, inner @ ..] = rest else {
            return Err(not("too short"));
        };
        let newest = i64::from_le_bytes([*t0, *t1, *t2, *t3, *t4, *t5, *t6, *t7]);
        Ok(HybridPosition {
            live: match phase {
                0 => false,
                1 => true,
                _ => return Err(not("unknown phase")),
            },
            newest_ms: (newest != i64::MIN).then_some(newest),
            inner: match has {
                0 if inner.is_empty() => None,
                1 => Some(inner.to_vec()),
                _ => return Err(not("malformed")),
            },
        })
    }

    /// The position to store after a batch the running source polled
    /// (`position`, its own, if it gave one) and the pump stores (`stored`,
    /// after the chain): the bounded source's batches move the newest
    /// timestamp on.
    pub fn after(&mut self, stored: &[u8], position: Option<&[u8]>) -> Vec<u8> {
        if !self.live
            && let Ok(batch) = Batch::parse(stored)
            && let Some(newest) = batch.iter().filter_map(|r| r.timestamp).max()
        {
            self.newest_ms = Some(self.newest_ms.map_or(newest, |n| n.max(newest)));
        }
        if let Some(p) = position {
            self.inner = Some(p.to_vec());
        }
        self.encode()
    }

    /// The position handed over at the switch: the newest timestamp the
    /// bounded source stored, else the time of the switch.
    pub fn switch_ms(&self) -> i64 {
        self.newest_ms.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_batch::BatchWriter;

    fn batch(timestamps: &[Option<i64>]) -> Vec<u8> {
        let mut w = BatchWriter::new();
        for &timestamp in timestamps {
            w.push_parts(None, timestamp, &[], |v| v.push(b'v'));
        }
        w.finish()
    }

    #[test]
    fn positions_read_back_as_written() {
        for p in [
            HybridPosition::default(),
            HybridPosition {
                live: true,
                newest_ms: Some(-5),
                inner: Some(Vec::new()),
            },
            HybridPosition {
                live: false,
                newest_ms: Some(1_767_225_600_000),
                inner: Some(b"\x00\x01offset".to_vec()),
            },
        ] {
            assert_eq!(HybridPosition::decode("p", &p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn a_plain_sources_position_is_refused_by_name() {
        let e = HybridPosition::decode("orders/0", &7u64.to_le_bytes()).unwrap_err();
        assert!(e.to_string().contains("orders/0"), "{e}");
        let mut cut = HybridPosition::default().encode();
        cut.pop();
        assert!(HybridPosition::decode("p", &cut).is_err());
    }

    #[test]
    fn the_bounded_phase_keeps_the_newest_timestamp_and_the_last_position() {
        let mut at = HybridPosition::default();
        at.after(&batch(&[Some(5), None, Some(9), Some(7)]), Some(b"a"));
        // A batch without a position keeps the one before.
        at.after(&batch(&[Some(3)]), None);
        assert_eq!(
            (at.newest_ms, at.inner.as_deref()),
            (Some(9), Some(&b"a"[..]))
        );
        assert_eq!(at.switch_ms(), 9);
        // The live source's records hand nothing over.
        at.live = true;
        at.after(&batch(&[Some(100)]), Some(b"b"));
        assert_eq!(
            (at.newest_ms, at.inner.as_deref()),
            (Some(9), Some(&b"b"[..]))
        );
    }
}
