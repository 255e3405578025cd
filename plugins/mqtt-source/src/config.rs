//! The source's config, as the manifest's `[connector.config]` writes it.

/// Config of the `mqtt-source`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:1883"`; grant it in `net`.
    pub addr: String,
    /// The protocol: `"3.1.1"` (the default; every broker, ActiveMQ 5
    /// included) or `"5"`.
    #[serde(default)]
    pub protocol: sluice_mqtt::Version,
    /// The topic filters to subscribe to, e.g. `["sensors/+/temp"]`.
    pub topics: Vec<String>,
    /// The client identifier, the name of the session the broker keeps.
    /// Default: `sluice-<connector>-<index>`. Two clients with one id push
    /// each other off the broker: keep it unique.
    #[serde(default)]
    pub client_id: Option<String>,
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
    /// Keep-alive, in seconds: the source pings a quiet broker after half
    /// of it. Default 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// MQTT 5: how long the broker keeps the session (and queues messages
    /// for it) while the source is away, in seconds. Default: for ever.
    #[serde(default = "default_session_expiry_s")]
    pub session_expiry_s: u32,
    /// End once no message came for this long, in milliseconds, with
    /// everything before stored: drains what the broker kept for the
    /// session, then stops, as a bounded source. Default: never end.
    #[serde(default)]
    pub end_after_idle_ms: Option<u64>,
    /// The most messages read and not yet acknowledged (the log does not
    /// hold them yet): the source reads no further until they are, which
    /// bounds what a crash makes the broker send again. In MQTT 5 also the
    /// receive maximum the source asks the broker to keep to. Default
    /// 1000.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: u16,
    /// First wait before connecting again to a broker that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_max_unacked() -> u16 {
    1000
}

fn default_keep_alive_s() -> u64 {
    30
}

fn default_session_expiry_s() -> u32 {
    u32::MAX
}
