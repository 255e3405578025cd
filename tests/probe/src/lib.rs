//! Support for the sandbox fixtures under `tests/fixtures/`.
//!
//! A probe is a bounded source that tries one thing when it opens (read a
//! file, connect to a port, look up a name, read a variable) and then emits
//! exactly one record saying what happened, as JSON:
//!
//! ```json
//! {"fixture":"read-etc-passwd","outcome":"denied","kind":"NotFound","error":"…"}
//! {"fixture":"connect-granted-port","outcome":"allowed","detail":"sent 5 bytes"}
//! ```
//!
//! The tests route that record to a file sink and read it, so each outcome
//! travels the same way a real record does.

use std::fmt::Display;

use sluice_sdk::{BatchWriter, Error, Poll};

/// What a probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    record: Option<String>,
}

impl Probe {
    /// A probe named `fixture` that found `result`.
    pub fn new<T: Display>(fixture: &str, result: std::io::Result<T>) -> Self {
        let record = match result {
            Ok(detail) => serde_json::json!({
                "fixture": fixture,
                "outcome": "allowed",
                "detail": detail.to_string(),
            }),
            Err(e) => {
                sluice_sdk::info!("{fixture}: denied: {e}");
                serde_json::json!({
                    "fixture": fixture,
                    "outcome": "denied",
                    "kind": format!("{:?}", e.kind()),
                    "error": e.to_string(),
                })
            }
        };
        Probe {
            record: Some(record.to_string()),
        }
    }

    /// Emits the outcome once, then ends.
    pub fn poll(&mut self, out: &mut BatchWriter) -> Result<Poll, Error> {
        if let Some(record) = self.record.take() {
            out.push_value(record.as_bytes());
        }
        Ok(Poll::default().done_if(true))
    }
}
