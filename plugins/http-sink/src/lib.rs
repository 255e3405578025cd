//! `http-sink`: sends each batch to an HTTP endpoint, through
//! the host's HTTP (`wasi:http`): the connector must be granted the
//! endpoint's address in `net`; `https://` uses the host's TLS and
//! `[connector.grants.tls]`; headers holding secrets (an `Authorization`)
//! are added by the host from `[connector.grants.http]`, never seen here.
//!
//! - **Requests**: a batch is one request, or with `records_per_request`
//!   several of that many records, up to `max_in_flight` of them sent at
//!   once (the host keeps 4 keep-alive connections to a server).
//! - **Body**: `"ndjson"` (the default), each record's value and a `\n` (a
//!   value holding a newline is dead-lettered: it would read as two); or
//!   `"json-array"`, the values as the elements of one JSON array (a value
//!   that is not JSON is dead-lettered).
//! - **Idempotency key**: each request carries `Idempotency-Key` (the
//!   header is configurable), `<topic>/<partition>/<first>-<last>` (or
//!   `<topic>/<partition>/<offset>` for one record): the offsets of the
//!   records it holds. The same records are always sent with
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
//!   request of several records is then sent again one record a request, and
//!   each record refused alone is dead-lettered with the status and the
//!   start of the response's body; the others are delivered.
//! - **At least once**: the host commits offsets after `flush`, which here
//!   has nothing to do (each `write` returns once the receiver answered
//!   every request of its batch 2xx); a crash repeats what was sent since
//!   the last commit, under the same keys.

use std::time::Duration;

use sluice_sdk::http::{self, HttpError, Request, Response};
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
    /// Records in one request; a batch with more is sent as several.
    /// Default 0: the whole batch in one request.
    #[serde(default)]
    pub records_per_request: u32,
    /// Requests of one batch in flight at once. Default 1.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
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
fn default_max_in_flight() -> u32 {
    1
}

/// What the receiver made of a request, once it answered for good.
enum Answer {
    /// 2xx.
    Delivered,
    /// A 4xx other than 408 and 429: refused on its merits.
    Refused(String),
}

/// What one try of a request came to.
enum Tried {
    /// The receiver answered for good.
    Answered(Answer),
    /// It is away (a failed connection, 408, 429, 5xx): why, and how long
    /// it asked to be left alone.
    Away(String, Option<Duration>),
}

/// One request's worth of a batch.
struct Part {
    body: Vec<u8>,
    /// The batch indices of the records in `body`.
    held: Vec<usize>,
    /// Its idempotency key.
    key: String,
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

    /// The part of `records` (with their batch indices; `value_bytes` in
    /// all) that makes a body, keyed by the offsets it holds; `None` when
    /// every record was refused for its form.
    fn part<'a>(
        &self,
        origin: &Origin,
        records: impl Iterator<Item = (usize, RecordRef<'a>)>,
        value_bytes: usize,
        rejects: &mut Rejects,
    ) -> Option<Part> {
        let (body, held) = self.body(records, value_bytes, rejects);
        let (&first, &last) = (held.first()?, held.last()?);
        let offset = |i: usize| origin.first_offset + i as u64;
        let key = if first == last {
            format!("{}/{}/{}", origin.topic, origin.partition, offset(first))
        } else {
            format!(
                "{}/{}/{}-{}",
                origin.topic,
                origin.partition,
                offset(first),
                offset(last)
            )
        };
        Some(Part { body, held, key })
    }

    /// The request of `part`.
    fn request<'b>(&self, part: &'b Part) -> Request<'b> {
        let c = &self.config;
        let mut request = Request::new(&c.method, &c.url)
            .header("content-type", self.content_type)
            .response_timeout(Duration::from_millis(c.response_timeout_ms));
        for (name, value) in &c.headers {
            request = request.header(name, value);
        }
        if !c.idempotency_header.is_empty() {
            request = request.header(&c.idempotency_header, &part.key);
        }
        request.body(&part.body[..])
    }

    /// What the receiver's response to one try comes to.
    fn answer(&self, response: Response) -> Result<Tried, Error> {
        Ok(match response.status() {
            200..=299 => {
                drain(response);
                Tried::Answered(Answer::Delivered)
            }
            408 | 429 | 500..=599 => {
                let status = response.status();
                let after = response
                    .retry_after()
                    .map(|d| d.min(Duration::from_millis(self.config.max_retry_after_ms)));
                let text = snippet(response);
                Tried::Away(format!("it answered {status}: {text}"), after)
            }
            400..=499 => {
                let status = response.status();
                let text = snippet(response);
                Tried::Answered(Answer::Refused(format!("HTTP {status}: {text}")))
            }
            status => {
                return Err(Error::fatal(format!(
                    "{} answered {status}, which this sink does not follow (is the URL right?)",
                    self.config.url
                )));
            }
        })
    }

    /// Sends every part, `max_in_flight` at a time, until the receiver has
    /// answered each for good; the answers in the parts' order. Parts it
    /// was away for are sent again, after its `Retry-After` or the backoff.
    fn send_all(&mut self, parts: &[Part]) -> Result<Vec<Answer>, Error> {
        let mut answers: Vec<Option<Answer>> = parts.iter().map(|_| None).collect();
        let in_flight = self.config.max_in_flight as usize;
        loop {
            let todo: Vec<usize> = (0..parts.len()).filter(|&i| answers[i].is_none()).collect();
            if todo.is_empty() {
                break;
            }
            let mut away: Option<String> = None;
            let mut wait: Option<Duration> = None;
            for wave in todo.chunks(in_flight) {
                let mut started = Vec::with_capacity(wave.len());
                let mut pending = Vec::with_capacity(wave.len());
                for &i in wave {
                    match self.request(&parts[i]).start() {
                        Ok(p) => {
                            started.push(i);
                            pending.push(p);
                        }
                        Err(e) => away = Some(sent_error(e)?),
                    }
                }
                for (i, got) in started.into_iter().zip(http::wait_all(pending)) {
                    match got.map_err(sent_error) {
                        Ok(response) => match self.answer(response)? {
                            Tried::Answered(answer) => answers[i] = Some(answer),
                            Tried::Away(why, after) => {
                                away = Some(why);
                                wait = wait.max(after);
                            }
                        },
                        Err(e) => away = Some(e?),
                    }
                }
            }
            let Some(why) = away else {
                self.receiver.back();
                continue;
            };
            self.receiver.went_away(&why);
            self.receiver.wait(wait);
            if sluice_sdk::interrupted() {
                return Err(Error::retriable(
                    "interrupted while waiting for the receiver",
                ));
            }
        }
        Ok(answers
            .into_iter()
            .map(|a| a.expect("every part answered"))
            .collect())
    }
}

/// A request that could not be sent or answered: why the receiver is away
/// (`Ok`), or the error that ends the write.
fn sent_error(e: HttpError) -> Result<String, Error> {
    match e {
        HttpError::Interrupted => Err(Error::retriable("interrupted while sending")),
        e @ (HttpError::Denied(_) | HttpError::Url(_)) => Err(e.into()),
        HttpError::Failed(why) => Ok(why),
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
        if config.max_in_flight == 0 {
            return Err(Error::invalid_config(
                "max_in_flight is 0: at least one request must be in flight (the default is 1)",
            ));
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
        let records: Vec<(usize, RecordRef<'_>)> = batch.iter().enumerate().collect();
        let per_request = match self.config.records_per_request as usize {
            0 => records.len().max(1),
            n => n,
        };
        let parts: Vec<Part> = records
            .chunks(per_request)
            .filter_map(|chunk| {
                let value_bytes = chunk.iter().map(|(_, r)| r.value.len()).sum();
                self.part(origin, chunk.iter().copied(), value_bytes, rejects)
            })
            .collect();
        let answers = self.send_all(&parts)?;
        // Which records did it refuse? Those of a refused part, each alone,
        // under its own key.
        let mut alone = Vec::new();
        for (part, answer) in parts.iter().zip(answers) {
            let Answer::Refused(why) = answer else {
                continue;
            };
            match part.held[..] {
                [i] => rejects.reject(i, why),
                _ => alone.extend(part.held.iter().filter_map(|&i| {
                    let record = records[i].1;
                    let once = std::iter::once((i, record));
                    self.part(origin, once, record.value.len(), &mut Rejects::default())
                })),
            }
        }
        let answers = self.send_all(&alone)?;
        for (part, answer) in alone.iter().zip(answers) {
            if let Answer::Refused(why) = answer {
                rejects.reject(part.held[0], why);
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
