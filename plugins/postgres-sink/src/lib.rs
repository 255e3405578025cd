//! `postgres-sink`: writes records to PostgreSQL tables, as Flink's JDBC
//! sink and Kafka Connect's JDBC sink do, speaking PostgreSQL's protocol
//! itself (`sluice-postgres`) over the connection its `net` grant allows.
//!
//! - **Rows**: a record's value is a JSON object; its fields go to the
//!   columns of their names (or as `columns` maps them). A column the
//!   record does not name is left to its default (`insert`) or as it was
//!   (`upsert`). Text goes in as it is and PostgreSQL parses it for the
//!   column's type; numbers and booleans as their JSON; objects and arrays
//!   (and anything bound for a `json`/`jsonb` column) as JSON text.
//! - **Modes**: `insert`; `upsert`, `INSERT … ON CONFLICT (key_columns) DO
//!   UPDATE`; and with `delete_on_null`, a tombstone (a key, no value)
//!   deletes its row.
//! - **One transaction per batch, offsets inside it**: each `write` runs as
//!   one transaction that also stores the batch's end in `offsets_table`
//!   (`connector, topic, partition, next_offset`). `open` returns those
//!   offsets and the host resumes from them, so after any crash the tables
//!   hold each record's effect exactly once. A write whose commit was cut
//!   off (the connection lost, the host interrupting the wait) reads the
//!   offsets again on the next connection and skips what did commit.
//! - **Plain inserts go by `COPY … FROM STDIN`** (`insert_with = "copy"`,
//!   the default): measured in `just bench` against `INSERT`s pipelined
//!   as prepared statements (`insert_with = "statements"`). Into a fixed
//!   table, a write's rows stream: once past 128 KiB they go to the server
//!   while the rest are decoded ([`CopyStream`]), so the two overlap.
//! - **A row the database refuses on its merits** (a value the column's
//!   type rejects, a NOT NULL or CHECK violation), or a record that cannot
//!   be a row (a value that is not a JSON object, a field with no column),
//!   is dead-lettered with PostgreSQL's message; the rest of the batch
//!   commits: the transaction is tried again without the refused rows.
//! - **A server that goes away** (or restarts) pauses the flow: the write
//!   waits, says so once, connects again with backoff, and goes on. A
//!   serialization failure or a deadlock is retriable; a wrong password, a
//!   missing grant, a missing table (without `create_table`) fail at
//!   `open` with what to fix. The password appears in no message.
//!
//! It does not: evolve a table's columns, write PostgreSQL arrays from JSON
//! arrays (they go in as JSON text), or keep a dead-lettered record's copy
//! across a crash that lands between the commit and the host's append to
//! the dead-letter topic (the commit has stored the offset past it).

mod config;
mod row;
mod table;

use std::collections::HashMap;

use sluice_postgres::{Client, ConnectOptions, CopyStream, PgError, quote_literal, quote_table};
use sluice_sdk::outage::Outage;
use sluice_sdk::serde_json::{self, Value};
use sluice_sdk::sink_offsets::{Plan, SinkOffsets};
use sluice_sdk::{Batch, Context, Error, Origin, RecordRef, Rejects, Sink, StoredOffset};

pub use config::{Config, InsertWith, Mode};
use row::{Fields, Rows, Shape, column_text, value_text};
use table::{ColumnKind, Table, TableName};

/// Why a write did not go through.
#[derive(Debug)]
enum Failed {
    /// Talking to the server.
    Pg(PgError),
    /// The sink's own verdict.
    Sink(Error),
}

impl From<PgError> for Failed {
    fn from(e: PgError) -> Self {
        Failed::Pg(e)
    }
}

/// Columns of a table that rows write, and what each takes: most records
/// of a topic have the same fields, so rows share these.
#[derive(Debug)]
struct ColumnSet {
    table: usize,
    names: Vec<String>,
    kinds: Vec<ColumnKind>,
}

/// The sink's state.
#[derive(Debug)]
pub struct PostgresSink {
    config: Config,
    table: TableName,
    options: ConnectOptions,
    connector: String,
    client: Option<Client>,
    outage: Outage,
    /// Tables seen so far, and their index by name as resolved.
    tables: Vec<Table>,
    table_ids: HashMap<String, usize>,
    column_sets: Vec<ColumnSet>,
    /// The column set used last: the next row likely has it too.
    last_set: usize,
    /// The statement of each shape of row, made once.
    statements: HashMap<Shape, String>,
    /// The offsets stored in the database, and a try whose commit went
    /// unanswered.
    offsets: SinkOffsets,
    offsets_sql: String,
}

impl PostgresSink {
    /// Connects if there is no connection, waiting out a server that is
    /// away; reads the stored offsets again on a new connection (a commit
    /// cut off with the old one may or may not have landed).
    fn connect(&mut self) -> Result<&mut Client, Failed> {
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
                // Away: no answer, or "starting up", "too many clients";
                // anything else (a password, a grant) will not pass.
                Err(e)
                    if e.is_denied()
                        || matches!(&e, PgError::Protocol(_))
                        || e.db().is_some_and(|db| !db.is_retriable()) =>
                {
                    return Err(Failed::Sink(self.refused(&e)));
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
        Ok(self.client.as_mut().expect("connected"))
    }

    /// A connection the server (or the grants) refused, as the error the
    /// host acts on.
    fn refused(&self, e: &PgError) -> Error {
        self.options.refused(e)
    }

    /// Reads this connector's stored offsets.
    fn read_offsets(&mut self) -> Result<(), PgError> {
        let client = self.client.as_mut().expect("connected");
        // Locking the rows waits for a transaction of an earlier
        // connection that may still be committing (its COMMIT sent, its
        // answer lost): what is read then is what landed.
        let rows = client.simple_query(&format!(
            "SELECT topic, partition, next_offset FROM {} WHERE connector = {} FOR UPDATE",
            quote_table(&self.config.offsets_table),
            quote_literal(&self.connector)
        ))?;
        self.offsets.reload(rows);
        Ok(())
    }

    /// The index of table `name`, its columns asked of the server the first
    /// time; created from `fields` if it is missing and `create_table` is on.
    fn table_id(&mut self, name: &str, fields: Option<&Fields<'_>>) -> Result<usize, Failed> {
        if let Some(&id) = self.table_ids.get(name) {
            return Ok(id);
        }
        self.connect()?;
        let client = self.client.as_mut().expect("connected");
        let mut found = Table::load(client, name)?;
        if found.is_none() && self.config.create_table {
            let typed: Vec<(String, Value)> = fields
                .map(|f| {
                    f.0.iter()
                        .map(|(field, raw)| {
                            let column = self
                                .config
                                .columns
                                .get(field.as_ref())
                                .map_or(field.as_ref(), String::as_str);
                            (
                                column.to_owned(),
                                serde_json::from_str(raw.get()).unwrap_or(Value::Null),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            Table::create(client, name, &typed, &self.config.key_columns)?;
            sluice_sdk::info!("postgres-sink: created table {name}");
            found = Table::load(client, name)?;
        }
        let table = found.ok_or_else(|| {
            Failed::Sink(Error::invalid_config(format!(
                "there is no table {name:?} in database {:?}: create it, or set create_table = true",
                self.config.database
            )))
        })?;
        self.tables.push(table);
        self.table_ids
            .insert(name.to_owned(), self.tables.len() - 1);
        Ok(self.tables.len() - 1)
    }

    /// Adds the row a record makes to `rows`: `Ok(Err(why))` when the
    /// record cannot be one, on its merits.
    fn decode(
        &mut self,
        topic: &str,
        index: usize,
        record: &RecordRef<'_>,
        rows: &mut Rows,
    ) -> Result<Result<(), String>, Failed> {
        let fields = if record.value.is_empty() {
            None
        } else {
            match Fields::parse(record.value) {
                Ok(fields) => Some(fields),
                Err(why) => return Ok(Err(why)),
            }
        };
        let fixed = match &self.table {
            TableName::Fixed(name) => self.table_ids.get(name).copied(),
            TableName::Template(_) => None,
        };
        let table = match fixed {
            Some(id) => id,
            None => match self.table.resolve(topic, |f| fields.as_ref()?.text_of(f)) {
                Ok(name) => self.table_id(&name, fields.as_ref())?,
                Err(why) => return Ok(Err(why)),
            },
        };
        let keys = match self.key_values(record.key) {
            Ok(keys) => keys.unwrap_or_default(),
            Err(why) => return Ok(Err(why)),
        };
        let Some(fields) = fields else {
            if !self.config.delete_on_null {
                return Ok(Err(
                    "a record without a value (a tombstone), and delete_on_null is off".into(),
                ));
            }
            if keys.is_empty() {
                return Ok(Err("a tombstone without a key: nothing to delete".into()));
            }
            rows.start(index, Shape::Delete(table));
            for (column, v) in &keys {
                let kind = self.tables[table]
                    .columns
                    .get(column)
                    .copied()
                    .unwrap_or(ColumnKind::Other);
                rows.push(value_text(v, kind).as_deref());
            }
            return Ok(Ok(()));
        };
        // The value's fields, then the key's (which win over a field of
        // the same column).
        let columns = &self.config.columns;
        fn column_of<'a>(
            columns: &'a std::collections::BTreeMap<String, String>,
            field: &'a str,
        ) -> &'a str {
            columns.get(field).map_or(field, String::as_str)
        }
        let from_value = || {
            fields
                .0
                .iter()
                .map(|(f, raw)| (column_of(columns, f), raw))
                .filter(|(c, _)| !keys.iter().any(|(k, _)| k == c))
        };
        let names = from_value()
            .map(|(c, _)| c)
            .chain(keys.iter().map(|(k, _)| k.as_str()));
        let set = match intern(
            &mut self.column_sets,
            &mut self.last_set,
            &self.tables,
            table,
            names,
            &self.config,
        ) {
            Ok(set) => set,
            Err(why) => return Ok(Err(why)),
        };
        let kinds = &self.column_sets[set].kinds;
        rows.start(index, Shape::Write(set));
        for (i, (_, raw)) in from_value().enumerate() {
            rows.push(column_text(raw, kinds[i]).as_deref());
        }
        let from = kinds.len() - keys.len();
        for (i, (_, v)) in keys.iter().enumerate() {
            rows.push(value_text(v, kinds[from + i]).as_deref());
        }
        Ok(Ok(()))
    }

    /// The key columns' values from a record's key: `None` when the key
    /// gives none (they then come from the value).
    fn key_values(&self, key: Option<&[u8]>) -> Result<Option<Vec<(String, Value)>>, String> {
        let keys = &self.config.key_columns;
        let Some(key) = key.filter(|_| !keys.is_empty()) else {
            return Ok(None);
        };
        match serde_json::from_slice::<Value>(key) {
            Ok(Value::Object(map)) => {
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let v = map
                        .iter()
                        .find(|(f, _)| self.config.columns.get(*f).unwrap_or(f) == k)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("the key has no field for the key column {k:?}"))?;
                    out.push((k.clone(), v));
                }
                Ok(Some(out))
            }
            Ok(v) if keys.len() == 1 => Ok(Some(vec![(keys[0].clone(), v)])),
            Err(_) if keys.len() == 1 => match std::str::from_utf8(key) {
                Ok(s) => Ok(Some(vec![(keys[0].clone(), Value::String(s.to_owned()))])),
                Err(_) => Err("the key is neither JSON nor UTF-8 text".into()),
            },
            _ => Err(format!(
                "the key must be a JSON object naming the key columns {keys:?}"
            )),
        }
    }

    /// Writes `rows` and the offset after them in one transaction; the
    /// error names the row the server refused, if it was one.
    fn apply(
        &mut self,
        rows: &Rows,
        origin: &Origin,
        next: u64,
        copy: bool,
    ) -> Result<(), PgError> {
        if copy {
            let offset = self.offset_sql(origin, next);
            let client = self.client.as_mut().expect("connected");
            return copy_rows(client, &self.tables, &self.column_sets, rows, &offset);
        }
        for row in &rows.rows {
            if !self.statements.contains_key(&row.shape) {
                let sql = self.statement(row.shape);
                self.statements.insert(row.shape, sql);
            }
        }
        let (partition, next) = (origin.partition.to_string(), next.to_string());
        let offset = [
            self.connector.as_bytes(),
            origin.topic.as_bytes(),
            partition.as_bytes(),
            next.as_bytes(),
        ];
        let client = self.client.as_mut().expect("connected");
        let mut p = client.pipeline();
        for row in &rows.rows {
            p.execute(&self.statements[&row.shape], rows.values(row))?;
        }
        p.execute(&self.offsets_sql, offset.into_iter().map(Some))?;
        p.run().map(drop)
    }

    /// The statement that stores `next` as the offset after `origin`'s
    /// batch, with its values in it (for a simple query, after a COPY).
    fn offset_sql(&self, origin: &Origin, next: u64) -> String {
        format!(
            "INSERT INTO {} (connector, topic, partition, next_offset) VALUES ({}, {}, {}, {next}) \
             ON CONFLICT (connector, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            quote_table(&self.config.offsets_table),
            quote_literal(&self.connector),
            quote_literal(&origin.topic),
            origin.partition,
        )
    }

    /// Feeds the row just decoded, `rows`' last, to the streamed COPY,
    /// beginning it at the first row. A row of another column set waits
    /// in a group of its own, for a COPY of its own at the commit. False
    /// when the row cannot go by COPY (a delete): the COPY is cancelled.
    fn stream_row(&mut self, rows: &Rows, stream: &mut Option<Streamed>) -> Result<bool, PgError> {
        let row = rows.rows.last().expect("a row was just decoded");
        let client = self.client.as_mut().expect("connected");
        let Shape::Write(set) = row.shape else {
            if let Some(s) = stream.take() {
                s.copy.cancel(client)?;
            }
            return Ok(false);
        };
        let s = match stream {
            Some(s) => s,
            None => stream.insert(Streamed {
                copy: CopyStream::new(&copy_sql(&self.tables, &self.column_sets[set])),
                set,
                others: Vec::new(),
            }),
        };
        if s.set == set {
            copy_row(rows.values(row), s.copy.input());
            s.copy.send_ready(client)?;
        } else {
            copy_row(rows.values(row), group(&mut s.others, set));
        }
        Ok(true)
    }

    /// Ends a streamed COPY: the other column sets' COPYs and the offset,
    /// then the commit.
    fn commit_stream(&mut self, s: Streamed, origin: &Origin, next: u64) -> Result<(), PgError> {
        let mut then = String::new();
        for (set, _) in &s.others {
            then.push_str(&copy_sql(&self.tables, &self.column_sets[*set]));
            then.push_str(";\n");
        }
        then.push_str(&self.offset_sql(origin, next));
        let inputs: Vec<&[u8]> = s.others.iter().map(|(_, d)| d.as_slice()).collect();
        let client = self.client.as_mut().expect("connected");
        s.copy.commit(client, &then, &inputs)
    }

    /// The statement rows of `shape` run.
    fn statement(&self, shape: Shape) -> String {
        let keys = &self.config.key_columns;
        match shape {
            Shape::Write(set) => {
                let set = &self.column_sets[set];
                let columns: Vec<&str> = set.names.iter().map(String::as_str).collect();
                let upsert = (self.config.mode == Mode::Upsert).then_some(keys.as_slice());
                table::insert_sql(&self.tables[set.table].sql_name, &columns, upsert)
            }
            Shape::Delete(t) => table::delete_sql(&self.tables[t].sql_name, keys),
        }
    }

    /// One try at a write: the rows refused on their merits, by index.
    fn try_write(
        &mut self,
        origin: &Origin,
        batch: &Batch<'_>,
    ) -> Result<Vec<(usize, String)>, Failed> {
        self.connect()?;
        let (skip, next) = match self.offsets.plan(origin, batch.len()) {
            Plan::Done(refused) => return Ok(refused),
            Plan::Write { skip, next } => (skip, next),
        };
        let mut refused = Vec::new();
        let mut rows = Rows::default();
        let mut copy =
            self.config.mode == Mode::Insert && self.config.insert_with == InsertWith::Copy;
        // The rows go to the server while the rest are decoded, so that it
        // stores the first while the plugin decodes the last (the two
        // overlap on two cores), when no record can need a query of its
        // own (a fixed table, its columns known).
        let streamed = copy
            && matches!(&self.table, TableName::Fixed(name) if self.table_ids.contains_key(name));
        let mut stream = None;
        for (i, record) in batch.iter().enumerate().skip(skip) {
            let decoded = match self.decode(&origin.topic, i, &record, &mut rows) {
                Ok(Err(why)) => {
                    refused.push((i, why));
                    Ok(())
                }
                Ok(Ok(())) if streamed && copy => self
                    .stream_row(&rows, &mut stream)
                    .map(|c| copy = c)
                    .map_err(Failed::Pg),
                Ok(Ok(())) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = decoded {
                if stream.is_some() {
                    // The connection is in the middle of a COPY.
                    self.client = None;
                }
                return Err(e);
            }
        }
        copy = copy && rows.rows.iter().all(|r| matches!(r.shape, Shape::Write(_)));
        loop {
            self.offsets.committing(origin, next, &refused);
            let applied = match stream.take() {
                Some(s) => self.commit_stream(s, origin, next),
                None => self.apply(&rows, origin, next, copy),
            };
            match applied {
                Ok(()) => {
                    self.offsets.committed(origin, next);
                    return Ok(refused);
                }
                Err(PgError::Db(e)) if e.is_data_error() => {
                    if copy {
                        // COPY says only a line; the statements name the row.
                        copy = false;
                        continue;
                    }
                    match e.statement.filter(|&k| k < rows.rows.len()) {
                        Some(k) => {
                            let row = rows.rows.remove(k);
                            refused.push((row.index, format!("PostgreSQL refused the row: {e}")));
                        }
                        None => return Err(PgError::Db(e).into()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The column set of `table` with `names`: the last one used if it is
/// that, else one made before, else a new one, checked against the table
/// (every column in it, none twice, the key columns there for `upsert`).
fn intern<'n>(
    sets: &mut Vec<ColumnSet>,
    last: &mut usize,
    tables: &[Table],
    table: usize,
    names: impl Iterator<Item = &'n str> + Clone,
    config: &Config,
) -> Result<usize, String> {
    let same = |set: &ColumnSet| {
        set.table == table && set.names.iter().map(String::as_str).eq(names.clone())
    };
    if sets.get(*last).is_some_and(same) {
        return Ok(*last);
    }
    if let Some(i) = sets.iter().position(same) {
        *last = i;
        return Ok(i);
    }
    let t = &tables[table];
    let mut set = ColumnSet {
        table,
        names: Vec::new(),
        kinds: Vec::new(),
    };
    for name in names {
        let Some(kind) = t.columns.get(name) else {
            return Err(format!("table {} has no column {name:?}", t.sql_name));
        };
        if set.names.iter().any(|n| n == name) {
            return Err(format!("two fields go to the column {name:?}"));
        }
        set.names.push(name.to_owned());
        set.kinds.push(*kind);
    }
    if config.mode == Mode::Upsert
        && let Some(missing) = config.key_columns.iter().find(|k| !set.names.contains(k))
    {
        return Err(format!("no value for the key column {missing:?}"));
    }
    sets.push(set);
    *last = sets.len() - 1;
    Ok(*last)
}

/// The `COPY`s of `rows`, one per column set in the order they first
/// appear (plain inserts only: their order across tables does not
/// matter), and `then`, as one transaction in one round trip.
fn copy_rows(
    client: &mut Client,
    tables: &[Table],
    sets: &[ColumnSet],
    rows: &Rows,
    then: &str,
) -> Result<(), PgError> {
    let mut groups: Vec<(usize, Vec<u8>)> = Vec::new();
    for row in &rows.rows {
        if let Shape::Write(set) = row.shape {
            copy_row(rows.values(row), group(&mut groups, set));
        }
    }
    let mut sql = String::new();
    for (set, _) in &groups {
        sql.push_str(&copy_sql(tables, &sets[*set]));
        sql.push_str(";\n");
    }
    sql.push_str(then);
    let inputs: Vec<&[u8]> = groups.iter().map(|(_, data)| data.as_slice()).collect();
    client.copy_in(&sql, &inputs)
}

/// A COPY whose input is being sent while the batch is decoded, and the
/// rows of other column sets, which wait for COPYs of their own.
struct Streamed {
    copy: CopyStream,
    set: usize,
    others: Vec<(usize, Vec<u8>)>,
}

/// The input of `set`'s group in `groups`, made if new.
fn group(groups: &mut Vec<(usize, Vec<u8>)>, set: usize) -> &mut Vec<u8> {
    let i = match groups.iter().position(|(s, _)| *s == set) {
        Some(i) => i,
        None => {
            groups.push((set, Vec::new()));
            groups.len() - 1
        }
    };
    &mut groups[i].1
}

/// The `COPY … FROM STDIN` of a column set.
fn copy_sql(tables: &[Table], set: &ColumnSet) -> String {
    let columns: Vec<&str> = set.names.iter().map(String::as_str).collect();
    table::copy_sql(&tables[set.table].sql_name, &columns)
}

/// One row in COPY's text format.
fn copy_row<'v>(values: impl Iterator<Item = Option<&'v [u8]>>, out: &mut Vec<u8>) {
    for (i, v) in values.enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match v {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => copy_escape(v, out),
        }
    }
    out.push(b'\n');
}

/// `v` in COPY's text format: backslash, tab, newline and carriage return
/// escaped. Most values have none, found by a vector search.
fn copy_escape(v: &[u8], out: &mut Vec<u8>) {
    if memchr::memchr3(b'\\', b'\t', b'\n', v).is_none() && memchr::memchr(b'\r', v).is_none() {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

fn interrupted() -> Failed {
    Failed::Sink(Error::retriable("interrupted while waiting for PostgreSQL"))
}

impl Sink for PostgresSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        if config.mode == Mode::Upsert && config.key_columns.is_empty() {
            return Err(Error::invalid_config(
                "mode = \"upsert\" needs key_columns, the columns of the conflict target",
            ));
        }
        if config.delete_on_null && config.key_columns.is_empty() {
            return Err(Error::invalid_config(
                "delete_on_null needs key_columns, the columns a delete matches",
            ));
        }
        let table = TableName::parse(&config.table).map_err(Error::invalid_config)?;
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
            replication: None,
        };
        let offsets_sql = format!(
            "INSERT INTO {} (connector, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (connector, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            quote_table(&config.offsets_table)
        );
        let outage = Outage::new(
            format!("postgres-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut sink = PostgresSink {
            config,
            table,
            options,
            connector: ctx.connector.clone(),
            client: None,
            outage,
            tables: Vec::new(),
            table_ids: HashMap::new(),
            column_sets: Vec::new(),
            last_set: 0,
            statements: HashMap::new(),
            offsets: SinkOffsets::default(),
            offsets_sql,
        };
        // At open the server must answer: the host needs the offsets now.
        let client = Client::connect(&sink.options).map_err(|e| sink.refused(&e))?;
        sink.client = Some(client);
        let opened = sink.prepare();
        opened.map_err(|f| match f {
            Failed::Sink(e) => e,
            Failed::Pg(e) if e.is_interrupted() => Error::retriable("interrupted while opening"),
            Failed::Pg(e) => sink.refused(&e),
        })?;
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
                Err(Failed::Pg(e)) if e.is_interrupted() => {
                    // Where the protocol stood is unknown: a new connection.
                    self.client = None;
                    return Err(Error::retriable("interrupted while waiting for PostgreSQL"));
                }
                Err(Failed::Pg(PgError::Protocol(why))) => {
                    // Not a server that went away but one we do not
                    // understand: waiting would retry it for ever. The
                    // instance restarts (a new connection) within its
                    // restart policy, and then fails.
                    self.client = None;
                    return Err(Error::fatal(format!("PostgreSQL protocol: {why}")));
                }
                Err(Failed::Pg(e)) if e.is_connection_lost() => {
                    self.client = None;
                    self.outage.went_away(&e.to_string());
                }
                Err(Failed::Pg(PgError::Db(e))) if e.is_retriable() => {
                    return Err(Error::retriable(format!("writing to PostgreSQL: {e}")));
                }
                Err(Failed::Pg(e)) => {
                    return Err(Error::fatal(format!("writing to PostgreSQL: {e}")));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Each write committed its own transaction.
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            let _ = client.close();
        }
        Ok(())
    }
}

impl PostgresSink {
    /// At open: the offsets table (made if missing), the stored offsets,
    /// and a fixed table's columns.
    fn prepare(&mut self) -> Result<(), Failed> {
        let client = self.client.as_mut().expect("connected");
        client.simple_query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (connector text NOT NULL, topic text NOT NULL, \
             partition integer NOT NULL, next_offset bigint NOT NULL, \
             PRIMARY KEY (connector, topic, partition))",
            quote_table(&self.config.offsets_table)
        ))?;
        self.read_offsets()?;
        if let TableName::Fixed(name) = &self.table
            && !self.config.create_table
        {
            // A missing table is an invalid config, said now.
            self.table_id(&name.clone(), None)?;
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(PostgresSink);
