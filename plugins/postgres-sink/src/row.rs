//! Records as rows, without copying what need not be copied: a value's
//! fields are read in place (their names and raw JSON borrowed from the
//! batch), and every row's column texts go into one buffer per batch.
//! Measured here: parsing each value into a `serde_json::Value`, with a
//! `String` per name and per text, cost the sink two thirds of its time.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use sluice_sdk::serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use sluice_sdk::serde_json::{self, value::RawValue};

use crate::table::ColumnKind;

/// A JSON object's fields in order: names and raw values, borrowed from
/// the record where they need no unescaping.
#[derive(Debug)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// Reads `value`, which must be a JSON object.
    pub fn parse(value: &'a [u8]) -> Result<Fields<'a>, String> {
        serde_json::from_slice(value).map_err(|e| {
            if e.is_data() {
                "the value is not a JSON object".to_owned()
            } else {
                format!("the value is not JSON: {e}")
            }
        })
    }

    /// The field `name` as text (a string's content, a number's digits),
    /// for a table template.
    pub fn text_of(&self, name: &str) -> Option<String> {
        let (_, raw) = self.0.iter().find(|(f, _)| f == name)?;
        match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
            serde_json::Value::String(s) => Some(s),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((Name(name), raw)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
                    fields.push((name, raw));
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Object)
    }
}

/// A field's name, borrowed unless it had escapes (serde's own `Cow<str>`
/// always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Text;
        impl<'de> Visitor<'de> for Text {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(Text)
    }
}

/// A field's raw JSON as the text its column is given; `None` for null.
/// A `json`/`jsonb` column takes the JSON itself; others take a string's
/// content, and any other value's JSON (numbers, booleans; objects and
/// arrays as JSON text).
pub fn column_text(raw: &RawValue, kind: ColumnKind) -> Option<Cow<'_, [u8]>> {
    let json = raw.get();
    match json.as_bytes().first() {
        Some(b'n') => None,
        _ if kind == ColumnKind::Json => Some(Cow::Borrowed(json.as_bytes())),
        // memchr's vector search: `str::contains` is built without SIMD.
        Some(b'"') if memchr::memchr(b'\\', json.as_bytes()).is_none() => {
            Some(Cow::Borrowed(&json.as_bytes()[1..json.len() - 1]))
        }
        Some(b'"') => serde_json::from_str::<String>(json)
            .ok()
            .map(|s| Cow::Owned(s.into_bytes())),
        _ => Some(Cow::Borrowed(json.as_bytes())),
    }
}

/// A JSON value (from a key) as the text its column is given.
pub fn value_text(v: &serde_json::Value, kind: ColumnKind) -> Option<Vec<u8>> {
    match (v, kind) {
        (serde_json::Value::Null, _) => None,
        (v, ColumnKind::Json) => Some(v.to_string().into_bytes()),
        (serde_json::Value::String(s), _) => Some(s.as_bytes().to_vec()),
        (v, _) => Some(v.to_string().into_bytes()),
    }
}

/// One record as a row of a table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The record's index in its batch.
    pub index: usize,
    /// What it does, and where.
    pub shape: Shape,
    /// Its values, in [`Rows::values`].
    values: Range<usize>,
}

/// Which statement a row needs: its table and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// Insert (or upsert) the columns of this column set.
    Write(usize),
    /// Delete from this table the row with the key values given.
    Delete(usize),
}

/// The rows of one batch, their values in one buffer.
#[derive(Debug, Default)]
pub struct Rows {
    pub rows: Vec<Row>,
    arena: Vec<u8>,
    values: Vec<Option<Range<usize>>>,
}

impl Rows {
    /// Starts a row of `shape` for the record at `index`; push its values
    /// next.
    pub fn start(&mut self, index: usize, shape: Shape) {
        let at = self.values.len();
        self.rows.push(Row {
            index,
            shape,
            values: at..at,
        });
    }

    /// Adds a value to the row started last.
    pub fn push(&mut self, value: Option<&[u8]>) {
        let range = value.map(|v| {
            let start = self.arena.len();
            self.arena.extend_from_slice(v);
            start..self.arena.len()
        });
        self.values.push(range);
        if let Some(row) = self.rows.last_mut() {
            row.values.end = self.values.len();
        }
    }

    /// A row's values.
    pub fn values(&self, row: &Row) -> impl Iterator<Item = Option<&[u8]>> + '_ {
        self.values[row.values.clone()]
            .iter()
            .map(|v| v.clone().map(|r| &self.arena[r]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_place_and_texts_are_what_columns_take() {
        let v = br#"{"a":1,"b":"x y","c\u0041":"tab\there","d":null,"e":{"k":[1,2]},"f":true}"#;
        let f = Fields::parse(v).unwrap();
        let names: Vec<&str> = f.0.iter().map(|(n, _)| n.as_ref()).collect();
        assert_eq!(names, ["a", "b", "cA", "d", "e", "f"]);
        assert!(matches!(f.0[1].0, Cow::Borrowed(_)));
        let text = |i: usize, kind| column_text(f.0[i].1, kind).map(|c| c.into_owned());
        assert_eq!(text(0, ColumnKind::Other).unwrap(), b"1");
        assert_eq!(text(1, ColumnKind::Other).unwrap(), b"x y");
        assert_eq!(text(2, ColumnKind::Other).unwrap(), b"tab\there");
        assert_eq!(text(3, ColumnKind::Other), None);
        assert_eq!(text(4, ColumnKind::Json).unwrap(), br#"{"k":[1,2]}"#);
        assert_eq!(text(1, ColumnKind::Json).unwrap(), br#""x y""#);
        assert_eq!(text(5, ColumnKind::Other).unwrap(), b"true");
        assert_eq!(f.text_of("a").as_deref(), Some("1"));
        assert_eq!(
            Fields::parse(b"[1]").unwrap_err(),
            "the value is not a JSON object"
        );
        assert!(
            Fields::parse(b"{")
                .unwrap_err()
                .starts_with("the value is not JSON")
        );
    }

    #[test]
    fn rows_keep_their_values_apart() {
        let mut rows = Rows::default();
        rows.start(0, Shape::Write(0));
        rows.push(Some(b"1"));
        rows.push(None);
        rows.start(2, Shape::Delete(0));
        rows.push(Some(b"2"));
        let all: Vec<Vec<Option<&[u8]>>> =
            rows.rows.iter().map(|r| rows.values(r).collect()).collect();
        assert_eq!(
            all,
            vec![vec![Some(&b"1"[..]), None], vec![Some(&b"2"[..])]]
        );
    }
}
