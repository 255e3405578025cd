//! The connection: the handshake, then one channel's methods and messages.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use sluice_sdk::net::Framed;

use crate::frame::{self, Close, Frame, Method, Properties, Table, Value};

/// How to reach the server and who to be there.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`; the connector must be granted it in `net`.
    pub addr: String,
    /// TLS, checking the server's certificate against this name; the host
    /// does the handshake.
    pub tls: Option<String>,
    /// The virtual host, `/` by default.
    pub vhost: String,
    /// The user name (`PLAIN`).
    pub user: String,
    /// The password (usually from a secret: never printed, not even by
    /// `Debug`).
    pub password: String,
    /// How often each side shows it is alive when it has nothing to say
    /// (AMQP heartbeats; the server may ask for a shorter period); zero
    /// leaves it to the server. A server silent for twice the period is
    /// taken as gone.
    pub heartbeat: Duration,
    /// The largest frame we take (the server may agree a smaller one).
    pub frame_max: u32,
}

impl ConnectOptions {
    /// Options for `addr`: plain TCP, the virtual host `/`, RabbitMQ's
    /// `guest` user, heartbeats every 10 s.
    pub fn new(addr: &str) -> ConnectOptions {
        ConnectOptions {
            addr: addr.to_owned(),
            tls: None,
            vhost: "/".to_owned(),
            user: "guest".to_owned(),
            password: "guest".to_owned(),
            heartbeat: Duration::from_secs(10),
            frame_max: 128 * 1024,
        }
    }

    /// A failure to connect, log in or set up as the error the host acts
    /// on: what to fix (a grant, a password, a queue, a permission, TLS) as
    /// an invalid config, a server that is away as retriable. Never shows
    /// the password.
    pub fn refused(&self, e: &AmqpError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let addr = &self.addr;
        match e {
            AmqpError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            AmqpError::Refused(_) => Error::invalid_config(format!(
                "logging in to {addr} as {:?} (virtual host {:?}): {e}",
                self.user, self.vhost
            )),
            AmqpError::Closed { .. } if !e.is_connection_lost() => {
                Error::invalid_config(format!("{addr}: {e}"))
            }
            AmqpError::Protocol(_) => {
                Error::invalid_config(format!("{addr} does not speak AMQP 0-9-1 as expected: {e}"))
            }
            AmqpError::Io(io)
                if self.tls.is_some() && io.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            AmqpError::Io(_) | AmqpError::Closed { .. } => {
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
            .field("vhost", &self.vhost)
            .field("user", &self.user)
            .field("password", &"<secret>")
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// An error talking to an AMQP server.
#[derive(Debug)]
pub enum AmqpError {
    /// The connection failed or went away (or the host interrupted a
    /// wait: see [`AmqpError::is_interrupted`]).
    Io(io::Error),
    /// The server would not let us in: the login or the virtual host.
    Refused(String),
    /// The server closed the channel or the connection, with its reply
    /// code and text (`404 NOT_FOUND - no queue 'x'`).
    Closed {
        /// The reply code: 403 access refused, 404 not found, 406
        /// precondition failed, 320 connection forced, …
        code: u16,
        /// The server's words.
        text: String,
    },
    /// The server sent what AMQP 0-9-1 does not allow.
    Protocol(String),
}

impl AmqpError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, AmqpError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, AmqpError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True when the connection is lost and another may work; false when
    /// the server refused what was asked (a login, a queue that is not
    /// there, a permission), which trying again will not mend.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            AmqpError::Io(_) | AmqpError::Protocol(_) => true,
            AmqpError::Refused(_) => false,
            // access-refused, not-found, resource-locked,
            // precondition-failed, not-allowed, not-implemented.
            AmqpError::Closed { code, .. } => !matches!(code, 403 | 404 | 405 | 406 | 530 | 540),
        }
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmqpError::Io(e) => write!(f, "{e}"),
            AmqpError::Refused(why) => write!(f, "the server refused: {why}"),
            AmqpError::Closed { code, text } => write!(f, "the server closed with {code}: {text}"),
            AmqpError::Protocol(why) => write!(f, "AMQP protocol: {why}"),
        }
    }
}

impl std::error::Error for AmqpError {}

impl From<io::Error> for AmqpError {
    fn from(e: io::Error) -> Self {
        AmqpError::Io(e)
    }
}

/// A message the server delivered to our consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Its number on this channel, to acknowledge it with.
    pub delivery_tag: u64,
    /// The server delivered it before, to this or another consumer.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties.
    pub properties: Properties,
    /// Its body.
    pub body: Bytes,
}

/// What the server sent on our channel, after the handshake.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A message for our consumer (`basic.deliver`).
    Delivery(Delivery),
    /// A `mandatory` message no queue took (`basic.return`), before its
    /// publisher confirm.
    Returned {
        /// `312 NO_ROUTE`, …
        code: u16,
        /// The server's words.
        text: String,
        /// The message as published.
        delivery: Delivery,
    },
    /// Publisher confirms: the server has the message numbered `tag`
    /// (and, with `multiple`, every one before it).
    Ack {
        /// The publish's number on this channel, from 1.
        tag: u64,
        /// Every unconfirmed one up to `tag`.
        multiple: bool,
    },
    /// Publisher confirms: the server lost the message numbered `tag`
    /// (and, with `multiple`, every one before it); publish it again.
    Nack {
        /// The publish's number on this channel, from 1.
        tag: u64,
        /// Every unconfirmed one up to `tag`.
        multiple: bool,
    },
    /// The server stopped reading what this connection publishes (a
    /// memory or disk alarm: RabbitMQ's `connection.blocked`), with its
    /// reason; confirms wait until [`Incoming::Unblocked`].
    Blocked(String),
    /// The server reads this connection's publishes again.
    Unblocked,
}

/// The one channel a client uses.
const CHANNEL: u16 = 1;

/// A message being read: its method and, once its header came, its
/// properties, size and the body so far.
struct Content {
    method: Method,
    header: Option<(Properties, u64)>,
    body: BytesMut,
}

/// A connection to an AMQP 0-9-1 server with one channel open.
pub struct Client {
    conn: Framed,
    frame_max: usize,
    /// A message whose content is being read.
    content: Option<Content>,
    /// What came while waiting for a method's answer.
    backlog: VecDeque<Incoming>,
    server: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("stream", self.conn.stream())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// What one frame read amounted to.
#[expect(
    clippy::large_enum_variant,
    reason = "made and taken apart once per message: a box would be an allocation more"
)]
enum Event {
    Incoming(Incoming),
    /// The answer to a method we sent, or a method we do not act on.
    Method(Method),
}

impl Client {
    /// Connects (TLS through the host if asked), logs in with `PLAIN`,
    /// agrees the frame size and heartbeats, opens the virtual host and a
    /// channel. A login or virtual host the server refuses is
    /// [`AmqpError::Refused`].
    pub fn connect(options: &ConnectOptions) -> Result<Client, AmqpError> {
        let mut client = Client {
            conn: Framed::connect(&options.addr, options.tls.as_deref())?,
            frame_max: 4096,
            content: None,
            backlog: VecDeque::new(),
            server: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(10).max(options.heartbeat);
        client.conn.write.put_slice(frame::PROTOCOL_HEADER);
        client.flush()?;
        let Method::ConnectionStart {
            version,
            properties,
            mechanisms,
        } = client.handshake_step(deadline)?
        else {
            return Err(AmqpError::Protocol("no connection.start".into()));
        };
        if version != (0, 9) {
            return Err(AmqpError::Protocol(format!(
                "the server speaks AMQP {}-{}, not 0-9-1",
                version.0, version.1
            )));
        }
        if !mechanisms.split(' ').any(|m| m == "PLAIN") {
            return Err(AmqpError::Refused(format!(
                "it offers the login mechanisms {mechanisms:?}, not PLAIN"
            )));
        }
        client.server = server_name(&properties);
        let capabilities: Table = [
            "publisher_confirms",
            "consumer_cancel_notify",
            "basic.nack",
            "authentication_failure_close",
            "connection.blocked",
        ]
        .into_iter()
        .map(|c| (c.to_owned(), Value::Bool(true)))
        .collect();
        let client_properties: Table = vec![
            (
                "product".into(),
                Value::LongStr(Bytes::from_static(b"sluice")),
            ),
            (
                "version".into(),
                Value::LongStr(Bytes::from_static(env!("CARGO_PKG_VERSION").as_bytes())),
            ),
            ("capabilities".into(), Value::Table(capabilities)),
        ];
        let mut response = Vec::with_capacity(options.user.len() + options.password.len() + 2);
        response.push(0);
        response.extend_from_slice(options.user.as_bytes());
        response.push(0);
        response.extend_from_slice(options.password.as_bytes());
        frame::method_frame(&mut client.conn.write, 0, (10, 11), |b| {
            frame::put_table(b, &client_properties);
            frame::put_shortstr(b, b"PLAIN");
            frame::put_longstr(b, &response);
            frame::put_shortstr(b, b"en_US");
        });
        client.flush()?;
        let (channel_max, frame_max, heartbeat) = match client.handshake_step(deadline) {
            Ok(Method::ConnectionTune {
                channel_max,
                frame_max,
                heartbeat,
            }) => (channel_max, frame_max, heartbeat),
            Ok(Method::ConnectionSecure) => {
                return Err(AmqpError::Refused(
                    "it asks for a login challenge PLAIN does not have".into(),
                ));
            }
            Ok(m) => {
                return Err(AmqpError::Protocol(format!(
                    "{m:?} instead of connection.tune"
                )));
            }
            // A server that does not say why closes the connection on a
            // failed login (the protocol has no way to say it before tune).
            Err(AmqpError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(AmqpError::Refused(
                    "it closed the connection after the login: a wrong user name or password"
                        .into(),
                ));
            }
            Err(e) => return Err(e),
        };
        let frame_max = match frame_max {
            0 => options.frame_max,
            theirs => theirs.min(options.frame_max),
        };
        client.frame_max = frame_max as usize;
        let ours = options.heartbeat.as_secs().min(u64::from(u16::MAX)) as u16;
        let heartbeat = match (ours, heartbeat) {
            (0, theirs) | (theirs, 0) => theirs,
            (ours, theirs) => ours.min(theirs),
        };
        if heartbeat > 0 {
            // A server silent for two periods is gone.
            let every = Duration::from_secs(u64::from(heartbeat));
            client.conn.set_keep_alive(Some(every));
            client.conn.set_silence_limit(Some(every * 2));
        }
        frame::method_frame(&mut client.conn.write, 0, (10, 31), |b| {
            b.put_u16(channel_max);
            b.put_u32(frame_max);
            b.put_u16(heartbeat);
        });
        frame::method_frame(&mut client.conn.write, 0, (10, 40), |b| {
            frame::put_shortstr(b, options.vhost.as_bytes());
            frame::put_shortstr(b, b"");
            b.put_u8(0);
        });
        client.flush()?;
        match client.handshake_step(deadline)? {
            Method::ConnectionOpenOk => {}
            m => {
                return Err(AmqpError::Protocol(format!(
                    "{m:?} instead of connection.open-ok"
                )));
            }
        }
        frame::method_frame(&mut client.conn.write, CHANNEL, (20, 10), |b| {
            frame::put_shortstr(b, b"");
        });
        client.call(|m| matches!(m, Method::ChannelOpenOk))?;
        Ok(client)
    }

    /// The server's next method in the handshake; its `connection.close`
    /// is [`AmqpError::Refused`].
    fn handshake_step(&mut self, deadline: Instant) -> Result<Method, AmqpError> {
        loop {
            if let Some(f) = self.decode()? {
                match f {
                    Frame::Method(0, Method::ConnectionClose(close)) => {
                        self.close_ok(0);
                        // The login or the virtual host; anything else
                        // (a broker shutting down) is worth another try.
                        return Err(match close.code {
                            403 | 530 => AmqpError::Refused(close.text),
                            code => AmqpError::Closed {
                                code,
                                text: close.text,
                            },
                        });
                    }
                    Frame::Method(_, m) => return Ok(m),
                    Frame::Heartbeat => continue,
                    other => {
                        return Err(AmqpError::Protocol(format!(
                            "{other:?} during the handshake"
                        )));
                    }
                }
            }
            if !self.conn.wait_more(Some(deadline), |_| {})? {
                return Err(AmqpError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server did not finish the handshake in time",
                )));
            }
        }
    }

    /// Answers the server's close of `channel`, best effort.
    fn close_ok(&mut self, channel: u16) {
        let m = if channel == 0 { (10, 51) } else { (20, 41) };
        frame::method_frame(&mut self.conn.write, channel, m, |_| {});
        let _ = self.flush();
    }

    /// The server's product and version, as it said at connection.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Sends a method queued and waits (up to 30 s) for the answer
    /// `expected` picks; what arrives meanwhile is kept for [`Client::next`].
    fn call(&mut self, expected: impl Fn(&Method) -> bool) -> Result<Method, AmqpError> {
        self.flush()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(AmqpError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from the server within 30 s",
                )));
            }
            match self.event(Some(left))? {
                Some(Event::Method(m)) if expected(&m) => return Ok(m),
                Some(Event::Method(m)) => {
                    return Err(AmqpError::Protocol(format!("an unexpected {m:?}")));
                }
                Some(Event::Incoming(i)) => self.backlog.push_back(i),
                None => {}
            }
        }
    }

    /// Asks the server to send at most `prefetch` messages not yet
    /// acknowledged (`basic.qos`).
    pub fn qos(&mut self, prefetch: u16) -> Result<(), AmqpError> {
        frame::method_frame(&mut self.conn.write, CHANNEL, (60, 10), |b| {
            b.put_u32(0);
            b.put_u16(prefetch);
            b.put_u8(0);
        });
        self.call(|m| matches!(m, Method::BasicQosOk)).map(drop)
    }

    /// Declares a durable queue (`passive`: checks it is there) and
    /// returns how many messages it holds.
    pub fn declare_queue(&mut self, name: &str, passive: bool) -> Result<u32, AmqpError> {
        frame::method_frame(&mut self.conn.write, CHANNEL, (50, 10), |b| {
            b.put_u16(0);
            frame::put_shortstr(b, name.as_bytes());
            // passive, durable, exclusive, auto-delete, no-wait.
            b.put_u8(u8::from(passive) | 0b10);
            frame::put_table(b, &[]);
        });
        match self.call(|m| matches!(m, Method::QueueDeclareOk { .. }))? {
            Method::QueueDeclareOk { messages } => Ok(messages),
            _ => unreachable!("the call checked it"),
        }
    }

    /// Checks the exchange `name` is there (a passive `exchange.declare`):
    /// a missing one is [`AmqpError::Closed`] with 404.
    pub fn declare_exchange_passive(&mut self, name: &str) -> Result<(), AmqpError> {
        frame::method_frame(&mut self.conn.write, CHANNEL, (40, 10), |b| {
            b.put_u16(0);
            frame::put_shortstr(b, name.as_bytes());
            frame::put_shortstr(b, b"direct");
            // passive; durable, auto-delete, internal, no-wait off.
            b.put_u8(1);
            frame::put_table(b, &[]);
        });
        self.call(|m| matches!(m, Method::ExchangeDeclareOk))
            .map(drop)
    }

    /// Consumes `queue`, each message acknowledged by [`Client::ack`]
    /// (`basic.consume` without `no-ack`). Messages arrive by
    /// [`Client::next`].
    pub fn consume(&mut self, queue: &str, consumer_tag: &str) -> Result<(), AmqpError> {
        frame::method_frame(&mut self.conn.write, CHANNEL, (60, 20), |b| {
            b.put_u16(0);
            frame::put_shortstr(b, queue.as_bytes());
            frame::put_shortstr(b, consumer_tag.as_bytes());
            // no-local, no-ack, exclusive, no-wait: all off.
            b.put_u8(0);
            frame::put_table(b, &[]);
        });
        self.call(|m| matches!(m, Method::BasicConsumeOk)).map(drop)
    }

    /// Turns publisher confirms on (`confirm.select`): the server answers
    /// each publish, numbered from 1, with an [`Incoming::Ack`] or
    /// [`Incoming::Nack`].
    pub fn confirm_select(&mut self) -> Result<(), AmqpError> {
        frame::method_frame(&mut self.conn.write, CHANNEL, (85, 10), |b| b.put_u8(0));
        self.call(|m| matches!(m, Method::ConfirmSelectOk))
            .map(drop)
    }

    /// Queues a `basic.publish` of `body` with `properties` to `exchange`
    /// (`""`: the default one, where the routing key names the queue).
    /// With `mandatory`, a message no queue takes comes back as
    /// [`Incoming::Returned`]. The exchange and routing key are short
    /// strings: at most 255 bytes (the caller checks; longer ones are cut).
    /// `Err`, with nothing queued, when the properties (headers included)
    /// do not fit in one frame, saying so.
    pub fn publish(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        mandatory: bool,
        properties: &Properties,
        body: &[u8],
    ) -> Result<(), String> {
        let start = self.conn.write.len();
        frame::method_frame(&mut self.conn.write, CHANNEL, (60, 40), |b| {
            b.put_u16(0);
            frame::put_shortstr(b, exchange);
            frame::put_shortstr(b, routing_key);
            b.put_u8(u8::from(mandatory));
        });
        frame::content(&mut self.conn.write, CHANNEL, properties, body, self.frame_max).map_err(
            |size| {
                self.conn.write.truncate(start);
                format!(
                    "its properties and headers take {size} bytes, more than the {} one frame holds on this connection",
                    self.frame_max - 8
                )
            },
        )
    }

    /// True when this client wrote nothing for a heartbeat period (nothing
    /// called it): the server may have taken the connection as dead. Make
    /// a new one, without calling it an outage.
    pub fn is_stale(&self) -> bool {
        self.conn.is_stale()
    }

    /// Queues a `basic.ack` of the delivery `tag` (with `multiple`, of
    /// every one up to it not acknowledged yet).
    pub fn ack(&mut self, tag: u64, multiple: bool) {
        frame::method_frame(&mut self.conn.write, CHANNEL, (60, 80), |b| {
            b.put_u64(tag);
            b.put_u8(u8::from(multiple));
        });
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.conn.write.len()
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> Result<(), AmqpError> {
        Ok(self.conn.flush()?)
    }

    /// Closes the connection (`connection.close`), waiting up to a second
    /// for the server's answer, so what was sent before (acknowledgements)
    /// is processed. Errors are ignored: the connection ends either way.
    pub fn close(mut self) {
        frame::method_frame(&mut self.conn.write, 0, (10, 50), |b| {
            b.put_u16(200);
            frame::put_shortstr(b, b"goodbye");
            b.put_u16(0);
            b.put_u16(0);
        });
        if self.flush().is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match self.decode() {
                Ok(Some(Frame::Method(0, Method::ConnectionCloseOk))) | Err(_) => return,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            if !matches!(
                self.conn.wait_more(Some(deadline), frame::heartbeat),
                Ok(true)
            ) {
                return;
            }
        }
    }

    /// The next message, return or confirm: one already read, or one that
    /// arrives within `wait` (`None`: only what has arrived). `Ok(None)`
    /// when none came. Sends heartbeats while it waits, and takes a server
    /// silent for twice the heartbeat period as gone. The server closing
    /// the channel or the connection is [`AmqpError::Closed`].
    pub fn next(&mut self, wait: Option<Duration>) -> Result<Option<Incoming>, AmqpError> {
        if let Some(i) = self.backlog.pop_front() {
            return Ok(Some(i));
        }
        let deadline = wait.map(|w| Instant::now() + w.min(Duration::from_secs(3600)));
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self.event(left)? {
                Some(Event::Incoming(i)) => return Ok(Some(i)),
                // Nothing this client asked for: a late answer, or a
                // notice (connection.blocked) it does not act on.
                Some(Event::Method(_)) => {}
                None => return Ok(None),
            }
        }
    }

    /// The next thing the frames read amount to, waiting as `next` does.
    fn event(&mut self, wait: Option<Duration>) -> Result<Option<Event>, AmqpError> {
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            while let Some(f) = self.decode()? {
                if let Some(e) = self.on_frame(f)? {
                    return Ok(Some(e));
                }
            }
            if !self.conn.wait_more(deadline, frame::heartbeat)? {
                return Ok(None);
            }
        }
    }

    /// Acts on one frame: a message whose content is complete, a confirm,
    /// an answer, or the server closing.
    fn on_frame(&mut self, f: Frame) -> Result<Option<Event>, AmqpError> {
        let closed = |c: Close| AmqpError::Closed {
            code: c.code,
            text: c.text,
        };
        match f {
            Frame::Heartbeat => Ok(None),
            Frame::Method(channel, Method::ConnectionClose(c)) => {
                self.close_ok(channel);
                Err(closed(c))
            }
            Frame::Method(channel, Method::ChannelClose(c)) => {
                // The channel is gone: so is the connection, for us.
                self.close_ok(channel);
                Err(closed(c))
            }
            Frame::Method(_, Method::BasicCancel) => Err(AmqpError::Closed {
                code: 320,
                text: "the server cancelled the consumer (the queue was deleted?)".into(),
            }),
            Frame::Method(_, Method::ConnectionBlocked(reason)) => {
                Ok(Some(Event::Incoming(Incoming::Blocked(reason))))
            }
            Frame::Method(_, Method::ConnectionUnblocked) => {
                Ok(Some(Event::Incoming(Incoming::Unblocked)))
            }
            Frame::Method(_, Method::BasicAck { tag, multiple }) => {
                Ok(Some(Event::Incoming(Incoming::Ack { tag, multiple })))
            }
            Frame::Method(_, Method::BasicNack { tag, multiple }) => {
                Ok(Some(Event::Incoming(Incoming::Nack { tag, multiple })))
            }
            Frame::Method(_, m @ (Method::BasicDeliver { .. } | Method::BasicReturn { .. })) => {
                if self.content.is_some() {
                    return Err(AmqpError::Protocol(
                        "a message began before the last one's body ended".into(),
                    ));
                }
                self.content = Some(Content {
                    method: m,
                    header: None,
                    body: BytesMut::new(),
                });
                Ok(None)
            }
            Frame::Method(_, m) => Ok(Some(Event::Method(m))),
            Frame::Header(_, size, properties) => {
                let Some(content) = self.content.as_mut() else {
                    return Err(AmqpError::Protocol(
                        "a content header without a message".into(),
                    ));
                };
                if content.header.is_some() {
                    return Err(AmqpError::Protocol(
                        "a message with two content headers".into(),
                    ));
                }
                content.header = Some((*properties, size));
                // The size is the server's word: room for what it says,
                // up to a bound, the rest as it comes.
                content
                    .body
                    .reserve(usize::try_from(size).unwrap_or(usize::MAX).min(16 << 20));
                self.complete()
            }
            Frame::Body(_, part) => {
                let Some(content) = self.content.as_mut().filter(|c| c.header.is_some()) else {
                    return Err(AmqpError::Protocol("a body frame without a message".into()));
                };
                content.body.extend_from_slice(&part);
                self.complete()
            }
        }
    }

    /// The message being read, if its body is all here.
    fn complete(&mut self) -> Result<Option<Event>, AmqpError> {
        let Some(content) = &self.content else {
            return Ok(None);
        };
        let Some((_, size)) = &content.header else {
            return Ok(None);
        };
        let got = content.body.len() as u64;
        if got < *size {
            return Ok(None);
        }
        if got > *size {
            return Err(AmqpError::Protocol(format!(
                "a body of {got} bytes, its header said {size}"
            )));
        }
        let content = self.content.take().expect("checked");
        let (properties, _) = content.header.expect("checked");
        let body = content.body.freeze();
        let incoming = match content.method {
            Method::BasicDeliver {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
            } => Incoming::Delivery(Delivery {
                delivery_tag,
                redelivered,
                exchange,
                routing_key,
                properties,
                body,
            }),
            Method::BasicReturn {
                code,
                text,
                exchange,
                routing_key,
            } => Incoming::Returned {
                code,
                text,
                delivery: Delivery {
                    delivery_tag: 0,
                    redelivered: false,
                    exchange,
                    routing_key,
                    properties,
                    body,
                },
            },
            _ => unreachable!("content follows a deliver or a return"),
        };
        Ok(Some(Event::Incoming(incoming)))
    }

    /// Decodes the next whole frame read, if there is one.
    fn decode(&mut self) -> Result<Option<Frame>, AmqpError> {
        // Before tune frames are at most 4096 bytes; we take up to the
        // largest a server usually agrees (RabbitMQ's 128 KiB) all along.
        let max = self.frame_max.max(128 * 1024);
        frame::read(&mut self.conn.read, max).map_err(AmqpError::Protocol)
    }
}

/// `product version` from the server's properties.
fn server_name(properties: &Table) -> String {
    let get = |name: &str| {
        properties
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(&v.to_bytes()).into_owned())
            .unwrap_or_default()
    };
    format!("{} {}", get("product"), get("version"))
        .trim()
        .to_owned()
}
