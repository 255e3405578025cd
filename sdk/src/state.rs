//! Connector-scoped durable state.
//!
//! A small key/value store the host keeps for each connector, surviving
//! restarts. Use it for what the source position does not cover (a schema
//! version seen, a cursor of a secondary stream). Values are bytes.
//!
//! State is bounded by the connector's `state` grant (16 MiB of keys and
//! values and 10,000 keys unless the manifest says otherwise): a [`put`]
//! past it returns [`StateError::QuotaExceeded`] and changes nothing. Each
//! put is durable when it returns and costs about the size of its value
//! (the host appends it to a file and syncs), so state is for small,
//! infrequent facts, not for records.

use std::fmt;

/// Why the host did not store a value. Either way, nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateError {
    /// The state would grow past the connector's `state` grant.
    QuotaExceeded(String),
    /// The host could not store it now (a full disk, an I/O error); the
    /// same put may succeed later.
    Unavailable(String),
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::QuotaExceeded(m) => write!(f, "state quota exceeded: {m}"),
            StateError::Unavailable(m) => write!(f, "state unavailable: {m}"),
        }
    }
}

impl std::error::Error for StateError {}

/// A quota exceeded is fatal (the instance cannot do what it meant to);
/// an unavailable store is retriable.
impl From<StateError> for crate::Error {
    fn from(e: StateError) -> Self {
        match e {
            StateError::QuotaExceeded(_) => crate::Error::fatal(e),
            StateError::Unavailable(_) => crate::Error::retriable(e),
        }
    }
}

/// Reads `key`, or `None` if it was never stored.
pub fn get(key: &str) -> Option<Vec<u8>> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__private::host::state_get(key)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = key;
        None
    }
}

/// Stores `value` under `key`, durably.
pub fn put(key: &str, value: &[u8]) -> Result<(), StateError> {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::__private::host::StateError as Wit;
        crate::__private::host::state_put(key, value).map_err(|e| match e {
            Wit::QuotaExceeded(m) => StateError::QuotaExceeded(m),
            Wit::Unavailable(m) => StateError::Unavailable(m),
        })
    }
    // Outside a component (a plugin's native unit tests) there is no host.
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (key, value);
        Ok(())
    }
}
