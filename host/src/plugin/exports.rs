//! What the host's shared instance code needs of each world's generated
//! bindings: one [`Exports`] impl per kind of plugin, so that instantiating,
//! `spec` and `close` are written once (see `instance.rs`), and a new kind is
//! one line of `exports!`.

use std::future::Future;

use wasmtime::Store;

use super::bindings::{self, types};
use super::{HostState, Plugin, PluginKind, PluginPre};

/// What the host's shared code (instantiating, `spec`, `close`) needs of
/// one world's generated bindings. Implemented for the `source`, `sink` and
/// `transform` worlds by the `exports!` macro below.
pub trait Exports: Sized {
    /// The kind of plugin that exports these.
    const KIND: PluginKind;

    /// The world's pre-instantiated form (`SourcePre`, …).
    type Pre;

    /// The plugin's pre-instantiated form, if it is of this kind.
    fn pre(plugin: &Plugin) -> Option<&Self::Pre>;

    /// Starts instantiating `pre` in `store`.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Self>> + Send;

    /// Starts a call of `spec`.
    fn spec(
        &self,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<types::PluginSpec>> + Send;

    /// Starts a call of `close`.
    fn close(
        &self,
        store: &mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), types::Error>>> + Send;
}

/// Implements [`Exports`] for one world: its bindings module, the type it
/// exports and its `…Pre`, its `PluginPre` variant and `PluginKind`,
/// and the accessor of its interface. The three impls differ only in these
/// names.
macro_rules! exports {
    ($world:ident, $api:ident, $pre:ident, $kind:ident, $interface:ident) => {
        impl Exports for bindings::$world::$api {
            const KIND: PluginKind = PluginKind::$kind;

            type Pre = bindings::$world::$pre<HostState>;

            fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
                match &plugin.pre {
                    PluginPre::$kind(pre) => Some(pre),
                    _ => None,
                }
            }

            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<HostState>,
            ) -> impl Future<Output = wasmtime::Result<Self>> + Send {
                pre.instantiate_async(store)
            }

            fn spec(
                &self,
                store: &mut Store<HostState>,
            ) -> impl Future<Output = wasmtime::Result<types::PluginSpec>> + Send {
                self.$interface().call_spec(store)
            }

            fn close(
                &self,
                store: &mut Store<HostState>,
            ) -> impl Future<Output = wasmtime::Result<Result<(), types::Error>>> + Send {
                self.$interface().call_close(store)
            }
        }
    };
}

exports!(
    source,
    Source,
    SourcePre,
    Source,
    sluice_connector_source_api
);
exports!(sink, Sink, SinkPre, Sink, sluice_connector_sink_api);
exports!(
    transform,
    Transform,
    TransformPre,
    Transform,
    sluice_connector_transform_api
);
