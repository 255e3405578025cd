//! RESP2, the Redis serialization protocol: commands as arrays of bulk
//! strings, replies parsed from the front of a buffer. No I/O here.

use std::fmt;

/// A reply from the server.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A null bulk string or array (`$-1`, `*-1`): no such key, a
    /// `MULTI` that was aborted, a blocking read that timed out.
    Nil,
    /// A status reply (`+OK`, `+QUEUED`).
    Status(String),
    /// An error reply (`-WRONGTYPE …`), as the server said it.
    Error(String),
    /// An integer reply.
    Int(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// An array of replies.
    Array(Vec<Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Status(s) => write!(f, "+{s}"),
            Value::Error(e) => write!(f, "-{e}"),
            Value::Int(i) => write!(f, ":{i}"),
            Value::Bulk(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            Value::Array(a) => f.debug_list().entries(a).finish(),
        }
    }
}

impl Value {
    /// The reply as text, if it is a bulk or status string.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Bulk(b) => std::str::from_utf8(b).ok(),
            Value::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The elements of an array reply (none for `Nil`).
    pub fn into_array(self) -> Option<Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            Value::Nil => Some(Vec::new()),
            _ => None,
        }
    }
}

/// Commands written at once, their replies read in order: a pipeline.
#[derive(Debug, Default, Clone)]
pub struct Commands {
    buf: Vec<u8>,
    count: usize,
}

impl Commands {
    /// Adds a command, its name first.
    pub fn push<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.start(args.len());
        for a in args {
            self.arg(a.as_ref());
        }
    }

    /// Begins a command of `args` arguments (its name included); add each
    /// with [`arg`](Self::arg). For commands built from borrowed parts
    /// without a list of them.
    pub fn start(&mut self, args: usize) -> &mut Self {
        self.count += 1;
        self.header(b'*', args);
        self
    }

    /// Adds an argument to the command begun last.
    pub fn arg(&mut self, a: &[u8]) -> &mut Self {
        self.header(b'$', a.len());
        self.buf.extend_from_slice(a);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    fn header(&mut self, kind: u8, n: usize) {
        self.buf.push(kind);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.buf.extend_from_slice(b"\r\n");
    }

    /// How many commands.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Forgets every command, keeping the buffer.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }

    /// The encoded commands.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when it is not
/// all there yet, else the reply and the bytes it took. `Err` when the
/// bytes are not RESP2.
///
/// A large reply arrives in pieces: [`reply_len`] first says whether it is
/// whole without building anything, so it is parsed once.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    if reply_len(buf)?.is_none() {
        return Ok(None);
    }
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(v) => Ok(Some((v, at))),
        None => Ok(None),
    }
}

/// The length of the reply at the front of `buf` if all of it is there.
/// Builds nothing: it walks the lines, skipping bulk strings by their
/// length.
pub fn reply_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    // Replies still to walk: an array's elements are added to it.
    let mut left: u64 = 1;
    while left > 0 {
        let Some(Line { kind, text, next }) = line(buf, at)? else {
            return Ok(None);
        };
        left -= 1;
        at = next;
        match kind {
            b'$' => {
                let len = number(text)?;
                if len >= 0 {
                    let end = at + len as usize + 2;
                    if buf.len() < end {
                        return Ok(None);
                    }
                    at = end;
                }
            }
            b'*' => {
                let len = number(text)?;
                if len > 0 {
                    left += len as u64;
                }
            }
            _ => {}
        }
    }
    Ok(Some(at))
}

/// A reply line, without its CRLF.
struct Line<'a> {
    /// Its first byte: what the reply is (`$`, `*`, `+`, `-`, `:`).
    kind: u8,
    /// The rest of it.
    text: &'a [u8],
    /// Where the next line (or a bulk string's bytes) begins.
    next: usize,
}

/// The line at `at`; `None` when it is not all there.
fn line(buf: &[u8], at: usize) -> Result<Option<Line<'_>>, String> {
    // Most lines are a few bytes (`$5`, `*2`): a plain loop finds their
    // end sooner than a vector search gets going.
    let Some(end) = buf[at..].iter().position(|&b| b == b'\n') else {
        return Ok(None);
    };
    let end = at + end;
    if end == at || buf[end - 1] != b'\r' {
        return Err("a reply line not ended by CRLF".into());
    }
    match buf[at..end - 1].split_first() {
        Some((&kind, text)) => Ok(Some(Line {
            kind,
            text,
            next: end + 1,
        })),
        None => Err("an empty reply line".into()),
    }
}

/// A length or an integer reply: ASCII digits, perhaps after a `-`.
fn number(line: &[u8]) -> Result<i64, String> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    let not_a_number = || format!("{:?} is not a number", String::from_utf8_lossy(line));
    // Nineteen digits fit a u64 (no overflow checks: in wasm32 each is a
    // call to a 128-bit multiply), and the sign is checked at the end.
    if digits.is_empty() || digits.len() > 19 {
        return Err(not_a_number());
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(not_a_number());
        }
        n = n * 10 + u64::from(d - b'0');
    }
    match (negative, i64::try_from(n)) {
        (false, Ok(n)) => Ok(n),
        (true, Ok(n)) => Ok(-n),
        (true, Err(_)) if n == i64::MIN.unsigned_abs() => Ok(i64::MIN),
        _ => Err(not_a_number()),
    }
}

/// Nesting deeper than this is not a reply any command here gets.
const MAX_DEPTH: usize = 16;

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Err("a reply nested deeper than 16 arrays".into());
    }
    let Some(Line {
        kind,
        text: line,
        next: after_line,
    }) = line(buf, *at)?
    else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let value = match kind {
        b'+' => Value::Status(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number(line)?),
        b'$' => {
            let len = number(line)?;
            if len < 0 {
                Value::Nil
            } else {
                let len = len as usize;
                if buf.len() < after_line + len + 2 {
                    return Ok(None);
                }
                if &buf[after_line + len..after_line + len + 2] != b"\r\n" {
                    return Err("a bulk string not ended by CRLF".into());
                }
                *at = after_line + len + 2;
                return Ok(Some(Value::Bulk(
                    buf[after_line..after_line + len].to_vec(),
                )));
            }
        }
        b'*' => {
            let len = number(line)?;
            if len < 0 {
                Value::Nil
            } else {
                *at = after_line;
                let mut items = Vec::with_capacity((len as usize).min(1024));
                for _ in 0..len {
                    match parse_at(buf, at, depth + 1)? {
                        Some(v) => items.push(v),
                        None => return Ok(None),
                    }
                }
                return Ok(Some(Value::Array(items)));
            }
        }
        other => {
            return Err(format!(
                "a reply that begins with {:?}: is it a Redis server (RESP2)?",
                other as char
            ));
        }
    };
    *at = after_line;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut c = Commands::default();
        c.push(&["SET", "k", ""]);
        c.start(2).arg(b"GET").arg(b"k");
        assert_eq!(
            c.bytes(),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn replies_parse_whole_or_wait_for_the_rest() {
        let all = b"*3\r\n+OK\r\n$5\r\nhello\r\n*2\r\n:-7\r\n$-1\r\n-ERR no\r\n";
        let (v, used) = parse(all).unwrap().unwrap();
        assert_eq!(
            v,
            Value::Array(vec![
                Value::Status("OK".into()),
                Value::Bulk(b"hello".to_vec()),
                Value::Array(vec![Value::Int(-7), Value::Nil]),
            ])
        );
        assert_eq!(
            parse(&all[used..]).unwrap().unwrap().0,
            Value::Error("ERR no".into())
        );
        for cut in 0..used {
            assert_eq!(parse(&all[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(b"HTTP/1.1 400\r\n").is_err());
        assert!(parse(b"$3\r\nabcde\r\n").is_err());
    }

    #[test]
    fn the_length_of_a_reply_is_known_before_it_is_parsed() {
        let all = b"*2\r\n*2\r\n$3\r\n1-1\r\n*2\r\n$5\r\nvalue\r\n$2\r\nab\r\n$-1\r\n+OK\r\n";
        let whole = all.len() - 5;
        assert_eq!(reply_len(all).unwrap(), Some(whole));
        for cut in 0..whole {
            assert_eq!(reply_len(&all[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(reply_len(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(reply_len(b"*-1\r\n").unwrap(), Some(5));
        assert!(reply_len(b"*x\r\n").is_err());
        assert!(reply_len(b"$3\nabc").is_err());
        assert_eq!(number(b"-12").unwrap(), -12);
        assert_eq!(number(b"9223372036854775807").unwrap(), i64::MAX);
        assert_eq!(number(b"-9223372036854775808").unwrap(), i64::MIN);
        for bad in [
            &b""[..],
            b"-",
            b"9223372036854775808",
            b"99999999999999999999",
            b"1x",
        ] {
            assert!(number(bad).is_err(), "{bad:?}");
        }
    }
}
