//! `route`: a transform that names each record's topic from a field of its
//! JSON value or from its key (Confluent's `ExtractTopic`, Redpanda
//! Connect's `meta topic = ...`). It sets a header, and the connector's
//! topic template reads it: a source's `topic = "events.{route}"`, a
//! transform connector's `output`.
//!
//! - `field`: a JSON Pointer into the value, `"/region"`, or `key = true`:
//!   the record's key. A string is used as its text, a number or a boolean
//!   as written.
//! - `header` (default `"route"`): the header set (replacing one of that
//!   name).
//! - `default`: the name for a record without the field (or `null` there)
//!   or without a key; without a default such a record is refused
//!   (dead-lettered with the reason).
//! - `not_json` (default `"refuse"`): a value that is not JSON is refused,
//!   `"drop"`ped, or `"keep"`t and sent to `default`.
//!
//! A name must make a topic name: letters, digits, `.`, `_` and `-`; a
//! record whose field holds anything else is refused, saying so, rather
//! than failing its batch in the host.

use std::borrow::Cow;

use sluice_sdk::json::{Field, Otherwise, Skip, scalar_text};
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `route` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A JSON Pointer into the record's value, e.g. `"/region"`.
    #[serde(default)]
    pub field: Option<String>,
    /// Route by the record's key instead of a field.
    #[serde(default)]
    pub key: bool,
    /// The header to set, which the topic template names: `{route}`.
    #[serde(default = "route_header")]
    pub header: String,
    /// The name for a record without the field or key; without it, such a
    /// record is refused.
    #[serde(default)]
    pub default: Option<String>,
    /// A value that is not JSON: `refuse` (the default), `drop`, or `keep`
    /// (sent to `default`).
    #[serde(default)]
    pub not_json: Otherwise,
}

fn route_header() -> String {
    "route".into()
}

/// Where a record's route comes from.
#[derive(Debug)]
enum From {
    Field(Field),
    Key,
}

/// The transform's state.
#[derive(Debug)]
pub struct Route {
    from: From,
    header: String,
    default: Option<String>,
}

/// Whether `name` can be (part of) a topic name; why not, if not.
fn check_name(name: &str) -> Result<(), String> {
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        _ if name.is_empty() => Err("is empty, which names no topic".into()),
        Some(c) => Err(format!(
            "is {name:?}, which holds {c:?}: a topic name holds letters, digits, '.', '_' and '-'"
        )),
        None if name.len() > 249 => Err(format!(
            "is {} characters, more than a topic name may be",
            name.len()
        )),
        None => Ok(()),
    }
}

impl Route {
    fn new(config: Config) -> Result<Route, Error> {
        if let Some(d) = &config.default {
            check_name(d).map_err(|why| Error::invalid_config(format!("default {why}")))?;
        }
        if config.not_json == Otherwise::Keep && config.default.is_none() {
            return Err(Error::invalid_config(
                "not_json = \"keep\" sends a value that is not JSON to `default`: set default = \"unrouted\" (or refuse or drop it)",
            ));
        }
        let missing = match config.default {
            Some(_) => Otherwise::Keep,
            None => Otherwise::Refuse,
        };
        let from = match (config.field, config.key) {
            (Some(field), false) => {
                From::Field(Field::new("field", &field, config.not_json, missing)?)
            }
            (None, true) => From::Key,
            _ => {
                return Err(Error::invalid_config(
                    "route by one thing: field = \"/region\" (a field of the value) or key = true",
                ));
            }
        };
        Ok(Route {
            from,
            header: config.header,
            default: config.default,
        })
    }

    /// The name `value` and `key` route to; `Ok(None)` to drop the record.
    fn name<'a>(
        &'a self,
        key: Option<&'a [u8]>,
        value: &'a [u8],
    ) -> Result<Option<Cow<'a, str>>, String> {
        let default = || {
            self.default
                .as_deref()
                .map(|d| Some(Cow::Borrowed(d)))
                .ok_or_else(|| "it has no key to route it by".to_owned())
        };
        let name = match &self.from {
            From::Key => match key {
                Some(k) => Cow::Borrowed(
                    std::str::from_utf8(k).map_err(|_| "its key is not UTF-8".to_owned())?,
                ),
                None => return default(),
            },
            From::Field(f) => match f.read(value) {
                Ok(raw) => scalar_text(raw).ok_or_else(|| {
                    format!(
                        "its field {f:?} holds an object or an array, which names no topic",
                        f = f.pointer().to_text()
                    )
                })?,
                Err(Skip::Keep) => return default(),
                Err(Skip::Drop) => return Ok(None),
                Err(Skip::Refuse(reason)) => return Err(reason),
            },
        };
        check_name(&name).map_err(|why| match &self.from {
            From::Key => format!("its key {why}"),
            From::Field(f) => format!("its field {:?} {why}", f.pointer().to_text()),
        })?;
        Ok(Some(name))
    }
}

impl Transform for Route {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Route::new(config)
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        for (i, r) in input.iter().enumerate() {
            match self.name(r.key, r.value) {
                Ok(Some(name)) => {
                    let mut headers: Vec<_> =
                        r.headers().filter(|(h, _)| *h != self.header).collect();
                    headers.push((self.header.as_str(), name.as_bytes()));
                    out.push_parts(r.key, r.timestamp, &headers, |v| {
                        v.extend_from_slice(r.value)
                    });
                }
                Ok(None) => {}
                Err(reason) => rejects.reject(i, reason),
            }
        }
        Ok(())
    }
}

sluice_sdk::export_transform!(Route);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::{Record, serde_json, testing};

    fn route(config: &str) -> Result<Route, Error> {
        Route::new(serde_json::from_str(config).unwrap())
    }

    /// The route header of each record out, and the refused indexes.
    fn run(config: &str, input: &[Record]) -> (Vec<String>, Vec<(u32, String)>) {
        let mut t = route(config).unwrap();
        let testing::Processed {
            records: out,
            refused,
        } = testing::process(&mut t, input).unwrap();
        let routes = out
            .iter()
            .map(|r| {
                let named: Vec<_> = r.headers.iter().filter(|(h, _)| h == "route").collect();
                assert_eq!(named.len(), 1, "{r:?}");
                String::from_utf8(named[0].1.clone()).unwrap()
            })
            .collect();
        (routes, refused)
    }

    fn values(values: &[&str]) -> Vec<Record> {
        values.iter().map(|v| Record::from_value(*v)).collect()
    }

    #[test]
    fn a_field_names_the_route_and_a_name_no_topic_can_hold_is_refused() {
        let (routes, refused) = run(
            r#"{"field": "/region"}"#,
            &values(&[
                r#"{"region":"eu-west"}"#,
                r#"{"region":7}"#,
                r#"{"region":"eu west"}"#,
                r#"{"region":{"a":1}}"#,
                "{}",
                "x",
            ]),
        );
        assert_eq!(routes, ["eu-west", "7"]);
        let indexes: Vec<u32> = refused.iter().map(|r| r.0).collect();
        assert_eq!(indexes, [2, 3, 4, 5]);
        assert!(
            refused[0].1.contains("\"eu west\", which holds ' '"),
            "{refused:?}"
        );
        assert!(refused[2].1.contains("no field \"/region\""), "{refused:?}");
    }

    #[test]
    fn a_record_without_a_route_goes_to_the_default_and_an_old_header_is_replaced() {
        let mut input = values(&["{}", "x", r#"{"region":"us"}"#]);
        input[2].headers.push(("route".into(), b"stale".to_vec()));
        let (routes, refused) = run(
            r#"{"field": "/region", "default": "other", "not_json": "keep"}"#,
            &input,
        );
        assert_eq!(routes, ["other", "other", "us"]);
        assert!(refused.is_empty());
    }

    #[test]
    fn the_key_can_name_the_route() {
        let mut input = values(&["{}", "{}"]);
        input[0].key = Some(b"tenant-1".to_vec());
        let (routes, refused) = run(r#"{"key": true}"#, &input);
        assert_eq!(routes, ["tenant-1"]);
        assert_eq!(refused, [(1, "it has no key to route it by".to_owned())]);
    }

    #[test]
    fn a_config_naming_no_source_or_keeping_without_a_default_says_what_to_write() {
        let e = route("{}").unwrap_err().to_string();
        assert!(e.contains("field = \"/region\""), "{e}");
        let e = route(r#"{"field": "/a", "key": true}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("route by one thing"), "{e}");
        let e = route(r#"{"field": "/a", "not_json": "keep"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("set default"), "{e}");
        let e = route(r#"{"field": "/a", "default": "a b"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("default is \"a b\""), "{e}");
    }
}
