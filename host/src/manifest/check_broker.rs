//! Checking `[broker]`'s NATS settings: the servers' URLs, the replicas,
//! the credentials and `[broker.tls]`, each only with `kind = "nats"`.

use toml::Spanned;

use super::resolved::{ClientIdentity, TlsPolicy};
use super::{BrokerKind, DEFAULT_NATS_URL, Manifest, ManifestError};

impl Manifest {
    /// Checks that the NATS settings of `[broker]` go with its kind, and
    /// returns the NATS servers' addresses and the TLS `[broker.tls]` asks
    /// for (none for other kinds).
    pub(super) fn check_broker_kind(
        &self,
    ) -> Result<(Vec<async_nats::ServerAddr>, Option<TlsPolicy>), ManifestError> {
        let b = &self.broker;
        if b.kind != BrokerKind::Nats {
            let set = [
                ("url", b.url.as_ref().map(Spanned::span)),
                ("token", b.token.as_ref().map(Spanned::span)),
                ("user", b.user.as_ref().map(Spanned::span)),
                ("password", b.password.as_ref().map(Spanned::span)),
                ("tls", b.tls.as_ref().map(Spanned::span)),
                ("replicas", b.replicas.as_ref().map(Spanned::span)),
            ];
            if let Some((field, Some(span))) = set.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self
                    .error(span, format!("{field} is a setting of the nats broker"))
                    .field(format!("broker.{field}"))
                    .help("add `kind = \"nats\"` to [broker], or remove it"));
            }
            return Ok((Vec::new(), None));
        }
        let urls = b.url.as_ref().map_or(DEFAULT_NATS_URL, |u| u.get_ref());
        let mut servers = Vec::new();
        for one in urls.split(',') {
            match one.trim().parse::<async_nats::ServerAddr>() {
                Ok(addr) if !one.trim().is_empty() => servers.push(addr),
                failed => {
                    let why = failed.err().map_or("empty".to_owned(), |e| e.to_string());
                    let span = b.url.as_ref().map(Spanned::span).unwrap_or_default();
                    return Err(self
                        .error(span, format!("{one:?} is not a NATS server URL ({why})"))
                        .field("broker.url")
                        .help(
                            "write `url = \"nats://127.0.0.1:4222\"` (several: comma-separated)",
                        ));
                }
            }
        }
        if let Some(r) = &b.replicas
            && !(1..=5).contains(r.get_ref())
        {
            return Err(self
                .error(r.span(), format!("replicas is {}", r.get_ref()))
                .field("broker.replicas")
                .help("JetStream keeps 1 to 5 copies of a stream: `replicas = 3`"));
        }
        let tls = b.tls.as_ref().map(|t| t.get_ref());
        let sources = [
            ("token", b.token.as_ref(), "NATS_TOKEN"),
            ("password", b.password.as_ref(), "NATS_PASSWORD"),
            (
                "tls.client_cert",
                tls.and_then(|t| t.client_cert.as_ref()),
                "NATS_CLIENT_CERT",
            ),
            (
                "tls.client_key",
                tls.and_then(|t| t.client_key.as_ref()),
                "NATS_CLIENT_KEY",
            ),
        ];
        for (field, source, var) in sources {
            if let Some(s) = source
                && s.get_ref().env.is_none() == s.get_ref().file.is_none()
            {
                return Err(self
                    .error(
                        s.span(),
                        format!("{field} needs exactly one of `env` and `file`"),
                    )
                    .field(format!("broker.{field}"))
                    .help(format!(
                        "say where the host reads it: `{field} = {{ env = \"{var}\" }}`"
                    )));
            }
        }
        match (&b.user, &b.password) {
            (Some(_), Some(_)) | (None, None) => {}
            (Some(user), None) => {
                return Err(self
                    .error(user.span(), "a user needs a password")
                    .field("broker.password")
                    .help("add `password = { env = \"NATS_PASSWORD\" }`"));
            }
            (None, Some(password)) => {
                return Err(self
                    .error(password.span(), "a password needs its user")
                    .field("broker.user")
                    .help("add `user = \"NAME\"`"));
            }
        }
        if let (Some(token), Some(_)) = (&b.token, &b.user) {
            return Err(self
                .error(token.span(), "both a token and a user are given")
                .field("broker.token")
                .help("a NATS server takes one of them: keep `token`, or `user` and `password`"));
        }
        let Some(t) = &b.tls else {
            return Ok((servers, None));
        };
        let (span, t) = (t.span(), t.get_ref());
        let client_identity =
            match (&t.client_cert, &t.client_key) {
                (None, None) => None,
                (Some(_), Some(_)) => Some(ClientIdentity {
                    cert_secret: "broker.tls.client_cert".into(),
                    key_secret: "broker.tls.client_key".into(),
                }),
                (Some(_), None) | (None, Some(_)) => {
                    let missing = if t.client_cert.is_none() {
                        "client_cert"
                    } else {
                        "client_key"
                    };
                    return Err(self
                    .error(span, "a client certificate needs both client_cert and client_key")
                    .field(format!("broker.tls.{missing}"))
                    .help(format!(
                        "add `{missing} = {{ file = \"{missing}.pem\" }}`, where the host reads it"
                    )));
                }
            };
        let ca_file = t.ca_file.as_ref().map(|f| self.resolve(f.get_ref()));
        let policy = TlsPolicy {
            system_roots: t.system_roots.unwrap_or(ca_file.is_none()),
            ca_file,
            client_identity,
            server_name: None,
        };
        Ok((servers, Some(policy)))
    }
}
