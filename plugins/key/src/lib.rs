//! `key`: a transform that sets each record's key from a field of its JSON
//! value (Kafka Connect's `ValueToKey` with `ExtractField`), so that a
//! keyed sink, a partitioner or a compacted topic can use it.
//!
//! - `field`: a JSON Pointer into the value, `"/user/id"`. A string field
//!   becomes the key as its text (`"ab"` → `ab`); a number or a boolean as
//!   written (`42`); an object or an array as its JSON text.
//! - `missing` (default `"refuse"`): a record without the field, or with
//!   `null` there, is refused (dead-lettered with the reason), `"drop"`ped,
//!   or `"keep"`t with its key as it was.
//! - `not_json` (default `"refuse"`): the same for a value that is not JSON.
//!
//! The value, timestamp and headers are copied unchanged.

use sluice_sdk::json::{Field, Otherwise, scalar_text};
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `key` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A JSON Pointer into the record's value, e.g. `"/user/id"`.
    pub field: String,
    /// A record without the field (or `null` there): `refuse` (the
    /// default), `drop` or `keep` (its key unchanged).
    #[serde(default)]
    pub missing: Otherwise,
    /// A value that is not JSON: `refuse` (the default), `drop` or `keep`.
    #[serde(default)]
    pub not_json: Otherwise,
}

/// The transform's state.
#[derive(Debug)]
pub struct Key {
    field: Field,
}

impl Transform for Key {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Ok(Key {
            field: Field::new("field", &config.field, config.not_json, config.missing)?,
        })
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut headers = Vec::new();
        self.field.each(input, out, rejects, |r, raw, out| {
            let text = scalar_text(raw);
            let key = text.as_deref().map_or(raw, str::as_bytes);
            headers.clear();
            headers.extend(r.headers());
            out.push_parts(Some(key), r.timestamp, &headers, |v| {
                v.extend_from_slice(r.value)
            });
            Ok(())
        });
        Ok(())
    }
}

sluice_sdk::export_transform!(Key);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::{Record, serde_json, testing};

    fn run(config: &str, values: &[&str]) -> (Vec<Option<String>>, Vec<u32>) {
        let config = serde_json::from_str(config).unwrap();
        let mut t = Key::open(config, &testing::context()).unwrap();
        let input: Vec<Record> = values
            .iter()
            .map(|v| Record {
                key: Some(b"old".to_vec()),
                value: v.as_bytes().to_vec(),
                timestamp: Some(9),
                headers: vec![("h".into(), b"v".to_vec())],
            })
            .collect();
        let testing::Processed {
            records: out,
            refused,
        } = testing::process(&mut t, &input).unwrap();
        for r in &out {
            assert_eq!((r.timestamp, r.headers.len()), (Some(9), 1));
        }
        let keys = out
            .into_iter()
            .map(|r| r.key.map(|k| String::from_utf8(k).unwrap()))
            .collect();
        (keys, refused.iter().map(|r| r.0).collect())
    }

    #[test]
    fn the_key_is_a_strings_text_a_numbers_digits_or_an_objects_json() {
        let (keys, refused) = run(
            r#"{"field": "/id"}"#,
            &[
                r#"{"id":"u-1"}"#,
                r#"{"id":42}"#,
                r#"{"id":{"a":1}}"#,
                r#"{"id":null}"#,
                "{}",
                "x",
            ],
        );
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(keys, [some("u-1"), some("42"), some(r#"{"a":1}"#)]);
        assert_eq!(refused, [3, 4, 5]);
    }

    #[test]
    fn a_record_without_the_field_keeps_its_key_or_is_dropped_as_configured() {
        let (keys, refused) = run(
            r#"{"field": "/id", "missing": "keep", "not_json": "drop"}"#,
            &["{}", "x", r#"{"id":"n"}"#],
        );
        assert_eq!(keys, [Some("old".to_owned()), Some("n".to_owned())]);
        assert!(refused.is_empty());
    }
}
