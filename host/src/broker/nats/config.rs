//! The NATS broker's settings, from a manifest's `[broker]` and `[topics]`.

use std::collections::BTreeMap;
use std::fmt;

/// Settings of a [`NatsBroker`], from the manifest's `[broker]`.
#[derive(Clone)]
pub struct NatsConfig {
    /// The servers to connect to (any one will do; the client learns the
    /// rest of a cluster from it).
    pub servers: Vec<async_nats::ServerAddr>,
    /// The token the server requires, if any. A secret: never shown.
    pub token: Option<String>,
    /// Copies of each stream and bucket in a NATS cluster.
    pub replicas: usize,
    /// Partitions of topics made without a `[topics.<name>]` entry.
    pub default_partitions: u32,
    /// Partitions of topics named in the manifest.
    pub partitions: BTreeMap<String, u32>,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers_shown())
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// The settings a manifest gives, with the token already read.
    pub fn from_manifest(m: &crate::manifest::Manifest, token: Option<String>) -> Self {
        let (defaults, policies) = m.topic_policies();
        NatsConfig {
            servers: m.nats_servers().to_vec(),
            token,
            replicas: m.nats_replicas() as usize,
            default_partitions: defaults.partitions,
            partitions: policies
                .into_iter()
                .map(|(t, p)| (t, p.partitions))
                .collect(),
        }
    }
}

impl NatsConfig {
    /// The servers, comma-separated, without a user or password in their
    /// URLs: for messages.
    pub(super) fn servers_shown(&self) -> String {
        servers_shown(&self.servers)
    }
}

/// `servers`, comma-separated, without a user or password in their URLs:
/// for messages.
pub fn servers_shown(servers: &[async_nats::ServerAddr]) -> String {
    let urls: Vec<&str> = servers.iter().map(|s| s.as_url_str()).collect();
    redacted_url(&urls.join(","))
}

/// `url` without a user or password in it, for messages.
fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &u[..scheme + 3], &u[at..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
