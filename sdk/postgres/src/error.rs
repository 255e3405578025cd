//! What can go wrong talking to PostgreSQL, sorted by what a connector does
//! about it.

use std::fmt;
use std::io;

use postgres_protocol::message::backend::ErrorResponseBody;

/// An error from the server: its `ErrorResponse`, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`.
    pub severity: String,
    /// The SQLSTATE, e.g. `23502` (not-null violation).
    pub code: String,
    /// The primary message.
    pub message: String,
    /// A second line of detail, if the server gave one.
    pub detail: Option<String>,
    /// The server's suggestion, if it gave one.
    pub hint: Option<String>,
    /// Where it happened (a COPY line, a PL/pgSQL call).
    pub where_: Option<String>,
    /// The table, for errors tied to one.
    pub table: Option<String>,
    /// The column, for errors tied to one.
    pub column: Option<String>,
    /// In a pipeline: the index of the statement that failed (see
    /// [`Pipeline::execute`](crate::Pipeline::execute)).
    pub statement: Option<usize>,
}

impl DbError {
    pub(crate) fn parse(body: &ErrorResponseBody) -> io::Result<DbError> {
        use fallible_iterator::FallibleIterator as _;
        let mut e = DbError::default();
        let mut fields = body.fields();
        while let Some(f) = fields.next()? {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                b'W' => e.where_ = Some(v),
                b't' => e.table = Some(v),
                b'c' => e.column = Some(v),
                _ => {}
            }
        }
        Ok(e)
    }

    /// True for a fault that passes: the connection or the server went
    /// away, a serialization failure or a deadlock (the transaction is
    /// rolled back and can be tried again), the server out of resources.
    pub fn is_retriable(&self) -> bool {
        let c = self.code.as_str();
        c.starts_with("08") // connection exception
            || c.starts_with("53") // insufficient resources (disk full, too many connections)
            || c.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
            || c == "40001" // serialization failure
            || c == "40P01" // deadlock detected
            || c == "55P03" // lock not available
    }

    /// True for an error a row causes on its own merits: a value the column
    /// rejects, a constraint it breaks.
    pub fn is_data_error(&self) -> bool {
        let c = self.code.as_str();
        c.starts_with("22") // data exception: bad text for the type, out of range…
            || (c.starts_with("23") && c != "23000") // integrity: not null, unique, check, foreign key
            || c == "42804" // datatype mismatch
    }

    /// True when the server refused who we said we are.
    pub fn is_auth_error(&self) -> bool {
        self.code.starts_with("28")
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

/// An error talking to PostgreSQL.
#[derive(Debug)]
pub enum PgError {
    /// The connection failed or went away (or the host interrupted a
    /// wait: see [`PgError::is_interrupted`]).
    Io(io::Error),
    /// The server said no (boxed: the other kinds are small).
    Db(Box<DbError>),
    /// The server said something this client does not understand, or
    /// asked for what the connector was not given (a password).
    Protocol(String),
}

impl PgError {
    /// True when the host interrupted a wait (to stop, pause or swap).
    pub fn is_interrupted(&self) -> bool {
        matches!(self, PgError::Io(e) if e.kind() == io::ErrorKind::Interrupted)
    }

    /// True when the connector was not granted the server's address.
    pub fn is_denied(&self) -> bool {
        matches!(self, PgError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied)
    }

    /// The server's error, if it was one.
    pub fn db(&self) -> Option<&DbError> {
        match self {
            PgError::Db(e) => Some(&**e),
            _ => None,
        }
    }

    /// True when the connection is lost (and the client must be dropped):
    /// I/O, a protocol error, or a `FATAL` from the server.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            PgError::Io(_) | PgError::Protocol(_) => true,
            PgError::Db(e) => e.severity == "FATAL" || e.severity == "PANIC",
        }
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Io(e) => write!(f, "{e}"),
            PgError::Db(e) => write!(f, "{e}"),
            PgError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for PgError {}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> Self {
        PgError::Io(e)
    }
}

impl From<DbError> for PgError {
    fn from(e: DbError) -> Self {
        PgError::Db(Box::new(e))
    }
}
