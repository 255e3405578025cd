//! HTTP requests through the host (`wasi:http`).
//!
//! The host sends them: to peers the connector's `net` grant allows (checked
//! on the address the URL's host resolves to, before a byte leaves), over
//! TLS with the trust of `[connector.grants.tls]` for `https://`, and with
//! the headers of `[connector.grants.http]` added (an `Authorization` made
//! from a secret, which the plugin never sees). HTTP/1.1.
//!
//! ```no_run
//! use sluice_sdk::http::Request;
//!
//! # fn main() -> Result<(), sluice_sdk::http::HttpError> {
//! let response = Request::post("http://127.0.0.1:8080/ingest")
//!     .header("content-type", "application/x-ndjson")
//!     .body(b"{\"a\":1}\n".to_vec())
//!     .send()?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```
//!
//! Several requests can be in flight from one call: [`Request::start`] each,
//! then [`wait_all`]. Waiting for a response or for the body's bytes is
//! waiting, not computing (it does not count against the `cpu` grant), and
//! the host interrupts it to stop, pause or swap the instance: the wait then
//! fails with [`HttpError::Interrupted`].

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read, Write as _};
use std::time::Duration;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, FutureIncomingResponse, IncomingBody, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, RequestOptions, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// The URL cannot be sent as given.
    Url(String),
    /// The connector's grants do not allow the peer.
    Denied(String),
    /// The host interrupted the wait, to stop, pause or swap the instance.
    Interrupted,
    /// The connection or the exchange failed (refused, reset, timed out, a
    /// TLS failure, …): worth trying again later.
    Failed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Url(why) => write!(f, "bad URL: {why}"),
            HttpError::Denied(url) => write!(
                f,
                "{url}: the connector's net grant does not allow this peer"
            ),
            HttpError::Interrupted => f.write_str("interrupted by the host"),
            HttpError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    /// A denied peer or a bad URL is the config's fault and fatal; the rest
    /// is retriable.
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Url(_) | HttpError::Denied(_) => crate::Error::fatal(e.to_string()),
            _ => crate::Error::retriable(e.to_string()),
        }
    }
}

/// A request to build and send. Its body is owned or borrowed: a sender
/// that may send the same body again (a retry) lends it, and nothing is
/// copied in the plugin to send it.
#[derive(Debug, Clone)]
pub struct Request<'b> {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Cow<'b, [u8]>,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl<'b> Request<'b> {
    /// A request of `method` (`"GET"`, `"POST"`, …) to `url`
    /// (`http://host:port/path?query` or `https://…`).
    pub fn new(method: &str, url: &str) -> Self {
        let method = match method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        };
        Request {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Cow::Borrowed(&[]),
            connect_timeout: None,
            response_timeout: None,
            idle_timeout: None,
        }
    }

    /// A `GET` of `url`.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` to `url`.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body: a `Vec<u8>` it owns, or a `&[u8]` it borrows.
    pub fn body(mut self, body: impl Into<Cow<'b, [u8]>>) -> Self {
        self.body = body.into();
        self
    }

    /// Longest wait for the connection (host default 30 s).
    pub fn connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
        self
    }

    /// Longest wait from the request sent to the response's head (host
    /// default 5 minutes).
    pub fn response_timeout(mut self, limit: Duration) -> Self {
        self.response_timeout = Some(limit);
        self
    }

    /// Longest quiet between the body's bytes (default none: a stream of
    /// events may be quiet for long).
    pub fn idle_timeout(mut self, limit: Duration) -> Self {
        self.idle_timeout = Some(limit);
        self
    }

    /// Sends it and waits for the response's head; read the body from the
    /// [`Response`].
    pub fn send(self) -> Result<Response, HttpError> {
        self.start()?.wait()
    }

    /// Sends it (the body included) and returns without waiting for the
    /// response: several can be in flight, see [`wait_all`].
    pub fn start(self) -> Result<Pending, HttpError> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let mut all = self.headers.clone();
        if !self.body.is_empty() && !all.iter().any(|(n, _)| n == "content-length") {
            // A known length, rather than a chunked body, which some servers
            // do not read.
            all.push((
                "content-length".into(),
                self.body.len().to_string().into_bytes(),
            ));
        }
        let headers = wasip2::http::types::Fields::from_list(&all)
            .map_err(|e| HttpError::Url(format!("a header cannot be sent: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let bad = |what: &str| HttpError::Url(format!("{}: bad {what}", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| bad("host"))?;
        request
            .set_path_with_query(Some(&path))
            .map_err(|()| bad("path"))?;
        let options = RequestOptions::new();
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // The host refuses none of these; `Err` only means "not supported".
        let _ = options.set_connect_timeout(self.connect_timeout.map(nanos));
        let _ = options.set_first_byte_timeout(self.response_timeout.map(nanos));
        let _ = options.set_between_bytes_timeout(self.idle_timeout.map(nanos));
        let body = request.body().map_err(|()| bad("body"))?;
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|e| error_of(&e, &self.url))?;
        {
            let mut out = body.write().map_err(|()| bad("body"))?;
            // As few writes as the host allows (it takes up to 1 MiB at a
            // time): each write is a hand-over to the host's sender, and 4 KiB
            // writes made a 100 KB batch cost 25 of them.
            out.write_all(&self.body).map_err(|e| {
                if crate::interrupted() {
                    HttpError::Interrupted
                } else {
                    HttpError::Failed(format!("{}: sending the body: {e}", self.url))
                }
            })?;
            // The host's sender may close the body as soon as it has all
            // `content-length` bytes, before this flush: that is success.
            match out.blocking_flush() {
                Ok(()) | Err(StreamError::Closed) => {}
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::Failed(format!(
                        "{}: sending the body: {}",
                        self.url,
                        e.to_debug_string()
                    )));
                }
            }
        }
        OutgoingBody::finish(body, None).map_err(|e| error_of(&e, &self.url))?;
        Ok(Pending {
            future,
            url: self.url,
        })
    }
}

/// A request sent, its response not yet taken.
#[derive(Debug)]
pub struct Pending {
    future: FutureIncomingResponse,
    url: String,
}

impl Pending {
    /// Waits for the response's head.
    pub fn wait(self) -> Result<Response, HttpError> {
        loop {
            if let Some(done) = self.take() {
                return done;
            }
            if crate::interrupted() {
                return Err(HttpError::Interrupted);
            }
            self.future.subscribe().block();
        }
    }

    /// Something to wait on for the response.
    pub(crate) fn subscribe(&self) -> wasip2::io::poll::Pollable {
        self.future.subscribe()
    }

    /// The response if it has come.
    pub(crate) fn take(&self) -> Option<Result<Response, HttpError>> {
        let got = self.future.get()?;
        Some(match got {
            Ok(Ok(response)) => Response::new(response, &self.url),
            Ok(Err(e)) => Err(error_of(&e, &self.url)),
            Err(()) => Err(HttpError::Failed(format!(
                "{}: the response was already taken",
                self.url
            ))),
        })
    }
}

/// Waits for every request in `pending`, in whatever order they answer;
/// the results are in the order given.
pub fn wait_all(pending: Vec<Pending>) -> Vec<Result<Response, HttpError>> {
    let mut results: Vec<Option<Result<Response, HttpError>>> =
        pending.iter().map(|_| None).collect();
    loop {
        let mut waiting = Vec::new();
        for (i, p) in pending.iter().enumerate() {
            if results[i].is_none() {
                match p.take() {
                    Some(done) => results[i] = Some(done),
                    None => waiting.push(i),
                }
            }
        }
        if waiting.is_empty() {
            break;
        }
        if crate::interrupted() {
            for i in waiting {
                results[i] = Some(Err(HttpError::Interrupted));
            }
            break;
        }
        let pollables: Vec<_> = waiting
            .iter()
            .map(|&i| pending[i].future.subscribe())
            .collect();
        let refs: Vec<_> = pollables.iter().collect();
        wasip2::io::poll::poll(&refs);
    }
    results
        .into_iter()
        .map(|r| r.expect("every request answered"))
        .collect()
}

/// A response: its status and headers, and its body to read.
#[derive(Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

impl Response {
    fn new(response: IncomingResponse, url: &str) -> Result<Self, HttpError> {
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Failed(format!("{url}: the body was already taken")))?;
        let stream = body
            .stream()
            .map_err(|()| HttpError::Failed(format!("{url}: the body was already taken")))?;
        Ok(Response {
            status,
            headers,
            body: Body {
                stream: Some(stream),
                body: Some(body),
                _response: response,
            },
        })
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Every header, names in lower case, in the order received.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of header `name` (any case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// How long the server asked to be left alone (`Retry-After` in
    /// seconds; the date form is not followed).
    pub fn retry_after(&self) -> Option<Duration> {
        let secs: u64 = self.header("retry-after")?.trim().parse().ok()?;
        Some(Duration::from_secs(secs))
    }

    /// The whole body.
    pub fn bytes(mut self) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        self.body.read_to_end(&mut all)?;
        Ok(all)
    }

    /// The body as a stream: reads block until bytes come (a stream of
    /// events waits here, for free).
    pub fn into_body(self) -> Body {
        self.body
    }
}

/// A response body being read.
#[derive(Debug)]
pub struct Body {
    // Dropped in order: the stream, the body, then the response.
    stream: Option<InputStream>,
    body: Option<IncomingBody>,
    _response: IncomingResponse,
}

impl Body {
    /// Reads what arrives within `limit` (`Duration::ZERO`: what has
    /// already arrived): `WouldBlock` if nothing did, `Ok(0)` at the body's
    /// end. A source that has records in hand takes what else is coming
    /// this way, and waits in [`Read::read`] only when it has nothing.
    ///
    /// The host's HTTP client hands a body over a frame at a time (8 KiB of
    /// a stream that ends when the connection closes), and the next frame is
    /// read from the socket only once this one is taken; a short `limit`
    /// lets it come, so that a flowing stream makes whole batches.
    pub fn read_within(&mut self, buf: &mut [u8], limit: Duration) -> io::Result<usize> {
        match self.read_with(buf, false) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !limit.is_zero() => {}
            got => return got,
        }
        if let Some(stream) = &self.stream {
            let ready = stream.subscribe();
            let timer = wasip2::clocks::monotonic_clock::subscribe_duration(
                u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            );
            wasip2::io::poll::poll(&[&ready, &timer]);
        }
        self.read_with(buf, false)
    }

    fn read_with(&mut self, buf: &mut [u8], wait: bool) -> io::Result<usize> {
        let Some(stream) = &self.stream else {
            return Ok(0);
        };
        let want = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        let got = if wait {
            stream.blocking_read(want)
        } else {
            stream.read(want)
        };
        match got {
            Ok(chunk) if chunk.is_empty() && !wait && !buf.is_empty() => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(chunk) => {
                let n = chunk.len().min(buf.len());
                buf[..n].copy_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(StreamError::Closed) => {
                self.stream = None;
                if let Some(body) = self.body.take() {
                    drop(IncomingBody::finish(body));
                }
                Ok(0)
            }
            Err(StreamError::LastOperationFailed(e)) => {
                let kind = if crate::interrupted() {
                    io::ErrorKind::Interrupted
                } else {
                    io::ErrorKind::ConnectionAborted
                };
                Err(io::Error::new(kind, e.to_debug_string()))
            }
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(buf, true)
    }
}

/// `url` as scheme, authority and path-with-query.
fn split_url(url: &str) -> Result<(Scheme, &str, String), HttpError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| HttpError::Url(format!("{url:?} has no scheme (http:// or https://)")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => {
            return Err(HttpError::Url(format!(
                "{url}: scheme {other:?} is not http or https"
            )));
        }
    };
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(at);
    if authority.is_empty() {
        return Err(HttpError::Url(format!("{url:?} names no host")));
    }
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    Ok((scheme, authority, path))
}

fn error_of(e: &ErrorCode, url: &str) -> HttpError {
    match e {
        ErrorCode::HttpRequestDenied => HttpError::Denied(url.to_owned()),
        ErrorCode::InternalError(Some(why)) => HttpError::Failed(format!("{url}: {why}")),
        other => {
            if crate::interrupted() {
                HttpError::Interrupted
            } else {
                HttpError::Failed(format!("{url}: {other:?}"))
            }
        }
    }
}
