//! The sandbox of one plugin instance: its own `Store`.
//!
//! The store holds the WASI context built from the connector's grants (deny
//! by default, see [`crate::grants`]), a memory limit that traps on growth
//! past the `memory` grant, and an epoch deadline that traps a call running
//! past the `cpu` grant; the [`EpochTicker`] advances the engine's epoch. The
//! store's data, [`HostState`], also implements the `host` imports: logging
//! into tracing and connector-scoped state.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{host, types};
use super::{EPOCH_TICK, PluginError};

/// The per-instance data a `Store` holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    connector: Arc<str>,
    instance: u32,
    state: Option<Arc<dyn StateStore>>,
}

impl fmt::Debug for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostState")
            .field("connector", &self.connector)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Connector-scoped durable state behind the `state-get`/`state-put`
/// imports.
pub trait StateStore: Send + Sync {
    /// Reads a key.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Writes a key durably.
    fn put(&self, key: &str, value: &[u8]);
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String, fields: Vec<(String, String)>) {
        let connector = &*self.connector;
        let instance = self.instance;
        let fields = if fields.is_empty() {
            String::new()
        } else {
            fields
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match level {
            host::Level::Trace => tracing::trace!(connector, instance, fields, "{message}"),
            host::Level::Debug => tracing::debug!(connector, instance, fields, "{message}"),
            host::Level::Info => tracing::info!(connector, instance, fields, "{message}"),
            host::Level::Warn => tracing::warn!(connector, instance, fields, "{message}"),
            host::Level::Error => tracing::error!(connector, instance, fields, "{message}"),
        }
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.state.as_ref().and_then(|s| s.get(&key))
    }

    fn state_put(&mut self, key: String, value: Vec<u8>) {
        if let Some(s) = &self.state {
            s.put(&key, &value);
        }
    }
}

/// Who an instance is, and what it may reach.
#[derive(Clone)]
pub struct InstanceSetup {
    /// The connector's name.
    pub connector: Arc<str>,
    /// This instance's index.
    pub index: u32,
    /// The connector's parallelism.
    pub count: u32,
    /// Its grants.
    pub grants: crate::grants::GrantSet,
    /// Its durable state, if any.
    pub state: Option<Arc<dyn StateStore>>,
}

impl fmt::Debug for InstanceSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSetup")
            .field("connector", &self.connector)
            .field("index", &self.index)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl InstanceSetup {
    /// An instance with nothing granted, for `spec` and `inspect`.
    pub fn isolated(connector: &str) -> Self {
        InstanceSetup {
            connector: connector.into(),
            index: 0,
            count: 1,
            grants: crate::grants::GrantSet::none(),
            state: None,
        }
    }

    pub(crate) fn context(&self) -> types::InstanceContext {
        types::InstanceContext {
            connector: self.connector.to_string(),
            index: self.index,
            count: self.count,
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Creates an instance's store: its WASI context from its grants, its
/// memory limit, and an epoch deadline that traps.
pub(crate) fn new(engine: &Engine, setup: &InstanceSetup) -> Result<Store<HostState>, PluginError> {
    let limits = StoreLimitsBuilder::new()
        .memory_size(usize::try_from(setup.grants.memory_bytes).unwrap_or(usize::MAX))
        .trap_on_grow_failure(true)
        .build();
    let state = HostState {
        wasi: setup.grants.wasi_ctx()?,
        table: ResourceTable::new(),
        limits,
        connector: setup.connector.clone(),
        instance: setup.index,
        state: setup.state.clone(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_trap();
    store.set_epoch_deadline(u64::MAX / 2);
    Ok(store)
}
