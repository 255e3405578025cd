//! Running instances: one `Store` each, every call under a CPU deadline, and
//! every answer checked against the contract before the host trusts it.
//!
//! Every kind is one generic [`Instance`] ([`SourceInstance`] and
//! [`SinkInstance`] name two of them): it is instantiated one way, and every
//! call goes through its one `call` wrapper (start the clock, run under the
//! deadline, map the plugin's own error); a kind adds only its own calls and
//! their contract checks.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_batch::Batch;
use wasmtime::{Engine, Store};

use super::bindings::{self, types};
use super::exports::Exports;
use super::output::PluginStderr;
use super::sandbox::{self, CpuLimitExceeded, MemoryLimitExceeded};
use super::{HostState, InstanceSetup, Interrupt, Plugin, PluginError, PluginKind, PluginPre};
use crate::grants::GrantSet;
use crate::secrets::Redactor;

/// A plugin's description of itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Spec {
    /// Short name.
    pub name: String,
    /// Its own version.
    pub version: String,
    /// For operators.
    pub description: String,
    /// JSON Schema of its config.
    pub config_schema: serde_json::Value,
}

/// The limits applied to each call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    cpu: Duration,
    memory_bytes: u64,
}

impl From<&GrantSet> for CallLimits {
    fn from(g: &GrantSet) -> Self {
        CallLimits {
            cpu: g.cpu,
            memory_bytes: g.memory_bytes,
        }
    }
}

/// Runs one call under the `cpu` grant. Computing is ended by the epoch
/// callback (see `sandbox.rs`), which does not count the time the call
/// spends waiting (for a socket, a timer: see `waits.rs`): a call may wait
/// as long as it likes, and the pump interrupts the wait when it must stop,
/// pause or swap. An instance whose call trapped is not called again: its
/// supervisor replaces it.
async fn guarded<T>(
    plugin: &str,
    call: &'static str,
    limits: &CallLimits,
    stderr: &PluginStderr,
    fut: impl Future<Output = wasmtime::Result<T>>,
) -> Result<T, PluginError> {
    fut.await
        .map_err(|e| trap_with(plugin, call, &e, limits, stderr.last_line()))
}

/// A `spec` call (on an instance made only to read it) still under way
/// after its `cpu` grant: reading a spec never needs to wait.
pub(crate) fn blocked(
    plugin: &str,
    call: &'static str,
    started: Instant,
    limits: &CallLimits,
) -> PluginError {
    PluginError::Trap {
        plugin: plugin.to_owned(),
        call,
        reason: format!(
            "was still in its call after {:?}, past its cpu grant of {:?} (blocked in a host call, such as a sleep or a socket read); interrupted",
            started.elapsed(),
            limits.cpu
        ),
    }
}

/// Describes a trap in an operator's words.
fn trap_with(
    plugin: &str,
    call: &'static str,
    e: &wasmtime::Error,
    limits: &CallLimits,
    last_stderr: Option<String>,
) -> PluginError {
    let reason = if let Some(cpu) = e.downcast_ref::<CpuLimitExceeded>() {
        format!("{cpu}; interrupted")
    } else if let Some(memory) = e.downcast_ref::<MemoryLimitExceeded>() {
        memory.to_string()
    } else if let Some(wasmtime::Trap::AllocationTooLarge) = e.downcast_ref::<wasmtime::Trap>() {
        format!(
            "tried to grow its memory past its memory grant of {} bytes",
            limits.memory_bytes
        )
    } else {
        match last_stderr {
            Some(line) => format!("trapped: {e:#} (its last words on stderr: {line})"),
            None => format!("trapped: {e:#}"),
        }
    };
    PluginError::Trap {
        plugin: plugin.to_owned(),
        call,
        reason,
    }
}

/// An `open` that failed after the `net` check refused the instance
/// something fails for good, naming the grant it needs, instead of being
/// restarted into the same refusal until its attempts run out.
fn blame_refusal(store: &Store<HostState>, plugin: &str, e: PluginError) -> PluginError {
    match store.data().refusals.take_last() {
        Some(refusal) => PluginError::Denied {
            plugin: plugin.to_owned(),
            refusal,
            cause: Box::new(e),
        },
        None => e,
    }
}

/// Maps a plugin's own error variant, masking secrets in its message.
fn plugin_error(
    plugin: &str,
    call: &'static str,
    e: types::Error,
    redactor: &Redactor,
) -> PluginError {
    let e = match e {
        types::Error::InvalidConfig(m) => types::Error::InvalidConfig(redactor.redact(&m).into()),
        types::Error::Retriable(m) => types::Error::Retriable(redactor.redact(&m).into()),
        types::Error::Fatal(m) => types::Error::Fatal(redactor.redact(&m).into()),
    };
    match e {
        types::Error::InvalidConfig(message) => PluginError::InvalidConfig {
            plugin: plugin.to_owned(),
            message,
        },
        types::Error::Retriable(message) => PluginError::Retriable {
            plugin: plugin.to_owned(),
            call,
            message,
        },
        types::Error::Fatal(message) => PluginError::Fatal {
            plugin: plugin.to_owned(),
            call,
            message,
        },
    }
}

fn to_spec(plugin: &str, s: types::PluginSpec) -> Result<Spec, PluginError> {
    let config_schema =
        serde_json::from_str(&s.config_schema).map_err(|e| PluginError::Contract {
            plugin: plugin.to_owned(),
            call: "spec",
            what: format!("config-schema is not JSON: {e}"),
        })?;
    Ok(Spec {
        name: s.name,
        version: s.version,
        description: s.description,
        config_schema,
    })
}

/// Instantiates `plugin` in `store` and reads its spec.
pub(crate) async fn spec(
    store: &mut Store<HostState>,
    plugin: &Plugin,
    limits: &CallLimits,
) -> Result<Spec, PluginError> {
    sandbox::arm(store);
    let spec = match &plugin.pre {
        PluginPre::Source(pre) => {
            spec_of::<bindings::source::Source>(store, pre, plugin, limits).await
        }
        PluginPre::Sink(pre) => spec_of::<bindings::sink::Sink>(store, pre, plugin, limits).await,
        PluginPre::Transform(pre) => {
            spec_of::<bindings::transform::Transform>(store, pre, plugin, limits).await
        }
    }?;
    to_spec(plugin.name(), spec)
}

/// [`spec`] for one kind.
async fn spec_of<A: Exports>(
    store: &mut Store<HostState>,
    pre: &A::Pre,
    plugin: &Plugin,
    limits: &CallLimits,
) -> Result<types::PluginSpec, PluginError> {
    let fail = |call, e: wasmtime::Error| trap_with(plugin.name(), call, &e, limits, None);
    let api = A::instantiate(pre, &mut *store)
        .await
        .map_err(|e| fail("instantiate", e))?;
    api.spec(store).await.map_err(|e| fail("spec", e))
}

/// What one poll produced, checked.
#[derive(Debug, Default)]
pub struct Polled {
    /// The encoded batch (already checked to parse).
    pub batch: Vec<u8>,
    /// Records in it.
    pub records: u32,
    /// Total size of the records' values.
    pub value_bytes: u64,
    /// The position after it, if the source gave one.
    pub position: Option<Vec<u8>>,
    /// The source is done for good.
    pub end_of_stream: bool,
}

/// A running instance of one kind of plugin: its own `Store`, and what
/// every call needs (the limits it runs under, its stderr for a trap's
/// last words, the redactor for its messages). [`SourceInstance`] and
/// [`SinkInstance`] name the kinds; the calls they share are here.
pub struct Instance<A> {
    store: Store<HostState>,
    api: A,
    plugin: Arc<str>,
    limits: CallLimits,
    context: types::InstanceContext,
    stderr: PluginStderr,
    redactor: Redactor,
}

/// A running source instance.
pub type SourceInstance = Instance<bindings::source::Source>;

/// A running sink instance.
pub type SinkInstance = Instance<bindings::sink::Sink>;

/// A running transform instance.
pub type TransformInstance = Instance<bindings::transform::Transform>;

impl<A: Exports> std::fmt::Debug for Instance<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match A::KIND {
            PluginKind::Source => "SourceInstance",
            PluginKind::Sink => "SinkInstance",
            PluginKind::Transform => "TransformInstance",
        };
        f.debug_struct(name)
            .field("plugin", &self.plugin)
            .field("instance", &self.context.index)
            .finish_non_exhaustive()
    }
}

impl<A: Exports> Instance<A> {
    /// The records a sink's `write` or a transform's `process` refused on
    /// their merits, checked: each one a record of the batch of `records`
    /// it was given, named once; each reason redacted.
    fn refusals(
        &self,
        call: &'static str,
        failures: Vec<types::RecordFailure>,
        records: u32,
    ) -> Result<Vec<Refused>, PluginError> {
        let contract = |what: String| PluginError::Contract {
            plugin: self.plugin.to_string(),
            call,
            what,
        };
        let mut seen = std::collections::HashSet::with_capacity(failures.len());
        let mut refused = Vec::with_capacity(failures.len());
        for f in failures {
            if f.index >= records {
                return Err(contract(format!(
                    "refused record {} of a batch of {records}",
                    f.index
                )));
            }
            if !seen.insert(f.index) {
                return Err(contract(format!("refused record {} twice", f.index)));
            }
            refused.push(Refused {
                index: f.index,
                reason: self.redactor.redact(&f.reason).into_owned(),
            });
        }
        Ok(refused)
    }

    /// Instantiates `plugin`, which must be of `A`'s kind, in a store of
    /// its own. The component's start functions run under the `cpu` grant
    /// too.
    pub(crate) async fn instantiate(
        engine: &Engine,
        plugin: &Plugin,
        setup: &InstanceSetup,
    ) -> Result<Self, PluginError> {
        plugin.expect_kind(A::KIND)?;
        let pre = A::pre(plugin).expect("kind checked above");
        let mut store = sandbox::new(engine, setup)?;
        let stderr = store.data().stderr.clone();
        let limits = CallLimits::from(&setup.grants);
        let fut = A::instantiate(pre, &mut store);
        let api = guarded(plugin.name(), "instantiate", &limits, &stderr, fut).await?;
        Ok(Instance {
            store,
            api,
            plugin: plugin.name().into(),
            limits,
            context: setup.context(),
            stderr,
            redactor: setup.redactor.clone(),
        })
    }

    /// Makes the call `name`, which `start` starts from the bindings (given
    /// the instance's exports, its store and its context): starts the
    /// call's clock, runs it under [`guarded`], and maps the plugin's own
    /// error. The one way every call is made.
    async fn call<'a, T, F>(
        &'a mut self,
        name: &'static str,
        start: impl FnOnce(&'a A, &'a mut Store<HostState>, &'a types::InstanceContext) -> F,
    ) -> Result<T, PluginError>
    where
        F: Future<Output = wasmtime::Result<Result<T, types::Error>>>,
    {
        let Instance {
            store,
            api,
            plugin,
            limits,
            context,
            stderr,
            redactor,
        } = self;
        sandbox::arm(store);
        let r = guarded(plugin, name, limits, stderr, start(api, store, context)).await?;
        r.map_err(|e| plugin_error(plugin, name, e, redactor))
    }

    /// Calls `spec` and discards the answer: the instance's first call,
    /// which touches its memory for the first time, so that the first call
    /// that matters (a swap's `open`, inside the swap's pause) does not pay
    /// for that.
    pub async fn warm(&mut self) -> Result<(), PluginError> {
        self.call("spec", |api, store, _| async move {
            api.spec(store).await.map(|_| Ok(()))
        })
        .await
    }

    /// Calls `close`.
    pub async fn close(&mut self) -> Result<(), PluginError> {
        self.call("close", |api, store, _| api.close(store)).await
    }

    /// The switch that ends the waits of the call under way.
    pub fn interrupter(&self) -> Interrupt {
        self.store.data().interrupt.clone()
    }
}

impl SourceInstance {
    /// Calls `open` with the config document and the resume position.
    pub async fn open(
        &mut self,
        config: &str,
        resume_from: Option<&[u8]>,
    ) -> Result<(), PluginError> {
        let resume_from = resume_from.map(<[u8]>::to_vec);
        self.call("open", |api, store, context| {
            api.sluice_connector_source_api().call_open(
                store,
                config,
                context,
                resume_from.as_ref(),
            )
        })
        .await
        .map_err(|e| blame_refusal(&self.store, &self.plugin, e))
    }

    /// Calls `poll` and checks the batch it returns.
    pub async fn poll(&mut self, max_records: u32) -> Result<Polled, PluginError> {
        let p = self
            .call("poll", |api, store, _| {
                api.sluice_connector_source_api()
                    .call_poll(store, max_records)
            })
            .await?;
        let contract = |what: String| PluginError::Contract {
            plugin: self.plugin.to_string(),
            call: "poll",
            what,
        };
        let batch = Batch::parse(&p.batch)
            .map_err(|e| contract(format!("returned a malformed batch: {e}")))?;
        let records = batch.len() as u32;
        if records > max_records {
            return Err(contract(format!(
                "returned {records} records when asked for at most {max_records}"
            )));
        }
        let value_bytes = batch.value_bytes();
        Ok(Polled {
            batch: p.batch,
            records,
            value_bytes,
            position: p.position,
            end_of_stream: p.end_of_stream,
        })
    }

    /// Tells the source everything up to `position` is in the broker.
    pub async fn commit(&mut self, position: &[u8]) -> Result<(), PluginError> {
        let position = position.to_vec();
        self.call("commit", |api, store, _| {
            api.sluice_connector_source_api()
                .call_commit(store, &position)
        })
        .await
    }
}

/// A record a sink refused on its merits.
#[derive(Debug, Clone)]
pub struct Refused {
    /// Index within the batch written.
    pub index: u32,
    /// The sink's reason.
    pub reason: String,
}

/// An offset a sink stored itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset it wants.
    pub next_offset: u64,
}

impl SinkInstance {
    /// Calls `open`; returns the offsets the sink stored itself.
    pub async fn open(&mut self, config: &str) -> Result<Vec<SinkOffset>, PluginError> {
        let offsets = self
            .call("open", |api, store, context| {
                api.sluice_connector_sink_api()
                    .call_open(store, config, context)
            })
            .await
            .map_err(|e| blame_refusal(&self.store, &self.plugin, e))?;
        Ok(offsets
            .into_iter()
            .map(|o| SinkOffset {
                topic: o.topic,
                partition: o.partition,
                next_offset: o.next_offset,
            })
            .collect())
    }

    /// Calls `write`; returns the records refused on their merits. Takes
    /// `&Vec<u8>` because that is what the bindings lower: a slice would
    /// cost a copy of every batch.
    #[allow(clippy::ptr_arg)]
    pub async fn write(
        &mut self,
        topic: &str,
        partition: u32,
        first_offset: u64,
        batch: &Vec<u8>,
        records: u32,
    ) -> Result<Vec<Refused>, PluginError> {
        let origin = types::BatchOrigin {
            topic: topic.to_owned(),
            partition,
            first_offset,
        };
        let failures = self
            .call("write", |api, store, _| {
                api.sluice_connector_sink_api()
                    .call_write(store, &origin, batch)
            })
            .await?;
        self.refusals("write", failures, records)
    }

    /// Calls `flush`.
    pub async fn flush(&mut self) -> Result<(), PluginError> {
        self.call("flush", |api, store, _| {
            api.sluice_connector_sink_api().call_flush(store)
        })
        .await
    }
}

/// What one `process` call returned, checked.
#[derive(Debug, Default)]
pub struct Processed {
    /// The output batch (already checked to parse).
    pub batch: Vec<u8>,
    /// Records in it.
    pub records: u32,
    /// Total size of the output records' values.
    pub value_bytes: u64,
    /// Input records refused on their merits, by index in the input.
    pub refused: Vec<Refused>,
}

impl TransformInstance {
    /// Calls `open` with the config document.
    pub async fn open(&mut self, config: &str) -> Result<(), PluginError> {
        self.call("open", |api, store, context| {
            api.sluice_connector_transform_api()
                .call_open(store, config, context)
        })
        .await
        .map_err(|e| blame_refusal(&self.store, &self.plugin, e))
    }

    /// Calls `process` on a batch of `records` and checks what comes back:
    /// an output batch that parses, and refusals of input records that
    /// exist, each at most once.
    #[allow(clippy::ptr_arg)] // what the bindings lower, as for `write`
    pub async fn process(
        &mut self,
        batch: &Vec<u8>,
        records: u32,
    ) -> Result<Processed, PluginError> {
        let result = self
            .call("process", |api, store, _| {
                api.sluice_connector_transform_api()
                    .call_process(store, batch)
            })
            .await?;
        let contract = |what: String| PluginError::Contract {
            plugin: self.plugin.to_string(),
            call: "process",
            what,
        };
        let output = Batch::parse(&result.output)
            .map_err(|e| contract(format!("returned a malformed batch: {e}")))?;
        let (out_records, value_bytes) = (output.len() as u32, output.value_bytes());
        let refused = self.refusals("process", result.failures, records)?;
        Ok(Processed {
            batch: result.output,
            records: out_records,
            value_bytes,
            refused,
        })
    }
}
