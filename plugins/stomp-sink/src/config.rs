//! The sink's config, as the manifest's `[connector.config]` writes it.

/// Config of the `stomp-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:61613"`; grant it in
    /// `net`.
    pub addr: String,
    /// Where each record is sent, a template over the record: `{key}`,
    /// `{topic}`, `{partition}`, `{offset}`, e.g. `"/queue/orders"` or
    /// `"/queue/orders.{key}"`.
    pub destination: String,
    /// Send persistent messages (ActiveMQ stores them before its receipt;
    /// otherwise they live in memory only). Default true.
    #[serde(default = "default_persistent")]
    pub persistent: bool,
    /// The header the record's key goes in, e.g. `"JMSXGroupID"` (ActiveMQ
    /// then keeps each key's messages in order, to one consumer). Default:
    /// the key is not sent.
    #[serde(default)]
    pub key_header: Option<String>,
    /// The messages' `content-type`, e.g. `"application/json"`. Default:
    /// none.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The virtual host (`CONNECT`'s `host`). Default: the host part of
    /// `addr`.
    #[serde(default)]
    pub host: Option<String>,
    /// The user name, if the broker asks for one.
    #[serde(default)]
    pub user: Option<String>,
    /// The password; write `"${secret:NAME}"` so it stays out of the
    /// manifest. Never logged or shown.
    #[serde(default)]
    pub password: Option<String>,
    /// Connect over TLS, through the host, checking the broker's
    /// certificate with what `[connector.grants.tls]` trusts. Default
    /// false.
    #[serde(default)]
    pub tls: bool,
    /// The name the broker's certificate must be for, with `tls`. Default:
    /// the host part of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The most sends in flight (sent, not receipted). Default 1000.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u32,
    /// Heart-beats both ways, in milliseconds; 0 turns them off. Default
    /// 10000.
    #[serde(default = "default_heart_beat_ms")]
    pub heart_beat_ms: u64,
    /// First wait before connecting again to a broker that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_persistent() -> bool {
    true
}

fn default_max_inflight() -> u32 {
    1000
}

fn default_heart_beat_ms() -> u64 {
    10_000
}
