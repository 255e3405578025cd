//! The sink's config, as the manifest's `[connector.config]` writes it.

/// Config of the `mqtt-sink`.
#[sluice_sdk::config]
#[derive(Debug)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The broker, `host:port`, e.g. `"127.0.0.1:1883"`; grant it in `net`.
    pub addr: String,
    /// The protocol: `"3.1.1"` (the default; every broker, ActiveMQ 5
    /// included) or `"5"` (a refused publish is then dead-lettered with the
    /// broker's reason).
    #[serde(default)]
    pub protocol: sluice_mqtt::Version,
    /// The topic each record is published to, a template over the record:
    /// `{key}`, `{topic}`, `{partition}`, `{offset}`, e.g.
    /// `"devices/{key}"`.
    pub topic: String,
    /// `0` (sent once, never acknowledged) or `1` (the default: a batch is
    /// written once the broker acknowledged each of its messages).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish retained messages (the broker keeps the last of each topic
    /// for new subscribers). Default false.
    #[serde(default)]
    pub retain: bool,
    /// The client identifier. Default: `sluice-<connector>-<index>`.
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
    /// The most QoS 1 publishes in flight (sent, not acknowledged); the
    /// broker's own receive maximum (MQTT 5) lowers it. Default 1000.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// Keep-alive, in seconds. Default 30.
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: u64,
    /// First wait before connecting again to a broker that went away, in
    /// milliseconds. Default 100.
    #[serde(default = "sluice_sdk::outage::default_initial_ms")]
    pub reconnect_initial_ms: u64,
    /// Longest wait between tries, in milliseconds. Default 5000.
    #[serde(default = "sluice_sdk::outage::default_max_ms")]
    pub reconnect_max_ms: u64,
}

fn default_qos() -> u8 {
    1
}

fn default_max_inflight() -> u16 {
    1000
}

fn default_keep_alive_s() -> u64 {
    30
}
