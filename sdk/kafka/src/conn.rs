//! One connection to one broker: requests framed and numbered, responses
//! read back in order, and the API versions both sides speak.
//!
//! Requests may be pipelined: [`Connection::send`] several, then
//! [`Connection::receive`] their answers in the order sent. A
//! [`Connection::call`] in between (a metadata refresh while a fetch is
//! owed) reads the answers owed before it and keeps them for their
//! `receive`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::ops::RangeInclusive;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

use crate::error::KafkaError;
use crate::sasl::{Credentials, Exchange};

/// How a client opens a connection to a broker: plain TCP, TLS through the
/// host, or (in tests) a native socket.
pub trait Dial {
    /// The connection.
    type Stream: Read + Write;

    /// Connects to `addr` (`host:port`).
    fn dial(&mut self, addr: &str) -> io::Result<Self::Stream>;
}

/// A connection to a broker.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    addr: String,
    client_id: StrBytes,
    next_id: i32,
    /// Requests sent whose answers are not yet taken, oldest first.
    in_flight: std::collections::VecDeque<Owed>,
    /// Tells this connection from a later one to the same broker.
    serial: u64,
    /// The versions the broker speaks, by API key.
    versions: HashMap<i16, (i16, i16)>,
    out: BytesMut,
    /// The response being read (its length, then the whole frame), and how
    /// much of it has arrived: kept when the host interrupts the read, so
    /// the next read goes on from there.
    input: Vec<u8>,
    filled: usize,
}

/// A request sent on a connection whose answer is not yet taken.
#[derive(Debug)]
struct Owed {
    id: i32,
    key: i16,
    /// Its answer, read early to get at a later one's.
    parked: Option<Bytes>,
}

/// Numbers connections: see [`Connection::serial`].
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl<S: Read + Write> Connection<S> {
    /// Opens the conversation on `stream`: asks the broker which API
    /// versions it speaks.
    /// With `credentials`, logs in with SASL next.
    pub fn open(
        stream: S,
        addr: &str,
        client_id: &str,
        credentials: Option<&Credentials>,
    ) -> Result<Self, KafkaError> {
        let mut conn = Connection {
            stream,
            addr: addr.to_owned(),
            client_id: StrBytes::from_string(client_id.to_owned()),
            next_id: 0,
            in_flight: Default::default(),
            serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            versions: HashMap::new(),
            out: BytesMut::new(),
            input: Vec::new(),
            filled: 0,
        };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-kafka"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut response: ApiVersionsResponse = conn.call(&request, 3)?;
        if response.error_code == 35 {
            // UNSUPPORTED_VERSION: an old broker answers in v0 with what it
            // speaks; ask again in v0.
            response = conn.call(&ApiVersionsRequest::default(), 0)?;
        }
        KafkaError::check(addr, "ApiVersions", response.error_code)?;
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(credentials) = credentials {
            conn.log_in(credentials)?;
        }
        Ok(conn)
    }

    /// The SASL exchange: `SaslHandshake`, then `SaslAuthenticate` until
    /// the mechanism is done. A refused login is [`KafkaError::Auth`],
    /// naming the broker, the mechanism and the user, never the password.
    fn log_in(&mut self, credentials: &Credentials) -> Result<(), KafkaError> {
        let mechanism = credentials.mechanism.name();
        let refused = |addr: &str, why: &str| KafkaError::Auth {
            addr: addr.to_owned(),
            what: format!(
                "SASL {mechanism} login as {:?} refused: {why}",
                credentials.username
            ),
        };
        let version = self.version::<SaslHandshakeRequest>(1..=1)?;
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
        let response = self.call(&handshake, version)?;
        if response.error_code != 0 {
            let enabled: Vec<&str> = response.mechanisms.iter().map(|m| &**m).collect();
            return Err(refused(
                &self.addr,
                &format!("the broker does not enable it (it enables {enabled:?})"),
            ));
        }
        let version = self.version::<SaslAuthenticateRequest>(0..=2)?;
        let (mut message, mut exchange) = Exchange::start(credentials);
        loop {
            let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
            let response = self.call(&request, version)?;
            if response.error_code != 0 {
                let said = response
                    .error_message
                    .as_deref()
                    .unwrap_or("no reason given");
                return Err(refused(&self.addr, said));
            }
            let (next, state) = exchange
                .step(credentials, &response.auth_bytes)
                .map_err(|why| refused(&self.addr, &why))?;
            exchange = state;
            match next {
                Some(m) => message = m,
                None if exchange.is_done() => return Ok(()),
                None => return Err(refused(&self.addr, "the exchange stopped early")),
            }
        }
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// This connection's number, unique in the process: an answer owed on
    /// a connection that has since been replaced will never come.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The highest version of `R` in `ours` the broker speaks too.
    pub fn version<R: Request>(&self, ours: RangeInclusive<i16>) -> Result<i16, KafkaError> {
        let name = api_name(R::KEY);
        let Some(&(min, max)) = self.versions.get(&R::KEY) else {
            return Err(KafkaError::protocol(
                &self.addr,
                format!("the broker does not speak {name}"),
            ));
        };
        let version = max.min(*ours.end());
        if version < min.max(*ours.start()) {
            return Err(KafkaError::protocol(
                &self.addr,
                format!(
                    "the broker speaks {name} v{min} to v{max}; sluice-kafka speaks v{} to v{}",
                    ours.start(),
                    ours.end()
                ),
            ));
        }
        Ok(version)
    }

    /// Sends `request` in `version` and reads its response. Answers owed
    /// to earlier [`Connection::send`]s are read first and kept for their
    /// [`Connection::receive`].
    pub fn call<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, KafkaError> {
        self.send(request, version)?;
        let last = self.in_flight.len() - 1;
        let frame = self.frame_of(last)?;
        let owed = self.in_flight.pop_back().expect("just sent");
        self.decode::<R>(owed, frame, version)
    }

    /// Sends `request` in `version`, and returns its correlation id; read
    /// its response with [`Connection::receive`], in the order the
    /// requests were sent.
    pub fn send<R: Request>(&mut self, request: &R, version: i16) -> Result<i32, KafkaError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(self.client_id.clone()));
        self.out.clear();
        self.out.put_i32(0);
        let encoded = header
            .encode(&mut self.out, R::header_version(version))
            .and_then(|()| request.encode(&mut self.out, version));
        encoded.map_err(|e| {
            KafkaError::protocol(&self.addr, format!("encode {}: {e}", api_name(R::KEY)))
        })?;
        let length = i32::try_from(self.out.len() - 4)
            .map_err(|_| KafkaError::protocol(&self.addr, "a request of 2 GiB or more"))?;
        self.out[..4].copy_from_slice(&length.to_be_bytes());
        // One write per request: Nagle is on for a plugin's sockets.
        self.stream
            .write_all(&self.out)
            .and_then(|()| self.stream.flush())
            .map_err(|e| KafkaError::io(&self.addr, e))?;
        self.in_flight.push_back(Owed {
            id,
            key: R::KEY,
            parked: None,
        });
        Ok(id)
    }

    /// Reads the response to the oldest request whose answer is owed,
    /// which was an `R` in `version`.
    pub fn receive<R: Request>(&mut self, version: i16) -> Result<R::Response, KafkaError> {
        if self.in_flight.is_empty() {
            return Err(KafkaError::protocol(
                &self.addr,
                "a response read with no request",
            ));
        }
        let frame = self.frame_of(0)?;
        let owed = self.in_flight.pop_front().expect("checked");
        self.decode::<R>(owed, frame, version)
    }

    /// The correlation id of the oldest request whose answer is owed.
    pub fn oldest_owed(&self) -> Option<i32> {
        self.in_flight.front().map(|o| o.id)
    }

    /// The answer frame of the `index`th request owed, reading (and
    /// parking) the answers before it first: they arrive in order.
    fn frame_of(&mut self, index: usize) -> Result<Bytes, KafkaError> {
        for i in 0..=index {
            if self.in_flight[i].parked.is_none() {
                let frame = self.read_frame()?;
                self.in_flight[i].parked = Some(frame);
            }
        }
        Ok(self.in_flight[index].parked.take().expect("just read"))
    }

    /// Decodes `owed`'s answer.
    fn decode<R: Request>(
        &self,
        owed: Owed,
        mut frame: Bytes,
        version: i16,
    ) -> Result<R::Response, KafkaError> {
        let Owed { id, key, parked: _ } = owed;
        debug_assert_eq!(key, R::KEY);
        let header = ResponseHeader::decode(&mut frame, R::Response::header_version(version))
            .map_err(|e| KafkaError::protocol(&self.addr, format!("a response header: {e}")))?;
        if header.correlation_id != id {
            return Err(KafkaError::protocol(
                &self.addr,
                format!(
                    "a response to request {} where {id} was next",
                    header.correlation_id
                ),
            ));
        }
        R::Response::decode(&mut frame, version).map_err(|e| {
            KafkaError::protocol(
                &self.addr,
                format!("a {} v{version} response: {e}", api_name(R::KEY)),
            )
        })
    }

    /// Reads one whole response frame. Not `read_exact`: that retries a
    /// read the host interrupted, which must instead return (with what was
    /// read so far kept for the next call).
    fn read_frame(&mut self) -> Result<Bytes, KafkaError> {
        loop {
            if self.filled >= 4 && self.input.len() == 4 {
                let length = i32::from_be_bytes(self.input[..4].try_into().expect("4 bytes"));
                let length = usize::try_from(length)
                    .map_err(|_| KafkaError::protocol(&self.addr, "a negative response length"))?;
                // Zeroed once a frame; reads fill it in place.
                self.input.resize(4 + length, 0);
            }
            if self.filled == self.input.len() && self.filled >= 4 {
                let mut frame = Bytes::from(std::mem::take(&mut self.input));
                self.filled = 0;
                let _length = frame.split_to(4);
                return Ok(frame);
            }
            if self.input.is_empty() {
                self.input.resize(4, 0);
            }
            match self.stream.read(&mut self.input[self.filled..]) {
                Ok(0) => {
                    return Err(KafkaError::io(
                        &self.addr,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the broker closed the connection",
                        ),
                    ));
                }
                Ok(n) => self.filled += n,
                Err(e) => return Err(KafkaError::io(&self.addr, e)),
            }
        }
    }
}

/// The request's name, for errors.
pub fn api_name(key: i16) -> String {
    ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|()| format!("API {key}"))
}
