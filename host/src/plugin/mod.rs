//! Loading plugins and running their instances.
//!
//! One [`PluginHost`] per process holds the `wasmtime::Engine`, the linker
//! with WASI and the Sluice host imports, and the compile cache. Loading a
//! plugin checks that it speaks this host's contract version and exports the
//! interface its connector needs, and builds an `InstancePre` once; every
//! instance then gets its own `Store` with a memory limit and an epoch
//! deadline per call (see [`instance`]).
//!
//! - [`bindings`]: the one `bindgen!` site.
//! - [`cache`]: compiled components on disk.
//! - [`sandbox`]: one instance's `Store`: WASI from its grants, its memory
//!   limit, the epoch that enforces its cpu grant, the host imports.
//! - [`Exports`]: what the shared instance code needs of each world's
//!   bindings, one line per kind.
//! - [`instance`]: a running source, sink or transform and its calls.
//! - `schema`: a config checked against a plugin's schema
//!   ([`Spec::check_config`]).

pub mod bindings;
pub mod cache;
mod error;
mod exports;
pub mod instance;
pub mod output;
pub mod sandbox;
mod schema;
mod waits;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine};

use self::bindings::host;
pub use self::cache::CompileCache;
pub use self::error::PluginError;
pub use self::exports::Exports;
pub use self::instance::{
    Instance, Polled, Processed, Refused, SinkInstance, SourceInstance, Spec, TransformInstance,
};
pub use self::output::LogBudget;
use self::sandbox::EpochTicker;
pub use self::sandbox::{HostState, InstanceSetup};
pub use self::schema::{ConfigProblem, SchemaError};
pub use self::waits::Interrupt;

/// The contract version this host speaks (`sluice:connector@…`), read from
/// `wit/connector.wit` by the build script.
pub const CONTRACT_VERSION: &str = env!("SLUICE_CONTRACT_VERSION");

/// How often the engine's epoch advances; the unit of the `cpu` grant.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));
}

/// Names of the plugins compiled into this binary.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtin::BUILTIN.iter().map(|(name, _)| *name)
}

/// What a plugin exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    /// Exports `source-api`.
    Source,
    /// Exports `sink-api`.
    Sink,
    /// Exports `transform-api`.
    Transform,
}

impl PluginKind {
    /// The interface's name without package or version, e.g. `source-api`.
    pub fn interface(self) -> &'static str {
        match self {
            PluginKind::Source => "source-api",
            PluginKind::Sink => "sink-api",
            PluginKind::Transform => "transform-api",
        }
    }

    /// The fully qualified interface name this host looks for.
    pub fn qualified(self) -> String {
        format!("sluice:connector/{}@{CONTRACT_VERSION}", self.interface())
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PluginKind::Source => "source",
            PluginKind::Sink => "sink",
            PluginKind::Transform => "transform",
        })
    }
}

/// Where a plugin comes from.
#[derive(Debug, Clone)]
pub enum PluginRef {
    /// Compiled into this binary.
    Builtin(&'static str, &'static [u8]),
    /// A `.wasm` component on disk.
    File(PathBuf),
}

impl PluginRef {
    /// Reads a manifest's `plugin = "…"`: a built-in name, or a path
    /// (anything with a `/` or ending in `.wasm`), relative to `base_dir`.
    pub fn resolve(text: &str, base_dir: &Path) -> Result<Self, PluginError> {
        if text.contains('/') || text.ends_with(".wasm") {
            let p = Path::new(text);
            return Ok(PluginRef::File(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            }));
        }
        builtin::BUILTIN
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(name, bytes)| PluginRef::Builtin(name, bytes))
            .ok_or_else(|| PluginError::Unknown {
                name: text.to_owned(),
                builtins: builtin_names().collect::<Vec<_>>().join(", "),
            })
    }

    /// How messages name this plugin.
    pub fn display_name(&self) -> String {
        match self {
            PluginRef::Builtin(name, _) => (*name).to_owned(),
            PluginRef::File(p) => p.display().to_string(),
        }
    }
}

/// A loaded, checked plugin, ready to instantiate.
#[derive(Clone)]
pub struct Plugin {
    name: String,
    kind: PluginKind,
    pre: PluginPre,
    cache_hit: bool,
    load_time: Duration,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("cache_hit", &self.cache_hit)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum PluginPre {
    Source(bindings::source::SourcePre<HostState>),
    Sink(bindings::sink::SinkPre<HostState>),
    Transform(bindings::transform::TransformPre<HostState>),
}

impl Plugin {
    /// How messages name this plugin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it exports.
    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// Whether the compiled form came from the cache, and how long loading took.
    pub fn load_info(&self) -> (bool, Duration) {
        (self.cache_hit, self.load_time)
    }

    /// Fails unless the plugin is of `kind`.
    pub fn expect_kind(&self, kind: PluginKind) -> Result<(), PluginError> {
        if self.kind == kind {
            return Ok(());
        }
        Err(PluginError::WrongKind {
            plugin: self.name.clone(),
            expected: kind.qualified(),
            needed: kind,
            found: self.kind.qualified(),
            actual: self.kind,
        })
    }
}

/// The engine, linker and compile cache shared by every plugin.
pub struct PluginHost {
    engine: Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    _ticker: EpochTicker,
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl PluginHost {
    /// A host with the given compile cache.
    pub fn new(cache: CompileCache) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // `SLUICE_PERFMAP=1` names plugin functions for `perf` (in
        // /tmp/perf-<pid>.map): how `just bench`'s profiles see into a
        // plugin. Off by default: it writes a file per process.
        if std::env::var_os("SLUICE_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("adding WASI to the linker: {e:#}"))?;
        let mut tls = wasmtime_wasi_tls::p2::LinkOptions::default();
        tls.tls(true);
        wasmtime_wasi_tls::p2::add_to_linker(&mut linker, &tls)
            .map_err(|e| anyhow::anyhow!("adding wasi:tls to the linker: {e:#}"))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| anyhow::anyhow!("adding wasi:http to the linker: {e:#}"))?;
        waits::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("adding the host's wasi:io to the linker: {e:#}"))?;
        host::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| anyhow::anyhow!("adding the host imports to the linker: {e:#}"))?;
        let ticker = EpochTicker::start(engine.clone());
        Ok(PluginHost {
            engine,
            linker,
            cache,
            _ticker: ticker,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads and checks a plugin.
    pub fn load(&self, reference: &PluginRef) -> Result<Plugin, PluginError> {
        let started = Instant::now();
        let name = reference.display_name();
        let owned;
        let bytes: &[u8] = match reference {
            PluginRef::Builtin(_, bytes) => bytes,
            PluginRef::File(path) => {
                owned = std::fs::read(path).map_err(|source| PluginError::Read {
                    path: path.clone(),
                    source,
                })?;
                &owned
            }
        };
        let (component, cache_hit) =
            self.cache
                .load(&self.engine, bytes)
                .map_err(|e| PluginError::Compile {
                    plugin: name.clone(),
                    reason: format!("{e:#}"),
                })?;
        let kind = self.kind_of(&name, &component)?;
        let link = |e: wasmtime::Error| PluginError::Link {
            plugin: name.clone(),
            reason: format!("{e:#}"),
        };
        let pre = self.linker.instantiate_pre(&component).map_err(link)?;
        let pre = match kind {
            PluginKind::Source => {
                PluginPre::Source(bindings::source::SourcePre::new(pre).map_err(link)?)
            }
            PluginKind::Sink => PluginPre::Sink(bindings::sink::SinkPre::new(pre).map_err(link)?),
            PluginKind::Transform => {
                PluginPre::Transform(bindings::transform::TransformPre::new(pre).map_err(link)?)
            }
        };
        let load_time = started.elapsed();
        tracing::debug!(plugin = %name, %kind, cache_hit, ?load_time, "plugin loaded");
        Ok(Plugin {
            name,
            kind,
            pre,
            cache_hit,
            load_time,
        })
    }

    /// Reads the plugin's exports to tell its kind, refusing other
    /// contract versions by name.
    fn kind_of(&self, name: &str, component: &Component) -> Result<PluginKind, PluginError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let mut kinds = Vec::new();
        for export in &exports {
            let Some(rest) = export.strip_prefix("sluice:connector/") else {
                continue;
            };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, "unversioned"));
            let kind = match iface {
                "source-api" => PluginKind::Source,
                "sink-api" => PluginKind::Sink,
                "transform-api" => PluginKind::Transform,
                _ => continue,
            };
            if version != CONTRACT_VERSION {
                return Err(PluginError::ContractVersion {
                    plugin: name.to_owned(),
                    found: version.to_owned(),
                    interface: export.clone(),
                });
            }
            kinds.push(kind);
        }
        match kinds.as_slice() {
            [kind] => Ok(*kind),
            _ => Err(PluginError::NoInterface {
                plugin: name.to_owned(),
                exports: if exports.is_empty() {
                    "nothing".to_owned()
                } else {
                    exports.join(", ")
                },
            }),
        }
    }

    /// Reads a plugin's spec from a fresh instance with nothing granted.
    pub async fn spec(&self, plugin: &Plugin) -> Result<Spec, PluginError> {
        let setup = InstanceSetup::isolated("inspect");
        let mut store = sandbox::new(&self.engine, &setup)?;
        let limits = instance::CallLimits::from(&setup.grants);
        let started = std::time::Instant::now();
        tokio::time::timeout(
            setup.grants.cpu + EPOCH_TICK,
            instance::spec(&mut store, plugin, &limits),
        )
        .await
        .map_err(|_| instance::blocked(plugin.name(), "spec", started, &limits))?
    }

    /// Instantiates a source.
    pub async fn source(
        &self,
        plugin: &Plugin,
        setup: &InstanceSetup,
    ) -> Result<SourceInstance, PluginError> {
        SourceInstance::instantiate(&self.engine, plugin, setup).await
    }

    /// Instantiates a sink.
    pub async fn sink(
        &self,
        plugin: &Plugin,
        setup: &InstanceSetup,
    ) -> Result<SinkInstance, PluginError> {
        SinkInstance::instantiate(&self.engine, plugin, setup).await
    }

    /// Instantiates a transform.
    pub async fn transform(
        &self,
        plugin: &Plugin,
        setup: &InstanceSetup,
    ) -> Result<TransformInstance, PluginError> {
        TransformInstance::instantiate(&self.engine, plugin, setup).await
    }
}
