//! The sink's config, as the manifest's `[connector.config]` writes it.

use std::collections::BTreeMap;

/// Config of the `mariadb-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server, `host:port`, e.g. `"127.0.0.1:3306"`; grant it in `net`.
    pub addr: String,
    /// The user to log in as (`mysql_native_password`).
    pub user: String,
    /// Its password; write `"${secret:NAME}"` so it stays out of the
    /// manifest. Never logged or shown.
    #[serde(default)]
    pub password: Option<String>,
    /// The database.
    pub database: String,
    /// The table to write, `"table"` or `"database.table"`. It must exist,
    /// and be transactional (InnoDB).
    pub table: String,
    /// `insert` (the default) or `upsert`.
    #[serde(default)]
    pub mode: Mode,
    /// The columns that identify a row: the key of `upsert` (the table's
    /// primary or unique key) and the `WHERE` of a delete. Their values come
    /// from the record's key when it is a JSON object (by name) or, for one
    /// key column, any other key; else from the value's fields.
    #[serde(default)]
    pub key_columns: Vec<String>,
    /// A record with a key and no value (a tombstone) deletes the row with
    /// that key. Off (the default), a tombstone is dead-lettered.
    #[serde(default)]
    pub delete_on_null: bool,
    /// Columns for fields whose names differ: `{ field = "column" }`. Other
    /// fields go to the column of their own name.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// The table the sink keeps its offsets in, in the same transaction as
    /// the rows. Default `sluice_offsets`.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// First wait before connecting again to a server that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_offsets_table() -> String {
    "sluice_offsets".to_owned()
}

/// How records become rows.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `INSERT`: a row a record.
    #[default]
    Insert,
    /// `INSERT … ON DUPLICATE KEY UPDATE`: the last record per key wins.
    Upsert,
}
