//! Connector-scoped durable state.
//!
//! A small key/value store the host keeps for each connector, surviving
//! restarts. Use it for what the source position does not cover (a schema
//! version seen, a cursor of a secondary stream). Values are bytes.

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

/// Stores `value` under `key`.
pub fn put(key: &str, value: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    crate::__private::host::state_put(key, value);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (key, value);
}
