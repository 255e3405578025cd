//! Queryable state (Flink's): what a connector's plugin keeps in its
//! durable state (`sluice_sdk::state`), read on demand through the admin
//! API, so an aggregating transform's counts can be asked for while it
//! runs.
//!
//! A running connector is read from the store its instances write (what
//! they stored a moment ago); a stopped one, or one run by another host
//! of a cluster, from the broker, where every put is durable, without
//! changing anything there. A value is
//! shown as text when it is UTF-8 and as hex otherwise, and the
//! connector's secret values are masked in it as in its logs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Daemon, internal};
use crate::admin::AdminError;
use crate::broker::{Broker, StateStore, keys_in};
use crate::secrets::Redactor;

/// At most this many keys in one listing unless the request asks.
pub const DEFAULT_KEY_LIMIT: usize = 1000;

/// A connector's state keys.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateKeys {
    /// The connector.
    pub name: String,
    /// The keys (those starting with the prefix asked for), in order, up
    /// to the limit.
    pub keys: Vec<StateKey>,
    /// Keys matching, the ones not listed included.
    pub count: usize,
    /// Bytes of keys and values matching.
    pub bytes: u64,
    /// Whether some keys were left out (past the limit).
    pub truncated: bool,
}

/// One key of a connector's state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateKey {
    /// The key.
    pub key: String,
    /// Bytes in its value.
    pub bytes: usize,
}

/// One value of a connector's state.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateValue {
    /// The connector.
    pub name: String,
    /// The key.
    pub key: String,
    /// Bytes in the value.
    pub bytes: usize,
    /// The value, when it is UTF-8 (secrets masked).
    pub text: Option<String>,
    /// The value in hex, when it is not UTF-8 (secrets masked).
    pub hex: Option<String>,
}

/// `?prefix=…&limit=…` of a state listing.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct StateQuery {
    /// Only keys that start with this.
    pub prefix: Option<String>,
    /// At most this many keys (default 1000).
    pub limit: Option<usize>,
}

/// Where a state is read from.
enum Held {
    /// The store the running instances write.
    Live(Arc<dyn StateStore>),
    /// What the broker holds, read once.
    Read(BTreeMap<String, Vec<u8>>),
}

impl Held {
    fn keys(&self, prefix: &str) -> Vec<(String, usize)> {
        match self {
            Held::Live(store) => store.keys(prefix),
            Held::Read(values) => keys_in(values, prefix),
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Held::Live(store) => store.get(key),
            Held::Read(values) => values.get(key).cloned(),
        }
    }
}

impl Daemon {
    /// Connector `name`'s state, and its secret values (to mask).
    async fn state_of(&self, name: &str) -> Result<(Held, Vec<String>), AdminError> {
        let entry = self.entry(name)?;
        let m = self.lock(&entry).await?;
        let secrets = m.checked.secrets.values().map(str::to_owned).collect();
        let held = match &m.running {
            // In a cluster another host may run some of its instances:
            // only the broker has every put.
            Some(running) if self.cluster.is_none() => Held::Live(running.state().clone()),
            _ => {
                let (broker, name, quota) =
                    (self.broker.clone(), name.to_owned(), m.checked.grants.state);
                let read =
                    tokio::task::spawn_blocking(move || broker.read_connector_state(&name, quota))
                        .await
                        .map_err(internal)?;
                Held::Read(read.map_err(internal)?)
            }
        };
        Ok((held, secrets))
    }

    /// The keys of connector `name`'s state.
    pub async fn state_keys(&self, name: &str, query: StateQuery) -> Result<StateKeys, AdminError> {
        let (store, secrets) = self.state_of(name).await?;
        let redactor = Redactor::new(secrets.iter().map(String::as_str));
        let all = store.keys(query.prefix.as_deref().unwrap_or_default());
        let limit = query.limit.unwrap_or(DEFAULT_KEY_LIMIT);
        Ok(StateKeys {
            name: name.to_owned(),
            count: all.len(),
            bytes: all.iter().map(|(k, n)| (k.len() + n) as u64).sum(),
            truncated: all.len() > limit,
            keys: all
                .into_iter()
                .take(limit)
                .map(|(key, bytes)| StateKey {
                    key: redactor.redact(&key).into_owned(),
                    bytes,
                })
                .collect(),
        })
    }

    /// The value of `key` in connector `name`'s state.
    pub async fn state_value(&self, name: &str, key: &str) -> Result<StateValue, AdminError> {
        let (store, secrets) = self.state_of(name).await?;
        let value = store.get(key).ok_or_else(|| {
            AdminError::NotFound(format!(
                "connector {name:?} holds no state under key {key:?}; \
                 `sluice connectors state {name}` lists its keys"
            ))
        })?;
        let bytes = value.len();
        let (text, hex) = match String::from_utf8(value) {
            // The redactor of logs: escaped and multi-line forms too.
            Ok(text) => {
                let redactor = Redactor::new(secrets.iter().map(String::as_str));
                (Some(redactor.redact(&text).into_owned()), None)
            }
            Err(e) => {
                let masked = mask(e.into_bytes(), &secrets);
                (
                    None,
                    Some(masked.iter().map(|b| format!("{b:02x}")).collect()),
                )
            }
        };
        Ok(StateValue {
            name: name.to_owned(),
            key: key.to_owned(),
            bytes,
            text,
            hex,
        })
    }
}

/// `value` (not UTF-8) with every occurrence of a secret replaced by
/// [`crate::secrets::MASK`], the longest secrets first.
fn mask(mut value: Vec<u8>, secrets: &[String]) -> Vec<u8> {
    let mut secrets: Vec<&[u8]> = secrets.iter().map(String::as_bytes).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in secrets {
        if secret.is_empty() {
            continue;
        }
        let mut out = Vec::with_capacity(value.len());
        let mut at = 0;
        while at < value.len() {
            if value[at..].starts_with(secret) {
                out.extend_from_slice(crate::secrets::MASK.as_bytes());
                at += secret.len();
            } else {
                out.push(value[at]);
                at += 1;
            }
        }
        value = out;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn a_secret_in_a_value_is_masked_wherever_it_stands() {
        let secrets = ["pw".to_owned(), String::new(), "pwd".to_owned()];
        assert_eq!(
            mask(b"a pw, pwpw pwd\xff".to_vec(), &secrets),
            b"a ***, ****** ***\xff"
        );
        assert_eq!(mask(b"nothing".to_vec(), &secrets), b"nothing");
    }
}
