//! `mqtt-source`: subscribes to MQTT topic filters, speaking MQTT 3.1.1 or
//! 5 itself (`sluice-mqtt`) over the connection its `net` grant allows.
//!
//! - **A persistent session.** The source connects with clean start off
//!   (and, in MQTT 5, a session expiry of its own choosing, for ever by
//!   default) under a stable client id, `sluice-<connector>-<index>`, and
//!   subscribes at QoS 1: the broker keeps the subscriptions and queues the
//!   messages that come while the source is away, and delivers them when
//!   it returns.
//! - **A record a message**: the value is the payload, the key and the
//!   header `mqtt.topic` the topic it was published to; a retained message
//!   also has the header `mqtt.retain`.
//! - **Acknowledged once stored.** A message's `PUBACK` goes out only once
//!   the log holds the batch with it (`commit`): until then the broker
//!   keeps it, and sends it again after a crash or a lost connection.
//!   Delivery is at least once: a message stored just before a crash is
//!   delivered again after it (MQTT messages carry no id to tell it by),
//!   and so is one whose `PUBACK` the broker had not read yet. The source
//!   reads at most `max_unacked` messages ahead of what is stored, but a
//!   broker can send far more than it is asked to: mosquitto 2.0.11 lets
//!   up to a window's worth more out for each `PUBACK` while a session has
//!   messages queued (its `db__message_delete_outgoing` counts the
//!   acknowledged message's place in the in-flight list, not the list's
//!   length: eclipse-mosquitto/mosquitto#2301). It then writes the whole
//!   queue and falls behind reading the source's `PUBACK`s; a crash drops
//!   those it has not read, and it sends those messages again. Tried with
//!   a bare client: of 40,500 messages acknowledged in 0.3 s, 40,341 came
//!   back after an abrupt close. Past 65,535 in flight it also gives a
//!   packet id to two messages at once, which the source says once.
//!   Within one run a message the broker sends again after a reconnection
//!   is recognised by its packet id (and DUP flag) and not stored twice.
//! - **A broker that goes away** pauses the flow (said once, reconnected
//!   with backoff); a wrong password or an ungranted address fails at
//!   `open` with what to fix, the password in no message; a filter the
//!   broker refuses fails the connector with the broker's word.
//!
//! The broker decides how much it holds for an absent source: mosquitto
//! keeps `max_queued_messages` (1,000 by default; raise it, or 0 for no
//! limit) and sends `max_inflight_messages` unacknowledged at a time (20
//! by default: the most a batch can hold; 1,000 suits a source, and above
//! 65,535 packet ids repeat).
//!
//! It does not: subscribe at QoS 2, read shared subscriptions specially
//! (`$share/…` filters work as the broker makes them), or carry MQTT 5
//! user properties into headers.

mod config;

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use sluice_mqtt::{Client, ConnectOptions, Incoming, Message, MqttError, Qos};
use sluice_sdk::outage::Outage;
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};

pub use config::Config;

/// The packet id of the source's `SUBSCRIBE`.
const SUBSCRIBE_PKID: u16 = 1;

/// How long a poll with nothing in hand waits for a message.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// The source's state.
#[derive(Debug)]
pub struct MqttSource {
    config: Config,
    options: ConnectOptions,
    client: Option<Client>,
    outage: Outage,
    /// The batches polled and not committed: each one's number and the
    /// packet ids of its QoS 1 messages.
    emitted: VecDeque<(u64, Vec<u16>)>,
    /// The packet ids emitted and not acknowledged: the broker cannot
    /// reuse them, so one that comes again is a redelivery.
    in_hand: HashSet<u16>,
    /// Acknowledgements owed: stored while there was no connection to
    /// send them on.
    owed: Vec<u16>,
    /// The number of the last batch polled.
    seq: u64,
    /// Since when, connected and with everything stored, no message came.
    idle_since: Option<Instant>,
    /// The broker was seen giving one packet id to two messages at once.
    said_ids_reused: bool,
}

impl MqttSource {
    /// Connects if there is no connection: `false` when the broker is away
    /// (said once, waited for) or the host ended the wait.
    fn connect(&mut self) -> Result<bool, Error> {
        if self.client.is_some() {
            return Ok(true);
        }
        match self.start(false) {
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

    /// Connects and, on `open` or when the broker lost the session,
    /// subscribes; acknowledgements owed go out at once.
    fn start(&mut self, opening: bool) -> Result<(), MqttError> {
        self.idle_since = None;
        let mut client = Client::connect(&self.options)?;
        if !client.session_present() {
            // A new session: the broker forgot what it sent, and will not
            // send it again; what was emitted is in the log or on its way.
            self.in_hand.clear();
            self.owed.clear();
            for (_, pkids) in &mut self.emitted {
                pkids.clear();
            }
        } else if !self.owed.is_empty() {
            for &pkid in &self.owed {
                client.puback(pkid);
            }
            let sent = client.flush();
            for pkid in self.owed.drain(..) {
                self.in_hand.remove(&pkid);
            }
            sent?;
        }
        if opening || !client.session_present() {
            // Its answer comes after the messages the broker kept for us,
            // which may be many: `poll` reads it in its turn.
            client.subscribe(SUBSCRIBE_PKID, &self.config.topics, Qos::AtLeastOnce);
            client.flush()?;
        }
        self.client = Some(client);
        Ok(())
    }

    /// Reads the answer to `SUBSCRIBE`: a filter the broker refused fails
    /// the connector, with the broker's word.
    fn subscribed(&self, granted: &[Result<Qos, String>]) -> Result<(), Error> {
        let refused: Vec<String> = granted
            .iter()
            .zip(&self.config.topics)
            .filter_map(|(g, t)| g.as_ref().err().map(|why| format!("{t:?} ({why})")))
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        Err(Error::invalid_config(format!(
            "the broker {} refused to subscribe to {}",
            self.config.addr,
            refused.join(", ")
        )))
    }

    /// The connection is gone: said once; the next poll connects again.
    fn lost(&mut self, e: &MqttError) {
        self.client = None;
        self.idle_since = None;
        self.outage.went_away(&e.to_string());
    }

    /// Writes `m` as a record, unless it is a redelivery of one in hand.
    fn take(&mut self, m: Message, out: &mut BatchWriter, pkids: &mut Vec<u16>) {
        if m.qos == Qos::AtLeastOnce {
            // A redelivery says so (DUP); a new message under an id in
            // hand is the broker giving ids out twice (mosquitto does past
            // 65,535 in flight), and is kept.
            if !self.in_hand.insert(m.pkid) {
                if m.dup {
                    return;
                }
                if !self.said_ids_reused {
                    self.said_ids_reused = true;
                    sluice_sdk::warn!(
                        "mqtt-source: {} gave packet id {} to a new message while an earlier \
                         one with it is not acknowledged: more than 65,535 messages are in \
                         flight (mosquitto 2.0.11 sends a session's whole queue past \
                         max_inflight_messages, eclipse-mosquitto/mosquitto#2301). Both are \
                         stored; a crash now repeats every message in flight. Keep a session's \
                         backlog under 65,535, or use a broker without that defect",
                        self.config.addr,
                        m.pkid
                    );
                }
            }
            pkids.push(m.pkid);
        }
        let mut headers: Vec<(&str, &[u8])> = vec![("mqtt.topic", m.topic.as_bytes())];
        if m.retain {
            headers.push(("mqtt.retain", b"true"));
        }
        out.push_parts(Some(m.topic.as_bytes()), None, &headers, |v| {
            v.extend_from_slice(&m.payload);
        });
    }
}

impl Source for MqttSource {
    type Config = Config;

    fn open(config: Config, ctx: &Context, _resume_from: Option<&[u8]>) -> Result<Self, Error> {
        if config.topics.is_empty() {
            return Err(Error::invalid_config(
                "topics is empty: name at least one topic filter, e.g. topics = [\"sensors/#\"]",
            ));
        }
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
        options.clean_start = false;
        options.keep_alive = Duration::from_secs(config.keep_alive_s);
        options.session_expiry = config.session_expiry_s;
        options.receive_maximum = config.max_unacked.max(1);
        let outage = Outage::new(
            format!("mqtt-source: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut source = MqttSource {
            config,
            options,
            client: None,
            outage,
            emitted: VecDeque::new(),
            in_hand: HashSet::new(),
            owed: Vec::new(),
            seq: 0,
            idle_since: None,
            said_ids_reused: false,
        };
        // At open the broker must answer: a password, a grant or a filter
        // to fix is said now.
        source.start(true).map_err(|e| source.options.refused(&e))?;
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        let mut pkids = Vec::new();
        while out.len() < max_records {
            // Read no further ahead of what is stored and acknowledged: what
            // is read and not acknowledged when the host dies comes again.
            if self.in_hand.len() >= usize::from(self.config.max_unacked) {
                break;
            }
            if !self.connect()? {
                break;
            }
            // Wait only with nothing in hand: records polled and not yet
            // stored go to the log first, and their acknowledgements let
            // the broker send more.
            let idle = out.is_empty() && pkids.is_empty() && self.emitted.is_empty();
            let client = self.client.as_mut().expect("connected");
            match client.next(idle.then_some(IDLE_WAIT)) {
                Ok(Some(Incoming::Publish(m))) => self.take(m, out, &mut pkids),
                Ok(Some(Incoming::SubAck { pkid, granted })) if pkid == SUBSCRIBE_PKID => {
                    self.subscribed(&granted)?;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_interrupted() => break,
                Err(e) if e.is_connection_lost() => {
                    self.lost(&e);
                    break;
                }
                Err(e) => return Err(Error::fatal(format!("reading from the broker: {e}"))),
            }
        }
        if out.is_empty() && pkids.is_empty() {
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
        self.seq += 1;
        self.emitted.push_back((self.seq, pkids));
        Ok(Poll::at(self.seq.to_string().into_bytes()))
    }

    fn commit(&mut self, position: &[u8]) -> Result<(), Error> {
        let Some(upto) = std::str::from_utf8(position)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return Ok(());
        };
        let mut acks = Vec::new();
        while let Some((_, pkids)) = self.emitted.pop_front_if(|(seq, _)| *seq <= upto) {
            acks.extend(pkids);
        }
        if acks.is_empty() {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            // Sent on the next connection, if the session lives.
            self.owed.extend(acks);
            return Ok(());
        };
        for &pkid in &acks {
            client.puback(pkid);
        }
        let sent = client.flush();
        // Sent or not, these ids are no longer ours to recognise: once the
        // broker has a PUBACK it may give the id to a new message. When
        // the write failed and the broker did not get it, it sends the
        // message again and it is stored again: a duplicate, never a loss.
        for pkid in acks {
            self.in_hand.remove(&pkid);
        }
        if let Err(e) = sent {
            if e.is_interrupted() {
                self.client = None;
            } else {
                self.lost(&e);
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            client.disconnect();
        }
        Ok(())
    }
}

sluice_sdk::export_source!(MqttSource);

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> MqttSource {
        let config: Config =
            sluice_sdk::serde_json::from_str(r#"{"addr": "127.0.0.1:1883", "topics": ["a/#"]}"#)
                .unwrap();
        MqttSource {
            options: ConnectOptions::new(&config.addr, "test"),
            outage: Outage::new("test", (1, 1), ("a", "b")).unwrap(),
            config,
            client: None,
            emitted: VecDeque::new(),
            in_hand: HashSet::new(),
            owed: Vec::new(),
            seq: 0,
            idle_since: None,
            said_ids_reused: false,
        }
    }

    fn message(pkid: u16, dup: bool, payload: &'static [u8]) -> Message {
        Message {
            pkid,
            topic: "a/b".into(),
            payload: payload.into(),
            qos: Qos::AtLeastOnce,
            dup,
            retain: false,
        }
    }

    #[test]
    fn a_redelivery_of_a_message_in_hand_is_not_stored_twice_but_a_reused_id_is_kept() {
        let mut s = source();
        let mut out = BatchWriter::new();
        let mut pkids = Vec::new();
        s.take(message(5, false, b"first"), &mut out, &mut pkids);
        // Sent again after a reconnection, not yet acknowledged: skipped.
        s.take(message(5, true, b"first"), &mut out, &mut pkids);
        assert_eq!(out.len(), 1);
        assert!(!s.said_ids_reused);
        // The broker giving the id out again for a new message: kept.
        s.take(message(5, false, b"second"), &mut out, &mut pkids);
        assert_eq!(out.len(), 2);
        assert!(s.said_ids_reused, "said once");
        assert_eq!(pkids, [5, 5]);
    }

    #[test]
    fn acknowledgements_stored_without_a_connection_are_owed_until_the_next() {
        let mut s = source();
        s.in_hand.extend([1, 2, 3]);
        s.emitted.extend([(1, vec![1, 2]), (2, vec![3])]);
        s.commit(b"1").unwrap();
        // No connection: owed, and still in hand (the broker cannot have
        // reused the ids), so their redeliveries are recognised.
        assert_eq!(s.owed, [1, 2]);
        assert!(s.in_hand.contains(&1) && s.in_hand.contains(&3));
        assert_eq!(s.emitted.len(), 1);
    }
}
