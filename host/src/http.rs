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
//!   [`DEFAULT_FIRST_BYTE_TIMEOUT`].
//!
//! A plugin waiting for a response waits through `wasi:io`, so the wait
//! does not count against its `cpu` grant, and the host interrupts it to
//! stop, pause or swap (see `plugin/waits.rs`).

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::BodyExt as _;
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

        let addrs = resolve(&host, port).await?;
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
        let stream: Box<dyn Stream> = if https {
            let tls = tokio::time::timeout(connect_timeout, self.tls.handshake(&host, tcp))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(|why| Error::InternalError(Some(why)))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Error::from)?;

        for (name, value) in self.headers.iter() {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        // The request names its scheme and authority; on the wire, to a
        // server rather than a proxy, only the path goes.
        *request.uri_mut() = http::Uri::builder()
            .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
            .build()
            .map_err(|_| Error::HttpRequestUriInvalid)?;

        let between_bytes = options.between_bytes_timeout;
        let send = async move {
            let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?
                .map_err(Error::from)?;
            Ok::<_, Error>(response.map(|body| match between_bytes {
                Some(limit) => TimedBody::new(body, limit).boxed_unsync(),
                None => body.map_err(Error::from).boxed_unsync(),
            }))
        };
        // Drive the connection while waiting for the response's head; what
        // is left of it (the body) is driven by wasmtime-wasi-http's task.
        let mut send = pin!(send);
        let mut conn = Some(conn);
        let response = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => {
                let Some(c) = conn.as_mut() else {
                    return Poll::Pending;
                };
                let done = ready!(Pin::new(c).poll(cx));
                conn = None;
                match done {
                    Ok(()) => send.as_mut().poll(cx),
                    Err(e) => Poll::Ready(Err(Error::from(e))),
                }
            }
        })
        .await?;
        let driver: IoDriver = Box::new(async move {
            match conn {
                Some(conn) => conn.await.map_err(Error::from),
                None => Ok(()),
            }
        });
        Ok((response, driver))
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
