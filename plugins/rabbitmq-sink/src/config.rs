//! The sink's config, as the manifest's `[connector.config]` writes it.

/// Config of the `rabbitmq-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:5672"`; grant it in `net`.
    pub addr: String,
    /// The exchange to publish to. Default `""`, the default exchange,
    /// where the routing key names the queue.
    #[serde(default)]
    pub exchange: String,
    /// Each message's routing key, a template over the record: `{key}`,
    /// `{topic}`, `{partition}`, `{offset}`, e.g. `"orders"` (with the
    /// default exchange, the queue) or `"orders.{key}"`. At most 255 bytes.
    pub routing_key: String,
    /// Publish `mandatory`: a message no queue takes comes back, and its
    /// record is dead-lettered with the broker's reason. Default true
    /// (false: the broker drops it).
    #[serde(default = "default_true")]
    pub mandatory: bool,
    /// Persistent messages (`delivery_mode` 2: a durable queue keeps them
    /// across a broker restart, and the broker confirms them once
    /// written). Default true.
    #[serde(default = "default_true")]
    pub persistent: bool,
    /// The messages' `content_type`, e.g. `"application/json"`. Default:
    /// none.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Carry the record's headers into the message's headers table (as
    /// byte strings). Default true.
    #[serde(default = "default_true")]
    pub headers: bool,
    /// The virtual host. Default `"/"`.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The user name. Default `"guest"`.
    #[serde(default = "default_guest")]
    pub user: String,
    /// The password; write `"${secret:NAME}"` so it stays out of the
    /// manifest. Never logged or shown. Default `"guest"`.
    #[serde(default = "default_guest")]
    pub password: String,
    /// Connect over TLS, through the host, checking the broker's
    /// certificate with what `[connector.grants.tls]` trusts. Default
    /// false.
    #[serde(default)]
    pub tls: bool,
    /// The name the broker's certificate must be for, with `tls`. Default:
    /// the host part of `addr`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The most messages published and not confirmed. Default 1000.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u32,
    /// Heartbeats, in seconds (the broker may ask for less); 0 leaves them
    /// to the broker. Default 10.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// First wait before connecting again to a broker that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_vhost() -> String {
    "/".to_owned()
}

fn default_guest() -> String {
    "guest".to_owned()
}

fn default_max_inflight() -> u32 {
    1000
}

fn default_heartbeat_secs() -> u64 {
    10
}
