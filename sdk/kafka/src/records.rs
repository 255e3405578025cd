//! Kafka's record batches (message format v2), read in place and written
//! straight from the caller's records.
//!
//! A fetch response's `records` are a run of batches; [`Batches`] walks
//! them without copying, and [`Batch::records`] the records of one (after
//! decompressing them into a scratch buffer, for a compressed batch). The
//! `kafka-protocol` crate has a codec for these too, but it makes an owned
//! record (and a header map) per record; at 100-byte records that is most
//! of a fetch's cost.
//!
//! Codecs: none, gzip (`flate2`), snappy (the xerial framing the Java
//! client writes, through `kafka-protocol`), lz4 (the frame format, with
//! `lz4_flex`) and zstd (`ruzstd`), all pure Rust, both ways.
//!
//! ```text
//! batch := baseOffset:i64 batchLength:i32 partitionLeaderEpoch:i32 magic:i8(2)
//!          crc:u32 (CRC-32C of what follows) attributes:i16 lastOffsetDelta:i32
//!          baseTimestamp:i64 maxTimestamp:i64 producerId:i64 producerEpoch:i16
//!          baseSequence:i32 count:i32 records…
//! record := length:varint attributes:i8 timestampDelta:varlong offsetDelta:varint
//!           keyLength:varint key valueLength:varint value headerCount:varint
//!           (keyLength:varint key valueLength:varint value)…
//! ```

use std::fmt;
use std::io::{Read, Write};

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Snappy};

/// How many bytes a batch has before its records.
pub const BATCH_HEADER_LEN: usize = 61;

/// The offset of the `crc` field, and where what it covers starts.
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;

/// A batch's compression codec (its attributes' low three bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Records as they are.
    #[default]
    None,
    /// gzip (deflate).
    Gzip,
    /// Snappy in xerial's framing.
    Snappy,
    /// The LZ4 frame format.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Result<Compression, RecordsError> {
        Ok(match attributes & 0x7 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            n => return Err(RecordsError::UnknownCodec(n)),
        })
    }

    fn bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The name Kafka's `compression.type` uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    /// Parses a `compression.type` name.
    pub fn from_name(name: &str) -> Option<Compression> {
        [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

/// What is wrong with a run of batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordsError {
    /// A batch in the old message formats (magic 0 or 1), which Kafka
    /// brokers since 0.11 convert for a client that asks for v2 records.
    OldFormat(i8),
    /// A batch or record is cut short or its lengths do not add up.
    Malformed(&'static str),
    /// An unknown codec number.
    UnknownCodec(i16),
    /// A compressed batch would not decompress.
    Decompress {
        /// The codec.
        codec: &'static str,
        /// What it said.
        error: String,
    },
    /// A header name that is not UTF-8.
    HeaderName,
    /// A batch whose CRC-32C does not match its bytes (corrupted on the
    /// way or on the broker's disk).
    Checksum {
        /// The batch's first offset.
        base_offset: i64,
    },
}

impl fmt::Display for RecordsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordsError::OldFormat(magic) => {
                write!(
                    f,
                    "a record batch in message format v{magic} (only v2 is read)"
                )
            }
            RecordsError::Malformed(what) => write!(f, "malformed record batch: {what}"),
            RecordsError::UnknownCodec(n) => write!(f, "a record batch with unknown codec {n}"),
            RecordsError::Decompress { codec, error } => {
                write!(f, "a {codec} record batch would not decompress: {error}")
            }
            RecordsError::HeaderName => write!(f, "a record header name that is not UTF-8"),
            RecordsError::Checksum { base_offset } => write!(
                f,
                "the record batch at offset {base_offset} fails its CRC-32C check (corrupt)"
            ),
        }
    }
}

impl std::error::Error for RecordsError {}

/// The batches in a fetch response's `records`; a batch cut short at the
/// end (the broker sends whole batches up to its size limit, then may cut
/// the last) is left out.
#[derive(Debug, Clone)]
pub struct Batches<'a> {
    rest: &'a [u8],
}

impl<'a> Batches<'a> {
    /// Walks `records`.
    pub fn new(records: &'a [u8]) -> Self {
        Batches { rest: records }
    }
}

impl<'a> Iterator for Batches<'a> {
    type Item = Result<Batch<'a>, RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < 17 {
            return None;
        }
        let length = i32::from_be_bytes(self.rest[8..12].try_into().ok()?);
        let Ok(total) = usize::try_from(length).map(|l| l + 12) else {
            self.rest = &[];
            return Some(Err(RecordsError::Malformed("negative batch length")));
        };
        if total > self.rest.len() {
            return None;
        }
        let (bytes, rest) = self.rest.split_at(total);
        self.rest = rest;
        Some(Batch::parse(bytes))
    }
}

/// One record batch.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    bytes: &'a [u8],
    /// The offset of its first record.
    pub base_offset: i64,
    /// The offset of its last record, minus `base_offset`.
    pub last_offset_delta: i32,
    attributes: i16,
    /// The first record's timestamp, to which records add theirs.
    pub base_timestamp: i64,
    /// The greatest timestamp (the broker's, under `LogAppendTime`).
    pub max_timestamp: i64,
    /// The producer that wrote it (-1 for none).
    pub producer_id: i64,
    /// That producer's epoch.
    pub producer_epoch: i16,
    /// The sequence number of its first record (-1 for none).
    pub base_sequence: i32,
    /// How many records it holds.
    pub count: i32,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl<'a> Batch<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Batch<'a>, RecordsError> {
        let magic = bytes[16] as i8;
        if magic != 2 {
            return Err(RecordsError::OldFormat(magic));
        }
        if bytes.len() < BATCH_HEADER_LEN {
            return Err(RecordsError::Malformed("a batch shorter than its header"));
        }
        Ok(Batch {
            bytes,
            base_offset: be_i64(bytes, 0),
            attributes: be_i16(bytes, ATTRIBUTES_AT),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            count: be_i32(bytes, 57),
        })
    }

    /// The whole batch, as it arrived.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The offset after its last record: where the next fetch starts.
    pub fn next_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta) + 1
    }

    /// Its codec.
    pub fn compression(&self) -> Result<Compression, RecordsError> {
        Compression::from_attributes(self.attributes)
    }

    /// Whether a transactional producer wrote it.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    /// Whether it holds a control record (a transaction's commit or abort
    /// marker), which is not data.
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }

    /// Whether its timestamps are the broker's (`LogAppendTime`): then
    /// every record's timestamp is `max_timestamp`.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    /// For a control batch: true for a commit marker, false for an abort.
    pub fn control_is_commit(&self, scratch: &mut Vec<u8>) -> Result<bool, RecordsError> {
        let mut records = self.records(scratch)?;
        let record = records
            .next()
            .ok_or(RecordsError::Malformed("a control batch without a record"))??;
        // The key: version:i16, type:i16 (0 abort, 1 commit).
        let key = record
            .key
            .filter(|k| k.len() >= 4)
            .ok_or(RecordsError::Malformed("a control record without its key"))?;
        Ok(be_i16(key, 2) == 1)
    }

    /// Whether the CRC-32C it carries matches what it holds.
    pub fn crc_ok(&self) -> bool {
        let stored = u32::from_be_bytes(self.bytes[CRC_AT..CRC_AT + 4].try_into().expect("4"));
        sluice_sdk::crc32c(&self.bytes[ATTRIBUTES_AT..]) == stored
    }

    /// [`Batch::crc_ok`], as an error naming the batch.
    pub fn check_crc(&self) -> Result<(), RecordsError> {
        if self.crc_ok() {
            Ok(())
        } else {
            Err(RecordsError::Checksum {
                base_offset: self.base_offset,
            })
        }
    }

    /// Its records, decompressed into `scratch` when compressed.
    pub fn records<'s>(&self, scratch: &'s mut Vec<u8>) -> Result<Records<'s>, RecordsError>
    where
        'a: 's,
    {
        let body = &self.bytes[BATCH_HEADER_LEN..];
        let body: &'s [u8] = match self.compression()? {
            Compression::None => body,
            codec => {
                scratch.clear();
                decompress(codec, body, scratch)?;
                scratch
            }
        };
        Ok(Records {
            rest: body,
            left: self.count.max(0),
            base_offset: self.base_offset,
            base_timestamp: self.base_timestamp,
            log_append: self.is_log_append_time().then_some(self.max_timestamp),
        })
    }
}

fn decompress(codec: Compression, body: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let failed = |error: String| RecordsError::Decompress {
        codec: codec.name(),
        error,
    };
    match codec {
        Compression::None => out.extend_from_slice(body),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(body)
                .read_to_end(out)
                .map_err(|e| failed(e.to_string()))?;
        }
        Compression::Snappy => {
            let mut input = Bytes::copy_from_slice(body);
            <Snappy as Decompressor<Bytes>>::decompress(&mut input, |plain: &mut Bytes| {
                out.extend_from_slice(plain);
                Ok(())
            })
            .map_err(|e| failed(e.to_string()))?;
        }
        Compression::Lz4 => {
            lz4_flex::frame::FrameDecoder::new(body)
                .read_to_end(out)
                .map_err(|e| failed(e.to_string()))?;
        }
        Compression::Zstd => {
            ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| failed(e.to_string()))?
                .read_to_end(out)
                .map_err(|e| failed(e.to_string()))?;
        }
    }
    Ok(())
}

/// The records of one batch.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    left: i32,
    base_offset: i64,
    base_timestamp: i64,
    log_append: Option<i64>,
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Its offset in the partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch (-1 for none).
    pub timestamp: i64,
    /// Its key, if not null.
    pub key: Option<&'a [u8]>,
    /// Its value, if not null (a tombstone has none).
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: usize,
}

impl<'a> Record<'a> {
    /// Its headers, in order: name and value (`None` for a null value).
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            rest: self.headers,
            left: self.header_count,
        }
    }

    /// How many headers it has.
    pub fn header_count(&self) -> usize {
        self.header_count
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let parsed = self.parse_one();
        if parsed.is_err() {
            self.left = 0;
        }
        Some(parsed)
    }
}

impl<'a> Records<'a> {
    fn parse_one(&mut self) -> Result<Record<'a>, RecordsError> {
        let mut r = Reader(self.rest);
        let length = r.varint()?;
        let length =
            usize::try_from(length).map_err(|_| RecordsError::Malformed("record length"))?;
        let body = r.take(length)?;
        self.rest = r.0;
        let mut r = Reader(body);
        r.take(1)?; // attributes, unused
        let timestamp_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        let key = r.bytes()?;
        let value = r.bytes()?;
        let count = r.varint()?;
        let header_count =
            usize::try_from(count).map_err(|_| RecordsError::Malformed("header count"))?;
        // The headers are checked as they are read (`Record::headers`),
        // not here too: this is the fetch path's inner loop.
        let headers = r.0;
        Ok(Record {
            offset: self.base_offset + i64::from(offset_delta),
            timestamp: self
                .log_append
                .unwrap_or(self.base_timestamp.wrapping_add(timestamp_delta)),
            key,
            value,
            headers,
            header_count,
        })
    }
}

/// A record's headers.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
    left: usize,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a str, Option<&'a [u8]>), RecordsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut r = Reader(self.rest);
        let parsed = (|| {
            let name = r
                .bytes()?
                .ok_or(RecordsError::Malformed("a null header name"))?;
            let name = std::str::from_utf8(name).map_err(|_| RecordsError::HeaderName)?;
            Ok((name, r.bytes()?))
        })();
        self.rest = r.0;
        if parsed.is_err() {
            self.left = 0;
        }
        Some(parsed)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordsError> {
        if n > self.0.len() {
            return Err(RecordsError::Malformed("a record cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn varlong(&mut self) -> Result<i64, RecordsError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(RecordsError::Malformed("a varint cut short or too long"))
    }

    fn varint(&mut self) -> Result<i32, RecordsError> {
        i32::try_from(self.varlong()?).map_err(|_| RecordsError::Malformed("a varint too large"))
    }

    /// A length-prefixed byte string; length -1 is null.
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, RecordsError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(RecordsError::Malformed("a negative length")),
            n => self.take(n as usize).map(Some),
        }
    }
}

fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

/// Who writes a batch, for an idempotent or transactional producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    /// The producer id (-1 for none).
    pub id: i64,
    /// Its epoch (-1 for none).
    pub epoch: i16,
    /// The sequence number of the batch's first record (-1 for none).
    pub base_sequence: i32,
    /// Whether the batch is part of a transaction.
    pub transactional: bool,
}

impl ProducerStamp {
    /// No producer id: a plain producer.
    pub const NONE: ProducerStamp = ProducerStamp {
        id: -1,
        epoch: -1,
        base_sequence: -1,
        transactional: false,
    };
}

/// A record to write: the parts [`BatchBuilder::push`] takes.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Milliseconds since the Unix epoch (-1 for none).
    pub timestamp: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: Option<&'a [u8]>,
}

/// Builds one record batch: records pushed one by one, then
/// [`BatchBuilder::finish`] into a produce request's bytes.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    records: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
    scratch: Vec<u8>,
    header_scratch: Vec<u8>,
}

impl BatchBuilder {
    /// An empty batch.
    pub fn new() -> Self {
        BatchBuilder::default()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// About how many bytes it takes so far (uncompressed).
    pub fn size(&self) -> usize {
        BATCH_HEADER_LEN + self.records.len()
    }

    /// Adds a record with its headers.
    pub fn push<'h>(
        &mut self,
        record: NewRecord<'_>,
        headers: impl IntoIterator<Item = (&'h str, Option<&'h [u8]>)>,
    ) {
        if self.count == 0 {
            self.base_timestamp = record.timestamp.max(0);
            self.max_timestamp = record.timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(record.timestamp);
        let body = &mut self.scratch;
        body.clear();
        body.push(0); // attributes
        put_varlong(body, record.timestamp.max(0) - self.base_timestamp);
        put_varlong(body, i64::from(self.count));
        put_bytes(body, record.key);
        put_bytes(body, record.value);
        // The count comes before the headers: they go to a scratch buffer
        // of their own first (kept between records, like `scratch`).
        let encoded = &mut self.header_scratch;
        encoded.clear();
        let mut count = 0i64;
        for (name, value) in headers {
            put_bytes(encoded, Some(name.as_bytes()));
            put_bytes(encoded, value);
            count += 1;
        }
        put_varlong(body, count);
        body.extend_from_slice(encoded);
        put_varlong(&mut self.records, body.len() as i64);
        self.records.extend_from_slice(body);
        self.count += 1;
    }

    /// Appends the batch to `out`, compressed with `codec`, stamped with
    /// `producer`, and empties the builder for the next.
    pub fn finish(
        &mut self,
        codec: Compression,
        producer: ProducerStamp,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordsError> {
        let start = out.len();
        out.extend_from_slice(&0i64.to_be_bytes()); // base offset: the broker's
        out.extend_from_slice(&0i32.to_be_bytes()); // length, patched
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
        out.push(2); // magic
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched
        let attributes = codec.bits() | if producer.transactional { 0x10 } else { 0 };
        out.extend_from_slice(&attributes.to_be_bytes());
        out.extend_from_slice(&(self.count - 1).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&producer.id.to_be_bytes());
        out.extend_from_slice(&producer.epoch.to_be_bytes());
        out.extend_from_slice(&producer.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        compress(codec, &self.records, out)?;
        let length = i32::try_from(out.len() - start - 12)
            .map_err(|_| RecordsError::Malformed("a batch of 2 GiB or more"))?;
        out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
        let crc = sluice_sdk::crc32c(&out[start + ATTRIBUTES_AT..]);
        out[start + CRC_AT..start + CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        self.records.clear();
        self.count = 0;
        Ok(())
    }
}

fn compress(codec: Compression, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordsError> {
    let failed = |error: String| RecordsError::Decompress {
        codec: codec.name(),
        error,
    };
    match codec {
        Compression::None => out.extend_from_slice(plain),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
            gz.write_all(plain).map_err(|e| failed(e.to_string()))?;
            gz.finish().map_err(|e| failed(e.to_string()))?;
        }
        Compression::Snappy => {
            let mut framed = BytesMut::new();
            <Snappy as Compressor<BytesMut>>::compress(&mut framed, |buf: &mut BytesMut| {
                buf.extend_from_slice(plain);
                Ok(())
            })
            .map_err(|e| failed(e.to_string()))?;
            out.extend_from_slice(&framed);
        }
        Compression::Lz4 => {
            let mut lz = lz4_flex::frame::FrameEncoder::new(out);
            lz.write_all(plain).map_err(|e| failed(e.to_string()))?;
            lz.finish().map_err(|e| failed(e.to_string()))?;
        }
        Compression::Zstd => {
            ruzstd::encoding::compress(
                plain,
                &mut *out,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
        }
    }
    Ok(())
}

/// Record batches for tests of what reads them (this crate's, and the
/// Kafka plugins'): plain data and transaction markers at chosen offsets.
#[doc(hidden)]
pub mod testing {
    use super::{BatchBuilder, Compression, NewRecord, ProducerStamp};

    /// Appends a batch of `values` at offset `base`, written by `producer`
    /// (transactional when it is not -1).
    pub fn data_batch(out: &mut Vec<u8>, base: i64, producer: i64, values: &[&str]) {
        let mut b = BatchBuilder::new();
        for v in values {
            b.push(
                NewRecord {
                    timestamp: 0,
                    key: None,
                    value: Some(v.as_bytes()),
                },
                [],
            );
        }
        let at = out.len();
        let stamp = ProducerStamp {
            id: producer,
            epoch: 0,
            base_sequence: 0,
            transactional: producer >= 0,
        };
        b.finish(Compression::None, stamp, out)
            .expect("an uncompressed batch");
        out[at..at + 8].copy_from_slice(&base.to_be_bytes());
    }

    /// Appends `producer`'s transaction end marker (commit or abort) at
    /// offset `base`.
    pub fn marker_batch(out: &mut Vec<u8>, base: i64, producer: i64, commit: bool) {
        let mut b = BatchBuilder::new();
        let key = [0, 0, 0, u8::from(commit)];
        b.push(
            NewRecord {
                timestamp: 0,
                key: Some(&key),
                value: Some(&[0, 0, 0, 0, 0, 0]),
            },
            [],
        );
        let at = out.len();
        let stamp = ProducerStamp {
            id: producer,
            epoch: 0,
            base_sequence: -1,
            transactional: true,
        };
        b.finish(Compression::None, stamp, out)
            .expect("an uncompressed batch");
        out[at..at + 8].copy_from_slice(&base.to_be_bytes());
        // The control bit (attributes bit 5), and the checksum again.
        out[at + super::ATTRIBUTES_AT + 1] |= 0x20;
        let crc = sluice_sdk::crc32c(&out[at + super::ATTRIBUTES_AT..]);
        out[at + super::CRC_AT..at + super::CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(codec: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new();
        for i in 0..100u32 {
            let key = format!("key-{i}");
            let value = format!("value-{i}").repeat(3);
            b.push(
                NewRecord {
                    timestamp: 1_700_000_000_000 + i64::from(i),
                    key: (i % 7 != 0).then_some(key.as_bytes()),
                    value: (i % 11 != 0).then_some(value.as_bytes()),
                },
                [("h", Some(&b"v"[..])), ("null", None)]
                    .into_iter()
                    .take((i % 3) as usize),
            );
        }
        let mut out = Vec::new();
        b.finish(codec, ProducerStamp::NONE, &mut out).unwrap();
        out
    }

    #[test]
    fn every_codec_reads_back_what_was_written() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = sample(codec);
            let batch = Batches::new(&bytes).next().unwrap().unwrap();
            assert!(batch.crc_ok(), "{codec:?}");
            assert_eq!(batch.compression().unwrap(), codec);
            assert_eq!(batch.count, 100);
            assert_eq!(batch.next_offset(), 100);
            let mut scratch = Vec::new();
            let records: Vec<_> = batch
                .records(&mut scratch)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(records.len(), 100, "{codec:?}");
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.timestamp, 1_700_000_000_000 + i as i64);
                let key = format!("key-{i}");
                assert_eq!(r.key, (i % 7 != 0).then_some(key.as_bytes()));
                let value = format!("value-{i}").repeat(3);
                assert_eq!(r.value, (i % 11 != 0).then_some(value.as_bytes()));
                let headers: Vec<_> = r.headers().map(Result::unwrap).collect();
                let want: Vec<(&str, Option<&[u8]>)> = [("h", Some(&b"v"[..])), ("null", None)]
                    .into_iter()
                    .take(i % 3)
                    .collect();
                assert_eq!(headers, want);
            }
        }
    }

    #[test]
    fn a_batch_cut_short_at_the_end_is_left_for_the_next_fetch() {
        let mut bytes = sample(Compression::None);
        let whole = bytes.len();
        bytes.extend_from_within(..whole - 5);
        let batches: Vec<_> = Batches::new(&bytes).collect();
        assert_eq!(batches.len(), 1);
    }

    #[test]
    fn a_corrupt_batch_fails_its_checksum() {
        let mut bytes = sample(Compression::None);
        assert_eq!(
            Batches::new(&bytes).next().unwrap().unwrap().check_crc(),
            Ok(())
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20;
        let batch = Batches::new(&bytes).next().unwrap().unwrap();
        let err = batch.check_crc().unwrap_err();
        assert_eq!(err, RecordsError::Checksum { base_offset: 0 });
        assert!(err.to_string().contains("offset 0 fails its CRC-32C check"));
    }

    #[test]
    fn old_formats_are_named() {
        let mut bytes = sample(Compression::None);
        bytes[16] = 1;
        let err = Batches::new(&bytes).next().unwrap().unwrap_err();
        assert_eq!(err, RecordsError::OldFormat(1));
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // The check value of CRC-32C (iSCSI, Castagnoli).
        assert_eq!(sluice_sdk::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn zigzag_varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i64::from(i32::MAX),
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(Reader(&out).varlong().unwrap(), v);
        }
    }
}
