//! The connection: startup and authentication, then queries.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};

use bytes::{BufMut, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use sluice_sdk::net::{Stream, TcpConn, TlsStream};

use crate::error::{DbError, PgError};

/// How to reach the server and who to be there.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`; the connector must be granted it in `net`.
    pub addr: String,
    /// The role to log in as.
    pub user: String,
    /// The password, if the server asks for one (usually from a secret:
    /// it is never printed, not even by `Debug`).
    pub password: Option<String>,
    /// The database; the server's default (the user's name) when `None`.
    pub database: Option<String>,
    /// Ask for TLS (`SSLRequest`) and check the server's certificate
    /// against this name; the host does the handshake.
    pub tls: Option<String>,
    /// Shown in `pg_stat_activity`.
    pub application_name: String,
    /// `Some("database")` for a logical replication connection.
    pub replication: Option<&'static str>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .field("application_name", &self.application_name)
            .field("replication", &self.replication)
            .finish()
    }
}

impl ConnectOptions {
    /// A failure to connect or log in as the error the host acts on: what
    /// to fix (a grant, a password, TLS) as an invalid config, a server
    /// that is away as retriable. Never shows the password.
    pub fn refused(&self, e: &PgError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let (addr, user) = (&self.addr, &self.user);
        let database = self.database.as_deref().unwrap_or(user);
        match e {
            PgError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            PgError::Db(db) if db.is_auth_error() => {
                let hint = if self.tls.is_none() && db.message.contains("no encryption") {
                    " (the server accepts only TLS: set tls = true, and grant its CA in [connector.grants.tls])"
                } else {
                    ""
                };
                Error::invalid_config(format!(
                    "logging in to {addr} as {user:?}, database {database:?}: {e}{hint}"
                ))
            }
            PgError::Db(db) if db.code == "3D000" => {
                Error::invalid_config(format!("connecting to {addr}: {e}"))
            }
            PgError::Db(db) if db.is_retriable() => {
                Error::retriable(format!("connecting to {addr}: {e}"))
            }
            PgError::Db(_) => Error::fatal(format!("connecting to {addr}: {e}")),
            PgError::Protocol(_) => Error::invalid_config(format!("connecting to {addr}: {e}")),
            PgError::Io(io)
                if self.tls.is_some() && io.kind() == io::ErrorKind::ConnectionAborted =>
            {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            PgError::Io(_) => Error::retriable(format!("cannot reach {addr}: {e}")),
        }
    }
}

/// A row of a simple query's result: each column's text, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// How much is read from the socket at once.
const READ_CHUNK: usize = 64 * 1024;

/// How much of a large request is written before reading what the server
/// has answered so far: a server whose answers are not read stops reading
/// too, and a long pipeline would then wait for ever.
const WRITE_CHUNK: usize = 64 * 1024;

/// A connection to a PostgreSQL server, ready for queries.
pub struct Client {
    stream: Stream,
    read: BytesMut,
    scratch: Vec<u8>,
    /// Statements prepared on this connection, by their SQL.
    prepared: HashMap<String, String>,
    next_statement: u64,
    /// The server's settings it reported (`server_version`, …).
    parameters: HashMap<String, String>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("stream", &self.stream)
            .field("prepared", &self.prepared.len())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and logs in: TLS first if asked (PostgreSQL's `SSLRequest`,
    /// then the host's TLS over the same connection), then the startup
    /// message and the password exchange the server asks for (SCRAM-SHA-256,
    /// MD5 or clear text; clear text only over TLS would be wise, and is
    /// the server's call).
    pub fn connect(options: &ConnectOptions) -> Result<Client, PgError> {
        let mut tcp = TcpConn::connect(&options.addr)?;
        let stream = match &options.tls {
            None => Stream::Plain(tcp),
            Some(server_name) => {
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                tcp.write_all(&request)?;
                tcp.flush()?;
                let mut answer = [0u8; 1];
                tcp.read_exact(&mut answer)?;
                match answer[0] {
                    b'S' => Stream::Tls(TlsStream::over(tcp, server_name)?),
                    b'N' => {
                        return Err(PgError::Protocol(format!(
                            "the server at {} does not accept TLS connections (ssl = off)",
                            options.addr
                        )));
                    }
                    other => {
                        return Err(PgError::Protocol(format!(
                            "the server at {} answered TLS with {other:#04x}: is it PostgreSQL?",
                            options.addr
                        )));
                    }
                }
            }
        };
        let mut client = Client {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0; READ_CHUNK],
            prepared: HashMap::new(),
            next_statement: 0,
            parameters: HashMap::new(),
        };
        client.startup(options)?;
        Ok(client)
    }

    fn startup(&mut self, options: &ConnectOptions) -> Result<(), PgError> {
        let mut params = vec![
            ("user", options.user.as_str()),
            ("client_encoding", "UTF8"),
            ("application_name", options.application_name.as_str()),
            // Timestamps as ISO 8601, whatever the server's default.
            ("DateStyle", "ISO"),
        ];
        if let Some(db) = &options.database {
            params.push(("database", db));
        }
        if let Some(r) = options.replication {
            params.push(("replication", r));
        }
        let mut out = BytesMut::new();
        frontend::startup_message(params, &mut out)?;
        self.send(&out)?;

        let password = || {
            options.password.as_deref().ok_or_else(|| {
                PgError::Protocol(format!(
                    "the server asks for a password for user {:?}, and the config has none",
                    options.user
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.next()? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let mut out = BytesMut::new();
                    frontend::password_message(password()?.as_bytes(), &mut out)?;
                    self.send(&out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash =
                        md5_hash(options.user.as_bytes(), password()?.as_bytes(), body.salt());
                    let mut out = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                    self.send(&out)?;
                }
                Message::AuthenticationSasl(body) => {
                    use fallible_iterator::FallibleIterator as _;
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next()? {
                        offered.push(m.to_owned());
                    }
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(PgError::Protocol(format!(
                            "the server offers only {offered:?} to log in; this client speaks SCRAM-SHA-256"
                        )));
                    }
                    // The host's TLS does not show the plugin the server's
                    // certificate, so no channel binding.
                    let s = sasl::ScramSha256::new(
                        password()?.as_bytes(),
                        sasl::ChannelBinding::unsupported(),
                    );
                    let mut out = BytesMut::new();
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, s.message(), &mut out)?;
                    self.send(&out)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        PgError::Protocol("SASL continue before SASL start".into())
                    })?;
                    s.update(body.data()).map_err(|e| {
                        PgError::Protocol(format!("the server's SCRAM answer: {e}"))
                    })?;
                    let mut out = BytesMut::new();
                    frontend::sasl_response(s.message(), &mut out)?;
                    self.send(&out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL final before SASL start".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        PgError::Protocol(format!(
                            "the server did not prove it knows the password ({e})"
                        ))
                    })?;
                }
                Message::BackendKeyData(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(body) => return Err(DbError::parse(&body)?.into()),
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationGssContinue(_)
                | Message::AuthenticationSspi => {
                    return Err(PgError::Protocol(
                        "the server asks for Kerberos, GSSAPI or SSPI to log in; this client speaks passwords (SCRAM-SHA-256, MD5)".into(),
                    ));
                }
                _ => return Err(unexpected("logging in")),
            }
        }
    }

    /// A setting the server reported at startup (`server_version`,
    /// `integer_datetimes`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Runs `sql` (one or more statements, `;`-separated) with the simple
    /// protocol, and returns the rows of all of them, as text.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        self.send(&out)?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            match self.next()? {
                Message::DataRow(row) => {
                    if failed.is_none() {
                        rows.push(text_row(&row)?);
                    }
                }
                Message::ErrorResponse(body) => failed = Some(DbError::parse(&body)?),
                Message::ReadyForQuery(_) => break,
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::CopyInResponse(_) => {
                    // A COPY FROM STDIN sent here by mistake: end it.
                    let mut out = BytesMut::new();
                    frontend::copy_fail("COPY is not supported by simple_query", &mut out)?;
                    self.send(&out)?;
                }
                _ => return Err(unexpected("a simple query")),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(rows),
        }
    }

    /// Starts a pipeline of prepared statements: sent together, run in one
    /// implicit transaction, answered together. See [`Pipeline`].
    pub fn pipeline(&mut self) -> Pipeline<'_> {
        Pipeline {
            client: self,
            out: BytesMut::new(),
            steps: Vec::new(),
            parsing: HashMap::new(),
            executes: 0,
        }
    }

    /// Runs `sql`, one or more statements whose `COPY … FROM STDIN`s take
    /// `inputs` in order (each in its COPY's format), in one round trip:
    /// the query and every input are sent together. A query of several
    /// statements and no `BEGIN`/`COMMIT` runs as one transaction.
    ///
    /// Sending the input before the server asks is safe: a server that
    /// failed before a COPY began ignores the input that follows.
    pub fn copy_in(&mut self, sql: &str, inputs: &[&[u8]]) -> Result<(), PgError> {
        let size: usize = inputs
            .iter()
            .map(|d| d.len() + d.len() / WRITE_CHUNK * 5 + 10)
            .sum();
        let mut out = BytesMut::with_capacity(sql.len() + 6 + size);
        frontend::query(sql, &mut out)?;
        for data in inputs {
            input_of(data, &mut out)?;
        }
        self.send(&out)?;
        let mut failed = None;
        loop {
            match self.next()? {
                Message::CopyInResponse(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => failed = Some(DbError::parse(&body)?),
                Message::ReadyForQuery(_) => break,
                _ => return Err(unexpected("a COPY")),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Reads the answers of `queries` queries sent together: the first
    /// error, if any, and whether the last left a transaction open.
    fn answers(&mut self, queries: usize, doing: &str) -> Result<(Option<DbError>, bool), PgError> {
        let (mut failed, mut open, mut left) = (None, false, queries);
        while left > 0 {
            match self.next()? {
                Message::CopyInResponse(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::ErrorResponse(body) => {
                    let e = DbError::parse(&body)?;
                    failed.get_or_insert(e);
                }
                Message::ReadyForQuery(body) => {
                    left -= 1;
                    open = body.status() != b'I';
                }
                _ => return Err(unexpected(doing)),
            }
        }
        Ok((failed, open))
    }

    /// Says goodbye (a `Terminate`): the server ends the session cleanly.
    pub fn close(mut self) -> Result<(), PgError> {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        self.send(&out)
    }

    /// Writes `bytes`, reading what the server answers meanwhile (so that a
    /// long request cannot wait for ever on a server waiting for us to
    /// read), and flushes.
    fn send(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        for chunk in bytes.chunks(WRITE_CHUNK) {
            self.stream.write_all(chunk)?;
            if bytes.len() > WRITE_CHUNK {
                self.read_ready()?;
            }
        }
        self.stream.flush()?;
        Ok(())
    }

    /// Waits for more from the server.
    fn read_more(&mut self) -> Result<(), PgError> {
        let n = self.stream.read(&mut self.scratch)?;
        if n == 0 {
            return Err(PgError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        self.read.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Takes what has arrived, without waiting.
    fn read_ready(&mut self) -> Result<(), PgError> {
        loop {
            match self.stream.read_ready(&mut self.scratch) {
                Ok(0) => return Ok(()),
                Ok(n) => self.read.extend_from_slice(&self.scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next message as its tag and body, unparsed (for messages
    /// `postgres-protocol` does not know, such as replication's
    /// `CopyBothResponse`); waiting for it if `wait`, else `None` when no
    /// whole message has arrived.
    pub(crate) fn raw_frame(&mut self, wait: bool) -> Result<Option<(u8, bytes::Bytes)>, PgError> {
        loop {
            if self.read.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.read[1], self.read[2], self.read[3], self.read[4]]);
                let total = 1 + len as usize;
                if len < 4 {
                    return Err(PgError::Protocol(format!("a message of length {len}")));
                }
                if self.read.len() >= total {
                    let frame = self.read.split_to(total).freeze();
                    return Ok(Some((frame[0], frame.slice(5..))));
                }
            }
            if wait {
                self.read_more()?;
            } else {
                let before = self.read.len();
                self.read_ready()?;
                if self.read.len() == before {
                    return Ok(None);
                }
            }
        }
    }

    /// Sends `bytes` as they are (whole messages).
    pub(crate) fn send_raw(&mut self, bytes: &[u8]) -> Result<(), PgError> {
        self.send(bytes)
    }

    /// The next message from the server, waiting for it. Notices and
    /// setting changes are taken here (notices go to the log).
    pub(crate) fn next(&mut self) -> Result<Message, PgError> {
        loop {
            match Message::parse(&mut self.read)? {
                Some(Message::NoticeResponse(body)) => {
                    use fallible_iterator::FallibleIterator as _;
                    let mut fields = body.fields();
                    while let Some(f) = fields.next()? {
                        if f.type_() == b'M' {
                            sluice_sdk::debug!(
                                "postgres notice: {}",
                                String::from_utf8_lossy(f.value_bytes())
                            );
                        }
                    }
                }
                Some(Message::ParameterStatus(body)) => {
                    self.parameters
                        .insert(body.name()?.to_owned(), body.value()?.to_owned());
                }
                Some(Message::NotificationResponse(_)) => {}
                Some(m) => return Ok(m),
                None => self.read_more()?,
            }
        }
    }
}

/// How much input a [`CopyStream`] gathers before it sends it. A batch
/// smaller than this goes in one write, as [`Client::copy_in`] sends it.
///
/// Why not less: a plugin's socket cannot turn off Nagle's algorithm
/// (`wasi:sockets` has no `TCP_NODELAY`), so a write smaller than a
/// segment while an earlier small one is unacknowledged waits for the
/// server's ACK, and a server in a COPY answers nothing that would carry
/// one: it comes when the server has read more than a segment since its
/// last, or after the delayed-ACK timer, 40 ms. Pieces of 16 KiB waited
/// so at every write here (a write of 1000 rows took 18 ms instead of
/// 6); pieces of two loopback segments and more are acknowledged as the
/// server reads them.
const PIECE: usize = 128 * 1024;

/// A `COPY … FROM STDIN` in one transaction, its input sent while it is
/// being made. It holds no borrow
/// of the client (the caller goes on using its own state between rows), so
/// each step takes the client it began on.
///
/// Sending input before the server asks for it is safe: a COPY that
/// failed (a row the server refused) makes the server ignore the input
/// that follows, and [`CopyStream::commit`] then rolls back and says why.
#[derive(Debug)]
#[must_use = "a COPY left open holds its connection: commit or cancel it"]
pub struct CopyStream {
    copy: String,
    input: Vec<u8>,
    /// Whether the COPY has begun (`BEGIN` and the COPY sent).
    begun: bool,
}

impl CopyStream {
    /// A `COPY … FROM STDIN` (`copy`) whose input is sent while it is
    /// being made, so that the server stores the first rows while the
    /// caller still makes the last: append rows to [`CopyStream::input`],
    /// call [`CopyStream::send_ready`] after each, and end with
    /// [`CopyStream::commit`] (or [`CopyStream::cancel`]).
    ///
    /// Nothing is sent yet. From the first send to the end, the connection
    /// belongs to the COPY: run nothing else on it.
    pub fn new(copy: &str) -> CopyStream {
        CopyStream {
            copy: copy.to_owned(),
            input: Vec::with_capacity(PIECE * 2),
            begun: false,
        }
    }

    /// The input not sent yet, in the COPY's format: append rows here.
    pub fn input(&mut self) -> &mut Vec<u8> {
        &mut self.input
    }

    /// Sends the input gathered so far, once there is enough of it.
    pub fn send_ready(&mut self, client: &mut Client) -> Result<(), PgError> {
        if self.input.len() < PIECE {
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(self.input.len() + self.copy.len() + 64);
        if !self.begun {
            frontend::query(&format!("BEGIN; {}", self.copy), &mut out)?;
            self.begun = true;
        }
        for chunk in self.input.chunks(WRITE_CHUNK) {
            frontend::CopyData::new(chunk)?.write(&mut out);
        }
        self.input.clear();
        client.send(&out)
    }

    /// Ends the input, runs `then` (statements whose own `COPY … FROM
    /// STDIN`s take `inputs` in order, as in [`Client::copy_in`]), and
    /// commits. If anything failed, nothing is kept: the transaction is
    /// rolled back and the first error returned (a refused row is its
    /// COPY's error, not the "transaction is aborted" of what followed).
    pub fn commit(self, client: &mut Client, then: &str, inputs: &[&[u8]]) -> Result<(), PgError> {
        let mut out = BytesMut::with_capacity(self.input.len() + then.len() + 64);
        if !self.begun {
            // All of it at once: one query, its own implicit transaction.
            frontend::query(&format!("{}; {then}", self.copy), &mut out)?;
            input_of(&self.input, &mut out)?;
        } else {
            input_of(&self.input, &mut out)?;
            frontend::query(&format!("{then}; COMMIT"), &mut out)?;
        }
        for data in inputs {
            input_of(data, &mut out)?;
        }
        client.send(&out)?;
        let queries = if self.begun { 2 } else { 1 };
        let (failed, open) = client.answers(queries, "a streamed COPY")?;
        if open {
            // Something failed before the COMMIT ran.
            client.simple_query("ROLLBACK")?;
        }
        match failed {
            Some(e) => Err(e.into()),
            None if open => Err(PgError::Protocol(
                "the transaction was still open after COMMIT".into(),
            )),
            None => Ok(()),
        }
    }

    /// Gives up: what was sent is rolled back, and the connection is ready
    /// for queries again.
    pub fn cancel(self, client: &mut Client) -> Result<(), PgError> {
        if !self.begun {
            return Ok(());
        }
        let mut out = BytesMut::new();
        frontend::copy_fail("cancelled by the client", &mut out)?;
        frontend::query("ROLLBACK", &mut out)?;
        client.send(&out)?;
        client.answers(2, "a cancelled COPY").map(drop)
    }
}

/// `data` as a COPY's input: `CopyData` messages, then `CopyDone`.
fn input_of(data: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
    for chunk in data.chunks(WRITE_CHUNK) {
        frontend::CopyData::new(chunk)?.write(out);
    }
    frontend::copy_done(out);
    Ok(())
}

/// What a pipeline expects back for each thing it sent.
#[derive(Debug)]
enum Step {
    /// A `Parse`, of the statement with this SQL and name.
    Parse(String, String),
    /// A `Bind` and `Execute`.
    Execute,
}

/// Statements sent together with the extended protocol and one `Sync`:
/// PostgreSQL runs them as one implicit transaction, committed at the
/// `Sync` if all of them succeed and rolled back if any fails. Statements
/// are prepared once per connection and then only bound: the SQL is
/// parsed and planned once.
///
/// ```no_run
/// # fn demo(client: &mut sluice_postgres::Client) -> Result<(), sluice_postgres::PgError> {
/// let mut p = client.pipeline();
/// p.execute("INSERT INTO t (a, b) VALUES ($1, $2)", [Some(&b"1"[..]), None])?;
/// p.execute("INSERT INTO t (a, b) VALUES ($1, $2)", [Some(&b"2"[..]), Some(&b"x"[..])])?;
/// let rows = p.run()?; // [1, 1]
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline<'c> {
    client: &'c mut Client,
    out: BytesMut,
    steps: Vec<Step>,
    /// Statements parsed by this pipeline, not yet confirmed.
    parsing: HashMap<String, String>,
    executes: usize,
}

impl Pipeline<'_> {
    /// Adds a run of `sql` with `params` (text, `None` for NULL; the
    /// server infers each parameter's type from where it is used). Returns
    /// the statement's index in this pipeline, which a failure names in
    /// [`DbError::statement`].
    pub fn execute<'a, I>(&mut self, sql: &str, params: I) -> Result<usize, PgError>
    where
        I: IntoIterator<Item = Option<&'a [u8]>>,
    {
        let name = match self
            .client
            .prepared
            .get(sql)
            .or_else(|| self.parsing.get(sql))
        {
            Some(name) => name.clone(),
            None => {
                let name = format!("sluice{}", self.client.next_statement);
                self.client.next_statement += 1;
                frontend::parse(&name, sql, std::iter::empty(), &mut self.out)?;
                self.parsing.insert(sql.to_owned(), name.clone());
                self.steps.push(Step::Parse(sql.to_owned(), name.clone()));
                name
            }
        };
        let bound = frontend::bind(
            "",
            &name,
            std::iter::empty(),
            params,
            |v, buf: &mut BytesMut| match v {
                Some(v) => {
                    buf.put_slice(v);
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            std::iter::empty(),
            &mut self.out,
        );
        match bound {
            Ok(()) => {}
            Err(frontend::BindError::Conversion(e)) => {
                return Err(PgError::Protocol(format!("binding a parameter: {e}")));
            }
            Err(frontend::BindError::Serialization(e)) => return Err(e.into()),
        }
        frontend::execute("", 0, &mut self.out)?;
        self.steps.push(Step::Execute);
        self.executes += 1;
        Ok(self.executes - 1)
    }

    /// How many statements were added.
    pub fn len(&self) -> usize {
        self.executes
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.executes == 0
    }

    /// Sends everything and a `Sync`, and reads the answers: the rows each
    /// statement affected, in order. A statement that fails rolls back the
    /// whole pipeline; its error names it ([`DbError::statement`]).
    pub fn run(mut self) -> Result<Vec<u64>, PgError> {
        frontend::sync(&mut self.out);
        let client = self.client;
        client.send(&self.out)?;
        let mut affected = Vec::with_capacity(self.executes);
        let mut failed: Option<DbError> = None;
        let mut steps = self.steps.into_iter();
        let mut step = steps.next();
        loop {
            let message = client.next()?;
            if failed.is_some() {
                // The server skips to the Sync after an error.
                if let Message::ReadyForQuery(_) = message {
                    break;
                }
                continue;
            }
            match (message, &step) {
                (Message::ParseComplete, Some(Step::Parse(sql, name))) => {
                    client.prepared.insert(sql.clone(), name.clone());
                    step = steps.next();
                }
                (Message::BindComplete | Message::DataRow(_), Some(Step::Execute)) => {}
                (Message::CommandComplete(body), Some(Step::Execute)) => {
                    affected.push(rows_of(body.tag()?));
                    step = steps.next();
                }
                (Message::EmptyQueryResponse, Some(Step::Execute)) => {
                    affected.push(0);
                    step = steps.next();
                }
                (Message::ErrorResponse(body), _) => {
                    let mut e = DbError::parse(&body)?;
                    e.statement = Some(affected.len());
                    failed = Some(e);
                }
                (Message::ReadyForQuery(_), None) => break,
                _ => return Err(unexpected("a pipeline")),
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(affected),
        }
    }
}

fn unexpected(doing: &str) -> PgError {
    PgError::Protocol(format!(
        "the server sent a message out of turn during {doing}"
    ))
}

/// The row count of a command tag (`INSERT 0 5`, `UPDATE 3`, `COPY 10`).
fn rows_of(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn text_row(row: &postgres_protocol::message::backend::DataRowBody) -> Result<Row, PgError> {
    use fallible_iterator::FallibleIterator as _;
    let buf = row.buffer();
    let mut out = Vec::new();
    let mut ranges = row.ranges();
    while let Some(r) = ranges.next()? {
        out.push(match r {
            Some(r) => Some(
                std::str::from_utf8(&buf[r])
                    .map_err(|_| PgError::Protocol("a column's text is not UTF-8".into()))?
                    .to_owned(),
            ),
            None => None,
        });
    }
    Ok(out)
}
