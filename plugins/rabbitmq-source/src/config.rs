//! The source's config, as the manifest's `[connector.config]` writes it.

/// Config of the `rabbitmq-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:5672"`; grant it in `net`.
    pub addr: String,
    /// The queue to consume, e.g. `"orders"`.
    pub queue: String,
    /// Declare the queue (durable) if it is not there. Default false: the
    /// queue must exist, and a missing one fails the connector at `open`.
    #[serde(default)]
    pub declare: bool,
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
    /// The most messages delivered and not yet acknowledged (the log does
    /// not hold them yet): the channel's `basic.qos` prefetch count, 1 to
    /// 65535. Default 500.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// `"message-id"`: a message whose `message_id` property was stored
    /// already is acknowledged and not stored again, across crashes too
    /// (the ids of the last `dedupe_window` messages stored travel in the
    /// position): exactly once into the log for messages that carry an id.
    /// `"none"` (the default): at least once.
    #[serde(default)]
    pub dedupe: Dedupe,
    /// How many recent message ids `dedupe` keeps. Default four times
    /// `prefetch` (the broker redelivers at most `prefetch` messages, at
    /// the head of the queue); at least `prefetch`.
    #[serde(default)]
    pub dedupe_window: Option<u32>,
    /// What becomes the record's key: `"routing-key"`, `"message-id"`,
    /// `"correlation-id"` or `"header:NAME"` (the message's header NAME).
    /// Default: records have no key.
    #[serde(default)]
    pub key: Option<String>,
    /// Heartbeats, in seconds (the broker may ask for less); 0 leaves them
    /// to the broker. Default 10.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// End once no message came for this long, in milliseconds, with
    /// everything before stored: drains the queue, then stops, as a
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

/// How redelivered messages are recognised.
#[sluice_sdk::config]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Dedupe {
    /// They are not: at least once.
    #[default]
    None,
    /// By their `message_id` property.
    MessageId,
}

fn default_vhost() -> String {
    "/".to_owned()
}

fn default_guest() -> String {
    "guest".to_owned()
}

fn default_prefetch() -> u16 {
    500
}

fn default_heartbeat_secs() -> u64 {
    10
}
