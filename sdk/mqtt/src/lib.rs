//! A small synchronous MQTT client for Sluice plugins.
//!
//! Connectors speak their own protocols (DESIGN.md): the MQTT plugins carry
//! this client, which speaks MQTT 3.1.1 or 5 (the packets encoded and
//! decoded by the `mqttbytes` codec) over a connection the connector's
//! `net` grant allows, TLS through the host. It blocks the way a plugin
//! should: waiting does not count against `cpu`, and the host interrupts a
//! wait to stop, pause or swap (see [`MqttError::is_interrupted`]).
//!
//! What it does, and what it leaves to the plugin:
//! - [`Client::connect`] sends `CONNECT` (a persistent session when
//!   `clean_start` is off, with MQTT 5's session expiry and receive
//!   maximum) and reads `CONNACK`: a refusal is [`MqttError::Refused`]
//!   with the server's reason.
//! - Packets are queued ([`Client::subscribe`], [`Client::publish`],
//!   [`Client::puback`]) and written together by [`Client::flush`]: a
//!   batch of publishes or acknowledgements is one write.
//! - [`Client::next`] reads the next packet, waiting at most as long as
//!   asked, and keeps the connection alive meanwhile (`PINGREQ` when
//!   nothing was written for half the keep-alive). A source acknowledges a
//!   message ([`Client::puback`]) when it chooses to: after the host has
//!   it stored.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_mqtt::{Client, ConnectOptions, Incoming, Qos, Version};
//!
//! # fn main() -> Result<(), sluice_mqtt::MqttError> {
//! let mut client = Client::connect(&ConnectOptions::new("127.0.0.1:1883", "my-plugin"))?;
//! client.subscribe(1, &["sensors/#".to_owned()], Qos::AtLeastOnce);
//! client.flush()?;
//! while let Some(packet) = client.next(Some(Duration::from_secs(1)))? {
//!     if let Incoming::Publish(m) = packet {
//!         // … keep m.payload, then, once it is safe:
//!         client.puback(m.pkid);
//!         client.flush()?;
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! It does not: speak QoS 2, topic aliases, enhanced authentication
//! (`AUTH`), or MQTT over WebSockets.

mod client;

pub use client::{Client, ConnectOptions, Incoming, Message, MqttError, Qos, Version};
