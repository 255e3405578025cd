//! `http-sink`: sends each batch to an HTTP endpoint in one request, through
//! the host's HTTP (`wasi:http`): the connector must be granted the
//! endpoint's address in `net`; `https://` uses the host's TLS and
//! `[connector.grants.tls]`; headers holding secrets (an `Authorization`)
//! are added by the host from `[connector.grants.http]`, never seen here.
//!
//! - **Body**: `"ndjson"` (the default), each record's value and a `\n` (a
//!   value holding a newline is dead-lettered: it would read as two); or
//!   `"json-array"`, the values as the elements of one JSON array (a value
//!   that is not JSON is dead-lettered).
//! - **Idempotency key**: each request carries `Idempotency-Key` (the
//!   header is configurable), `<topic>/<partition>/<first>-<last>`: the
//!   offsets of the records it holds. The same records are always sent with
//!   the same key (a retry, a batch sent again after a restart), so a
//!   receiver that keeps the keys it has seen can drop repeats.
//! - **Retries**: a connection that fails, `408`, `429` and `5xx` are
//!   retried in place, after the response's `Retry-After` (seconds, at most
//!   `max_retry_after_ms`) or a backoff from `retry_initial_ms` doubling up
//!   to `retry_max_ms`, for as long as it takes; the sink says once that
//!   the receiver is away and once that it is back. The wait is free and
//!   the host interrupts it to stop, pause or swap (the batch is then sent
//!   again later).
//! - **Refusals**: any other `4xx` refuses the request on its merits. A
//!   batch of several records is then sent again one record a request, and
//!   each record refused alone is dead-lettered with the status and the
//!   start of the response's body; the others are delivered.
//! - **At least once**: the host commits offsets after `flush`, which here
//!   has nothing to do (each `write` returns once the receiver answered
//!   2xx); a crash repeats what was sent since the last commit, under the
//!   same keys.

use std::time::Duration;

use sluice_sdk::http::{HttpError, Request, Response};
use sluice_sdk::outage::Outage;
use sluice_sdk::{Batch, Context, Error, Origin, RecordRef, Rejects, Sink};

/// How records are put in a request's body.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One value a line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// The values as one JSON array (`application/json`).
    JsonArray,
}

/// Config of the `http-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to send, e.g. `"http://127.0.0.1:8080/ingest"`; grant its
    /// address in `net`.
    pub url: String,
    /// The body's format.
    #[serde(default)]
    pub format: Format,
    /// The method. Default `"POST"`.
    #[serde(default = "default_method")]
    pub method: String,
    /// Headers sent with every request (no secrets here: put those in
    /// `[connector.grants.http]`, where the host adds them).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The header that carries the idempotency key; `""` sends none.
    /// Default `"Idempotency-Key"`.
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// First wait before sending again, in milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub retry_max_ms: u64,
    /// Longest `Retry-After` obeyed, in milliseconds. Default 60000.
    #[serde(default = "sluice_sdk::outage::default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// Longest wait for the response's head, in milliseconds. Default
    /// 30000; a request that takes longer is tried again.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
}

fn default_method() -> String {
    "POST".into()
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}
fn default_response_timeout_ms() -> u64 {
    30_000
}

/// What the receiver made of a request, once it answered for good.
enum Answer {
    /// 2xx.
    Delivered,
    /// A 4xx other than 408 and 429: refused on its merits.
    Refused(String),
}

/// The sink's state.
#[derive(Debug)]
pub struct HttpSink {
    config: Config,
    content_type: &'static str,
    receiver: Outage,
}

impl HttpSink {
    /// The body of `records` (with their batch indices; `value_bytes` in
    /// all), the indices it holds, and the records refused for their form.
    fn body<'a>(
        &self,
        records: impl Iterator<Item = (usize, RecordRef<'a>)>,
        value_bytes: usize,
        rejects: &mut Rejects,
    ) -> (Vec<u8>, Vec<usize>) {
        let (n, _) = records.size_hint();
        let mut body = Vec::with_capacity(value_bytes + n + 2);
        let mut held = Vec::with_capacity(n);
        if self.config.format == Format::JsonArray {
            body.push(b'[');
        }
        for (i, record) in records {
            match self.config.format {
                Format::Ndjson => {
                    if memchr::memchr(b'\n', record.value).is_some() {
                        rejects.reject(i, "the value holds a newline, which NDJSON cannot carry");
                        continue;
                    }
                    body.extend_from_slice(record.value);
                    body.push(b'\n');
                }
                Format::JsonArray => {
                    if sluice_sdk::serde_json::from_slice::<sluice_sdk::serde::de::IgnoredAny>(
                        record.value,
                    )
                    .is_err()
                    {
                        rejects.reject(i, "the value is not JSON, which a JSON array needs");
                        continue;
                    }
                    if !held.is_empty() {
                        body.push(b',');
                    }
                    body.extend_from_slice(record.value);
                }
            }
            held.push(i);
        }
        if self.config.format == Format::JsonArray {
            body.push(b']');
        }
        (body, held)
    }

    /// Sends `body` under `key` until the receiver answers for good.
    fn send(&mut self, body: &[u8], key: &str) -> Result<Answer, Error> {
        loop {
            let c = &self.config;
            let mut request = Request::new(&c.method, &c.url)
                .header("content-type", self.content_type)
                .response_timeout(Duration::from_millis(c.response_timeout_ms));
            for (name, value) in &c.headers {
                request = request.header(name, value);
            }
            if !c.idempotency_header.is_empty() {
                request = request.header(&c.idempotency_header, key);
            }
            let wait = match request.body(body).send() {
                Ok(response) => match response.status() {
                    200..=299 => {
                        drain(response);
                        self.receiver.back();
                        return Ok(Answer::Delivered);
                    }
                    408 | 429 | 500..=599 => {
                        let status = response.status();
                        let after = retry_after(&response)
                            .map(|d| d.min(Duration::from_millis(self.config.max_retry_after_ms)));
                        let text = snippet(response);
                        self.receiver
                            .went_away(&format!("it answered {status}: {text}"));
                        after
                    }
                    400..=499 => {
                        let status = response.status();
                        let text = snippet(response);
                        self.receiver.back();
                        return Ok(Answer::Refused(format!("HTTP {status}: {text}")));
                    }
                    status => {
                        return Err(Error::fatal(format!(
                            "{} answered {status}, which this sink does not follow (is the URL right?)",
                            self.config.url
                        )));
                    }
                },
                Err(HttpError::Interrupted) => {
                    return Err(Error::retriable("interrupted while sending"));
                }
                Err(e @ (HttpError::Denied(_) | HttpError::Url(_))) => return Err(e.into()),
                Err(HttpError::Failed(why)) => {
                    self.receiver.went_away(&why);
                    None
                }
            };
            self.receiver.wait(wait);
            if sluice_sdk::interrupted() {
                return Err(Error::retriable(
                    "interrupted while waiting for the receiver",
                ));
            }
        }
    }
}

/// Reads what is left of a response's body, so the connection ends
/// cleanly.
fn drain(response: Response) {
    let _ = response.bytes();
}

/// The start of a response's body, as text, for a message.
fn snippet(response: Response) -> String {
    let body = response.bytes().unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.trim().to_owned()
}

/// `Retry-After` in seconds (the date form is not followed).
fn retry_after(response: &Response) -> Option<Duration> {
    let secs: u64 = response.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs))
}

impl Sink for HttpSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        let receiver = Outage::new(
            format!("http-sink: {}", config.url),
            (config.retry_initial_ms, config.retry_max_ms),
            ("retry_initial_ms", "retry_max_ms"),
        )?;
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(Error::invalid_config(format!(
                "url {:?} must start with http:// or https://",
                config.url
            )));
        }
        let content_type = match config.format {
            Format::Ndjson => "application/x-ndjson",
            Format::JsonArray => "application/json",
        };
        Ok(HttpSink {
            config,
            content_type,
            receiver,
        })
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let (body, held) = self.body(
            batch.iter().enumerate(),
            batch.value_bytes() as usize,
            rejects,
        );
        let (Some(&first), Some(&last)) = (held.first(), held.last()) else {
            return Ok(());
        };
        let offset = |i: usize| origin.first_offset + i as u64;
        let key = format!(
            "{}/{}/{}-{}",
            origin.topic,
            origin.partition,
            offset(first),
            offset(last)
        );
        let Answer::Refused(why) = self.send(&body, &key)? else {
            return Ok(());
        };
        if held.len() == 1 {
            rejects.reject(first, why);
            return Ok(());
        }
        // Which records did it refuse? Each alone, under its own key.
        let records: Vec<RecordRef<'_>> = batch.iter().collect();
        for i in held {
            let record = records[i];
            let (body, _) = self.body(
                std::iter::once((i, record)),
                record.value.len(),
                &mut Rejects::default(),
            );
            let key = format!("{}/{}/{}", origin.topic, origin.partition, offset(i));
            if let Answer::Refused(why) = self.send(&body, &key)? {
                rejects.reject(i, why);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Each write returned once the receiver answered: nothing is held.
        Ok(())
    }
}

sluice_sdk::export_sink!(HttpSink);
