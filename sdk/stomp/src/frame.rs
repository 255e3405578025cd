//! STOMP 1.2 frames: the client's written straight into the connection's
//! buffer, the server's read out of it.
//!
//! A frame is a command line, `name:value` header lines, an empty line, the
//! body and a NUL. Header values escape `\`, newline, carriage return and
//! `:` (`\\`, `\n`, `\r`, `\c`), except in `CONNECT` and `CONNECTED`. A body
//! with a `content-length` header is that many bytes (NULs allowed);
//! without, it runs to the first NUL. Between frames a server may send
//! end-of-line bytes: its heart-beats.

use bytes::{Buf, Bytes, BytesMut};

/// A frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `CONNECTED`, `MESSAGE`, `RECEIPT` or `ERROR`.
    pub command: String,
    /// Its headers, unescaped, in order; a repeated name keeps every
    /// occurrence, and [`Frame::header`] gives the first, as the protocol
    /// says.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Bytes,
}

impl Frame {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What reading the buffer found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Read {
    /// A whole frame.
    Frame(Frame),
    /// Only heart-beats (end-of-line bytes), now consumed.
    HeartBeat,
    /// Not enough bytes yet.
    Partial,
}

/// Reads the next frame (or heart-beats) out of `buf`, taking what it
/// consumed. `Err` says how the bytes break the protocol; `max` bounds a
/// frame's size.
pub(crate) fn read(buf: &mut BytesMut, max: usize) -> Result<Read, String> {
    let eols = buf
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    if eols > 0 {
        // A lone `\r` may be the first half of a `\r\n` not read yet: keep
        // it for the next read.
        let keep = usize::from(buf[eols - 1] == b'\r');
        buf.advance(eols - keep);
        if eols - keep > 0 {
            return Ok(Read::HeartBeat);
        }
        if buf.len() == 1 {
            return Ok(Read::Partial);
        }
    }
    let Some(head_len) = head_end(buf) else {
        if buf.len() > max {
            return Err(format!("a frame's headers run past {max} bytes"));
        }
        return Ok(Read::Partial);
    };
    let (head_end, sep) = head_len;
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| "a frame's command or headers are not UTF-8".to_owned())?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let command = lines.next().unwrap_or_default().to_owned();
    let escaped = command != "CONNECTED";
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("a {command} header line without a colon: {line:?}"))?;
        if escaped {
            headers.push((unescape(name)?, unescape(value)?));
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
    let body_start = head_end + sep;
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| {
            v.parse::<usize>()
                .map_err(|_| format!("a {command} with content-length {v:?}"))
        })
        .transpose()?;
    let body_end = match length {
        Some(n) => {
            if n > max {
                return Err(format!("a {command} of {n} bytes, more than {max}"));
            }
            if buf.len() < body_start + n + 1 {
                return Ok(Read::Partial);
            }
            if buf[body_start + n] != 0 {
                return Err(format!(
                    "a {command} whose body does not end with NUL after its content-length"
                ));
            }
            body_start + n
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(i) => body_start + i,
            None if buf.len() - body_start > max => {
                return Err(format!("a {command} body runs past {max} bytes"));
            }
            None => return Ok(Read::Partial),
        },
    };
    let mut frame = buf.split_to(body_end + 1);
    frame.truncate(body_end);
    let body = frame.split_off(body_start).freeze();
    Ok(Read::Frame(Frame {
        command,
        headers,
        body,
    }))
}

/// Where the first frame's headers end (its first empty line), and the
/// length of the line break that ends them: one pass that stops there, so
/// a buffer of many frames is not scanned to its end for each.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(p) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + p;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some((at, 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((at, 3)),
            _ => from = at + 1,
        }
    }
    None
}

fn unescape(s: &str) -> Result<String, String> {
    if !s.contains('\\') {
        return Ok(s.to_owned());
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next() {
            Some('n') => '\n',
            Some('r') => '\r',
            Some('c') => ':',
            Some('\\') => '\\',
            other => return Err(format!("a header with an undefined escape \\{other:?}")),
        });
    }
    Ok(out)
}

/// Writes a client frame into `out`. Header values are escaped, except in
/// `CONNECT`; a body goes with its `content-length`.
pub(crate) fn write(out: &mut BytesMut, command: &str, headers: &[(&str, &[u8])], body: &[u8]) {
    let escaped = command != "CONNECT";
    out.reserve(command.len() + 64 + body.len());
    out.extend_from_slice(command.as_bytes());
    out.extend_from_slice(b"\n");
    for (name, value) in headers {
        if escaped {
            escape_into(out, name.as_bytes());
            out.extend_from_slice(b":");
            escape_into(out, value);
        } else {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b":");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"\n");
    }
    if !body.is_empty() || command == "SEND" {
        out.extend_from_slice(b"content-length:");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\0");
}

fn escape_into(out: &mut BytesMut, bytes: &[u8]) {
    if !bytes
        .iter()
        .any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b':'))
    {
        out.extend_from_slice(bytes);
        return;
    }
    for &b in bytes {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b':' => out.extend_from_slice(b"\\c"),
            b => out.extend_from_slice(&[b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(bytes: &[u8]) -> (Result<Read, String>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (read(&mut buf, 1 << 20), buf)
    }

    #[test]
    fn a_message_with_a_content_length_keeps_the_nuls_in_its_body() {
        let (got, rest) =
            frame(b"MESSAGE\nmessage-id:ID\\c1\ncontent-length:3\nack:7\n\na\0b\0\nRECEIPT");
        let Ok(Read::Frame(f)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(f.command, "MESSAGE");
        assert_eq!(f.header("message-id"), Some("ID:1"));
        assert_eq!(f.header("ack"), Some("7"));
        assert_eq!(&f.body[..], b"a\0b");
        assert_eq!(&rest[..], b"\nRECEIPT");
    }

    #[test]
    fn a_body_without_a_length_runs_to_the_first_nul_and_the_first_header_wins() {
        let (got, _) = frame(b"ERROR\r\nmessage:one\r\nmessage:two\r\n\r\nwhy\0");
        let Ok(Read::Frame(f)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(f.header("message"), Some("one"));
        assert_eq!(&f.body[..], b"why");
    }

    #[test]
    fn heart_beats_are_consumed_and_a_half_frame_waits() {
        let (got, rest) = frame(b"\n\r\nRECEIPT\nreceipt-id:1\n");
        assert_eq!(got, Ok(Read::HeartBeat));
        assert_eq!(&rest[..], b"RECEIPT\nreceipt-id:1\n");
        let (got, _) = frame(b"RECEIPT\nreceipt-id:1\n");
        assert_eq!(got, Ok(Read::Partial));
        let (got, _) = frame(b"MESSAGE\ncontent-length:5\n\nab");
        assert_eq!(got, Ok(Read::Partial));
        let (got, rest) = frame(b"\r");
        assert_eq!(got, Ok(Read::Partial));
        assert_eq!(&rest[..], b"\r");
    }

    #[test]
    fn what_breaks_the_protocol_is_said() {
        let (got, _) = frame(b"MESSAGE\ncontent-length:1\n\nab\0");
        assert!(got.unwrap_err().contains("does not end with NUL"));
        let (got, _) = frame(b"MESSAGE\nno colon\n\n\0");
        assert!(got.unwrap_err().contains("without a colon"));
        let (got, _) = frame(b"MESSAGE\na:\\t\n\n\0");
        assert!(got.unwrap_err().contains("undefined escape"));
    }

    #[test]
    fn a_written_frame_escapes_its_headers_and_reads_back() {
        let mut out = BytesMut::new();
        write(
            &mut out,
            "SEND",
            &[("destination", b"/queue/a"), ("note", b"x:y\nz\\")],
            b"hi\0there",
        );
        // Read back as a server frame would be.
        let (got, rest) = frame(&out);
        let Ok(Read::Frame(f)) = got else {
            panic!("{got:?}")
        };
        assert!(rest.is_empty());
        assert_eq!(f.header("note"), Some("x:y\nz\\"));
        assert_eq!(f.header("content-length"), Some("8"));
        assert_eq!(&f.body[..], b"hi\0there");
        let mut out = BytesMut::new();
        write(&mut out, "CONNECT", &[("passcode", b"a:b")], b"");
        assert_eq!(&out[..], b"CONNECT\npasscode:a:b\n\n\0");
    }
}
