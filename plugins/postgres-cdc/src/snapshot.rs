//! The initial snapshot: every row the tables hold when capture starts, as
//! `r` records, then the stream from exactly where the snapshot saw the
//! database.
//!
//! **Consistent.** The slot is made with `SNAPSHOT 'use'` as the first
//! command of a `REPEATABLE READ` transaction on the replication
//! connection: the rows that transaction reads are the database at the
//! slot's consistent point `C`, and the slot streams exactly the
//! transactions that commit at or after `C`. Nothing is missed or repeated
//! between the two.
//!
//! **Resumable.** Each table is read in the order of its primary key (or
//! its replica identity index), a batch per poll through a cursor, and the
//! position says which table and which key came last. The exported
//! snapshot dies with its connection, so a snapshot broken off (the host
//! killed, the server gone) cannot be read further at `C`. It goes on at a
//! new snapshot instead: a temporary slot made the same way gives the rows
//! after the last key as of its own point `C'`, and the position keeps a
//! [`Cut`] saying so. While streaming from `C` later, a change to a row
//! past the cut that commits before `C'` is already in what `C'` read, so
//! it is left out; every other change is emitted. Each row's history is
//! then told exactly once: its state at the snapshot that read it, and
//! every change after that.
//!
//! An update in that window that moves a row's key past a cut, from a key
//! an earlier snapshot told, becomes a delete of the old key: the later
//! snapshot told the row at its new key. Not yet covered: a change whose
//! key columns are not all in it (a replica identity index other than the
//! primary key, a TOASTed key) cannot be judged, and is emitted.

use sluice_postgres::pgoutput::{Column, Datum, Relation, Tuple};
use sluice_postgres::{Client, PgError, quote_ident, quote_literal};
use sluice_sdk::serde::{Deserialize, Serialize};

/// The name the snapshot's cursor has.
const CURSOR: &str = "sluice_snapshot";

/// Whether a new connector first reads the tables' rows.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, sluice_sdk::schemars::JsonSchema,
)]
#[serde(crate = "sluice_sdk::serde", rename_all = "lowercase")]
#[schemars(crate = "sluice_sdk::schemars")]
pub enum Mode {
    /// Every row the tables hold, as `r` records, then their changes.
    #[default]
    Initial,
    /// Only changes made after the slot is made.
    Never,
}

/// A place in the snapshot's order: a table (`schema.name`), and the key
/// of the last row read from it (`None`: none yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
pub struct Mark {
    pub table: String,
    pub after: Option<Vec<String>>,
}

/// From `from` on (that table's rows after that key, and every table after
/// it), the rows were read as of `lsn`, not as of the slot's point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "sluice_sdk::serde")]
pub struct Cut {
    pub lsn: u64,
    pub from: Mark,
}

/// Why a table cannot be captured as configured.
#[derive(Debug)]
pub enum TableError {
    Pg(PgError),
    /// The config names it wrongly, or it cannot be snapshotted.
    Config(String),
}

impl From<PgError> for TableError {
    fn from(e: PgError) -> TableError {
        TableError::Pg(e)
    }
}

/// A captured table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct Table {
    /// `schema.name`.
    pub qualified: String,
    /// Its columns as `pgoutput` would describe them.
    pub relation: Relation,
    /// The columns its rows are read in the order of (the primary key,
    /// else the replica identity index), as indexes into `relation`'s
    /// columns, with their SQL types and collations (`integer`, `text
    /// COLLATE pg_catalog."C"`: keys compare as the column orders them);
    /// empty if it has neither.
    pub order: Vec<(usize, String)>,
}

impl Table {
    /// Looks `name` (`table` or `schema.table`, as configured) up.
    pub fn load(client: &mut Client, name: &str) -> Result<Table, TableError> {
        let found = client.simple_query(&format!(
            "SELECT c.oid, n.nspname, c.relname, c.relreplident FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass({})",
            quote_literal(name)
        ))?;
        let Some([Some(oid), Some(schema), Some(table), Some(identity)]) =
            found.first().map(Vec::as_slice)
        else {
            return Err(TableError::Config(format!(
                "tables names {name:?}, which the database has no table of"
            )));
        };
        let (oid, identity) = (oid.clone(), identity.as_bytes()[0]);
        // Per column: whether it is in the primary key, in the replica
        // identity index, and where in the primary key (or that index).
        let columns = client.simple_query(&format!(
            "SELECT a.attname, a.atttypid, a.atttypmod, format_type(a.atttypid, a.atttypmod) || \
               coalesce((SELECT ' COLLATE ' || format('%I.%I', cn.nspname, co.collname) FROM pg_collation co \
                 JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation), ''), \
               array_position(pk.indkey::int2[], a.attnum), array_position(ri.indkey::int2[], a.attnum) \
             FROM pg_attribute a \
             LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary \
             LEFT JOIN pg_index ri ON ri.indrelid = a.attrelid AND ri.indisreplident \
             WHERE a.attrelid = {oid} AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum"
        ))?;
        let number = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<i64>().ok());
        let mut relation = Relation {
            id: oid.parse().unwrap_or(0),
            schema: schema.clone(),
            name: table.clone(),
            replica_identity: identity,
            columns: Vec::with_capacity(columns.len()),
        };
        let (mut pk, mut ri) = (Vec::new(), Vec::new());
        for (i, row) in columns.iter().enumerate() {
            let [
                Some(name),
                type_oid,
                type_modifier,
                Some(sql_type),
                in_pk,
                in_ri,
            ] = row.as_slice()
            else {
                return Err(PgError::Protocol("an unexpected pg_attribute row".into()).into());
            };
            if let Some(at) = number(in_pk) {
                pk.push((at, i, sql_type.clone()));
            }
            if let Some(at) = number(in_ri) {
                ri.push((at, i, sql_type.clone()));
            }
            relation.columns.push(Column {
                key: match identity {
                    b'f' => true,
                    b'i' => number(in_ri).is_some(),
                    b'd' => number(in_pk).is_some(),
                    _ => false,
                },
                name: name.clone(),
                type_oid: number(type_oid).unwrap_or(0) as u32,
                type_modifier: number(type_modifier).unwrap_or(-1) as i32,
            });
        }
        let mut order = if pk.is_empty() { ri } else { pk };
        order.sort();
        Ok(Table {
            qualified: format!("{schema}.{table}"),
            relation,
            order: order.into_iter().map(|(_, i, t)| (i, t)).collect(),
        })
    }

    /// The statement that opens the snapshot's cursor over its rows after
    /// `after` (all of them if `None`), in key order.
    pub fn declare(&self, after: Option<&[String]>) -> Result<String, TableError> {
        if self.order.is_empty() {
            return Err(TableError::Config(format!(
                "{} has no primary key (nor a replica identity index) to read it in the order of, \
                 so its snapshot could not be resumed after a crash: add a primary key, or set \
                 snapshot = \"never\"",
                self.qualified
            )));
        }
        let columns: Vec<String> = self
            .relation
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect();
        let key = self.key_columns();
        let mut sql = format!(
            "DECLARE {CURSOR} CURSOR FOR SELECT {} FROM {}.{}",
            columns.join(", "),
            quote_ident(&self.relation.schema),
            quote_ident(&self.relation.name)
        );
        if let Some(after) = after {
            sql.push_str(&format!(" WHERE ({key}) > ({})", self.literals(after)));
        }
        sql.push_str(&format!(" ORDER BY {key}"));
        Ok(sql)
    }

    /// `FETCH` of up to `n` rows of the cursor.
    pub fn fetch(n: usize) -> String {
        format!("FETCH FORWARD {n} FROM {CURSOR}")
    }

    /// Closes the cursor.
    pub const CLOSE: &str = "CLOSE sluice_snapshot";

    /// A row read by the cursor, as `pgoutput` would send it, and its key
    /// (the order columns' text).
    pub fn row(&self, row: Vec<Option<String>>) -> (Tuple, Vec<String>) {
        let key = self
            .order
            .iter()
            .map(|(i, _)| row[*i].clone().unwrap_or_default())
            .collect();
        let tuple = row
            .into_iter()
            .map(|v| v.map_or(Datum::Null, |s| Datum::Text(s.into())))
            .collect();
        (Tuple(tuple), key)
    }

    /// The order columns' values in a change's row, if all are there.
    pub fn key_of(&self, relation: &Relation, row: &Tuple) -> Option<Vec<String>> {
        self.order
            .iter()
            .map(|(i, _)| {
                let name = &self.relation.columns[*i].name;
                let at = relation.columns.iter().position(|c| &c.name == name)?;
                match row.0.get(at)? {
                    Datum::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                    Datum::Null | Datum::Unchanged => None,
                }
            })
            .collect()
    }

    /// Whether key `a` sorts after key `b`, as the server orders them.
    pub fn after(&self, client: &mut Client, a: &[String], b: &[String]) -> Result<bool, PgError> {
        let rows = client.simple_query(&format!(
            "SELECT ({}) > ({})",
            self.literals(a),
            self.literals(b)
        ))?;
        Ok(rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .as_deref()
            == Some("t"))
    }

    fn key_columns(&self) -> String {
        let names: Vec<String> = self
            .order
            .iter()
            .map(|(i, _)| quote_ident(&self.relation.columns[*i].name))
            .collect();
        names.join(", ")
    }

    fn literals(&self, values: &[String]) -> String {
        let typed: Vec<String> = self
            .order
            .iter()
            .zip(values)
            .map(|((_, typed), v)| {
                // `typed` may end in a COLLATE clause, which binds to the
                // cast value.
                format!("{}::{typed}", quote_literal(v))
            })
            .collect();
        typed.join(", ")
    }
}
