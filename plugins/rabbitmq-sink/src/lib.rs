//! `rabbitmq-sink`: publishes records to a RabbitMQ exchange (as Pulsar
//! IO's and Flink's RabbitMQ sinks do), speaking AMQP 0-9-1 itself
//! (`sluice-amqp`) over the connection its `net` grant allows.
//!
//! - **A message a record**: the body is the record's value; the routing
//!   key a template over the record (`"orders.{key}"`); persistent unless
//!   `persistent = false`; `message_id` is `<topic>/<partition>/<offset>`,
//!   the record's place in the log, so a consumer can drop a repeat;
//!   `timestamp` the record's (in seconds); the record's headers in the
//!   message's headers table; `app_id` `sluice`.
//! - **Written when confirmed.** The channel is in confirm mode; a batch's
//!   publishes go out in a window of `max_inflight`, and `write` returns
//!   once the broker confirmed every one (RabbitMQ confirms a persistent
//!   message routed to a durable queue once written to disk); the host
//!   commits only after that. A connection lost meanwhile is made again
//!   (said once, with backoff) and what was not confirmed is published
//!   again, and so is a message the broker `nack`s: at least once, so a
//!   consumer can see a message twice (with one `message_id`) after an
//!   outage or a crash.
//! - **Refused on its merits**: a record whose routing key cannot be made
//!   (no key for `{key}`, longer than 255 bytes) is dead-lettered with the
//!   reason, and so is a `mandatory` message no queue takes, with the
//!   broker's reply (`312 NO_ROUTE`).
//! - A wrong password, an ungranted address or an exchange that is not
//!   there fails at `open` with what to fix, the password in no message.
//!
//! It does not: publish in AMQP transactions, declare exchanges or queues,
//! or set priorities and expirations.

mod config;

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_amqp::{AmqpError, Client, ConnectOptions, Incoming, Properties, Value};
use sluice_sdk::outage::Outage;
use sluice_sdk::template::Template;
use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

pub use config::Config;

/// Where a record of the batch being written stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not published on this connection yet (or nacked).
    No,
    /// Published, its confirm awaited.
    Awaiting,
    /// Confirmed, or refused.
    Done,
}

/// The sink's state.
#[derive(Debug)]
pub struct RabbitmqSink {
    config: Config,
    routing_key: Template,
    options: ConnectOptions,
    client: Option<Client>,
    outage: Outage,
    /// The publishes not confirmed, by their number on the channel, and
    /// the batch record each is.
    inflight: BTreeMap<u64, usize>,
    /// The number the next publish gets (from 1 on each connection).
    next_publish: u64,
    /// A routing key rendered.
    scratch: Vec<u8>,
    /// The broker said it stopped reading our publishes (an alarm).
    blocked: bool,
}

impl RabbitmqSink {
    /// Connects with confirms on, if there is no connection, waiting out a
    /// broker that is away (said once).
    fn connect(&mut self) -> Result<(), AmqpError> {
        while self.client.is_none() {
            match Self::start(&self.options, &self.config) {
                Ok(client) => {
                    self.outage.back();
                    self.client = Some(client);
                    self.next_publish = 1;
                    self.blocked = false;
                }
                Err(e) if e.is_interrupted() || !e.is_connection_lost() => return Err(e),
                Err(e) => {
                    self.outage.went_away(&e.to_string());
                    self.outage.wait(None);
                    if sluice_sdk::interrupted() {
                        return Err(AmqpError::Io(std::io::ErrorKind::Interrupted.into()));
                    }
                }
            }
        }
        Ok(())
    }

    fn start(options: &ConnectOptions, config: &Config) -> Result<Client, AmqpError> {
        let mut client = Client::connect(options)?;
        client.confirm_select()?;
        if !config.exchange.is_empty() {
            client.declare_exchange_passive(&config.exchange)?;
        }
        Ok(client)
    }

    /// Reads one confirm (or return), waiting up to three heartbeats (30 s
    /// at least: a broker silent that long is gone), and marks what it
    /// answers.
    fn take_confirm(
        &mut self,
        origin: &Origin,
        state: &mut [Sent],
        rejects: &mut Rejects,
    ) -> Result<(), AmqpError> {
        let wait = Duration::from_secs(self.config.heartbeat_secs.max(10) * 3);
        let client = self.client.as_mut().expect("connected");
        let incoming = match client.next(None)? {
            Some(i) => Some(i),
            None => client.next(Some(wait))?,
        };
        if incoming.is_none() && self.blocked {
            // Blocked by an alarm, the broker confirms nothing until it
            // lifts: waiting, as said.
            return Ok(());
        }
        let answered = |inflight: &mut BTreeMap<u64, usize>, tag: u64, multiple: bool| {
            if multiple {
                let rest = inflight.split_off(&(tag + 1));
                std::mem::replace(inflight, rest)
                    .into_values()
                    .collect::<Vec<_>>()
            } else {
                inflight.remove(&tag).into_iter().collect()
            }
        };
        match incoming {
            Some(Incoming::Ack { tag, multiple }) => {
                for i in answered(&mut self.inflight, tag, multiple) {
                    state[i] = Sent::Done;
                }
                Ok(())
            }
            Some(Incoming::Nack { tag, multiple }) => {
                // The broker could not take them: published again.
                for i in answered(&mut self.inflight, tag, multiple) {
                    if state[i] == Sent::Awaiting {
                        state[i] = Sent::No;
                    }
                }
                Ok(())
            }
            Some(Incoming::Returned {
                code,
                text,
                delivery,
            }) => {
                // Its confirm follows; the record is refused now.
                if let Some(i) = delivery
                    .properties
                    .message_id
                    .as_deref()
                    .and_then(|id| index_of(origin, id))
                    .filter(|&i| i < state.len())
                {
                    state[i] = Sent::Done;
                    rejects.reject(
                        i,
                        format!(
                            "the broker returned it: {code} {text} (exchange {:?}, routing key {:?})",
                            delivery.exchange, delivery.routing_key
                        ),
                    );
                }
                Ok(())
            }
            Some(Incoming::Blocked(reason)) => {
                if !self.blocked {
                    sluice_sdk::warn!(
                        "rabbitmq-sink: {} blocks publishers ({reason}); waiting until it lifts the block",
                        self.config.addr
                    );
                }
                self.blocked = true;
                Ok(())
            }
            Some(Incoming::Unblocked) => {
                if self.blocked {
                    sluice_sdk::info!("rabbitmq-sink: {} takes publishes again", self.config.addr);
                }
                self.blocked = false;
                Ok(())
            }
            Some(Incoming::Delivery(_)) => Ok(()),
            None => Err(AmqpError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no confirm from the broker within {wait:?}"),
            ))),
        }
    }

    /// Publishes what of the batch is not done, on this connection, and
    /// waits for the confirms; again for what the broker nacked.
    fn try_write(
        &mut self,
        origin: &Origin,
        batch: &Batch<'_>,
        state: &mut [Sent],
        rejects: &mut Rejects,
    ) -> Result<(), AmqpError> {
        // Not called for a heartbeat period (no records): the broker may
        // have given the connection up; a new one, quietly.
        if self.client.as_ref().is_some_and(Client::is_stale) {
            self.client = None;
            self.inflight.clear();
        }
        self.connect()?;
        let window = self.config.max_inflight.max(1) as usize;
        while state.contains(&Sent::No) {
            for (i, r) in batch.iter().enumerate() {
                if state[i] != Sent::No {
                    continue;
                }
                if self.inflight.len() >= window {
                    // Down to half the window before publishing more.
                    self.client.as_mut().expect("connected").flush()?;
                    while self.inflight.len() > window / 2 {
                        self.take_confirm(origin, state, rejects)?;
                    }
                }
                let offset = origin.first_offset + i as u64;
                if self
                    .routing_key
                    .render(origin, offset, r.key, &mut self.scratch)
                    .is_none()
                {
                    rejects.reject(
                        i,
                        "a record without a key, and the routing key template uses {key}",
                    );
                    state[i] = Sent::Done;
                    continue;
                }
                if self.scratch.len() > 255 {
                    rejects.reject(
                        i,
                        format!(
                            "the routing key is {} bytes, more than AMQP's 255",
                            self.scratch.len()
                        ),
                    );
                    state[i] = Sent::Done;
                    continue;
                }
                let headers = self.config.headers.then(|| {
                    r.headers()
                        .map(|(n, v)| (n.to_owned(), Value::LongStr(v.to_vec().into())))
                        .collect()
                });
                let properties = Properties {
                    content_type: self.config.content_type.clone(),
                    headers,
                    delivery_mode: Some(if self.config.persistent { 2 } else { 1 }),
                    message_id: Some(message_id(origin, offset)),
                    timestamp: r.timestamp.and_then(|ms| u64::try_from(ms / 1000).ok()),
                    app_id: Some("sluice".to_owned()),
                    ..Properties::default()
                };
                let client = self.client.as_mut().expect("connected");
                if let Err(why) = client.publish(
                    self.config.exchange.as_bytes(),
                    &self.scratch,
                    self.config.mandatory,
                    &properties,
                    r.value,
                ) {
                    rejects.reject(i, why);
                    state[i] = Sent::Done;
                    continue;
                }
                self.inflight.insert(self.next_publish, i);
                self.next_publish += 1;
                state[i] = Sent::Awaiting;
                if client.queued() >= 128 * 1024 {
                    client.flush()?;
                }
            }
            self.client.as_mut().expect("connected").flush()?;
            while !self.inflight.is_empty() {
                self.take_confirm(origin, state, rejects)?;
            }
        }
        Ok(())
    }
}

/// A record's `message_id`: `<topic>/<partition>/<offset>`, its place in
/// the log. An AMQP short string holds 255 bytes, and a topic name may be
/// 249: a longer id keeps the topic's first 200 bytes and a hash of the
/// whole name, so ids stay unique and end with the offset.
fn message_id(origin: &Origin, offset: u64) -> String {
    let id = format!("{}/{}/{offset}", origin.topic, origin.partition);
    if id.len() <= 255 {
        return id;
    }
    let mut cut = 200;
    while !origin.topic.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = sluice_sdk::hash::fnv1a(origin.topic.as_bytes());
    format!(
        "{}#{hash:016x}/{}/{offset}",
        &origin.topic[..cut],
        origin.partition
    )
}

/// The batch index a `message_id` of ours names (`topic/partition/offset`).
fn index_of(origin: &Origin, message_id: &str) -> Option<usize> {
    let offset: u64 = message_id.rsplit('/').next()?.parse().ok()?;
    usize::try_from(offset.checked_sub(origin.first_offset)?).ok()
}

impl Sink for RabbitmqSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        let routing_key =
            Template::parse("routing_key", &config.routing_key).map_err(Error::invalid_config)?;
        let mut options = ConnectOptions::new(&config.addr);
        options.tls = sluice_sdk::net::tls_server_name(
            config.tls,
            config.server_name.as_deref(),
            &config.addr,
        );
        options.vhost.clone_from(&config.vhost);
        options.user.clone_from(&config.user);
        options.password.clone_from(&config.password);
        options.heartbeat = Duration::from_secs(config.heartbeat_secs);
        let outage = Outage::new(
            format!("rabbitmq-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        // At open the broker must answer: a password, a grant or an
        // exchange to fix is said now.
        let client = Self::start(&options, &config).map_err(|e| options.refused(&e))?;
        Ok(RabbitmqSink {
            config,
            routing_key,
            options,
            client: Some(client),
            outage,
            inflight: BTreeMap::new(),
            next_publish: 1,
            scratch: Vec::new(),
            blocked: false,
        })
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
                    // A new connection: what was not confirmed is
                    // published again.
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
        // Each write waited for its confirms.
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            client.close();
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(RabbitmqSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_message_names_its_record_by_its_message_id() {
        let origin = Origin {
            topic: "events".into(),
            partition: 2,
            first_offset: 100,
        };
        assert_eq!(index_of(&origin, "events/2/104"), Some(4));
        assert_eq!(index_of(&origin, "events/2/99"), None);
        assert_eq!(index_of(&origin, "someone-else's"), None);
    }

    #[test]
    fn a_message_id_fits_a_short_string_and_keeps_the_offset_last() {
        let long = Origin {
            topic: "t".repeat(249),
            partition: 7,
            first_offset: 0,
        };
        let id = message_id(&long, 12_345_678_901);
        assert!(id.len() <= 255, "{}", id.len());
        assert!(id.ends_with("/7/12345678901"), "{id}");
        assert_eq!(index_of(&long, &id), Some(12_345_678_901));
        let other = Origin {
            topic: format!("{}u", "t".repeat(248)),
            ..long
        };
        assert_ne!(
            message_id(&other, 1),
            message_id(
                &Origin {
                    topic: "t".repeat(249),
                    partition: 7,
                    first_offset: 0
                },
                1
            )
        );
        let short = Origin {
            topic: "events".into(),
            partition: 0,
            first_offset: 0,
        };
        assert_eq!(message_id(&short, 3), "events/0/3");
    }
}
