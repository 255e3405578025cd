//! `mariadb-sink`: writes records to a MariaDB table, as Flink's JDBC sink
//! and Kafka Connect's JDBC sink do, speaking MariaDB's protocol itself
//! (`sluice-mysql`) over the connection its `net` grant allows. The second
//! dialect of the design `postgres-sink` has.
//!
//! - **Rows**: a record's value is a JSON object; its fields go to the
//!   columns of their names (or as `columns` maps them). Strings go in as
//!   they are and MariaDB parses them for the column's type; numbers and
//!   booleans as their JSON; objects and arrays as JSON text. The session
//!   runs in strict mode (`STRICT_ALL_TABLES`), so a value the column cannot
//!   hold is refused, never truncated.
//! - **Modes**: `insert`; `upsert`, `INSERT … ON DUPLICATE KEY UPDATE`; and
//!   with `delete_on_null`, a tombstone (a key, no value) deletes its row.
//!   Runs of records of one shape go as one multi-row statement, in order.
//! - **One transaction per batch, offsets inside it**: each `write` runs as
//!   one InnoDB transaction that also stores the batch's end in
//!   `offsets_table`. `open` returns those offsets and the host resumes from
//!   them, so after any crash the table holds each record's effect exactly
//!   once. A table that is not transactional (MyISAM) is refused at `open`.
//! - **A row MariaDB refuses on its merits** (a value the column's type
//!   rejects, a NULL in a NOT NULL column, a duplicate key in `insert`, a
//!   CHECK), or a record that cannot be a row, is dead-lettered with
//!   MariaDB's message; the rest of the batch commits. InnoDB undoes only
//!   the failed statement, so its rows are tried again one by one.
//! - **A server that goes away** pauses the flow: the write waits, says so
//!   once, connects again with backoff, and goes on. A deadlock or a lock
//!   wait timeout is retriable; a wrong password, a missing grant or a
//!   missing table fail at `open` with what to fix. The password appears in
//!   no message.
//!
//! It does not (yet): speak TLS, route to a table per topic or field, or
//! create a missing table.

mod config;

use std::collections::HashSet;

use sluice_mysql::{Client, ConnectOptions, MyError, quote_ident, quote_literal, quote_table};
use sluice_sdk::outage::Outage;
use sluice_sdk::serde_json::{self, Map, Value};
use sluice_sdk::sink_offsets::{Plan, SinkOffsets};
use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink, StoredOffset};

pub use config::{Config, Mode};

/// Most rows in one statement, and about the most bytes (MariaDB takes 16
/// MiB a statement by default, `max_allowed_packet`).
const MAX_ROWS: usize = 1000;
const MAX_STATEMENT: usize = 4 << 20;

/// Why a write did not go through.
#[derive(Debug)]
enum Failed {
    /// Talking to the server.
    My(MyError),
    /// The sink's own verdict.
    Sink(Error),
}

impl From<MyError> for Failed {
    fn from(e: MyError) -> Self {
        Failed::My(e)
    }
}

/// A record as a row: its index in the batch, and what it does.
#[derive(Debug)]
struct Row {
    index: usize,
    /// The columns it writes (none: a delete), as SQL.
    columns: Vec<String>,
    /// Their values, or the key columns' for a delete, as SQL literals.
    values: Vec<String>,
}

impl Row {
    fn is_delete(&self) -> bool {
        self.columns.is_empty()
    }
}

/// The sink's state.
#[derive(Debug)]
pub struct MariadbSink {
    config: Config,
    options: ConnectOptions,
    connector: String,
    client: Option<Client>,
    outage: Outage,
    table_sql: String,
    /// The table's columns.
    columns: HashSet<String>,
    /// The offsets stored in the database, and a try whose commit went
    /// unanswered.
    offsets: SinkOffsets,
}

impl MariadbSink {
    /// Connects if there is no connection, waiting out a server that is
    /// away; reads the stored offsets again on a new connection (a commit
    /// cut off with the old one may or may not have landed).
    fn connect(&mut self) -> Result<(), Failed> {
        while self.client.is_none() {
            match Client::connect(&self.options) {
                Ok(client) => {
                    self.client = Some(client);
                    match self.session() {
                        Ok(()) => self.outage.back(),
                        Err(e) if e.is_connection_lost() && !e.is_interrupted() => {
                            self.client = None;
                            self.outage.went_away(&e.to_string());
                            self.outage.wait(None);
                            if sluice_sdk::interrupted() {
                                return Err(interrupted());
                            }
                        }
                        Err(e) => {
                            self.client = None;
                            return Err(e.into());
                        }
                    }
                }
                Err(e) if e.is_interrupted() => return Err(interrupted()),
                Err(e)
                    if e.is_denied()
                        || matches!(&e, MyError::Protocol(_))
                        || e.server().is_some_and(|s| !s.is_retriable()) =>
                {
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

    /// Sets the session up (strict, UTC), makes sure of the offsets table,
    /// and reads this connector's stored offsets.
    fn session(&mut self) -> Result<(), MyError> {
        let client = self.client.as_mut().expect("connected");
        client.query(
            "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', \
             time_zone = '+00:00', autocommit = 1",
        )?;
        client.query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (connector VARCHAR(255) NOT NULL, topic VARCHAR(255) NOT NULL, \
             `partition` INT NOT NULL, next_offset BIGINT NOT NULL, \
             PRIMARY KEY (connector, topic, `partition`)) ENGINE = InnoDB",
            quote_table(&self.config.offsets_table)
        ))?;
        let mut connector = String::new();
        quote_literal(&self.connector, &mut connector);
        // Locking the rows waits for a transaction of an earlier
        // connection that may still be committing (its COMMIT sent, its
        // answer lost): what is read then is what landed.
        client.query("START TRANSACTION")?;
        let rows = client
            .query(&format!(
                "SELECT topic, `partition`, next_offset FROM {} WHERE connector = {connector} FOR UPDATE",
                quote_table(&self.config.offsets_table)
            ))?
            .rows;
        client.query("COMMIT")?;
        self.offsets.reload(rows);
        Ok(())
    }

    /// The row a record makes: `Err(why)` when it cannot be one, on its
    /// merits.
    fn row(&self, index: usize, key: Option<&[u8]>, value: &[u8]) -> Result<Row, String> {
        let keys = self.key_values(key)?;
        let mut row = Row {
            index,
            columns: Vec::new(),
            values: Vec::new(),
        };
        if value.is_empty() {
            if !self.config.delete_on_null {
                return Err(
                    "a record without a value (a tombstone), and delete_on_null is off".into(),
                );
            }
            let keys = keys.ok_or("a tombstone without a key: nothing to delete")?;
            row.values = keys.iter().map(|(_, v)| literal(v)).collect();
            return Ok(row);
        }
        let fields: Map<String, Value> = serde_json::from_slice(value)
            .map_err(|e| format!("the value is not a JSON object: {e}"))?;
        let keys = keys.unwrap_or_default();
        let mut named = HashSet::new();
        for (field, v) in &fields {
            let column = self.config.columns.get(field).unwrap_or(field);
            if keys.iter().any(|(k, _)| k == column) {
                continue; // the key's value wins
            }
            self.column(column, &mut named)?;
            row.columns.push(quote_ident(column));
            row.values.push(literal(v));
        }
        for (column, v) in &keys {
            self.column(column, &mut named)?;
            row.columns.push(quote_ident(column));
            row.values.push(literal(v));
        }
        if self.config.mode == Mode::Upsert
            && let Some(missing) = self
                .config
                .key_columns
                .iter()
                .find(|k| !named.contains(k.as_str()))
        {
            return Err(format!("no value for the key column {missing:?}"));
        }
        if row.columns.is_empty() {
            return Err("the value has no fields".into());
        }
        Ok(row)
    }

    /// Checks that `column` is the table's, and named once.
    fn column<'a>(&self, column: &'a str, named: &mut HashSet<&'a str>) -> Result<(), String> {
        if !self.columns.contains(column) {
            return Err(format!("table {} has no column {column:?}", self.table_sql));
        }
        if !named.insert(column) {
            return Err(format!("two fields go to the column {column:?}"));
        }
        Ok(())
    }

    /// The key columns' values from a record's key: `None` when the key
    /// gives none (they then come from the value).
    fn key_values(&self, key: Option<&[u8]>) -> Result<Option<Vec<(String, Value)>>, String> {
        let keys = &self.config.key_columns;
        let Some(key) = key.filter(|_| !keys.is_empty()) else {
            return Ok(None);
        };
        let value =
            serde_json::from_slice::<Value>(key).or_else(|_| match std::str::from_utf8(key) {
                Ok(s) => Ok(Value::String(s.to_owned())),
                Err(_) => Err("the key is neither JSON nor UTF-8 text".to_owned()),
            })?;
        match value {
            Value::Object(map) => keys
                .iter()
                .map(|k| {
                    let v = map
                        .iter()
                        .find(|(f, _)| self.config.columns.get(*f).unwrap_or(f) == k)
                        .map(|(_, v)| v.clone())
                        .ok_or_else(|| format!("the key has no field for the key column {k:?}"))?;
                    Ok((k.clone(), v))
                })
                .collect::<Result<_, String>>()
                .map(Some),
            v if keys.len() == 1 => Ok(Some(vec![(keys[0].clone(), v)])),
            _ => Err(format!(
                "the key must be a JSON object naming the key columns {keys:?}"
            )),
        }
    }

    /// The statement that writes `rows` (all of one shape).
    fn statement(&self, rows: &[Row]) -> String {
        let first = &rows[0];
        let keys: Vec<String> = self
            .config
            .key_columns
            .iter()
            .map(|k| quote_ident(k))
            .collect();
        let mut sql = String::with_capacity(rows.len() * 64);
        if first.is_delete() {
            sql.push_str(&format!(
                "DELETE FROM {} WHERE ({}) IN (",
                self.table_sql,
                keys.join(", ")
            ));
        } else {
            sql.push_str(&format!(
                "INSERT INTO {} ({}) VALUES ",
                self.table_sql,
                first.columns.join(", ")
            ));
        }
        for (i, row) in rows.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&row.values.join(", "));
            sql.push(')');
        }
        if first.is_delete() {
            sql.push(')');
        } else if self.config.mode == Mode::Upsert {
            let mut set: Vec<String> = first
                .columns
                .iter()
                .filter(|c| !keys.contains(c))
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            if set.is_empty() {
                // Only key columns: nothing to change but the row is there.
                set.push(format!("{0} = {0}", keys[0]));
            }
            sql.push_str(" ON DUPLICATE KEY UPDATE ");
            sql.push_str(&set.join(", "));
        }
        sql
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
        let mut rows = Vec::new();
        for (i, record) in batch.iter().enumerate().skip(skip) {
            match self.row(i, record.key, record.value) {
                Ok(row) => rows.push(row),
                Err(why) => refused.push((i, why)),
            }
        }
        let offset = {
            let (mut connector, mut topic) = (String::new(), String::new());
            quote_literal(&self.connector, &mut connector);
            quote_literal(&origin.topic, &mut topic);
            format!(
                "INSERT INTO {} (connector, topic, `partition`, next_offset) VALUES ({connector}, {topic}, {}, {next}) \
                 ON DUPLICATE KEY UPDATE next_offset = VALUES(next_offset)",
                quote_table(&self.config.offsets_table),
                origin.partition
            )
        };
        let client = self.client.as_mut().expect("connected");
        client.query("START TRANSACTION")?;
        let applied = self.apply(&rows, &mut refused).and_then(|()| {
            let client = self.client.as_mut().expect("connected");
            client.query(&offset)?;
            refused.sort_unstable_by_key(|(i, _)| *i);
            self.offsets.committing(origin, next, &refused);
            client.query("COMMIT")?;
            Ok(())
        });
        match applied {
            Ok(()) => {
                self.offsets.committed(origin, next);
                Ok(refused)
            }
            Err(e) => {
                // A COMMIT that failed may have landed or not, and a
                // transaction a ROLLBACK did not end would carry its rows
                // into the next: either way, a new connection, and the
                // offsets read again.
                let committing = self.offsets.is_committing();
                let rolled_back = !committing
                    && !e.is_connection_lost()
                    && self
                        .client
                        .as_mut()
                        .is_some_and(|client| client.query("ROLLBACK").is_ok());
                if !rolled_back {
                    self.client = None;
                }
                Err(e.into())
            }
        }
    }

    /// Runs `rows` in order, runs of one shape as one statement; a
    /// statement refused for a row's data is undone alone by InnoDB, and
    /// its rows are tried one by one to find the refused ones.
    fn apply(&mut self, rows: &[Row], refused: &mut Vec<(usize, String)>) -> Result<(), MyError> {
        let mut at = 0;
        while at < rows.len() {
            let first = &rows[at];
            let mut end = at + 1;
            let mut bytes = 0;
            while end < rows.len()
                && end - at < MAX_ROWS
                && bytes < MAX_STATEMENT
                && rows[end].columns == first.columns
            {
                bytes += rows[end].values.iter().map(String::len).sum::<usize>();
                end += 1;
            }
            let run = &rows[at..end];
            let sql = self.statement(run);
            let client = self.client.as_mut().expect("connected");
            match client.query(&sql) {
                Ok(_) => {}
                Err(MyError::Server(e)) if e.is_data_error() => {
                    for row in run {
                        let sql = self.statement(std::slice::from_ref(row));
                        let client = self.client.as_mut().expect("connected");
                        match client.query(&sql) {
                            Ok(_) => {}
                            Err(MyError::Server(e)) if e.is_data_error() => {
                                refused.push((row.index, format!("MariaDB refused the row: {e}")));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
            at = end;
        }
        Ok(())
    }

    /// Finds the target table's columns; a missing or non-transactional
    /// table is an invalid config.
    fn prepare(&mut self) -> Result<(), Failed> {
        self.connect()?;
        let client = self.client.as_mut().expect("connected");
        let (mut schema, mut table) = (String::new(), String::new());
        match self.config.table.split_once('.') {
            Some((db, t)) => {
                quote_literal(db, &mut schema);
                quote_literal(t, &mut table);
            }
            None => {
                schema.push_str("DATABASE()");
                quote_literal(&self.config.table, &mut table);
            }
        }
        let found = client
            .query(&format!(
                "SELECT t.engine, c.column_name FROM information_schema.tables t \
                 JOIN information_schema.columns c ON c.table_schema = t.table_schema AND c.table_name = t.table_name \
                 WHERE t.table_schema = {schema} AND t.table_name = {table}"
            ))?
            .rows;
        if found.is_empty() {
            return Err(Failed::Sink(Error::invalid_config(format!(
                "there is no table {:?} in database {:?}: create it (the sink does not)",
                self.config.table, self.config.database
            ))));
        }
        if let Some(engine) = found[0][0].as_deref()
            && !engine.eq_ignore_ascii_case("InnoDB")
        {
            return Err(Failed::Sink(Error::invalid_config(format!(
                "table {} is {engine}, which has no transactions: the rows and the offsets could not \
                 commit together; make it InnoDB (ALTER TABLE … ENGINE = InnoDB)",
                self.table_sql
            ))));
        }
        self.columns = found
            .into_iter()
            .filter_map(|r| r.into_iter().nth(1).flatten())
            .collect();
        if let Some(missing) = self
            .config
            .key_columns
            .iter()
            .find(|k| !self.columns.contains(*k))
        {
            return Err(Failed::Sink(Error::invalid_config(format!(
                "key_columns names {missing:?}, which table {} has not",
                self.table_sql
            ))));
        }
        Ok(())
    }
}

/// A JSON value as an SQL literal.
fn literal(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Null => out.push_str("NULL"),
        Value::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => quote_literal(s, &mut out),
        Value::Array(_) | Value::Object(_) => quote_literal(&v.to_string(), &mut out),
    }
    out
}

fn interrupted() -> Failed {
    Failed::Sink(Error::retriable("interrupted while waiting for MariaDB"))
}

impl Sink for MariadbSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        if config.mode == Mode::Upsert && config.key_columns.is_empty() {
            return Err(Error::invalid_config(
                "mode = \"upsert\" needs key_columns, the columns of the table's primary or unique key",
            ));
        }
        if config.delete_on_null && config.key_columns.is_empty() {
            return Err(Error::invalid_config(
                "delete_on_null needs key_columns, the columns a delete matches",
            ));
        }
        let options = ConnectOptions {
            addr: config.addr.clone(),
            user: config.user.clone(),
            password: config.password.clone(),
            database: Some(config.database.clone()),
        };
        let outage = Outage::new(
            format!("mariadb-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut sink = MariadbSink {
            table_sql: quote_table(&config.table),
            config,
            options,
            connector: ctx.connector.clone(),
            client: None,
            outage,
            columns: HashSet::new(),
            offsets: SinkOffsets::default(),
        };
        // At open, a server that is not there is said, not waited for.
        let client = Client::connect(&sink.options).map_err(|e| sink.options.refused(&e))?;
        sink.client = Some(client);
        sink.session().map_err(|e| sink.options.refused(&e))?;
        sink.prepare().map_err(|f| match f {
            Failed::Sink(e) => e,
            Failed::My(e) if e.is_interrupted() => Error::retriable("interrupted while opening"),
            Failed::My(e) => sink.options.refused(&e),
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
                Err(Failed::My(e)) if e.is_interrupted() => {
                    self.client = None;
                    return Err(Error::retriable("interrupted while waiting for MariaDB"));
                }
                Err(Failed::My(e)) if e.is_connection_lost() => {
                    self.client = None;
                    self.outage.went_away(&e.to_string());
                }
                Err(Failed::My(MyError::Server(e))) if e.is_retriable() => {
                    return Err(Error::retriable(format!("writing to MariaDB: {e}")));
                }
                Err(Failed::My(e)) => {
                    return Err(Error::fatal(format!("writing to MariaDB: {e}")));
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            let _ = client.close();
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(MariadbSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_literals() {
        assert_eq!(literal(&Value::Null), "NULL");
        assert_eq!(literal(&serde_json::json!(true)), "TRUE");
        assert_eq!(literal(&serde_json::json!(-1.5)), "-1.5");
        assert_eq!(literal(&serde_json::json!("it's")), r"'it\'s'");
        assert_eq!(literal(&serde_json::json!({"a": [1]})), r#"'{"a":[1]}'"#);
    }
}
