//! `stomp-source`: consumes a STOMP destination (an ActiveMQ queue, as
//! Bahir's ActiveMQ source reads one), speaking STOMP 1.2 itself
//! (`sluice-stomp`) over the connection its `net` grant allows.
//!
//! - **A record a message**: the value is the body; the headers are the
//!   message's (`message-id`, `destination`, `timestamp`, `persistent`, the
//!   sender's own, …) but for `ack`, `subscription` and `content-length`;
//!   the key is the header `key_header` names, if it does.
//! - **Acknowledged once stored.** The source subscribes with
//!   `ack:client-individual` and a prefetch of `prefetch`: the broker sends
//!   at most that many messages unacknowledged, and a message's `ACK` goes
//!   out only once the log holds the batch with it (`commit`). Until then
//!   the broker keeps it, and sends it again once the connection is gone:
//!   after a crash, or a lost connection. Delivery is at least once: a
//!   message stored just before a crash, or whose `ACK` the broker had not
//!   read, is stored again after it. Within one run a redelivery is
//!   recognised by its `message-id` and not stored twice.
//! - **A broker that goes away** pauses the flow (said once, reconnected
//!   with backoff, subscribed again); a wrong password, an ungranted
//!   address or a destination the broker will not let the source read
//!   fails at `open` with what to fix, the password in no message.
//!
//! It does not: consume inside STOMP transactions, `NACK` (a message the
//! log cannot take is not refused to the broker), or keep a durable topic
//! subscription (a `/topic/` destination is read only while connected).

mod config;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sluice_sdk::outage::Outage;
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};
use sluice_stomp::{Ack, Client, ConnectOptions, Frame, Incoming, StompError};

pub use config::Config;

/// The source's one subscription, and the receipt that answers it.
const SUBSCRIPTION: &str = "0";
const SUBSCRIBED: &str = "subscribed";

/// How long a poll with nothing in hand waits for a message.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Headers that belong to the delivery, not the message.
const DELIVERY_HEADERS: [&str; 3] = ["ack", "subscription", "content-length"];

/// The source's state.
#[derive(Debug)]
pub struct StompSource {
    config: Config,
    options: ConnectOptions,
    client: Option<Client>,
    outage: Outage,
    /// Messages read while waiting for the subscription's receipt.
    early: VecDeque<Frame>,
    /// The batches polled and not committed: each one's number and the
    /// `message-id`s in it.
    emitted: VecDeque<(u64, Vec<String>)>,
    /// The messages emitted and not committed, by `message-id`: the id to
    /// acknowledge each with on this connection (`None` when it came on
    /// one that is gone: the broker sends it again).
    in_hand: HashMap<String, Option<String>>,
    /// Messages stored whose `ACK` did not reach the broker: when it sends
    /// one again, it is acknowledged and not stored twice.
    stored: HashSet<String>,
    /// The number of the last batch polled.
    seq: u64,
    /// Since when, connected and with everything stored, no message came.
    idle_since: Option<Instant>,
}

impl StompSource {
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
            Err(Started::Refused(e)) => Err(e),
            Err(Started::Failed(e)) if e.is_interrupted() => Ok(false),
            Err(Started::Failed(e)) if e.is_denied() || !e.is_connection_lost() => {
                Err(self.options.refused(&e))
            }
            Err(Started::Failed(e)) => {
                self.outage.went_away(&e.to_string());
                self.outage.wait(None);
                Ok(false)
            }
        }
    }

    /// Connects and subscribes, and waits for the broker to say it took
    /// the subscription (a destination it will not let us read is what to
    /// fix); messages that come first are kept for `poll`.
    fn start(&mut self) -> Result<(), Started> {
        self.idle_since = None;
        let mut client = Client::connect(&self.options)?;
        let prefetch = self.config.prefetch.max(1).to_string();
        let mut extra = vec![
            ("receipt", SUBSCRIBED),
            ("activemq.prefetchSize", prefetch.as_str()),
            ("prefetch-count", prefetch.as_str()),
        ];
        if let Some(selector) = &self.config.selector {
            extra.push(("selector", selector));
        }
        client.subscribe(
            SUBSCRIPTION,
            &self.config.destination,
            Ack::ClientIndividual,
            &extra,
        );
        client.flush()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.next(Some(left))? {
                Some(Incoming::Receipt(r)) if r == SUBSCRIBED => break,
                Some(Incoming::Message(m)) => self.early.push_back(m),
                Some(Incoming::Receipt(_)) => {}
                Some(Incoming::Error { message, .. }) => {
                    return Err(Started::Refused(Error::invalid_config(format!(
                        "the broker {} refused to subscribe to {:?}: {message}",
                        self.config.addr, self.config.destination
                    ))));
                }
                None => {
                    return Err(Started::Failed(StompError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no receipt for SUBSCRIBE within 10 s",
                    ))));
                }
            }
        }
        self.client = Some(client);
        Ok(())
    }

    /// The connection is gone: said once; the next poll connects again.
    /// The acknowledgement ids of its messages go with it.
    fn lost(&mut self, why: &str) {
        self.client = None;
        self.idle_since = None;
        self.early.clear();
        for ack in self.in_hand.values_mut() {
            *ack = None;
        }
        self.outage.went_away(why);
    }

    /// Writes `m` as a record, unless it is a redelivery of one in hand or
    /// stored.
    fn take(&mut self, m: &Frame, out: &mut BatchWriter, ids: &mut Vec<String>) {
        let ack = m
            .header("ack")
            .or(m.header("message-id"))
            .map(str::to_owned);
        if let Some(id) = m.header("message-id") {
            if self.stored.remove(id) {
                if let (Some(client), Some(ack)) = (self.client.as_mut(), ack) {
                    client.ack(&ack);
                }
                return;
            }
            if let Some(held) = self.in_hand.get_mut(id) {
                *held = ack;
                return;
            }
            self.in_hand.insert(id.to_owned(), ack);
            ids.push(id.to_owned());
        }
        let key = self
            .config
            .key_header
            .as_deref()
            .and_then(|h| m.header(h))
            .map(str::as_bytes);
        let headers: Vec<(&str, &[u8])> = m
            .headers
            .iter()
            .filter(|(n, _)| !DELIVERY_HEADERS.contains(&n.as_str()))
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        out.push_parts(key, None, &headers, |v| v.extend_from_slice(&m.body));
    }
}

/// Why a connection could not be started.
enum Started {
    /// The broker refused what the config asks: fail the connector.
    Refused(Error),
    /// The connection failed.
    Failed(StompError),
}

impl From<StompError> for Started {
    fn from(e: StompError) -> Self {
        Started::Failed(e)
    }
}

impl Source for StompSource {
    type Config = Config;

    fn open(config: Config, _ctx: &Context, _resume_from: Option<&[u8]>) -> Result<Self, Error> {
        let mut options = ConnectOptions::new(&config.addr);
        options.tls = sluice_sdk::net::tls_server_name(
            config.tls,
            config.server_name.as_deref(),
            &config.addr,
        );
        if let Some(host) = &config.host {
            options.host.clone_from(host);
        }
        options.login = config.user.clone();
        options.passcode = config.password.clone();
        options.heart_beat = Duration::from_millis(config.heart_beat_ms);
        let outage = Outage::new(
            format!("stomp-source: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut source = StompSource {
            config,
            options,
            client: None,
            outage,
            early: VecDeque::new(),
            emitted: VecDeque::new(),
            in_hand: HashMap::new(),
            stored: HashSet::new(),
            seq: 0,
            idle_since: None,
        };
        // At open the broker must answer: a password, a grant or a
        // destination to fix is said now.
        match source.start() {
            Ok(()) => Ok(source),
            Err(Started::Refused(e)) => Err(e),
            Err(Started::Failed(e)) => Err(source.options.refused(&e)),
        }
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        let mut ids = Vec::new();
        while out.len() < max_records {
            if let Some(m) = self.early.pop_front() {
                self.take(&m, out, &mut ids);
                continue;
            }
            // The broker sends no more than the prefetch unacknowledged.
            if self.in_hand.len() >= self.config.prefetch.max(1) as usize {
                break;
            }
            if !self.connect()? {
                break;
            }
            // Wait only with nothing in hand: records polled and not yet
            // stored go to the log first, and their acknowledgements let
            // the broker send more.
            let idle = out.is_empty() && ids.is_empty() && self.emitted.is_empty();
            let client = self.client.as_mut().expect("connected");
            match client.next(idle.then_some(IDLE_WAIT)) {
                Ok(Some(Incoming::Message(m))) => self.take(&m, out, &mut ids),
                Ok(Some(Incoming::Receipt(_))) => {}
                Ok(Some(Incoming::Error { message, .. })) => {
                    self.lost(&format!("the broker said: {message}"));
                    break;
                }
                Ok(None) => break,
                Err(e) if e.is_interrupted() => break,
                Err(e) => {
                    self.lost(&e.to_string());
                    break;
                }
            }
        }
        // Redeliveries acknowledged at once go out now.
        if let Some(client) = self.client.as_mut()
            && client.queued() > 0
            && let Err(e) = client.flush()
        {
            self.lost(&e.to_string());
        }
        if out.is_empty() && ids.is_empty() {
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
        self.emitted.push_back((self.seq, ids));
        Ok(Poll::at(self.seq.to_string().into_bytes()))
    }

    fn commit(&mut self, position: &[u8]) -> Result<(), Error> {
        let Some(upto) = std::str::from_utf8(position)
            .ok()
            .and_then(|p| p.parse::<u64>().ok())
        else {
            return Ok(());
        };
        let mut acked = Vec::new();
        while let Some((_, ids)) = self.emitted.pop_front_if(|(seq, _)| *seq <= upto) {
            for id in ids {
                match (self.in_hand.remove(&id).flatten(), self.client.as_mut()) {
                    (Some(ack), Some(client)) => {
                        client.ack(&ack);
                        acked.push(id);
                    }
                    // The broker sends it again: acknowledged then.
                    _ => {
                        self.stored.insert(id);
                    }
                }
            }
        }
        if let Some(client) = self.client.as_mut()
            && client.queued() > 0
            && let Err(e) = client.flush()
        {
            // Whether the broker read them is unknown: what it sends again
            // is recognised.
            self.stored.extend(acked);
            if e.is_interrupted() {
                self.client = None;
                for ack in self.in_hand.values_mut() {
                    *ack = None;
                }
            } else {
                self.lost(&e.to_string());
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

sluice_sdk::export_source!(StompSource);

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> StompSource {
        let config: Config = sluice_sdk::serde_json::from_str(
            r#"{"addr": "127.0.0.1:61613", "destination": "/queue/a", "key_header": "k"}"#,
        )
        .unwrap();
        StompSource {
            options: ConnectOptions::new(&config.addr),
            outage: Outage::new("test", (1, 1), ("a", "b")).unwrap(),
            config,
            client: None,
            early: VecDeque::new(),
            emitted: VecDeque::new(),
            in_hand: HashMap::new(),
            stored: HashSet::new(),
            seq: 0,
            idle_since: None,
        }
    }

    fn message(id: &str, ack: &str, body: &str) -> Frame {
        Frame {
            command: "MESSAGE".into(),
            headers: vec![
                ("message-id".into(), id.into()),
                ("ack".into(), ack.into()),
                ("subscription".into(), "0".into()),
                ("k".into(), "key-1".into()),
            ],
            body: body.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn a_redelivery_of_a_message_in_hand_or_stored_is_not_stored_twice() {
        let mut s = source();
        let mut out = BatchWriter::new();
        let mut ids = Vec::new();
        s.take(&message("m1", "a1", "one"), &mut out, &mut ids);
        s.take(&message("m2", "a2", "two"), &mut out, &mut ids);
        // m1 again, on a new connection: its new ack id is kept.
        s.lost("gone");
        s.take(&message("m1", "a9", "one"), &mut out, &mut ids);
        assert_eq!(out.len(), 2);
        assert_eq!(ids, ["m1", "m2"]);
        assert_eq!(s.in_hand["m1"].as_deref(), Some("a9"));
        assert_eq!(s.in_hand["m2"], None);
        // Committed with no connection: remembered as stored, and a
        // redelivery of it is not stored again.
        s.emitted.push_back((1, ids));
        s.commit(b"1").unwrap();
        assert!(s.in_hand.is_empty());
        assert!(s.stored.contains("m1") && s.stored.contains("m2"));
        let mut again = BatchWriter::new();
        s.take(&message("m2", "a10", "two"), &mut again, &mut Vec::new());
        assert_eq!(again.len(), 0);
        assert!(!s.stored.contains("m2"));
    }

    #[test]
    fn a_record_has_the_body_the_key_header_and_the_messages_own_headers() {
        let mut s = source();
        let mut out = BatchWriter::new();
        s.take(&message("m1", "a1", "one"), &mut out, &mut Vec::new());
        let bytes = out.finish();
        let batch = sluice_sdk::Batch::parse(&bytes).unwrap();
        let r = batch.iter().next().unwrap();
        assert_eq!(r.value, b"one");
        assert_eq!(r.key, Some(&b"key-1"[..]));
        let names: Vec<&str> = r.headers().map(|(n, _)| n).collect();
        assert_eq!(names, ["message-id", "k"]);
    }
}
