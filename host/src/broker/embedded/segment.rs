//! The on-disk frame format of the embedded log, and recovery scans.
//!
//! A segment file is a sequence of frames, one per appended batch:
//!
//! ```text
//! frame   := magic "SLF1"  crc32c:u32  body_len:u32  body
//! body    := base_offset:u64  records:u32
//!            producer_len:u16 producer   (empty: no source checkpoint)
//!            position_len:u32 position
//!            batch                        (the Sluice batch format, as sent)
//! ```
//!
//! All integers are little-endian; the CRC-32C covers the body. The batch is
//! stored exactly as the source plugin encoded it, so reading it back for a
//! sink needs no re-encoding. The source's position travels in the same
//! frame as the batch it follows: one write makes both durable.

use std::fs::File;
use std::io::{BufReader, IoSlice, Read, Write};
use std::path::Path;

use super::super::BrokerError;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SLF1";
/// Magic, checksum and body length.
pub const FRAME_HEADER: usize = 12;
/// base offset, record count, producer length, position length.
const BODY_FIXED: usize = 8 + 4 + 2 + 4;

/// Where a frame sits in its segment.
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    /// Offset of its first record.
    pub base_offset: u64,
    /// Records in it.
    pub records: u32,
    /// Byte position of the frame in the file.
    pub file_pos: u64,
    /// Total frame length in bytes, header included.
    pub len: u32,
}

/// Encodes one frame's head: everything before the batch, with the
/// checksum over the whole body (head and batch). The batch itself is not
/// copied: [`write_frame`] writes the two together.
pub fn encode_head(
    base_offset: u64,
    records: u32,
    producer: &str,
    position: &[u8],
    batch: &[u8],
) -> Vec<u8> {
    let body_len = BODY_FIXED + producer.len() + position.len() + batch.len();
    let mut f = Vec::with_capacity(FRAME_HEADER + BODY_FIXED + producer.len() + position.len());
    f.extend_from_slice(&MAGIC);
    f.extend_from_slice(&[0; 4]); // checksum, filled in below
    f.extend_from_slice(&(body_len as u32).to_le_bytes());
    f.extend_from_slice(&base_offset.to_le_bytes());
    f.extend_from_slice(&records.to_le_bytes());
    f.extend_from_slice(&(producer.len() as u16).to_le_bytes());
    f.extend_from_slice(producer.as_bytes());
    f.extend_from_slice(&(position.len() as u32).to_le_bytes());
    f.extend_from_slice(position);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f[FRAME_HEADER..]), batch);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

/// Writes a frame (its head, then its batch) with vectored writes, so the
/// batch goes to the file without being copied into a frame first.
pub fn write_frame(w: &mut impl Write, head: &[u8], batch: &[u8]) -> std::io::Result<()> {
    write_all_vectored(w, &mut [IoSlice::new(head), IoSlice::new(batch)])
}

/// Writes every slice, in order, however many calls it takes.
pub(super) fn write_all_vectored(
    w: &mut impl Write,
    slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let mut left = slices;
    while !left.is_empty() {
        match w.write_vectored(left) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut left, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A decoded frame body.
#[derive(Debug)]
pub struct Body<'a> {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Records.
    pub records: u32,
    /// `<connector>/<instance>` of the source, or empty.
    pub producer: &'a str,
    /// The source's position after this batch.
    pub position: &'a [u8],
    /// The batch.
    pub batch: &'a [u8],
}

/// Decodes a frame body whose checksum has been verified.
pub fn decode_body(body: &[u8]) -> Result<Body<'_>, String> {
    let short = || "frame body too short".to_owned();
    let get = |at: usize, n: usize| body.get(at..at + n).ok_or_else(short);
    let base_offset = u64::from_le_bytes(get(0, 8)?.try_into().map_err(|_| short())?);
    let records = u32::from_le_bytes(get(8, 4)?.try_into().map_err(|_| short())?);
    let plen = u16::from_le_bytes(get(12, 2)?.try_into().map_err(|_| short())?) as usize;
    let producer =
        std::str::from_utf8(get(14, plen)?).map_err(|_| "producer is not UTF-8".to_owned())?;
    let at = 14 + plen;
    let poslen = u32::from_le_bytes(get(at, 4)?.try_into().map_err(|_| short())?) as usize;
    let position = get(at + 4, poslen)?;
    let batch = &body[at + 4 + poslen..];
    Ok(Body {
        base_offset,
        records,
        producer,
        position,
        batch,
    })
}

/// Checks a frame read from `pos` and returns its body.
pub fn verify<'a>(frame: &'a [u8], path: &Path, pos: u64) -> Result<Body<'a>, BrokerError> {
    let corrupt = |why: String| BrokerError::Corrupt {
        path: path.to_path_buf(),
        byte: pos,
        why,
    };
    if frame.len() < FRAME_HEADER || frame[..4] != MAGIC {
        return Err(corrupt("no frame starts here".into()));
    }
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let body = &frame[FRAME_HEADER..];
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    decode_body(body).map_err(corrupt)
}

/// What scanning a segment found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every whole frame, in order.
    pub frames: Vec<FrameMeta>,
    /// `(producer, position)` of frames carrying a checkpoint, in order.
    pub checkpoints: Vec<(String, Vec<u8>)>,
    /// Length of the file up to the end of the last whole frame.
    pub valid_len: u64,
    /// Bytes after `valid_len` that are a torn write (only for the last
    /// segment); the caller cuts them off.
    pub torn_bytes: u64,
}

/// Scans a segment. `last` marks the segment being appended to: only there
/// can a crash leave a partly written frame, which is reported as torn and
/// not as corruption. Damage followed by more data is corruption anywhere.
pub fn scan(path: &Path, last: bool) -> Result<Scan, BrokerError> {
    let io = |what, source| BrokerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| io("cannot open log segment", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| io("cannot stat log segment", e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut scan = Scan::default();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < file_len {
        let remaining = file_len - pos;
        let corrupt = |why: &str| BrokerError::Corrupt {
            path: path.to_path_buf(),
            byte: pos,
            why: why.to_owned(),
        };
        let mut header = [0u8; FRAME_HEADER];
        if remaining < FRAME_HEADER as u64 {
            if last {
                scan.torn_bytes = remaining;
                break;
            }
            return Err(corrupt(
                "a partial frame header at the end of a closed segment",
            ));
        }
        r.read_exact(&mut header)
            .map_err(|e| io("cannot read log segment", e))?;
        if header[..4] != MAGIC {
            if last
                && !valid_frame_after(path, pos).map_err(|e| io("cannot read log segment", e))?
            {
                scan.torn_bytes = remaining;
                break;
            }
            return Err(corrupt("no frame starts here"));
        }
        let body_len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as u64;
        let frame_end = pos + FRAME_HEADER as u64 + body_len;
        if frame_end > file_len {
            if last {
                scan.torn_bytes = remaining;
                break;
            }
            return Err(corrupt("a frame runs past the end of a closed segment"));
        }
        buf.resize(body_len as usize, 0);
        r.read_exact(&mut buf)
            .map_err(|e| io("cannot read log segment", e))?;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if crc32c::crc32c(&buf) != crc {
            if last
                && !valid_frame_after(path, pos + 1)
                    .map_err(|e| io("cannot read log segment", e))?
            {
                scan.torn_bytes = remaining;
                break;
            }
            return Err(corrupt("checksum mismatch"));
        }
        let body = decode_body(&buf).map_err(|why| corrupt(&why))?;
        if let Some(prev) = scan.frames.last()
            && body.base_offset != prev.base_offset + u64::from(prev.records)
        {
            return Err(corrupt("offsets do not follow on from the previous frame"));
        }
        if !body.producer.is_empty() {
            scan.checkpoints
                .push((body.producer.to_owned(), body.position.to_vec()));
        }
        scan.frames.push(FrameMeta {
            base_offset: body.base_offset,
            records: body.records,
            file_pos: pos,
            len: (FRAME_HEADER as u64 + body_len) as u32,
        });
        pos = frame_end;
    }
    scan.valid_len = pos;
    Ok(scan)
}

/// True if a whole, valid frame starts anywhere at or after `from`. Damage
/// in the last segment with nothing valid after it is a torn write (a crash
/// during an append, or pages a power loss never wrote); damage followed by
/// good data is corruption, and is never cut off silently.
fn valid_frame_after(path: &Path, from: u64) -> std::io::Result<bool> {
    let bytes = std::fs::read(path)?;
    let start = usize::try_from(from).unwrap_or(usize::MAX).min(bytes.len());
    let mut at = start;
    while let Some(i) = bytes[at..].windows(4).position(|w| w == MAGIC) {
        let pos = at + i;
        let frame = &bytes[pos..];
        if frame.len() >= FRAME_HEADER {
            let body_len = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]) as usize;
            let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if let Some(body) = frame.get(FRAME_HEADER..FRAME_HEADER + body_len)
                && crc32c::crc32c(body) == crc
            {
                return Ok(true);
            }
        }
        at = pos + 1;
    }
    Ok(false)
}

/// Reads one frame at `meta` from `file`.
pub fn read_frame(file: &File, meta: &FrameMeta) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; meta.len as usize];
    file.read_exact_at(&mut buf, meta.file_pos)?;
    Ok(buf)
}

/// Cuts a torn tail off the end of `path`.
pub fn truncate(path: &Path, len: u64) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.set_len(len)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Takes at most `per_call` bytes of the first slice each call, and
    /// is interrupted once first, as a slow or signalled file might be.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        interrupted: bool,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.per_call);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_frame_written_in_pieces_reads_back_whole() {
        let batch = b"\x01\x00\x00\x00\x00";
        let head = encode_head(7, 0, "gen/0", b"pos", batch);
        let mut w = Trickle {
            out: Vec::new(),
            per_call: 3,
            interrupted: false,
        };
        write_frame(&mut w, &head, batch).unwrap();
        assert_eq!(w.out.len(), head.len() + batch.len());
        let body = verify(&w.out, Path::new("seg"), 0).unwrap();
        assert_eq!(body.base_offset, 7);
        assert_eq!(body.producer, "gen/0");
        assert_eq!(body.position, b"pos");
        assert_eq!(body.batch, batch);
    }

    #[test]
    fn a_writer_that_takes_nothing_is_an_error_not_a_loop() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let head = encode_head(0, 0, "", b"", b"x");
        let e = write_frame(&mut Full, &head, b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WriteZero);
    }
}
