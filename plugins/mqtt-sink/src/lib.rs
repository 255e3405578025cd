//! `mqtt-sink`: publishes records to an MQTT broker, speaking MQTT 3.1.1
//! or 5 itself (`sluice-mqtt`) over the connection its `net` grant allows.
//!
//! - **A message a record**: the payload is the record's value, the topic a
//!   template over the record (`"devices/{key}"`), QoS 0 or 1, retained if
//!   asked.
//! - **Written when acknowledged.** At QoS 1 a batch's publishes go out in
//!   a window of `max_inflight` (lowered to the broker's receive maximum),
//!   and `write` returns once the broker acknowledged every one of them;
//!   the host commits only after that. A connection lost meanwhile is made
//!   again (said once, with backoff) and the publishes not acknowledged
//!   are sent again: at least once, so a consumer can see a message twice
//!   after an outage or a crash. At QoS 0 a batch is written once it is on
//!   the wire: at most once.
//! - **Refused on its merits**: a record whose topic cannot be made (no
//!   key for `{key}`, a wildcard in it) or whose message cannot be encoded
//!   is dead-lettered with the reason; in MQTT 5 so is a publish the
//!   broker refuses (`PUBACK` with a failure reason, e.g. not authorised
//!   for the topic). MQTT 3.1.1 has no way to refuse a publish: a broker
//!   drops what its ACL forbids, and says nothing.
//! - A wrong password or an ungranted address fails at `open` with what to
//!   fix, the password in no message.
//!
//! It does not: publish at QoS 2, set MQTT 5 properties (content type,
//! expiry, user properties), or keep a session across restarts (each
//! connection starts clean: nothing of the sink's is left on the broker).

mod config;

use std::collections::HashMap;
use std::time::Duration;

use sluice_mqtt::{Client, ConnectOptions, Incoming, MqttError, Qos};
use sluice_sdk::outage::Outage;
use sluice_sdk::template::Template;
use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

pub use config::Config;

/// Where a record of the batch being written stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not published on this connection yet.
    No,
    /// Published, its acknowledgement awaited.
    Awaiting,
    /// Acknowledged, published at QoS 0, or refused.
    Done,
}

/// The sink's state.
#[derive(Debug)]
pub struct MqttSink {
    config: Config,
    topic: Template,
    qos: Qos,
    options: ConnectOptions,
    client: Option<Client>,
    outage: Outage,
    /// The packet ids in flight, and the batch record each carries.
    inflight: HashMap<u16, usize>,
    /// The last packet id given out.
    last_pkid: u16,
    /// A topic rendered.
    scratch: Vec<u8>,
}

impl MqttSink {
    /// Connects if there is no connection, waiting out a broker that is
    /// away (said once).
    fn connect(&mut self) -> Result<(), MqttError> {
        while self.client.is_none() {
            match Client::connect(&self.options) {
                Ok(client) => {
                    self.outage.back();
                    self.client = Some(client);
                }
                Err(e) if e.is_interrupted() || !e.is_connection_lost() => return Err(e),
                Err(e) => {
                    self.outage.went_away(&e.to_string());
                    self.outage.wait(None);
                    if sluice_sdk::interrupted() {
                        return Err(MqttError::Io(std::io::ErrorKind::Interrupted.into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// A packet id not in flight.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// Reads one packet (waiting up to twice the keep-alive: a broker
    /// silent that long is gone) and marks what it acknowledges.
    fn take_ack(&mut self, state: &mut [Sent], rejects: &mut Rejects) -> Result<(), MqttError> {
        let wait = Duration::from_secs(self.config.keep_alive_s.max(5) * 2);
        let client = self.client.as_mut().expect("connected");
        let packet = match client.next(None)? {
            Some(packet) => Some(packet),
            None => {
                // About to wait: a ping makes our side acknowledge what
                // the broker sent, so it sends its held-back PUBACKs now
                // (see sluice_mqtt::Client::ping).
                client.ping();
                client.flush()?;
                client.next(Some(wait))?
            }
        };
        match packet {
            Some(Incoming::PubAck { pkid, refused }) => {
                if let Some(i) = self.inflight.remove(&pkid) {
                    state[i] = Sent::Done;
                    if let Some(why) = refused {
                        rejects.reject(i, format!("the broker refused the publish: {why}"));
                    }
                }
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(MqttError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the broker within {wait:?}"),
            ))),
        }
    }

    /// Publishes what of the batch is not done, on this connection, and
    /// waits for the acknowledgements.
    fn try_write(
        &mut self,
        origin: &Origin,
        batch: &Batch<'_>,
        state: &mut [Sent],
        rejects: &mut Rejects,
    ) -> Result<(), MqttError> {
        // Not called for a keep-alive period (no records): the broker may
        // have given the connection up; a new one, quietly.
        if self.client.as_ref().is_some_and(Client::is_stale) {
            self.client = None;
            self.inflight.clear();
        }
        self.connect()?;
        let window = {
            let client = self.client.as_ref().expect("connected");
            usize::from(
                self.config
                    .max_inflight
                    .min(client.receive_maximum())
                    .max(1),
            )
        };
        for (i, r) in batch.iter().enumerate() {
            if state[i] != Sent::No {
                continue;
            }
            if self.inflight.len() >= window {
                // Down to half the window before sending more: publishes
                // go out in bursts, not one per acknowledgement (a small
                // write waits on Nagle's algorithm, see sluice_sdk::net).
                self.client.as_mut().expect("connected").flush()?;
                while self.inflight.len() > window / 2 {
                    self.take_ack(state, rejects)?;
                }
            }
            let offset = origin.first_offset + i as u64;
            if self
                .topic
                .render(origin, offset, r.key, &mut self.scratch)
                .is_none()
            {
                rejects.reject(
                    i,
                    "a record without a key, and the topic template uses {key}",
                );
                state[i] = Sent::Done;
                continue;
            }
            let pkid = match self.qos {
                Qos::AtLeastOnce => self.next_pkid(),
                Qos::AtMostOnce => 0,
            };
            let client = self.client.as_mut().expect("connected");
            match client.publish(&self.scratch, r.value, self.qos, pkid, self.config.retain) {
                Err(why) => {
                    rejects.reject(i, why);
                    state[i] = Sent::Done;
                }
                Ok(()) if self.qos == Qos::AtMostOnce => state[i] = Sent::Done,
                Ok(()) => {
                    self.inflight.insert(pkid, i);
                    state[i] = Sent::Awaiting;
                }
            }
            if client.queued() >= 128 * 1024 {
                client.flush()?;
            }
        }
        self.client.as_mut().expect("connected").flush()?;
        while !self.inflight.is_empty() {
            self.take_ack(state, rejects)?;
        }
        Ok(())
    }
}

impl Sink for MqttSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        let topic = Template::parse("topic", &config.topic).map_err(Error::invalid_config)?;
        let qos = match config.qos {
            0 => Qos::AtMostOnce,
            1 => Qos::AtLeastOnce,
            n => {
                return Err(Error::invalid_config(format!(
                    "qos = {n}: the sink publishes at 0 or 1"
                )));
            }
        };
        let mut options =
            ConnectOptions::for_instance(&config.addr, config.client_id.as_deref(), ctx);
        options.tls = sluice_sdk::net::tls_server_name(
            config.tls,
            config.server_name.as_deref(),
            &config.addr,
        );
        options.version = config.protocol;
        options.user = config.user.clone();
        options.password = config.password.clone();
        options.clean_start = true;
        options.session_expiry = 0;
        options.keep_alive = Duration::from_secs(config.keep_alive_s);
        let outage = Outage::new(
            format!("mqtt-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut sink = MqttSink {
            config,
            topic,
            qos,
            options,
            client: None,
            outage,
            inflight: HashMap::new(),
            last_pkid: 0,
            scratch: Vec::new(),
        };
        // At open the broker must answer: a password or a grant to fix is
        // said now.
        let client = Client::connect(&sink.options).map_err(|e| sink.options.refused(&e))?;
        sink.client = Some(client);
        Ok(sink)
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut state = vec![Sent::No; batch.len()];
        loop {
            match self.try_write(origin, &batch, &mut state, rejects) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A new connection: what was in flight is sent again.
                    self.client = None;
                    self.inflight.clear();
                    for s in &mut state {
                        if *s == Sent::Awaiting {
                            *s = Sent::No;
                        }
                    }
                    if e.is_interrupted() {
                        return Err(Error::retriable("interrupted while waiting for the broker"));
                    }
                    if !e.is_connection_lost() {
                        return Err(self.options.refused(&e));
                    }
                    self.outage.went_away(&e.to_string());
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Each write waited for its acknowledgements.
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            client.disconnect();
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(MqttSink);
