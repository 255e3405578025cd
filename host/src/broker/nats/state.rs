//! A connector's plugin state on NATS: its keys in the `SLUICE_STATE` KV
//! bucket, under the connector's prefix, held in memory too (the quota
//! bounds it), as the embedded log's state file is.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::TryStreamExt;
use tokio::runtime::Handle;

use super::super::{BrokerError, StateError, StateQuota, StateStore, keys_in};
use super::{names, nats_err, wait};

/// Every key of `store` that starts with `prefix`.
pub(super) async fn keys_with_prefix(
    store: &kv::Store,
    prefix: &str,
) -> Result<Vec<String>, async_nats::Error> {
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    Ok(keys.into_iter().filter(|k| k.starts_with(prefix)).collect())
}

/// One connector's durable key/value state.
pub struct NatsState {
    connector: String,
    store: kv::Store,
    handle: Handle,
    quota: StateQuota,
    values: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    values: BTreeMap<String, Vec<u8>>,
    /// Bytes of keys and values in `values`.
    live: u64,
}

impl NatsState {
    /// Reads `connector`'s state from the bucket. Blocks on the network.
    pub fn open(
        store: kv::Store,
        handle: Handle,
        connector: &str,
        quota: StateQuota,
    ) -> Result<NatsState, BrokerError> {
        let prefix = names::key_prefix(connector);
        let what = format!("reading the state of connector {connector:?}");
        let read = {
            let store = store.clone();
            wait(&handle, async move {
                let mut read = Vec::new();
                for key in keys_with_prefix(&store, &prefix)
                    .await
                    .map_err(nats_err(what.clone()))?
                {
                    if let Some(value) = store.get(&key).await.map_err(nats_err(what.clone()))? {
                        read.push((key, value));
                    }
                }
                Ok::<_, BrokerError>(read)
            })?
        };
        let mut inner = Inner::default();
        let prefix = names::key_prefix(connector);
        for (key, value) in read {
            let Some(key) = key.strip_prefix(&prefix).and_then(names::untoken) else {
                continue;
            };
            inner.live += (key.len() + value.len()) as u64;
            inner.values.insert(key, value.to_vec());
        }
        Ok(NatsState {
            connector: connector.to_owned(),
            store,
            handle,
            quota,
            values: Mutex::new(inner),
        })
    }
}

impl StateStore for NatsState {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.values
            .lock()
            .expect("state lock")
            .values
            .get(key)
            .cloned()
    }

    fn keys(&self, prefix: &str) -> Vec<(String, usize)> {
        keys_in(&self.values.lock().expect("state lock").values, prefix)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let mut inner = self.values.lock().expect("state lock");
        let bytes = self
            .quota
            .admit(&self.connector, &inner.values, inner.live, key, value)?;
        let store = self.store.clone();
        let (nats_key, payload) = (
            names::state_key(&self.connector, key),
            Bytes::copy_from_slice(value),
        );
        let what = format!("storing the state of connector {:?}", self.connector);
        wait(&self.handle, async move {
            store.put(nats_key, payload).await.map_err(nats_err(what))
        })
        .map_err(|source| StateError::Unavailable {
            connector: self.connector.clone(),
            source,
        })?;
        inner.values.insert(key.to_owned(), value.to_vec());
        inner.live = bytes;
        Ok(())
    }
}
