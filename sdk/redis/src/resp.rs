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
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut n = n;
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.buf.extend_from_slice(&digits[i..]);
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
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    let mut at = 0;
    match parse_at(buf, &mut at, 0)? {
        Some(v) => Ok(Some((v, at))),
        None => Ok(None),
    }
}

/// Nesting deeper than this is not a reply any command here gets.
const MAX_DEPTH: usize = 16;

fn parse_at(buf: &[u8], at: &mut usize, depth: usize) -> Result<Option<Value>, String> {
    if depth > MAX_DEPTH {
        return Err("a reply nested deeper than 16 arrays".into());
    }
    let Some(line_end) = memchr::memmem::find(&buf[*at..], b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[*at..*at + line_end].split_first() else {
        return Err("an empty reply line".into());
    };
    let after_line = *at + line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{:?} is not a number", text()))
    };
    let value = match kind {
        b'+' => Value::Status(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Int(number()?),
        b'$' => {
            let len = number()?;
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
            let len = number()?;
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
}
