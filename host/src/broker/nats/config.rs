//! The NATS broker's settings, from a manifest's `[broker]` and `[topics]`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::manifest::Manifest;
use crate::secrets::{self, Secrets};
use crate::tls::TlsClient;

/// Settings of a [`NatsBroker`], from the manifest's `[broker]`.
#[derive(Clone)]
pub struct NatsConfig {
    /// The servers to connect to (any one will do; the client learns the
    /// rest of a cluster from it).
    pub servers: Vec<async_nats::ServerAddr>,
    /// How the host authenticates and checks the servers.
    pub access: NatsAccess,
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
            .field("access", &self.access)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// The settings a manifest gives, with its secrets already read.
    pub fn from_manifest(m: &Manifest, access: NatsAccess) -> Self {
        let (defaults, policies) = m.topic_policies();
        NatsConfig {
            servers: m.nats_servers().to_vec(),
            access,
            replicas: m.nats_replicas() as usize,
            default_partitions: defaults.partitions,
            partitions: policies
                .into_iter()
                .map(|(t, p)| (t, p.partitions))
                .collect(),
        }
    }
}

/// How a host proves who it is to NATS, and checks who the servers are:
/// `[broker]`'s `token` or `user` and `password`, and `[broker.tls]`, with
/// their secrets read. The broker and the cluster connect with the same.
/// Its `Debug` shows no secret.
#[derive(Debug, Clone, Default)]
pub struct NatsAccess {
    /// Who the host is.
    pub auth: NatsAuth,
    /// TLS to the servers, required (`[broker.tls]`); `None`: TLS only
    /// where a `tls://` URL or the server asks for it, checked against the
    /// system's roots.
    pub tls: Option<TlsClient>,
}

/// How the host authenticates to NATS.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// It does not: the server lets any client in (or checks a client
    /// certificate).
    #[default]
    Anonymous,
    /// With a token.
    Token(String),
    /// As a user, with a password.
    User {
        /// The user's name.
        user: String,
        /// The password.
        password: String,
    },
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NatsAuth::Anonymous => f.write_str("Anonymous"),
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::User { user, .. } => f
                .debug_struct("User")
                .field("user", user)
                .field("password", &"***")
                .finish(),
        }
    }
}

impl NatsAccess {
    /// Reads the secrets `[broker]` names (the token, the password, the
    /// TLS client identity) and builds the TLS client. `Err` names the
    /// field and why it cannot be read, never a value.
    pub fn from_manifest(m: &Manifest) -> Result<NatsAccess, String> {
        let read = |field: &str, source: &toml::Spanned<crate::manifest::SecretSource>| {
            secrets::read(source.get_ref(), m).map_err(|why| format!("broker.{field} {why}"))
        };
        let b = &m.broker;
        let auth = match (&b.token, &b.user, &b.password) {
            (Some(token), _, _) => NatsAuth::Token(read("token", token)?),
            (None, Some(user), Some(password)) => NatsAuth::User {
                user: user.get_ref().clone(),
                password: read("password", password)?,
            },
            _ => NatsAuth::Anonymous,
        };
        let tls = match (m.nats_tls(), &b.tls) {
            (Some(policy), Some(table)) => {
                let table = table.get_ref();
                let mut values = Vec::new();
                if let (Some(id), Some(cert), Some(key)) = (
                    &policy.client_identity,
                    &table.client_cert,
                    &table.client_key,
                ) {
                    values.push((id.cert_secret.clone(), read("tls.client_cert", cert)?));
                    values.push((id.key_secret.clone(), read("tls.client_key", key)?));
                }
                let client = TlsClient::build(policy, &Secrets::from_values(values))
                    .map_err(|e| format!("broker.tls: {e}"))?;
                Some(client)
            }
            _ => None,
        };
        Ok(NatsAccess { auth, tls })
    }

    /// Connects to `servers` as a client named `name`. `Err` says why,
    /// with what to check where the client's own words would not.
    pub async fn connect(
        &self,
        name: impl ToString,
        servers: Vec<async_nats::ServerAddr>,
    ) -> Result<async_nats::Client, String> {
        self.options(name).connect(servers).await.map_err(|e| {
            let why = e.to_string();
            // A TLS handshake answered by a plain-text server: rustls only
            // says the bytes were not TLS.
            if self.tls.is_some() && why.contains("InvalidContentType") {
                format!("{why}: the server does not speak TLS, which [broker.tls] requires")
            } else {
                why
            }
        })
    }

    /// The client options of a connection named `name` with this access.
    fn options(&self, name: impl ToString) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5));
        options = match &self.auth {
            NatsAuth::Anonymous => options,
            NatsAuth::Token(token) => options.token(token.clone()),
            NatsAuth::User { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
        };
        // The host's TLS settings even without `[broker.tls]`: a `tls://`
        // URL or a server that asks for TLS is checked as a connector's
        // would be, against the system's roots.
        let tls = self.tls.clone().unwrap_or_default();
        options
            .require_tls(self.tls.is_some())
            .tls_client_config(tls.rustls_config())
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
