//! The daemon, `sluice serve`: connectors that are created, changed and
//! removed while it runs, and kept across its restarts.
//!
//! - [`daemon`]: the connectors, their definitions on disk and their
//!   lifecycle (create, update, pause, stop, restart, swap, delete,
//!   offsets). Every operation the API offers is a method here.
//! - [`api`]: the HTTP admin API (axum, JSON) over the daemon, its
//!   OpenAPI document, `/metrics`, `/healthz` and `/readyz`.
//! - [`metrics`]: the Prometheus exposition.
//! - [`access`]: where the daemon says it listens, and its bearer token.

pub mod access;
pub mod api;
pub mod daemon;
pub mod metrics;

/// An error the API returns: a status code and one clear sentence.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request is wrong: a bad manifest or config, a bad value.
    #[error("{0}")]
    Invalid(String),
    /// No such connector or plugin.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed in the connector's current state (e.g. an offsets reset
    /// while it runs), or the name is taken.
    #[error("{0}")]
    Conflict(String),
    /// A module swap did not happen: the new module failed.
    #[error("{0}")]
    SwapFailed(String),
    /// Something failed in the host.
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::Invalid(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::Conflict(_) => 409,
            AdminError::SwapFailed(_) => 422,
            AdminError::Internal(_) => 500,
        }
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(e: anyhow::Error) -> Self {
        AdminError::Internal(format!("{e:#}"))
    }
}
