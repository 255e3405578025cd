//! The source's config, as the manifest's `[connector.config]` writes it.

/// Config of the `postgres-cdc` source.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server, `host:port`; grant it in `net`.
    pub addr: String,
    /// The role to log in as; it needs `REPLICATION`.
    pub user: String,
    /// Its password; write `"${secret:NAME}"`. Never logged or shown.
    #[serde(default)]
    pub password: Option<String>,
    /// The database whose tables are captured.
    pub database: String,
    /// Connect over TLS, through the host (see `postgres-sink`). Default
    /// false.
    #[serde(default)]
    pub tls: bool,
    /// The name the server's certificate must be for, with `tls`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The tables to capture, `"table"` or `"schema.table"`.
    pub tables: Vec<String>,
    /// Whether a new connector first reads every row the tables hold (`op`
    /// `r`), consistent with the changes streamed after:
    /// `snapshot = "initial"` (the default; each table needs a primary key)
    /// or `"never"`.
    #[serde(default)]
    pub snapshot: crate::snapshot::Mode,
    /// The publication; made for `tables` if missing. Default
    /// `sluice_<connector>`.
    #[serde(default)]
    pub publication: Option<String>,
    /// The logical replication slot; made if missing. Default
    /// `sluice_<connector>`. With `snapshot = "initial"`, a slot named
    /// here must not exist yet on the first start (the snapshot is read at
    /// the point of the slot made with it). Drop it when the connector is gone for good:
    /// a slot holds WAL until it is told it may go.
    #[serde(default)]
    pub slot: Option<String>,
    /// First wait before connecting again to a server that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}
