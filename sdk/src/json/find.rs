//! [`find`]: one field of a JSON record, read in one pass over its bytes
//! that also checks the whole record is JSON.

use super::{NotJson, Pointer};

/// Nesting deeper than this is refused, as `serde_json` does: a scanner
/// that recurses must not be able to overflow a plugin's stack.
const MAX_DEPTH: u32 = 128;

/// Checks that `doc` is one JSON value (whitespace around it allowed) and
/// returns the bytes of the value `pointer` names, if it is there.
///
/// One pass, nothing allocated (unless a key on the path is escaped):
/// UTF-8 is checked where it can be (inside strings: anywhere else a byte
/// past ASCII is a syntax error), and a string's plain bytes are skipped
/// sixteen at a time.
pub fn find<'a>(doc: &'a [u8], pointer: &Pointer) -> Result<Option<&'a [u8]>, NotJson> {
    let mut s = Scanner { b: doc, i: 0 };
    let found = s.value(Some(&pointer.tokens), 0)?;
    s.ws();
    if s.i != doc.len() {
        return Err(s.fail("trailing characters"));
    }
    Ok(found.map(|(start, end)| &doc[start..end]))
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// Where a found value is: `start..end` of the document.
type Span = Option<(usize, usize)>;

impl<'a> Scanner<'a> {
    fn fail(&self, what: &'static str) -> NotJson {
        NotJson { at: self.i, what }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8, what: &'static str) -> Result<(), NotJson> {
        self.ws();
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.fail(what))
        }
    }

    /// One value; `path` is what is still to find in it (`Some(&[])`:
    /// this value), `None` when nothing is looked for here.
    fn value(&mut self, path: Option<&[String]>, depth: u32) -> Result<Span, NotJson> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nesting too deep"));
        }
        self.ws();
        let start = self.i;
        let inner = match (self.peek(), path) {
            (Some(b'{'), Some([token, rest @ ..])) => self.object(Some((token, rest)), depth)?,
            (Some(b'{'), _) => self.object(None, depth)?,
            (Some(b'['), Some([token, rest @ ..])) => {
                // A token that is not an index finds nothing in an array.
                let index = token
                    .parse::<usize>()
                    .ok()
                    .filter(|_| token == "0" || !token.starts_with('0') && !token.starts_with('+'));
                self.array(index.map(|i| (i, rest)), depth)?
            }
            (Some(b'['), _) => self.array(None, depth)?,
            (Some(b'"'), _) => {
                self.string()?;
                None
            }
            (Some(b't'), _) => self.literal(b"true")?,
            (Some(b'f'), _) => self.literal(b"false")?,
            (Some(b'n'), _) => self.literal(b"null")?,
            (Some(b'-' | b'0'..=b'9'), _) => {
                self.number()?;
                None
            }
            _ => return Err(self.fail("expected a value")),
        };
        Ok(match path {
            Some([]) => Some((start, self.i)),
            _ => inner,
        })
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<Span, NotJson> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(None)
        } else {
            Err(self.fail("expected true, false or null"))
        }
    }

    fn object(&mut self, want: Option<(&String, &[String])>, depth: u32) -> Result<Span, NotJson> {
        self.i += 1; // {
        let mut found = None;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(None);
        }
        loop {
            self.ws();
            let (key, escaped) = self.string()?;
            self.eat(b':', "expected ':'")?;
            let path = want.and_then(|(token, rest)| key_is(key, escaped, token).then_some(rest));
            let span = self.value(path, depth + 1)?;
            if path.is_some() {
                // The last of duplicate keys wins, as in serde_json (also
                // when the field is in the first and not in the last).
                found = span;
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(found);
                }
                _ => return Err(self.fail("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, want: Option<(usize, &[String])>, depth: u32) -> Result<Span, NotJson> {
        self.i += 1; // [
        let mut found = None;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(None);
        }
        let mut index = 0;
        loop {
            let path = want.and_then(|(i, rest)| (i == index).then_some(rest));
            if let Some(span) = self.value(path, depth + 1)? {
                found = Some(span);
            }
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(found);
                }
                _ => return Err(self.fail("expected ',' or ']'")),
            }
        }
    }

    /// A string; returns its raw contents (escapes as written), and
    /// whether it holds an escape.
    fn string(&mut self) -> Result<(&'a [u8], bool), NotJson> {
        if self.peek() != Some(b'"') {
            return Err(self.fail("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.peek() {
                None => return Err(self.fail("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    let b: &'a [u8] = self.b;
                    return Ok((&b[start..self.i - 1], escaped));
                }
                Some(0x80..) => {
                    // A run of bytes past ASCII holds whole characters.
                    let run = self.b[self.i..]
                        .iter()
                        .position(u8::is_ascii)
                        .unwrap_or(self.b.len() - self.i);
                    if std::str::from_utf8(&self.b[self.i..self.i + run]).is_err() {
                        return Err(self.fail("not UTF-8"));
                    }
                    self.i += run;
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.i += 1;
                        }
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.fail("invalid \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.fail("invalid escape")),
                    }
                }
                // What `skip_plain` stops at and is none of the above.
                Some(_) => return Err(self.fail("control character in a string")),
            }
        }
    }

    /// Skips the bytes of a string that need no look (printable ASCII but
    /// `"` and `\\`) sixteen at a time (one wasm SIMD test in a plugin),
    /// then one at a time up to the first that does.
    fn skip_plain(&mut self) {
        while let Some(chunk) = self.b.get(self.i..self.i + 16) {
            if !all_plain(chunk.try_into().expect("16 bytes")) {
                break;
            }
            self.i += 16;
        }
        while self.peek().is_some_and(plain) {
            self.i += 1;
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), NotJson> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.fail("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.fail("expected a digit after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.fail("expected a digit in the exponent"));
            }
        }
        Ok(())
    }
}

/// A byte a string may hold as it is, and that needs no look: printable
/// ASCII but `"` and `\\`.
fn plain(b: u8) -> bool {
    (0x20..0x80).contains(&b) && b != b'"' && b != b'\\'
}

/// Whether all sixteen bytes are [`plain`]: four vector compares in a
/// plugin (wasm SIMD).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn all_plain(chunk: &[u8; 16]) -> bool {
    use core::arch::wasm32::{
        u8x16_eq, u8x16_ge, u8x16_lt, u8x16_splat, v128, v128_any_true, v128_load, v128_or,
    };
    // SAFETY: `v128_load` reads 16 bytes at any alignment, and `chunk` is
    // 16 bytes long.
    let v: v128 = unsafe { v128_load(chunk.as_ptr().cast()) };
    let special = v128_or(
        v128_or(
            u8x16_lt(v, u8x16_splat(0x20)),
            u8x16_ge(v, u8x16_splat(0x80)),
        ),
        v128_or(
            u8x16_eq(v, u8x16_splat(b'"')),
            u8x16_eq(v, u8x16_splat(b'\\')),
        ),
    );
    !v128_any_true(special)
}

/// Whether all sixteen bytes are [`plain`] (elsewhere than in a plugin:
/// the tests, and a host that links the SDK).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn all_plain(chunk: &[u8; 16]) -> bool {
    chunk.iter().all(|&b| plain(b))
}

/// Whether the raw key (escapes as written, `escaped` if it holds one)
/// is `token`.
fn key_is(raw: &[u8], escaped: bool, token: &str) -> bool {
    if !escaped {
        return raw == token.as_bytes();
    }
    // Rare: an escaped key, read as serde_json reads it.
    let quoted = [b"\"", raw, b"\""].concat();
    serde_json::from_slice::<String>(&quoted).is_ok_and(|k| k == token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    /// As [`agrees_on_bytes`], for text.
    fn agrees(doc: &str, pointer: &str) {
        agrees_on_bytes(doc.as_bytes(), pointer);
    }

    #[test]
    fn finds_what_serde_json_finds_and_refuses_what_it_refuses() {
        let docs = [
            r#"{"seq":12,"pad":"abc"}"#,
            r#" { "a" : { "b" : [ 1 , { "c" : null } ] } } "#,
            r#"{"a":1,"a":2}"#,
            r#"{"a":{"b":1},"a":{}}"#,
            r#"{"a":[1,[2,3],{"b":[4]}],"a":[5,[6]]}"#,
            r#"[[1,2],[3,[4,5]],6]"#,
            r#"{"a":{"b":{"c":1}},"b":2}"#,
            r#"{"a/b":1,"m~n":2,"":3}"#,
            r#"{"\u0061":"escaped key","b":"\"q\" \\ \n \u00e9"}"#,
            r#"[10,20,[30]]"#,
            r#""just a string""#,
            "-0.5e+10",
            "0",
            "true",
            "null",
            "{}",
            "[]",
            r#"{"tags":["x","y"]}"#,
            // Not JSON.
            "",
            "{",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            "[1,2",
            "01",
            "1.",
            "-",
            "1e",
            "tru",
            r#""unterminated"#,
            "\"tab\there\"",
            r#""bad \x escape""#,
            r#"{"a":1} x"#,
            "{\"a\":1}{}",
            r#"{1:2}"#,
            "[,1]",
            "{,}",
            r#"{,"a":1}"#,
            "[1,,2]",
            "[1 2]",
            r#"{"a":1 "b":2}"#,
            "[1,]",
        ];
        let pointers = [
            "", "/seq", "/pad", "/a", "/a/b", "/a/b/1/c", "/a/b/0", "/a~1b", "/m~0n", "/", "/b",
            "/0", "/1", "/2/0", "/01", "/tags/1", "/missing", "/seq/x", "/a/1/1", "/a/2/b/0",
            "/1/1/0", "/1/1", "/a/b/c", "/a/0", "/a/1/0", "/0/1",
        ];
        for doc in docs {
            for pointer in pointers {
                agrees(doc, pointer);
            }
        }
    }

    /// `find` agrees with serde_json: on whether `doc` (bytes that may not
    /// be UTF-8) is JSON, and on the value at `pointer`.
    fn agrees_on_bytes(doc: &[u8], pointer: &str) {
        let p = Pointer::parse(pointer).unwrap();
        let ours = find(doc, &p);
        match serde_json::from_slice::<Value>(doc) {
            Ok(v) => {
                let got = ours
                    .unwrap_or_else(|e| panic!("{doc:?} is JSON, but: {e}"))
                    .map(|raw| serde_json::from_slice::<Value>(raw).unwrap());
                assert_eq!(got.as_ref(), v.pointer(pointer), "{doc:?} at {pointer:?}");
            }
            Err(_) => assert!(ours.is_err(), "{doc:?} is not JSON, but found {ours:?}"),
        }
    }

    #[test]
    fn utf8_is_checked_in_strings_and_a_byte_past_ascii_elsewhere_is_refused() {
        let bad: [&[u8]; 9] = [
            b"\xff",             // never in UTF-8
            b"\xc3",             // a lead byte alone
            b"\xc3(",            // a lead byte before ASCII
            b"\xe2\x82",         // three bytes cut short
            b"\xc0\xaf",         // overlong
            b"\xed\xa0\x80",     // a surrogate
            b"\xf4\x90\x80\x80", // past U+10FFFF
            b"\x80",             // a continuation alone
            "é".as_bytes(),      // fine: the control case
        ];
        for chars in bad {
            for at in [0, 7, 15, 16, 17, 40] {
                let mut doc = br#"{"a":""#.to_vec();
                doc.extend(std::iter::repeat_n(b'x', at));
                doc.extend_from_slice(chars);
                doc.extend_from_slice(br#"yz","b":1}"#);
                agrees_on_bytes(&doc, "/b");
                agrees_on_bytes(&doc, "/a");
            }
            // Outside a string.
            let mut doc = br#"{"a":1}"#.to_vec();
            doc.extend_from_slice(chars);
            agrees_on_bytes(&doc, "/a");
            let doc = [br#"{"a":"#.as_slice(), chars, b"}"].concat();
            agrees_on_bytes(&doc, "/a");
        }
    }

    #[test]
    fn long_strings_are_read_sixteen_bytes_at_a_time_without_missing_a_special_byte() {
        let mut doc = Vec::new();
        for len in 0..50 {
            for special in [
                b"\"".as_slice(),
                b"\\",
                b"\\n",
                b"\t",
                b"\x1f",
                b"\x7f",
                "é".as_bytes(),
                b"\xe9",
            ] {
                doc.clear();
                doc.extend_from_slice(br#"{"pad":""#);
                doc.extend(std::iter::repeat_n(b'x', len));
                doc.extend_from_slice(special);
                doc.extend(std::iter::repeat_n(b'y', 50 - len));
                doc.extend_from_slice(br#"","seq":1}"#);
                agrees_on_bytes(&doc, "/seq");
                agrees_on_bytes(&doc, "/pad");
            }
        }
    }

    #[test]
    fn strings_of_characters_past_ascii_miss_no_special_byte() {
        for len in 0..20 {
            let pad = "é".repeat(len / 2) + &"x".repeat(len);
            for special in ["\\\"", "\\n", "\\u00e9", "\t", "\"", "\\"] {
                for at in [0, len / 2, len] {
                    let (a, b) =
                        pad.split_at(pad.char_indices().nth(at).map_or(pad.len(), |(i, _)| i));
                    let doc = format!(r#"{{"pad":"{a}{special}{b}","seq":{len}}}"#);
                    agrees(&doc, "/seq");
                    agrees(&doc, "/pad");
                }
            }
        }
    }

    /// A random JSON value, `depth` deep at most, from `next` (a seeded
    /// generator), with keys and indices the pointers below can name.
    fn random_value(next: &mut impl FnMut() -> u64, depth: u32, out: &mut String) {
        let pick = next() % if depth == 0 { 5 } else { 7 };
        match pick {
            0 => out.push_str(["0", "-12.5e3", "7", "1e-2"][next() as usize % 4]),
            1 => out.push_str(["true", "false", "null"][next() as usize % 3]),
            2 => out.push_str(
                ["\"x\"", "\"\\\"q\"", "\"é\"", "\"\"", "\"a\\u0062\""][next() as usize % 5],
            ),
            3 | 4 => {
                // A long string, read sixteen bytes at a time.
                let len = next() as usize % 40;
                out.push_str(&format!("\"{}\"", "x".repeat(len)));
            }
            5 => {
                out.push('[');
                for n in 0..next() % 4 {
                    if n > 0 {
                        out.push(',');
                    }
                    random_value(next, depth - 1, out);
                }
                out.push(']');
            }
            _ => {
                out.push('{');
                for n in 0..next() % 4 {
                    if n > 0 {
                        out.push(',');
                    }
                    let key = ["a", "b", "\\u0061", "0"][next() as usize % 4];
                    out.push_str(&format!(" \"{key}\" : "));
                    random_value(next, depth - 1, out);
                }
                out.push('}');
            }
        }
    }

    #[test]
    fn random_documents_and_their_mutants_agree_with_serde_json() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pointers = [
            "", "/a", "/b", "/0", "/1", "/a/a", "/a/0", "/a/1", "/0/a", "/1/0", "/a/b/0", "/b/a/1",
        ];
        let noise = [
            b'{', b'}', b'[', b']', b',', b':', b'"', b'\\', b' ', b'1', b'-', b'e',
        ];
        for _ in 0..3000 {
            let mut doc = String::new();
            random_value(&mut next, 4, &mut doc);
            let mut bytes = doc.into_bytes();
            for pointer in pointers {
                agrees_on_bytes(&bytes, pointer);
            }
            // A mutant: a byte changed, added or taken away.
            if !bytes.is_empty() {
                let at = next() as usize % bytes.len();
                match next() % 3 {
                    0 => bytes[at] = noise[next() as usize % noise.len()],
                    1 => bytes.insert(at, noise[next() as usize % noise.len()]),
                    _ => {
                        bytes.remove(at);
                    }
                }
                for pointer in pointers {
                    agrees_on_bytes(&bytes, pointer);
                }
            }
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let e = find(deep.as_bytes(), &Pointer::parse("/0").unwrap()).unwrap_err();
        assert_eq!(e.what, "nesting too deep");
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(find(ok.as_bytes(), &Pointer::parse("").unwrap()).is_ok());
    }
}
