//! `postgres-cdc`: the changes of PostgreSQL tables as records, as
//! Debezium's PostgreSQL connector makes them, through logical replication
//! with PostgreSQL's built-in `pgoutput` plugin, over the connection the
//! connector's `net` grant allows (TLS through the host).
//!
//! - **Setup**: the source makes (or reuses) a publication of `tables` and
//!   a logical replication slot; both are named after the connector unless
//!   the config names them. The role needs `REPLICATION` and must own the
//!   tables (or the publication must exist).
//! - **Snapshot** (`snapshot = "initial"`, the default): a new connector
//!   first reads every row the tables hold, as `r` records, at the slot's
//!   own point, then streams the changes after it; a snapshot broken off by
//!   a crash goes on where it stopped, and no row or change is told twice
//!   ([`snapshot`]).
//! - **Records**: one a change (insert `c`, update `u`, delete `d`), its key
//!   the row's key columns, its value the envelope of [`envelope`], a
//!   `schema` and `table` headers (route them to a topic per table with
//!   `topic = "{schema}.{table}"`), its timestamp the commit time. Rolled
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
//! It does not (yet) emit truncates.

mod config;
mod envelope;
mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sluice_postgres::pgoutput::{self, Change, Relation, Tuple};
use sluice_postgres::{
    Client, ConnectOptions, PgError, Replication, format_lsn, parse_lsn, pg_time_to_unix_ms,
    quote_ident, quote_literal, quote_table,
};
use sluice_sdk::outage::Outage;
use sluice_sdk::serde::{Deserialize, Serialize};
use sluice_sdk::{BatchWriter, Context, Error, Poll, Source, serde_json};
use snapshot::{Cut, Mark, Table, TableError};

pub use config::Config;

/// The header naming a record's table (without its schema).
pub const TABLE_HEADER: &str = "table";

/// The header naming the schema of a record's table.
pub const SCHEMA_HEADER: &str = "schema";

/// How often the server hears from the source at least (it disconnects a
/// client silent for `wal_sender_timeout`, 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// A change, ready to be a record.
#[derive(Debug)]
struct Record {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    /// `schema.table`.
    table: String,
    /// The length of its schema part.
    schema_len: usize,
    commit_ms: i64,
}

/// A transaction being received.
#[derive(Debug)]
struct Open {
    xid: u32,
    /// The LSN of its commit record.
    final_lsn: u64,
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
/// the host, and how far into the next one, if a poll stopped inside it;
/// while the snapshot runs, the slot's point and the last row read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
struct Position {
    lsn: u64,
    /// (the commit LSN of a transaction, records of it handed over).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<(u64, u64)>,
    /// While the snapshot runs: the last row handed over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Mark>,
    /// Where a broken-off snapshot went on at a later point; kept until
    /// streaming has passed the last of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cuts: Vec<Cut>,
    /// The tables (`schema.name`, in order) the snapshot and its cuts
    /// speak of: marks are places in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tables: Vec<String>,
}

impl Position {
    /// Eight bytes (the LSN), or 24 (and the partial transaction), or,
    /// with a snapshot's marks, JSON (never 8 or 24 bytes long).
    fn encode(&self) -> Vec<u8> {
        if self.snapshot.is_some() || !self.cuts.is_empty() {
            let json = serde_json::to_vec(self).expect("a position is JSON");
            debug_assert!(json.len() > 24);
            return json;
        }
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
        let not_ours = || {
            Error::fatal(format!(
                "a stored position of {} bytes is not this source's",
                bytes.len()
            ))
        };
        match (bytes.len(), word(0), word(1), word(2)) {
            (8, Some(lsn), ..) => Ok(Position {
                lsn,
                ..Position::default()
            }),
            (24, Some(lsn), Some(commit), Some(taken)) => Ok(Position {
                lsn,
                partial: Some((commit, taken)),
                ..Position::default()
            }),
            (8 | 24, ..) => Err(not_ours()),
            _ => serde_json::from_slice(bytes).map_err(|_| not_ours()),
        }
    }
}

/// The snapshot being read, on the replication connection, in the
/// transaction whose first command made the slot.
#[derive(Debug)]
struct Reading {
    /// The index in `tables` of the table being read.
    at: usize,
    /// Whether its cursor is open.
    cursor: bool,
    /// The point the rows are read at.
    lsn: u64,
    /// The temporary slot that gave a resumed snapshot its point.
    temporary: Option<String>,
    /// When it began, the `r` records' time.
    began_ms: i64,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why (re)starting failed.
#[derive(Debug)]
enum Failure {
    Pg(PgError),
    /// The config cannot work: said at `open`.
    Config(String),
    /// Capture cannot go on without losing changes.
    Fatal(String),
}

impl From<PgError> for Failure {
    fn from(e: PgError) -> Failure {
        Failure::Pg(e)
    }
}

impl From<TableError> for Failure {
    fn from(e: TableError) -> Failure {
        match e {
            TableError::Pg(e) => Failure::Pg(e),
            TableError::Config(m) => Failure::Config(m),
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
    /// Whether `client` is streaming (not reading the snapshot).
    streaming: bool,
    /// A plain connection, for asking the server how keys sort while
    /// streaming through a cut.
    checker: Option<Client>,
    outage: Outage,
    /// The configured tables, in their order.
    tables: Vec<Table>,
    reading: Option<Reading>,
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
    /// Connects, makes sure of the publication and the slot, and goes on
    /// after what was handed to the host: reading the snapshot, or
    /// streaming. `resumed`: the host gave a position (the slot and the
    /// publication must exist then).
    fn start(&mut self, resumed: bool) -> Result<(), Failure> {
        let mut client = Client::connect(&self.options)?;
        self.tables = self
            .config
            .tables
            .iter()
            .map(|name| Table::load(&mut client, name))
            .collect::<Result<_, _>>()?;
        let qualified: Vec<String> = self.tables.iter().map(|t| t.qualified.clone()).collect();
        if resumed
            && (self.handed.snapshot.is_some() || !self.handed.cuts.is_empty())
            && self.handed.tables != qualified
        {
            return Err(Failure::Fatal(format!(
                "tables changed while the snapshot was read (it read {:?}; the config names {:?}): \
                 put them back as they were until the snapshot is done and streaming has passed it",
                self.handed.tables, qualified
            )));
        }
        let snapshot = if resumed {
            self.handed.snapshot.as_ref().map(|mark| &mark.table)
        } else {
            (self.config.snapshot == snapshot::Mode::Initial).then(|| &self.tables[0].qualified)
        };
        if let Some(from) = snapshot {
            // Refuse a table the snapshot could not go on with now, before
            // anything is made, not when the table is reached.
            let at = self
                .tables
                .iter()
                .position(|t| &t.qualified == from)
                .ok_or_else(|| {
                    Failure::Fatal(format!(
                        "the snapshot was reading {from}, which tables no longer names: put it back until the snapshot is done"
                    ))
                })?;
            for table in &self.tables[at..] {
                table.declare(None)?;
            }
        }
        let publication = quote_literal(&self.publication);
        let exists = !client
            .simple_query(&format!(
                "SELECT 1 FROM pg_publication WHERE pubname = {publication}"
            ))?
            .is_empty();
        if !exists {
            if resumed {
                return Err(Failure::Fatal(format!(
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
        } else {
            // Made before for fewer tables (the config named more since):
            // without them, their changes would never come.
            let published: Vec<String> = client
                .simple_query(&format!(
                    "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = {publication}"
                ))?
                .into_iter()
                .filter_map(|row| row.into_iter().next().flatten())
                .collect();
            let missing: Vec<String> = self
                .tables
                .iter()
                .filter(|t| !published.contains(&t.qualified))
                .map(|t| {
                    format!(
                        "{}.{}",
                        quote_ident(&t.relation.schema),
                        quote_ident(&t.relation.name)
                    )
                })
                .collect();
            if !missing.is_empty() {
                client.simple_query(&format!(
                    "ALTER PUBLICATION {} ADD TABLE {}",
                    quote_ident(&self.publication),
                    missing.join(", ")
                ))?;
                sluice_sdk::info!(
                    "postgres-cdc: added {} to publication {}",
                    missing.join(", "),
                    self.publication
                );
            }
        }
        let slot = quote_literal(&self.slot);
        let found = !client
            .simple_query(&format!(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot}"
            ))?
            .is_empty();
        self.relations.clear();
        self.open = None;
        self.ready.clear();
        self.skip = self.handed.partial;
        self.last_status = Instant::now();
        if resumed && !found {
            return Err(Failure::Fatal(format!(
                "the replication slot {:?} is gone: the WAL it held may be freed, and changes lost to this \
                 connector; drop the connector's state to start over, or make the slot again",
                self.slot
            )));
        }
        if !resumed && self.config.snapshot == snapshot::Mode::Initial {
            if found {
                if self.config.slot.is_some() {
                    return Err(Failure::Config(format!(
                        "the replication slot {:?} exists already, and a snapshot is read at the point of a slot made \
                         with it: drop the slot, or set snapshot = \"never\" to stream from it",
                        self.slot
                    )));
                }
                // Named after this connector, which has nothing in the log:
                // made by an earlier start that got no batch in.
                // WAIT: the session that made it may not be gone yet.
                client.simple_query(&format!(
                    "DROP_REPLICATION_SLOT {} WAIT",
                    quote_ident(&self.slot)
                ))?;
                sluice_sdk::info!(
                    "postgres-cdc: dropped replication slot {}, made by an earlier start whose snapshot never reached the log",
                    self.slot
                );
            }
            return self.read_from(client, None);
        }
        if self.handed.snapshot.is_some() {
            let temporary = format!("{}_{:x}", self.slot, now_ms());
            return self.read_from(client, Some(temporary));
        }
        if !found {
            client.simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing')",
                quote_ident(&self.slot)
            ))?;
            sluice_sdk::info!("postgres-cdc: made replication slot {}", self.slot);
        }
        self.stream(client)?;
        Ok(())
    }

    /// Begins reading the snapshot on `client`: the tables' rows at the
    /// point of the slot made now (the connector's own, or, going on with a
    /// broken-off snapshot, a `temporary` one).
    fn read_from(&mut self, mut client: Client, temporary: Option<String>) -> Result<(), Failure> {
        let at = match &self.handed.snapshot {
            None => 0,
            Some(mark) => self
                .tables
                .iter()
                .position(|t| t.qualified == mark.table)
                .expect("checked by start"),
        };
        client.simple_query("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ")?;
        let made = client.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {} {}LOGICAL pgoutput (SNAPSHOT 'use')",
            quote_ident(temporary.as_deref().unwrap_or(&self.slot)),
            if temporary.is_some() {
                "TEMPORARY "
            } else {
                ""
            }
        ))?;
        let lsn = made
            .first()
            .and_then(|row| row.get(1).cloned().flatten())
            .and_then(|text| parse_lsn(&text))
            .ok_or_else(|| {
                PgError::Protocol("CREATE_REPLICATION_SLOT gave no consistent point".into())
            })?;
        match self.handed.snapshot.clone() {
            None => {
                sluice_sdk::info!(
                    "postgres-cdc: made replication slot {}; reading the snapshot at {}",
                    self.slot,
                    format_lsn(lsn)
                );
                self.handed = Position {
                    lsn,
                    snapshot: Some(Mark {
                        table: self.tables[0].qualified.clone(),
                        after: None,
                    }),
                    tables: self.tables.iter().map(|t| t.qualified.clone()).collect(),
                    ..Position::default()
                };
            }
            Some(from) => {
                sluice_sdk::info!(
                    "postgres-cdc: going on with the snapshot from {} at {}",
                    from.table,
                    format_lsn(lsn)
                );
                self.handed.cuts.push(Cut { lsn, from });
            }
        }
        self.client = Some(client);
        self.streaming = false;
        self.reading = Some(Reading {
            at,
            cursor: false,
            lsn,
            temporary,
            began_ms: now_ms(),
        });
        Ok(())
    }

    /// Streams the slot's changes on `client`, after what was handed over.
    fn stream(&mut self, mut client: Client) -> Result<(), PgError> {
        client.start_replication(&format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names {})",
            quote_ident(&self.slot),
            format_lsn(self.handed.lsn),
            quote_literal(&quote_ident(&self.publication)),
        ))?;
        self.client = Some(client);
        self.streaming = true;
        Ok(())
    }

    /// Reads up to `max` rows of the snapshot into `out`; when the last
    /// table is done, ends the snapshot's transaction and starts
    /// streaming. The position after them.
    fn read(&mut self, out: &mut BatchWriter, max: usize) -> Result<Option<Position>, Failure> {
        let client = self.client.as_mut().expect("connected");
        let reading = self.reading.as_mut().expect("reading");
        let mut position = None;
        while out.len() < max {
            let table = &self.tables[reading.at];
            let mark = self.handed.snapshot.as_mut().expect("a snapshot mark");
            if !reading.cursor {
                client.simple_query(&table.declare(mark.after.as_deref())?)?;
                reading.cursor = true;
            }
            let want = max - out.len();
            let rows = client.simple_query(&Table::fetch(want))?;
            let got = rows.len();
            for row in rows {
                let (tuple, key) = table.row(row);
                let mut value = Vec::with_capacity(256);
                envelope::envelope(
                    &mut value,
                    &table.relation,
                    b'r',
                    None,
                    Some(&tuple),
                    envelope::Source {
                        database: &self.config.database,
                        lsn: reading.lsn,
                        xid: 0,
                        commit_ms: reading.began_ms,
                        snapshot: true,
                    },
                    now_ms(),
                );
                out.push_parts(
                    envelope::key(&table.relation, &tuple).as_deref(),
                    Some(reading.began_ms),
                    &[
                        (SCHEMA_HEADER, table.relation.schema.as_bytes()),
                        (TABLE_HEADER, table.relation.name.as_bytes()),
                    ],
                    |v| v.extend_from_slice(&value),
                );
                mark.after = Some(key);
            }
            if got == want {
                position = Some(self.handed.clone());
                continue;
            }
            // The table is done.
            client.simple_query(Table::CLOSE)?;
            reading.cursor = false;
            reading.at += 1;
            if let Some(next) = self.tables.get(reading.at) {
                *mark = Mark {
                    table: next.qualified.clone(),
                    after: None,
                };
                position = Some(self.handed.clone());
                continue;
            }
            client.simple_query("COMMIT")?;
            if let Some(temporary) = &reading.temporary {
                client
                    .simple_query(&format!("DROP_REPLICATION_SLOT {}", quote_ident(temporary)))?;
            }
            sluice_sdk::info!(
                "postgres-cdc: the snapshot is read; streaming from {}",
                format_lsn(self.handed.lsn)
            );
            self.handed.snapshot = None;
            if self.handed.cuts.is_empty() {
                self.handed.tables.clear();
            }
            self.reading = None;
            let client = self.client.take().expect("connected");
            self.stream(client)?;
            return Ok(Some(self.handed.clone()));
        }
        Ok(position)
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
                final_lsn,
                commit_time,
                xid,
            } => {
                self.open = Some(Open {
                    xid,
                    final_lsn,
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
            .as_ref()
            .ok_or_else(|| PgError::Protocol("a change outside a transaction".into()))?;
        let relation = self.relations.get(&rel).ok_or_else(|| {
            PgError::Protocol(format!("a change to relation {rel} before its description"))
        })?;
        let (final_lsn, xid, commit_ms) = (open.final_lsn, open.xid, open.commit_ms);
        let (mut op, mut after) = (op, after);
        let key_row = after.as_ref().or(before.as_ref().map(|(row, _)| row));
        if let Some(row) = key_row
            && !self.handed.cuts.is_empty()
        {
            let relation = relation.clone();
            if !self.newer_than_its_snapshot(&relation, row, final_lsn)? {
                // The snapshot at a cut's point has the row as this change
                // left it. But an update that moved the row there from a
                // key an earlier snapshot told (its old key is in it only
                // when the key changed) leaves that row behind: say it is
                // gone.
                match &before {
                    Some((old, _))
                        if op == b'u'
                            && self.newer_than_its_snapshot(&relation, old, final_lsn)? =>
                    {
                        (op, after) = (b'd', None);
                    }
                    _ => return Ok(()),
                }
            }
        }
        let key_row = after.as_ref().or(before.as_ref().map(|(row, _)| row));
        let relation = &self.relations[&rel];
        let key = key_row.and_then(|row| envelope::key(relation, row));
        let mut value = Vec::with_capacity(256);
        envelope::envelope(
            &mut value,
            relation,
            op,
            before.as_ref().map(|(row, key_only)| (row, *key_only)),
            after.as_ref(),
            envelope::Source {
                database: &self.config.database,
                lsn,
                xid,
                commit_ms,
                snapshot: false,
            },
            now_ms(),
        );
        let record = Record {
            key,
            value,
            table: format!("{}.{}", relation.schema, relation.name),
            schema_len: relation.schema.len(),
            commit_ms,
        };
        self.open.as_mut().expect("open").records.push(record);
        Ok(())
    }

    /// Whether a change to `row` of `relation`, committed at `commit_lsn`,
    /// is newer than the snapshot that read the row (see
    /// [`snapshot`]'s module doc).
    fn newer_than_its_snapshot(
        &mut self,
        relation: &Relation,
        row: &Tuple,
        commit_lsn: u64,
    ) -> Result<bool, PgError> {
        let qualified = format!("{}.{}", relation.schema, relation.name);
        let Some(at) = self.tables.iter().position(|t| t.qualified == qualified) else {
            return Ok(true);
        };
        // The last cut at or before the row; none: it was read at the
        // slot's own point, which every streamed change is after.
        for cut in self.handed.cuts.iter().rev() {
            if commit_lsn >= cut.lsn {
                // After this cut's point, and so after every earlier one.
                return Ok(true);
            }
            let from = self
                .tables
                .iter()
                .position(|t| t.qualified == cut.from.table)
                .unwrap_or(usize::MAX);
            let past_cut = match (at.cmp(&from), &cut.from.after) {
                (std::cmp::Ordering::Less, _) => false,
                (std::cmp::Ordering::Greater, _) | (std::cmp::Ordering::Equal, None) => true,
                (std::cmp::Ordering::Equal, Some(after)) => {
                    let table = &self.tables[at];
                    let Some(key) = table.key_of(relation, row) else {
                        return Ok(true);
                    };
                    if self.checker.is_none() {
                        let options = ConnectOptions {
                            replication: None,
                            ..self.options.clone()
                        };
                        self.checker = Some(Client::connect(&options)?);
                    }
                    let checker = self.checker.as_mut().expect("connected");
                    table.after(checker, &key, after)?
                }
            };
            if past_cut {
                // Read at this cut's point, which the change is before.
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Tells the server what is confirmed.
    fn status(&mut self, reply: bool) -> Result<(), PgError> {
        if let Some(client) = self.client.as_mut().filter(|_| self.streaming) {
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
                    &[
                        (SCHEMA_HEADER, &r.table.as_bytes()[..r.schema_len]),
                        (TABLE_HEADER, &r.table.as_bytes()[r.schema_len + 1..]),
                    ],
                    |v| v.extend_from_slice(&r.value),
                );
                tx.taken += 1;
            }
            if tx.records.is_empty() {
                let tx = self.ready.pop_front().expect("front");
                self.handed.lsn = tx.end_lsn;
                self.handed.partial = None;
                // Every later transaction commits after every cut's
                // point: no change is judged by them any more.
                if self.handed.cuts.iter().all(|c| c.lsn <= tx.end_lsn) {
                    self.handed.cuts.clear();
                    self.handed.tables.clear();
                }
            } else {
                self.handed.partial = Some((tx.commit_lsn, tx.taken));
            }
            handed = Some(self.handed.clone());
        }
        handed
    }

    fn ready_records(&self) -> usize {
        self.ready.iter().map(|t| t.records.len()).sum()
    }

    /// A failure as the error the host acts on.
    fn error(&self, e: Failure) -> Error {
        match e {
            Failure::Config(m) => Error::invalid_config(m),
            Failure::Fatal(m) | Failure::Pg(PgError::Protocol(m)) => Error::fatal(m),
            Failure::Pg(e) if e.db().is_some_and(|db| db.code == "42P01") => {
                Error::invalid_config(format!("making the publication: {e}"))
            }
            Failure::Pg(e) if e.db().is_some_and(|db| db.code == "42501") => {
                Error::invalid_config(format!(
                    "{e} (the role needs REPLICATION, and to own the tables or find the publication made)"
                ))
            }
            Failure::Pg(e) => self.options.refused(&e),
        }
    }
}

/// Whether `e` is the server going away (or refusing for now): connect
/// again, with backoff. A protocol error is not: trying again would meet it
/// again.
fn gone(e: &PgError) -> bool {
    match e {
        PgError::Io(_) => true,
        PgError::Protocol(_) => false,
        PgError::Db(_) => e.is_connection_lost() || e.db().is_some_and(|d| d.is_retriable()),
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
            streaming: false,
            checker: None,
            outage,
            tables: Vec::new(),
            reading: None,
            relations: HashMap::new(),
            committed: handed.lsn,
            handed,
            skip: None,
            open: None,
            ready: VecDeque::new(),
            confirmed: 0,
            last_status: Instant::now(),
        };
        if let Err(e) = source.start(resume_from.is_some()) {
            return Err(source.error(e));
        }
        Ok(source)
    }

    fn poll(&mut self, out: &mut BatchWriter, max: usize) -> Result<Poll, Error> {
        loop {
            if self.ready_records() > 0 {
                let position = self.hand(out, max);
                return Ok(Poll {
                    position: position.map(|p| p.encode()),
                    end_of_stream: false,
                });
            }
            if self.client.is_none() {
                match self.start(true) {
                    Ok(()) => self.outage.back(),
                    Err(Failure::Pg(e)) if e.is_interrupted() => return Ok(Poll::default()),
                    Err(Failure::Pg(e)) if gone(&e) => {
                        self.outage.went_away(&e.to_string());
                        self.outage.wait(None);
                        if sluice_sdk::interrupted() {
                            return Ok(Poll::default());
                        }
                        continue;
                    }
                    Err(e) => return Err(self.error(e)),
                }
            }
            if self.reading.is_some() {
                let e = match self.read(out, max) {
                    Ok(position) => {
                        return Ok(Poll {
                            position: position.map(|p| p.encode()),
                            end_of_stream: false,
                        });
                    }
                    Err(e) => e,
                };
                // The cursor ends with its connection's transaction: the
                // snapshot goes on at a new point (a cut).
                self.client = None;
                self.reading = None;
                let interrupted = match e {
                    Failure::Pg(e) if e.is_interrupted() => true,
                    Failure::Pg(e) if gone(&e) => {
                        self.checker = None;
                        self.outage.went_away(&e.to_string());
                        false
                    }
                    e => return Err(self.error(e)),
                };
                if interrupted || !out.is_empty() {
                    // What was read before stands, at the mark after it.
                    return Ok(Poll {
                        position: (!out.is_empty()).then(|| self.handed.encode()),
                        end_of_stream: false,
                    });
                }
                continue;
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
                    // The connection failed (reading, sending a status
                    // update, or asking the checker): connect again, after
                    // what was handed over.
                    Err(e) if gone(&e) => {
                        self.client = None;
                        self.checker = None;
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
        let lsn = Position::decode(position)?.lsn;
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
        for client in [self.client.take(), self.checker.take()]
            .into_iter()
            .flatten()
        {
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
        let mark = |table: &str, after: Option<&str>| Mark {
            table: table.into(),
            after: after.map(|a| vec![a.to_owned()]),
        };
        for p in [
            Position {
                lsn: 7,
                ..Position::default()
            },
            Position {
                lsn: 7,
                partial: Some((9, 3)),
                ..Position::default()
            },
            Position {
                lsn: 7,
                snapshot: Some(mark("public.a", None)),
                ..Position::default()
            },
            Position {
                lsn: 7,
                partial: Some((9, 3)),
                snapshot: None,
                cuts: vec![Cut {
                    lsn: 11,
                    from: mark("public.a", Some("42")),
                }],
                tables: vec!["public.a".into(), "public.b".into()],
            },
        ] {
            assert_eq!(Position::decode(&p.encode()).unwrap(), p);
        }
        // The stream's positions stay what earlier versions stored.
        assert_eq!(
            Position {
                lsn: 7,
                ..Position::default()
            }
            .encode(),
            7u64.to_le_bytes()
        );
        assert!(Position::decode(b"123").is_err());
        assert!(Position::decode(b"{\"lsn\":1}    ").is_ok());
    }

    #[test]
    fn slot_names_are_what_postgres_takes() {
        assert_eq!(slot_name("Orders-CDC.1"), "sluice_orders_cdc_1");
    }
}
