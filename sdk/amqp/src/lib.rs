//! A small synchronous AMQP 0-9-1 client for Sluice plugins (RabbitMQ).
//!
//! Connectors speak their own protocols (DESIGN.md): the RabbitMQ plugins
//! carry this client, which writes and reads the AMQP 0-9-1 frames it
//! needs itself (`amq-protocol` does not build for `wasm32-wasip2`: its
//! I/O layer wants host file descriptors) over a connection the
//! connector's `net` grant allows, TLS through the host. It blocks the way
//! a plugin should: waiting does not count against `cpu`, and the host
//! interrupts a wait to stop, pause or swap (see
//! [`AmqpError::is_interrupted`]).
//!
//! What it speaks: `connection` (the handshake with `PLAIN`, tune with
//! heartbeats and frame size, open, close), one `channel`, `queue.declare`,
//! `basic.qos`, `basic.consume`, `basic.deliver`, `basic.ack`,
//! `basic.publish` (content split into frames), `basic.return`,
//! `confirm.select` and the confirms (`basic.ack`/`basic.nack` from the
//! server). Field tables with every type RabbitMQ writes.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_amqp::{Client, ConnectOptions, Incoming};
//!
//! # fn main() -> Result<(), sluice_amqp::AmqpError> {
//! let mut client = Client::connect(&ConnectOptions::new("127.0.0.1:5672"))?;
//! client.qos(100)?;
//! client.consume("orders", "sluice")?;
//! while let Some(i) = client.next(Some(Duration::from_secs(1)))? {
//!     if let Incoming::Delivery(d) = i {
//!         // … keep d.body, then, once it is safe:
//!         client.ack(d.delivery_tag, true);
//!         client.flush()?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! It does not: open more than one channel, speak transactions
//! (`tx.select`), `basic.get`, `basic.reject`/`basic.nack` from the client,
//! exchange or binding declarations, or other login mechanisms than
//! `PLAIN` (`EXTERNAL` with a client certificate would come with TLS
//! client identities).

mod client;
mod frame;

pub use client::{AmqpError, Client, ConnectOptions, Delivery, Incoming};
pub use frame::{Properties, Table, Value};
