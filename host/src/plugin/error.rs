//! What can go wrong with a plugin, in words an operator can act on: every
//! variant names the plugin, and the call or contract rule at fault.

use std::path::PathBuf;

use super::{CONTRACT_VERSION, PluginKind};
use crate::grants::{GrantError, Refusal};

/// Why a plugin cannot be loaded, or what it did wrong.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Neither a built-in name nor a file.
    #[error("unknown plugin {name:?}: not a built-in ({builtins}) and not a path to a .wasm file")]
    Unknown {
        /// What the manifest said.
        name: String,
        /// The built-in names.
        builtins: String,
    },
    /// The file cannot be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid component.
    #[error("plugin {plugin} is not a valid WebAssembly component: {reason}")]
    Compile {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Built against another version of the contract.
    #[error(
        "plugin {plugin} was built against sluice:connector@{found} ({interface}); this host speaks \
         sluice:connector@{CONTRACT_VERSION}: rebuild the plugin with a sluice-sdk for {CONTRACT_VERSION}"
    )]
    ContractVersion {
        /// The plugin.
        plugin: String,
        /// The version it was built against.
        found: String,
        /// The interface it exports.
        interface: String,
    },
    /// Exports none of the plugin interfaces.
    #[error(
        "plugin {plugin} exports none of sluice:connector/source-api, sink-api or transform-api \
         @{CONTRACT_VERSION}; it exports: {exports}"
    )]
    NoInterface {
        /// The plugin.
        plugin: String,
        /// What it does export.
        exports: String,
    },
    /// Exports the wrong interface for its connector.
    #[error(
        "plugin {plugin} does not export {expected}, which a {needed} connector needs; \
         it exports {found} (it is a {actual} plugin)"
    )]
    WrongKind {
        /// The plugin.
        plugin: String,
        /// The interface the connector needs.
        expected: String,
        /// The connector's kind.
        needed: PluginKind,
        /// What the plugin exports.
        found: String,
        /// The plugin's kind.
        actual: PluginKind,
    },
    /// Imports something the host does not provide, or its exports do not
    /// match the contract.
    #[error("plugin {plugin} does not fit this host: {reason}")]
    Link {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// Trapped, ran out of time or memory.
    #[error("plugin {plugin} stopped in `{call}`: {reason}")]
    Trap {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// What happened, in words.
        reason: String,
    },
    /// Returned something the contract forbids.
    #[error("plugin {plugin} broke the contract in `{call}`: {what}")]
    Contract {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// What it broke.
        what: String,
    },
    /// The plugin refused its config.
    #[error("plugin {plugin} refused its config: {message}")]
    InvalidConfig {
        /// The plugin.
        plugin: String,
        /// Its words.
        message: String,
    },
    /// A passing fault; worth retrying.
    #[error("plugin {plugin} failed in `{call}` (retriable): {message}")]
    Retriable {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// Its words.
        message: String,
    },
    /// The plugin cannot go on.
    #[error("plugin {plugin} failed in `{call}` (fatal): {message}")]
    Fatal {
        /// The plugin.
        plugin: String,
        /// The call.
        call: &'static str,
        /// Its words.
        message: String,
    },
    /// A grant cannot be given.
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The broker failed the host's part of a call (reading where a
    /// swapped-in source resumes).
    #[error("the broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    /// `open` failed after the sandbox refused the instance something no
    /// grant allows: a fresh instance would be refused the same way.
    #[error("plugin {plugin} could not open: the host {refusal}. It failed with: {cause}")]
    Denied {
        /// The plugin.
        plugin: String,
        /// What was refused, and the grant that would allow it.
        refusal: Refusal,
        /// How `open` failed.
        cause: Box<PluginError>,
    },
}

impl PluginError {
    /// True for an error the plugin returned itself (retriable or fatal),
    /// as one whose wait the host interrupted does; false for a trap, a
    /// broken contract or anything else the host found.
    pub fn is_returned(&self) -> bool {
        matches!(
            self,
            PluginError::Retriable { .. } | PluginError::Fatal { .. }
        )
    }

    /// True for errors worth retrying with backoff.
    pub fn is_retriable(&self) -> bool {
        matches!(self, PluginError::Retriable { .. })
    }

    /// Why a fresh instance would fail the same way, for errors that come
    /// from the connector's config or grants rather than from the
    /// instance's life; `None` when a restart may help.
    pub fn permanent_because(&self) -> Option<&'static str> {
        match self {
            PluginError::InvalidConfig { .. } => Some("the plugin refused its config"),
            PluginError::Grant(_) => Some("a grant cannot be given"),
            PluginError::Denied { .. } => Some("it needs a grant it does not have"),
            _ => None,
        }
    }
}
