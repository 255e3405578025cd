//! A small synchronous PostgreSQL client for Sluice plugins.
//!
//! Connectors speak their own protocols (DESIGN.md): the postgres plugins
//! carry this client, which speaks the PostgreSQL wire protocol over a
//! connection the connector's `net` grant allows, TLS through the host
//! (`SSLRequest`, then the host's handshake; no TLS library or key in the
//! plugin). Messages are built and parsed by `postgres-protocol`, the
//! sans-I/O half of rust-postgres; this crate adds the I/O, blocking the way
//! a plugin should (waiting does not count against `cpu`, and the host
//! interrupts a wait to stop, pause or swap: see
//! [`PgError::is_interrupted`]).
//!
//! What it speaks: startup with SCRAM-SHA-256, MD5 or clear-text passwords;
//! simple queries (rows as text); [`Pipeline`]s of prepared statements with
//! text parameters, run as one transaction; `COPY … FROM STDIN`, its input
//! sent whole or while it is made ([`CopyStream`]); logical
//! replication ([`Client::start_replication`], [`Replication`]) and the
//! messages of `pgoutput` ([`pgoutput`]).
//!
//! ```no_run
//! use sluice_postgres::{Client, ConnectOptions};
//!
//! # fn main() -> Result<(), sluice_postgres::PgError> {
//! let mut client = Client::connect(&ConnectOptions {
//!     addr: "127.0.0.1:5432".into(),
//!     user: "sluice".into(),
//!     password: Some("from a secret".into()),
//!     database: Some("app".into()),
//!     tls: None,
//!     application_name: "my-plugin".into(),
//!     replication: None,
//! })?;
//! let rows = client.simple_query("SELECT 1")?;
//! assert_eq!(rows[0][0].as_deref(), Some("1"));
//! # Ok(()) }
//! ```

mod client;
mod error;
pub mod pgoutput;
mod replication;

pub use client::{Client, ConnectOptions, CopyStream, Pipeline, Row};
pub use error::{DbError, PgError};
pub use replication::{Replication, format_lsn, parse_lsn, pg_time_to_unix_ms};

/// `name` as a quoted SQL identifier (`"my table"`), safe to splice into a
/// statement.
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `schema.table` or `table` as a quoted SQL name, each part quoted.
pub fn quote_table(name: &str) -> String {
    match name.split_once('.') {
        Some((schema, table)) => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        None => quote_ident(name),
    }
}

/// `text` as a quoted SQL string literal, safe to splice into a statement.
pub fn quote_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text)
}
