//! The export macros behind `sluice_sdk::export_source!`, `export_sink!` and
//! `export_transform!`.
//!
//! Each expands, inside the plugin's own crate, to the `wit_bindgen` bindings
//! of exactly one world of the contract plus a small adapter from the generated
//! `Guest` trait to the SDK's `Source`, `Sink` or `Transform` trait. Generating
//! in the plugin crate (as spin-rust-sdk does) is what keeps a plugin's
//! component to one world: bindings for all three worlds in the SDK itself
//! would merge into a component that claims to export all three.
//!
//! The contract's WIT text is compiled into this macro, so a plugin never
//! needs the `wit/` folder at hand.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::{Path, parse_macro_input};

/// The contract, embedded when this macro crate is built.
const WIT: &str = include_str!("../../../wit/connector.wit");

/// Makes a struct a plugin config: derives `Deserialize` and `JsonSchema`
/// through the `serde` and `schemars` that `sluice_sdk` re-exports, so a
/// plugin needs neither crate among its own dependencies (and cannot pick a
/// `schemars` the SDK does not speak). `#[serde(...)]` and `#[schemars(...)]`
/// attributes on the struct and its fields work as usual.
#[proc_macro_attribute]
pub fn config(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[sluice_sdk::config] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let item = TokenStream2::from(item);
    quote! {
        #[derive(::sluice_sdk::serde::Deserialize, ::sluice_sdk::schemars::JsonSchema)]
        #[serde(crate = "::sluice_sdk::serde")]
        #[schemars(crate = "::sluice_sdk::schemars")]
        #item
    }
    .into()
}

/// Exports a type implementing `sluice_sdk::Source` as a source component.
#[proc_macro]
pub fn export_source(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Path);
    expand("source", glue_source(&ty)).into()
}

/// Exports a type implementing `sluice_sdk::Sink` as a sink component.
#[proc_macro]
pub fn export_sink(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Path);
    expand("sink", glue_sink(&ty)).into()
}

/// Exports a type implementing `sluice_sdk::Transform` as a transform component.
#[proc_macro]
pub fn export_transform(input: TokenStream) -> TokenStream {
    let ty = parse_macro_input!(input as Path);
    expand("transform", glue_transform(&ty)).into()
}

fn expand(world: &str, glue: TokenStream2) -> TokenStream2 {
    let world = format!("sluice:connector/{world}");
    let host = format!(
        "sluice:connector/host@{}",
        sluice_plugin_build::contract_version(WIT)
    );
    // Only a component has exports: built natively (for a plugin's unit
    // tests, or a native baseline in a benchmark) the plugin is a library.
    quote! {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        #[allow(clippy::all, unused, missing_debug_implementations)]
        mod __sluice_export {
            use super::*;

            ::sluice_sdk::__private::wit_bindgen::generate!({
                inline: #WIT,
                world: #world,
                runtime_path: "::sluice_sdk::__private::wit_bindgen::rt",
                with: {
                    #host: ::sluice_sdk::__private::host,
                },
            });

            use sluice::connector::types as t;

            fn error(e: ::sluice_sdk::Error) -> t::Error {
                match e {
                    ::sluice_sdk::Error::InvalidConfig(m) => t::Error::InvalidConfig(m),
                    ::sluice_sdk::Error::Retriable(m) => t::Error::Retriable(m),
                    ::sluice_sdk::Error::Fatal(m) => t::Error::Fatal(m),
                }
            }

            fn context(c: t::InstanceContext) -> ::sluice_sdk::Context {
                ::sluice_sdk::Context {
                    connector: c.connector,
                    index: c.index,
                    count: c.count,
                }
            }

            fn failures(f: ::std::vec::Vec<::sluice_sdk::Rejected>) -> ::std::vec::Vec<t::RecordFailure> {
                f.into_iter()
                    .map(|r| t::RecordFailure { index: r.index, reason: r.reason })
                    .collect()
            }

            fn spec<C: ::sluice_sdk::__private::ConfigSchema>() -> t::PluginSpec {
                let s = ::sluice_sdk::__private::spec::<C>(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_DESCRIPTION"),
                );
                t::PluginSpec {
                    name: s.name,
                    version: s.version,
                    description: s.description,
                    config_schema: s.config_schema,
                }
            }

            struct Glue;

            #glue

            export!(Glue);
        }
    }
}

fn glue_source(ty: &Path) -> TokenStream2 {
    quote! {
        ::std::thread_local! {
            static INSTANCE: ::core::cell::RefCell<::core::option::Option<#ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        use exports::sluice::connector::source_api as api;

        impl api::Guest for Glue {
            fn spec() -> t::PluginSpec {
                spec::<<#ty as ::sluice_sdk::Source>::Config>()
            }

            fn open(
                config: ::std::string::String,
                ctx: t::InstanceContext,
                resume_from: ::core::option::Option<::std::vec::Vec<u8>>,
            ) -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::source_open::<#ty>(
                        slot, &config, &context(ctx), resume_from.as_deref(),
                    ))
                    .map_err(error)
            }

            fn poll(max_records: u32) -> ::core::result::Result<api::PollResult, t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::source_poll::<#ty>(slot, max_records))
                    .map(|p| api::PollResult {
                        batch: p.batch,
                        position: p.position,
                        end_of_stream: p.end_of_stream,
                    })
                    .map_err(error)
            }

            fn commit(position: ::std::vec::Vec<u8>) -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::source_commit::<#ty>(slot, &position))
                    .map_err(error)
            }

            fn close() -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::source_close::<#ty>(slot))
                    .map_err(error)
            }
        }
    }
}

fn glue_sink(ty: &Path) -> TokenStream2 {
    quote! {
        ::std::thread_local! {
            static INSTANCE: ::core::cell::RefCell<::core::option::Option<#ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        use exports::sluice::connector::sink_api as api;

        impl api::Guest for Glue {
            fn spec() -> t::PluginSpec {
                spec::<<#ty as ::sluice_sdk::Sink>::Config>()
            }

            fn open(
                config: ::std::string::String,
                ctx: t::InstanceContext,
            ) -> ::core::result::Result<::std::vec::Vec<t::StoredOffset>, t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::sink_open::<#ty>(slot, &config, &context(ctx)))
                    .map(|offsets| {
                        offsets
                            .into_iter()
                            .map(|o| t::StoredOffset {
                                topic: o.topic,
                                partition: o.partition,
                                next_offset: o.next_offset,
                            })
                            .collect()
                    })
                    .map_err(error)
            }

            fn write(
                origin: t::BatchOrigin,
                batch: ::std::vec::Vec<u8>,
            ) -> ::core::result::Result<::std::vec::Vec<t::RecordFailure>, t::Error> {
                let origin = ::sluice_sdk::Origin {
                    topic: origin.topic,
                    partition: origin.partition,
                    first_offset: origin.first_offset,
                };
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::sink_write::<#ty>(slot, &origin, &batch))
                    .map(failures)
                    .map_err(error)
            }

            fn flush() -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::sink_flush::<#ty>(slot))
                    .map_err(error)
            }

            fn close() -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::sink_close::<#ty>(slot))
                    .map_err(error)
            }
        }
    }
}

fn glue_transform(ty: &Path) -> TokenStream2 {
    quote! {
        ::std::thread_local! {
            static INSTANCE: ::core::cell::RefCell<::core::option::Option<#ty>> =
                const { ::core::cell::RefCell::new(::core::option::Option::None) };
        }

        use exports::sluice::connector::transform_api as api;

        impl api::Guest for Glue {
            fn spec() -> t::PluginSpec {
                spec::<<#ty as ::sluice_sdk::Transform>::Config>()
            }

            fn open(
                config: ::std::string::String,
                ctx: t::InstanceContext,
            ) -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::transform_open::<#ty>(slot, &config, &context(ctx)))
                    .map_err(error)
            }

            fn process(batch: ::std::vec::Vec<u8>) -> ::core::result::Result<api::ProcessResult, t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::transform_process::<#ty>(slot, &batch))
                    .map(|(output, rejected)| api::ProcessResult {
                        output,
                        failures: failures(rejected),
                    })
                    .map_err(error)
            }

            fn close() -> ::core::result::Result<(), t::Error> {
                INSTANCE
                    .with(|slot| ::sluice_sdk::__private::transform_close::<#ty>(slot))
                    .map_err(error)
            }
        }
    }
}
