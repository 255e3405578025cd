//! Offsets a sink stores itself, in the same transaction as its rows: what
//! makes a database sink exactly once.
//!
//! The host commits a sink's offsets only after `flush`, so after a crash
//! it hands again what was written since. A sink whose store has
//! transactions can do better: it writes each batch's rows *and the offset
//! after the batch* in one transaction, and returns those offsets from
//! `open` ([`Sink::stored_offsets`](crate::Sink::stored_offsets)); the host
//! then resumes from them, and each record's effect is in the store once.
//!
//! [`SinkOffsets`] keeps the bookkeeping that goes with it, the same for
//! every such sink:
//!
//! - what the store holds, read at each (re)connection
//!   ([`SinkOffsets::reload`]), so that a batch handed again is written from
//!   the first record the store lacks ([`SinkOffsets::plan`]);
//! - a try whose `COMMIT` went unanswered (the connection lost, the host
//!   interrupting the wait). It may have landed. If the offsets read on the
//!   next connection say it did, the batch is done, and the records that
//!   try refused are still owed to the host for the dead-letter topic:
//!   [`SinkOffsets::committing`] keeps them until then.
//!
//! ```
//! use sluice_sdk::sink_offsets::{Plan, SinkOffsets};
//! use sluice_sdk::Origin;
//!
//! let mut offsets = SinkOffsets::default();
//! // Read from the store at connection: this partition is done up to 100.
//! offsets.reload([vec![Some("events".to_owned()), Some("0".to_owned()), Some("100".to_owned())]]);
//! let origin = Origin { topic: "events".into(), partition: 0, first_offset: 90 };
//! match offsets.plan(&origin, 20) {
//!     // Records 0..10 of the batch are in the store already.
//!     Plan::Write { skip, next } => assert_eq!((skip, next), (10, 110)),
//!     Plan::Done(_) => unreachable!(),
//! }
//! offsets.committing(&origin, 110, &[(12, "a bad row".into())]);
//! offsets.committed(&origin, 110);
//! assert_eq!(offsets.stored()[0].next_offset, 110);
//! ```

use std::collections::HashMap;

use crate::{Origin, StoredOffset};

/// Records a try refused, by index in its batch, with why.
pub type Refused = Vec<(usize, String)>;

/// The offsets a sink's store holds, and the try whose commit is in doubt.
#[derive(Debug, Default)]
pub struct SinkOffsets {
    /// The next offset of each (topic, partition), as last read or written.
    stored: HashMap<(String, u32), u64>,
    /// A try whose commit went unanswered: its partition, the offset after
    /// its batch, and the records it refused.
    in_doubt: Option<((String, u32), u64, Refused)>,
}

/// What a write of a batch should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// The store holds the whole batch already (an unanswered commit
    /// landed): nothing to write; these are the records that try refused.
    Done(Refused),
    /// Write the batch from record `skip` on (the store has those before
    /// it), and store `next` as the offset after it.
    Write {
        /// Records at the start of the batch the store already holds.
        skip: usize,
        /// The offset after the batch.
        next: u64,
    },
}

impl SinkOffsets {
    /// Takes what the store holds, as rows of (topic, partition, next
    /// offset) in text, as SQL clients return them; rows that do not parse
    /// are left out.
    pub fn reload<R: AsRef<[Option<String>]>>(&mut self, rows: impl IntoIterator<Item = R>) {
        self.stored.clear();
        for row in rows {
            if let [Some(topic), Some(partition), Some(next)] = row.as_ref()
                && let (Ok(partition), Ok(next)) = (partition.parse(), next.parse())
            {
                self.stored.insert((topic.clone(), partition), next);
            }
        }
    }

    /// The offsets to return from `open`.
    pub fn stored(&self) -> Vec<StoredOffset> {
        self.stored
            .iter()
            .map(|((topic, partition), next)| StoredOffset {
                topic: topic.clone(),
                partition: *partition,
                next_offset: *next,
            })
            .collect()
    }

    /// What to do with a batch of `len` records from `origin`.
    pub fn plan(&mut self, origin: &Origin, len: usize) -> Plan {
        let key = (origin.topic.clone(), origin.partition);
        let done = self.stored.get(&key).copied().unwrap_or(0);
        let next = origin.first_offset + len as u64;
        if done >= next {
            // Committed already, by a try cut off before it heard so.
            return Plan::Done(match self.in_doubt.take() {
                Some((k, n, refused)) if k == key && n == next => refused,
                _ => Vec::new(),
            });
        }
        let skip = usize::try_from(done.saturating_sub(origin.first_offset)).unwrap_or(usize::MAX);
        Plan::Write { skip, next }
    }

    /// Says a try's `COMMIT` (storing `next` after `origin`'s batch) is
    /// about to go, with the records it refused: if its answer is lost,
    /// they are owed when the offsets say it landed.
    pub fn committing(&mut self, origin: &Origin, next: u64, refused: &[(usize, String)]) {
        self.in_doubt = Some((
            (origin.topic.clone(), origin.partition),
            next,
            refused.to_vec(),
        ));
    }

    /// Whether a `COMMIT` went and has not been answered.
    pub fn is_committing(&self) -> bool {
        self.in_doubt.is_some()
    }

    /// The `COMMIT` was answered: the store holds `next` after `origin`'s
    /// batch.
    pub fn committed(&mut self, origin: &Origin, next: u64) {
        self.in_doubt = None;
        self.stored
            .insert((origin.topic.clone(), origin.partition), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(first_offset: u64) -> Origin {
        Origin {
            topic: "t".into(),
            partition: 3,
            first_offset,
        }
    }

    #[test]
    fn a_commit_that_landed_unanswered_gives_back_its_refusals_once() {
        let mut offsets = SinkOffsets::default();
        assert_eq!(
            offsets.plan(&origin(0), 10),
            Plan::Write { skip: 0, next: 10 }
        );
        offsets.committing(&origin(0), 10, &[(4, "bad".into())]);
        assert!(offsets.is_committing());
        // The answer is lost; the next connection reads the offset: it landed.
        offsets.reload([["t", "3", "10"].map(|s| Some(s.to_owned()))]);
        assert_eq!(
            offsets.plan(&origin(0), 10),
            Plan::Done(vec![(4, "bad".into())])
        );
        assert_eq!(offsets.plan(&origin(0), 10), Plan::Done(vec![]));
        assert!(!offsets.is_committing());
    }

    #[test]
    fn a_batch_partly_stored_is_written_from_the_first_record_missing() {
        let mut offsets = SinkOffsets::default();
        offsets.reload([
            ["t", "3", "15"].map(|s| Some(s.to_owned())),
            ["t", "not a number", "1"].map(|s| Some(s.to_owned())),
        ]);
        assert_eq!(offsets.stored().len(), 1);
        assert_eq!(
            offsets.plan(&origin(10), 10),
            Plan::Write { skip: 5, next: 20 }
        );
        offsets.committed(&origin(10), 20);
        assert_eq!(offsets.stored()[0].next_offset, 20);
    }
}
