//! A transform's field: the JSON Pointer its config names, read from each
//! record, with what becomes of a record that cannot be read.

use std::fmt;

use sluice_batch::{Batch, BatchWriter, RecordRef};

use super::{Pointer, find};
use crate::{Error, Rejects};

/// What becomes of a record a transform cannot apply to (its value is not
/// JSON, or lacks the field): a config value, `"refuse"`, `"drop"` or
/// `"keep"`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Otherwise {
    /// Dead-lettered, with the reason.
    #[default]
    Refuse,
    /// Dropped silently.
    Drop,
    /// Passed on unchanged.
    Keep,
}

/// Why a record's field was not read, and what to do with the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Pass the record on unchanged.
    Keep,
    /// Drop it.
    Drop,
    /// Refuse it, for this reason.
    Refuse(String),
}

impl Skip {
    fn from(otherwise: Otherwise, reason: impl FnOnce() -> String) -> Skip {
        match otherwise {
            Otherwise::Refuse => Skip::Refuse(reason()),
            Otherwise::Drop => Skip::Drop,
            Otherwise::Keep => Skip::Keep,
        }
    }
}

/// The field a transform reads from each record's value, and what becomes
/// of a record whose value is not JSON (`not_json`) or has no such field
/// or `null` there (`missing`).
///
/// ```
/// use sluice_sdk::json::{Field, Otherwise, Skip};
///
/// let f = Field::new("field", "/region", Otherwise::Refuse, Otherwise::Drop).unwrap();
/// assert_eq!(f.read(br#"{"region":"eu"}"#), Ok(&br#""eu""#[..]));
/// assert_eq!(f.read(br#"{"region":null}"#), Err(Skip::Drop));
/// assert!(matches!(f.read(b"eu"), Err(Skip::Refuse(_))));
/// ```
#[derive(Debug, Clone)]
pub struct Field {
    pointer: Pointer,
    not_json: Otherwise,
    missing: Otherwise,
}

impl Field {
    /// Parses the pointer `text` of the config field `name`; an error is an
    /// invalid config that says what to write.
    pub fn new(
        name: &str,
        text: &str,
        not_json: Otherwise,
        missing: Otherwise,
    ) -> Result<Field, Error> {
        let pointer = Pointer::parse(text)
            .map_err(|e| Error::invalid_config(format!("{name} = {text:?}: {e}")))?;
        Ok(Field {
            pointer,
            not_json,
            missing,
        })
    }

    /// The pointer.
    pub fn pointer(&self) -> &Pointer {
        &self.pointer
    }

    /// The bytes of the field in `value` (never `null`), or what to do
    /// with the record instead.
    pub fn read<'a>(&self, value: &'a [u8]) -> Result<&'a [u8], Skip> {
        match find(value, &self.pointer) {
            Ok(Some(raw)) if raw != b"null" => Ok(raw),
            Ok(_) => Err(Skip::from(self.missing, || {
                format!(
                    "the value has no field {:?} (or it is null)",
                    self.pointer.to_text()
                )
            })),
            Err(e) => Err(Skip::from(self.not_json, || {
                format!(
                    "the value is not JSON ({e}), so its field {:?} cannot be read",
                    self.pointer.to_text()
                )
            })),
        }
    }

    /// Hands `apply` each record of `input` with its field's bytes, to push
    /// what it makes of it to `out`, or to refuse it with a reason; a
    /// record without the field is kept, dropped or refused as configured.
    pub fn each<'b>(
        &self,
        input: Batch<'b>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
        mut apply: impl FnMut(RecordRef<'b>, &'b [u8], &mut BatchWriter) -> Result<(), String>,
    ) {
        let mut records = input.iter();
        let mut index = 0;
        while let Some(encoded) = records.peek_encoded() {
            let record = records.next().expect("peeked");
            let done = match self.read(record.value) {
                Ok(raw) => apply(record, raw, out),
                Err(Skip::Keep) => {
                    out.push_encoded(encoded);
                    Ok(())
                }
                Err(Skip::Drop) => Ok(()),
                Err(Skip::Refuse(reason)) => Err(reason),
            };
            if let Err(reason) = done {
                rejects.reject(index, reason);
            }
            index += 1;
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pointer.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_hands_over_found_fields_and_keeps_drops_or_refuses_the_rest() {
        let mut input = BatchWriter::new();
        for v in [
            r#"{"k":"a"}"#,
            r#"{"k":null}"#,
            "{}",
            "not json",
            r#"{"k":"bad"}"#,
        ] {
            input.push_value(v.as_bytes());
        }
        let input = input.finish();
        let run = |missing, not_json| {
            let f = Field::new("field", "/k", not_json, missing).unwrap();
            let mut out = BatchWriter::new();
            let mut rejects = Rejects::default();
            f.each(
                Batch::parse(&input).unwrap(),
                &mut out,
                &mut rejects,
                |r, raw, out| {
                    if raw == br#""bad""# {
                        return Err("bad".into());
                    }
                    out.push_parts(Some(raw), None, &[], |v| v.extend_from_slice(r.value));
                    Ok(())
                },
            );
            let out = out.finish();
            let keys: Vec<Option<Vec<u8>>> = Batch::parse(&out)
                .unwrap()
                .iter()
                .map(|r| r.key.map(<[u8]>::to_vec))
                .collect();
            let refused: Vec<(u32, String)> = rejects
                .iter()
                .map(|r| (r.index, r.reason.clone()))
                .collect();
            (keys, refused)
        };
        let (keys, refused) = run(Otherwise::Keep, Otherwise::Drop);
        assert_eq!(keys, [Some(br#""a""#.to_vec()), None, None]);
        assert_eq!(refused, [(4, "bad".to_owned())]);
        let (keys, refused) = run(Otherwise::Refuse, Otherwise::Keep);
        assert_eq!(keys, [Some(br#""a""#.to_vec()), None]);
        let indexes: Vec<u32> = refused.iter().map(|r| r.0).collect();
        assert_eq!(indexes, [1, 2, 4]);
        assert!(refused[0].1.contains("no field \"/k\""), "{refused:?}");
    }

    #[test]
    fn a_dotted_field_is_an_invalid_config_saying_what_to_write() {
        let e = Field::new("field", "user.id", Otherwise::Refuse, Otherwise::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field = \"user.id\"") && e.contains("\"/user/id\""),
            "{e}"
        );
    }
}
