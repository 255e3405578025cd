//! The sandbox of one plugin instance: its own `Store`.
//!
//! The store holds the WASI context built from the connector's grants (deny
//! by default, see [`crate::grants`]), a [`MemoryLimit`] that traps on growth
//! past the `memory` grant, and an epoch callback that runs at every tick of
//! the [`EpochTicker`]: it yields to the async runtime (so a plugin that
//! computes for a long time never starves other connectors of a thread) and
//! traps the call with [`CpuLimitExceeded`] once it has computed past the
//! `cpu` grant: the call's time less the time it spent waiting (for a
//! socket, a timer), which `waits.rs` measures and can interrupt. The store's data, [`HostState`], also
//! implements the `host` imports: logging into tracing (masked, one line,
//! rate limited: see `logs.rs`) and connector-scoped state.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};
use wasmtime_wasi_tls::{WasiTlsCtx, WasiTlsCtxBuilder, WasiTlsCtxView, WasiTlsView};

use super::bindings::{host, types};
use super::output::{LogBudget, PluginLog, PluginStderr, PluginStdout};
use super::waits::{FileStreams, Interrupt, Waits};
use super::{EPOCH_TICK, PluginError};
use crate::broker::{StateError, StateStore};
use crate::grants::Refusals;
use crate::http::HttpClient;
use crate::manifest::format_bytes;
use crate::secrets::Redactor;

/// The per-instance data a `Store` holds.
pub struct HostState {
    wasi: WasiCtx,
    /// `wasi:tls`: handshakes with the connector's trust and identity.
    tls: WasiTlsCtx,
    /// `wasi:http`: its context, and how its requests are sent.
    http: WasiHttpCtx,
    http_client: HttpClient,
    table: ResourceTable,
    limits: MemoryLimit,
    state: Option<Arc<dyn StateStore>>,
    log: PluginLog,
    pub(crate) stderr: PluginStderr,
    /// What the `net` check refused this instance.
    pub(crate) refusals: Refusals,
    /// When the current call began, and its `cpu` grant.
    pub(crate) call_started: Instant,
    cpu: Duration,
    /// Ends the current call's waits (see `waits.rs`).
    pub(crate) interrupt: Interrupt,
    /// How long the current call has waited, which its `cpu` grant does not
    /// count.
    waited: Duration,
    /// The input streams that read files (see `waits.rs`), by rep.
    pub(crate) file_streams: FileStreams,
}

impl HostState {
    /// What `wasi:io` sees of the instance.
    pub(crate) fn waits(&mut self) -> Waits<'_> {
        Waits::new(
            &mut self.table,
            &self.interrupt,
            &mut self.waited,
            &mut self.file_streams,
        )
    }
}

/// A call ran past the connector's `cpu` grant. The epoch callback raises
/// it as the trap's error, so the host can say so without reading messages.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("ran {elapsed:?} in one call, past its cpu grant of {cpu:?}")]
pub struct CpuLimitExceeded {
    /// How long the call had run.
    pub elapsed: Duration,
    /// The grant.
    pub cpu: Duration,
}

/// The instance asked for more linear memory than its `memory` grant.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "tried to grow its memory to {} ({desired} bytes), past its memory grant of {}",
    format_bytes(*desired as u64),
    format_bytes(*limit as u64)
)]
pub struct MemoryLimitExceeded {
    /// The size it asked for.
    pub desired: usize,
    /// The grant.
    pub limit: usize,
}

/// Enforces the `memory` grant: growing past it traps the instance with
/// [`MemoryLimitExceeded`] (rather than failing the `memory.grow`, which a
/// Rust plugin turns into an abort that says nothing of why).
///
/// The grant covers all the linear memories of the instance together (a
/// component may hold several core modules, each with its own memory).
#[derive(Debug)]
pub(crate) struct MemoryLimit {
    limit: usize,
    /// Linear memory of all the instance's memories so far.
    total: usize,
}

/// Most table elements an instance may have: far more than any real
/// plugin, small enough that a runaway table cannot take the host down.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.total.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            return Err(MemoryLimitExceeded {
                desired: total,
                limit: self.limit,
            }
            .into());
        }
        self.total = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl fmt::Debug for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostState")
            .field("log", &self.log)
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

impl WasiTlsView for HostState {
    fn tls(&mut self) -> WasiTlsCtxView<'_> {
        WasiTlsCtxView {
            ctx: &mut self.tls,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_client,
        }
    }
}

impl host::Host for HostState {
    fn interrupted(&mut self) -> bool {
        self.interrupt.is_raised()
    }

    fn log(&mut self, level: host::Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            host::Level::Trace => tracing::Level::TRACE,
            host::Level::Debug => tracing::Level::DEBUG,
            host::Level::Info => tracing::Level::INFO,
            host::Level::Warn => tracing::Level::WARN,
            host::Level::Error => tracing::Level::ERROR,
        };
        self.log.write(level, &message, &fields);
    }

    fn crc32c(&mut self, bytes: Vec<u8>) -> u32 {
        crc32c::crc32c(&bytes)
    }

    fn state_get(&mut self, key: String) -> Option<Vec<u8>> {
        let store = self.state.as_ref()?;
        off_the_workers(|| store.get(&key))
    }

    fn state_put(&mut self, key: String, value: Vec<u8>) -> Result<(), host::StateError> {
        let Some(store) = &self.state else {
            return Err(host::StateError::Unavailable(
                "this instance has no state (it was made only to read its spec)".into(),
            ));
        };
        off_the_workers(|| store.put(&key, &value)).map_err(|e| {
            let reason = self.log.redactor().redact(&e.to_string()).into_owned();
            match e {
                StateError::QuotaExceeded { .. } => host::StateError::QuotaExceeded(reason),
                StateError::Unavailable { .. } => host::StateError::Unavailable(reason),
            }
        })
    }
}

/// Runs `f`, which may block on disk, without stalling the other tasks of
/// the async worker it runs on: on a multi-threaded runtime the worker hands
/// its other tasks to another thread first. The time still counts against
/// the calling instance's `cpu` grant (its clock runs on).
fn off_the_workers<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
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
    /// Masks secrets in what the instance logs and in its errors.
    pub redactor: Redactor,
    /// The rate limit of the connector's log lines, shared by its
    /// instances.
    pub log_budget: LogBudget,
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
            redactor: Redactor::default(),
            log_budget: LogBudget::default(),
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
                // Ticks at fixed instants, so a late wake-up does not push
                // every later tick back.
                let mut next = Instant::now();
                while !flag.load(Ordering::Relaxed) {
                    next += EPOCH_TICK;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
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
/// memory limit, and the epoch callback that yields and enforces `cpu`.
pub(crate) fn new(engine: &Engine, setup: &InstanceSetup) -> Result<Store<HostState>, PluginError> {
    let log = PluginLog::new(
        setup.connector.clone(),
        setup.index,
        setup.redactor.clone(),
        setup.log_budget.clone(),
    );
    let stderr = PluginStderr::new(log.clone());
    let refusals = Refusals::default();
    let state = HostState {
        wasi: setup.grants.wasi_ctx(
            PluginStdout::new(setup.redactor.clone()),
            stderr.clone(),
            refusals.clone(),
        )?,
        tls: WasiTlsCtxBuilder::new()
            .provider(Box::new(setup.grants.tls.clone()))
            .build(),
        http: WasiHttpCtx::new(),
        http_client: HttpClient::new(
            Arc::new(setup.grants.net.clone()),
            refusals.clone(),
            setup.grants.tls.clone(),
            setup.grants.http_headers.clone(),
        ),
        table: ResourceTable::new(),
        limits: MemoryLimit {
            limit: usize::try_from(setup.grants.memory_bytes).unwrap_or(usize::MAX),
            total: 0,
        },
        state: setup.state.clone(),
        log,
        stderr,
        refusals,
        call_started: Instant::now(),
        cpu: setup.grants.cpu,
        interrupt: Interrupt::default(),
        waited: Duration::ZERO,
        file_streams: FileStreams::default(),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|ctx| {
        let data = ctx.data();
        // Waiting is not computing: a call's waits do not count.
        let elapsed = data.call_started.elapsed().saturating_sub(data.waited);
        if elapsed >= data.cpu {
            return Err(CpuLimitExceeded {
                elapsed,
                cpu: data.cpu,
            }
            .into());
        }
        // Let the runtime serve other connectors, then look again next tick.
        Ok(UpdateDeadline::Yield(1))
    });
    store.set_epoch_deadline(1);
    Ok(store)
}

/// Starts the clock of a call: the next tick runs the callback.
pub(crate) fn arm(store: &mut Store<HostState>) {
    let data = store.data_mut();
    data.call_started = Instant::now();
    data.waited = Duration::ZERO;
    data.interrupt.lower();
    store.set_epoch_deadline(1);
}
