//! `http-enrich`: a transform that adds to each record's JSON value what an
//! HTTP service answers for one of its fields (Flink's Async I/O, Kafka
//! Streams' lookup join), many lookups in flight at once
//! ([`sluice_sdk::enrich`]).
//!
//! - `url`: the lookup, `{key}` standing for the key (escaped for a URL):
//!   `"http://users.internal:8080/users/{key}"`. Grant its address in
//!   `net`; `https://` goes through the host's TLS.
//! - `field`: a JSON Pointer to the key in the value (`"/user_id"`; a
//!   string as its text, a number or boolean as written), or `key = true`:
//!   the record's key.
//! - `into`: the member of the value that takes the answer (a JSON
//!   document), replacing one of that name.
//! - `concurrency` (100) requests in flight at once; `timeout_ms` (1000)
//!   for each attempt; `retries` (3) after a connection error, a timeout,
//!   408, 429 or 5xx, waiting `backoff_ms` (100, doubling) or the
//!   service's `Retry-After`; `cache_ttl_ms` (0: no cache) reuses an answer
//!   for that long, `cache_size` (10,000) answers at most.
//! - `ordered` (true): records leave in the order they came; false: in the
//!   order their answers came (Flink's `unorderedWait`), within a batch.
//! - `not_found` (`"keep"`): a record whose lookup answered 404 is kept
//!   as it was, `"drop"`ped or `"refuse"`d.
//! - `missing` (`"refuse"`) and `not_json` (`"refuse"`): a record without
//!   the field, or whose value is not JSON, is refused (dead-lettered with
//!   the reason), dropped or kept as it was.
//!
//! A lookup that fails for good (another 4xx, an answer that is not JSON,
//! retries used up) refuses its records with the reason. A batch none of
//! whose lookups came to an end (the service is down, or failing as a
//! whole) waits for it (a retriable error: the host backs off and sends the
//! batch again), so an outage dead-letters nothing.

use std::collections::HashMap;
use std::time::Duration;

use sluice_sdk::enrich::{Answer, Enricher, Options};
use sluice_sdk::http::Request;
use sluice_sdk::json::{Doc, Field, Otherwise, Skip, scalar_text};
use sluice_sdk::{Batch, BatchWriter, Context, Error, Rejects, Transform};

/// Config of the `http-enrich` transform.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The lookup URL, `{key}` standing for the key.
    pub url: String,
    /// A JSON Pointer to the key in the record's value, e.g. `"/user_id"`.
    #[serde(default)]
    pub field: Option<String>,
    /// Look up the record's key instead of a field.
    #[serde(default)]
    pub key: bool,
    /// The member of the value that takes the answer.
    pub into: String,
    /// Requests in flight at once, at most.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Milliseconds one attempt may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts after the first, for a passing failure.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Milliseconds before the first retry (doubling).
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
    /// Milliseconds an answer is reused; 0: no cache.
    #[serde(default)]
    pub cache_ttl_ms: u64,
    /// Answers cached at most.
    #[serde(default = "default_cache_size")]
    pub cache_size: u32,
    /// Records leave in the order they came (true) or as answered.
    #[serde(default = "yes")]
    pub ordered: bool,
    /// A lookup answered 404: `keep` (the default) the record as it was,
    /// `drop` or `refuse` it.
    #[serde(default = "keep")]
    pub not_found: Otherwise,
    /// A record without the field: `refuse` (the default), `drop`, `keep`.
    #[serde(default)]
    pub missing: Otherwise,
    /// A value that is not JSON: `refuse` (the default), `drop`, `keep`.
    #[serde(default)]
    pub not_json: Otherwise,
}

fn default_concurrency() -> u32 {
    100
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_retries() -> u32 {
    3
}
fn default_backoff_ms() -> u64 {
    100
}
fn default_cache_size() -> u32 {
    10_000
}
fn yes() -> bool {
    true
}
fn keep() -> Otherwise {
    Otherwise::Keep
}

/// What becomes of one record of a batch.
enum Plan {
    /// Copied as it came.
    Keep,
    Drop,
    Refuse(String),
    /// Looked up under this key.
    Lookup(String),
}

/// The transform.
#[derive(Debug)]
pub struct HttpEnrich {
    url: String,
    field: Option<Field>,
    into: String,
    ordered: bool,
    not_found: Otherwise,
    enricher: Enricher,
}

impl HttpEnrich {
    fn new(config: Config) -> Result<HttpEnrich, Error> {
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(Error::invalid_config(format!(
                "url = {:?} is not an http:// or https:// URL",
                config.url
            )));
        }
        if !config.url.contains("{key}") {
            return Err(Error::invalid_config(format!(
                "url = {:?} does not say where the key goes: write {{key}} in it, \
                 e.g. \"http://users.internal/users/{{key}}\"",
                config.url
            )));
        }
        let field = match (config.field, config.key) {
            (Some(f), false) => Some(Field::new("field", &f, config.not_json, config.missing)?),
            (None, true) => None,
            _ => {
                return Err(Error::invalid_config(
                    "look up by one thing: field = \"/user_id\" (a field of the value) or key = true",
                ));
            }
        };
        if config.into.is_empty() {
            return Err(Error::invalid_config(
                "into is empty: name the member that takes the answer, e.g. into = \"user\"",
            ));
        }
        if config.timeout_ms == 0 {
            return Err(Error::invalid_config(
                "timeout_ms = 0 leaves no time for an answer: give the longest wait, e.g. 1000",
            ));
        }
        if config.concurrency == 0 {
            return Err(Error::invalid_config(
                "concurrency = 0 would never look anything up: give at least 1",
            ));
        }
        let enricher = Enricher::new(Options {
            concurrency: config.concurrency as usize,
            timeout: Duration::from_millis(config.timeout_ms),
            retries: config.retries,
            backoff: Duration::from_millis(config.backoff_ms),
            cache_ttl: (config.cache_ttl_ms > 0)
                .then(|| Duration::from_millis(config.cache_ttl_ms)),
            cache_capacity: config.cache_size as usize,
            ..Options::default()
        });
        Ok(HttpEnrich {
            url: config.url,
            field,
            into: config.into,
            ordered: config.ordered,
            not_found: config.not_found,
            enricher,
        })
    }

    /// What to do with a record of `key` and `value`.
    fn plan(&self, key: Option<&[u8]>, value: &[u8]) -> Plan {
        match &self.field {
            None => match key.map(std::str::from_utf8) {
                Some(Ok(k)) => Plan::Lookup(k.to_owned()),
                Some(Err(_)) => Plan::Refuse("its key is not UTF-8".into()),
                None => Plan::Refuse("it has no key to look up".into()),
            },
            Some(f) => match f.read(value) {
                Ok(raw) => match scalar_text(raw) {
                    Some(k) => Plan::Lookup(k.into_owned()),
                    None => Plan::Refuse(format!(
                        "its field {:?} holds an object or an array, not a key to look up",
                        f.pointer().to_text()
                    )),
                },
                Err(Skip::Keep) => Plan::Keep,
                Err(Skip::Drop) => Plan::Drop,
                Err(Skip::Refuse(reason)) => Plan::Refuse(reason),
            },
        }
    }

    /// `value` with the answer `body` as its member `into`.
    fn merge(&self, value: &[u8], key: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let answer = Doc::parse(body)
            .map_err(|e| format!("the service's answer for key {key:?} is not JSON ({e})"))?;
        match Doc::parse(value) {
            Ok(Doc::Object(mut members)) => {
                members.retain(|(name, _)| *name != self.into);
                members.push((self.into.clone(), answer));
                Ok(Doc::Object(members).to_vec())
            }
            Ok(_) => Err(format!(
                "the value is not a JSON object, so it has no member {:?} to take the answer",
                self.into
            )),
            Err(e) => Err(format!("the value is not JSON ({e})")),
        }
    }
}

/// `key` escaped for a URL's path or query.
fn escape(key: &str) -> String {
    key.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Transform for HttpEnrich {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        HttpEnrich::new(config)
    }

    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let records: Vec<_> = input.iter().collect();
        let plans: Vec<Plan> = records.iter().map(|r| self.plan(r.key, r.value)).collect();
        let keys: Vec<String> = plans
            .iter()
            .filter_map(|p| match p {
                Plan::Lookup(k) => Some(k.clone()),
                _ => None,
            })
            .collect();
        let url = &self.url;
        let answers = self
            .enricher
            .lookup(&keys, |k| Request::get(&url.replace("{key}", &escape(k))))?;
        // Each key's answer, and when it came.
        let answered: HashMap<&str, (usize, &Result<Answer, String>)> = answers
            .iter()
            .enumerate()
            .map(|(at, (k, a))| (*k, (at, a)))
            .collect();
        let mut order: Vec<usize> = (0..records.len()).collect();
        if !self.ordered {
            // Records needing no answer first, then by the answer's arrival.
            order.sort_by_key(|&i| match &plans[i] {
                Plan::Lookup(k) => answered.get(k.as_str()).map_or(0, |(at, _)| at + 1),
                _ => 0,
            });
        }
        for i in order {
            let r = &records[i];
            let merged = match &plans[i] {
                Plan::Keep => {
                    out.push(*r);
                    continue;
                }
                Plan::Drop => continue,
                Plan::Refuse(reason) => Err(reason.clone()),
                Plan::Lookup(key) => match answered.get(key.as_str()).map(|(_, a)| *a) {
                    Some(Ok(Answer::Found(body))) => self.merge(r.value, key, body),
                    Some(Ok(Answer::Missing)) => match self.not_found {
                        Otherwise::Keep => {
                            out.push(*r);
                            continue;
                        }
                        Otherwise::Drop => continue,
                        Otherwise::Refuse => {
                            Err(format!("the service has nothing for key {key:?} (404)"))
                        }
                    },
                    Some(Err(why)) => Err(format!("looking up key {key:?}: {why}")),
                    None => Err(format!("key {key:?} was not looked up")),
                },
            };
            match merged {
                Ok(value) => {
                    let headers: Vec<(&str, &[u8])> = r.headers().collect();
                    out.push_parts(r.key, r.timestamp, &headers, |v| {
                        v.extend_from_slice(&value)
                    });
                }
                Err(reason) => rejects.reject(i, reason),
            }
        }
        Ok(())
    }
}

sluice_sdk::export_transform!(HttpEnrich);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::serde_json;

    fn enrich(config: &str) -> Result<HttpEnrich, Error> {
        HttpEnrich::new(serde_json::from_str(config).unwrap())
    }

    #[test]
    fn a_config_says_what_to_fix() {
        let e = enrich(r#"{"url": "http://h/users", "field": "/id", "into": "user"}"#).unwrap_err();
        assert!(e.to_string().contains("write {key} in it"), "{e}");
        let e = enrich(r#"{"url": "h/{key}", "key": true, "into": "u"}"#).unwrap_err();
        assert!(
            e.to_string().contains("not an http:// or https:// URL"),
            "{e}"
        );
        let e = enrich(r#"{"url": "http://h/{key}", "key": true, "into": "u", "timeout_ms": 0}"#)
            .unwrap_err();
        assert!(e.to_string().contains("no time"), "{e}");
        let e = enrich(r#"{"url": "http://h/{key}", "into": "user"}"#).unwrap_err();
        assert!(e.to_string().contains("look up by one thing"), "{e}");
        let e = enrich(r#"{"url": "http://h/{key}", "key": true, "into": "u", "concurrency": 0}"#)
            .unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
    }

    #[test]
    fn the_answer_replaces_the_member_it_goes_into_keeping_the_order() {
        let t = enrich(r#"{"url": "http://h/{key}", "field": "/id", "into": "user"}"#).unwrap();
        let merged = t
            .merge(br#"{"id":7,"user":"old","z":1}"#, "7", br#"{"name":"Ann"}"#)
            .unwrap();
        assert_eq!(merged, br#"{"id":7,"z":1,"user":{"name":"Ann"}}"#);
        let e = t.merge(br#"{"id":7}"#, "7", b"<html>").unwrap_err();
        assert!(e.contains("answer for key \"7\" is not JSON"), "{e}");
        let e = t.merge(b"[1]", "7", b"{}").unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
    }

    #[test]
    fn a_key_is_escaped_for_the_url() {
        assert_eq!(escape("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(escape("Ab-9._~"), "Ab-9._~");
    }
}
