//! `redis-sink`: writes records to Redis, as Bahir's Redis sink for Flink
//! does and more, speaking RESP itself (`sluice-redis`) over the connection
//! its `net` grant allows.
//!
//! - **Modes**: `set` (the record's value at a key, optionally with a
//!   TTL), `hset` (a field of a hash, named by the record's key), `lpush`
//!   and `rpush` (onto a list), `publish` (to a channel), `xadd` (an entry
//!   of a stream, fields `value` and `key`, optionally capped with
//!   `MAXLEN ~`). The key, hash, list, channel or stream is a template over
//!   the record's key, topic, partition and offset.
//! - **One `MULTI/EXEC` per batch, offsets inside it**: each write sends
//!   the batch's commands and an `HSET` of the offset after the batch into
//!   the hash `offsets_key`, as one transaction in one round trip. Redis
//!   applies a transaction whole, so `open` returns offsets that match
//!   the data exactly and the host resumes from them: every mode writes
//!   each record once. (`publish` delivers to the subscribers connected at
//!   that moment, as Redis pub/sub always does: each record is published
//!   once, and a subscriber that was away misses it.) A write whose `EXEC`
//!   went unanswered reads the offsets again on the next connection and
//!   skips what did land.
//! - **A command the server refuses on its merits** (`WRONGTYPE`: the key
//!   holds another kind of value), or a record that cannot make one (no
//!   key where the mode or template needs it), is dead-lettered with the
//!   reason; the rest of the batch is written.
//! - **A server that goes away** (or restarts) pauses the flow: the write
//!   waits, says so once, connects again with backoff, and goes on. A
//!   wrong password or user, or an ungranted address, fails at `open`
//!   with what to fix; the password appears in no message.
//!
//! It does not: write Redis Cluster (one server, or a primary), set
//! stream entry ids, or keep the dead-letter record of a command refused
//! inside an `EXEC` whose answer was lost (the offsets say the batch
//! landed; which of its commands Redis refused is not known).

mod config;

use sluice_redis::{Client, Commands, ConnectOptions, RedisError, Value};
use sluice_sdk::outage::Outage;
use sluice_sdk::sink_offsets::{Plan, Refused, SinkOffsets};
use sluice_sdk::template::Template;
use sluice_sdk::{Batch, Context, Error, Origin, RecordRef, Rejects, Sink, StoredOffset};

pub use config::{Config, Mode};

/// Why a write did not go through.
#[derive(Debug)]
enum Failed {
    /// Talking to the server.
    Redis(RedisError),
    /// The sink's own verdict.
    Sink(Error),
}

impl From<RedisError> for Failed {
    fn from(e: RedisError) -> Self {
        Failed::Redis(e)
    }
}

/// The sink's state.
#[derive(Debug)]
pub struct RedisSink {
    config: Config,
    key: Template,
    options: ConnectOptions,
    offsets_key: String,
    client: Option<Client>,
    outage: Outage,
    /// The offsets stored in Redis, and a try whose `EXEC` went
    /// unanswered.
    offsets: SinkOffsets,
    /// The transaction being built, its buffer kept between batches.
    commands: Commands,
    /// Each queued record command's index in its batch.
    queued: Vec<usize>,
    scratch: Vec<u8>,
}

fn interrupted() -> Failed {
    Failed::Sink(Error::retriable("interrupted while waiting for Redis"))
}

impl RedisSink {
    /// Connects if there is no connection, waiting out a server that is
    /// away; reads the stored offsets again on a new connection (an `EXEC`
    /// cut off with the old one may or may not have landed).
    fn connect(&mut self) -> Result<(), Failed> {
        while self.client.is_none() {
            match Client::connect(&self.options) {
                Ok(client) => {
                    self.outage.back();
                    self.client = Some(client);
                    if let Err(e) = self.read_offsets() {
                        self.client = None;
                        return Err(e.into());
                    }
                }
                Err(e) if e.is_interrupted() => return Err(interrupted()),
                // Away: no answer, or loading its data; anything else (a
                // password, a grant) will not pass.
                Err(e) if e.is_denied() || (!e.is_connection_lost() && !e.is_retriable()) => {
                    return Err(Failed::Sink(self.options.refused(&e)));
                }
                Err(e) => {
                    self.outage.went_away(&e.to_string());
                    self.outage.wait(None);
                    if sluice_sdk::interrupted() {
                        return Err(interrupted());
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads this connector's stored offsets: the hash's fields are
    /// `<topic>/<partition>`, its values the next offsets.
    fn read_offsets(&mut self) -> Result<(), RedisError> {
        let client = self.client.as_mut().expect("connected");
        let all = client.query(&[b"HGETALL".as_slice(), self.offsets_key.as_bytes()])?;
        let items = all.into_array().unwrap_or_default();
        let rows = items.chunks(2).filter_map(|pair| {
            let (field, next) = (pair.first()?.as_text()?, pair.get(1)?.as_text()?);
            let (topic, partition) = field.rsplit_once('/')?;
            Some(vec![
                Some(topic.to_owned()),
                Some(partition.to_owned()),
                Some(next.to_owned()),
            ])
        });
        self.offsets.reload(rows.collect::<Vec<_>>());
        Ok(())
    }

    /// Queues the command record `index` (at `offset`) makes; `Err(why)`
    /// when it cannot make one, on its merits.
    fn queue(&mut self, origin: &Origin, offset: u64, r: &RecordRef<'_>) -> Result<(), String> {
        let key = &mut self.scratch;
        if self.key.render(origin, offset, r.key, key).is_none() {
            return Err("a record without a key, and the key template uses {key}".into());
        }
        let c = &mut self.commands;
        match self.config.mode {
            Mode::Set => {
                let ttl = self.config.ttl_ms.map(|ms| ms.to_string());
                c.start(if ttl.is_some() { 5 } else { 3 })
                    .arg(b"SET")
                    .arg(key)
                    .arg(r.value);
                if let Some(ms) = &ttl {
                    c.arg(b"PX").arg(ms.as_bytes());
                }
            }
            Mode::Hset => {
                let field = r
                    .key
                    .ok_or("mode = \"hset\" needs a record key: it names the hash's field")?;
                c.start(4).arg(b"HSET").arg(key).arg(field).arg(r.value);
            }
            Mode::Lpush | Mode::Rpush | Mode::Publish => {
                let verb: &[u8] = match self.config.mode {
                    Mode::Lpush => b"LPUSH",
                    Mode::Rpush => b"RPUSH",
                    _ => b"PUBLISH",
                };
                c.start(3).arg(verb).arg(key).arg(r.value);
            }
            Mode::Xadd => {
                let cap = self.config.maxlen.map(|n| n.to_string());
                let args =
                    5 + if cap.is_some() { 3 } else { 0 } + if r.key.is_some() { 2 } else { 0 };
                c.start(args).arg(b"XADD").arg(key);
                if let Some(n) = &cap {
                    c.arg(b"MAXLEN").arg(b"~").arg(n.as_bytes());
                }
                c.arg(b"*").arg(b"value").arg(r.value);
                if let Some(k) = r.key {
                    c.arg(b"key").arg(k);
                }
            }
        }
        Ok(())
    }

    /// Writes what the store lacks of `origin`'s batch and the offset after
    /// it in one transaction; returns the records refused.
    fn try_write(&mut self, origin: &Origin, batch: &Batch<'_>) -> Result<Refused, Failed> {
        self.connect()?;
        let (skip, next) = match self.offsets.plan(origin, batch.len()) {
            Plan::Done(refused) => return Ok(refused),
            Plan::Write { skip, next } => (skip, next),
        };
        self.commands.clear();
        self.queued.clear();
        self.commands.push(&["MULTI"]);
        let mut refused = Vec::new();
        for (i, r) in batch.iter().enumerate().skip(skip) {
            match self.queue(origin, origin.first_offset + i as u64, &r) {
                Ok(()) => self.queued.push(i),
                Err(why) => refused.push((i, why)),
            }
        }
        let field = format!("{}/{}", origin.topic, origin.partition);
        self.commands.push(&[
            "HSET",
            self.offsets_key.as_str(),
            field.as_str(),
            next.to_string().as_str(),
        ]);
        self.commands.push(&["EXEC"]);
        self.offsets.committing(origin, next, &refused);
        let client = self.client.as_mut().expect("connected");
        let replies = client.run(&self.commands)?;
        self.exec_result(replies, &mut refused)?;
        self.offsets.committed(origin, next);
        refused.sort_by_key(|(i, _)| *i);
        Ok(refused)
    }

    /// Reads a transaction's replies: the commands the server refused go to
    /// `refused`; a transaction it discarded is an error.
    fn exec_result(&self, mut replies: Vec<Value>, refused: &mut Refused) -> Result<(), Failed> {
        let exec = replies.pop().unwrap_or(Value::Nil);
        let results = match exec {
            Value::Array(results) => results,
            other => {
                // Discarded (`EXECABORT`): a command was refused as it was
                // queued. Out of memory passes; anything else is a fault.
                let why = replies
                    .iter()
                    .find_map(|r| match r {
                        Value::Error(e) => Some(e.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| format!("{other:?}"));
                let e = RedisError::Server(why);
                return Err(
                    if e.is_retriable()
                        || matches!(&e, RedisError::Server(w) if w.starts_with("OOM"))
                    {
                        Failed::Sink(Error::retriable(format!("Redis discarded a batch: {e}")))
                    } else {
                        Failed::Sink(Error::fatal(format!("Redis discarded a batch: {e}")))
                    },
                );
            }
        };
        for (j, result) in results.iter().enumerate() {
            if let Value::Error(e) = result {
                match self.queued.get(j) {
                    Some(&i) => refused.push((i, format!("Redis: {e}"))),
                    None => {
                        return Err(Failed::Sink(Error::fatal(format!(
                            "storing the offsets in {:?}: {e}",
                            self.offsets_key
                        ))));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Sink for RedisSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        let key = Template::parse(
            "key",
            config.key.as_deref().unwrap_or(config.mode.default_key()),
        )
        .map_err(Error::invalid_config)?;
        if config.mode == Mode::Set && !key.uses_key() && config.key.is_some() {
            sluice_sdk::warn!(
                "redis-sink: key {:?} does not use {{key}}: every record of a partition sets the same key",
                config.key
            );
        }
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
            format!("redis-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let offsets_key = config
            .offsets_key
            .clone()
            .unwrap_or_else(|| format!("sluice:offsets:{}", ctx.connector));
        let mut sink = RedisSink {
            config,
            key,
            options,
            offsets_key,
            client: None,
            outage,
            offsets: SinkOffsets::default(),
            commands: Commands::default(),
            queued: Vec::new(),
            scratch: Vec::new(),
        };
        // At open the server must answer: the host needs the offsets now.
        let client = Client::connect(&sink.options).map_err(|e| sink.options.refused(&e))?;
        sink.client = Some(client);
        sink.read_offsets().map_err(|e| sink.options.refused(&e))?;
        Ok(sink)
    }

    fn stored_offsets(&self) -> Vec<StoredOffset> {
        self.offsets.stored()
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        loop {
            match self.try_write(origin, &batch) {
                Ok(refused) => {
                    for (i, why) in refused {
                        rejects.reject(i, why);
                    }
                    return Ok(());
                }
                Err(Failed::Sink(e)) => return Err(e),
                Err(Failed::Redis(e)) if e.is_interrupted() => {
                    // Where the protocol stood is unknown: a new connection.
                    self.client = None;
                    return Err(Error::retriable("interrupted while waiting for Redis"));
                }
                Err(Failed::Redis(RedisError::Protocol(why))) => {
                    self.client = None;
                    return Err(Error::fatal(format!("Redis protocol: {why}")));
                }
                Err(Failed::Redis(e)) if e.is_connection_lost() => {
                    self.client = None;
                    self.outage.went_away(&e.to_string());
                }
                Err(Failed::Redis(e)) if e.is_retriable() => {
                    return Err(Error::retriable(format!("writing to Redis: {e}")));
                }
                Err(Failed::Redis(e)) => {
                    return Err(Error::fatal(format!("writing to Redis: {e}")));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Each write ran its own transaction.
        Ok(())
    }
}

sluice_sdk::export_sink!(RedisSink);
