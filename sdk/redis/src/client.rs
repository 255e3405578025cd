//! The connection: connect, log in, then commands.

use std::fmt;
use std::io::{self, Read, Write};

use sluice_sdk::net::Stream;

use crate::resp::{self, Commands, Value};

/// How to reach the server and who to be there.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`; the connector must be granted it in `net`.
    pub addr: String,
    /// The ACL user; `None` for the default user (a `requirepass`
    /// password, if any).
    pub user: Option<String>,
    /// The password (usually from a secret: never printed, not even by
    /// `Debug`).
    pub password: Option<String>,
    /// The database number (`SELECT`).
    pub db: u32,
    /// TLS, checking the server's certificate against this name; the host
    /// does the handshake.
    pub tls: Option<String>,
    /// Shown by `CLIENT LIST`.
    pub client_name: String,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("client_name", &self.client_name)
            .finish()
    }
}

/// An error talking to Redis.
#[derive(Debug)]
pub enum RedisError {
    /// The connection failed or went away (or the host interrupted a
    /// wait: see [`RedisError::is_interrupted`]).
    Io(io::Error),
    /// The server answered with an error (`WRONGPASS …`, `LOADING …`).
    Server(String),
    /// The server said something that is not RESP2.
    Protocol(String),
}

impl RedisError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, RedisError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, RedisError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True when the connection is lost (and the client must be dropped).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, RedisError::Io(_) | RedisError::Protocol(_))
    }

    /// True when the server refused who we said we are.
    pub fn is_auth(&self) -> bool {
        matches!(self, RedisError::Server(e) if ["WRONGPASS", "NOAUTH", "NOPERM"]
            .iter()
            .any(|code| e.starts_with(code))
            || e.starts_with("ERR AUTH")
            || e.contains("invalid password"))
    }

    /// True for a server error that passes: it is loading its data, busy
    /// with a script, or a replica without its primary.
    pub fn is_retriable(&self) -> bool {
        matches!(self, RedisError::Server(e) if ["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"]
            .iter()
            .any(|code| e.starts_with(code)))
    }
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Io(e) => write!(f, "{e}"),
            RedisError::Server(e) => write!(f, "the server said: {e}"),
            RedisError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for RedisError {}

impl From<io::Error> for RedisError {
    fn from(e: io::Error) -> Self {
        RedisError::Io(e)
    }
}

impl ConnectOptions {
    /// A failure to connect or log in as the error the host acts on: what
    /// to fix (a grant, a password, TLS) as an invalid config, a server
    /// that is away as retriable. Never shows the password.
    pub fn refused(&self, e: &RedisError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let addr = &self.addr;
        let who = self
            .user
            .as_deref()
            .map_or(String::new(), |u| format!(" as {u:?}"));
        match e {
            RedisError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            RedisError::Server(_) if e.is_auth() => {
                Error::invalid_config(format!("logging in to {addr}{who}: {e}"))
            }
            RedisError::Server(_) if e.is_retriable() => {
                Error::retriable(format!("connecting to {addr}: {e}"))
            }
            RedisError::Server(_) | RedisError::Protocol(_) => {
                Error::invalid_config(format!("connecting to {addr}: {e}"))
            }
            RedisError::Io(io)
                if self.tls.is_some() && io.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            RedisError::Io(_) => Error::retriable(format!("cannot reach {addr}: {e}")),
        }
    }
}

/// How much is read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// A connection to a Redis server, logged in.
pub struct Client {
    stream: Stream,
    read: Vec<u8>,
    /// `read[start..]` is not parsed yet.
    start: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects (TLS through the host if asked), logs in with the password
    /// (and user) if given, selects the database and names the
    /// connection: one round trip after the connection.
    pub fn connect(options: &ConnectOptions) -> Result<Client, RedisError> {
        let mut client = Client {
            stream: Stream::connect(&options.addr, options.tls.as_deref())?,
            read: Vec::with_capacity(READ_CHUNK),
            start: 0,
        };
        let mut hello = Commands::default();
        match (&options.user, &options.password) {
            (Some(user), Some(password)) => hello.push(&["AUTH", user, password]),
            (None, Some(password)) => hello.push(&["AUTH", password]),
            _ => {}
        }
        if options.db != 0 {
            hello.push(&["SELECT".to_owned(), options.db.to_string()]);
        }
        // A name of spaces is refused by the server: dashes instead.
        let name = options.client_name.replace(' ', "-");
        hello.push(&["CLIENT", "SETNAME", &name]);
        for reply in client.run(&hello)? {
            if let Value::Error(e) = reply {
                return Err(RedisError::Server(e));
            }
        }
        Ok(client)
    }

    /// Sends `commands` at once and reads their replies, in order. An
    /// error reply is a [`Value::Error`] in its place: the caller knows
    /// which command it was for.
    pub fn run(&mut self, commands: &Commands) -> Result<Vec<Value>, RedisError> {
        self.send(commands)?;
        (0..commands.len()).map(|_| self.reply()).collect()
    }

    /// Sends one command and reads its reply; an error reply is `Err`.
    pub fn query<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Value, RedisError> {
        let mut c = Commands::default();
        c.push(args);
        self.send(&c)?;
        match self.reply()? {
            Value::Error(e) => Err(RedisError::Server(e)),
            v => Ok(v),
        }
    }

    /// Writes `commands` without reading their replies (read them with
    /// [`reply`](Self::reply)).
    pub fn send(&mut self, commands: &Commands) -> Result<(), RedisError> {
        self.stream.write_all(commands.bytes())?;
        self.stream.flush()?;
        Ok(())
    }

    /// Reads the next reply, waiting for it.
    pub fn reply(&mut self) -> Result<Value, RedisError> {
        loop {
            match resp::parse(&self.read[self.start..]).map_err(RedisError::Protocol)? {
                Some((value, used)) => {
                    self.start += used;
                    if self.start == self.read.len() {
                        self.read.clear();
                        self.start = 0;
                    }
                    return Ok(value);
                }
                None => self.fill()?,
            }
        }
    }

    /// Reads more from the socket, after what is not parsed yet.
    fn fill(&mut self) -> Result<(), RedisError> {
        if self.start > 0 {
            self.read.drain(..self.start);
            self.start = 0;
        }
        let have = self.read.len();
        self.read.resize(have + READ_CHUNK, 0);
        match self.stream.read(&mut self.read[have..]) {
            Ok(0) => {
                self.read.truncate(have);
                Err(RedisError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )))
            }
            Ok(n) => {
                self.read.truncate(have + n);
                Ok(())
            }
            Err(e) => {
                self.read.truncate(have);
                Err(e.into())
            }
        }
    }
}
