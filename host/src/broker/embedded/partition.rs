//! One partition of a topic: its segments, the index of their frames in
//! memory, appends to the active segment and rolling it, syncing, recovery
//! at open (a torn tail cut off), and finding the frames a read wants.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::segment::{self, FrameMeta};
use super::{LogConfig, io, sync_dir};
use crate::broker::{BrokerError, SourceCheckpoint};
use crate::manifest::{FsyncPolicy, TopicPolicy};

#[derive(Debug)]
pub(super) struct Segment {
    pub(super) base_offset: u64,
    pub(super) path: PathBuf,
    pub(super) reader: Arc<File>,
    pub(super) frames: Vec<FrameMeta>,
    /// Bytes in the file (for the active segment, see `Partition::active_len`).
    pub(super) len: u64,
    /// When its last frame was written; `None` while it is the active one.
    pub(super) closed_at: Option<SystemTime>,
}

#[derive(Debug)]
pub(super) struct Partition {
    pub(super) dir: PathBuf,
    pub(super) segments: Vec<Segment>,
    pub(super) writer: File,
    pub(super) active_len: u64,
    pub(super) next_offset: u64,
    pub(super) dirty: bool,
    /// Set when a write or sync failed in a way that may leave the file and
    /// the index disagreeing; the partition then refuses appends until the
    /// log is reopened (which recovers from the file).
    pub(super) failed: Option<String>,
}

pub(super) fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

impl Partition {
    /// Opens (or creates) a partition folder, recovering its segments.
    pub(super) fn open(
        dir: PathBuf,
        positions: &mut HashMap<String, Vec<u8>>,
    ) -> Result<Partition, BrokerError> {
        std::fs::create_dir_all(&dir).map_err(io("cannot create partition folder", &dir))?;
        let mut bases: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io("cannot list partition folder", &dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".log")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
            let path = dir.join(segment_name(0));
            File::create(&path).map_err(io("cannot create log segment", &path))?;
            sync_dir(&dir);
        }
        let mut segments = Vec::with_capacity(bases.len());
        let mut next_offset = bases[0];
        for (i, base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(*base));
            let last = i + 1 == bases.len();
            let scan = segment::scan(&path, last)?;
            if scan.torn_bytes > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    kept_bytes = scan.valid_len,
                    cut_bytes = scan.torn_bytes,
                    "cut a torn write off the end of the log (a crash during an append); \
                     the batch it held was never acknowledged"
                );
                segment::truncate(&path, scan.valid_len)
                    .map_err(io("cannot cut the torn tail of", &path))?;
            }
            if let Some(first) = scan.frames.first()
                && first.base_offset != next_offset
                && i > 0
            {
                return Err(BrokerError::Corrupt {
                    path,
                    byte: 0,
                    why: format!(
                        "segment starts at offset {} but the previous one ends at {next_offset}",
                        first.base_offset
                    ),
                });
            }
            if let Some(last_frame) = scan.frames.last() {
                next_offset = last_frame.base_offset + u64::from(last_frame.records);
            } else {
                next_offset = next_offset.max(*base);
            }
            for (producer, position) in scan.checkpoints {
                positions.insert(producer, position);
            }
            let reader = File::open(&path).map_err(io("cannot open log segment", &path))?;
            let closed_at = if last {
                None
            } else {
                // Its last write; failing that, now (keeping it longer).
                Some(
                    reader
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or_else(|_| SystemTime::now()),
                )
            };
            segments.push(Segment {
                base_offset: *base,
                path,
                reader: Arc::new(reader),
                frames: scan.frames,
                len: scan.valid_len,
                closed_at,
            });
        }
        let active = segments.last().expect("at least one segment");
        let writer = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .map_err(io("cannot open log segment for appending", &active.path))?;
        let active_len = writer
            .metadata()
            .map_err(io("cannot stat log segment", &active.path))?
            .len();
        Ok(Partition {
            dir,
            segments,
            writer,
            active_len,
            next_offset,
            dirty: false,
            failed: None,
        })
    }

    pub(super) fn append(
        &mut self,
        batch: &[u8],
        records: u32,
        checkpoint: Option<SourceCheckpoint<'_>>,
        config: &LogConfig,
    ) -> Result<u64, BrokerError> {
        if let Some(why) = &self.failed {
            return Err(BrokerError::Io {
                what: "refusing to append after an earlier failure in",
                path: self.dir.clone(),
                source: std::io::Error::other(why.clone()),
            });
        }
        if self.active_len >= config.segment_bytes {
            self.roll()?;
        }
        let base = self.next_offset;
        let (producer, position) = checkpoint.map_or(("", &[][..]), |c| (c.producer, c.position));
        let head = segment::encode_head(base, records, producer, position, batch);
        let frame_len = head.len() + batch.len();
        if let Err(e) = segment::write_frame(&mut self.writer, &head, batch) {
            // Leave no partial frame behind: a full disk must not tear the log.
            self.cut_back();
            return Err(io("cannot append to", self.active_path())(e));
        }
        if config.fsync == FsyncPolicy::Always {
            if let Err(e) = self.writer.sync_data() {
                // The frame is in the file but not acknowledged; appending
                // after it would give two frames one offset. Cut it off.
                self.cut_back();
                return Err(io("cannot sync", self.active_path())(e));
            }
        } else {
            self.dirty = true;
        }
        let seg = self.segments.last_mut().expect("at least one segment");
        seg.frames.push(FrameMeta {
            base_offset: base,
            records,
            file_pos: self.active_len,
            len: frame_len as u32,
        });
        self.active_len += frame_len as u64;
        self.next_offset += u64::from(records);
        Ok(base)
    }

    /// Cuts off the frame just appended at `base` (the last one), after a
    /// routed append failed in another partition; synced when `sync` (the
    /// frame was). If the file cannot be cut, the partition refuses appends
    /// until the log is reopened.
    pub(super) fn undo_append(&mut self, base: u64, sync: bool) {
        let seg = self.segments.last_mut().expect("at least one segment");
        let frame = seg.frames.pop().expect("the frame just appended");
        debug_assert_eq!(frame.base_offset, base, "only the last frame is undone");
        self.active_len = frame.file_pos;
        self.next_offset = base;
        self.cut_back();
        if sync
            && self.failed.is_none()
            && let Err(e) = self.writer.sync_data()
        {
            self.failed = Some(format!("a cut frame could not be synced: {e}"));
        }
    }

    /// The segment appends go to.
    pub(super) fn active_path(&self) -> &Path {
        &self.segments.last().expect("at least one segment").path
    }

    /// Cuts the active segment back to what the index holds, after a write
    /// that failed part-way; if even that fails, the partition refuses
    /// appends until the log is reopened (which recovers from the file).
    pub(super) fn cut_back(&mut self) {
        if let Err(cut) = self.writer.set_len(self.active_len) {
            self.failed = Some(format!("a partial frame could not be cut off: {cut}"));
        }
    }

    pub(super) fn roll(&mut self) -> Result<(), BrokerError> {
        self.writer
            .sync_data()
            .map_err(io("cannot sync", self.active_path()))?;
        let path = self.dir.join(segment_name(self.next_offset));
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("cannot create log segment", &path))?;
        sync_dir(&self.dir);
        let reader = File::open(&path).map_err(io("cannot open log segment", &path))?;
        let closed = self.segments.last_mut().expect("at least one segment");
        closed.len = self.active_len;
        closed.closed_at = Some(SystemTime::now());
        self.segments.push(Segment {
            base_offset: self.next_offset,
            path,
            reader: Arc::new(reader),
            frames: Vec::new(),
            len: 0,
            closed_at: None,
        });
        self.writer = writer;
        self.active_len = 0;
        self.dirty = false;
        Ok(())
    }

    pub(super) fn sync(&mut self) -> Result<(), BrokerError> {
        if self.dirty {
            self.writer
                .sync_data()
                .map_err(io("cannot sync", self.active_path()))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// The offset of the oldest record kept.
    pub(super) fn start_offset(&self) -> u64 {
        self.segments[0].base_offset
    }

    pub(super) fn segment_len(&self, i: usize) -> u64 {
        if i + 1 == self.segments.len() {
            self.active_len
        } else {
            self.segments[i].len
        }
    }

    /// Bytes held from `offset` to the end.
    pub(super) fn bytes_from(&self, offset: u64) -> u64 {
        let si = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let mut total = 0;
        for (i, seg) in self.segments.iter().enumerate().skip(si) {
            let len = self.segment_len(i);
            let fi = seg
                .frames
                .partition_point(|f| f.base_offset + u64::from(f.records) <= offset);
            total += len - seg.frames.get(fi).map_or(len, |f| f.file_pos);
        }
        total
    }

    /// How many of the oldest segments retention removes: closed segments
    /// below `committed` (the lowest offset a consumer group still needs),
    /// while the partition is over `retention_bytes` or the segment is older
    /// than `retention_age`.
    pub(super) fn expired(&self, committed: u64, policy: &TopicPolicy, now: SystemTime) -> usize {
        let mut size: u64 = (0..self.segments.len()).map(|i| self.segment_len(i)).sum();
        let mut n = 0;
        while n + 1 < self.segments.len() && self.segments[n + 1].base_offset <= committed {
            let seg = &self.segments[n];
            let too_big = policy.retention_bytes.is_some_and(|max| size > max);
            let too_old = policy.retention_age.is_some_and(|age| {
                seg.closed_at
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|d| d > age)
            });
            if !too_big && !too_old {
                break;
            }
            size -= seg.len;
            n += 1;
        }
        n
    }

    /// Frames to read for `offset`, up to about `max_bytes`.
    pub(super) fn locate(
        &self,
        offset: u64,
        max_bytes: u64,
    ) -> Vec<(Arc<File>, PathBuf, FrameMeta)> {
        let mut out = Vec::new();
        if offset >= self.next_offset {
            return out;
        }
        let si = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let mut bytes = 0u64;
        for seg in &self.segments[si..] {
            let fi = seg
                .frames
                .partition_point(|f| f.base_offset + u64::from(f.records) <= offset);
            for f in &seg.frames[fi..] {
                if !out.is_empty() && bytes + u64::from(f.len) > max_bytes {
                    return out;
                }
                bytes += u64::from(f.len);
                out.push((seg.reader.clone(), seg.path.clone(), *f));
            }
        }
        out
    }
}
