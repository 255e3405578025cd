//! A change as a record: its key (the row's key columns as a JSON object)
//! and its value, an envelope in Debezium's shape:
//!
//! ```json
//! {"before": {…} | null, "after": {…} | null, "op": "c" | "u" | "d" | "r",
//!  "source": {"connector": "postgresql", "db": "shop", "schema": "public",
//!             "table": "orders", "lsn": 23456, "txId": 789, "ts_ms": 1714564800000},
//!  "ts_ms": 1714564800123}
//! ```
//!
//! A row read by the initial snapshot has `op` `r`, no `before`, and
//! `"snapshot": true` in its `source`, whose `lsn` is the point it was read
//! at.
//!
//! Column values are typed JSON: integers and floats as numbers, `numeric`
//! as a string (no precision lost), booleans, `json`/`jsonb` as JSON,
//! `bytea` as base64, timestamps in ISO 8601, one-dimensional arrays as
//! JSON arrays, anything else as its text. A TOASTed value the change did
//! not touch is not sent by PostgreSQL: its column is left out of `after`
//! and named in the envelope's `"unchanged"` list, never invented.

use std::io::Write as _;

use sluice_postgres::pgoutput::{Datum, Relation, Tuple};
use sluice_sdk::serde_json;

/// What the envelope's `source` says.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub database: &'a str,
    pub lsn: u64,
    pub xid: u32,
    pub commit_ms: i64,
    /// Read by the initial snapshot (`op` `r`), not streamed.
    pub snapshot: bool,
}

/// Writes `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

/// The key: the key columns of `row` as a JSON object; `None` if the
/// relation has no key.
pub fn key(rel: &Relation, row: &Tuple) -> Option<Vec<u8>> {
    if !rel.columns.iter().any(|c| c.key) {
        return None;
    }
    let mut out = Vec::with_capacity(32);
    out.push(b'{');
    let mut first = true;
    for (c, d) in rel.columns.iter().zip(&row.0) {
        if !c.key {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        string(&mut out, &c.name);
        out.push(b':');
        datum(&mut out, c.type_oid, d);
    }
    out.push(b'}');
    Some(out)
}

/// The envelope of one change.
pub fn envelope(
    out: &mut Vec<u8>,
    rel: &Relation,
    op: u8,
    before: Option<(&Tuple, bool)>,
    after: Option<&Tuple>,
    source: Source<'_>,
    now_ms: i64,
) {
    out.extend_from_slice(b"{\"before\":");
    match before {
        Some((row, key_only)) => object(out, rel, row, key_only),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"after\":");
    match after {
        Some(row) => object(out, rel, row, false),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(row) = after
        && row.0.contains(&Datum::Unchanged)
    {
        out.extend_from_slice(b",\"unchanged\":[");
        let mut first = true;
        for (c, d) in rel.columns.iter().zip(&row.0) {
            if *d == Datum::Unchanged {
                if !first {
                    out.push(b',');
                }
                first = false;
                string(out, &c.name);
            }
        }
        out.push(b']');
    }
    out.extend_from_slice(b",\"op\":\"");
    out.push(op);
    out.extend_from_slice(b"\",\"source\":{\"connector\":\"postgresql\",\"db\":");
    string(out, source.database);
    out.extend_from_slice(b",\"schema\":");
    string(out, &rel.schema);
    out.extend_from_slice(b",\"table\":");
    string(out, &rel.name);
    let _ = write!(
        out,
        ",\"lsn\":{},\"txId\":{},\"ts_ms\":{}",
        source.lsn, source.xid, source.commit_ms
    );
    if source.snapshot {
        out.extend_from_slice(b",\"snapshot\":true");
    }
    let _ = write!(out, "}},\"ts_ms\":{now_ms}}}");
}

/// `row` as a JSON object (its key columns only if `key_only`); unchanged
/// TOASTed columns left out.
fn object(out: &mut Vec<u8>, rel: &Relation, row: &Tuple, key_only: bool) {
    out.push(b'{');
    let mut first = true;
    for (c, d) in rel.columns.iter().zip(&row.0) {
        if (key_only && !c.key) || *d == Datum::Unchanged {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        string(out, &c.name);
        out.push(b':');
        datum(out, c.type_oid, d);
    }
    out.push(b'}');
}

/// Type OIDs (`pg_type`) whose text form is written other than as a string.
mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const JSONB: u32 = 3802;
}

/// The element type of an array type, for the arrays written as JSON
/// arrays.
fn element_of(array: u32) -> Option<u32> {
    Some(match array {
        1000 => oid::BOOL,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        199 => oid::JSON,
        3807 => oid::JSONB,
        // text, varchar, bpchar, name, numeric, uuid, date: strings.
        1009 | 1015 | 1014 | 1003 | 1231 | 2951 | 1182 => 25,
        _ => return None,
    })
}

/// One column's value as JSON.
fn datum(out: &mut Vec<u8>, type_oid: u32, d: &Datum) {
    match d {
        Datum::Null | Datum::Unchanged => out.extend_from_slice(b"null"),
        Datum::Text(text) => value(out, type_oid, &String::from_utf8_lossy(text)),
    }
}

fn value(out: &mut Vec<u8>, type_oid: u32, text: &str) {
    match type_oid {
        oid::BOOL => out.extend_from_slice(if text == "t" { b"true" } else { b"false" }),
        oid::INT2 | oid::INT4 | oid::INT8 | oid::OID => out.extend_from_slice(text.as_bytes()),
        oid::FLOAT4 | oid::FLOAT8 => {
            // NaN and the infinities have no JSON number.
            if text.parse::<f64>().is_ok_and(f64::is_finite) {
                out.extend_from_slice(text.as_bytes());
            } else {
                string(out, text);
            }
        }
        oid::JSON | oid::JSONB => out.extend_from_slice(text.as_bytes()),
        oid::BYTEA => {
            let bytes = text.strip_prefix("\\x").map(hex).unwrap_or_default();
            out.push(b'"');
            base64(&bytes, out);
            out.push(b'"');
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ => string(out, &iso8601(text)),
        t => match element_of(t).and_then(|e| array(text).map(|items| (e, items))) {
            Some((element, items)) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match item {
                        None => out.extend_from_slice(b"null"),
                        Some(v) => value(out, element, v),
                    }
                }
                out.push(b']');
            }
            None => string(out, text),
        },
    }
}

/// `2024-05-01 12:00:00.5+02` (PostgreSQL's ISO style) as ISO 8601:
/// `2024-05-01T12:00:00.5+02:00`.
fn iso8601(text: &str) -> String {
    let mut s = text.replacen(' ', "T", 1);
    let b = s.as_bytes();
    // A zone of hours only: `+02` → `+02:00`.
    if b.len() > 3
        && matches!(b[b.len() - 3], b'+' | b'-')
        && b[b.len() - 2..].iter().all(u8::is_ascii_digit)
    {
        s.push_str(":00");
    }
    s
}

fn hex(h: &str) -> Vec<u8> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    };
    h.as_bytes()
        .chunks_exact(2)
        .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
        .collect()
}

fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        out.push(ABC[(n >> 18) as usize & 63]);
        out.push(ABC[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            ABC[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ABC[n as usize & 63]
        } else {
            b'='
        });
    }
}

/// A one-dimensional array literal (`{1,2,NULL}`, `{"a b","c\"d"}`) as
/// its items; `None` for anything else (several dimensions, bounds).
fn array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        match chars.peek() {
            Some('"') => {
                chars.next();
                let mut item = String::new();
                loop {
                    match chars.next()? {
                        '\\' => item.push(chars.next()?),
                        '"' => break,
                        c => item.push(c),
                    }
                }
                items.push(Some(item));
            }
            Some('{') => return None,
            _ => {
                let mut item = String::new();
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    item.push(c);
                    chars.next();
                }
                items.push((item != "NULL").then_some(item));
            }
        }
        match chars.next() {
            Some(',') => {}
            None => return Some(items),
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(type_oid: u32, text: &str) -> String {
        let mut out = Vec::new();
        value(&mut out, type_oid, text);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_typed_json() {
        assert_eq!(json(oid::INT8, "-42"), "-42");
        assert_eq!(json(oid::BOOL, "t"), "true");
        assert_eq!(
            json(1700, "12345678901234567890.000000001"),
            "\"12345678901234567890.000000001\""
        );
        assert_eq!(json(oid::FLOAT8, "1.5"), "1.5");
        assert_eq!(json(oid::FLOAT8, "NaN"), "\"NaN\"");
        assert_eq!(json(oid::JSONB, "{\"a\": [1]}"), "{\"a\": [1]}");
        assert_eq!(json(oid::BYTEA, "\\x68656c6c6f"), "\"aGVsbG8=\"");
        assert_eq!(
            json(oid::TIMESTAMPTZ, "2024-05-01 12:00:00.5+02"),
            "\"2024-05-01T12:00:00.5+02:00\""
        );
        assert_eq!(
            json(oid::TIMESTAMPTZ, "2024-05-01 12:00:00+05:30"),
            "\"2024-05-01T12:00:00+05:30\""
        );
        assert_eq!(
            json(oid::TIMESTAMP, "2024-05-01 12:00:00"),
            "\"2024-05-01T12:00:00\""
        );
        assert_eq!(json(1082, "2024-05-01"), "\"2024-05-01\"");
        assert_eq!(json(1007, "{1,NULL,3}"), "[1,null,3]");
        assert_eq!(
            json(1009, "{\"a b\",\"c\\\"d\",e}"),
            "[\"a b\",\"c\\\"d\",\"e\"]"
        );
        assert_eq!(json(1007, "{{1,2},{3,4}}"), "\"{{1,2},{3,4}}\"");
        assert_eq!(json(1009, "{}"), "[]");
    }
}
