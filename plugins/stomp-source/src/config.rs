//! The source's config, as the manifest's `[connector.config]` writes it.

/// Config of the `stomp-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:61613"`; grant it in
    /// `net`.
    pub addr: String,
    /// What to consume, e.g. `"/queue/orders"` (ActiveMQ: a queue, each
    /// message to one consumer; `"/topic/…"` for a topic).
    pub destination: String,
    /// A selector (ActiveMQ: a JMS selector over the headers, e.g.
    /// `"region = 'eu'"`): only the messages it matches are consumed.
    #[serde(default)]
    pub selector: Option<String>,
    /// The header whose value becomes the record's key, e.g.
    /// `"JMSXGroupID"`. Default: records have no key.
    #[serde(default)]
    pub key_header: Option<String>,
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
    /// The most messages delivered and not yet acknowledged (the log does
    /// not hold them yet), asked of the broker as its prefetch
    /// (`activemq.prefetchSize`, RabbitMQ's `prefetch-count`). Default 1000.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Heart-beats both ways, in milliseconds; 0 turns them off. Default
    /// 10000.
    #[serde(default = "default_heart_beat_ms")]
    pub heart_beat_ms: u64,
    /// End once no message came for this long, in milliseconds, with
    /// everything before stored: drains the destination, then stops, as a
    /// bounded source. Default: never end.
    #[serde(default)]
    pub end_after_idle_ms: Option<u64>,
    /// First wait before connecting again to a broker that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_prefetch() -> u32 {
    1000
}

fn default_heart_beat_ms() -> u64 {
    10_000
}
