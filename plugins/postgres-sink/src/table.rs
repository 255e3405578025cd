//! Tables: which one a record goes to, what columns it has (asked of the
//! server once per connection), creating a missing one, and the SQL that
//! writes to it.

use std::collections::HashMap;

use sluice_postgres::{Client, PgError, quote_ident, quote_literal, quote_table};
use sluice_sdk::serde_json::Value;

/// The `table` setting: a fixed name or a template.
#[derive(Debug, Clone)]
pub enum TableName {
    /// One table for every record.
    Fixed(String),
    /// Pieces of text and placeholders.
    Template(Vec<Piece>),
}

/// A piece of a table template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Topic,
    Field(String),
}

impl TableName {
    /// Parses `table`; `Err` says what is wrong with it.
    pub fn parse(table: &str) -> Result<TableName, String> {
        if !table.contains('{') {
            if table.is_empty() {
                return Err("table must not be empty".into());
            }
            return Ok(TableName::Fixed(table.to_owned()));
        }
        let mut pieces = Vec::new();
        let mut rest = table;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("table {table:?} has a '{{' without its '}}'"))?;
            let name = &rest[open + 1..open + close];
            pieces.push(match name {
                "" => return Err(format!("table {table:?} has an empty {{}}")),
                "topic" => Piece::Topic,
                field => Piece::Field(field.to_owned()),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(TableName::Template(pieces))
    }

    /// The table a record goes to; `field` gives a field of its value as
    /// text. `Err` (the record's fault) when a field the template names is
    /// missing, or not text or a number.
    pub fn resolve(
        &self,
        topic: &str,
        field: impl Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
        let pieces = match self {
            TableName::Fixed(name) => return Ok(name.clone()),
            TableName::Template(pieces) => pieces,
        };
        let mut name = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => name.push_str(t),
                Piece::Topic => name.push_str(topic),
                Piece::Field(f) => match field(f) {
                    Some(text) if !text.is_empty() => name.push_str(&text),
                    _ => {
                        return Err(format!(
                            "no field {f:?} (text or a number) to name the table"
                        ));
                    }
                },
            }
        }
        Ok(name)
    }
}

/// What a column takes, as far as the sink cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `json` or `jsonb`: every value goes in as JSON text.
    Json,
    /// Anything else: text goes in as it is, other values as their JSON.
    Other,
}

/// A table's columns, by name.
#[derive(Debug, Clone)]
pub struct Table {
    /// The quoted name.
    pub sql_name: String,
    pub columns: HashMap<String, ColumnKind>,
}

impl Table {
    /// Asks the server for `name`'s columns; `None` when there is no such
    /// table.
    pub fn load(client: &mut Client, name: &str) -> Result<Option<Table>, PgError> {
        let (schema, table) = match name.split_once('.') {
            Some((s, t)) => (quote_literal(s), quote_literal(t)),
            None => ("current_schema()".to_owned(), quote_literal(name)),
        };
        let rows = client.simple_query(&format!(
            "SELECT column_name, data_type FROM information_schema.columns \
             WHERE table_schema = {schema} AND table_name = {table}"
        ))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                let column = row.next().flatten()?;
                let kind = match row.next().flatten().as_deref() {
                    Some("json" | "jsonb") => ColumnKind::Json,
                    _ => ColumnKind::Other,
                };
                Some((column, kind))
            })
            .collect();
        Ok(Some(Table {
            sql_name: quote_table(name),
            columns,
        }))
    }

    /// Creates `name` with a column for each of `fields` (typed from its
    /// value) and `keys` as its primary key, unless it exists by now.
    pub fn create(
        client: &mut Client,
        name: &str,
        fields: &[(String, Value)],
        keys: &[String],
    ) -> Result<(), PgError> {
        let mut columns: Vec<String> = fields
            .iter()
            .map(|(column, value)| format!("{} {}", quote_ident(column), sql_type(value)))
            .collect();
        if !keys.is_empty() {
            let keys: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
            columns.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        client.simple_query(&format!(
            "CREATE TABLE IF NOT EXISTS {} ({})",
            quote_table(name),
            columns.join(", ")
        ))?;
        Ok(())
    }
}

/// The column type `create_table` gives a field, from its first value.
fn sql_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "bigint",
        Value::Number(_) => "double precision",
        Value::String(s) if looks_like_timestamp(s) => "timestamptz",
        Value::String(_) | Value::Null => "text",
        Value::Array(_) | Value::Object(_) => "jsonb",
    }
}

/// `2024-05-01T12:00:00Z`, `2024-05-01 12:00:00.5+02:00`: an ISO 8601 date
/// and time with a zone.
fn looks_like_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b' ')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || {
            let zone = &b[b.len() - 6..];
            (zone[0] == b'+' || zone[0] == b'-') && zone[3] == b':'
        })
}

/// `INSERT INTO t (a, b) VALUES ($1, $2)`, and for `upsert` the
/// `ON CONFLICT (keys) DO UPDATE SET` of the other columns.
pub fn insert_sql(table: &str, columns: &[&str], upsert_keys: Option<&[String]>) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
    let mut sql = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        names.join(", "),
        params.join(", ")
    );
    if let Some(keys) = upsert_keys {
        let conflict: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !keys.iter().any(|k| k == *c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
            .collect();
        if updates.is_empty() {
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO NOTHING",
                conflict.join(", ")
            ));
        } else {
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                conflict.join(", "),
                updates.join(", ")
            ));
        }
    }
    sql
}

/// `DELETE FROM t WHERE k1 = $1 AND k2 = $2`.
pub fn delete_sql(table: &str, keys: &[String]) -> String {
    let cond: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{} = ${}", quote_ident(k), i + 1))
        .collect();
    format!("DELETE FROM {table} WHERE {}", cond.join(" AND "))
}

/// `COPY t (a, b) FROM STDIN`.
pub fn copy_sql(table: &str, columns: &[&str]) -> String {
    let names: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
    format!("COPY {table} ({}) FROM STDIN", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_name_the_topic_and_fields() {
        let t = TableName::parse("ev_{topic}_{kind}").unwrap();
        let kind = |f: &str| (f == "kind").then(|| "click".to_owned());
        assert_eq!(t.resolve("web", kind).unwrap(), "ev_web_click");
        assert!(t.resolve("web", |_| None).unwrap_err().contains("kind"));
        assert!(TableName::parse("a{b").is_err());
        assert!(TableName::parse("a{}").is_err());
    }

    #[test]
    fn upsert_updates_all_but_the_keys() {
        let sql = insert_sql("\"t\"", &["id", "v"], Some(&["id".to_owned()]));
        assert_eq!(
            sql,
            "INSERT INTO \"t\" (\"id\", \"v\") VALUES ($1, $2) ON CONFLICT (\"id\") DO UPDATE SET \"v\" = EXCLUDED.\"v\""
        );
    }

    #[test]
    fn timestamps_are_told_from_text() {
        assert!(looks_like_timestamp("2024-05-01T12:00:00Z"));
        assert!(looks_like_timestamp("2024-05-01 12:00:00.25+02:00"));
        assert!(!looks_like_timestamp("2024-05-01"));
        assert!(!looks_like_timestamp("hello, this is twenty chars"));
    }
}
