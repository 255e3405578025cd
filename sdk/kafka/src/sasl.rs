//! SASL for Kafka (KIP-43, KIP-84): `PLAIN`, and `SCRAM-SHA-256` and
//! `SCRAM-SHA-512` (RFC 5802, RFC 7677), exchanged in `SaslHandshake` and
//! `SaslAuthenticate` requests right after a connection's `ApiVersions`.
//!
//! The password never leaves this module except as PLAIN's message or as
//! SCRAM's proof, and no error or `Debug` output shows it.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256, Sha512};
use sluice_sdk::hash::hmac;

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// The user name and password, as they are (use it over TLS only).
    Plain,
    /// Salted challenge and response with SHA-256.
    ScramSha256,
    /// Salted challenge and response with SHA-512.
    ScramSha512,
}

impl Mechanism {
    /// Its name, as Kafka's `sasl.mechanism` and the handshake write it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a mechanism's name.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ]
        .into_iter()
        .find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

/// A login: mechanism, user name and password.
#[derive(Clone)]
pub struct Credentials {
    /// The mechanism.
    pub mechanism: Mechanism,
    /// The user name.
    pub username: String,
    /// The password (never shown).
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// One side of a SASL exchange, as the client plays it.
#[derive(Debug)]
pub enum Exchange {
    /// PLAIN: one message, done.
    Plain,
    /// SCRAM, waiting for the server's first message.
    ScramFirst {
        /// The client's first message without its GS2 header.
        client_first_bare: String,
        /// The client's nonce.
        nonce: String,
    },
    /// SCRAM, waiting for the server's final message, which must carry
    /// this signature.
    ScramFinal {
        /// The server signature the server must send.
        server_signature: Vec<u8>,
    },
    /// Done.
    Done,
}

/// What went wrong in an exchange, in words safe to show.
pub type SaslError = String;

impl Exchange {
    /// The first message to send, and the state to go on from.
    pub fn start(credentials: &Credentials) -> (Vec<u8>, Exchange) {
        match credentials.mechanism {
            Mechanism::Plain => {
                let mut message = vec![0];
                message.extend_from_slice(credentials.username.as_bytes());
                message.push(0);
                message.extend_from_slice(credentials.password.as_bytes());
                (message, Exchange::Plain)
            }
            Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                Self::scram_start(&credentials.username, nonce())
            }
        }
    }

    fn scram_start(username: &str, nonce: String) -> (Vec<u8>, Exchange) {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        let client_first_bare = format!("n={user},r={nonce}");
        let message = format!("n,,{client_first_bare}").into_bytes();
        (
            message,
            Exchange::ScramFirst {
                client_first_bare,
                nonce,
            },
        )
    }

    /// Takes the server's message: the next message to send (if any),
    /// and the state to go on from.
    pub fn step(
        self,
        credentials: &Credentials,
        server: &[u8],
    ) -> Result<(Option<Vec<u8>>, Exchange), SaslError> {
        match self {
            Exchange::Plain | Exchange::Done => Ok((None, Exchange::Done)),
            Exchange::ScramFirst {
                client_first_bare,
                nonce,
            } => {
                let server_first = std::str::from_utf8(server)
                    .map_err(|_| "the server's first SCRAM message is not UTF-8".to_owned())?;
                let field = |name: char| {
                    server_first
                        .split(',')
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                };
                if let Some(error) = field('e') {
                    return Err(format!("the server refused SCRAM: {error}"));
                }
                let combined = field('r').ok_or("the server's first SCRAM message has no nonce")?;
                if !combined.starts_with(&nonce) {
                    return Err("the server's SCRAM nonce does not extend ours".into());
                }
                let salt = field('s')
                    .and_then(|s| B64.decode(s).ok())
                    .ok_or("the server's first SCRAM message has no salt")?;
                let iterations: u32 = field('i')
                    .and_then(|i| i.parse().ok())
                    .filter(|&i| i > 0)
                    .ok_or("the server's first SCRAM message has no iteration count")?;
                let without_proof = format!("c=biws,r={combined}");
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let (proof, server_signature) = match credentials.mechanism {
                    Mechanism::ScramSha512 => scram_proof::<Sha512>(
                        credentials.password.as_bytes(),
                        &salt,
                        iterations,
                        auth_message.as_bytes(),
                    ),
                    _ => scram_proof::<Sha256>(
                        credentials.password.as_bytes(),
                        &salt,
                        iterations,
                        auth_message.as_bytes(),
                    ),
                };
                let message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
                Ok((Some(message), Exchange::ScramFinal { server_signature }))
            }
            Exchange::ScramFinal { server_signature } => {
                let server_final = std::str::from_utf8(server)
                    .map_err(|_| "the server's final SCRAM message is not UTF-8".to_owned())?;
                if let Some(error) = server_final.strip_prefix("e=") {
                    return Err(format!("the server refused the login: {error}"));
                }
                let verifier = server_final
                    .split(',')
                    .find_map(|f| f.strip_prefix("v="))
                    .and_then(|v| B64.decode(v).ok())
                    .ok_or("the server's final SCRAM message has no verifier")?;
                if verifier != server_signature {
                    return Err(
                        "the server's SCRAM signature is wrong: it does not know the password"
                            .into(),
                    );
                }
                Ok((None, Exchange::Done))
            }
        }
    }

    /// Whether the exchange is over.
    pub fn is_done(&self) -> bool {
        matches!(self, Exchange::Done | Exchange::Plain)
    }
}

/// A fresh nonce: 18 random bytes (std's hasher keys come from the
/// system's randomness, `wasi:random` in a plugin), in base64.
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = Vec::with_capacity(24);
    for i in 0..3u8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(i);
        bytes.extend_from_slice(&h.finish().to_le_bytes());
    }
    B64.encode(&bytes[..18])
}

/// SCRAM's client proof and the server signature to expect.
fn scram_proof<D: Digest + sha2::digest::core_api::BlockSizeUser>(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    auth_message: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    // Hi(): PBKDF2 with HMAC, one block.
    let mut u = hmac::<D>(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut salted = u.clone();
    for _ in 1..iterations {
        u = hmac::<D>(password, &u);
        for (s, x) in salted.iter_mut().zip(&u) {
            *s ^= x;
        }
    }
    let client_key = hmac::<D>(&salted, b"Client Key");
    let stored_key = D::digest(&client_key);
    let client_signature = hmac::<D>(&stored_key, auth_message);
    let proof = client_key
        .iter()
        .zip(&client_signature)
        .map(|(a, b)| a ^ b)
        .collect();
    let server_key = hmac::<D>(&salted, b"Server Key");
    (proof, hmac::<D>(&server_key, auth_message))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn scram_sha_256_matches_rfc_7677() {
        let credentials = Credentials {
            mechanism: Mechanism::ScramSha256,
            username: "user".into(),
            password: "pencil".into(),
        };
        let (first, state) = Exchange::scram_start("user", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (last, state) = state.step(&credentials, server_first).unwrap();
        assert_eq!(
            String::from_utf8(last.unwrap()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        let (none, state) = state
            .step(
                &credentials,
                b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            )
            .unwrap();
        assert!(none.is_none() && state.is_done());
    }

    #[test]
    fn a_server_that_does_not_know_the_password_is_refused() {
        let credentials = Credentials {
            mechanism: Mechanism::ScramSha512,
            username: "a,b=c".into(),
            password: "secret-pw".into(),
        };
        let (first, state) = Exchange::scram_start(&credentials.username, "abc".into());
        assert_eq!(first, b"n,,n=a=2Cb=3Dc,r=abc");
        let (_, state) = state
            .step(&credentials, b"r=abcdef,s=c2FsdA==,i=10")
            .unwrap();
        let err = state.step(&credentials, b"v=AAAA").unwrap_err();
        assert!(err.contains("signature is wrong"), "{err}");
        assert!(!format!("{credentials:?}").contains("secret-pw"));
    }

    #[test]
    fn plain_sends_the_name_and_password_once() {
        let credentials = Credentials {
            mechanism: Mechanism::Plain,
            username: "u".into(),
            password: "p".into(),
        };
        let (message, state) = Exchange::start(&credentials);
        assert_eq!(message, b"\0u\0p");
        assert!(state.is_done());
    }
}

/// A connector's SASL settings, as its config writes them:
/// `sasl = { mechanism = "SCRAM-SHA-256", username = "sluice", password = "${secret:kafka}" }`.
#[sluice_sdk::config]
#[derive(Clone)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    /// `"PLAIN"`, `"SCRAM-SHA-256"` or `"SCRAM-SHA-512"`.
    pub mechanism: String,
    /// The user name.
    pub username: String,
    /// The password; write `"${secret:NAME}"`. Never logged or shown.
    pub password: String,
}

impl fmt::Debug for SaslConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslConfig")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl SaslConfig {
    /// The login it describes; refuses an unknown mechanism, naming the
    /// ones there are.
    pub fn credentials(&self) -> Result<Credentials, sluice_sdk::Error> {
        let mechanism = Mechanism::from_name(&self.mechanism).ok_or_else(|| {
            sluice_sdk::Error::invalid_config(format!(
                "sasl.mechanism = {:?}: use \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\"",
                self.mechanism
            ))
        })?;
        Ok(Credentials {
            mechanism,
            username: self.username.clone(),
            password: self.password.clone(),
        })
    }
}
