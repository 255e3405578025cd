//! The source's config, as the manifest's `[connector.config]` writes it.

/// Config of the `redis-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server, `host:port`, e.g. `"127.0.0.1:6379"`; grant it in `net`.
    pub addr: String,
    /// The ACL user (Redis 6 and newer); without it, the default user.
    #[serde(default)]
    pub user: Option<String>,
    /// The password (`requirepass`, or the user's); write
    /// `"${secret:NAME}"` so it stays out of the manifest. Never logged or
    /// shown.
    #[serde(default)]
    pub password: Option<String>,
    /// The database number. Default 0.
    #[serde(default)]
    pub db: u32,
    /// Connect over TLS, through the host, checking the server's
    /// certificate with what `[connector.grants.tls]` trusts. Default
    /// false.
    #[serde(default)]
    pub tls: bool,
    /// The name the server's certificate must be for, with `tls`. Default:
    /// the host part of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The stream to read.
    pub stream: String,
    /// The consumer group. Default: the connector's name. Each instance is
    /// the group's consumer `<connector>-<index>`.
    #[serde(default)]
    pub group: Option<String>,
    /// Where a group the source makes starts: `earliest` (the default: the
    /// whole stream) or `latest` (entries added from now on). A group that
    /// is there already goes on from where it is.
    #[serde(default)]
    pub start: Start,
    /// End once the group has no entry left for this consumer, instead of
    /// waiting for more. Default false.
    #[serde(default)]
    pub bounded: bool,
    /// How long one read waits for new entries, in milliseconds (`BLOCK`):
    /// waiting costs nothing, and the host ends it early to stop, pause or
    /// swap. Default 2000.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// First wait before connecting again to a server that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_block_ms() -> u64 {
    2000
}

/// Where a new group starts.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// The stream's first entry (`0`).
    #[default]
    Earliest,
    /// Entries added after the group is made (`$`).
    Latest,
}
