//! `redis-source`: reads a Redis stream through a consumer group, speaking
//! RESP itself (`sluice-redis`) over the connection its `net` grant allows.
//!
//! - **Reads** with `XREADGROUP` as the group's consumer
//!   `<connector>-<index>`, up to a batch at a time, waiting (`BLOCK`) for
//!   new entries: the wait is free, and the host ends it to stop, pause or
//!   swap (the read's answer is then taken by the next poll, on the same
//!   connection). While reads come back full, the next is sent one ahead,
//!   so the server reads while the host stores.
//! - **A record an entry**: the value is the entry's field `value` if it
//!   has one (as `redis-sink` writes), else its fields as a JSON object;
//!   the key is its field `key`, if any; the headers `redis.stream` and
//!   `redis.id` say where it came from; the timestamp is the id's
//!   milliseconds.
//! - **Each entry once into the log.** The position stored with each batch
//!   is the id of its last entry. An entry is acknowledged (`XACK`) only
//!   once the log holds it (`commit`), in the same write as the next read.
//!   After a restart or a reconnection the consumer first reads its own
//!   pending entries again (`XREADGROUP … 0`): those up to the stored
//!   position are in the log already and are only acknowledged, those
//!   emitted since wait for their commit, and the rest are emitted.
//!   Consumer names are stable (connector and index), so nothing delivered
//!   to an instance that died is left behind when it comes back.
//! - **A server that goes away** pauses the flow (said once, reconnected
//!   with backoff); a wrong password or an ungranted address fails at
//!   `open` with what to fix, the password in no message.
//!
//! It does not: claim the pending entries of a consumer that never comes
//! back (`parallelism` lowered: `XAUTOCLAIM` them by hand, or keep the
//! count), read several streams, or follow Redis Cluster.

mod config;

use std::collections::VecDeque;
use std::fmt;

use sluice_redis::{Client, Commands, ConnectOptions, RedisError, Value};
use sluice_sdk::outage::Outage;
use sluice_sdk::serde_json;
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};

pub use config::{Config, Start};

/// A stream entry's id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    const ZERO: EntryId = EntryId(0, 0);

    fn parse(text: &str) -> Option<EntryId> {
        let (ms, seq) = text.split_once('-')?;
        Some(EntryId(ms.parse().ok()?, seq.parse().ok()?))
    }
}

impl EntryId {
    /// Appends the id as Redis writes it (a thousand times a batch, so
    /// without `fmt`).
    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(self.0).as_bytes());
        out.push(b'-');
        out.extend_from_slice(itoa::Buffer::new().format(self.1).as_bytes());
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of a read.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    id: EntryId,
    /// The id as the server wrote it (the record's `redis.id` header).
    text: Vec<u8>,
    /// Its fields; none when it was deleted while pending.
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The source's state.
#[derive(Debug)]
pub struct RedisSource {
    config: Config,
    options: ConnectOptions,
    group: String,
    consumer: String,
    client: Option<Client>,
    outage: Outage,
    /// While the consumer's own pending entries are read again (after open
    /// or a reconnection): the id to read after.
    pending_after: Option<EntryId>,
    /// What was sent and not answered yet, in order: an `XACK` goes with
    /// each read; a read stays in flight when the host ends its wait, and
    /// while new entries fill every read, reads are sent one ahead, so the
    /// server reads the next while the plugin and the host handle the last.
    in_flight: VecDeque<Sent>,
    /// The last read of new entries took as many as it asked for: there
    /// are likely more, so the next is sent ahead.
    full: bool,
    /// The last entry the log holds or will hold (emitted).
    last: Option<EntryId>,
    /// The last entry the log holds (committed): the host may poll again
    /// before it commits, so only these may be acknowledged when read again.
    committed: Option<EntryId>,
    /// Emitted entries not acknowledged yet, in order.
    unacked: VecDeque<EntryId>,
    /// Stored entries to acknowledge: the `XACK` goes with the next read,
    /// in the same write (one round trip a batch, not two).
    to_ack: Vec<EntryId>,
}

/// A command whose answer is awaited.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// An `XACK` of these entries. Behind a read that waits (`BLOCK`) it
    /// waits too: if the connection is dropped first, they are sent again.
    Ack(Vec<EntryId>),
    Read,
}

/// Reads of new entries (`>`) in flight at once while they come back
/// full. Each takes the next entries, so two keep the server busy; the
/// pending entries are read one at a time (each read starts after the
/// last one's last id).
const READS_AHEAD: usize = 2;

impl RedisSource {
    /// Connects if there is no connection: `false` when the server is away
    /// (said once, waited for) or the host ended the wait.
    fn connect(&mut self) -> Result<bool, Error> {
        if self.client.is_some() {
            return Ok(true);
        }
        match Client::connect(&self.options) {
            Ok(client) => {
                self.client = Some(client);
                self.pending_after = Some(EntryId::ZERO);
                self.in_flight.clear();
                // The group may have gone with the server's data.
                if let Err(e) = self.make_group() {
                    if e.is_interrupted() {
                        self.client = None;
                    } else {
                        // A server still loading its data, say.
                        self.lost(&e);
                        self.outage.wait(None);
                    }
                    return Ok(false);
                }
                self.outage.back();
                Ok(true)
            }
            Err(e) if e.is_interrupted() => Ok(false),
            Err(e) if e.is_denied() || (!e.is_connection_lost() && !e.is_retriable()) => {
                Err(self.options.refused(&e))
            }
            Err(e) => {
                self.outage.went_away(&e.to_string());
                self.outage.wait(None);
                Ok(false)
            }
        }
    }

    /// Makes the group if it is not there.
    fn make_group(&mut self) -> Result<(), RedisError> {
        let from = match self.config.start {
            Start::Earliest => "0",
            Start::Latest => "$",
        };
        let client = self.client.as_mut().expect("connected");
        let made = client.query(&[
            "XGROUP",
            "CREATE",
            &self.config.stream,
            &self.group,
            from,
            "MKSTREAM",
        ]);
        match made {
            Err(RedisError::Server(e)) if e.starts_with("BUSYGROUP") => Ok(()),
            other => other.map(drop),
        }
    }

    /// The connection is gone: said once; the next poll connects again.
    fn lost(&mut self, e: &RedisError) {
        self.client = None;
        self.in_flight.clear();
        self.outage.went_away(&e.to_string());
    }

    fn at(&self) -> Poll {
        match self.last {
            Some(id) => Poll::at(id.to_string().into_bytes()),
            None => Poll::default(),
        }
    }

    /// Reads the next entries (the pending ones first): `None` when the
    /// wait was ended or the connection lost.
    fn read(&mut self, max: usize) -> Result<Option<Vec<Entry>>, Error> {
        let ahead = if self.pending_after.is_none() && self.full {
            READS_AHEAD
        } else {
            1
        };
        while self.reads_in_flight() < ahead {
            if !self.send_read(max) {
                return Ok(None);
            }
        }
        self.take_read()
    }

    fn reads_in_flight(&self) -> usize {
        self.in_flight.iter().filter(|s| **s == Sent::Read).count()
    }

    /// Sends the next read, the acknowledgements due first in the same
    /// write: `false` when the connection is lost.
    fn send_read(&mut self, max: usize) -> bool {
        let after = self.pending_after.map(|id| id.to_string());
        let count = max.max(1).to_string();
        let block = self.config.block_ms.to_string();
        let mut c = Commands::default();
        if !self.to_ack.is_empty() {
            xack(&mut c, &self.config.stream, &self.group, &self.to_ack);
        }
        let mut args = vec!["XREADGROUP", "GROUP", &self.group, &self.consumer];
        args.extend(["COUNT", &count]);
        if after.is_none() && !self.config.bounded {
            args.extend(["BLOCK", &block]);
        }
        args.extend([
            "STREAMS",
            &self.config.stream,
            after.as_deref().unwrap_or(">"),
        ]);
        c.push(&args);
        let client = self.client.as_mut().expect("connected");
        if let Err(e) = client.send(&c) {
            self.lost(&e);
            return false;
        }
        // Lost with the connection if it fails: those entries are then
        // pending and stored, acknowledged when read again.
        if !self.to_ack.is_empty() {
            self.in_flight
                .push_back(Sent::Ack(std::mem::take(&mut self.to_ack)));
        }
        self.in_flight.push_back(Sent::Read);
        true
    }

    /// The answer to the first command in flight, taken off the queue:
    /// `None` when the wait was ended (the answer still comes: a later
    /// poll takes it) or the connection lost.
    fn next_answer(&mut self) -> Option<(Sent, Value)> {
        if self.in_flight.is_empty() {
            return None;
        }
        match self.client.as_mut()?.reply() {
            Ok(reply) => Some((self.in_flight.pop_front()?, reply)),
            Err(e) if e.is_interrupted() => None,
            Err(e) => {
                self.lost(&e);
                None
            }
        }
    }

    /// Takes the answer of the read in flight: `None` when the wait was
    /// ended or the connection lost.
    fn take_read(&mut self) -> Result<Option<Vec<Entry>>, Error> {
        // An `XACK`'s answer says nothing to act on: one that failed leaves
        // its entries pending, acknowledged when they are read again.
        let reply = loop {
            match self.next_answer() {
                Some((Sent::Ack(_), _)) => {}
                Some((Sent::Read, reply)) => break reply,
                None => return Ok(None),
            }
        };
        match reply {
            Value::Error(e) if e.starts_with("NOGROUP") => {
                // The group (or the stream) was deleted meanwhile: the next
                // poll connects again, which makes it (the answers still
                // to come go with this connection).
                sluice_sdk::warn!(
                    "redis-source: the group {:?} of {:?} is gone; making it again",
                    self.group,
                    self.config.stream
                );
                self.client = None;
                self.in_flight.clear();
                Ok(None)
            }
            Value::Error(e) => {
                let e = RedisError::Server(e);
                if e.is_retriable() {
                    Err(Error::retriable(format!(
                        "reading {:?}: {e}",
                        self.config.stream
                    )))
                } else {
                    Err(Error::fatal(format!(
                        "reading {:?}: {e}",
                        self.config.stream
                    )))
                }
            }
            reply => entries(reply)
                .map(Some)
                .map_err(|why| Error::fatal(format!("Redis protocol: {why}"))),
        }
    }
}

/// Queues `XACK stream group ids…`.
fn xack(c: &mut Commands, stream: &str, group: &str, ids: &[EntryId]) {
    c.start(3 + ids.len())
        .arg(b"XACK")
        .arg(stream.as_bytes())
        .arg(group.as_bytes());
    let mut text = Vec::with_capacity(41);
    for id in ids {
        text.clear();
        id.write(&mut text);
        c.arg(&text);
    }
}

/// The entries of an `XREADGROUP` answer (`nil` when the wait ran out).
fn entries(reply: Value) -> Result<Vec<Entry>, &'static str> {
    let mut out = Vec::new();
    for stream in reply.into_array().ok_or("not an array of streams")? {
        let mut pair = stream.into_array().ok_or("not a stream and its entries")?;
        let list = pair.pop().ok_or("a stream without entries")?;
        for entry in list.into_array().ok_or("entries that are not an array")? {
            let mut parts = entry.into_array().ok_or("an entry that is not an array")?;
            let fields = parts.pop().ok_or("an entry without fields")?;
            let Some(Value::Bulk(text)) = parts.pop() else {
                return Err("an entry without an id");
            };
            let id = std::str::from_utf8(&text)
                .ok()
                .and_then(EntryId::parse)
                .ok_or("an entry id that is not <milliseconds>-<sequence>")?;
            let flat = fields.into_array().unwrap_or_default();
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(Value::Bulk(f)), Some(Value::Bulk(v))) = (it.next(), it.next()) {
                pairs.push((f, v));
            }
            out.push(Entry {
                id,
                text,
                fields: pairs,
            });
        }
    }
    Ok(out)
}

/// Writes `entry` as a record.
fn push(out: &mut BatchWriter, stream: &str, entry: &Entry) {
    let fields = &entry.fields;
    let find = |name: &[u8]| {
        fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    };
    let key = find(b"key");
    let headers: [(&str, &[u8]); 2] = [
        ("redis.stream", stream.as_bytes()),
        ("redis.id", &entry.text),
    ];
    out.push_parts(key, Some(entry.id.0 as i64), &headers, |v| {
        match find(b"value") {
            Some(value) => v.extend_from_slice(value),
            None => {
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .iter()
                    .map(|(f, v)| {
                        (
                            String::from_utf8_lossy(f).into_owned(),
                            serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                        )
                    })
                    .collect();
                v.extend_from_slice(serde_json::Value::Object(object).to_string().as_bytes());
            }
        }
    });
}

impl Source for RedisSource {
    type Config = Config;

    fn open(config: Config, ctx: &Context, resume_from: Option<&[u8]>) -> Result<Self, Error> {
        let last = match resume_from {
            None => None,
            Some(bytes) => Some(
                std::str::from_utf8(bytes)
                    .ok()
                    .and_then(EntryId::parse)
                    .ok_or_else(|| {
                        Error::fatal(format!(
                            "the stored position {:?} is not a stream entry id",
                            String::from_utf8_lossy(bytes)
                        ))
                    })?,
            ),
        };
        let options = ConnectOptions {
            addr: config.addr.clone(),
            user: config.user.clone(),
            password: config.password.clone(),
            db: config.db,
            tls: sluice_sdk::net::tls_server_name(
                config.tls,
                config.server_name.as_deref(),
                &config.addr,
            ),
            client_name: format!("sluice {}", ctx.connector),
        };
        let outage = Outage::new(
            format!("redis-source: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut source = RedisSource {
            group: config
                .group
                .clone()
                .unwrap_or_else(|| ctx.connector.clone()),
            consumer: format!("{}-{}", ctx.connector, ctx.index),
            config,
            options,
            client: None,
            outage,
            pending_after: Some(EntryId::ZERO),
            in_flight: VecDeque::new(),
            full: false,
            last,
            committed: last,
            unacked: VecDeque::new(),
            to_ack: Vec::new(),
        };
        // At open the server must answer: a password or a grant to fix is
        // said now.
        let client = Client::connect(&source.options).map_err(|e| source.options.refused(&e))?;
        source.client = Some(client);
        source
            .make_group()
            .map_err(|e| source.options.refused(&e))?;
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        loop {
            if !self.connect()? {
                return Ok(self.at());
            }
            let Some(read) = self.read(max_records)? else {
                return Ok(self.at());
            };
            let pending = self.pending_after.is_some();
            if pending && read.is_empty() {
                // Every entry delivered before is taken up: now new ones.
                self.pending_after = None;
                continue;
            }
            let mut done = Vec::new();
            for entry in &read {
                let id = entry.id;
                if pending {
                    self.pending_after = Some(id);
                }
                // In the log already (delivered before a crash, stored, not
                // acknowledged), or deleted while pending: acknowledge only.
                if self.committed.is_some_and(|c| id <= c) || entry.fields.is_empty() {
                    done.push(id);
                    continue;
                }
                // Emitted, its batch not stored yet: acknowledged at its
                // commit.
                if self.last.is_some_and(|last| id <= last) {
                    continue;
                }
                push(out, &self.config.stream, entry);
                self.last = Some(id);
                self.unacked.push_back(id);
            }
            self.to_ack.extend(done);
            if !pending {
                self.full = read.len() >= max_records;
            }
            let end = self.config.bounded && !pending && read.is_empty();
            if out.is_empty() && !end && pending {
                continue;
            }
            return Ok(self.at().done_if(end));
        }
    }

    fn commit(&mut self, position: &[u8]) -> Result<(), Error> {
        let Some(upto) = std::str::from_utf8(position).ok().and_then(EntryId::parse) else {
            return Ok(());
        };
        self.committed = self.committed.max(Some(upto));
        while self.unacked.front().is_some_and(|id| *id <= upto) {
            self.to_ack.extend(self.unacked.pop_front());
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        // Stored, not acknowledged: they were to go with the next read, or
        // went behind a read still in flight (which may hold them back).
        // Acknowledged now, on a connection of their own if a read is in
        // flight (dropping it ends the read; anything it delivered stays
        // pending, read again at the next start). A failure leaves them
        // pending, acknowledged when the next start reads them again.
        for sent in std::mem::take(&mut self.in_flight) {
            if let Sent::Ack(ids) = sent {
                self.to_ack.extend(ids);
            }
            self.client = None;
        }
        if self.to_ack.is_empty() {
            return Ok(());
        }
        let client = match self.client.as_mut() {
            Some(client) => client,
            None => match Client::connect(&self.options) {
                Ok(client) => self.client.insert(client),
                Err(_) => return Ok(()),
            },
        };
        let mut c = Commands::default();
        xack(&mut c, &self.config.stream, &self.group, &self.to_ack);
        let _ = client.run(&c);
        Ok(())
    }
}

sluice_sdk::export_source!(RedisSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_by_time_then_sequence_and_read_back() {
        let a = EntryId::parse("1700000000000-5").unwrap();
        let b = EntryId::parse("1700000000001-0").unwrap();
        assert!(a < b && EntryId::ZERO < a);
        assert_eq!(a.to_string(), "1700000000000-5");
        let mut text = Vec::new();
        a.write(&mut text);
        assert_eq!(text, b"1700000000000-5");
        assert_eq!(EntryId::parse("17"), None);
    }

    #[test]
    fn an_xreadgroup_answer_reads_into_entries() {
        let bulk = |s: &str| Value::Bulk(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("value"), bulk("v")]),
                ]),
                Value::Array(vec![bulk("1-2"), Value::Nil]),
            ]),
        ])]);
        let got = entries(reply).unwrap();
        assert_eq!(
            got[0],
            Entry {
                id: EntryId(1, 1),
                text: b"1-1".to_vec(),
                fields: vec![(b"value".to_vec(), b"v".to_vec())]
            }
        );
        assert_eq!((got[1].id, got[1].fields.len()), (EntryId(1, 2), 0));
        assert!(entries(Value::Nil).unwrap().is_empty());
    }
}
