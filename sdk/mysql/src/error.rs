//! What can go wrong talking to MariaDB, sorted by what a connector does
//! about it.

use std::fmt;
use std::io;

/// An error from the server: its `ERR` packet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// The server's error number, e.g. 1048 (a column cannot be NULL).
    pub code: u16,
    /// The SQLSTATE, e.g. `23000`.
    pub state: String,
    /// The message.
    pub message: String,
}

impl ServerError {
    pub(crate) fn parse(packet: &[u8]) -> ServerError {
        let code = match packet {
            [_, a, b, ..] => u16::from_le_bytes([*a, *b]),
            _ => 0,
        };
        let rest = packet.get(3..).unwrap_or_default();
        let (state, message) = match rest.strip_prefix(b"#") {
            Some(s) if s.len() >= 5 => (String::from_utf8_lossy(&s[..5]).into_owned(), &s[5..]),
            _ => (String::new(), rest),
        };
        ServerError {
            code,
            state,
            message: String::from_utf8_lossy(message).into_owned(),
        }
    }

    /// True for a fault that passes: a deadlock or a lock wait that timed
    /// out (try the transaction again), too many connections, a server
    /// shutting down.
    pub fn is_retriable(&self) -> bool {
        matches!(self.code, 1205 | 1213 | 1040 | 1053 | 1927 | 1317)
    }

    /// True for a row refused on its merits: a value the column's type
    /// rejects, a NULL in a NOT NULL column, a duplicate key, a CHECK or
    /// foreign key that fails.
    pub fn is_data_error(&self) -> bool {
        matches!(
            self.code,
            1048 | 1062
                | 1264
                | 1265
                | 1292
                | 1364
                | 1365
                | 1366
                | 1367
                | 1406
                | 1411
                | 1451
                | 1452
                | 1690
                | 3819
                | 4025
        )
    }

    /// True when the login itself was refused: the password, the user, its
    /// rights on the database.
    pub fn is_auth_error(&self) -> bool {
        matches!(self.code, 1044 | 1045 | 1049 | 1130 | 1698)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (error {}", self.message, self.code)?;
        if !self.state.is_empty() {
            write!(f, ", SQLSTATE {}", self.state)?;
        }
        write!(f, ")")
    }
}

/// What went wrong.
#[derive(Debug)]
pub enum MyError {
    /// The connection: refused, lost, not granted, or a wait the host
    /// interrupted.
    Io(io::Error),
    /// The server said no.
    Server(ServerError),
    /// The server said something this client does not understand, or
    /// asked for what it does not speak.
    Protocol(String),
}

impl MyError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, MyError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, MyError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// The server's error, if it was one.
    pub fn server(&self) -> Option<&ServerError> {
        match self {
            MyError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// True when the connection is lost (and the client must be dropped).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, MyError::Io(_) | MyError::Protocol(_))
    }
}

impl fmt::Display for MyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MyError::Io(e) => write!(f, "{e}"),
            MyError::Server(e) => write!(f, "{e}"),
            MyError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for MyError {}

impl From<io::Error> for MyError {
    fn from(e: io::Error) -> Self {
        MyError::Io(e)
    }
}

impl From<ServerError> for MyError {
    fn from(e: ServerError) -> Self {
        MyError::Server(e)
    }
}
