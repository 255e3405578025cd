//! `filter`: a transform that keeps the records whose value, read as JSON,
//! has a field that passes a test, and drops the others (Kafka Connect's
//! `Filter` with a predicate, Redpanda Connect's `mapping` with `deleted()`).
//!
//! - `field`: where to look, a JSON Pointer (RFC 6901) into the value:
//!   `"/level"`, `"/user/id"`, `"/tags/0"`; `""` is the whole value.
//! - The test, exactly one of: `equals` (a JSON value: `"error"`, `3`,
//!   `true`), `one_of` (a list of them), or `exists` (`true`: the field is
//!   there, whatever its value; `false`: it is not).
//! - `keep` (default `true`): keep the records that pass; `false` drops
//!   them and keeps the rest.
//! - `not_json` (default `"refuse"`): a value that is not JSON is refused
//!   (dead-lettered with the reason), or `"drop"`ped, or `"keep"`t.
//!
//! A kept record is copied unchanged: key, value, timestamp and headers.

use sluice_sdk::json::{Otherwise, Pointer, find};
use sluice_sdk::serde_json::{self, Value};
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `filter` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A JSON Pointer into the record's value, e.g. `"/level"`; `""` is
    /// the whole value.
    pub field: String,
    /// The field equals this JSON value.
    #[serde(default)]
    pub equals: Option<Value>,
    /// The field equals one of these JSON values.
    #[serde(default)]
    pub one_of: Option<Vec<Value>>,
    /// The field is there (`true`) or is not (`false`).
    #[serde(default)]
    pub exists: Option<bool>,
    /// Keep the records that pass the test (`true`, the default), or drop
    /// them and keep the rest (`false`).
    #[serde(default = "keep_by_default")]
    pub keep: bool,
    /// What to do with a value that is not JSON: `refuse` (the default:
    /// dead-lettered with the reason), `drop` or `keep`.
    #[serde(default)]
    pub not_json: Otherwise,
}

fn keep_by_default() -> bool {
    true
}

/// The one test a record's field is put to.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(Value),
    OneOf(Vec<Value>),
    Exists(bool),
}

impl Test {
    /// Whether the field, its JSON as it stands in the record (if there),
    /// passes. Only its bytes are parsed, and only for a test of value.
    fn passes(&self, field: Option<&[u8]>) -> bool {
        let value = || serde_json::from_slice::<Value>(field?).ok();
        match (self, field) {
            (Test::Exists(wanted), found) => found.is_some() == *wanted,
            (Test::Equals(v), Some(_)) => value().as_ref() == Some(v),
            (Test::OneOf(vs), Some(_)) => value().is_some_and(|found| vs.contains(&found)),
            (_, None) => false,
        }
    }
}

/// The transform's state.
#[derive(Debug)]
pub struct Filter {
    field: Pointer,
    test: Test,
    keep: bool,
    not_json: Otherwise,
}

impl Filter {
    /// Checks the config: a pointer that can point, and exactly one test.
    fn new(config: Config) -> Result<Filter, Error> {
        let field = Pointer::parse(&config.field).map_err(|_| {
            Error::invalid_config(format!(
                "field {:?} is not a JSON Pointer: write it from the root with slashes, e.g. field = \"/{}\"",
                config.field,
                config.field.replace('.', "/")
            ))
        })?;
        let tests = [
            config.equals.map(Test::Equals),
            config.one_of.map(Test::OneOf),
            config.exists.map(Test::Exists),
        ];
        let mut given = tests.into_iter().flatten();
        let (Some(test), None) = (given.next(), given.next()) else {
            return Err(Error::invalid_config(
                "give the filter exactly one test: equals = <a JSON value>, one_of = [<values>], or exists = true|false",
            ));
        };
        Ok(Filter {
            field,
            test,
            keep: config.keep,
            not_json: config.not_json,
        })
    }

    /// Whether the record with `value` is kept: `Err` with the reason when
    /// it is not JSON and refused.
    fn keeps(&self, value: &[u8]) -> Result<bool, String> {
        match find(value, &self.field) {
            Ok(found) => Ok(self.test.passes(found) == self.keep),
            Err(e) => match self.not_json {
                Otherwise::Refuse => Err(format!(
                    "the value is not JSON ({e}), so filter cannot test {:?}",
                    self.field.to_text()
                )),
                Otherwise::Drop => Ok(false),
                Otherwise::Keep => Ok(true),
            },
        }
    }
}

impl Transform for Filter {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        Filter::new(config)
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut records = input.iter();
        let mut index = 0;
        while let Some(encoded) = records.peek_encoded() {
            let record = records.next().expect("peeked");
            match self.keeps(record.value) {
                Ok(true) => out.push_encoded(encoded),
                Ok(false) => {}
                Err(reason) => rejects.reject(index, reason),
            }
            index += 1;
        }
        Ok(())
    }
}

sluice_sdk::export_transform!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(config: &str) -> Result<Filter, Error> {
        Filter::new(serde_json::from_str(config).expect("a config"))
    }

    fn kept(f: &Filter, values: &[&str]) -> Vec<Result<bool, String>> {
        values.iter().map(|v| f.keeps(v.as_bytes())).collect()
    }

    #[test]
    fn each_test_keeps_what_passes_and_keep_false_turns_it_round() {
        let f = filter(r#"{"field": "/level", "equals": "error"}"#).unwrap();
        assert_eq!(
            kept(&f, &[r#"{"level":"error"}"#, r#"{"level":"info"}"#, "{}"]),
            [Ok(true), Ok(false), Ok(false)]
        );
        let f = filter(r#"{"field": "/n", "one_of": [1, 2]}"#).unwrap();
        assert_eq!(
            kept(&f, &[r#"{"n":2}"#, r#"{"n":3}"#, r#"{"n":"2"}"#]),
            [Ok(true), Ok(false), Ok(false)]
        );
        let f = filter(r#"{"field": "/user/id", "exists": true, "keep": false}"#).unwrap();
        assert_eq!(
            kept(&f, &[r#"{"user":{"id":null}}"#, r#"{"user":{}}"#]),
            [Ok(false), Ok(true)]
        );
        let f = filter(r#"{"field": "", "equals": 7}"#).unwrap();
        assert_eq!(kept(&f, &["7", "8"]), [Ok(true), Ok(false)]);
    }

    #[test]
    fn a_value_that_is_not_json_is_refused_dropped_or_kept_as_configured() {
        let f = filter(r#"{"field": "/a", "exists": true}"#).unwrap();
        let refused = f.keeps(b"not json").unwrap_err();
        assert!(
            refused.contains("not JSON") && refused.contains("\"/a\""),
            "{refused}"
        );
        let f = filter(r#"{"field": "/a", "exists": true, "not_json": "drop"}"#).unwrap();
        assert_eq!(f.keeps(b"x"), Ok(false));
        let f = filter(r#"{"field": "/a", "exists": true, "not_json": "keep"}"#).unwrap();
        assert_eq!(f.keeps(b"x"), Ok(true));
    }

    #[test]
    fn a_config_without_one_test_or_with_a_dotted_field_says_what_to_write() {
        let none = filter(r#"{"field": "/a"}"#).unwrap_err().to_string();
        assert!(none.contains("exactly one test"), "{none}");
        let two = filter(r#"{"field": "/a", "equals": 1, "exists": true}"#)
            .unwrap_err()
            .to_string();
        assert!(two.contains("exactly one test"), "{two}");
        let dotted = filter(r#"{"field": "user.id", "exists": true}"#)
            .unwrap_err()
            .to_string();
        assert!(dotted.contains("field = \"/user/id\""), "{dotted}");
    }

    #[test]
    fn process_copies_kept_records_whole_and_refuses_by_index() {
        let mut input = BatchWriter::new();
        input.push_parts(Some(b"k1"), Some(5), &[("h", b"v")], |v| {
            v.extend_from_slice(br#"{"level":"error"}"#)
        });
        input.push_value(br#"{"level":"info"}"#);
        input.push_value(b"garbage");
        let input = input.finish();
        let mut f = filter(r#"{"field": "/level", "equals": "error"}"#).unwrap();
        let mut out = BatchWriter::new();
        let mut rejects = Rejects::default();
        f.process(Batch::parse(&input).unwrap(), &mut out, &mut rejects)
            .unwrap();
        let out = out.finish();
        let out = Batch::parse(&out).unwrap();
        let kept: Vec<_> = out.iter().collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].key, Some(&b"k1"[..]));
        assert_eq!(kept[0].timestamp, Some(5));
        assert_eq!(kept[0].headers().collect::<Vec<_>>(), [("h", &b"v"[..])]);
        let rejected: Vec<u32> = rejects.iter().map(|r| r.index).collect();
        assert_eq!(rejected, [2]);
    }
}
