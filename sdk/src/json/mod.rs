//! JSON records for transforms: reading one field, editing a document.
//!
//! - [`find`]: one field of a record without building the document: a
//!   [`Pointer`] (RFC 6901, `"/user/id"`) parsed once, and one pass that
//!   checks the whole value is JSON and returns the bytes of the field,
//!   allocating nothing (unless a key on the path is escaped).
//! - [`Field`]: a transform's configured field of each record, with what
//!   becomes of a record that lacks it or is not JSON ([`Otherwise`]).
//! - [`Doc`]: a whole document, its object members in the order they came,
//!   to drop, keep, rename and replace fields and write it back.
//!
//! Why not `serde_json::Value`: a transform reads one field of every
//! record, and building the whole document to read it cost the `filter`
//! 1.3 µs a record of 100 bytes, six times the rest of the pipeline
//! (BENCHMARKS.md). Parse the field alone, when its value matters, with
//! `serde_json::from_slice`.
//!
//! ```
//! use sluice_sdk::json::{Pointer, find};
//!
//! let level = Pointer::parse("/log/level").unwrap();
//! let doc = br#"{"log": {"level": "error", "n": [1, 2]}, "pad": "..."}"#;
//! assert_eq!(find(doc, &level).unwrap(), Some(&br#""error""#[..]));
//! assert_eq!(find(br#"{"log": {}}"#, &level).unwrap(), None);
//! assert!(find(br#"{"log": {"level": "error"}"#, &level).is_err());
//! ```

use std::borrow::Cow;
use std::fmt;

mod doc;
mod field;
mod find;

pub use doc::Doc;
pub use field::{Field, Otherwise, Skip};
pub use find::find;

/// A JSON Pointer (RFC 6901): `""` (the whole value), or `/`-separated
/// reference tokens with `~1` for `/` and `~0` for `~`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    tokens: Vec<String>,
}

impl Pointer {
    /// Parses `text`; an error says what a pointer looks like.
    pub fn parse(text: &str) -> Result<Pointer, String> {
        if text.is_empty() {
            return Ok(Pointer { tokens: Vec::new() });
        }
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!(
                "{text:?} is not a JSON Pointer: write it from the root with slashes, e.g. \"/{}\"",
                text.replace('.', "/")
            ));
        };
        let tokens = rest
            .split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Pointer { tokens })
    }

    /// The pointer as written.
    pub fn to_text(&self) -> String {
        self.tokens
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect()
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Why a value is not JSON: what was expected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotJson {
    /// Byte offset of the problem.
    pub at: usize,
    /// What is wrong.
    pub what: &'static str,
}

impl fmt::Display for NotJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for NotJson {}

/// A found field read as text, as a key or a topic name takes it: a
/// string's contents (escapes read), or a number's or a boolean's JSON
/// text; `None` for `null`, an object or an array.
///
/// ```
/// use sluice_sdk::json::scalar_text;
///
/// assert_eq!(scalar_text(br#""eu-\u0077est""#).as_deref(), Some("eu-west"));
/// assert_eq!(scalar_text(b"42").as_deref(), Some("42"));
/// assert_eq!(scalar_text(b"null"), None);
/// assert_eq!(scalar_text(br#"{"a":1}"#), None);
/// ```
pub fn scalar_text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match raw.first()? {
        b'"' if !raw.contains(&b'\\') => std::str::from_utf8(&raw[1..raw.len() - 1])
            .ok()
            .map(Cow::Borrowed),
        b'"' => serde_json::from_slice::<String>(raw).ok().map(Cow::Owned),
        b'-' | b'0'..=b'9' | b't' | b'f' => std::str::from_utf8(raw).ok().map(Cow::Borrowed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_pointer_reads_back_as_written_and_a_dotted_path_is_refused_with_the_fix() {
        for text in ["", "/a", "/a~1b/m~0n/0"] {
            assert_eq!(Pointer::parse(text).unwrap().to_text(), text);
        }
        let e = Pointer::parse("user.id").unwrap_err();
        assert!(e.contains("\"/user/id\""), "{e}");
    }
}
