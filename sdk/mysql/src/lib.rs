//! A small synchronous MariaDB (and MySQL) client for Sluice plugins.
//!
//! Connectors speak their own protocols (DESIGN.md): `mariadb-sink` carries
//! this client, which speaks the MariaDB/MySQL client/server protocol over a
//! connection the connector's `net` grant allows, blocking the way a plugin
//! should (waiting does not count against `cpu`, and the host interrupts a
//! wait to stop, pause or swap: see [`MyError::is_interrupted`]).
//!
//! What it speaks: the v10 handshake with `mysql_native_password` (MariaDB's
//! default for `CREATE USER … IDENTIFIED BY`), and text queries
//! ([`Client::query`]: rows as text, or how many rows a statement touched).
//! Not (yet): TLS, `caching_sha2_password` or `ed25519` logins, prepared
//! statements.
//!
//! ```no_run
//! use sluice_mysql::{Client, ConnectOptions};
//!
//! # fn main() -> Result<(), sluice_mysql::MyError> {
//! let mut client = Client::connect(&ConnectOptions {
//!     addr: "127.0.0.1:3306".into(),
//!     user: "sluice".into(),
//!     password: Some("from a secret".into()),
//!     database: Some("app".into()),
//! })?;
//! let rows = client.query("SELECT 1")?.rows;
//! assert_eq!(rows[0][0].as_deref(), Some("1"));
//! # Ok(()) }
//! ```

mod error;

use std::fmt;
use std::io::{self, BufReader, Read as _, Write as _};

use sha1::{Digest as _, Sha1};
use sluice_sdk::net::TcpConn;

pub use error::{MyError, ServerError};

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// `host:port`.
    pub addr: String,
    /// The user to log in as.
    pub user: String,
    /// Its password (from a secret); never shown by `Debug`.
    pub password: Option<String>,
    /// The database to use.
    pub database: Option<String>,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<secret>"))
            .field("database", &self.database)
            .finish()
    }
}

impl ConnectOptions {
    /// A failure to connect or log in as the error the host acts on: what
    /// to fix (a grant, a password, a database) as an invalid config, a
    /// server that is away as retriable. Never shows the password.
    pub fn refused(&self, e: &MyError) -> sluice_sdk::Error {
        use sluice_sdk::Error;
        let (addr, user) = (&self.addr, &self.user);
        match e {
            MyError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            MyError::Server(s) if s.is_auth_error() => Error::invalid_config(format!(
                "logging in to {addr} as {user:?}, database {:?}: {e}",
                self.database.as_deref().unwrap_or("")
            )),
            MyError::Server(s) if s.is_retriable() => {
                Error::retriable(format!("connecting to {addr}: {e}"))
            }
            MyError::Server(_) => Error::fatal(format!("connecting to {addr}: {e}")),
            MyError::Protocol(_) => Error::invalid_config(format!("connecting to {addr}: {e}")),
            MyError::Io(_) => Error::retriable(format!("connecting to {addr}: {e}")),
        }
    }
}

/// What a query gave back.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueryResult {
    /// Its rows, each column as text (`None`: NULL).
    pub rows: Vec<Vec<Option<String>>>,
    /// Rows a write touched (`INSERT … ON DUPLICATE KEY UPDATE` counts an
    /// update twice, as the server does).
    pub affected: u64,
}

/// Capability flags (the protocol's `CLIENT_*`).
mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const LONG_FLAG: u32 = 4;
    pub const CONNECT_WITH_DB: u32 = 8;
    pub const PROTOCOL_41: u32 = 0x200;
    pub const TRANSACTIONS: u32 = 0x2000;
    pub const SECURE_CONNECTION: u32 = 0x8000;
    pub const MULTI_RESULTS: u32 = 0x20000;
    pub const PLUGIN_AUTH: u32 = 0x80000;
}

/// `utf8mb4_general_ci`.
const UTF8MB4: u8 = 45;
/// The most a packet carries; a longer payload goes on in the next.
const MAX_PACKET: usize = 0xFF_FFFF;
/// More results follow (in an OK or EOF packet's status).
const MORE_RESULTS: u16 = 0x0008;

/// A connection to a MariaDB server, logged in.
pub struct Client {
    stream: BufReader<TcpConn>,
    seq: u8,
    server_version: String,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server_version", &self.server_version)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and logs in.
    pub fn connect(options: &ConnectOptions) -> Result<Client, MyError> {
        let tcp = TcpConn::connect(&options.addr)?;
        let mut client = Client {
            stream: BufReader::with_capacity(64 * 1024, tcp),
            seq: 0,
            server_version: String::new(),
        };
        client.handshake(options)?;
        Ok(client)
    }

    /// The version the server says it is (`10.11.6-MariaDB-0+deb12u1`).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn handshake(&mut self, options: &ConnectOptions) -> Result<(), MyError> {
        let hello = self.read_packet()?;
        if hello.first() == Some(&0xFF) {
            return Err(ServerError::parse(&hello).into());
        }
        let mut r = Reader(&hello);
        let version = r.u8()?;
        if version != 10 {
            return Err(MyError::Protocol(format!(
                "the server at {} speaks handshake version {version}, not 10: is it MariaDB or MySQL?",
                options.addr
            )));
        }
        self.server_version = r.cstr()?.to_owned();
        r.take(4)?; // connection id
        let mut scramble = r.take(8)?.to_vec();
        r.take(1)?;
        let caps_low = u32::from(r.u16()?);
        r.take(3)?; // character set, status
        let caps = caps_low | u32::from(r.u16()?) << 16;
        let data_len = usize::from(r.u8()?);
        r.take(10)?;
        if caps & cap::SECURE_CONNECTION != 0 {
            let more = data_len.saturating_sub(8).max(13);
            let part = r.take(more)?;
            scramble.extend_from_slice(&part[..part.len() - 1]);
        }
        let plugin = if caps & cap::PLUGIN_AUTH != 0 {
            r.cstr().unwrap_or("mysql_native_password").to_owned()
        } else {
            "mysql_native_password".to_owned()
        };
        if caps & cap::PROTOCOL_41 == 0 {
            return Err(MyError::Protocol(
                "the server does not speak protocol 4.1".into(),
            ));
        }

        let password = options.password.as_deref().unwrap_or("");
        let mut ours = cap::LONG_PASSWORD
            | cap::LONG_FLAG
            | cap::PROTOCOL_41
            | cap::TRANSACTIONS
            | cap::SECURE_CONNECTION
            | cap::MULTI_RESULTS
            | cap::PLUGIN_AUTH;
        if options.database.is_some() {
            ours |= cap::CONNECT_WITH_DB;
        }
        let auth = auth_response(&plugin, password, &scramble)?;
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&ours.to_le_bytes());
        out.extend_from_slice(&(MAX_PACKET as u32).to_le_bytes());
        out.push(UTF8MB4);
        out.extend_from_slice(&[0; 23]);
        out.extend_from_slice(options.user.as_bytes());
        out.push(0);
        out.push(auth.len() as u8);
        out.extend_from_slice(&auth);
        if let Some(db) = &options.database {
            out.extend_from_slice(db.as_bytes());
            out.push(0);
        }
        out.extend_from_slice(plugin.as_bytes());
        out.push(0);
        self.write_packet(&out)?;

        loop {
            let answer = self.read_packet()?;
            match answer.first() {
                Some(0x00) => return Ok(()),
                Some(0xFF) => return Err(ServerError::parse(&answer).into()),
                // Switch to another login method, with new data.
                Some(0xFE) => {
                    let mut r = Reader(&answer[1..]);
                    let plugin = r.cstr()?.to_owned();
                    let data = r.0.strip_suffix(&[0]).unwrap_or(r.0);
                    let auth = auth_response(&plugin, password, data)?;
                    self.write_packet(&auth)?;
                }
                _ => {
                    return Err(MyError::Protocol(
                        "an unexpected answer while logging in".into(),
                    ));
                }
            }
        }
    }

    /// Runs one statement (text protocol): its rows, or how many rows it
    /// touched.
    pub fn query(&mut self, sql: &str) -> Result<QueryResult, MyError> {
        self.seq = 0;
        let mut command = Vec::with_capacity(sql.len() + 1);
        command.push(0x03);
        command.extend_from_slice(sql.as_bytes());
        self.write_packet(&command)?;
        let mut result = QueryResult::default();
        loop {
            let first = self.read_packet()?;
            let status = match first.first() {
                Some(0x00) => {
                    let mut r = Reader(&first[1..]);
                    result.affected += r.lenenc()?;
                    r.lenenc()?; // last insert id
                    r.u16()?
                }
                Some(0xFF) => return Err(ServerError::parse(&first).into()),
                Some(0xFB) => {
                    return Err(MyError::Protocol(
                        "the server asks for a local file (LOAD DATA LOCAL), which this client never sends".into(),
                    ));
                }
                _ => {
                    let columns = Reader(&first).lenenc()?;
                    for _ in 0..columns {
                        self.read_packet()?;
                    }
                    let eof = self.read_packet()?;
                    if !is_eof(&eof) {
                        return Err(MyError::Protocol(
                            "no EOF after the column definitions".into(),
                        ));
                    }
                    loop {
                        let packet = self.read_packet()?;
                        if is_eof(&packet) {
                            let mut r = Reader(&packet[1..]);
                            r.u16()?; // warnings
                            break r.u16()?;
                        }
                        if packet.first() == Some(&0xFF) {
                            return Err(ServerError::parse(&packet).into());
                        }
                        let mut r = Reader(&packet);
                        let mut row = Vec::with_capacity(columns as usize);
                        for _ in 0..columns {
                            row.push(r.lenenc_text()?);
                        }
                        result.rows.push(row);
                    }
                }
            };
            if status & MORE_RESULTS == 0 {
                return Ok(result);
            }
        }
    }

    /// Says goodbye (`COM_QUIT`) and closes the connection.
    pub fn close(mut self) -> Result<(), MyError> {
        self.seq = 0;
        self.write_packet(&[0x01])?;
        Ok(())
    }

    /// Fills `buf`. Unlike `read_exact`, a wait the host interrupts (to
    /// stop, pause or swap) ends the read with that error: the interrupt
    /// stays raised, and retrying would spin.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<(), MyError> {
        let mut at = 0;
        while at < buf.len() {
            match self.stream.read(&mut buf[at..])? {
                0 => {
                    return Err(MyError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )));
                }
                n => at += n,
            }
        }
        Ok(())
    }

    fn read_packet(&mut self) -> Result<Vec<u8>, MyError> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 4];
            self.read_full(&mut header)?;
            let len =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            self.seq = header[3].wrapping_add(1);
            let at = payload.len();
            payload.resize(at + len, 0);
            self.read_full(&mut payload[at..])?;
            if len < MAX_PACKET {
                return Ok(payload);
            }
        }
    }

    fn write_packet(&mut self, payload: &[u8]) -> Result<(), MyError> {
        let tcp = self.stream.get_mut();
        let mut chunks = payload.chunks(MAX_PACKET).peekable();
        let mut last_full = payload.is_empty();
        let mut frame = Vec::with_capacity(payload.len().min(MAX_PACKET) + 4);
        while let Some(chunk) = chunks.next() {
            frame.clear();
            frame.extend_from_slice(&(chunk.len() as u32).to_le_bytes()[..3]);
            frame.push(self.seq);
            frame.extend_from_slice(chunk);
            self.seq = self.seq.wrapping_add(1);
            write_full(tcp, &frame)?;
            last_full = chunks.peek().is_none() && chunk.len() == MAX_PACKET;
        }
        if last_full {
            // A payload of a whole number of full packets ends with an
            // empty one (and an empty payload is one empty packet).
            write_full(tcp, &[0, 0, 0, self.seq])?;
            self.seq = self.seq.wrapping_add(1);
        }
        tcp.flush()?;
        Ok(())
    }
}

/// Writes all of `buf`; an interrupted wait ends it (see
/// [`Client::read_full`]).
fn write_full(tcp: &mut TcpConn, mut buf: &[u8]) -> Result<(), MyError> {
    while !buf.is_empty() {
        match tcp.write(buf)? {
            0 => {
                return Err(MyError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection takes no more",
                )));
            }
            n => buf = &buf[n..],
        }
    }
    Ok(())
}

fn is_eof(packet: &[u8]) -> bool {
    packet.first() == Some(&0xFE) && packet.len() < 9
}

/// The login data `plugin` wants for `password`.
fn auth_response(plugin: &str, password: &str, scramble: &[u8]) -> Result<Vec<u8>, MyError> {
    match plugin {
        "mysql_native_password" => Ok(native_password(password, scramble)),
        other => Err(MyError::Protocol(format!(
            "the server asks to log in with {other}; this client speaks mysql_native_password \
             (ALTER USER … IDENTIFIED VIA mysql_native_password USING PASSWORD('…'))"
        ))),
    }
}

/// `SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password)))`.
fn native_password(password: &str, scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let once = Sha1::digest(password.as_bytes());
    let twice = Sha1::digest(once);
    let mut salted = Sha1::new();
    salted.update(&scramble[..scramble.len().min(20)]);
    salted.update(twice);
    let salted = salted.finalize();
    once.iter().zip(salted.iter()).map(|(a, b)| a ^ b).collect()
}

/// `text` as a quoted string literal, safe to splice into a statement
/// (backslash escapes on, as the sink's session sets them).
pub fn quote_literal(text: &str, out: &mut String) {
    out.reserve(text.len() + 2);
    out.push('\'');
    for c in text.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x1a' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

/// `name` as a quoted identifier (`` `my table` ``).
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `database.table` or `table` as a quoted name, each part quoted.
pub fn quote_table(name: &str) -> String {
    match name.split_once('.') {
        Some((db, table)) => format!("{}.{}", quote_ident(db), quote_ident(table)),
        None => quote_ident(name),
    }
}

/// Reads a packet's fields.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MyError> {
        if self.0.len() < n {
            return Err(MyError::Protocol("a packet ends early".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, MyError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, MyError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn cstr(&mut self) -> Result<&'a str, MyError> {
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| MyError::Protocol("a string without its end".into()))?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| MyError::Protocol("a string that is not UTF-8".into()))?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }

    /// A length-encoded integer.
    fn lenenc(&mut self) -> Result<u64, MyError> {
        let first = self.u8()?;
        let bytes = match first {
            0xFC => 2,
            0xFD => 3,
            0xFE => 8,
            n => return Ok(u64::from(n)),
        };
        let mut v = [0u8; 8];
        v[..bytes].copy_from_slice(self.take(bytes)?);
        Ok(u64::from_le_bytes(v))
    }

    /// A length-encoded string, or NULL (`0xFB`).
    fn lenenc_text(&mut self) -> Result<Option<String>, MyError> {
        if self.0.first() == Some(&0xFB) {
            self.0 = &self.0[1..];
            return Ok(None);
        }
        let len = self.lenenc()? as usize;
        Ok(Some(String::from_utf8_lossy(self.take(len)?).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_password_matches_the_servers_formula() {
        let scramble = b"01234567890123456789";
        let got = native_password("secret", scramble);
        let once = Sha1::digest(b"secret");
        let twice = Sha1::digest(once);
        // The server checks: SHA1(scramble + stored) XOR reply == once,
        // where stored = SHA1(SHA1(password)).
        let mut s = Sha1::new();
        s.update(scramble);
        s.update(twice);
        let mask = s.finalize();
        let back: Vec<u8> = got.iter().zip(mask.iter()).map(|(a, b)| a ^ b).collect();
        assert_eq!(back, once.to_vec());
        assert!(native_password("", scramble).is_empty());
    }

    #[test]
    fn literals_and_names_are_quoted() {
        let mut s = String::new();
        quote_literal("it's a \\ test\n", &mut s);
        assert_eq!(s, r"'it\'s a \\ test\n'");
        assert_eq!(quote_table("db.my`t"), "`db`.`my``t`");
    }

    #[test]
    fn length_encoded_integers_and_strings() {
        let mut r = Reader(&[0xFC, 0x10, 0x01, 0x03, b'a', b'b', b'c', 0xFB]);
        assert_eq!(r.lenenc().unwrap(), 0x110);
        assert_eq!(r.lenenc_text().unwrap().as_deref(), Some("abc"));
        assert_eq!(r.lenenc_text().unwrap(), None);
    }
}
