//! Manifest grants turned into a plugin instance's WASI context.
//!
//! The context starts empty, as `WasiCtxBuilder` does: no directories, no
//! environment, no arguments, no standard streams, and a socket check that
//! refuses every address. Each grant in `[connector.grants]` opens exactly
//! one thing. Denying is the default because a connector plugin is code from
//! somewhere else, and an operator should be able to read what it can reach
//! from its manifest alone.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use crate::manifest::{
    ConnectorConfig, DEFAULT_CPU, DEFAULT_MEMORY_BYTES, FileMode, Manifest, parse_bytes,
    parse_duration,
};

/// What one connector may reach, resolved against the manifest's folder.
#[derive(Debug, Clone, Default)]
pub struct GrantSet {
    /// Directories: host path, guest path, mode.
    pub files: Vec<(PathBuf, String, FileMode)>,
    /// May write to the host's standard output.
    pub stdout: bool,
    /// Most linear memory per instance, in bytes.
    pub memory_bytes: u64,
    /// Longest a single plugin call may run.
    pub cpu: Duration,
}

/// A grant that cannot be given.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// A granted directory cannot be opened.
    #[error("cannot open granted directory {path}: {reason}")]
    Directory {
        /// The host path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl GrantSet {
    /// Nothing granted: compute, log and exchange batches only.
    pub fn none() -> Self {
        GrantSet {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpu: DEFAULT_CPU,
            ..GrantSet::default()
        }
    }

    /// The grants of `connector`, as written in `manifest`. The manifest was
    /// checked when loaded, so sizes and durations parse.
    pub fn from_manifest(manifest: &Manifest, connector: &ConnectorConfig) -> Self {
        let g = &connector.grants;
        GrantSet {
            files: g
                .files
                .iter()
                .map(|f| (manifest.resolve(&f.host), f.guest.clone(), f.mode))
                .collect(),
            stdout: g.stdout,
            memory_bytes: g
                .memory
                .as_ref()
                .and_then(|m| parse_bytes(m.get_ref()).ok())
                .unwrap_or(DEFAULT_MEMORY_BYTES),
            cpu: g
                .cpu
                .as_ref()
                .and_then(|c| parse_duration(c.get_ref()).ok())
                .unwrap_or(DEFAULT_CPU),
        }
    }

    /// Builds the WASI context for one instance.
    pub fn wasi_ctx(&self) -> Result<WasiCtx, GrantError> {
        let mut b = WasiCtxBuilder::new();
        for (host, guest, mode) in &self.files {
            // A read-write grant names a place to write; create it, as a
            // container runtime creates a volume's folder.
            if *mode == FileMode::ReadWrite && !host.exists() {
                std::fs::create_dir_all(host).map_err(|e| GrantError::Directory {
                    path: host.clone(),
                    reason: format!("cannot create it: {e}"),
                })?;
            }
            let perms = match mode {
                FileMode::ReadOnly => FsPerms::ReadOnly,
                FileMode::ReadWrite => FsPerms::ReadWrite,
            };
            b.preopened_dir(host, guest, perms)
                .map_err(|e| GrantError::Directory {
                    path: host.clone(),
                    reason: format!("{e:#}"),
                })?;
        }
        if self.stdout {
            b.inherit_stdout();
        }
        Ok(b.build())
    }
}
