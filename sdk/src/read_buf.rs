//! [`ReadBuf`]: the buffer of a source that frames a byte stream (lines,
//! length-prefixed frames, events) read from a socket, an HTTP body or a
//! file.

use std::io;
use std::ops::{Index, Range};

/// Bytes a source has read and not yet framed. A frame cut by the end of a
/// read waits here for the rest of it.
///
/// A frame is taken from the front of [`rest`](Self::rest) with
/// [`take`](Self::take), as a range to index the buffer with; the range is
/// good until the next [`read_with`](Self::read_with), which may move what
/// is left to the front.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    /// `buf[start..]` is not taken yet.
    start: usize,
    /// Bytes asked for by one read.
    chunk: usize,
}

impl ReadBuf {
    /// An empty buffer that reads `chunk` bytes at a time.
    pub fn new(chunk: usize) -> Self {
        ReadBuf {
            buf: Vec::new(),
            start: 0,
            chunk: chunk.max(1),
        }
    }

    /// The bytes not taken yet.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Takes the first `used` bytes of [`rest`](Self::rest), and returns
    /// `within` (a range of those bytes, e.g. a frame without its length or
    /// its line ending) as a range of the buffer.
    pub fn take(&mut self, used: usize, within: Range<usize>) -> Range<usize> {
        debug_assert!(within.end <= used && used <= self.buf.len() - self.start);
        let at = self.start;
        self.start += used;
        at + within.start..at + within.end
    }

    /// Forgets what it holds (the stream it came from is gone).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Reads once more: `read` gets room for `chunk` bytes after what the
    /// buffer holds and says how many it filled, as [`io::Read::read`]
    /// does. What `read` returns is returned. Room is made first by
    /// dropping what was taken, so the buffer holds at most one chunk more
    /// than a cut frame.
    pub fn read_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        if self.start == self.buf.len() {
            self.clear();
        } else if self.start >= self.chunk {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let filled = self.buf.len();
        self.buf.resize(filled + self.chunk, 0);
        let got = read(&mut self.buf[filled..]);
        let n = got.as_ref().map_or(0, |&n| n.min(self.chunk));
        self.buf.truncate(filled + n);
        got
    }
}

impl Index<Range<usize>> for ReadBuf {
    type Output = [u8];

    /// The bytes of a range [`take`](ReadBuf::take) returned.
    fn index(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `buf` taken, without their `\n`.
    fn lines(buf: &mut ReadBuf) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(at) = buf.rest().iter().position(|&b| b == b'\n') {
            let line = buf.take(at + 1, 0..at);
            out.push(String::from_utf8(buf[line].to_vec()).unwrap());
        }
        out
    }

    fn feed(buf: &mut ReadBuf, bytes: &[u8]) -> usize {
        buf.read_with(|into| {
            let n = bytes.len().min(into.len());
            into[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        })
        .unwrap()
    }

    #[test]
    fn a_frame_cut_by_the_end_of_a_read_waits_for_the_rest() {
        let mut buf = ReadBuf::new(4);
        // At most a chunk a read.
        assert_eq!(feed(&mut buf, b"ab\ncd"), 4);
        assert_eq!(lines(&mut buf), ["ab"]);
        assert_eq!(buf.rest(), b"c");
        assert_eq!(feed(&mut buf, b"d\nef"), 4);
        assert_eq!(lines(&mut buf), ["cd"]);
        assert_eq!(buf.rest(), b"ef");
        feed(&mut buf, b"g\n");
        assert_eq!(lines(&mut buf), ["efg"]);
        assert!(buf.rest().is_empty());
    }

    #[test]
    fn a_failed_read_keeps_what_was_there_and_adds_nothing() {
        let mut buf = ReadBuf::new(4);
        feed(&mut buf, b"xy");
        let got = buf.read_with(|_| Err(io::ErrorKind::WouldBlock.into()));
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(buf.rest(), b"xy");
        buf.clear();
        assert!(buf.rest().is_empty());
    }
}
