//! The Sluice batch format, version 1.
//!
//! A batch is the unit that crosses every boundary in Sluice: plugin to host,
//! host to the embedded log, log to plugin. It travels as one flat byte buffer
//! rather than a list of typed records because a flat `list<u8>` crosses the
//! WebAssembly component boundary roughly fifteen times faster, and because the
//! embedded log stores exactly these bytes, so a batch goes from a source to
//! disk to a sink without being re-encoded.
//!
//! The layout (all integers little-endian) is specified in
//! `docs/batch-format.md`; in short:
//!
//! ```text
//! batch   := version:u8 (=1) count:u32 record*
//! record  := len:u32 body            (len = size of body in bytes)
//! body    := timestamp:i64 (i64::MIN = none)
//!            key_len:u32 (u32::MAX = null key) key
//!            value_len:u32 value
//!            header_count:u16 header*
//! header  := name_len:u16 name(UTF-8) value_len:u32 value
//! ```
//!
//! [`BatchWriter`] builds a batch, [`Batch::parse`] checks one completely
//! (every length in bounds, every header name UTF-8) so that iterating it
//! afterwards cannot fail.

use std::fmt;

/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes before the first record: version and count.
pub const HEADER_LEN: usize = 5;

/// Fixed bytes in a record besides key, value and headers:
/// length prefix, timestamp, key length, value length, header count.
pub const RECORD_OVERHEAD: usize = 4 + 8 + 4 + 4 + 2;

const NULL_KEY: u32 = u32::MAX;
const NO_TIMESTAMP: i64 = i64::MIN;

/// Why a buffer is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchError {
    /// The buffer is shorter than the 5-byte batch header.
    TooShort,
    /// The version byte names a format this crate does not know.
    UnsupportedVersion(u8),
    /// A length field points past the end of the buffer or its record.
    Truncated {
        /// Index of the record being read.
        record: u32,
    },
    /// The records do not fill the buffer exactly.
    TrailingBytes {
        /// How many bytes are left over.
        extra: usize,
    },
    /// A header name is not UTF-8.
    HeaderNameNotUtf8 {
        /// Index of the record being read.
        record: u32,
    },
    /// The batch holds more records than the format can count.
    TooManyRecords,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::TooShort => write!(f, "batch shorter than its {HEADER_LEN}-byte header"),
            BatchError::UnsupportedVersion(v) => write!(
                f,
                "batch format version {v} is not supported (this build speaks version {FORMAT_VERSION})"
            ),
            BatchError::Truncated { record } => {
                write!(f, "record {record} runs past the end of the batch")
            }
            BatchError::TrailingBytes { extra } => {
                write!(f, "{extra} bytes after the last record")
            }
            BatchError::HeaderNameNotUtf8 { record } => {
                write!(f, "record {record} has a header name that is not UTF-8")
            }
            BatchError::TooManyRecords => write!(f, "more than {} records in one batch", u32::MAX),
        }
    }
}

impl std::error::Error for BatchError {}

/// One record, borrowed from a batch or from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch, if set.
    pub timestamp: Option<i64>,
    headers: Headers<'a>,
}

impl<'a> RecordRef<'a> {
    /// A record with only a value.
    pub fn value(value: &'a [u8]) -> Self {
        RecordRef {
            key: None,
            value,
            timestamp: None,
            headers: Headers::Empty,
        }
    }

    /// The record's headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        match self.headers {
            Headers::Empty => HeaderIter::Encoded { buf: &[], left: 0 },
            Headers::Encoded { buf, count } => HeaderIter::Encoded { buf, left: count },
            Headers::Slice(s) => HeaderIter::Slice(s.iter()),
        }
    }

    /// Turns the borrowed record into an owned [`Record`].
    pub fn to_owned(&self) -> Record {
        Record {
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.to_vec(),
            timestamp: self.timestamp,
            headers: self
                .headers()
                .map(|(k, v)| (k.to_owned(), v.to_vec()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers<'a> {
    Empty,
    /// Already checked by [`Batch::parse`].
    Encoded {
        buf: &'a [u8],
        count: u16,
    },
    Slice(&'a [(&'a str, &'a [u8])]),
}

/// Iterator over a record's headers as `(name, value)`.
#[derive(Debug, Clone)]
pub enum HeaderIter<'a> {
    #[doc(hidden)]
    Encoded { buf: &'a [u8], left: u16 },
    #[doc(hidden)]
    Slice(std::slice::Iter<'a, (&'a str, &'a [u8])>),
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            HeaderIter::Slice(it) => it.next().copied(),
            HeaderIter::Encoded { buf, left } => {
                if *left == 0 {
                    return None;
                }
                *left -= 1;
                // Bounds and UTF-8 were checked when the batch was parsed.
                let mut cur = Cursor { buf, pos: 0 };
                let name_len = cur.u16()? as usize;
                let name = std::str::from_utf8(cur.take(name_len)?).ok()?;
                let value_len = cur.u32()? as usize;
                let value = cur.take(value_len)?;
                *buf = &buf[cur.pos..];
                Some((name, value))
            }
        }
    }
}

/// An owned record, for code that keeps records around.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The record's key, if it has one.
    pub key: Option<Vec<u8>>,
    /// The record's value.
    pub value: Vec<u8>,
    /// Milliseconds since the Unix epoch, if set.
    pub timestamp: Option<i64>,
    /// `(name, value)` pairs, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// A record with only a value.
    pub fn from_value(value: impl Into<Vec<u8>>) -> Self {
        Record {
            value: value.into(),
            ..Record::default()
        }
    }
}

/// Builds a batch record by record.
#[derive(Debug, Clone)]
pub struct BatchWriter {
    buf: Vec<u8>,
    count: u32,
}

impl Default for BatchWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchWriter {
    /// An empty batch.
    pub fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty batch whose buffer has room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes);
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        BatchWriter { buf, count: 0 }
    }

    /// An empty batch written into `buf` (cleared first), to reuse a
    /// buffer whose pages are already mapped.
    pub fn reuse(mut buf: Vec<u8>) -> Self {
        buf.clear();
        buf.push(FORMAT_VERSION);
        buf.extend_from_slice(&0u32.to_le_bytes());
        BatchWriter { buf, count: 0 }
    }

    /// Number of records written so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when no record has been written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Size of the encoded batch so far, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record.
    pub fn push(&mut self, record: RecordRef<'_>) {
        let headers: Vec<(&str, &[u8])> = record.headers().collect();
        self.push_parts(record.key, record.timestamp, &headers, |v| {
            v.extend_from_slice(record.value)
        });
    }

    /// Appends an owned record.
    pub fn push_record(&mut self, record: &Record) {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        self.push_parts(record.key.as_deref(), record.timestamp, &headers, |v| {
            v.extend_from_slice(&record.value)
        });
    }

    /// Appends a record with only a value.
    pub fn push_value(&mut self, value: &[u8]) {
        self.push_parts(None, None, &[], |v| v.extend_from_slice(value));
    }

    /// Appends a record whose value `write_value` writes straight into the
    /// batch buffer, saving a copy for generated values.
    pub fn push_value_with(&mut self, write_value: impl FnOnce(&mut Vec<u8>)) {
        self.push_parts(None, None, &[], write_value);
    }

    /// Appends a record from its parts; the value is written by `write_value`.
    ///
    /// # Panics
    /// If a header name is longer than 65,535 bytes, there are more than
    /// 65,535 headers, or the key or value is 4 GiB or more: the format
    /// cannot express them.
    pub fn push_parts(
        &mut self,
        key: Option<&[u8]>,
        timestamp: Option<i64>,
        headers: &[(&str, &[u8])],
        write_value: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.buf.len();
        // The fields before the value go in as one fixed-size write (one
        // capacity check, no copy loop): record length, timestamp, key
        // length and, without a key, the value length. Both lengths are
        // patched below.
        let timestamp = timestamp.unwrap_or(NO_TIMESTAMP).to_le_bytes();
        match key {
            None => {
                let mut fixed = [0u8; 20];
                fixed[4..12].copy_from_slice(&timestamp);
                fixed[12..16].copy_from_slice(&NULL_KEY.to_le_bytes());
                self.buf.extend_from_slice(&fixed);
            }
            Some(k) => {
                let mut fixed = [0u8; 16];
                fixed[4..12].copy_from_slice(&timestamp);
                fixed[12..16].copy_from_slice(&len_u32(k.len()).to_le_bytes());
                self.buf.extend_from_slice(&fixed);
                self.buf.extend_from_slice(k);
                self.buf.extend_from_slice(&[0; 4]);
            }
        }
        let value_len_at = self.buf.len() - 4;
        write_value(&mut self.buf);
        let value_len = len_u32(self.buf.len() - value_len_at - 4);
        self.buf[value_len_at..value_len_at + 4].copy_from_slice(&value_len.to_le_bytes());
        let count = u16::try_from(headers.len()).expect("at most 65,535 headers per record");
        self.buf.extend_from_slice(&count.to_le_bytes());
        for (name, value) in headers {
            let name_len =
                u16::try_from(name.len()).expect("header names are at most 65,535 bytes");
            self.buf.extend_from_slice(&name_len.to_le_bytes());
            self.buf.extend_from_slice(name.as_bytes());
            self.buf
                .extend_from_slice(&len_u32(value.len()).to_le_bytes());
            self.buf.extend_from_slice(value);
        }
        let record_len = len_u32(self.buf.len() - start - 4);
        self.buf[start..start + 4].copy_from_slice(&record_len.to_le_bytes());
        self.count = self
            .count
            .checked_add(1)
            .expect("at most u32::MAX records per batch");
    }

    /// Appends a record exactly as another checked batch encodes it (see
    /// [`RecordIter::peek_encoded`]): routing a batch's records into
    /// several batches copies them without re-encoding.
    pub fn push_encoded(&mut self, record: &[u8]) {
        debug_assert!(
            record.len() >= 4 && read_u32(record, 0) as usize == record.len() - 4,
            "one whole encoded record"
        );
        self.buf.extend_from_slice(record);
        self.count = self
            .count
            .checked_add(1)
            .expect("at most u32::MAX records per batch");
    }

    /// The encoded batch.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[1..HEADER_LEN].copy_from_slice(&self.count.to_le_bytes());
        self.buf
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("keys and values are smaller than 4 GiB")
}

/// A checked, borrowed batch.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    buf: &'a [u8],
    count: u32,
    /// Summed while checking, so that asking costs nothing.
    value_bytes: u64,
}

impl<'a> Batch<'a> {
    /// Checks `buf` completely and returns a view of it.
    pub fn parse(buf: &'a [u8]) -> Result<Self, BatchError> {
        let count = check_header(buf)?;
        let mut pos = HEADER_LEN;
        let mut value_bytes = 0;
        for record in 0..count {
            let body = record_body(buf, pos, record)?;
            value_bytes += u64::from(check_body(body, record)?);
            pos += 4 + body.len();
        }
        if pos != buf.len() {
            return Err(BatchError::TrailingBytes {
                extra: buf.len() - pos,
            });
        }
        Ok(Batch {
            buf,
            count,
            value_bytes,
        })
    }

    /// An empty batch's encoding.
    pub fn empty() -> Vec<u8> {
        BatchWriter::new().finish()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// The records, in order.
    pub fn iter(&self) -> RecordIter<'a> {
        RecordIter {
            buf: self.buf,
            pos: HEADER_LEN,
            left: self.count,
        }
    }

    /// Total size of all record values, in bytes.
    pub fn value_bytes(&self) -> u64 {
        self.value_bytes
    }

    /// Byte offset of record `index` within the encoding (the end of the
    /// batch for `index == len()`).
    fn record_start(&self, index: u32) -> usize {
        let mut pos = HEADER_LEN;
        for _ in 0..index.min(self.count) {
            let len = read_u32(self.buf, pos) as usize;
            pos += 4 + len;
        }
        pos
    }

    /// A new batch holding the records from `index` on, copied without
    /// re-encoding them.
    pub fn skip(&self, index: usize) -> Vec<u8> {
        let index = u32::try_from(index).unwrap_or(u32::MAX).min(self.count);
        let start = self.record_start(index);
        let mut out = Vec::with_capacity(HEADER_LEN + self.buf.len() - start);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.count - index).to_le_bytes());
        out.extend_from_slice(&self.buf[start..]);
        out
    }
}

impl<'a> IntoIterator for &Batch<'a> {
    type Item = RecordRef<'a>;
    type IntoIter = RecordIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Concatenates checked batches into one, copying record bytes as they are.
///
/// # Errors
/// [`BatchError::TooManyRecords`] if the total does not fit in a `u32`.
pub fn concat<'a>(batches: impl IntoIterator<Item = Batch<'a>>) -> Result<Vec<u8>, BatchError> {
    let mut out = vec![FORMAT_VERSION, 0, 0, 0, 0];
    let mut count: u32 = 0;
    for b in batches {
        count = count
            .checked_add(b.count)
            .ok_or(BatchError::TooManyRecords)?;
        out.extend_from_slice(&b.buf[HEADER_LEN..]);
    }
    out[1..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// Joins batches checked before (the log's, checked when they were
/// appended) into one, reading only their headers: the records' bytes are
/// copied as they are.
///
/// # Errors
/// A part whose header is not this format's, or
/// [`BatchError::TooManyRecords`] if the total does not fit in a `u32`.
pub fn join(parts: &[&[u8]]) -> Result<Vec<u8>, BatchError> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    out.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0, 0]);
    let mut count: u32 = 0;
    for part in parts {
        count = count
            .checked_add(check_header(part)?)
            .ok_or(BatchError::TooManyRecords)?;
        out.extend_from_slice(&part[HEADER_LEN..]);
    }
    out[1..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// Reads the record count from a batch's header without checking the rest.
pub fn record_count(buf: &[u8]) -> Result<u32, BatchError> {
    check_header(buf)
}

fn check_header(buf: &[u8]) -> Result<u32, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(BatchError::TooShort);
    }
    if buf[0] != FORMAT_VERSION {
        return Err(BatchError::UnsupportedVersion(buf[0]));
    }
    Ok(read_u32(buf, 1))
}

fn record_body(buf: &[u8], pos: usize, record: u32) -> Result<&[u8], BatchError> {
    let truncated = BatchError::Truncated { record };
    let len_bytes = buf.get(pos..pos + 4).ok_or(truncated.clone())?;
    let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| truncated.clone())?) as usize;
    buf.get(pos + 4..pos + 4 + len).ok_or(truncated)
}

/// Checks one record's body; returns the length of its value.
fn check_body(body: &[u8], record: u32) -> Result<u32, BatchError> {
    let truncated = BatchError::Truncated { record };
    let mut cur = Cursor { buf: body, pos: 0 };
    cur.take(8).ok_or(truncated.clone())?;
    let key_len = cur.u32().ok_or(truncated.clone())?;
    if key_len != NULL_KEY {
        cur.take(key_len as usize).ok_or(truncated.clone())?;
    }
    let value_len = cur.u32().ok_or(truncated.clone())?;
    cur.take(value_len as usize).ok_or(truncated.clone())?;
    let headers = cur.u16().ok_or(truncated.clone())?;
    for _ in 0..headers {
        let name_len = cur.u16().ok_or(truncated.clone())? as usize;
        let name = cur.take(name_len).ok_or(truncated.clone())?;
        if std::str::from_utf8(name).is_err() {
            return Err(BatchError::HeaderNameNotUtf8 { record });
        }
        let value_len = cur.u32().ok_or(truncated.clone())? as usize;
        cur.take(value_len).ok_or(truncated.clone())?;
    }
    if cur.pos != body.len() {
        return Err(truncated);
    }
    Ok(value_len)
}

fn read_u32(buf: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[pos..pos + 4]);
    u32::from_le_bytes(b)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Iterator over the records of a checked [`Batch`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    buf: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> RecordIter<'a> {
    /// The encoded bytes (length prefix included) of the record the next
    /// call to `next` returns, `None` at the end; for
    /// [`BatchWriter::push_encoded`].
    pub fn peek_encoded(&self) -> Option<&'a [u8]> {
        if self.left == 0 {
            return None;
        }
        let len = read_u32(self.buf, self.pos) as usize;
        Some(&self.buf[self.pos..self.pos + 4 + len])
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The batch was checked by `Batch::parse`, so every read is in bounds.
        let len = read_u32(self.buf, self.pos) as usize;
        let body = &self.buf[self.pos + 4..self.pos + 4 + len];
        self.pos += 4 + len;
        let mut cur = Cursor { buf: body, pos: 0 };
        let ts = cur.i64()?;
        let key_len = cur.u32()?;
        let key = if key_len == NULL_KEY {
            None
        } else {
            Some(cur.take(key_len as usize)?)
        };
        let value_len = cur.u32()? as usize;
        let value = cur.take(value_len)?;
        let count = cur.u16()?;
        Some(RecordRef {
            key,
            value,
            timestamp: (ts != NO_TIMESTAMP).then_some(ts),
            headers: if count == 0 {
                Headers::Empty
            } else {
                Headers::Encoded {
                    buf: &body[cur.pos..],
                    count,
                }
            },
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for RecordIter<'_> {}

/// Builds a [`RecordRef`] with headers from borrowed parts, for writers.
pub fn record_ref<'a>(
    key: Option<&'a [u8]>,
    value: &'a [u8],
    timestamp: Option<i64>,
    headers: &'a [(&'a str, &'a [u8])],
) -> RecordRef<'a> {
    RecordRef {
        key,
        value,
        timestamp,
        headers: if headers.is_empty() {
            Headers::Empty
        } else {
            Headers::Slice(headers)
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_copied_encoded_make_the_same_records() {
        let buf = sample();
        let batch = Batch::parse(&buf).unwrap();
        let (mut even, mut odd) = (BatchWriter::new(), BatchWriter::new());
        let mut it = batch.iter();
        let mut i = 0;
        while let Some(raw) = it.peek_encoded() {
            let r = it.next().unwrap();
            let w = if i % 2 == 0 { &mut even } else { &mut odd };
            w.push_encoded(raw);
            let mut one = BatchWriter::new();
            one.push(r);
            assert_eq!(one.finish()[HEADER_LEN..], *raw);
            i += 1;
        }
        let (even, odd) = (even.finish(), odd.finish());
        let (even, odd) = (Batch::parse(&even).unwrap(), Batch::parse(&odd).unwrap());
        let back: Vec<RecordRef<'_>> = even.iter().chain(odd.iter()).collect();
        assert_eq!(back.len(), batch.len());
        assert_eq!(even.iter().next(), batch.iter().next());
        assert_eq!(odd.iter().next(), batch.iter().nth(1));
    }

    fn sample() -> Vec<u8> {
        let mut w = BatchWriter::new();
        w.push_value(b"one");
        w.push(record_ref(
            Some(b"k"),
            b"two",
            Some(1_700_000_000_000),
            &[("trace", b"abc"), ("empty", b"")],
        ));
        w.push_value_with(|v| v.extend_from_slice(b"three"));
        w.finish()
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let bytes = sample();
        let batch = Batch::parse(&bytes).unwrap();
        assert_eq!(batch.len(), 3);
        let recs: Vec<Record> = batch.iter().map(|r| r.to_owned()).collect();
        assert_eq!(recs[0], Record::from_value("one"));
        assert_eq!(recs[1].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(recs[1].timestamp, Some(1_700_000_000_000));
        assert_eq!(
            recs[1].headers,
            vec![
                ("trace".to_owned(), b"abc".to_vec()),
                ("empty".to_owned(), vec![])
            ]
        );
        assert_eq!(recs[2].value, b"three");
    }

    #[test]
    fn value_bytes_are_summed_while_checking() {
        let bytes = sample();
        let batch = Batch::parse(&bytes).unwrap();
        let walked: u64 = batch.iter().map(|r| r.value.len() as u64).sum();
        assert_eq!(batch.value_bytes(), walked);
        assert_eq!(walked, 3 + 3 + 5, "keys and headers do not count");
        let empty = Batch::empty();
        assert_eq!(Batch::parse(&empty).unwrap().value_bytes(), 0);
    }

    #[test]
    fn skip_and_concat_copy_records_verbatim() {
        let bytes = sample();
        let batch = Batch::parse(&bytes).unwrap();
        let tail = batch.skip(1);
        let tail = Batch::parse(&tail).unwrap();
        assert_eq!(tail.len(), 2);
        assert_eq!(tail.iter().next().unwrap().value, b"two");
        assert_eq!(Batch::parse(&batch.skip(3)).unwrap().len(), 0);

        let joined = concat([batch, tail]).unwrap();
        let joined = Batch::parse(&joined).unwrap();
        let values: Vec<&[u8]> = joined.iter().map(|r| r.value).collect();
        assert_eq!(values, [&b"one"[..], b"two", b"three", b"two", b"three"]);

        let tail = batch.skip(1);
        let joined = join(&[&bytes, &tail]).unwrap();
        let joined = Batch::parse(&joined).unwrap();
        let values: Vec<&[u8]> = joined.iter().map(|r| r.value).collect();
        assert_eq!(values, [&b"one"[..], b"two", b"three", b"two", b"three"]);
        assert!(join(&[&bytes, &[9, 0, 0, 0, 0]]).is_err());
    }

    #[test]
    fn parse_rejects_damage() {
        assert_eq!(Batch::parse(&[1, 0]).unwrap_err(), BatchError::TooShort);
        assert_eq!(
            Batch::parse(&[9, 0, 0, 0, 0]).unwrap_err(),
            BatchError::UnsupportedVersion(9)
        );
        let bytes = sample();
        for cut in HEADER_LEN + 1..bytes.len() {
            assert!(
                Batch::parse(&bytes[..cut]).is_err(),
                "a batch cut at {cut} bytes must not parse"
            );
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            Batch::parse(&extra).unwrap_err(),
            BatchError::TrailingBytes { extra: 1 }
        );
        // A count that claims more records than there are.
        let mut more = bytes;
        more[1] = 4;
        assert_eq!(
            Batch::parse(&more).unwrap_err(),
            BatchError::Truncated { record: 3 }
        );
    }
}
