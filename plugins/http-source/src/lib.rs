//! `http-source`: the "firehose" pattern of the seeds' Twitter source, for
//! any HTTP service, through the host's HTTP (`wasi:http`; grant the
//! service's address in `net`; `https://` uses `[connector.grants.tls]`;
//! credentials go in `[connector.grants.http]` headers, added by the host).
//!
//! Three modes:
//! - **`"sse"`** (Server-Sent Events): a `GET` that stays open; each event
//!   is a record (its `data` lines joined by `\n` as the value, its `event`
//!   type in the `sse.event` header, its `id` in `sse.id`). **Position** =
//!   the last event id: after a dropped connection, and after a restart,
//!   the source asks again with `Last-Event-ID`, so a server that keeps its
//!   events by id gives each exactly once into the log. It waits the
//!   server's `retry` (or its backoff) before asking again.
//! - **`"ndjson"`**: a `GET` that stays open, one record a line. A stream
//!   has no position: after a dropped connection the source reads what the
//!   service sends next.
//! - **`"poll"`**: `GET`s the URL every `poll_interval_ms`, with the last
//!   cursor as the query parameter `cursor_param`; the records are the
//!   elements of the JSON array at `records_pointer` in the response, the
//!   next cursor is at `cursor_pointer`. **Position** = the cursor.
//!
//! **Waiting** (for events, between polls, out a `Retry-After`) is free and
//! does not count against the `cpu` grant; the host interrupts it to stop,
//! pause or swap. A service that is away (refused, `5xx`, `429`) is said
//! once, asked again after `Retry-After` or a backoff from
//! `retry_initial_ms` doubling up to `retry_max_ms`, and said once when it
//! is back. Any other `4xx` fails the connector: its config is wrong.

use std::io::Read as _;
use std::time::Duration;

use sluice_sdk::http::{Body, HttpError, Request, Response};
use sluice_sdk::outage::Outage;
use sluice_sdk::{BatchWriter, Context, Error, Poll, ReadBuf, Source};

/// What the URL serves.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Server-Sent Events (`text/event-stream`).
    #[default]
    Sse,
    /// A stream of JSON lines.
    Ndjson,
    /// A JSON response to poll with a cursor.
    Poll,
}

/// Config of the `http-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The service, e.g. `"http://127.0.0.1:8080/events"`; grant its
    /// address in `net`.
    pub url: String,
    /// What it serves.
    #[serde(default)]
    pub mode: Mode,
    /// Headers sent with every request (secrets go in
    /// `[connector.grants.http]`).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// `"poll"`: the query parameter that carries the cursor.
    #[serde(default = "default_cursor_param")]
    pub cursor_param: String,
    /// `"poll"`: the cursor to start from (none: the service's start).
    #[serde(default)]
    pub start_cursor: Option<String>,
    /// `"poll"`: where the records are in the response, a JSON pointer
    /// (`""`: the response is the array).
    #[serde(default)]
    pub records_pointer: String,
    /// `"poll"`: where the next cursor is in the response, a JSON pointer.
    #[serde(default = "default_cursor_pointer")]
    pub cursor_pointer: String,
    /// `"poll"`: the wait after a poll that brought nothing, in
    /// milliseconds. Default 1000.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// First wait before asking again, in milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub retry_max_ms: u64,
    /// Longest `Retry-After` obeyed, in milliseconds. Default 60000.
    #[serde(default = "sluice_sdk::outage::default_max_retry_after_ms")]
    pub max_retry_after_ms: u64,
    /// Longest record (event, line) accepted, in bytes. Default 1 MiB.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u32,
}

fn default_cursor_param() -> String {
    "cursor".into()
}
fn default_cursor_pointer() -> String {
    "/next".into()
}
fn default_poll_interval_ms() -> u64 {
    1000
}
fn default_max_record_bytes() -> u32 {
    1 << 20
}

/// The source's state.
#[derive(Debug)]
pub struct HttpSource {
    config: Config,
    /// The open stream (`sse`, `ndjson`).
    stream: Option<Body>,
    /// Bytes read and not yet parsed.
    buf: ReadBuf,
    /// The SSE event being read.
    event: SseEvent,
    /// `sse`: the last event id; `poll`: the cursor.
    position: Option<String>,
    service: Outage,
    /// A wait the service asked for (`Retry-After`).
    asked_wait: Option<Duration>,
}

/// An SSE event being read, field by field.
#[derive(Debug, Default)]
struct SseEvent {
    data: Vec<u8>,
    has_data: bool,
    kind: Option<String>,
    /// Its `id`: the position once the event is whole (a half-read event's
    /// id must not be stored, or a reconnect would skip the event).
    id: Option<String>,
}

/// How long a poll with records in hand waits for more of a stream that is
/// flowing (see `Body::read_within`): a stream that pauses costs a batch
/// this much latency, one that flows makes whole batches.
const MORE_WITHIN: Duration = Duration::from_millis(1);

/// Bytes asked for by one read.
const READ_BYTES: usize = 64 * 1024;

impl HttpSource {
    /// Sends a `GET` of `url`, waiting out a service that is away. `None`:
    /// interrupted, or away (said once) with the wait before the next try
    /// done.
    fn get(&mut self, url: &str, last_event_id: Option<&str>) -> Result<Option<Response>, Error> {
        let mut request = Request::get(url);
        for (name, value) in &self.config.headers {
            request = request.header(name, value);
        }
        if self.config.mode == Mode::Sse {
            request = request.header("accept", "text/event-stream");
        }
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        match request.send() {
            Ok(response) => match response.status() {
                200..=299 => {
                    self.service.back();
                    return Ok(Some(response));
                }
                408 | 429 | 500..=599 => {
                    let status = response.status();
                    self.asked_wait = response
                        .retry_after()
                        .map(|d| d.min(Duration::from_millis(self.config.max_retry_after_ms)));
                    self.service.went_away(&format!("it answered {status}"));
                }
                status => {
                    let body = response.bytes().unwrap_or_default();
                    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
                    return Err(Error::fatal(format!(
                        "{url} answered {status}: {} (check the URL and the credentials)",
                        text.trim()
                    )));
                }
            },
            Err(HttpError::Interrupted) => return Ok(None),
            Err(e @ (HttpError::Denied(_) | HttpError::Url(_))) => return Err(e.into()),
            Err(HttpError::Failed(why)) => self.service.went_away(&why),
        }
        self.wait();
        Ok(None)
    }

    /// Waits before the next try: what the service asked for, or the
    /// backoff.
    fn wait(&mut self) {
        let asked = self.asked_wait.take();
        self.service.wait(asked);
    }

    /// The stream ended or broke: drop it and what was half read, and wait
    /// before asking again.
    fn stream_ended(&mut self, why: &str) {
        self.service.went_away(why);
        self.stream = None;
        self.buf.clear();
        self.event = SseEvent::default();
        self.wait();
    }

    /// Reads more of the stream, waiting until bytes come if `wait`, else
    /// `WouldBlock` if none have. `Ok(0)`: it ended.
    fn read_more(&mut self, wait: bool) -> std::io::Result<usize> {
        let stream = self.stream.as_mut().expect("open");
        self.buf.read_with(|into| {
            if wait {
                stream.read(into)
            } else {
                stream.read_within(into, MORE_WITHIN)
            }
        })
    }

    /// The next whole line in the buffer, consumed, without its ending
    /// (`\n`, `\r\n`; a lone `\r` ends a line only for SSE's sake when a
    /// byte follows it).
    fn next_line(&mut self) -> Result<Option<std::ops::Range<usize>>, Error> {
        let rest = self.buf.rest();
        let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
            if rest.len() > self.config.max_record_bytes as usize {
                return Err(Error::fatal(format!(
                    "{} sent a line longer than max_record_bytes ({})",
                    self.config.url, self.config.max_record_bytes
                )));
            }
            return Ok(None);
        };
        let used = if rest[at] == b'\r' {
            match rest.get(at + 1) {
                None => return Ok(None), // a `\n` may follow
                Some(b'\n') => at + 2,
                Some(_) => at + 1,
            }
        } else {
            at + 1
        };
        Ok(Some(self.buf.take(used, 0..at)))
    }

    /// Parses what was read into records: SSE events dispatched, or NDJSON
    /// lines. Returns how many were written.
    fn parse(&mut self, out: &mut BatchWriter, max: usize) -> Result<usize, Error> {
        let mut n = 0;
        while n < max {
            let Some(line) = self.next_line()? else { break };
            if self.config.mode == Mode::Ndjson {
                if !line.is_empty() {
                    out.push_value(&self.buf[line]);
                    n += 1;
                }
                continue;
            }
            let text = &self.buf[line];
            if text.is_empty() {
                n += usize::from(self.dispatch(out));
                continue;
            }
            if text[0] == b':' {
                continue; // a comment, or a keep-alive
            }
            let (field, value) = match text.iter().position(|&b| b == b':') {
                Some(c) => {
                    let v = &text[c + 1..];
                    (&text[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (text, &[][..]),
            };
            match field {
                b"data" => {
                    if self.event.has_data {
                        self.event.data.push(b'\n');
                    }
                    self.event.data.extend_from_slice(value);
                    self.event.has_data = true;
                    if self.event.data.len() > self.config.max_record_bytes as usize {
                        return Err(Error::fatal(format!(
                            "{} sent an event longer than max_record_bytes ({})",
                            self.config.url, self.config.max_record_bytes
                        )));
                    }
                }
                b"event" => self.event.kind = Some(String::from_utf8_lossy(value).into_owned()),
                // An id holding NUL is ignored, as the SSE standard says.
                b"id" if !value.contains(&0) => {
                    self.event.id = Some(String::from_utf8_lossy(value).into_owned());
                }
                b"retry" => {
                    if let Some(ms) = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()) {
                        self.service.set_backoff(Duration::from_millis(ms));
                    }
                }
                _ => {}
            }
        }
        Ok(n)
    }

    /// A blank line: the event read so far is a record, if it has data.
    fn dispatch(&mut self, out: &mut BatchWriter) -> bool {
        let event = std::mem::take(&mut self.event);
        if let Some(id) = event.id {
            self.position = Some(id);
        }
        if !event.has_data {
            return false;
        }
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(kind) = &event.kind {
            headers.push(("sse.event", kind.as_bytes()));
        }
        if let Some(id) = &self.position {
            headers.push(("sse.id", id.as_bytes()));
        }
        out.push_parts(None, None, &headers, |v| v.extend_from_slice(&event.data));
        true
    }

    /// `sse`, `ndjson`: reads the stream, waiting if nothing has come.
    fn poll_stream(&mut self, out: &mut BatchWriter, max: usize) -> Result<(), Error> {
        if self.stream.is_none() {
            let url = self.config.url.clone();
            let id = self.position.clone();
            let Some(response) = self.get(&url, id.as_deref())? else {
                return Ok(());
            };
            self.stream = Some(response.into_body());
        }
        // What is in hand, then what else has arrived, up to the batch; it
        // waits for the service only with nothing in hand.
        let mut n = self.parse(out, max)?;
        while n < max {
            match self.read_more(n == 0) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Ok(0) => {
                    self.stream_ended("it ended the stream");
                    return Ok(());
                }
                Ok(_) => n += self.parse(out, max - n)?,
                Err(_) if sluice_sdk::interrupted() => return Ok(()),
                Err(e) => {
                    self.stream_ended(&e.to_string());
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `poll`: one request with the cursor; waits the interval if it
    /// brought nothing.
    fn poll_cursor(&mut self, out: &mut BatchWriter, max: usize) -> Result<(), Error> {
        let c = &self.config;
        let url = match &self.position {
            Some(cursor) => {
                let sep = if c.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}{}={}", c.url, c.cursor_param, encode(cursor))
            }
            None => c.url.clone(),
        };
        let Some(response) = self.get(&url, None)? else {
            return Ok(());
        };
        let body = match response.bytes() {
            Ok(body) => body,
            Err(_) if sluice_sdk::interrupted() => return Ok(()),
            Err(e) => {
                self.service.went_away(&e.to_string());
                self.wait();
                return Ok(());
            }
        };
        let doc: sluice_sdk::serde_json::Value = sluice_sdk::serde_json::from_slice(&body)
            .map_err(|e| Error::fatal(format!("{url} did not answer JSON: {e}")))?;
        let records = doc
            .pointer(&self.config.records_pointer)
            .and_then(|r| r.as_array())
            .ok_or_else(|| {
                Error::fatal(format!(
                    "{url}: no array at records_pointer {:?}",
                    self.config.records_pointer
                ))
            })?;
        if records.len() > max {
            return Err(Error::fatal(format!(
                "{url} answered {} records, more than a batch holds ({max}); ask the service for fewer a page",
                records.len()
            )));
        }
        for record in records {
            out.push_value(record.to_string().as_bytes());
        }
        match doc.pointer(&self.config.cursor_pointer) {
            Some(sluice_sdk::serde_json::Value::String(s)) => self.position = Some(s.clone()),
            Some(v) if !v.is_null() => self.position = Some(v.to_string()),
            _ => {}
        }
        if records.is_empty() {
            std::thread::sleep(Duration::from_millis(self.config.poll_interval_ms));
        }
        Ok(())
    }
}

/// `text` as a query value: unreserved characters kept, the rest
/// percent-encoded.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Source for HttpSource {
    type Config = Config;

    fn open(config: Config, _ctx: &Context, resume: Option<&[u8]>) -> Result<Self, Error> {
        let service = Outage::new(
            format!("http-source: {}", config.url),
            (config.retry_initial_ms, config.retry_max_ms),
            ("retry_initial_ms", "retry_max_ms"),
        )?;
        let position = match resume {
            Some(p) => Some(
                String::from_utf8(p.to_vec())
                    .map_err(|_| Error::fatal("the stored position is not text"))?,
            ),
            None if config.mode == Mode::Poll => config.start_cursor.clone(),
            None => None,
        };
        Ok(HttpSource {
            config,
            stream: None,
            buf: ReadBuf::new(READ_BYTES),
            event: SseEvent::default(),
            position,
            service,
            asked_wait: None,
        })
    }

    fn poll(&mut self, out: &mut BatchWriter, max: usize) -> Result<Poll, Error> {
        match self.config.mode {
            Mode::Sse | Mode::Ndjson => self.poll_stream(out, max)?,
            Mode::Poll => self.poll_cursor(out, max)?,
        }
        Ok(match (&self.position, self.config.mode) {
            (_, Mode::Ndjson) | (None, _) => Poll::default(),
            (Some(p), _) => Poll::at(p.clone().into_bytes()),
        })
    }
}

sluice_sdk::export_source!(HttpSource);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sluice_sdk::Batch;

    fn sse_source() -> HttpSource {
        let config: Config =
            sluice_sdk::serde_json::from_str(r#"{"url": "http://127.0.0.1:1/events"}"#).unwrap();
        let ctx = Context {
            connector: "read".into(),
            index: 0,
            count: 1,
        };
        HttpSource::open(config, &ctx, None).unwrap()
    }

    /// Parses `text` as if read from the stream: the records' values, and
    /// the position after them.
    fn parse(source: &mut HttpSource, text: &str) -> (Vec<String>, Option<String>) {
        source
            .buf
            .read_with(|into| {
                into[..text.len()].copy_from_slice(text.as_bytes());
                Ok(text.len())
            })
            .unwrap();
        let mut out = BatchWriter::new();
        source.parse(&mut out, 100).unwrap();
        let bytes = out.finish();
        let values = Batch::parse(&bytes)
            .unwrap()
            .iter()
            .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
            .collect();
        (values, source.position.clone())
    }

    #[test]
    fn an_sse_event_is_a_record_once_whole_and_only_then_moves_the_position() {
        let mut s = sse_source();
        let (values, position) = parse(&mut s, "retry: 50\n\nid: 1\ndata: a\n\nid: 2\ndata: b");
        assert_eq!(values, ["a"]);
        assert_eq!(
            position.as_deref(),
            Some("1"),
            "a half-read event's id is not the position yet"
        );
        let (values, position) = parse(&mut s, "\n\n");
        assert_eq!(values, ["b"]);
        assert_eq!(position.as_deref(), Some("2"));
    }

    #[test]
    fn sse_data_lines_join_and_crlf_comments_and_ids_without_data_are_handled() {
        let mut s = sse_source();
        let (values, position) = parse(
            &mut s,
            ": keep-alive\r\nevent: tick\r\ndata: one\r\ndata:two\r\n\r\nid: 7\r\n\r\n",
        );
        assert_eq!(values, ["one\ntwo"]);
        assert_eq!(position.as_deref(), Some("7"), "an id alone still moves it");
    }
}
