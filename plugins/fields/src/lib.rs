//! `fields`: a transform that keeps, drops, renames and masks fields of
//! each record's JSON value (Kafka Connect's `ReplaceField` and
//! `MaskField`), leaving the rest in their order.
//!
//! Every field is a JSON Pointer into the value as it comes (`"/user/ssn"`),
//! and the steps run in this order:
//! 1. `keep`: only these fields stay (and the objects on the way to them);
//!    unset keeps everything.
//! 2. `drop`: these fields go.
//! 3. `mask`: these fields' values are replaced by `mask_with` (default
//!    `"****"`), or, with `hash_key`, by the hex HMAC-SHA256 of the value
//!    under that key (a string's text, anything else its JSON): the same
//!    input gives the same mask, so masked fields can still be joined and
//!    counted, and nobody without the key can check a guess. Give the key
//!    as a secret, `hash_key = "${secret:pii_key}"`.
//! 4. `rename`: `{ "/user/name" = "full_name" }` renames a field where it
//!    stands (replacing a field of the new name there).
//!
//! A field that is not there is passed over. `not_json` (default
//! `"refuse"`): a value that is not JSON is refused (dead-lettered with the
//! reason), `"drop"`ped or `"keep"`t unchanged. The key, timestamp and
//! headers are copied unchanged. Numbers are rewritten as `serde_json`
//! reads them (an integer beyond 64 bits becomes a float).

use std::collections::BTreeMap;

use sluice_sdk::json::{Doc, Otherwise, Pointer};
use sluice_sdk::serde_json::Value;
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `fields` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Keep only these fields (JSON Pointers, `"/id"`); unset keeps all.
    #[serde(default)]
    pub keep: Option<Vec<String>>,
    /// Drop these fields.
    #[serde(default)]
    pub drop: Vec<String>,
    /// Mask these fields' values.
    #[serde(default)]
    pub mask: Vec<String>,
    /// What a masked value becomes (default `"****"`).
    #[serde(default)]
    pub mask_with: Option<String>,
    /// Mask with the hex HMAC-SHA256 of the value under this key instead;
    /// give it as `"${secret:NAME}"`.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// Rename fields where they stand: `{ "/user/name" = "full_name" }`.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// A value that is not JSON: `refuse` (the default), `drop` or `keep`.
    #[serde(default)]
    pub not_json: Otherwise,
}

/// How a masked value is replaced.
enum Mask {
    With(Value),
    Hash(Vec<u8>),
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mask::With(v) => f.debug_tuple("With").field(v).finish(),
            // Never the key.
            Mask::Hash(_) => f.write_str("Hash"),
        }
    }
}

impl Mask {
    fn of(&self, value: &Doc) -> Doc {
        match self {
            Mask::With(v) => Doc::Scalar(v.clone()),
            Mask::Hash(key) => {
                let text = match value {
                    Doc::Scalar(Value::String(s)) => s.as_bytes().to_vec(),
                    other => other.to_vec(),
                };
                let mac = sluice_sdk::hash::hmac::<sha2::Sha256>(key, &text);
                let mut hex = String::with_capacity(mac.len() * 2);
                for b in mac {
                    hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                    hex.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
                }
                Doc::Scalar(Value::String(hex))
            }
        }
    }
}

/// The transform's state: the config's pointers, parsed once.
#[derive(Debug)]
pub struct Fields {
    keep: Option<Vec<Pointer>>,
    drop: Vec<Pointer>,
    mask: Vec<Pointer>,
    masked: Mask,
    rename: Vec<(Pointer, String)>,
    not_json: Otherwise,
}

/// Parses the pointers of config field `name`.
fn pointers<'a>(
    name: &str,
    texts: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<Pointer>, Error> {
    texts
        .into_iter()
        .map(|t| Pointer::parse(t).map_err(|e| Error::invalid_config(format!("{name}: {e}"))))
        .collect()
}

impl Fields {
    fn new(config: Config) -> Result<Fields, Error> {
        let masked = match (config.mask_with, config.hash_key) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid_config(
                    "mask with one thing: mask_with = \"****\" or hash_key = \"${secret:NAME}\"",
                ));
            }
            (_, Some(key)) if key.is_empty() => {
                return Err(Error::invalid_config(
                    "hash_key is empty: give it a secret, hash_key = \"${secret:pii_key}\"",
                ));
            }
            (_, Some(key)) => Mask::Hash(key.into_bytes()),
            (with, None) => Mask::With(Value::String(with.unwrap_or_else(|| "****".into()))),
        };
        let rename = config
            .rename
            .iter()
            .map(|(from, to)| {
                let from = Pointer::parse(from)
                    .map_err(|e| Error::invalid_config(format!("rename: {e}")))?;
                if from.to_text().is_empty() {
                    return Err(Error::invalid_config(
                        "rename: \"\" is the whole value, which has no name to change",
                    ));
                }
                Ok((from, to.clone()))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Fields {
            keep: config
                .keep
                .as_ref()
                .map(|k| pointers("keep", k))
                .transpose()?,
            drop: pointers("drop", &config.drop)?,
            mask: pointers("mask", &config.mask)?,
            masked,
            rename,
            not_json: config.not_json,
        })
    }

    /// The value `value` becomes: `Err` with the reason when it is not
    /// JSON and refused; `Ok(None)` to drop the record.
    fn edit(&self, value: &[u8], out: &mut Vec<u8>) -> Result<bool, String> {
        let mut doc = match Doc::parse(value) {
            Ok(doc) => doc,
            Err(e) => {
                return match self.not_json {
                    Otherwise::Refuse => Err(format!(
                        "the value is not JSON ({e}), so its fields cannot be changed"
                    )),
                    Otherwise::Drop => Ok(false),
                    Otherwise::Keep => {
                        out.extend_from_slice(value);
                        Ok(true)
                    }
                };
            }
        };
        if let Some(keep) = &self.keep {
            doc.retain(keep);
        }
        for p in &self.drop {
            doc.remove(p);
        }
        for p in &self.mask {
            if let Some(v) = doc.get_mut(p) {
                *v = self.masked.of(v);
            }
        }
        for (p, to) in &self.rename {
            doc.rename(p, to);
        }
        doc.write(out);
        Ok(true)
    }
}

impl Transform for Fields {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Fields::new(config)
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut headers = Vec::new();
        let mut value = Vec::new();
        for (i, r) in input.iter().enumerate() {
            value.clear();
            match self.edit(r.value, &mut value) {
                Ok(true) => {
                    headers.clear();
                    headers.extend(r.headers());
                    out.push_parts(r.key, r.timestamp, &headers, |v| {
                        v.extend_from_slice(&value)
                    });
                }
                Ok(false) => {}
                Err(reason) => rejects.reject(i, reason),
            }
        }
        Ok(())
    }
}

sluice_sdk::export_transform!(Fields);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::serde_json;

    fn fields(config: &str) -> Result<Fields, Error> {
        Fields::new(serde_json::from_str(config).unwrap())
    }

    fn edited(f: &Fields, value: &str) -> Result<Option<String>, String> {
        let mut out = Vec::new();
        Ok(f.edit(value.as_bytes(), &mut out)?
            .then(|| String::from_utf8(out).unwrap()))
    }

    const USER: &str =
        r#"{"id":7,"user":{"name":"Ann","email":"ann@example.com","ssn":"123"},"ts":1}"#;

    #[test]
    fn keep_drop_mask_and_rename_run_in_order_on_the_values_fields() {
        let f = fields(
            r#"{"keep": ["/id", "/user"], "drop": ["/user/ssn", "/nope"],
                "mask": ["/user/email"], "rename": {"/user/name": "full_name", "/id": "user_id"}}"#,
        )
        .unwrap();
        assert_eq!(
            edited(&f, USER).unwrap().unwrap(),
            r#"{"user_id":7,"user":{"full_name":"Ann","email":"****"}}"#
        );
        assert_eq!(edited(&f, "[1,2]").unwrap().unwrap(), "[]");
    }

    #[test]
    fn a_keyed_hash_masks_the_same_value_the_same_way_and_depends_on_the_key() {
        let masked = |key: &str| {
            let f = fields(&format!(
                r#"{{"mask": ["/user/email", "/id"], "hash_key": "{key}"}}"#
            ))
            .unwrap();
            let out: serde_json::Value =
                serde_json::from_str(&edited(&f, USER).unwrap().unwrap()).unwrap();
            (
                out["user"]["email"].as_str().unwrap().to_owned(),
                out["id"].as_str().unwrap().to_owned(),
            )
        };
        let (email, id) = masked("k1");
        let want = sluice_sdk::hash::hmac::<sha2::Sha256>(b"k1", b"ann@example.com");
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(email, hex);
        let want = sluice_sdk::hash::hmac::<sha2::Sha256>(b"k1", b"7");
        assert_eq!(
            id,
            want.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(masked("k1").0, email);
        assert_ne!(masked("k2").0, email);
        assert!(!format!("{:?}", fields(r#"{"hash_key": "sekrit"}"#).unwrap()).contains("sekrit"));
    }

    #[test]
    fn a_value_that_is_not_json_is_refused_dropped_or_kept_and_configs_say_what_to_write() {
        let f = fields(r#"{"drop": ["/a"]}"#).unwrap();
        assert!(edited(&f, "x").unwrap_err().contains("not JSON"));
        let f = fields(r#"{"drop": ["/a"], "not_json": "drop"}"#).unwrap();
        assert_eq!(edited(&f, "x"), Ok(None));
        let f = fields(r#"{"drop": ["/a"], "not_json": "keep"}"#).unwrap();
        assert_eq!(edited(&f, "x"), Ok(Some("x".into())));
        let e = fields(r#"{"drop": ["a.b"]}"#).unwrap_err().to_string();
        assert!(e.contains("drop") && e.contains("\"/a/b\""), "{e}");
        let e = fields(r#"{"mask_with": "x", "hash_key": "k"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("mask with one thing"), "{e}");
    }
}
