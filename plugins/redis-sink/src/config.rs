//! The sink's config, as the manifest's `[connector.config]` writes it.

/// Config of the `redis-sink`.
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
    /// What a record becomes: `set` (the default), `hset`, `lpush`,
    /// `rpush`, `publish` or `xadd`.
    #[serde(default)]
    pub mode: Mode,
    /// The key written, as a template: `{key}` is the record's key,
    /// `{topic}`, `{partition}` and `{offset}` where it came from. `set`:
    /// the key set to the value (default `"{key}"`); `hset`: the hash,
    /// whose field is the record's key; `lpush`/`rpush`: the list;
    /// `publish`: the channel; `xadd`: the stream. Default `"{topic}"`
    /// for all but `set`.
    #[serde(default)]
    pub key: Option<String>,
    /// `set`: the key expires this many milliseconds after it is written
    /// (`SET … PX`). Default: never.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// `xadd`: keep the stream about this long (`MAXLEN ~`). Default:
    /// unbounded.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// The hash the sink keeps its offsets in, written in the same
    /// `MULTI/EXEC` as each batch. Default `"sluice:offsets:<connector>"`.
    #[serde(default)]
    pub offsets_key: Option<String>,
    /// First wait before connecting again to a server that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

/// What a record becomes.
#[sluice_sdk::config]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `SET key value`: the last record per key wins.
    #[default]
    Set,
    /// `HSET key field value`, the field being the record's key.
    Hset,
    /// `LPUSH key value`.
    Lpush,
    /// `RPUSH key value`.
    Rpush,
    /// `PUBLISH channel value`.
    Publish,
    /// `XADD stream * value <value> [key <key>]`.
    Xadd,
}

impl Mode {
    /// The key template when `key` is not set.
    pub fn default_key(self) -> &'static str {
        match self {
            Mode::Set => "{key}",
            _ => "{topic}",
        }
    }
}
