//! The connection: `CONNECT`, then packets queued, written and read.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mqttbytes::{QoS, v4, v5};
use sluice_sdk::net::Framed;

/// The protocol version spoken; a connector's `protocol = "3.1.1"` (the
/// default) or `"5"`.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4): every broker speaks it, ActiveMQ 5
    /// included.
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    /// MQTT 5: reason codes on acknowledgements, session expiry, receive
    /// maximum.
    #[serde(rename = "5")]
    V5,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V311 => "MQTT 3.1.1",
            Version::V5 => "MQTT 5",
        })
    }
}

/// A quality of service this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// QoS 0: sent once, never acknowledged.
    AtMostOnce,
    /// QoS 1: acknowledged (`PUBACK`); sent again until it is.
    AtLeastOnce,
}

impl Qos {
    fn codec(self) -> QoS {
        match self {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        }
    }

    fn from_codec(q: QoS) -> Qos {
        match q {
            QoS::AtMostOnce => Qos::AtMostOnce,
            QoS::AtLeastOnce | QoS::ExactlyOnce => Qos::AtLeastOnce,
        }
    }
}

/// How to reach the server and who to be there.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`; the connector must be granted it in `net`.
    pub addr: String,
    /// TLS, checking the server's certificate against this name; the host
    /// does the handshake.
    pub tls: Option<String>,
    /// The protocol version.
    pub version: Version,
    /// The client identifier: a persistent session is the server's memory
    /// of this id.
    pub client_id: String,
    /// The user name, if the server asks for one.
    pub user: Option<String>,
    /// The password (usually from a secret: never printed, not even by
    /// `Debug`).
    pub password: Option<String>,
    /// Start a new session (`true`), or go on with the one the server kept
    /// for `client_id`: its subscriptions, and the messages that came while
    /// the client was away.
    pub clean_start: bool,
    /// The longest quiet time; the client pings after half of it. Zero
    /// turns keep-alive off.
    pub keep_alive: Duration,
    /// MQTT 5: how long the server keeps the session after the connection
    /// ends, in seconds (`u32::MAX`: for ever).
    pub session_expiry: u32,
    /// MQTT 5: the most QoS 1 messages the server may send unacknowledged.
    pub receive_maximum: u16,
    /// The largest packet read.
    pub max_packet: usize,
}

impl ConnectOptions {
    /// Options for `addr` as `client_id`: MQTT 3.1.1, plain TCP, no login,
    /// a clean session, a keep-alive of 30 s.
    pub fn new(addr: &str, client_id: &str) -> ConnectOptions {
        ConnectOptions {
            addr: addr.to_owned(),
            tls: None,
            version: Version::V311,
            client_id: client_id.to_owned(),
            user: None,
            password: None,
            clean_start: true,
            keep_alive: Duration::from_secs(30),
            session_expiry: u32::MAX,
            receive_maximum: u16::MAX,
            max_packet: 256 << 20,
        }
    }

    /// Options for one instance of a connector, as `client_id`, or by
    /// default `sluice-<connector>-<index>`: stable across restarts, so
    /// the broker keeps the instance's session, and unique among instances.
    pub fn for_instance(
        addr: &str,
        client_id: Option<&str>,
        ctx: &sluice_sdk::Context,
    ) -> ConnectOptions {
        let default = format!("sluice-{}-{}", ctx.connector, ctx.index);
        ConnectOptions::new(addr, client_id.unwrap_or(&default))
    }

    /// A failure to connect or log in as the error the host acts on: what
    /// to fix (a grant, a password, TLS) as an invalid config, a server
    /// that is away or busy as retriable. Never shows the password.
    pub fn refused(&self, e: &MqttError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let addr = &self.addr;
        let who = self
            .user
            .as_deref()
            .map_or(String::new(), |u| format!(" as {u:?}"));
        match e {
            MqttError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            MqttError::Refused { .. } if e.is_auth() => {
                Error::invalid_config(format!("logging in to {addr}{who}: {e}"))
            }
            MqttError::Refused { .. } if e.is_busy() => {
                Error::retriable(format!("connecting to {addr}: {e}"))
            }
            MqttError::Refused { .. } => {
                Error::invalid_config(format!("connecting to {addr}: {e}"))
            }
            MqttError::Protocol(_) => Error::invalid_config(format!(
                "{addr} does not speak {} as expected: {e}",
                self.version
            )),
            MqttError::Io(io)
                if self.tls.is_some() && io.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            MqttError::Io(_) | MqttError::Disconnected(_) => {
                Error::retriable(format!("cannot reach {addr}: {e}"))
            }
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("session_expiry", &self.session_expiry)
            .field("receive_maximum", &self.receive_maximum)
            .finish_non_exhaustive()
    }
}

/// An error talking to an MQTT server.
#[derive(Debug)]
pub enum MqttError {
    /// The connection failed or went away (or the host interrupted a
    /// wait: see [`MqttError::is_interrupted`]).
    Io(io::Error),
    /// The server refused the connection (`CONNACK` with a failure code).
    Refused {
        /// The return code (3.1.1) or reason code (5).
        code: u8,
        /// What it means.
        why: String,
    },
    /// The server ended the connection (`DISCONNECT`, MQTT 5), saying why.
    Disconnected(String),
    /// The server sent what is not MQTT, or not what the protocol allows.
    Protocol(String),
}

impl MqttError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, MqttError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, MqttError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True when the connection is lost (and the client must be dropped).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            MqttError::Io(_) | MqttError::Protocol(_) | MqttError::Disconnected(_)
        )
    }

    /// True when the server refused who we said we are: a wrong user or
    /// password, or a client not allowed in.
    pub fn is_auth(&self) -> bool {
        // 3.1.1: 4 bad user name or password, 5 not authorized; 5: 134,
        // 135, 138 banned, 140 bad authentication method.
        matches!(
            self,
            MqttError::Refused {
                code: 4 | 5 | 134 | 135 | 138 | 140,
                ..
            }
        )
    }

    /// True when the server refused for now: unavailable, busy, or too
    /// many connections at once.
    fn is_busy(&self) -> bool {
        matches!(
            self,
            MqttError::Refused {
                code: 3 | 136 | 137 | 151 | 159,
                ..
            }
        )
    }
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MqttError::Io(e) => write!(f, "{e}"),
            MqttError::Refused { code, why } => {
                write!(f, "the server refused the connection: {why} (code {code})")
            }
            MqttError::Disconnected(why) => write!(f, "the server disconnected: {why}"),
            MqttError::Protocol(why) => write!(f, "MQTT protocol: {why}"),
        }
    }
}

impl std::error::Error for MqttError {}

impl From<io::Error> for MqttError {
    fn from(e: io::Error) -> Self {
        MqttError::Io(e)
    }
}

/// A message the server delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The packet identifier to acknowledge it with (0 at QoS 0).
    pub pkid: u16,
    /// The topic it was published to.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
    /// The QoS it came at.
    pub qos: Qos,
    /// The server sent it before, unacknowledged (a redelivery).
    pub dup: bool,
    /// A retained message, sent because the subscription is new.
    pub retain: bool,
}

/// A packet the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message for one of the subscriptions.
    Publish(Message),
    /// A QoS 1 publish of ours was received; `refused` when the server
    /// (MQTT 5) says it did not take it, with its reason.
    PubAck {
        /// The publish's packet identifier.
        pkid: u16,
        /// The server's reason for refusing it.
        refused: Option<String>,
    },
    /// The answer to a `SUBSCRIBE`: for each filter, the QoS granted or
    /// why it was refused.
    SubAck {
        /// The subscribe's packet identifier.
        pkid: u16,
        /// One per filter, in order.
        granted: Vec<Result<Qos, String>>,
    },
    /// The answer to a ping.
    PingResp,
}

/// What a packet decoded to.
enum Decoded {
    ConnAck {
        session_present: bool,
        code: u8,
        why: String,
        receive_maximum: Option<u16>,
    },
    Incoming(Incoming),
    Disconnect(String),
}

/// A connection to an MQTT server, connected.
pub struct Client {
    conn: Framed,
    version: Version,
    max_packet: usize,
    session_present: bool,
    receive_maximum: u16,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("stream", self.conn.stream())
            .field("version", &self.version)
            .field("session_present", &self.session_present)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects (TLS through the host if asked), sends `CONNECT` and reads
    /// `CONNACK`: a refusal is [`MqttError::Refused`].
    pub fn connect(options: &ConnectOptions) -> Result<Client, MqttError> {
        let mut client = Client {
            conn: Framed::connect(&options.addr, options.tls.as_deref())?,
            version: options.version,
            max_packet: options.max_packet,
            session_present: false,
            receive_maximum: u16::MAX,
        };
        let keep_alive = u16::try_from(options.keep_alive.as_secs()).unwrap_or(u16::MAX);
        let login = match (&options.user, &options.password) {
            (Some(u), p) => Some((u.clone(), p.clone().unwrap_or_default())),
            (None, Some(p)) => Some((String::new(), p.clone())),
            (None, None) => None,
        };
        let written = match options.version {
            Version::V311 => {
                let mut c = v4::Connect::new(options.client_id.as_str());
                c.keep_alive = keep_alive;
                c.clean_session = options.clean_start;
                c.login = login.map(|(u, p)| v4::Login::new(u, p));
                c.write(&mut client.conn.write)
            }
            Version::V5 => {
                let mut c = v5::Connect::new(options.client_id.as_str());
                c.keep_alive = keep_alive;
                c.clean_session = options.clean_start;
                c.login = login.map(|(u, p)| v5::Login::new(u, p));
                c.properties = Some(v5::ConnectProperties {
                    session_expiry_interval: Some(options.session_expiry),
                    receive_maximum: Some(options.receive_maximum),
                    max_packet_size: u32::try_from(options.max_packet).ok(),
                    topic_alias_max: None,
                    request_response_info: None,
                    request_problem_info: None,
                    user_properties: Vec::new(),
                    authentication_method: None,
                    authentication_data: None,
                });
                c.write(&mut client.conn.write)
            }
        };
        written.map_err(|e| MqttError::Protocol(format!("encoding CONNECT: {e:?}")))?;
        client.flush()?;
        let wait = options.keep_alive.max(Duration::from_secs(10));
        let deadline = Instant::now() + wait;
        loop {
            match client.decode()? {
                Some(Decoded::ConnAck {
                    session_present,
                    code,
                    why,
                    receive_maximum,
                }) => {
                    if code != 0 {
                        return Err(MqttError::Refused { code, why });
                    }
                    client.session_present = session_present;
                    // Pinged while idle, as keep-alive asks.
                    client.conn.set_keep_alive(Some(options.keep_alive));
                    client.receive_maximum = receive_maximum.unwrap_or(u16::MAX);
                    return Ok(client);
                }
                Some(Decoded::Disconnect(why)) => return Err(MqttError::Disconnected(why)),
                Some(Decoded::Incoming(_)) => {
                    return Err(MqttError::Protocol("a packet before CONNACK".into()));
                }
                None => {}
            }
            if !client.conn.wait_more(Some(deadline), |_| {})? {
                return Err(MqttError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no CONNACK from {} within {wait:?}", options.addr),
                )));
            }
        }
    }

    /// True when the server had a session for this client id (and goes on
    /// with it: its subscriptions, its unacknowledged messages).
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// The most QoS 1 publishes the server takes unacknowledged (MQTT 5's
    /// receive maximum; 65,535 when it sets none).
    pub fn receive_maximum(&self) -> u16 {
        self.receive_maximum
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.conn.write.len()
    }

    /// True when this client wrote nothing for a keep-alive period
    /// (nothing called it): the server may have taken the connection as
    /// dead (after one and a half). Make a new one, without calling it an
    /// outage.
    pub fn is_stale(&self) -> bool {
        self.conn.is_stale()
    }

    /// Queues a `SUBSCRIBE` of `filters` at `qos`; the answer is an
    /// [`Incoming::SubAck`] with the same `pkid`.
    pub fn subscribe(&mut self, pkid: u16, filters: &[String], qos: Qos) {
        let q = qos.codec();
        let written = match self.version {
            Version::V311 => {
                let mut s = v4::Subscribe::new_many(
                    filters
                        .iter()
                        .map(|f| v4::SubscribeFilter::new(f.clone(), q)),
                );
                s.pkid = pkid;
                s.write(&mut self.conn.write)
            }
            Version::V5 => v5::Subscribe {
                pkid,
                filters: filters
                    .iter()
                    .map(|f| v5::SubscribeFilter::new(f.clone(), q))
                    .collect(),
                properties: None,
            }
            .write(&mut self.conn.write),
        };
        // A filter list always encodes (the server judges the filters).
        written.expect("SUBSCRIBE encodes");
    }

    /// Queues a `PUBLISH`; `pkid` is ignored at QoS 0. `Err` says why the
    /// message cannot be sent (a topic that is not UTF-8 or has a wildcard,
    /// a payload too large for MQTT); nothing is queued then.
    pub fn publish(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        qos: Qos,
        pkid: u16,
        retain: bool,
    ) -> Result<(), String> {
        let topic = std::str::from_utf8(topic)
            .map_err(|_| format!("topic {:?} is not UTF-8", String::from_utf8_lossy(topic)))?;
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return Err(format!(
                "topic {topic:?} cannot be published to (empty, or a wildcard or NUL in it)"
            ));
        }
        encode_publish(
            &mut self.conn.write,
            self.version,
            topic,
            payload,
            qos,
            pkid,
            retain,
        )
    }

    /// Queues a `PUBACK` for the message `pkid`.
    pub fn puback(&mut self, pkid: u16) {
        // 3.1.1 and 5 alike (5 with reason "success" and no properties).
        self.conn.write.extend_from_slice(&[0x40, 0x02]);
        self.conn.write.extend_from_slice(&pkid.to_be_bytes());
    }

    /// Queues a `PINGREQ`. Besides keeping a quiet connection alive, a
    /// client waiting for acknowledgements pings to make its TCP stack
    /// acknowledge the server's last segment at once: a server that writes
    /// many small packets with Nagle's algorithm on (mosquitto's default)
    /// otherwise holds the rest of them until the client's delayed ACK,
    /// 40 ms on Linux.
    pub fn ping(&mut self) {
        self.conn.write.extend_from_slice(&[0xC0, 0x00]);
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> Result<(), MqttError> {
        Ok(self.conn.flush()?)
    }

    /// Says goodbye (`DISCONNECT`): a persistent session stays on the
    /// server. Errors are ignored: the connection ends either way.
    pub fn disconnect(mut self) {
        self.conn.write.extend_from_slice(&[0xE0, 0x00]);
        let _ = self.flush();
    }

    /// The next packet: one already read, or one that arrives within
    /// `wait` (`None`: only what has arrived). `Ok(None)` when none came.
    /// Pings the server while it waits, as keep-alive asks.
    pub fn next(&mut self, wait: Option<Duration>) -> Result<Option<Incoming>, MqttError> {
        let deadline = wait.map(|w| Instant::now() + w.min(Duration::from_secs(3600)));
        loop {
            match self.decode()? {
                Some(Decoded::Incoming(i)) => return Ok(Some(i)),
                Some(Decoded::Disconnect(why)) => return Err(MqttError::Disconnected(why)),
                Some(Decoded::ConnAck { .. }) => {
                    return Err(MqttError::Protocol("a second CONNACK".into()));
                }
                None => {}
            }
            if !self
                .conn
                .wait_more(deadline, |w| w.extend_from_slice(&[0xC0, 0x00]))?
            {
                return Ok(None);
            }
        }
    }

    /// Decodes the next whole packet read, if there is one.
    fn decode(&mut self) -> Result<Option<Decoded>, MqttError> {
        if self.conn.read.is_empty() {
            return Ok(None);
        }
        // MQTT 5 allows a DISCONNECT with no body ("normal"), which the
        // codec refuses.
        if self.conn.read.len() >= 2 && self.conn.read[0] == 0xE0 && self.conn.read[1] == 0 {
            let _ = self.conn.read.split_to(2);
            return Ok(Some(Decoded::Disconnect("normal disconnection".into())));
        }
        let decoded = match self.version {
            Version::V311 => v4::read(&mut self.conn.read, self.max_packet).map(decode_v4),
            Version::V5 => v5::read(&mut self.conn.read, self.max_packet).map(decode_v5),
        };
        match decoded {
            Ok(d) => d.map(Some),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(MqttError::Protocol(format!("{e:?}"))),
        }
    }
}

/// The largest remaining length MQTT can say (four bytes of seven bits).
const MAX_REMAINING: usize = 268_435_455;

/// Writes a `PUBLISH` (not a duplicate) into `out`, straight from the
/// record's bytes: a publish is the sink's hot path, so no codec structs
/// (an owned topic and a copy of the payload each) are made for it.
fn encode_publish(
    out: &mut BytesMut,
    version: Version,
    topic: &str,
    payload: &[u8],
    qos: Qos,
    pkid: u16,
    retain: bool,
) -> Result<(), String> {
    let topic_len = u16::try_from(topic.len()).map_err(|_| {
        format!(
            "a topic of {} bytes is longer than MQTT allows",
            topic.len()
        )
    })?;
    let id_len = if qos == Qos::AtMostOnce { 0 } else { 2 };
    // MQTT 5: a properties length of 0.
    let properties_len = if version == Version::V5 { 1 } else { 0 };
    let remaining = 2 + topic.len() + id_len + properties_len + payload.len();
    if remaining > MAX_REMAINING {
        return Err(format!(
            "a message of {} bytes is larger than MQTT allows",
            payload.len()
        ));
    }
    let qos_bits = if qos == Qos::AtMostOnce { 0 } else { 0b010 };
    out.reserve(5 + remaining);
    out.extend_from_slice(&[0x30 | qos_bits | u8::from(retain)]);
    let mut left = remaining;
    loop {
        // Seven bits a byte, the high bit saying more follow.
        let byte = (left % 128) as u8;
        left /= 128;
        out.extend_from_slice(&[if left > 0 { byte | 0x80 } else { byte }]);
        if left == 0 {
            break;
        }
    }
    out.extend_from_slice(&topic_len.to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos != Qos::AtMostOnce {
        out.extend_from_slice(&pkid.to_be_bytes());
    }
    if version == Version::V5 {
        out.extend_from_slice(&[0]);
    }
    out.extend_from_slice(payload);
    Ok(())
}

fn unexpected(what: &str) -> MqttError {
    MqttError::Protocol(format!(
        "the server sent {what}, which this client never asks for"
    ))
}

fn decode_v4(p: v4::Packet) -> Result<Decoded, MqttError> {
    Ok(match p {
        v4::Packet::ConnAck(c) => {
            let code = c.code as u8;
            Decoded::ConnAck {
                session_present: c.session_present,
                code,
                why: match code {
                    1 => "unacceptable protocol version".into(),
                    2 => "client identifier rejected".into(),
                    3 => "server unavailable".into(),
                    4 => "bad user name or password".into(),
                    5 => "not authorized".into(),
                    _ => format!("{:?}", c.code),
                },
                receive_maximum: None,
            }
        }
        v4::Packet::Publish(p) => Decoded::Incoming(Incoming::Publish(Message {
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
            qos: Qos::from_codec(p.qos),
            dup: p.dup,
            retain: p.retain,
        })),
        v4::Packet::PubAck(a) => Decoded::Incoming(Incoming::PubAck {
            pkid: a.pkid,
            refused: None,
        }),
        v4::Packet::SubAck(s) => Decoded::Incoming(Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => Ok(Qos::from_codec(q)),
                    v4::SubscribeReasonCode::Failure => Err("refused".to_owned()),
                })
                .collect(),
        }),
        v4::Packet::PingResp => Decoded::Incoming(Incoming::PingResp),
        v4::Packet::Disconnect => Decoded::Disconnect("the server sent DISCONNECT".into()),
        other => return Err(unexpected(&format!("{other:?}"))),
    })
}

fn decode_v5(p: v5::Packet) -> Result<Decoded, MqttError> {
    Ok(match p {
        v5::Packet::ConnAck(c) => {
            let reason = c.properties.as_ref().and_then(|p| p.reason_string.clone());
            Decoded::ConnAck {
                session_present: c.session_present,
                code: c.code as u8,
                why: match reason {
                    Some(r) => format!("{:?}: {r}", c.code),
                    None => format!("{:?}", c.code),
                },
                receive_maximum: c.properties.and_then(|p| p.receive_max),
            }
        }
        v5::Packet::Publish(p) => Decoded::Incoming(Incoming::Publish(Message {
            pkid: p.pkid,
            topic: p.topic,
            payload: p.payload,
            qos: Qos::from_codec(p.qos),
            dup: p.dup,
            retain: p.retain,
        })),
        v5::Packet::PubAck(a) => {
            let refused = match a.reason {
                v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers => None,
                r => Some(match a.properties.and_then(|p| p.reason_string) {
                    Some(why) => format!("{r:?}: {why}"),
                    None => format!("{r:?}"),
                }),
            };
            Decoded::Incoming(Incoming::PubAck {
                pkid: a.pkid,
                refused,
            })
        }
        v5::Packet::SubAck(s) => Decoded::Incoming(Incoming::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::QoS0 => Ok(Qos::AtMostOnce),
                    v5::SubscribeReasonCode::QoS1 | v5::SubscribeReasonCode::QoS2 => {
                        Ok(Qos::AtLeastOnce)
                    }
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        }),
        v5::Packet::PingResp => Decoded::Incoming(Incoming::PingResp),
        v5::Packet::Disconnect(d) => {
            let reason = d.properties.and_then(|p| p.reason_string);
            Decoded::Disconnect(match reason {
                Some(r) => format!("{:?}: {r}", d.reason_code),
                None => format!("{:?}", d.reason_code),
            })
        }
        other => return Err(unexpected(&format!("{other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(version: Version, bytes: &[u8]) -> Vec<Decoded> {
        let mut read = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            let d = match version {
                Version::V311 => v4::read(&mut read, 1 << 20).map(decode_v4),
                Version::V5 => v5::read(&mut read, 1 << 20).map(decode_v5),
            };
            match d {
                Ok(d) => out.push(d.unwrap()),
                Err(_) => return out,
            }
        }
    }

    #[test]
    fn a_publish_we_write_reads_back_as_the_server_would_deliver_it() {
        for version in [Version::V311, Version::V5] {
            let mut write = BytesMut::new();
            let p = v4::Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "devices/a".into(),
                pkid: 7,
                payload: Bytes::from_static(b"{\"t\":1}"),
            };
            if version == Version::V311 {
                p.write(&mut write).unwrap();
            } else {
                let mut q = v5::Publish::new("devices/a", QoS::AtLeastOnce, *b"{\"t\":1}");
                q.pkid = 7;
                q.dup = true;
                q.write(&mut write).unwrap();
            }
            match decode_all(version, &write).pop() {
                Some(Decoded::Incoming(Incoming::Publish(m))) => {
                    assert_eq!((m.pkid, m.topic.as_str(), m.dup), (7, "devices/a", true));
                    assert_eq!(&m.payload[..], b"{\"t\":1}");
                }
                _ => panic!("{version}: not a publish"),
            }
        }
    }

    #[test]
    fn a_publish_encoded_here_decodes_as_the_codec_reads_it() {
        let big = vec![b'x'; 20_000];
        for version in [Version::V311, Version::V5] {
            for (qos, retain, payload) in [
                (Qos::AtLeastOnce, false, &b"{\"t\":1}"[..]),
                (Qos::AtMostOnce, true, &big[..]),
            ] {
                let mut out = BytesMut::new();
                encode_publish(&mut out, version, "devices/a", payload, qos, 7, retain).unwrap();
                match decode_all(version, &out).pop() {
                    Some(Decoded::Incoming(Incoming::Publish(m))) => {
                        let pkid = if qos == Qos::AtMostOnce { 0 } else { 7 };
                        assert_eq!(
                            (m.pkid, m.topic.as_str(), m.qos, m.retain, m.dup),
                            (pkid, "devices/a", qos, retain, false),
                            "{version}"
                        );
                        assert_eq!(&m.payload[..], payload, "{version}");
                    }
                    _ => panic!("{version}: not a publish"),
                }
            }
        }
    }

    #[test]
    fn a_refused_connack_says_why_and_whether_it_is_the_login() {
        // 3.1.1 CONNACK, return code 4.
        let Some(Decoded::ConnAck { code, why, .. }) =
            decode_all(Version::V311, &[0x20, 0x02, 0x00, 0x04]).pop()
        else {
            panic!("not a CONNACK");
        };
        let e = MqttError::Refused { code, why };
        assert!(e.is_auth());
        assert!(e.to_string().contains("bad user name or password"), "{e}");
    }
}
