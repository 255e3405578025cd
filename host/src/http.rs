//! HTTP through the host (`wasi:http`): a plugin's outgoing requests, sent
//! by the host under the connector's grants.
//!
//! wasmtime-wasi-http parses what the plugin builds; the sending is ours
//! ([`HttpClient`] is its `send_request` hook), because the host must:
//! - check the peer against `net` on the **resolved address**, before a
//!   byte leaves: the URL's host is resolved here, and only an address a
//!   `net` rule allows is connected to (a refusal is logged with the grant
//!   that would allow it, and the plugin gets `HTTP-request-denied`);
//! - make HTTPS connections with the connector's TLS trust and client
//!   identity (`[connector.grants.tls]`, as for `wasi:tls`);
//! - add the headers of `[connector.grants.http]`, whose values may hold
//!   secrets: the plugin never sees them, and they replace a header of the
//!   same name the plugin set;
//! - bound each request in time: the plugin's `request-options` if it set
//!   them, else [`DEFAULT_CONNECT_TIMEOUT`] and
//!   [`DEFAULT_FIRST_BYTE_TIMEOUT`];
//! - keep connections open for the next request to the same server (a few
//!   hundred a server, per instance), as any HTTP/1.1 client does.
//!
//! A plugin waiting for a response waits through `wasi:io`, so the wait
//! does not count against its `cpu` grant, and the host interrupts it to
//! stop, pause or swap (see `plugin/waits.rs`).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::BodyExt as _;
use hyper::client::conn::http1::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::grants::{GrantedHeaders, NetRule, Refusals, check_socket};
use crate::tls::TlsClient;

/// Longest wait for a connection (and its TLS handshake) when the plugin
/// sets no `connect-timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait from the request sent to the response's head when the
/// plugin sets no `first-byte-timeout`. Between the body's bytes there is
/// no limit unless the plugin sets one (a stream of events may be quiet for
/// a long time).
pub const DEFAULT_FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(300);

/// How one instance's HTTP requests are sent: its `net` rules, TLS client,
/// granted headers, and where its refusals are kept.
#[derive(Clone)]
pub struct HttpClient {
    rules: Arc<Vec<NetRule>>,
    refusals: Refusals,
    tls: TlsClient,
    headers: GrantedHeaders,
    pool: Pool,
}

impl HttpClient {
    /// The client of an instance with these grants.
    pub fn new(
        rules: Arc<Vec<NetRule>>,
        refusals: Refusals,
        tls: TlsClient,
        headers: GrantedHeaders,
    ) -> Self {
        HttpClient {
            rules,
            refusals,
            tls,
            headers,
            pool: Pool::default(),
        }
    }

    /// Sends `request`: resolve, check, connect, TLS, headers, HTTP/1.1.
    async fn send(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoDriver), Error> {
        let uri = request.uri().clone();
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let options = options.unwrap_or_default();
        let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let first_byte_timeout = options
            .first_byte_timeout
            .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT);

        let key = PoolKey { https, host, port };

        for (name, value) in self.headers.iter() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        // The request names its scheme and authority; on the wire, to a
        // server rather than a proxy, only the path goes.
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let timed_out = |_| Error::ConnectionReadTimeout;
        let (sender, response) = 'sent: {
            // A kept connection the server has just closed hands the request
            // back unsent: it goes out on a new connection instead.
            let request = match self.pool.take(&key) {
                None => request,
                Some(mut sender) => {
                    let tried =
                        tokio::time::timeout(first_byte_timeout, sender.try_send_request(request))
                            .await
                            .map_err(timed_out)?;
                    match tried {
                        Ok(response) => break 'sent (sender, response),
                        Err(mut e) => match e.take_message() {
                            Some(request) => request,
                            None => return Err(Error::from(e.into_error())),
                        },
                    }
                }
            };
            let mut sender = self.connect(&key, connect_timeout).await?;
            let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(timed_out)?
                .map_err(Error::from)?;
            (sender, response)
        };
        // Ready again once this response's body is read: the next request
        // to the same server takes it then, or opens another.
        self.pool.put(key, sender);
        let between_bytes = options.between_bytes_timeout;
        let response = response.map(|body| match between_bytes {
            Some(limit) => TimedBody::new(body, limit).boxed_unsync(),
            None => body.map_err(Error::from).boxed_unsync(),
        });
        // The connection's own task drives it (see `connect`).
        let driver: IoDriver = Box::new(async { Ok(()) });
        Ok((response, driver))
    }

    /// Opens a connection to `key`: resolve, check each address against
    /// `net` (refused before a byte leaves), connect, TLS for `https`, the
    /// HTTP/1.1 handshake. The connection runs in a task of its own, which
    /// ends when the server closes it or its sender is dropped (from the
    /// pool, or with the instance).
    async fn connect(
        &self,
        key: &PoolKey,
        connect_timeout: Duration,
    ) -> Result<SendRequest<WasiBody>, Error> {
        let addrs = resolve(&key.host, key.port).await?;
        let mut allowed = Vec::new();
        for addr in addrs {
            if check_socket(
                self.rules.clone(),
                self.refusals.clone(),
                addr,
                SocketAddrUse::TcpConnect,
            )
            .await
            {
                allowed.push(addr);
            }
        }
        if allowed.is_empty() {
            return Err(Error::HttpRequestDenied);
        }
        let tcp = tokio::time::timeout(connect_timeout, connect(&allowed))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Connect)?;
        let stream: Box<dyn Stream> = if key.https {
            let tls = tokio::time::timeout(connect_timeout, self.tls.handshake(&key.host, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|why| Error::InternalError(Some(why)))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Error::from)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "an HTTP connection ended");
            }
        });
        Ok(sender)
    }
}

/// Where a connection goes: what the pool keeps senders by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    https: bool,
    host: String,
    port: u16,
}

/// One instance's open HTTP/1.1 connections, by server, for the next
/// request: a sink posting batch after batch to one receiver reuses its
/// connection, as any HTTP client does, rather than paying a connect (and
/// a TLS handshake) a batch.
#[derive(Clone, Default)]
struct Pool(Arc<Mutex<HashMap<PoolKey, Vec<SendRequest<WasiBody>>>>>);

/// Connections kept per server: as many as an enrichment keeps in flight
/// (`http-enrich`'s `concurrency`), so that it does not connect anew for
/// most lookups.
const POOL_PER_SERVER: usize = 256;

impl Pool {
    /// A connection to `key` that is open and idle, if there is one.
    fn take(&self, key: &PoolKey) -> Option<SendRequest<WasiBody>> {
        let mut pool = self.0.lock().expect("pool lock");
        let senders = pool.get_mut(key)?;
        senders.retain(|s| !s.is_closed());
        let idle = senders.iter().position(SendRequest::is_ready)?;
        Some(senders.swap_remove(idle))
    }

    /// Keeps `sender` for a next request to `key` (the oldest is dropped
    /// past [`POOL_PER_SERVER`]).
    fn put(&self, key: PoolKey, sender: SendRequest<WasiBody>) {
        let mut pool = self.0.lock().expect("pool lock");
        let senders = pool.entry(key).or_default();
        senders.push(sender);
        if senders.len() > POOL_PER_SERVER {
            senders.remove(0);
        }
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("rules", &self.rules)
            .field("tls", &self.tls)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

/// What drives a connection after the response's head.
type IoDriver = Box<dyn Future<Output = Result<(), Error>> + Send>;

/// A TCP or TLS stream, as hyper takes it.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl WasiHttpHooks for HttpClient {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _request_body_sent: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoDriver), Error>> + Send> {
        Box::new(self.clone().send(request, options))
    }

    fn p2_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        match err.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            _ => ErrorCode::InternalError(Some(format!("connecting: {err}"))),
        }
    }

    fn p2_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        if err.is_incomplete_message() || err.is_closed() {
            ErrorCode::ConnectionTerminated
        } else {
            ErrorCode::InternalError(Some(format!("HTTP: {err}")))
        }
    }
}

/// The addresses `host` stands for (the host resolves names for HTTP, as
/// it does for `net` rules written with a name).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let found = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::DnsError {
            rcode: Some(e.to_string()),
            info_code: None,
        })?;
    Ok(found.collect())
}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr]) -> std::io::Result<tokio::net::TcpStream> {
    let mut last = None;
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::ErrorKind::AddrNotAvailable.into()))
}

/// A response body that fails if no bytes come for `limit` (the plugin's
/// `between-bytes-timeout`).
struct TimedBody {
    body: hyper::body::Incoming,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl TimedBody {
    fn new(body: hyper::body::Incoming, limit: Duration) -> Self {
        TimedBody {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let next = tokio::time::Instant::now() + self.limit;
                self.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Error::from(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.deadline.as_mut().poll(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
