//! A small synchronous Redis client for Sluice plugins.
//!
//! Connectors speak their own protocols (DESIGN.md): the redis plugins carry
//! this client, which speaks RESP2 over a connection the connector's `net`
//! grant allows, TLS through the host (no TLS library or key in the
//! plugin). It blocks the way a plugin should: waiting does not count
//! against `cpu`, and the host interrupts a wait to stop, pause or swap
//! (see [`RedisError::is_interrupted`]).
//!
//! What it speaks: `AUTH` (a password, or a user and password for ACL
//! users), `SELECT`, `CLIENT SETNAME`; any command, alone
//! ([`Client::query`]) or many written at once and answered in order
//! ([`Client::run`], [`Commands`]), which is also how a `MULTI … EXEC`
//! transaction goes in one round trip.
//!
//! ```no_run
//! use sluice_redis::{Client, Commands, ConnectOptions, Value};
//!
//! # fn main() -> Result<(), sluice_redis::RedisError> {
//! let mut client = Client::connect(&ConnectOptions {
//!     addr: "127.0.0.1:6379".into(),
//!     user: None,
//!     password: Some("from a secret".into()),
//!     db: 0,
//!     tls: None,
//!     client_name: "my-plugin".into(),
//! })?;
//! let mut commands = Commands::default();
//! commands.push(&["SET", "a", "1"]);
//! commands.push(&["GET", "a"]);
//! let replies = client.run(&commands)?;
//! assert_eq!(replies[1], Value::Bulk(b"1".to_vec()));
//! # Ok(()) }
//! ```

mod client;
mod resp;

pub use client::{Client, ConnectOptions, RedisError};
pub use resp::{Commands, Value};
