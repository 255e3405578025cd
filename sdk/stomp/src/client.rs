//! The connection: `CONNECT`, then frames queued, written and read.

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use sluice_sdk::net::Framed;

use crate::frame::{self, Frame, Read};

/// How to reach the server and who to be there.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`; the connector must be granted it in `net`.
    pub addr: String,
    /// TLS, checking the server's certificate against this name; the host
    /// does the handshake.
    pub tls: Option<String>,
    /// The virtual host (`CONNECT`'s `host` header): RabbitMQ's vhost;
    /// ActiveMQ ignores it.
    pub host: String,
    /// The user name, if the server asks for one.
    pub login: Option<String>,
    /// The password (usually from a secret: never printed, not even by
    /// `Debug`).
    pub passcode: Option<String>,
    /// How often each side shows it is alive when it has nothing to say
    /// (heart-beats, both ways); zero turns them off. A server silent for
    /// twice what it agreed to is taken as gone.
    pub heart_beat: Duration,
    /// The largest frame read.
    pub max_frame: usize,
}

impl ConnectOptions {
    /// Options for `addr`: plain TCP, no login, the virtual host the host
    /// part of `addr`, heart-beats every 10 s.
    pub fn new(addr: &str) -> ConnectOptions {
        ConnectOptions {
            addr: addr.to_owned(),
            tls: None,
            host: sluice_sdk::net::host_part(addr).to_owned(),
            login: None,
            passcode: None,
            heart_beat: Duration::from_secs(10),
            max_frame: 64 << 20,
        }
    }

    /// A failure to connect or log in as the error the host acts on: what
    /// to fix (a grant, a password, TLS) as an invalid config, a server
    /// that is away as retriable. Never shows the password.
    pub fn refused(&self, e: &StompError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let addr = &self.addr;
        match e {
            StompError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            StompError::Refused(_) => {
                let who = self
                    .login
                    .as_deref()
                    .map_or(String::new(), |u| format!(" as {u:?}"));
                Error::invalid_config(format!("logging in to {addr}{who}: {e}"))
            }
            StompError::Protocol(_) => {
                Error::invalid_config(format!("{addr} does not speak STOMP 1.2 as expected: {e}"))
            }
            StompError::Io(io)
                if self.tls.is_some() && io.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            StompError::Io(_) => Error::retriable(format!("cannot reach {addr}: {e}")),
        }
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "<secret>"))
            .field("heart_beat", &self.heart_beat)
            .finish_non_exhaustive()
    }
}

/// An error talking to a STOMP server.
#[derive(Debug)]
pub enum StompError {
    /// The connection failed or went away (or the host interrupted a
    /// wait: see [`StompError::is_interrupted`]).
    Io(io::Error),
    /// The server answered `CONNECT` with an `ERROR`: its message.
    Refused(String),
    /// The server sent what is not STOMP 1.2, or not what the protocol
    /// allows.
    Protocol(String),
}

impl StompError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, StompError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, StompError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True when the connection is lost (and the client must be dropped).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, StompError::Io(_) | StompError::Protocol(_))
    }
}

impl fmt::Display for StompError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StompError::Io(e) => write!(f, "{e}"),
            StompError::Refused(why) => write!(f, "the server refused: {why}"),
            StompError::Protocol(why) => write!(f, "STOMP protocol: {why}"),
        }
    }
}

impl std::error::Error for StompError {}

impl From<io::Error> for StompError {
    fn from(e: io::Error) -> Self {
        StompError::Io(e)
    }
}

/// How a subscription's messages are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The server takes a message as delivered once sent.
    Auto,
    /// Each message is acknowledged on its own ([`Client::ack`]); the
    /// server sends again what was not, once the connection is gone.
    ClientIndividual,
}

/// A frame the server sent, after `CONNECTED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A message for a subscription (`MESSAGE`); [`Frame::header`] reads
    /// its `message-id`, `ack`, `destination` and the rest.
    Message(Frame),
    /// A frame asking for a receipt was processed (`RECEIPT`).
    Receipt(String),
    /// The server says something failed (`ERROR`), for the frame whose
    /// receipt it names, if any. STOMP servers usually close the
    /// connection after one.
    Error {
        /// The `receipt` of the frame that failed.
        receipt: Option<String>,
        /// The server's `message` header, with its body if it has one.
        message: String,
    },
}

/// A connection to a STOMP 1.2 server, connected.
pub struct Client {
    conn: Framed,
    max_frame: usize,
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

impl Client {
    /// Connects (TLS through the host if asked), sends `CONNECT` and reads
    /// `CONNECTED`: an `ERROR` instead is [`StompError::Refused`].
    pub fn connect(options: &ConnectOptions) -> Result<Client, StompError> {
        let mut client = Client {
            conn: Framed::connect(&options.addr, options.tls.as_deref())?,
            max_frame: options.max_frame,
            server: String::new(),
        };
        let beat = options.heart_beat.as_millis().to_string();
        let beats = format!("{beat},{beat}");
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("accept-version", b"1.2"),
            ("host", options.host.as_bytes()),
            ("heart-beat", beats.as_bytes()),
        ];
        if let Some(login) = &options.login {
            headers.push(("login", login.as_bytes()));
        }
        if let Some(passcode) = &options.passcode {
            headers.push(("passcode", passcode.as_bytes()));
        }
        frame::write(&mut client.conn.write, "CONNECT", &headers, b"");
        client.flush()?;
        let wait = Duration::from_secs(10).max(options.heart_beat);
        let deadline = Instant::now() + wait;
        loop {
            match client.decode()? {
                Some(f) if f.command == "CONNECTED" => {
                    if f.header("version") != Some("1.2") {
                        return Err(StompError::Protocol(format!(
                            "the server speaks STOMP {}, not 1.2",
                            f.header("version").unwrap_or("1.0")
                        )));
                    }
                    client.server = f.header("server").unwrap_or_default().to_owned();
                    client.agree_heart_beats(options.heart_beat, f.header("heart-beat"));
                    return Ok(client);
                }
                Some(f) if f.command == "ERROR" => {
                    return Err(StompError::Refused(error_message(&f)));
                }
                Some(f) => {
                    return Err(StompError::Protocol(format!(
                        "a {} before CONNECTED",
                        f.command
                    )));
                }
                None => {}
            }
            if !client.conn.wait_more(Some(deadline), |_| {})? {
                return Err(StompError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no CONNECTED from {} within {wait:?}", options.addr),
                )));
            }
        }
    }

    /// Each side's heart-beat period: the slower of what one offers and
    /// the other wants, none when either says 0.
    fn agree_heart_beats(&mut self, ours: Duration, theirs: Option<&str>) {
        let (sx, sy) = theirs
            .and_then(|h| h.split_once(','))
            .and_then(|(x, y)| Some((x.trim().parse::<u64>().ok()?, y.trim().parse::<u64>().ok()?)))
            .unwrap_or((0, 0));
        let ours = ours.as_millis() as u64;
        let agree = |a: u64, b: u64| (a > 0 && b > 0).then(|| Duration::from_millis(a.max(b)));
        self.conn.set_keep_alive(agree(ours, sy));
        // A server silent for twice what it agreed to is gone.
        self.conn
            .set_silence_limit(agree(sx, ours).map(|every| every * 2));
    }

    /// The server's name and version, as its `CONNECTED` said.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// True when this client wrote nothing for a heart-beat period
    /// (nothing called it): the server may have taken the connection as
    /// dead. Make a new one, without calling it an outage.
    pub fn is_stale(&self) -> bool {
        self.conn.is_stale()
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.conn.write.len()
    }

    /// Queues a `SUBSCRIBE` to `destination` as subscription `id`, with
    /// `extra` headers (a selector, a prefetch size).
    pub fn subscribe(&mut self, id: &str, destination: &str, ack: Ack, extra: &[(&str, &str)]) {
        let ack = match ack {
            Ack::Auto => "auto",
            Ack::ClientIndividual => "client-individual",
        };
        let mut headers: Vec<(&str, &[u8])> = vec![
            ("id", id.as_bytes()),
            ("destination", destination.as_bytes()),
            ("ack", ack.as_bytes()),
        ];
        headers.extend(extra.iter().map(|(n, v)| (*n, v.as_bytes())));
        frame::write(&mut self.conn.write, "SUBSCRIBE", &headers, b"");
    }

    /// Queues a `SEND` of `body` to `destination`, with `headers` (a
    /// `receipt`, `persistent`, the application's own).
    pub fn send(&mut self, destination: &[u8], body: &[u8], headers: &[(&str, &[u8])]) {
        let mut all: Vec<(&str, &[u8])> = Vec::with_capacity(headers.len() + 1);
        all.push(("destination", destination));
        all.extend_from_slice(headers);
        frame::write(&mut self.conn.write, "SEND", &all, body);
    }

    /// Queues an `ACK` of the message whose `ack` header was `id`.
    pub fn ack(&mut self, id: &str) {
        frame::write(&mut self.conn.write, "ACK", &[("id", id.as_bytes())], b"");
    }

    /// Queues a heart-beat (an end of line). Besides showing we are alive,
    /// a client waiting for receipts sends one to make its TCP stack
    /// acknowledge the server's last segment at once: a server writing
    /// small frames with Nagle's algorithm on (ActiveMQ's default) holds
    /// the next ones until then.
    pub fn heart_beat(&mut self) {
        self.conn.write.extend_from_slice(b"\n");
    }

    /// Writes what is queued.
    pub fn flush(&mut self) -> Result<(), StompError> {
        Ok(self.conn.flush()?)
    }

    /// Says goodbye (`DISCONNECT`), and waits up to a second for the
    /// server to say it processed everything before (its `RECEIPT`), so
    /// the acknowledgements just sent are not lost with the connection.
    /// Errors are ignored: the connection ends either way.
    pub fn disconnect(mut self) {
        frame::write(
            &mut self.conn.write,
            "DISCONNECT",
            &[("receipt", b"disconnect")],
            b"",
        );
        if self.flush().is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(Some(left)) {
                Ok(Some(Incoming::Receipt(r))) if r == "disconnect" => return,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// The next frame: one already read, or one that arrives within `wait`
    /// (`None`: only what has arrived). `Ok(None)` when none came. Sends
    /// heart-beats while it waits, and takes a server silent for twice its
    /// heart-beat period as gone.
    pub fn next(&mut self, wait: Option<Duration>) -> Result<Option<Incoming>, StompError> {
        let deadline = wait.map(|w| Instant::now() + w.min(Duration::from_secs(3600)));
        loop {
            if let Some(f) = self.decode()? {
                return match f.command.as_str() {
                    "MESSAGE" => Ok(Some(Incoming::Message(f))),
                    "RECEIPT" => Ok(Some(Incoming::Receipt(
                        f.header("receipt-id").unwrap_or_default().to_owned(),
                    ))),
                    "ERROR" => Ok(Some(Incoming::Error {
                        receipt: f.header("receipt-id").map(str::to_owned),
                        message: error_message(&f),
                    })),
                    other => Err(StompError::Protocol(format!(
                        "a {other} frame, which a server does not send"
                    ))),
                };
            }
            if !self
                .conn
                .wait_more(deadline, |w| w.extend_from_slice(b"\n"))?
            {
                return Ok(None);
            }
        }
    }

    /// Decodes the next whole frame read, if there is one (heart-beats
    /// are skipped).
    fn decode(&mut self) -> Result<Option<Frame>, StompError> {
        loop {
            if self.conn.read.is_empty() {
                return Ok(None);
            }
            match frame::read(&mut self.conn.read, self.max_frame).map_err(StompError::Protocol)? {
                Read::Frame(f) => return Ok(Some(f)),
                Read::HeartBeat => {}
                Read::Partial => return Ok(None),
            }
        }
    }
}

/// An `ERROR` frame's `message` header, with its body when it has one.
fn error_message(f: &Frame) -> String {
    let message = f.header("message").unwrap_or("an error");
    let body = String::from_utf8_lossy(&f.body);
    let body = body.trim();
    if body.is_empty() || body == message {
        message.to_owned()
    } else {
        format!("{message}: {body}")
    }
}
