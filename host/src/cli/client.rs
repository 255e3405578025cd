//! The admin API's client, for the CLI's `connectors` and `plugins` verbs.

use std::path::Path;

use reqwest::Method;

use sluice::admin::access;

/// Where the daemon is and how to get in.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The daemon answered with an error.
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its one sentence.
        message: String,
    },
    /// The daemon could not be reached.
    #[error("cannot reach the daemon at {url}: {why}")]
    Unreachable {
        /// Where.
        url: String,
        /// Why.
        why: String,
    },
}

impl AdminClient {
    /// A client for the daemon at `url` (else the one `data_dir`'s
    /// `daemon.json` names), with `token` (else the one in `data_dir`).
    pub fn locate(
        url: Option<String>,
        token: Option<String>,
        data_dir: &Path,
    ) -> anyhow::Result<AdminClient> {
        let base = match url {
            Some(u) => u,
            None => access::read_daemon_info(data_dir)?.url,
        };
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_owned(),
            token: token.or_else(|| access::read_token(data_dir)),
            http: reqwest::Client::new(),
        })
    }

    /// Calls `path` with `method` and an optional JSON body; the JSON
    /// answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, CallError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(t) = &self.token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        let unreachable = |e: reqwest::Error| CallError::Unreachable {
            url: self.base.clone(),
            why: e.to_string(),
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .map_or_else(|| value.to_string(), str::to_owned);
            Err(CallError::Refused {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// `GET path`, as text (for `/metrics`).
    pub async fn text(&self, path: &str) -> Result<String, CallError> {
        match self.call(Method::GET, path, None).await? {
            serde_json::Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }
}
