//! A small synchronous STOMP 1.2 client for Sluice plugins.
//!
//! Connectors speak their own protocols (DESIGN.md): the STOMP plugins
//! carry this client, which speaks STOMP 1.2 (the frames written and read
//! here, no codec crate) over a connection the connector's `net` grant
//! allows, TLS through the host. It blocks the way a plugin should:
//! waiting does not count against `cpu`, and the host interrupts a wait to
//! stop, pause or swap (see [`StompError::is_interrupted`]).
//!
//! What it does, and what it leaves to the plugin:
//! - [`Client::connect`] sends `CONNECT` (login, virtual host, heart-beats
//!   both ways) and reads `CONNECTED`: an `ERROR` instead is
//!   [`StompError::Refused`] with the server's message.
//! - Frames are queued ([`Client::subscribe`], [`Client::send`],
//!   [`Client::ack`]) and written together by [`Client::flush`]: a batch
//!   of sends or acknowledgements is one write.
//! - [`Client::next`] reads the next frame, waiting at most as long as
//!   asked, sending heart-beats meanwhile and taking a server that missed
//!   two of its own as gone.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_stomp::{Ack, Client, ConnectOptions, Incoming};
//!
//! # fn main() -> Result<(), sluice_stomp::StompError> {
//! let mut client = Client::connect(&ConnectOptions::new("127.0.0.1:61613"))?;
//! client.subscribe("0", "/queue/orders", Ack::ClientIndividual, &[]);
//! client.flush()?;
//! while let Some(frame) = client.next(Some(Duration::from_secs(1)))? {
//!     if let Incoming::Message(m) = frame {
//!         // … keep m.body, then, once it is safe:
//!         client.ack(m.header("ack").unwrap_or_default());
//!         client.flush()?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! It does not: speak STOMP 1.0 or 1.1, transactions (`BEGIN`, `COMMIT`,
//! `ABORT`), `NACK`, or STOMP over WebSockets.

mod client;
mod frame;

pub use client::{Ack, Client, ConnectOptions, Incoming, StompError};
pub use frame::Frame;
