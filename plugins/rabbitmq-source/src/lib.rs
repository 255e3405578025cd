//! `rabbitmq-source`: consumes a RabbitMQ queue (as Pulsar IO's and
//! Flink's RabbitMQ sources do), speaking AMQP 0-9-1 itself
//! (`sluice-amqp`) over the connection its `net` grant allows.
//!
//! - **A record a message**: the value is the body; the timestamp the
//!   message's `timestamp` property (seconds, made milliseconds); the
//!   headers the message's own headers table (strings as they are, other
//!   values as text) and `amqp.exchange`, `amqp.routing-key` and, when
//!   set, `amqp.message-id`, `amqp.correlation-id`, `amqp.content-type`,
//!   `amqp.type` and `amqp.app-id`; the key what `key` names.
//! - **Acknowledged once stored.** The channel's prefetch bounds the
//!   messages delivered and not acknowledged; a delivery is acknowledged
//!   (`basic.ack`, several at once with `multiple`) only once the log holds
//!   the batch with it (`commit`). Until then the broker keeps it, and
//!   delivers it again once the connection is gone: after a crash or a
//!   lost connection. Without ids that is **at least once**: a message
//!   stored just before a crash, or whose acknowledgement the broker had
//!   not read, is stored again.
//! - **`dedupe = "message-id"`: exactly once** for messages with a
//!   `message_id`. The ids of the last `dedupe_window` messages stored
//!   travel in the source's position (64-bit FNV-1a hashes: a collision,
//!   one in 2^64 per pair, would drop a message), so after a crash the
//!   host hands back exactly the ids the log holds, and a redelivery of
//!   one of them is acknowledged and not stored again. The broker
//!   redelivers at most `prefetch` messages, at the head of the queue, so
//!   the window (four times `prefetch` by default) holds them. This holds
//!   for one consumer of the queue: with several instances (or other
//!   consumers) a redelivery can go to another, which does not know it.
//! - **A broker that goes away** pauses the flow (said once, reconnected
//!   with backoff, consumed again); a wrong password, an ungranted
//!   address, a queue that is not there or one the user may not read
//!   fails at `open` with what to fix, the password in no message.
//!
//! It does not: reject or requeue messages (`basic.reject`/`nack`), bind
//! queues to exchanges, or consume more than one queue (run a connector a
//! queue).

mod config;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sluice_amqp::{AmqpError, Client, ConnectOptions, Delivery, Incoming};
use sluice_sdk::outage::Outage;
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};

pub use config::{Config, Dedupe};

/// How long a poll with nothing in hand waits for a message.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The position's format version.
const POSITION_V1: u8 = 1;

/// What becomes a record's key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyFrom {
    None,
    RoutingKey,
    MessageId,
    CorrelationId,
    Header(String),
}

impl KeyFrom {
    fn parse(key: Option<&str>) -> Result<KeyFrom, Error> {
        Ok(match key {
            None => KeyFrom::None,
            Some("routing-key") => KeyFrom::RoutingKey,
            Some("message-id") => KeyFrom::MessageId,
            Some("correlation-id") => KeyFrom::CorrelationId,
            Some(k) if k.starts_with("header:") && k.len() > 7 => {
                KeyFrom::Header(k["header:".len()..].to_owned())
            }
            Some(other) => {
                return Err(Error::invalid_config(format!(
                    "key = {other:?} is not one of \"routing-key\", \"message-id\", \
                     \"correlation-id\" or \"header:NAME\""
                )));
            }
        })
    }
}

/// A batch polled and not committed.
#[derive(Debug)]
struct Emitted {
    seq: u64,
    /// The deliveries to acknowledge once it is stored: the connection
    /// each came on and its tag there.
    tags: Vec<(u64, u64)>,
    /// The message ids in it (hashed), with `dedupe`.
    ids: Vec<u64>,
}

/// The source's state.
#[derive(Debug)]
pub struct RabbitmqSource {
    config: Config,
    options: ConnectOptions,
    key: KeyFrom,
    client: Option<Client>,
    /// Which connection this is: a delivery tag means something only on
    /// the connection it came on.
    connection: u64,
    outage: Outage,
    emitted: VecDeque<Emitted>,
    /// Delivery tags of this connection that may be acknowledged, above
    /// `acked_upto`: acknowledged with `multiple` once contiguous.
    ready: BTreeSet<u64>,
    /// Every delivery up to this tag is acknowledged.
    acked_upto: u64,
    /// With `dedupe`: the ids of the last messages stored or in a batch
    /// polled, oldest first, and the same as a set.
    recent: VecDeque<u64>,
    recent_set: HashSet<u64>,
    /// The batch each id not yet committed is in.
    pending: HashMap<u64, u64>,
    window: usize,
    /// The number of the last batch polled.
    seq: u64,
    /// Since when, connected and with everything stored, no message came.
    idle_since: Option<Instant>,
}

impl RabbitmqSource {
    /// Connects if there is no connection: `false` when the broker is away
    /// (said once, waited for) or the host ended the wait.
    fn connect(&mut self) -> Result<bool, Error> {
        if self.client.is_some() {
            return Ok(true);
        }
        match self.start() {
            Ok(()) => {
                self.outage.back();
                Ok(true)
            }
            Err(e) if e.is_interrupted() => Ok(false),
            Err(e) if e.is_denied() || !e.is_connection_lost() => Err(self.options.refused(&e)),
            Err(e) => {
                self.outage.went_away(&e.to_string());
                self.outage.wait(None);
                Ok(false)
            }
        }
    }

    /// Connects, sets the prefetch, declares the queue if asked and
    /// consumes it.
    fn start(&mut self) -> Result<(), AmqpError> {
        self.idle_since = None;
        let mut client = Client::connect(&self.options)?;
        client.qos(self.config.prefetch.max(1))?;
        if self.config.declare {
            client.declare_queue(&self.config.queue, false)?;
        }
        client.consume(&self.config.queue, "")?;
        self.client = Some(client);
        self.connection += 1;
        self.ready.clear();
        self.acked_upto = 0;
        Ok(())
    }

    /// The connection is gone: said once; the next poll connects again.
    /// Its delivery tags go with it: the broker delivers those messages
    /// again.
    fn lost(&mut self, why: &str) {
        self.client = None;
        self.idle_since = None;
        self.outage.went_away(why);
    }

    /// Writes `d` as a record, unless `dedupe` knows its id: then its tag
    /// is acknowledged once the message it repeats is stored.
    fn take(&mut self, d: &Delivery, out: &mut BatchWriter, batch: &mut Emitted) {
        let tag = (self.connection, d.delivery_tag);
        let id = match (self.config.dedupe, &d.properties.message_id) {
            (Dedupe::MessageId, Some(id)) => Some(sluice_sdk::hash::fnv1a(id.as_bytes())),
            _ => None,
        };
        if let Some(id) = id {
            match self.pending.get(&id) {
                Some(&seq) if seq == batch.seq => {
                    batch.tags.push(tag);
                    return;
                }
                Some(&seq) => {
                    if let Some(e) = self.emitted.iter_mut().find(|e| e.seq == seq) {
                        e.tags.push(tag);
                    }
                    return;
                }
                None if self.recent_set.contains(&id) => {
                    // Stored already.
                    self.ready.insert(d.delivery_tag);
                    return;
                }
                None => {
                    self.remember(id);
                    self.pending.insert(id, batch.seq);
                    batch.ids.push(id);
                }
            }
        }
        batch.tags.push(tag);
        self.write(d, out);
    }

    /// Forgets the ids of a batch that is not kept.
    fn forget(&mut self, batch: &Emitted) {
        for id in &batch.ids {
            self.pending.remove(id);
            self.recent_set.remove(id);
        }
        self.recent.retain(|id| !batch.ids.contains(id));
    }

    /// Keeps `id` among the recent ones, forgetting the oldest past the
    /// window.
    fn remember(&mut self, id: u64) {
        self.recent.push_back(id);
        self.recent_set.insert(id);
        while self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    fn write(&self, d: &Delivery, out: &mut BatchWriter) {
        let p = &d.properties;
        let key = match &self.key {
            KeyFrom::None => None,
            KeyFrom::RoutingKey => Some(d.routing_key.as_bytes().to_vec()),
            KeyFrom::MessageId => p.message_id.as_ref().map(|s| s.as_bytes().to_vec()),
            KeyFrom::CorrelationId => p.correlation_id.as_ref().map(|s| s.as_bytes().to_vec()),
            KeyFrom::Header(name) => p
                .headers
                .iter()
                .flatten()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_bytes()),
        };
        let values: Vec<(&str, Vec<u8>)> = p
            .headers
            .iter()
            .flatten()
            .map(|(n, v)| (n.as_str(), v.to_bytes()))
            .collect();
        let mut headers: Vec<(&str, &[u8])> = Vec::with_capacity(values.len() + 7);
        headers.extend(values.iter().map(|(n, v)| (*n, v.as_slice())));
        headers.push(("amqp.exchange", d.exchange.as_bytes()));
        headers.push(("amqp.routing-key", d.routing_key.as_bytes()));
        for (name, value) in [
            ("amqp.message-id", &p.message_id),
            ("amqp.correlation-id", &p.correlation_id),
            ("amqp.content-type", &p.content_type),
            ("amqp.type", &p.kind),
            ("amqp.app-id", &p.app_id),
        ] {
            if let Some(v) = value {
                headers.push((name, v.as_bytes()));
            }
        }
        let timestamp = p
            .timestamp
            .and_then(|s| i64::try_from(s).ok())
            .map(|s| s.saturating_mul(1000));
        out.push_parts(key.as_deref(), timestamp, &headers, |v| {
            v.extend_from_slice(&d.body);
        });
    }

    /// Acknowledges the ready tags contiguous with what is acknowledged,
    /// in one `basic.ack` with `multiple`, and writes it.
    fn acknowledge(&mut self) -> Result<(), AmqpError> {
        let Some(client) = self.client.as_mut() else {
            return Ok(());
        };
        let mut upto = self.acked_upto;
        while self.ready.first() == Some(&(upto + 1)) {
            self.ready.pop_first();
            upto += 1;
        }
        if upto > self.acked_upto {
            client.ack(upto, true);
            self.acked_upto = upto;
        }
        if client.queued() > 0 {
            client.flush()?;
        }
        Ok(())
    }

    /// The position after batch `seq`: its number and, with `dedupe`, the
    /// recent ids.
    fn position(&self, seq: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(13 + self.recent.len() * 8);
        p.push(POSITION_V1);
        p.extend_from_slice(&seq.to_le_bytes());
        p.extend_from_slice(&(self.recent.len() as u32).to_le_bytes());
        for id in &self.recent {
            p.extend_from_slice(&id.to_le_bytes());
        }
        p
    }
}

/// A position's batch number and ids; `None` if it is not one of ours.
fn parse_position(p: &[u8]) -> Option<(u64, Vec<u64>)> {
    let (&version, rest) = p.split_first()?;
    if version != POSITION_V1 || rest.len() < 12 {
        return None;
    }
    let seq = u64::from_le_bytes(rest[..8].try_into().ok()?);
    let n = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
    let ids = &rest[12..];
    if ids.len() != n * 8 {
        return None;
    }
    let ids = ids
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some((seq, ids))
}

impl Source for RabbitmqSource {
    type Config = Config;

    fn open(config: Config, _ctx: &Context, resume_from: Option<&[u8]>) -> Result<Self, Error> {
        let key = KeyFrom::parse(config.key.as_deref())?;
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
            format!("rabbitmq-source: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let prefetch = u32::from(config.prefetch.max(1));
        let window = config.dedupe_window.unwrap_or(prefetch * 4).max(prefetch) as usize;
        let mut source = RabbitmqSource {
            config,
            options,
            key,
            client: None,
            connection: 0,
            outage,
            emitted: VecDeque::new(),
            ready: BTreeSet::new(),
            acked_upto: 0,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            pending: HashMap::new(),
            window,
            seq: 0,
            idle_since: None,
        };
        if source.config.dedupe == Dedupe::MessageId
            && let Some((_, ids)) = resume_from.and_then(parse_position)
        {
            for id in ids {
                source.remember(id);
            }
        }
        // At open the broker must answer: a password, a grant, a queue or
        // a permission to fix is said now.
        source.start().map_err(|e| source.options.refused(&e))?;
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        let mut batch = Emitted {
            seq: self.seq + 1,
            tags: Vec::new(),
            ids: Vec::new(),
        };
        // Not called for a heartbeat period (the host held the source
        // back): the broker may have given the connection up; a new one,
        // quietly.
        if self.client.as_ref().is_some_and(Client::is_stale) {
            self.client = None;
        }
        while out.len() < max_records {
            match self.connect() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    // The batch is not kept: its ids were not stored.
                    self.forget(&batch);
                    return Err(e);
                }
            }
            // Wait only with nothing in hand: records polled and not yet
            // stored go to the log first, and their acknowledgements let
            // the broker send more.
            let idle = out.is_empty() && batch.tags.is_empty() && self.emitted.is_empty();
            let client = self.client.as_mut().expect("connected");
            match client.next(idle.then_some(IDLE_WAIT)) {
                Ok(Some(Incoming::Delivery(d))) => self.take(&d, out, &mut batch),
                // Confirms and returns are a publisher's.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_interrupted() => break,
                // Whatever closed the channel (a lost connection, a queue
                // deleted, an acknowledgement timeout): connecting again
                // says whether it is worth it.
                Err(e) => {
                    self.lost(&e.to_string());
                    break;
                }
            }
        }
        // Redeliveries of what is stored are acknowledged now.
        if let Err(e) = self.acknowledge() {
            self.lost(&e.to_string());
        }
        if out.is_empty() {
            // A batch with no record has no tag either: a repeat of a
            // message in a batch not committed went with that batch.
            debug_assert!(batch.tags.is_empty());
            let Some(end_after) = self.config.end_after_idle_ms else {
                return Ok(Poll::default());
            };
            if self.client.is_none() || !self.emitted.is_empty() {
                self.idle_since = None;
                return Ok(Poll::default());
            }
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            let end = since.elapsed() >= Duration::from_millis(end_after);
            return Ok(Poll::default().done_if(end));
        }
        self.idle_since = None;
        self.seq = batch.seq;
        self.emitted.push_back(batch);
        Ok(Poll::at(self.position(self.seq)))
    }

    fn commit(&mut self, position: &[u8]) -> Result<(), Error> {
        let Some((upto, _)) = parse_position(position) else {
            return Ok(());
        };
        while let Some(batch) = self.emitted.pop_front_if(|e| e.seq <= upto) {
            for id in &batch.ids {
                self.pending.remove(id);
            }
            let connection = self.connection;
            self.ready.extend(
                batch
                    .tags
                    .into_iter()
                    .filter(|(c, _)| *c == connection)
                    .map(|(_, t)| t),
            );
        }
        if let Err(e) = self.acknowledge() {
            // The broker delivers again what it did not read as
            // acknowledged; with dedupe it is recognised.
            if e.is_interrupted() {
                self.client = None;
            } else {
                self.lost(&e.to_string());
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            client.close();
        }
        Ok(())
    }
}

sluice_sdk::export_source!(RabbitmqSource);

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_amqp::Properties;

    fn source(dedupe: &str) -> RabbitmqSource {
        let config: Config = sluice_sdk::serde_json::from_str(&format!(
            r#"{{"addr": "127.0.0.1:5672", "queue": "q", "dedupe": "{dedupe}",
                "prefetch": 2, "key": "routing-key"}}"#
        ))
        .unwrap();
        RabbitmqSource {
            options: ConnectOptions::new(&config.addr),
            outage: Outage::new("test", (1, 1), ("a", "b")).unwrap(),
            key: KeyFrom::parse(config.key.as_deref()).unwrap(),
            config,
            client: None,
            connection: 1,
            emitted: VecDeque::new(),
            ready: BTreeSet::new(),
            acked_upto: 0,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            pending: HashMap::new(),
            window: 8,
            seq: 0,
            idle_since: None,
        }
    }

    fn delivery(tag: u64, id: &str) -> Delivery {
        Delivery {
            delivery_tag: tag,
            redelivered: false,
            exchange: String::new(),
            routing_key: "rk".into(),
            properties: Properties {
                message_id: Some(id.into()),
                timestamp: Some(1_700_000_000),
                ..Properties::default()
            },
            body: id.as_bytes().to_vec().into(),
        }
    }

    fn batch(s: &RabbitmqSource) -> Emitted {
        Emitted {
            seq: s.seq + 1,
            tags: Vec::new(),
            ids: Vec::new(),
        }
    }

    #[test]
    fn with_dedupe_a_repeat_is_not_stored_and_is_acknowledged_with_its_first() {
        let mut s = source("message-id");
        let mut out = BatchWriter::new();
        let mut b = batch(&s);
        s.take(&delivery(1, "m1"), &mut out, &mut b);
        s.take(&delivery(2, "m2"), &mut out, &mut b);
        s.seq = b.seq;
        s.emitted.push_back(b);
        // The connection is lost; the broker delivers both again on the
        // next, and a new one.
        s.connection = 2;
        let mut out2 = BatchWriter::new();
        let mut b2 = batch(&s);
        s.take(&delivery(1, "m1"), &mut out2, &mut b2);
        s.take(&delivery(2, "m3"), &mut out2, &mut b2);
        s.take(&delivery(3, "m2"), &mut out2, &mut b2);
        assert_eq!((out.len(), out2.len()), (2, 1));
        // The first batch's commit makes the repeats' new tags ready; the
        // old connection's are forgotten.
        s.seq = b2.seq;
        s.emitted.push_back(b2);
        s.commit(&s.position(1)).unwrap();
        assert_eq!(s.ready.iter().copied().collect::<Vec<_>>(), [1, 3]);
        // A restart resumes with the recent ids of the position it is
        // handed: a repeat of one is acknowledged at once.
        let (_, ids) = parse_position(&s.position(2)).unwrap();
        let mut r = source("message-id");
        ids.into_iter().for_each(|id| r.remember(id));
        let mut out3 = BatchWriter::new();
        let mut b3 = batch(&r);
        r.take(&delivery(7, "m3"), &mut out3, &mut b3);
        assert_eq!(out3.len(), 0);
        assert!(r.ready.contains(&7));
    }

    #[test]
    fn without_dedupe_every_delivery_is_a_record() {
        let mut s = source("none");
        let mut out = BatchWriter::new();
        let mut b = batch(&s);
        s.take(&delivery(1, "m1"), &mut out, &mut b);
        s.take(&delivery(2, "m1"), &mut out, &mut b);
        assert_eq!(out.len(), 2);
        assert_eq!(b.tags, [(1, 1), (1, 2)]);
        assert!(s.recent.is_empty() && s.position(1).len() == 13);
    }

    #[test]
    fn the_window_keeps_the_last_ids_only() {
        let mut s = source("message-id");
        for i in 0..20u64 {
            s.remember(i);
        }
        assert_eq!(s.recent.len(), 8);
        assert!(s.recent_set.contains(&19) && !s.recent_set.contains(&11));
    }

    #[test]
    fn a_record_has_the_body_the_key_the_timestamp_and_the_properties() {
        let s = source("none");
        let mut out = BatchWriter::new();
        s.write(&delivery(1, "m1"), &mut out);
        let bytes = out.finish();
        let batch = sluice_sdk::Batch::parse(&bytes).unwrap();
        let r = batch.iter().next().unwrap();
        assert_eq!(r.value, b"m1");
        assert_eq!(r.key, Some(&b"rk"[..]));
        assert_eq!(r.timestamp, Some(1_700_000_000_000));
        let names: Vec<&str> = r.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            ["amqp.exchange", "amqp.routing-key", "amqp.message-id"]
        );
    }

    #[test]
    fn a_key_setting_is_checked() {
        assert_eq!(
            KeyFrom::parse(Some("header:region")).unwrap(),
            KeyFrom::Header("region".into())
        );
        assert!(KeyFrom::parse(Some("header:")).is_err());
        assert!(KeyFrom::parse(Some("body")).is_err());
    }
}
