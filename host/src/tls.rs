//! TLS through the host (`wasi:tls`).
//!
//! A plugin opens a TCP connection its `net` grant allows, hands the
//! connection's streams to the host with the name of the server it expects,
//! and gets back a TLS client stream. The handshake and the check of the
//! server's certificate run here, with rustls; the plugin carries no TLS
//! library and no certificates. What to trust, which client certificate to
//! present and a server name to insist on come from
//! `[connector.grants.tls]`. The client's private key is a secret the host
//! reads and keeps: it is never in the config document, never in the
//! plugin's memory, and never in a message.
//!
//! A [`TlsClient`] is built once per connector, when it starts (reading the
//! CA file and the identity's secrets), and shared by its instances.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use wasmtime_wasi_tls::{TlsProvider, TlsStream, TlsTransport};

use crate::manifest::TlsPolicy;
use crate::secrets::Secrets;

/// A TLS grant that cannot be given. Names files and secrets, never a
/// secret's value.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read.
    #[error("cannot read the TLS CA file {}: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA file holds no certificate rustls accepts.
    #[error("the TLS CA file {} holds no usable certificate{reason}", path.display())]
    NoCa {
        /// The file.
        path: PathBuf,
        /// What rustls said of the last one it refused, if any.
        reason: String,
    },
    /// A secret of the client identity does not hold what it should.
    #[error("secret {secret:?} (tls.{field}) does not hold a PEM {what}")]
    Identity {
        /// The secret's name.
        secret: String,
        /// `client_cert` or `client_key`.
        field: &'static str,
        /// What it should hold.
        what: &'static str,
    },
    /// The certificate and key do not make an identity rustls accepts.
    #[error("the TLS client certificate and key cannot be used together: {0}")]
    Mismatch(String),
}

/// The system's roots, read once per process.
static SYSTEM_ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(errors = ?found.errors, "some system root certificates could not be read");
    }
    found.certs
});

/// How one connector's plugins get TLS streams: what the host trusts, the
/// client identity it presents, and a server name it insists on. Its
/// `Debug` shows none of the key.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// What it was built from (names and paths only).
    policy: TlsPolicy,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Default for TlsClient {
    /// No `[connector.grants.tls]`: the system's roots, no client
    /// certificate.
    fn default() -> Self {
        static DEFAULT: LazyLock<TlsClient> = LazyLock::new(|| {
            TlsClient::build_new(&TlsPolicy::default(), &Secrets::default())
                .expect("the default TLS policy reads no file and no secret")
        });
        DEFAULT.clone()
    }
}

impl TlsClient {
    /// Builds the client `policy` describes, reading its CA file and the
    /// client identity's secrets from `secrets`.
    pub fn build(policy: &TlsPolicy, secrets: &Secrets) -> Result<Self, TlsError> {
        if *policy == TlsPolicy::default() {
            return Ok(TlsClient::default());
        }
        Self::build_new(policy, secrets)
    }

    fn build_new(policy: &TlsPolicy, secrets: &Secrets) -> Result<Self, TlsError> {
        let TlsPolicy {
            ca_file,
            system_roots,
            client_identity,
            server_name: _,
        } = policy;
        let mut roots = RootCertStore::empty();
        if *system_roots {
            // A system certificate rustls cannot parse is skipped, as the
            // system's own tools skip it.
            let (_added, _skipped) = roots.add_parsable_certificates(SYSTEM_ROOTS.iter().cloned());
        }
        if let Some(path) = ca_file {
            let pem = std::fs::read(path).map_err(|e| TlsError::CaFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let mut reason = String::new();
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                match cert
                    .map_err(|e| e.to_string())
                    .and_then(|c| roots.add(c).map_err(|e| e.to_string()))
                {
                    Ok(()) => added += 1,
                    Err(e) => reason = format!(" ({e})"),
                }
            }
            if added == 0 {
                return Err(TlsError::NoCa {
                    path: path.clone(),
                    reason,
                });
            }
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Mismatch(e.to_string()))?
                .with_root_certificates(roots);
        let config = match client_identity {
            None => builder.with_no_client_auth(),
            Some(id) => {
                let cert_pem = secrets.get(&id.cert_secret).unwrap_or_default();
                let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
                    .filter(|chain| !chain.is_empty())
                    .ok_or_else(|| TlsError::Identity {
                        secret: id.cert_secret.clone(),
                        field: "client_cert",
                        what: "certificate",
                    })?;
                let key_pem = secrets.get(&id.key_secret).unwrap_or_default();
                let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
                    TlsError::Identity {
                        secret: id.key_secret.clone(),
                        field: "client_key",
                        what: "private key",
                    }
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Mismatch(e.to_string()))?
            }
        };
        Ok(TlsClient {
            config: Arc::new(config),
            policy: policy.clone(),
        })
    }

    /// Makes a TLS connection over `transport` to the server the plugin
    /// calls `asked` (or to the grant's `server_name`), checking its
    /// certificate. The error says which server and why.
    pub(crate) async fn handshake<T>(
        &self,
        asked: &str,
        transport: T,
    ) -> Result<tokio_rustls::client::TlsStream<T>, String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = match &self.policy.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(asked.to_owned()).map_err(|_| {
                format!("TLS: {asked:?} is not a DNS name or an IP address a certificate can be checked against")
            })?,
        };
        let shown = name.to_str().into_owned();
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(name, transport)
            .await
            .map_err(|e| handshake_failed(&shown, &e, self.policy.ca_file.is_some()))
    }

    /// The rustls settings, for a client that makes its own connections
    /// (the NATS broker's).
    pub(crate) fn rustls_config(&self) -> ClientConfig {
        ClientConfig::clone(&self.config)
    }

    /// What it trusts and presents, for `sluice validate`: paths and
    /// secret names, never a value.
    pub fn describe(&self) -> String {
        let TlsPolicy {
            ca_file,
            system_roots,
            client_identity,
            server_name,
        } = &self.policy;
        let mut trust = Vec::new();
        if let Some(f) = ca_file {
            trust.push(format!("CA file {}", f.display()));
        }
        if *system_roots {
            trust.push("the system's roots".to_owned());
        }
        let mut text = format!("trusts {}", trust.join(" and "));
        if let Some(id) = client_identity {
            text += &format!(
                "; client certificate from secrets {} and {}",
                id.cert_secret, id.key_secret
            );
        }
        if let Some(name) = server_name {
            text += &format!("; checks servers as {}", name.to_str());
        }
        text
    }
}

type Handshake =
    Pin<Box<dyn Future<Output = Result<Box<dyn TlsStream>, wasmtime_wasi_tls::Error>> + Send>>;

impl TlsProvider for TlsClient {
    fn connect(&self, asked: String, transport: Box<dyn TlsTransport>) -> Handshake {
        let client = self.clone();
        Box::pin(async move {
            client
                .handshake(&asked, transport)
                .await
                .map(|stream| Box::new(stream) as Box<dyn TlsStream>)
                .map_err(wasmtime_wasi_tls::Error::msg)
        })
    }
}

/// What a failed handshake with `server` means, and the grant that would
/// fix it when one would.
fn handshake_failed(server: &str, e: &std::io::Error, granted: bool) -> String {
    let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        return format!("TLS handshake with {server} failed: {e}");
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            let fix = if granted {
                "is the CA file in [connector.grants.tls] ca_file the one that signed it?"
            } else {
                "grant its CA with [connector.grants.tls] ca_file"
            };
            format!("its certificate is not signed by a CA this connector trusts ({fix})")
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "its certificate is not for the name {server} (set [connector.grants.tls] server_name to a name it is for)"
        ),
        rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "its certificate has expired".to_string(),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::HandshakeFailure
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA,
        ) => format!(
            "the server refused the handshake ({tls}); if it wants a client certificate, grant one with [connector.grants.tls] client_cert and client_key"
        ),
        other => other.to_string(),
    };
    format!("TLS handshake with {server} failed: {why}")
}
