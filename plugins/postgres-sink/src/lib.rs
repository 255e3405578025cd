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
//!   as prepared statements (`insert_with = "statements"`).
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
mod table;

use std::collections::HashMap;

use sluice_postgres::{Client, ConnectOptions, PgError, quote_literal};
use sluice_sdk::outage::Outage;
use sluice_sdk::serde_json::{self, Map, Value};
use sluice_sdk::{Batch, Context, Error, Origin, RecordRef, Rejects, Sink, StoredOffset};

pub use config::{Config, InsertWith, Mode};
use table::{ColumnKind, Table, TableName};

/// What one record does.
#[derive(Debug)]
enum Op {
    /// Insert (or upsert) these columns' values.
    Write {
        columns: Vec<String>,
        values: Vec<Option<Vec<u8>>>,
    },
    /// Delete the row with these key values (in `key_columns`' order).
    Delete { keys: Vec<Option<Vec<u8>>> },
}

/// A record as a row of a table.
#[derive(Debug)]
struct Row {
    /// The record's index in its batch.
    index: usize,
    /// The table's name, as resolved.
    table: String,
    op: Op,
}

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

/// The sink's state.
#[derive(Debug)]
pub struct PostgresSink {
    config: Config,
    table: TableName,
    options: ConnectOptions,
    connector: String,
    client: Option<Client>,
    outage: Outage,
    /// Tables seen so far, by name as resolved.
    tables: HashMap<String, Table>,
    /// The offsets stored in the database, as last read or written.
    stored: HashMap<(String, u32), u64>,
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
                Err(e) if !e.is_connection_lost() || e.is_denied() => {
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
    /// host acts on: what to fix, never the password.
    fn refused(&self, e: &PgError) -> Error {
        let Config {
            addr,
            user,
            database,
            tls,
            ..
        } = &self.config;
        match e {
            PgError::Io(_) if e.is_denied() => Error::invalid_config(e.to_string()),
            PgError::Db(db) if db.is_auth_error() => {
                let hint = if !tls && db.message.contains("no encryption") {
                    " (the server accepts only TLS: set tls = true, and grant its CA in [connector.grants.tls])"
                } else {
                    ""
                };
                Error::invalid_config(format!(
                    "logging in to {addr} as {user:?}, database {database:?}: {e}{hint}"
                ))
            }
            PgError::Db(db) if db.code == "3D000" => {
                Error::invalid_config(format!("connecting to {addr}: {e}"))
            }
            PgError::Db(db) if db.is_retriable() => {
                Error::retriable(format!("connecting to {addr}: {e}"))
            }
            PgError::Db(_) => Error::fatal(format!("connecting to {addr}: {e}")),
            PgError::Protocol(_) => Error::invalid_config(format!("connecting to {addr}: {e}")),
            PgError::Io(io) if *tls && io.kind() == std::io::ErrorKind::ConnectionAborted => {
                Error::invalid_config(format!("the TLS handshake with {addr} failed: {e}"))
            }
            PgError::Io(_) => Error::retriable(format!("cannot reach {addr}: {e}")),
        }
    }

    /// Reads this connector's stored offsets.
    fn read_offsets(&mut self) -> Result<(), PgError> {
        let client = self.client.as_mut().expect("connected");
        let rows = client.simple_query(&format!(
            "SELECT topic, partition, next_offset FROM {} WHERE connector = {}",
            table::quote_table(&self.config.offsets_table),
            quote_literal(&self.connector)
        ))?;
        self.stored.clear();
        for row in rows {
            if let [Some(topic), Some(partition), Some(next)] = row.as_slice()
                && let (Ok(partition), Ok(next)) = (partition.parse(), next.parse())
            {
                self.stored.insert((topic.clone(), partition), next);
            }
        }
        Ok(())
    }

    /// The table `name`, its columns asked of the server the first time;
    /// created from `fields` if it is missing and `create_table` is on.
    fn table(&mut self, name: &str, fields: &[(String, &Value)]) -> Result<&Table, Failed> {
        if !self.tables.contains_key(name) {
            self.connect()?;
            let client = self.client.as_mut().expect("connected");
            let mut found = Table::load(client, name)?;
            if found.is_none() && self.config.create_table {
                Table::create(client, name, fields, &self.config.key_columns)?;
                sluice_sdk::info!("postgres-sink: created table {name}");
                found = Table::load(client, name)?;
            }
            let table = found.ok_or_else(|| {
                Failed::Sink(Error::invalid_config(format!(
                    "there is no table {name:?} in database {:?}: create it, or set create_table = true",
                    self.config.database
                )))
            })?;
            self.tables.insert(name.to_owned(), table);
        }
        Ok(&self.tables[name])
    }

    /// The row a record makes: `Ok(Err(why))` when the record cannot be
    /// one, on its merits.
    fn row(
        &mut self,
        topic: &str,
        index: usize,
        record: &RecordRef<'_>,
    ) -> Result<Result<Row, String>, Failed> {
        let value: Option<Map<String, Value>> = if record.value.is_empty() {
            None
        } else {
            match serde_json::from_slice::<Value>(record.value) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => return Ok(Err("the value is not a JSON object".into())),
                Err(e) => return Ok(Err(format!("the value is not JSON: {e}"))),
            }
        };
        let name = match self.table.resolve(topic, value.as_ref()) {
            Ok(name) => name,
            Err(why) => return Ok(Err(why)),
        };
        let keys = match self.key_values(record.key) {
            Ok(keys) => keys,
            Err(why) => return Ok(Err(why)),
        };
        let Some(value) = value else {
            if !self.config.delete_on_null {
                return Ok(Err(
                    "a record without a value (a tombstone), and delete_on_null is off".into(),
                ));
            }
            let Some(keys) = keys else {
                return Ok(Err("a tombstone without a key: nothing to delete".into()));
            };
            let table = self.table(&name, &[])?;
            let keys = keys
                .iter()
                .map(|(column, v)| text(v, table.columns.get(column).copied()))
                .collect();
            return Ok(Ok(Row {
                index,
                table: name,
                op: Op::Delete { keys },
            }));
        };
        let mut fields: Vec<(String, &Value)> = value
            .iter()
            .map(|(f, v)| (self.config.columns.get(f).unwrap_or(f).clone(), v))
            .collect();
        for (column, v) in keys.iter().flatten() {
            match fields.iter_mut().find(|(c, _)| c == column) {
                Some(field) => field.1 = v,
                None => fields.push((column.clone(), v)),
            }
        }
        if self.config.mode == Mode::Upsert
            && let Some(missing) = self
                .config
                .key_columns
                .iter()
                .find(|k| !fields.iter().any(|(c, _)| c == *k))
        {
            return Ok(Err(format!("no value for the key column {missing:?}")));
        }
        let table = self.table(&name, &fields)?;
        let mut columns = Vec::with_capacity(fields.len());
        let mut values = Vec::with_capacity(fields.len());
        for (column, v) in &fields {
            let Some(kind) = table.columns.get(column) else {
                return Ok(Err(format!("table {name:?} has no column {column:?}")));
            };
            values.push(text(v, Some(*kind)));
            columns.push(column.clone());
        }
        Ok(Ok(Row {
            index,
            table: name,
            op: Op::Write { columns, values },
        }))
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
        rows: &[Row],
        origin: &Origin,
        next: u64,
        copy: bool,
    ) -> Result<(), PgError> {
        let client = self.client.as_mut().expect("connected");
        let offset = [
            Some(self.connector.as_bytes().to_vec()),
            Some(origin.topic.as_bytes().to_vec()),
            Some(origin.partition.to_string().into_bytes()),
            Some(next.to_string().into_bytes()),
        ];
        if copy {
            client.simple_query("BEGIN")?;
            let copied = copy_rows(client, &self.tables, rows).and_then(|()| {
                let mut p = client.pipeline();
                p.execute(&self.offsets_sql, offset.iter().map(|v| v.as_deref()))?;
                p.execute("COMMIT", [])?;
                p.run().map(drop)
            });
            if let Err(e) = copied {
                if !e.is_connection_lost() {
                    client.simple_query("ROLLBACK")?;
                }
                return Err(e);
            }
            return Ok(());
        }
        let upsert =
            (self.config.mode == Mode::Upsert).then_some(self.config.key_columns.as_slice());
        let mut sql: HashMap<(&str, &[String]), String> = HashMap::new();
        let mut p = client.pipeline();
        for row in rows {
            let table = &self.tables[&row.table].sql_name;
            match &row.op {
                Op::Write { columns, values } => {
                    let stmt = sql.entry((&row.table, columns)).or_insert_with(|| {
                        let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
                        table::insert_sql(table, &cols, upsert)
                    });
                    p.execute(stmt, values.iter().map(|v| v.as_deref()))?;
                }
                Op::Delete { keys } => {
                    let stmt = table::delete_sql(table, &self.config.key_columns);
                    p.execute(&stmt, keys.iter().map(|v| v.as_deref()))?;
                }
            }
        }
        p.execute(&self.offsets_sql, offset.iter().map(|v| v.as_deref()))?;
        p.run().map(drop)
    }

    /// One try at a write: the rows refused on their merits, by index.
    fn try_write(
        &mut self,
        origin: &Origin,
        batch: &Batch<'_>,
    ) -> Result<Vec<(usize, String)>, Failed> {
        self.connect()?;
        let key = (origin.topic.clone(), origin.partition);
        let done = self.stored.get(&key).copied().unwrap_or(0);
        let skip = usize::try_from(done.saturating_sub(origin.first_offset)).unwrap_or(usize::MAX);
        let next = origin.first_offset + batch.len() as u64;
        if done >= next {
            return Ok(Vec::new()); // committed already, by a write cut off before it heard so
        }
        let mut refused = Vec::new();
        let mut rows = Vec::with_capacity(batch.len() - skip);
        for (i, record) in batch.iter().enumerate().skip(skip) {
            match self.row(&origin.topic, i, &record)? {
                Ok(row) => rows.push(row),
                Err(why) => refused.push((i, why)),
            }
        }
        let mut copy = self.config.mode == Mode::Insert
            && self.config.insert_with == InsertWith::Copy
            && rows.iter().all(|r| matches!(r.op, Op::Write { .. }));
        loop {
            match self.apply(&rows, origin, next, copy) {
                Ok(()) => {
                    self.stored.insert(key, next);
                    return Ok(refused);
                }
                Err(PgError::Db(e)) if e.is_data_error() => {
                    if copy {
                        // COPY says only a line; the statements name the row.
                        copy = false;
                        continue;
                    }
                    match e.statement.filter(|&k| k < rows.len()) {
                        Some(k) => {
                            let row = rows.remove(k);
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

/// The `COPY` of `rows`: one per table and set of columns, in the order
/// they first appear (plain inserts only; their order across tables does
/// not matter).
fn copy_rows(
    client: &mut Client,
    tables: &HashMap<String, Table>,
    rows: &[Row],
) -> Result<(), PgError> {
    /// A table and its columns, and the COPY data for them.
    type Group<'r> = ((&'r str, &'r [String]), Vec<u8>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for row in rows {
        let Op::Write { columns, values } = &row.op else {
            continue;
        };
        let id = (row.table.as_str(), columns.as_slice());
        let data = match groups.iter_mut().find(|(g, _)| *g == id) {
            Some((_, data)) => data,
            None => {
                groups.push((id, Vec::new()));
                &mut groups.last_mut().expect("pushed").1
            }
        };
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                data.push(b'\t');
            }
            match v {
                None => data.extend_from_slice(b"\\N"),
                Some(v) => copy_escape(v, data),
            }
        }
        data.push(b'\n');
    }
    for ((table, columns), data) in &groups {
        let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
        client.copy_in(&table::copy_sql(&tables[*table].sql_name, &cols), data)?;
    }
    Ok(())
}

/// `v` in COPY's text format: backslash, tab, newline and carriage return
/// escaped.
fn copy_escape(v: &[u8], out: &mut Vec<u8>) {
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

/// A JSON value as the text a column is given; `None` for NULL.
fn text(v: &Value, kind: Option<ColumnKind>) -> Option<Vec<u8>> {
    match (v, kind) {
        (Value::Null, _) => None,
        (v, Some(ColumnKind::Json)) => Some(v.to_string().into_bytes()),
        (Value::String(s), _) => Some(s.as_bytes().to_vec()),
        (v, _) => Some(v.to_string().into_bytes()),
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
            table::quote_table(&config.offsets_table)
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
            tables: HashMap::new(),
            stored: HashMap::new(),
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
        self.stored
            .iter()
            .map(|((topic, partition), next)| StoredOffset {
                topic: topic.clone(),
                partition: *partition,
                next_offset: *next,
            })
            .collect()
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
            table::quote_table(&self.config.offsets_table)
        ))?;
        self.read_offsets()?;
        if let TableName::Fixed(name) = &self.table {
            let name = name.clone();
            let client = self.client.as_mut().expect("connected");
            match Table::load(client, &name)? {
                Some(t) => {
                    self.tables.insert(name, t);
                }
                // Made from the first record.
                None if self.config.create_table => {}
                None => {
                    return Err(Failed::Sink(Error::invalid_config(format!(
                        "there is no table {name:?} in database {:?}: create it, or set create_table = true",
                        self.config.database
                    ))));
                }
            }
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(PostgresSink);
