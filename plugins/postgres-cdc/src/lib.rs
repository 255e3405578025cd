//! `postgres-cdc`: the changes of PostgreSQL tables as records, as
//! Debezium's PostgreSQL connector makes them, through logical replication
//! with PostgreSQL's built-in `pgoutput` plugin, over the connection the
//! connector's `net` grant allows (TLS through the host).
//!
//! - **Setup**: the source makes (or reuses) a publication of `tables` and
//!   a logical replication slot; both are named after the connector unless
//!   the config names them. The role needs `REPLICATION` and must own the
//!   tables (or the publication must exist).
//! - **Records**: one a change (insert `c`, update `u`, delete `d`), its key
//!   the row's key columns, its value the envelope of [`envelope`], a
//!   `table` header (`schema.table`), its timestamp the commit time. Rolled
//!   back transactions never reach a slot.
//! - **Position**: the end LSN of the last whole transaction in the log,
//!   and, when a poll stopped inside a large transaction, how many of that
//!   transaction's records are in too. A restart streams from the slot
//!   again and skips what the log already holds: no gap, no repeat.
//! - **The slot is told only what the log holds**: `commit(position)`, which
//!   the host calls once the broker has the batch, sends the standby status
//!   update with that LSN as flushed; only then may PostgreSQL free the WAL
//!   before it. While nothing is in flight, a keepalive's WAL end is
//!   confirmed too (a heartbeat), so an idle database, or one busy with
//!   other tables, does not pile WAL up behind the slot.
//! - **A server that goes away** is said once and reconnected with backoff;
//!   streaming starts again after the last transaction handed to the host.
//!   A dropped slot or publication is a fatal error that names it.
//!
//! It does not (yet): take an initial snapshot of the tables' rows, route
//! changes to a topic per table, or emit truncates.

mod config;
mod envelope;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sluice_postgres::pgoutput::{self, Change, Relation};
use sluice_postgres::{
    Client, ConnectOptions, PgError, Replication, format_lsn, pg_time_to_unix_ms, quote_ident,
    quote_literal, quote_table,
};
use sluice_sdk::outage::Outage;
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};

pub use config::Config;

/// The header naming a record's table.
pub const TABLE_HEADER: &str = "table";

/// How often the server hears from the source at least (it disconnects a
/// client silent for `wal_sender_timeout`, 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A change, ready to be a record.
#[derive(Debug)]
struct Record {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    table: String,
    commit_ms: i64,
}

/// A transaction being received.
#[derive(Debug)]
struct Open {
    xid: u32,
    commit_ms: i64,
    records: Vec<Record>,
}

/// A whole transaction, its records waiting to be polled.
#[derive(Debug)]
struct Ready {
    commit_lsn: u64,
    end_lsn: u64,
    records: VecDeque<Record>,
    /// How many of its records were polled already.
    taken: u64,
}

/// Where the source is: the end of the last whole transaction handed to
/// the host, and how far into the next one, if a poll stopped inside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Position {
    lsn: u64,
    /// (the commit LSN of a transaction, records of it handed over).
    partial: Option<(u64, u64)>,
}

impl Position {
    fn encode(self) -> Vec<u8> {
        let mut out = self.lsn.to_le_bytes().to_vec();
        if let Some((commit, taken)) = self.partial {
            out.extend_from_slice(&commit.to_le_bytes());
            out.extend_from_slice(&taken.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Position, Error> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                bytes.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        match (bytes.len(), word(0), word(1), word(2)) {
            (8, Some(lsn), ..) => Ok(Position { lsn, partial: None }),
            (24, Some(lsn), Some(commit), Some(taken)) => Ok(Position {
                lsn,
                partial: Some((commit, taken)),
            }),
            _ => Err(Error::fatal(format!(
                "a stored position of {} bytes is not this source's",
                bytes.len()
            ))),
        }
    }
}

/// The source's state.
#[derive(Debug)]
pub struct PostgresCdc {
    config: Config,
    options: ConnectOptions,
    slot: String,
    publication: String,
    client: Option<Client>,
    outage: Outage,
    relations: HashMap<u32, Relation>,
    /// What has been handed to the host.
    handed: Position,
    /// Records of the transaction with this commit LSN that the log holds
    /// already (handed over before a restart or a reconnect).
    skip: Option<(u64, u64)>,
    open: Option<Open>,
    ready: VecDeque<Ready>,
    /// The LSN the host has committed (the broker holds everything
    /// before it), and the one the server was last told.
    committed: u64,
    confirmed: u64,
    last_status: Instant,
}

impl PostgresCdc {
    /// Connects, makes sure of the publication and the slot, and starts
    /// streaming after what was handed to the host. `resumed`: the host
    /// gave a position (the slot and the publication must exist then).
    fn start(&mut self, resumed: bool) -> Result<(), PgError> {
        let mut client = Client::connect(&self.options)?;
        let publication = quote_literal(&self.publication);
        let exists = !client
            .simple_query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {publication}"
            ))?
            .is_empty();
        if !exists {
            if resumed {
                return Err(PgError::Protocol(format!(
                    "the publication {:?} is gone: changes since it was dropped are lost to this connector; \
                     make it again (CREATE PUBLICATION) and think about what it missed",
                    self.publication
                )));
            }
            let tables: Vec<String> = self.config.tables.iter().map(|t| quote_table(t)).collect();
            client.simple_query(&format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(&self.publication),
                tables.join(", ")
            ))?;
            sluice_sdk::info!(
                "postgres-cdc: made publication {} for {}",
                self.publication,
                tables.join(", ")
            );
        }
        let slot = quote_literal(&self.slot);
        let found = client.simple_query(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = {slot}"
        ))?;
        if found.is_empty() {
            if resumed {
                return Err(PgError::Protocol(format!(
                    "the replication slot {:?} is gone: the WAL it held may be freed, and changes lost to this \
                     connector; drop the connector's state to start over, or make the slot again",
                    self.slot
                )));
            }
            client.simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                quote_ident(&self.slot)
            ))?;
            sluice_sdk::info!("postgres-cdc: made replication slot {}", self.slot);
        }
        client.start_replication(&format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(&self.slot),
            format_lsn(self.handed.lsn),
            quote_literal(&quote_ident(&self.publication)),
        ))?;
        self.client = Some(client);
        self.relations.clear();
        self.open = None;
        self.ready.clear();
        self.skip = self.handed.partial;
        self.last_status = Instant::now();
        Ok(())
    }

    /// Takes one message of the stream.
    fn take(&mut self, message: Replication) -> Result<(), PgError> {
        match message {
            Replication::Keepalive { wal_end, reply } => {
                let idle = self.open.is_none()
                    && self.ready.is_empty()
                    && self.committed >= self.handed.lsn;
                if idle && self.handed.partial.is_none() && wal_end > self.confirmed {
                    // A heartbeat: nothing is in flight, so everything
                    // before the WAL's end that this slot streams is in
                    // the log.
                    self.confirmed = wal_end;
                    self.status(false)?;
                } else if reply || self.last_status.elapsed() >= STATUS_EVERY {
                    self.status(false)?;
                }
                Ok(())
            }
            Replication::XLogData { start, data, .. } => self.change(start, pgoutput::parse(data)?),
        }
    }

    fn change(&mut self, lsn: u64, change: Change) -> Result<(), PgError> {
        let (rel, op, before, after) = match change {
            Change::Begin {
                commit_time, xid, ..
            } => {
                self.open = Some(Open {
                    xid,
                    commit_ms: pg_time_to_unix_ms(commit_time),
                    records: Vec::new(),
                });
                return Ok(());
            }
            Change::Commit {
                commit_lsn,
                end_lsn,
                ..
            } => {
                let open = self
                    .open
                    .take()
                    .ok_or_else(|| PgError::Protocol("a Commit without its Begin".into()))?;
                if end_lsn <= self.handed.lsn || open.records.is_empty() {
                    return Ok(()); // in the log already, or nothing of ours
                }
                let mut records: VecDeque<Record> = open.records.into();
                let mut taken = 0;
                if let Some((commit, n)) = self.skip.take() {
                    if commit == commit_lsn {
                        records.drain(..(n as usize).min(records.len()));
                        taken = n;
                    } else {
                        self.skip = Some((commit, n));
                    }
                }
                self.ready.push_back(Ready {
                    commit_lsn,
                    end_lsn,
                    records,
                    taken,
                });
                return Ok(());
            }
            Change::Relation(r) => {
                self.relations.insert(r.id, r);
                return Ok(());
            }
            Change::Insert { relation, new } => (relation, b'c', None, Some(new)),
            Change::Update {
                relation,
                old,
                key_only,
                new,
            } => (relation, b'u', old.map(|o| (o, key_only)), Some(new)),
            Change::Delete {
                relation,
                old,
                key_only,
            } => (relation, b'd', Some((old, key_only)), None),
            Change::Truncate { .. } | Change::Other(_) => return Ok(()),
        };
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| PgError::Protocol("a change outside a transaction".into()))?;
        let relation = self.relations.get(&rel).ok_or_else(|| {
            PgError::Protocol(format!("a change to relation {rel} before its description"))
        })?;
        let key_row = after.as_ref().or(before.as_ref().map(|(row, _)| row));
        let key = key_row.and_then(|row| envelope::key(relation, row));
        let mut value = Vec::with_capacity(256);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        envelope::envelope(
            &mut value,
            relation,
            op,
            before.as_ref().map(|(row, key_only)| (row, *key_only)),
            after.as_ref(),
            envelope::Source {
                database: &self.config.database,
                lsn,
                xid: open.xid,
                commit_ms: open.commit_ms,
            },
            now_ms,
        );
        open.records.push(Record {
            key,
            value,
            table: format!("{}.{}", relation.schema, relation.name),
            commit_ms: open.commit_ms,
        });
        Ok(())
    }

    /// Tells the server what is confirmed.
    fn status(&mut self, reply: bool) -> Result<(), PgError> {
        if let Some(client) = self.client.as_mut() {
            client.standby_status(self.confirmed, reply)?;
            self.last_status = Instant::now();
        }
        Ok(())
    }

    /// Hands up to `max` ready records to `out`; the position after them.
    fn hand(&mut self, out: &mut BatchWriter, max: usize) -> Option<Position> {
        let mut handed = None;
        while out.len() < max {
            let Some(tx) = self.ready.front_mut() else {
                break;
            };
            while out.len() < max {
                let Some(r) = tx.records.pop_front() else {
                    break;
                };
                out.push_parts(
                    r.key.as_deref(),
                    Some(r.commit_ms),
                    &[(TABLE_HEADER, r.table.as_bytes())],
                    |v| v.extend_from_slice(&r.value),
                );
                tx.taken += 1;
            }
            if tx.records.is_empty() {
                let tx = self.ready.pop_front().expect("front");
                self.handed = Position {
                    lsn: tx.end_lsn,
                    partial: None,
                };
            } else {
                self.handed.partial = Some((tx.commit_lsn, tx.taken));
            }
            handed = Some(self.handed);
        }
        handed
    }

    fn ready_records(&self) -> usize {
        self.ready.iter().map(|t| t.records.len()).sum()
    }
}

/// A name PostgreSQL takes for a slot: lower case letters, digits and `_`.
fn slot_name(connector: &str) -> String {
    let mut name: String = connector
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.insert_str(0, "sluice_");
    name.truncate(63);
    name
}

impl Source for PostgresCdc {
    type Config = Config;

    fn open(config: Config, ctx: &Context, resume_from: Option<&[u8]>) -> Result<Self, Error> {
        if config.tables.is_empty() {
            return Err(Error::invalid_config(
                "tables is empty: name the tables to capture",
            ));
        }
        let handed = resume_from.map_or(Ok(Position::default()), Position::decode)?;
        let options = ConnectOptions {
            addr: config.addr.clone(),
            user: config.user.clone(),
            password: config.password.clone(),
            database: Some(config.database.clone()),
            tls: sluice_sdk::net::tls_server_name(
                config.tls,
                config.server_name.as_deref(),
                &config.addr,
            ),
            application_name: format!("sluice {}", ctx.connector),
            replication: Some("database"),
        };
        let outage = Outage::new(
            format!("postgres-cdc: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut source = PostgresCdc {
            slot: config
                .slot
                .clone()
                .unwrap_or_else(|| slot_name(&ctx.connector)),
            publication: config
                .publication
                .clone()
                .unwrap_or_else(|| slot_name(&ctx.connector)),
            config,
            options,
            client: None,
            outage,
            relations: HashMap::new(),
            handed,
            skip: None,
            open: None,
            ready: VecDeque::new(),
            committed: handed.lsn,
            confirmed: 0,
            last_status: Instant::now(),
        };
        source.start(resume_from.is_some()).map_err(|e| match e {
            PgError::Protocol(m) => Error::fatal(m),
            e if e.db().is_some_and(|db| db.code == "42P01") => {
                Error::invalid_config(format!("making the publication: {e}"))
            }
            e if e.db().is_some_and(|db| db.code == "42501") => Error::invalid_config(format!(
                "{e} (the role needs REPLICATION, and to own the tables or find the publication made)"
            )),
            e => source.options.refused(&e),
        })?;
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max: usize) -> Result<Poll, Error> {
        loop {
            if self.ready_records() > 0 {
                let position = self.hand(out, max);
                return Ok(Poll {
                    position: position.map(Position::encode),
                    end_of_stream: false,
                });
            }
            if self.client.is_none() {
                match self.start(true) {
                    Ok(()) => self.outage.back(),
                    Err(e) if e.is_interrupted() => return Ok(Poll::default()),
                    Err(PgError::Protocol(m)) => return Err(Error::fatal(m)),
                    Err(e)
                        if e.is_connection_lost() || e.db().is_some_and(|d| d.is_retriable()) =>
                    {
                        self.outage.went_away(&e.to_string());
                        self.outage.wait(None);
                        if sluice_sdk::interrupted() {
                            return Ok(Poll::default());
                        }
                        continue;
                    }
                    Err(e) => return Err(self.options.refused(&e)),
                }
            }
            let client = self.client.as_mut().expect("connected");
            // Wait for the first message; then take what has arrived,
            // until a batch is whole.
            let first = client.replication_message();
            let mut next = Some(first);
            while let Some(got) = next.take() {
                match got.and_then(|message| self.take(message)) {
                    Ok(()) => {}
                    Err(e) if e.is_interrupted() => return Ok(Poll::default()),
                    // The connection failed (reading, or sending a status
                    // update): connect again, after what was handed over.
                    Err(PgError::Io(e)) => {
                        self.client = None;
                        self.outage.went_away(&e.to_string());
                        break;
                    }
                    Err(e) => {
                        return Err(Error::fatal(format!(
                            "streaming from slot {:?}: {e}",
                            self.slot
                        )));
                    }
                }
                if self.ready_records() >= max {
                    break;
                }
                if let Some(client) = self.client.as_mut() {
                    next = client.replication_message_ready().transpose();
                }
            }
        }
    }

    fn commit(&mut self, position: &[u8]) -> Result<(), Error> {
        let Position { lsn, .. } = Position::decode(position)?;
        self.committed = self.committed.max(lsn);
        if lsn > self.confirmed {
            self.confirmed = lsn;
            if self.status(false).is_err() {
                // Said again on the next connection.
                self.client = None;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            let _ = client.close();
        }
        Ok(())
    }
}

sluice_sdk::export_source!(PostgresCdc);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip() {
        for p in [
            Position {
                lsn: 7,
                partial: None,
            },
            Position {
                lsn: 7,
                partial: Some((9, 3)),
            },
        ] {
            assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        }
        assert!(Position::decode(b"123").is_err());
    }

    #[test]
    fn slot_names_are_what_postgres_takes() {
        assert_eq!(slot_name("Orders-CDC.1"), "sluice_orders_cdc_1");
    }
}
