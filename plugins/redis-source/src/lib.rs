//! `redis-source`: reads a Redis stream through a consumer group, speaking
//! RESP itself (`sluice-redis`) over the connection its `net` grant allows.
//!
//! - **Reads** with `XREADGROUP` as the group's consumer
//!   `<connector>-<index>`, up to a batch at a time, waiting (`BLOCK`) for
//!   new entries: the wait is free, and the host ends it to stop, pause or
//!   swap (the read's answer is then taken by the next poll, on the same
//!   connection).
//! - **A record an entry**: the value is the entry's field `value` if it
//!   has one (as `redis-sink` writes), else its fields as a JSON object;
//!   the key is its field `key`, if any; the headers `redis.stream` and
//!   `redis.id` say where it came from; the timestamp is the id's
//!   milliseconds.
//! - **Each entry once into the log.** The position stored with each batch
//!   is the id of its last entry. An entry is acknowledged (`XACK`) only
//!   once the log holds it (`commit`), in the same write as the next read. After a restart or a reconnection
//!   the consumer first reads its own pending entries again (`XREADGROUP
//!   … 0`): those up to the stored position are in the log already and are
//!   only acknowledged, those emitted since wait for their commit, and the
//!   rest are emitted. Consumer names are stable
//!   (connector and index), so nothing delivered to an instance that died
//!   is left behind when it comes back.
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

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// One entry of a read: its id and its fields (none when it was deleted
/// while pending).
type Entry = (EntryId, Vec<(Vec<u8>, Vec<u8>)>);

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
    /// A read was sent and its answer not taken (the host ended the wait).
    awaiting: bool,
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
    /// An `XACK` was sent before the read in flight: its answer comes
    /// first.
    acking: bool,
}

impl RedisSource {
    /// Connects if there is no connection: `false` when the server is away
    /// (said once, waited for) or the host ended the wait.
    fn connect(&mut self) -> Result<bool, Error> {
        if self.client.is_some() {
            return Ok(true);
        }
        match Client::connect(&self.options) {
            Ok(client) => {
                self.outage.back();
                self.client = Some(client);
                self.pending_after = Some(EntryId::ZERO);
                self.awaiting = false;
                self.acking = false;
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
        self.awaiting = false;
        self.acking = false;
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
        if !self.awaiting {
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
                return Ok(None);
            }
            self.awaiting = true;
            self.acking = !self.to_ack.is_empty();
            // Lost with the connection if it fails: those entries are then
            // pending and stored, acknowledged when read again.
            self.to_ack.clear();
        }
        let client = self.client.as_mut().expect("connected");
        if self.acking {
            match client.reply() {
                Ok(_) => self.acking = false,
                Err(e) if e.is_interrupted() => return Ok(None),
                Err(e) => {
                    self.lost(&e);
                    return Ok(None);
                }
            }
        }
        let reply = match client.reply() {
            Ok(reply) => reply,
            // The answer still comes: the next poll takes it.
            Err(e) if e.is_interrupted() => return Ok(None),
            Err(e) if e.is_connection_lost() => {
                self.lost(&e);
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::fatal(format!(
                    "reading {:?}: {e}",
                    self.config.stream
                )));
            }
        };
        self.awaiting = false;
        match reply {
            Value::Error(e) if e.starts_with("NOGROUP") => {
                // The group (or the stream) was deleted meanwhile.
                sluice_sdk::warn!(
                    "redis-source: the group {:?} of {:?} is gone; making it again",
                    self.group,
                    self.config.stream
                );
                if let Err(e) = self.make_group() {
                    self.lost(&e);
                }
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
    let ids: Vec<String> = ids.iter().map(EntryId::to_string).collect();
    c.start(3 + ids.len())
        .arg(b"XACK")
        .arg(stream.as_bytes())
        .arg(group.as_bytes());
    for id in &ids {
        c.arg(id.as_bytes());
    }
}

/// The entries of an `XREADGROUP` answer (`nil` when the wait ran out).
fn entries(reply: Value) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    for stream in reply.into_array().ok_or("not an array of streams")? {
        let mut pair = stream.into_array().ok_or("not a stream and its entries")?;
        let list = pair.pop().ok_or("a stream without entries")?;
        for entry in list.into_array().ok_or("entries that are not an array")? {
            let mut parts = entry.into_array().ok_or("an entry that is not an array")?;
            let fields = parts.pop().ok_or("an entry without fields")?;
            let id = parts
                .pop()
                .as_ref()
                .and_then(Value::as_text)
                .and_then(EntryId::parse)
                .ok_or("an entry without an id")?;
            let mut pairs = Vec::new();
            let flat = fields.into_array().unwrap_or_default();
            let mut it = flat.into_iter();
            while let (Some(Value::Bulk(f)), Some(Value::Bulk(v))) = (it.next(), it.next()) {
                pairs.push((f, v));
            }
            out.push((id, pairs));
        }
    }
    Ok(out)
}

/// Writes entry `id` as a record.
fn push(out: &mut BatchWriter, stream: &str, id: EntryId, fields: &[(Vec<u8>, Vec<u8>)]) {
    let find = |name: &[u8]| {
        fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.as_slice())
    };
    let key = find(b"key");
    let id_text = id.to_string();
    let headers: [(&str, &[u8]); 2] = [
        ("redis.stream", stream.as_bytes()),
        ("redis.id", id_text.as_bytes()),
    ];
    out.push_parts(key, Some(id.0 as i64), &headers, |v| match find(b"value") {
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
            awaiting: false,
            last,
            committed: last,
            unacked: VecDeque::new(),
            to_ack: Vec::new(),
            acking: false,
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
            for (id, fields) in &read {
                if pending {
                    self.pending_after = Some(*id);
                }
                // In the log already (delivered before a crash, stored, not
                // acknowledged), or deleted while pending: acknowledge only.
                if self.committed.is_some_and(|c| *id <= c) || fields.is_empty() {
                    done.push(*id);
                    continue;
                }
                // Emitted, its batch not stored yet: acknowledged at its
                // commit.
                if self.last.is_some_and(|last| *id <= last) {
                    continue;
                }
                push(out, &self.config.stream, *id, fields);
                self.last = Some(*id);
                self.unacked.push_back(*id);
            }
            self.to_ack.extend(done);
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
        // Stored, not acknowledged: they were to go with the next read.
        // Acknowledged now, on a connection of their own if a read is in
        // flight (dropping it ends the read; anything it delivered stays
        // pending, read again at the next start). A failure leaves them
        // pending, acknowledged when the next start reads them again.
        if self.to_ack.is_empty() {
            return Ok(());
        }
        if self.awaiting {
            self.client = None;
            self.awaiting = false;
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
            (EntryId(1, 1), vec![(b"value".to_vec(), b"v".to_vec())])
        );
        assert_eq!(got[1], (EntryId(1, 2), vec![]));
        assert!(entries(Value::Nil).unwrap().is_empty());
    }
}
