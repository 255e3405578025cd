//! Routed appends: one source batch split over several partitions (a topic
//! per table), stored as one.
//!
//! A partition's frame carries the position of the batch it holds, so one
//! write makes a plain append durable. A routed batch is several writes, one
//! per partition; a crash between two of them must not leave some parts in
//! the log with the source's position behind them (a restart would send
//! those records again), nor the position ahead of parts that are missing.
//! So the whole batch is written ahead to the producer's journal first:
//!
//! ```text
//! <data_dir>/journal/<connector>/<instance>.<0|1>     two slots, used in turn
//!
//! record := magic "SLJ1"  crc32c:u32  body_len:u32  body
//! body   := seq:u64  position_len:u32 position  parts:u32 part*
//!           (position_len u32::MAX: no position)
//! part   := topic_len:u16 topic  partition:u32  base_offset:u64  records:u32
//!           batch_len:u32 batch
//! ```
//!
//! The record names the offset each part gets: the parts' partitions stay
//! locked from before the record is written until every part is in, so
//! nothing else can take those offsets, and no reader sees a part before
//! all are in. If a part cannot be appended (a full disk), the parts
//! already in are cut off again and the record taken back: the append
//! failed as a whole, and the source polls the batch again. If the process
//! dies instead, opening the log rolls the newest record forward: a part
//! whose partition ends at its offset was never written (nothing else could
//! append there) and is appended now. Records go to the two slots in turn,
//! so a write torn by a crash damages only the newer slot, whose parts were
//! never begun, and the older slot still holds the position before it.
//!
//! Once a producer has a journal, all its appends go through it: its
//! position lives there, not in its frames.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::io;
use super::segment::write_all_vectored;
use crate::broker::BrokerError;

/// The first four bytes of a journal record.
const MAGIC: [u8; 4] = *b"SLJ1";
/// Magic, checksum and body length.
const HEADER: usize = 12;
/// The position length of a record without a position.
const NO_POSITION: u32 = u32::MAX;

/// One part of a routed batch as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JournalPart {
    pub topic: String,
    pub partition: u32,
    /// The offset the part's first record gets.
    pub base_offset: u64,
    pub records: u32,
    pub batch: Vec<u8>,
}

/// A routed batch as the journal holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JournalRecord {
    /// Grows by one with every record the producer writes.
    pub seq: u64,
    /// The source's position after the batch (or the last one it gave, if
    /// it gave none with this batch).
    pub position: Option<Vec<u8>>,
    pub parts: Vec<JournalPart>,
}

/// A part to encode, borrowed from the caller.
pub(super) struct PartRef<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub base_offset: u64,
    pub records: u32,
    pub batch: &'a [u8],
}

/// A record to write: its fixed parts, encoded, and the batches between
/// them, borrowed (written with vectored I/O, never copied).
pub(super) struct Encoded<'a> {
    /// The record's head (magic, checksum, length, seq, position, part
    /// count), then each part's head.
    heads: Vec<Vec<u8>>,
    batches: Vec<&'a [u8]>,
}

impl Encoded<'_> {
    /// Its length in bytes.
    pub(super) fn len(&self) -> usize {
        self.heads.iter().map(Vec::len).sum::<usize>()
            + self.batches.iter().map(|b| b.len()).sum::<usize>()
    }

    /// The slices to write, in order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let mut out = Vec::with_capacity(self.heads.len() + self.batches.len());
        out.push(IoSlice::new(&self.heads[0]));
        for (head, batch) in self.heads[1..].iter().zip(&self.batches) {
            out.push(IoSlice::new(head));
            out.push(IoSlice::new(batch));
        }
        out
    }

    /// The whole record as one buffer (for tests).
    #[cfg(test)]
    pub(super) fn to_vec(&self) -> Vec<u8> {
        self.slices().iter().flat_map(|s| s.to_vec()).collect()
    }
}

/// Encodes a record, checksum included.
pub(super) fn encode<'a>(seq: u64, position: Option<&[u8]>, parts: &[PartRef<'a>]) -> Encoded<'a> {
    let part_heads: Vec<Vec<u8>> = parts
        .iter()
        .map(|p| {
            let mut h = Vec::with_capacity(2 + p.topic.len() + 20);
            h.extend_from_slice(&(p.topic.len() as u16).to_le_bytes());
            h.extend_from_slice(p.topic.as_bytes());
            h.extend_from_slice(&p.partition.to_le_bytes());
            h.extend_from_slice(&p.base_offset.to_le_bytes());
            h.extend_from_slice(&p.records.to_le_bytes());
            h.extend_from_slice(&(p.batch.len() as u32).to_le_bytes());
            h
        })
        .collect();
    let body_len = 8
        + 4
        + position.map_or(0, <[u8]>::len)
        + 4
        + part_heads.iter().map(Vec::len).sum::<usize>()
        + parts.iter().map(|p| p.batch.len()).sum::<usize>();
    let mut head = Vec::with_capacity(HEADER + 16 + position.map_or(0, <[u8]>::len));
    head.extend_from_slice(&MAGIC);
    head.extend_from_slice(&[0; 4]);
    head.extend_from_slice(&(body_len as u32).to_le_bytes());
    head.extend_from_slice(&seq.to_le_bytes());
    match position {
        Some(p) => {
            head.extend_from_slice(&(p.len() as u32).to_le_bytes());
            head.extend_from_slice(p);
        }
        None => head.extend_from_slice(&NO_POSITION.to_le_bytes()),
    }
    head.extend_from_slice(&(parts.len() as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&head[HEADER..]);
    for (h, p) in part_heads.iter().zip(parts) {
        crc = crc32c::crc32c_append(crc32c::crc32c_append(crc, h), p.batch);
    }
    head[4..8].copy_from_slice(&crc.to_le_bytes());
    let mut heads = Vec::with_capacity(1 + part_heads.len());
    heads.push(head);
    heads.extend(part_heads);
    Encoded {
        heads,
        batches: parts.iter().map(|p| p.batch).collect(),
    }
}

/// Decodes a slot's bytes; `None` if they hold no whole, valid record (a
/// slot never written, or a write torn by a crash).
pub(super) fn decode(bytes: &[u8]) -> Option<JournalRecord> {
    if bytes.len() < HEADER || bytes[..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[8..12].try_into().ok()?) as usize;
    let body = bytes.get(HEADER..HEADER + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let mut r = Reader(body);
    let seq = r.u64()?;
    let position = match r.u32()? {
        NO_POSITION => None,
        n => Some(r.take(n as usize)?.to_vec()),
    };
    let count = r.u32()?;
    let mut parts = Vec::new();
    for _ in 0..count {
        let n = r.u16()? as usize;
        let topic = String::from_utf8(r.take(n)?.to_vec()).ok()?;
        let partition = r.u32()?;
        let base_offset = r.u64()?;
        let records = r.u32()?;
        let n = r.u32()? as usize;
        let batch = r.take(n)?.to_vec();
        parts.push(JournalPart {
            topic,
            partition,
            base_offset,
            records,
            batch,
        });
    }
    Some(JournalRecord {
        seq,
        position,
        parts,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// One producer's journal: its two slot files.
#[derive(Debug)]
pub(super) struct Journal {
    slots: [(PathBuf, File); 2],
    /// The seq of the newest whole record, 0 if none.
    last_seq: u64,
    /// Set when a record that was not applied could not be made invalid:
    /// the journal refuses records until the log is reopened (which rolls
    /// that record forward), and so must the partitions it names.
    poisoned: Option<String>,
    /// Tests: the next write reaches the file, then fails (as a sync can).
    #[cfg(test)]
    pub(super) fail_after_write: bool,
    /// Tests: making a record invalid fails.
    #[cfg(test)]
    pub(super) fail_invalidate: bool,
}

/// Where the journal of `producer` (`<connector>/<instance>`) lives.
fn slot_paths(dir: &Path, producer: &str) -> [PathBuf; 2] {
    [0, 1].map(|i| dir.join(format!("{producer}.{i}")))
}

impl Journal {
    /// Opens (or creates) the journal of `producer` under `dir`; returns it
    /// with its newest whole record, if any.
    pub(super) fn open(
        dir: &Path,
        producer: &str,
    ) -> Result<(Journal, Option<JournalRecord>), BrokerError> {
        let paths = slot_paths(dir, producer);
        if let Some(parent) = paths[0].parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create journal folder", parent))?;
        }
        let mut newest: Option<JournalRecord> = None;
        let mut files = Vec::with_capacity(2);
        for path in paths {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io("cannot open journal", &path))?;
            let bytes = std::fs::read(&path).map_err(io("cannot read journal", &path))?;
            if let Some(r) = decode(&bytes)
                && newest.as_ref().is_none_or(|n| r.seq > n.seq)
            {
                newest = Some(r);
            }
            files.push((path, file));
        }
        let [a, b]: [(PathBuf, File); 2] = files.try_into().expect("two slots");
        let journal = Journal {
            slots: [a, b],
            last_seq: newest.as_ref().map_or(0, |r| r.seq),
            poisoned: None,
            #[cfg(test)]
            fail_after_write: false,
            #[cfg(test)]
            fail_invalidate: false,
        };
        Ok((journal, newest))
    }

    /// Writes `record` (encoded with the next seq) over the older slot,
    /// syncing it when `sync`. On success it is the newest record. On an
    /// error the slot may hold it whole all the same (a failed sync), so it
    /// is made invalid; if even that fails, the journal is poisoned (see
    /// [`Journal::poisoned`]) and the caller must keep the record's
    /// partitions from taking appends.
    pub(super) fn write(&mut self, record: &Encoded<'_>, sync: bool) -> Result<(), BrokerError> {
        self.refuse_if_poisoned()?;
        let seq = self.last_seq + 1;
        let slot = (seq % 2) as usize;
        let (path, file) = &self.slots[slot];
        let mut f = file;
        let written = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| write_all_vectored(&mut f, &mut record.slices()))
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        #[cfg(test)]
        let written = match written {
            Ok(()) if std::mem::take(&mut self.fail_after_write) => {
                Err(std::io::Error::other("test: the sync failed"))
            }
            other => other,
        };
        if let Err(e) = written {
            let e = io("cannot write journal", path)(e);
            self.invalidate(slot)?;
            return Err(e);
        }
        self.last_seq = seq;
        Ok(())
    }

    /// Takes back the newest record (its parts could not all be appended,
    /// and those that were have been cut off again): the slot before it is
    /// the newest again, and opening the log will not roll it forward.
    pub(super) fn discard_newest(&mut self) -> Result<(), BrokerError> {
        self.invalidate((self.last_seq % 2) as usize)?;
        self.last_seq -= 1;
        Ok(())
    }

    /// Why the journal refuses records, if it does.
    pub(super) fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn refuse_if_poisoned(&self) -> Result<(), BrokerError> {
        match &self.poisoned {
            Some(why) => Err(BrokerError::Io {
                what: "refusing to write after an earlier failure in",
                path: self.slots[0].0.clone(),
                source: std::io::Error::other(why.clone()),
            }),
            None => Ok(()),
        }
    }

    /// Overwrites a slot's magic, synced, so it holds no record.
    fn invalidate(&mut self, slot: usize) -> Result<(), BrokerError> {
        let (path, file) = &self.slots[slot];
        #[cfg(test)]
        let fail = self.fail_invalidate;
        #[cfg(not(test))]
        let fail = false;
        let done = if fail {
            Err(std::io::Error::other("test: the write failed"))
        } else {
            file.write_all_at(&[0; 4], 0)
                .and_then(|()| file.sync_data())
        };
        done.map_err(|e| {
            let e = io("cannot take back the journal record in", path)(e);
            self.poisoned = Some(format!(
                "{e}; the log finishes that record when it is opened again"
            ));
            e
        })
    }

    /// Syncs both slots.
    pub(super) fn sync(&self) -> Result<(), BrokerError> {
        for (path, file) in &self.slots {
            file.sync_data().map_err(io("cannot sync journal", path))?;
        }
        Ok(())
    }

    /// The seq the next record is written with.
    pub(super) fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }
}

/// The producers with a journal under `dir` (`<connector>/<instance>`).
pub(super) fn producers(dir: &Path) -> Result<Vec<String>, BrokerError> {
    let mut out = Vec::new();
    let connectors = match std::fs::read_dir(dir) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("cannot list", dir)(e)),
    };
    for c in connectors {
        let c = c.map_err(io("cannot list", dir))?;
        let Ok(connector) = c.file_name().into_string() else {
            continue;
        };
        let sub = dir.join(&connector);
        if !c.file_type().map_err(io("cannot list", dir))?.is_dir() {
            continue;
        }
        let slots = std::fs::read_dir(&sub).map_err(io("cannot list", &sub))?;
        let mut instances: HashMap<String, ()> = HashMap::new();
        for s in slots {
            let s = s.map_err(io("cannot list", &sub))?;
            if let Some(instance) = s
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".0").or_else(|| n.strip_suffix(".1")))
            {
                instances.insert(instance.to_owned(), ());
            }
        }
        out.extend(instances.into_keys().map(|i| format!("{connector}/{i}")));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn part<'a>(topic: &'a str, batch: &'a [u8]) -> PartRef<'a> {
        PartRef {
            topic,
            partition: 1,
            base_offset: 7,
            records: 2,
            batch,
        }
    }

    #[test]
    fn a_record_reads_back_and_a_torn_one_is_none() {
        let bytes = encode(
            3,
            Some(b"lsn"),
            &[part("public.a", b"aa"), part("public.b", b"b")],
        )
        .to_vec();
        let r = decode(&bytes).unwrap();
        assert_eq!(r.seq, 3);
        assert_eq!(r.position.as_deref(), Some(&b"lsn"[..]));
        let none = decode(&encode(4, None, &[]).to_vec()).unwrap();
        assert_eq!((none.seq, none.position), (4, None));
        assert_eq!(r.parts.len(), 2);
        assert_eq!(r.parts[1].topic, "public.b");
        assert_eq!(r.parts[1].batch, b"b");
        assert_eq!(r.parts[0].base_offset, 7);
        for cut in [0, 5, HEADER, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), None);
        // Longer garbage after a record (an older, longer one) is ignored.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[9; 40]);
        assert_eq!(decode(&longer), Some(r));
    }

    #[test]
    fn slots_take_turns_and_the_newest_whole_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, newest) = Journal::open(dir.path(), "cdc/0").unwrap();
        assert!(newest.is_none());
        for seq in 1..=3 {
            assert_eq!(j.next_seq(), seq);
            j.write(&encode(seq, Some(&[seq as u8]), &[]), false)
                .unwrap();
        }
        drop(j);
        let (j, newest) = Journal::open(dir.path(), "cdc/0").unwrap();
        assert_eq!(newest.unwrap().position, Some(vec![3]));
        assert_eq!(j.next_seq(), 4);
        // A torn write of seq 4 (slot 0) leaves seq 3 in slot 1.
        std::fs::write(dir.path().join("cdc/0.0"), b"SLJ1garbage").unwrap();
        let (j, newest) = Journal::open(dir.path(), "cdc/0").unwrap();
        assert_eq!(newest.unwrap().seq, 3);
        assert_eq!(j.next_seq(), 4);
        assert_eq!(producers(dir.path()).unwrap(), ["cdc/0"]);
    }
}
