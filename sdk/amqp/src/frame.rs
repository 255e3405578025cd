//! AMQP 0-9-1 frames: the client's methods and content written straight
//! into the connection's buffer, the server's read out of it.
//!
//! A frame is a type octet, a channel (16 bits), a payload size (32 bits),
//! the payload and the octet `0xCE`. A method's payload is its class and
//! method ids and its arguments; a message is a method (`basic.publish`,
//! `basic.deliver`, `basic.return`) followed by a content header frame (the
//! body's size and the properties) and body frames no larger than the
//! negotiated `frame-max`. Integers are big-endian; a short string is a
//! length octet and bytes, a long string a 32-bit length and bytes;
//! consecutive bit arguments share an octet. Field tables are written as
//! RabbitMQ reads them (its errata of the 0-9-1 type letters).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub(crate) const METHOD: u8 = 1;
pub(crate) const HEADER: u8 = 2;
pub(crate) const BODY: u8 = 3;
pub(crate) const HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// A frame's type, channel and size, and its end octet.
pub(crate) const FRAME_OVERHEAD: usize = 8;

/// What a client sends first: AMQP 0-9-1.
pub(crate) const PROTOCOL_HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

/// A value in a field table (a message's `headers`, a server's properties).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ: a signed 16-bit integer)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`: a scale (decimal places) and a value.
    Decimal(u8, u32),
    /// `S`: bytes, usually UTF-8 text.
    LongStr(Bytes),
    /// `A`
    Array(Vec<Value>),
    /// `T`: seconds since the epoch.
    Timestamp(u64),
    /// `F`
    Table(Table),
    /// `V`
    Void,
    /// `x`
    Bytes(Bytes),
}

/// A field table: names and values, in order.
pub type Table = Vec<(String, Value)>;

impl Value {
    /// The value as bytes a record header can carry: a string as is, a
    /// number or a flag as its decimal text, a table or array as its debug
    /// text.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Value::LongStr(b) | Value::Bytes(b) => b.to_vec(),
            Value::Bool(v) => v.to_string().into_bytes(),
            Value::I8(v) => v.to_string().into_bytes(),
            Value::U8(v) => v.to_string().into_bytes(),
            Value::I16(v) => v.to_string().into_bytes(),
            Value::U16(v) => v.to_string().into_bytes(),
            Value::I32(v) => v.to_string().into_bytes(),
            Value::U32(v) => v.to_string().into_bytes(),
            Value::I64(v) => v.to_string().into_bytes(),
            Value::F32(v) => v.to_string().into_bytes(),
            Value::F64(v) => v.to_string().into_bytes(),
            Value::Timestamp(v) => v.to_string().into_bytes(),
            Value::Decimal(scale, v) => {
                let v = f64::from(*v) / 10f64.powi(i32::from(*scale));
                v.to_string().into_bytes()
            }
            Value::Void => Vec::new(),
            Value::Array(_) | Value::Table(_) => format!("{self:?}").into_bytes(),
        }
    }
}

/// A message's properties (the `basic` class's), each optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body.
    pub content_type: Option<String>,
    /// Its encoding (`gzip`, …).
    pub content_encoding: Option<String>,
    /// The application's headers.
    pub headers: Option<Table>,
    /// 1 transient, 2 persistent.
    pub delivery_mode: Option<u8>,
    /// 0 to 9.
    pub priority: Option<u8>,
    /// The application's correlation id.
    pub correlation_id: Option<String>,
    /// Where to reply.
    pub reply_to: Option<String>,
    /// Time to live, milliseconds as text.
    pub expiration: Option<String>,
    /// The application's message id.
    pub message_id: Option<String>,
    /// Seconds since the epoch.
    pub timestamp: Option<u64>,
    /// The message's type name (`type`).
    pub kind: Option<String>,
    /// The user that published it (RabbitMQ checks it).
    pub user_id: Option<String>,
    /// The publishing application.
    pub app_id: Option<String>,
}

/// The server's methods the client acts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Method {
    ConnectionStart {
        version: (u8, u8),
        properties: Table,
        mechanisms: String,
    },
    ConnectionSecure,
    ConnectionTune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    ConnectionOpenOk,
    ConnectionClose(Close),
    ConnectionCloseOk,
    ConnectionBlocked(String),
    ConnectionUnblocked,
    ChannelOpenOk,
    ChannelClose(Close),
    ChannelCloseOk,
    ExchangeDeclareOk,
    QueueDeclareOk {
        messages: u32,
    },
    BasicQosOk,
    BasicConsumeOk,
    BasicCancel,
    BasicReturn {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
    },
    BasicDeliver {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    BasicAck {
        tag: u64,
        multiple: bool,
    },
    BasicNack {
        tag: u64,
        multiple: bool,
    },
    ConfirmSelectOk,
    Other(u16, u16),
}

/// Why the server closed a channel or the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: u16,
    pub text: String,
    /// The class and method that failed, if one did.
    pub method: (u16, u16),
}

/// One frame read.
#[derive(Debug, PartialEq)]
pub(crate) enum Frame {
    Method(u16, Method),
    /// A content header: the body's size and the properties.
    Header(u16, u64, Box<Properties>),
    Body(u16, Bytes),
    Heartbeat,
}

/// Reads the next whole frame out of `buf`, taking what it consumed;
/// `Ok(None)` when not all of it has arrived. `max` bounds a frame's size.
pub(crate) fn read(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, String> {
    if buf.len() < 7 {
        if buf.starts_with(b"AMQP") && buf.len() >= 4 {
            return Err(
                "the server answered with a protocol header: it speaks another AMQP version".into(),
            );
        }
        return Ok(None);
    }
    if buf.starts_with(b"AMQP") {
        return Err(
            "the server answered with a protocol header: it speaks another AMQP version".into(),
        );
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize;
    if size > max {
        return Err(format!(
            "a frame of {size} bytes, more than the {max} agreed"
        ));
    }
    if buf.len() < 7 + size + 1 {
        return Ok(None);
    }
    if buf[7 + size] != FRAME_END {
        return Err(format!("a frame of type {kind} does not end with 0xCE"));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    let frame = match kind {
        METHOD => Frame::Method(channel, method(&payload)?),
        HEADER => {
            let mut r = Reader(&payload);
            let (_class, _weight, size) = (r.short()?, r.short()?, r.longlong()?);
            Frame::Header(channel, size, Box::new(properties(&mut r)?))
        }
        BODY => Frame::Body(channel, payload),
        HEARTBEAT => Frame::Heartbeat,
        other => return Err(format!("a frame of unknown type {other}")),
    };
    Ok(Some(frame))
}

/// A method's payload, decoded.
fn method(payload: &[u8]) -> Result<Method, String> {
    let mut r = Reader(payload);
    let id = (r.short()?, r.short()?);
    let m = match id {
        (10, 10) => Method::ConnectionStart {
            version: (r.octet()?, r.octet()?),
            properties: r.table()?,
            mechanisms: String::from_utf8_lossy(r.longstr()?).into_owned(),
        },
        (10, 20) => Method::ConnectionSecure,
        (10, 30) => Method::ConnectionTune {
            channel_max: r.short()?,
            frame_max: r.long()?,
            heartbeat: r.short()?,
        },
        (10, 41) => Method::ConnectionOpenOk,
        (10, 50) => Method::ConnectionClose(close(&mut r)?),
        (10, 51) => Method::ConnectionCloseOk,
        (10, 60) => Method::ConnectionBlocked(r.shortstr()?),
        (10, 61) => Method::ConnectionUnblocked,
        (20, 11) => Method::ChannelOpenOk,
        (20, 40) => Method::ChannelClose(close(&mut r)?),
        (20, 41) => Method::ChannelCloseOk,
        (40, 11) => Method::ExchangeDeclareOk,
        (50, 11) => {
            let _queue = r.shortstr()?;
            Method::QueueDeclareOk {
                messages: r.long()?,
            }
        }
        (60, 11) => Method::BasicQosOk,
        (60, 21) => Method::BasicConsumeOk,
        (60, 30) => Method::BasicCancel,
        (60, 50) => Method::BasicReturn {
            code: r.short()?,
            text: r.shortstr()?,
            exchange: r.shortstr()?,
            routing_key: r.shortstr()?,
        },
        (60, 60) => {
            let _consumer_tag = r.shortstr()?;
            Method::BasicDeliver {
                delivery_tag: r.longlong()?,
                redelivered: r.octet()? & 1 == 1,
                exchange: r.shortstr()?,
                routing_key: r.shortstr()?,
            }
        }
        (60, 80) => Method::BasicAck {
            tag: r.longlong()?,
            multiple: r.octet()? & 1 == 1,
        },
        (60, 120) => Method::BasicNack {
            tag: r.longlong()?,
            multiple: r.octet()? & 1 == 1,
        },
        (85, 11) => Method::ConfirmSelectOk,
        (class, method) => Method::Other(class, method),
    };
    Ok(m)
}

fn close(r: &mut Reader<'_>) -> Result<Close, String> {
    Ok(Close {
        code: r.short()?,
        text: r.shortstr()?,
        method: (r.short()?, r.short()?),
    })
}

/// The properties of a content header, after its flags.
fn properties(r: &mut Reader<'_>) -> Result<Properties, String> {
    let mut flags = u32::from(r.short()?);
    // A last flag bit set says another flags word follows: none is
    // defined for `basic`, so they are read past.
    let mut more = flags & 1 == 1;
    while more {
        more = r.short()? & 1 == 1;
    }
    let mut p = Properties::default();
    let mut has = |bit: u32| {
        let set = flags & (1 << bit) != 0;
        flags &= !(1 << bit);
        set
    };
    if has(15) {
        p.content_type = Some(r.shortstr()?);
    }
    if has(14) {
        p.content_encoding = Some(r.shortstr()?);
    }
    if has(13) {
        p.headers = Some(r.table()?);
    }
    if has(12) {
        p.delivery_mode = Some(r.octet()?);
    }
    if has(11) {
        p.priority = Some(r.octet()?);
    }
    if has(10) {
        p.correlation_id = Some(r.shortstr()?);
    }
    if has(9) {
        p.reply_to = Some(r.shortstr()?);
    }
    if has(8) {
        p.expiration = Some(r.shortstr()?);
    }
    if has(7) {
        p.message_id = Some(r.shortstr()?);
    }
    if has(6) {
        p.timestamp = Some(r.longlong()?);
    }
    if has(5) {
        p.kind = Some(r.shortstr()?);
    }
    if has(4) {
        p.user_id = Some(r.shortstr()?);
    }
    if has(3) {
        p.app_id = Some(r.shortstr()?);
    }
    if has(2) {
        let _cluster_id = r.shortstr()?;
    }
    Ok(p)
}

/// A cursor over a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("a method or header shorter than its arguments".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn octet(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn short(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn long(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn longlong(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn shortstr(&mut self) -> Result<String, String> {
        let n = self.octet()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn longstr(&mut self) -> Result<&'a [u8], String> {
        let n = self.long()? as usize;
        self.take(n)
    }
    fn table(&mut self) -> Result<Table, String> {
        let mut r = Reader(self.longstr()?);
        let mut table = Vec::new();
        while !r.0.is_empty() {
            let name = r.shortstr()?;
            table.push((name, r.value()?));
        }
        Ok(table)
    }
    fn value(&mut self) -> Result<Value, String> {
        let v = match self.octet()? {
            b't' => Value::Bool(self.octet()? != 0),
            b'b' => Value::I8(self.octet()? as i8),
            b'B' => Value::U8(self.octet()?),
            b's' => Value::I16(self.short()? as i16),
            b'u' => Value::U16(self.short()?),
            b'I' => Value::I32(self.long()? as i32),
            b'i' => Value::U32(self.long()?),
            b'l' => Value::I64(self.longlong()? as i64),
            b'f' => Value::F32(f32::from_bits(self.long()?)),
            b'd' => Value::F64(f64::from_bits(self.longlong()?)),
            b'D' => Value::Decimal(self.octet()?, self.long()?),
            b'S' => Value::LongStr(Bytes::copy_from_slice(self.longstr()?)),
            b'x' => Value::Bytes(Bytes::copy_from_slice(self.longstr()?)),
            b'A' => {
                let mut r = Reader(self.longstr()?);
                let mut items = Vec::new();
                while !r.0.is_empty() {
                    items.push(r.value()?);
                }
                Value::Array(items)
            }
            b'T' => Value::Timestamp(self.longlong()?),
            b'F' => Value::Table(self.table()?),
            b'V' => Value::Void,
            other => {
                return Err(format!(
                    "a field table value of unknown type {:?}",
                    char::from(other)
                ));
            }
        };
        Ok(v)
    }
}

/// Writes a method frame on `channel`: its ids, then what `args` writes.
pub(crate) fn method_frame(
    buf: &mut BytesMut,
    channel: u16,
    (class, method): (u16, u16),
    args: impl FnOnce(&mut BytesMut),
) {
    frame(buf, METHOD, channel, |b| {
        b.put_u16(class);
        b.put_u16(method);
        args(b);
    });
}

/// Writes a frame whose payload `payload` writes.
fn frame(buf: &mut BytesMut, kind: u8, channel: u16, payload: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    let start = buf.len();
    payload(buf);
    let size = (buf.len() - start) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

/// A heartbeat frame.
pub(crate) fn heartbeat(buf: &mut BytesMut) {
    frame(buf, HEARTBEAT, 0, |_| {});
}

/// Writes a message's content: its header frame and body frames of at
/// most `frame_max` bytes each. `Err` (and nothing written) when the
/// properties do not fit in one frame, with their size.
pub(crate) fn content(
    buf: &mut BytesMut,
    channel: u16,
    properties: &Properties,
    body: &[u8],
    frame_max: usize,
) -> Result<(), usize> {
    let start = buf.len();
    frame(buf, HEADER, channel, |b| {
        b.put_u16(60);
        b.put_u16(0);
        b.put_u64(body.len() as u64);
        put_properties(b, properties);
    });
    let header = buf.len() - start;
    if header > frame_max {
        buf.truncate(start);
        return Err(header - FRAME_OVERHEAD);
    }
    for part in body.chunks(frame_max.saturating_sub(FRAME_OVERHEAD).max(1)) {
        frame(buf, BODY, channel, |b| b.put_slice(part));
    }
    Ok(())
}

fn put_properties(b: &mut BytesMut, p: &Properties) {
    let flags_at = b.len();
    b.put_u16(0);
    let mut flags = 0u16;
    let mut shortstr = |b: &mut BytesMut, bit: u16, v: &Option<String>| {
        if let Some(v) = v {
            flags |= 1 << bit;
            put_shortstr(b, v.as_bytes());
        }
    };
    shortstr(b, 15, &p.content_type);
    shortstr(b, 14, &p.content_encoding);
    let mut flags_more = 0u16;
    if let Some(h) = &p.headers {
        flags_more |= 1 << 13;
        put_table(b, h);
    }
    if let Some(v) = p.delivery_mode {
        flags_more |= 1 << 12;
        b.put_u8(v);
    }
    if let Some(v) = p.priority {
        flags_more |= 1 << 11;
        b.put_u8(v);
    }
    shortstr(b, 10, &p.correlation_id);
    shortstr(b, 9, &p.reply_to);
    shortstr(b, 8, &p.expiration);
    shortstr(b, 7, &p.message_id);
    if let Some(v) = p.timestamp {
        flags_more |= 1 << 6;
        b.put_u64(v);
    }
    shortstr(b, 5, &p.kind);
    shortstr(b, 4, &p.user_id);
    shortstr(b, 3, &p.app_id);
    let flags = flags | flags_more;
    b[flags_at..flags_at + 2].copy_from_slice(&flags.to_be_bytes());
}

/// A short string: at most 255 bytes (the caller checks; longer is cut).
pub(crate) fn put_shortstr(b: &mut BytesMut, s: &[u8]) {
    let s = &s[..s.len().min(255)];
    b.put_u8(s.len() as u8);
    b.put_slice(s);
}

pub(crate) fn put_longstr(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(s.len() as u32);
    b.put_slice(s);
}

pub(crate) fn put_table(b: &mut BytesMut, table: &[(String, Value)]) {
    let size_at = b.len();
    b.put_u32(0);
    let start = b.len();
    for (name, value) in table {
        put_shortstr(b, name.as_bytes());
        put_value(b, value);
    }
    let size = (b.len() - start) as u32;
    b[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
}

fn put_value(b: &mut BytesMut, v: &Value) {
    match v {
        Value::Bool(v) => {
            b.put_u8(b't');
            b.put_u8(u8::from(*v));
        }
        Value::I8(v) => {
            b.put_u8(b'b');
            b.put_i8(*v);
        }
        Value::U8(v) => {
            b.put_u8(b'B');
            b.put_u8(*v);
        }
        Value::I16(v) => {
            b.put_u8(b's');
            b.put_i16(*v);
        }
        Value::U16(v) => {
            b.put_u8(b'u');
            b.put_u16(*v);
        }
        Value::I32(v) => {
            b.put_u8(b'I');
            b.put_i32(*v);
        }
        Value::U32(v) => {
            b.put_u8(b'i');
            b.put_u32(*v);
        }
        Value::I64(v) => {
            b.put_u8(b'l');
            b.put_i64(*v);
        }
        Value::F32(v) => {
            b.put_u8(b'f');
            b.put_f32(*v);
        }
        Value::F64(v) => {
            b.put_u8(b'd');
            b.put_f64(*v);
        }
        Value::Decimal(scale, v) => {
            b.put_u8(b'D');
            b.put_u8(*scale);
            b.put_u32(*v);
        }
        Value::LongStr(s) => {
            b.put_u8(b'S');
            put_longstr(b, s);
        }
        Value::Bytes(s) => {
            b.put_u8(b'x');
            put_longstr(b, s);
        }
        Value::Array(items) => {
            b.put_u8(b'A');
            let size_at = b.len();
            b.put_u32(0);
            let start = b.len();
            for item in items {
                put_value(b, item);
            }
            let size = (b.len() - start) as u32;
            b[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
        }
        Value::Timestamp(v) => {
            b.put_u8(b'T');
            b.put_u64(*v);
        }
        Value::Table(t) => {
            b.put_u8(b'F');
            put_table(b, t);
        }
        Value::Void => b.put_u8(b'V'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_and_properties_read_back_as_written() {
        let props = Properties {
            content_type: Some("text/plain".into()),
            headers: Some(vec![
                ("s".into(), Value::LongStr(Bytes::from_static(b"v"))),
                ("n".into(), Value::I64(-7)),
                ("t".into(), Value::Bool(true)),
                (
                    "a".into(),
                    Value::Array(vec![Value::U8(1), Value::Table(vec![])]),
                ),
            ]),
            delivery_mode: Some(2),
            message_id: Some("events/0/41".into()),
            timestamp: Some(1_700_000_000),
            app_id: Some("sluice".into()),
            ..Properties::default()
        };
        let body = vec![7u8; 300];
        let mut buf = BytesMut::new();
        // Too big a header for 64-byte frames: said, nothing written.
        let too_big = content(&mut buf, 1, &props, &body, 64);
        assert!(
            matches!(too_big, Err(n) if n + FRAME_OVERHEAD > 64),
            "{too_big:?}"
        );
        assert!(buf.is_empty());
        content(&mut buf, 1, &props, &body, 128).unwrap();
        let Some(Frame::Header(1, 300, read)) = read(&mut buf, 1 << 20).unwrap() else {
            panic!("a header frame");
        };
        assert_eq!(*read, props);
        let mut got = Vec::new();
        while let Some(Frame::Body(1, part)) = super::read(&mut buf, 1 << 20).unwrap() {
            assert!(part.len() <= 120);
            got.extend_from_slice(&part);
        }
        assert_eq!(got, body);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_is_read_only_once_whole_and_a_bad_end_is_an_error() {
        let mut whole = BytesMut::new();
        method_frame(&mut whole, 1, (60, 80), |b| {
            b.put_u64(42);
            b.put_u8(1);
        });
        let mut buf = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(read(&mut buf, 1 << 20).unwrap(), None);
        buf.put_u8(0xCE);
        assert_eq!(
            read(&mut buf, 1 << 20).unwrap(),
            Some(Frame::Method(
                1,
                Method::BasicAck {
                    tag: 42,
                    multiple: true
                }
            ))
        );
        let mut bad = BytesMut::from(&whole[..whole.len() - 1]);
        bad.put_u8(0);
        assert!(read(&mut bad, 1 << 20).is_err());
        let mut big = whole.clone();
        assert!(read(&mut big, 4).unwrap_err().contains("more than"));
    }

    #[test]
    fn a_protocol_header_answer_says_another_version() {
        let mut buf = BytesMut::from(&b"AMQP\x00\x00\x09\x01"[..]);
        assert!(
            read(&mut buf, 1 << 20)
                .unwrap_err()
                .contains("another AMQP")
        );
    }
}
