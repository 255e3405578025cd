//! Write Sluice connector plugins in Rust.
//!
//! A plugin is a WebAssembly component that the Sluice host loads, sandboxes
//! and feeds. You write a type that implements [`Source`], [`Sink`] or
//! [`Transform`] over typed records, name your config as a plain
//! `serde::Deserialize` + `schemars::JsonSchema` struct, and call one export
//! macro. The macro generates the component bindings and the JSON Schema the
//! host checks manifests against; the plugin's name, version and description
//! come from its `Cargo.toml`.
//!
//! A complete source plugin (build it with
//! `cargo build --release --target wasm32-wasip2`, crate type `cdylib`):
//!
//! ```
//! use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};
//!
//! /// Counts from `start` up to `start + count`.
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Config {
//!     start: u64,
//!     count: u64,
//! }
//!
//! struct Counter { next: u64, end: u64 }
//!
//! impl Source for Counter {
//!     type Config = Config;
//!
//!     fn open(c: Config, _ctx: &Context, resume: Option<&[u8]>) -> Result<Self, Error> {
//!         let next = resume.map_or(Ok(c.start), sluice_sdk::position::decode_u64)?;
//!         Ok(Counter { next, end: c.start + c.count })
//!     }
//!
//!     fn poll(&mut self, out: &mut BatchWriter, max: usize) -> Result<Poll, Error> {
//!         while self.next < self.end && out.len() < max {
//!             out.push_value(self.next.to_string().as_bytes());
//!             self.next += 1;
//!         }
//!         Ok(Poll::at(self.next.to_le_bytes().to_vec()).done_if(self.next == self.end))
//!     }
//! }
//!
//! sluice_sdk::export_source!(Counter);
//! # fn main() {}
//! ```
//!
//! The config struct takes `#[sluice_sdk::config]`, which derives
//! `Deserialize` and `JsonSchema` through the [`serde`] and [`schemars`] this
//! SDK re-exports: a plugin needs neither crate of its own. (Deriving them
//! yourself works too, with `schemars` 1.x: a config deriving `schemars`
//! 0.8's `JsonSchema` does not satisfy the bound.)
//!
//! A sink receives a checked [`Batch`] and reads each record through a
//! [`RecordRef`]: `key` (`None` for a record without one), `value`, `headers`
//! (name and value pairs, in order) and `timestamp` (milliseconds since the
//! Unix epoch, if the source set one). The host calls `write` with each
//! batch it reads, then `flush` at the connector's flush interval (and before
//! a pause, a stop or a module swap), and commits the batches' offsets only
//! after `flush` returns `Ok`: make everything written so far durable there.
//! A complete sink:
//!
//! ```
//! use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};
//!
//! /// Counts records whose key starts with `prefix`.
//! #[sluice_sdk::config]
//! struct Config {
//!     prefix: String,
//! }
//!
//! struct Count { prefix: Vec<u8>, seen: u64, durable: u64 }
//!
//! impl Sink for Count {
//!     type Config = Config;
//!
//!     fn open(c: Config, _ctx: &Context) -> Result<Self, Error> {
//!         Ok(Count { prefix: c.prefix.into_bytes(), seen: 0, durable: 0 })
//!     }
//!
//!     fn write(&mut self, _origin: &Origin, batch: Batch<'_>, rejects: &mut Rejects) -> Result<(), Error> {
//!         for (i, record) in batch.iter().enumerate() {
//!             match record.key {
//!                 Some(key) if key.starts_with(&self.prefix) => self.seen += 1,
//!                 Some(_) => {}
//!                 // Refused on its merits: goes to the dead-letter topic.
//!                 None => rejects.reject(i, "a record without a key"),
//!             }
//!             for (name, value) in record.headers() {
//!                 sluice_sdk::log::log_with(
//!                     sluice_sdk::log::Level::Trace,
//!                     "header",
//!                     &[("name", name), ("bytes", &value.len().to_string())],
//!                 );
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn flush(&mut self) -> Result<(), Error> {
//!         self.durable = self.seen; // a real sink syncs its writes here
//!         Ok(())
//!     }
//! }
//!
//! sluice_sdk::export_sink!(Count);
//! # fn main() {}
//! ```
//!
//! A record a sink refuses on its merits goes through [`Rejects`]; the host
//! sends those to the connector's
//! dead-letter topic (`<connector>.dlq`), each with your reason and its
//! origin in headers. Transforms read a batch and write another. Errors are
//! an [`Error`]: invalid config (the host fails the connector at once, with
//! your message), retriable (the host makes the same call again after a
//! backoff, on the same instance, and ends the instance only if the error
//! persists) or fatal (the host ends that instance, and its supervisor opens
//! a fresh one from the last committed position after a backoff). A panic is a trap, handled like a fatal error; its message
//! reaches the host's log through standard error.
//!
//! Logging goes to the host's tracing, tagged with the connector and instance:
//! see [`log`]. Clocks and random numbers are always there. Anything else a
//! plugin touches through `std` (files, sockets, name lookups, environment
//! variables, standard output) is WASI, and the host grants none of it unless
//! the manifest says so: without a grant, `std::fs` finds no files,
//! `TcpStream::connect` is refused with `PermissionDenied`, and
//! `std::env::var` finds nothing. Secrets arrive in your config, where the
//! manifest writes `${secret:NAME}`.

use std::cell::RefCell;
use std::fmt;

/// True once the host has interrupted the current call's waits, to stop,
/// pause or swap the instance: a read that failed now failed for that (the
/// connection is still good), and the call should return. See
/// [`Source::poll`].
pub fn interrupted() -> bool {
    __private::host::interrupted()
}

/// The CRC-32C (Castagnoli) of `bytes`, as Kafka's record batches carry it.
/// In a plugin the host computes it with the CPU's own instruction (wasm
/// has none; a table-driven CRC in wasm runs at about 1 GB/s); natively
/// (a plugin crate's unit tests) the `crc32c` crate does.
pub fn crc32c(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "wasm32")]
    {
        __private::host::crc32c(bytes)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        crc32c::crc32c(bytes)
    }
}

use serde::de::DeserializeOwned;

pub use sluice_batch::{Batch, BatchError, BatchWriter, Record, RecordRef, record_ref};
pub use sluice_sdk_macro::{config, export_sink, export_source, export_transform};

/// The `schemars` (1.x) this SDK describes configs with; [`config`] derives
/// through it. A config deriving another version's `JsonSchema` does not
/// satisfy [`Source::Config`]'s bound.
pub use schemars;
/// The `serde` this SDK parses configs with; [`config`] derives through it.
pub use serde;
/// The `serde_json` this SDK uses, for plugins that handle JSON values.
pub use serde_json;

pub mod enrich;
pub mod hash;
pub mod http;
pub mod json;
pub mod log;
pub mod net;
pub mod outage;
pub mod position;
mod read_buf;
pub mod sink_offsets;
pub mod state;
pub mod template;
pub mod testing;

pub use read_buf::ReadBuf;

/// An error the host acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The config does not make sense; the host stops and reports it.
    InvalidConfig(String),
    /// A passing fault; the host backs off and calls again.
    Retriable(String),
    /// The instance cannot go on; the host stops it and reports why.
    Fatal(String),
}

impl Error {
    /// An [`Error::InvalidConfig`] from anything printable.
    pub fn invalid_config(msg: impl fmt::Display) -> Self {
        Error::InvalidConfig(msg.to_string())
    }
    /// An [`Error::Retriable`] from anything printable.
    pub fn retriable(msg: impl fmt::Display) -> Self {
        Error::Retriable(msg.to_string())
    }
    /// An [`Error::Fatal`] from anything printable.
    pub fn fatal(msg: impl fmt::Display) -> Self {
        Error::Fatal(msg.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig(m) => write!(f, "invalid config: {m}"),
            Error::Retriable(m) => write!(f, "retriable: {m}"),
            Error::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Which instance of which connector this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The connector's name from the manifest.
    pub connector: String,
    /// This instance's index, from 0.
    pub index: u32,
    /// How many instances the connector runs.
    pub count: u32,
}

/// What a source's [`Source::poll`] says besides the records it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Poll {
    /// The position after the last record written, if the source has one.
    pub position: Option<Vec<u8>>,
    /// True when a bounded source will never produce another record.
    pub end_of_stream: bool,
}

impl Poll {
    /// More may come; the source is at `position`.
    pub fn at(position: Vec<u8>) -> Self {
        Poll {
            position: Some(position),
            end_of_stream: false,
        }
    }

    /// Marks the end of a bounded source when `done` is true.
    pub fn done_if(mut self, done: bool) -> Self {
        self.end_of_stream = done;
        self
    }
}

/// Where the batch handed to a sink came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic.
    pub topic: String,
    /// The partition within the topic.
    pub partition: u32,
    /// The offset of the batch's first record.
    pub first_offset: u64,
}

/// An offset a sink stored itself (for example in the same transaction as
/// its data), returned from [`Sink::stored_offsets`] so the host resumes there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    /// The topic.
    pub topic: String,
    /// The partition within the topic.
    pub partition: u32,
    /// The offset of the next record the sink wants.
    pub next_offset: u64,
}

/// One record a sink or transform refused on its merits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Index of the record within its batch.
    pub index: u32,
    /// Why, in one sentence.
    pub reason: String,
}

/// Records refused on their merits during one call; the host sends them to
/// the dead-letter topic instead of retrying.
#[derive(Debug, Default)]
pub struct Rejects(Vec<Rejected>);

impl Rejects {
    /// Refuses the record at `index` of the batch being handled.
    pub fn reject(&mut self, index: usize, reason: impl fmt::Display) {
        self.0.push(Rejected {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            reason: reason.to_string(),
        });
    }

    /// The records refused so far, in the order they were (for a plugin's
    /// own tests).
    pub fn iter(&self) -> impl Iterator<Item = &Rejected> {
        self.0.iter()
    }
}

/// A plugin that brings records in.
pub trait Source: Sized + 'static {
    /// The plugin's config, parsed from `[connector.config]`.
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Starts the source. `resume_from` is the position stored with the last
    /// batch the broker holds, or `None` on a first start.
    fn open(config: Self::Config, ctx: &Context, resume_from: Option<&[u8]>)
    -> Result<Self, Error>;

    /// Writes at most `max_records` records into `out` and says where the
    /// source now is. Returning no record is fine; the host asks again later.
    ///
    /// `poll` may block waiting for data, as long as the data takes (a
    /// blocking `std::net` read is the natural way to write a network
    /// source): waiting does not count against the connector's `cpu` grant,
    /// which bounds computing only. When the host must stop, pause or swap
    /// the instance meanwhile, it interrupts the wait: a read with nothing
    /// to give fails (and a sleep ends
    /// early), and [`interrupted`] says true. Return then, with the records
    /// gathered so far or with the error (the host does not count it as a
    /// failure); keep the connection, it is still good. Do not wait with
    /// records in hand: return them (the host appends a batch as soon as a
    /// poll returns fewer records than asked for). See `wit/README.md`, "Waiting".
    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error>;

    /// Everything up to `position` is durably in the broker. Commits come
    /// in order, but not always before the next `poll`: the host may poll
    /// ahead while it stores the last batch.
    fn commit(&mut self, _position: &[u8]) -> Result<(), Error> {
        Ok(())
    }

    /// The host is stopping this instance.
    fn close(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A plugin that takes records out.
pub trait Sink: Sized + 'static {
    /// The plugin's config, parsed from `[connector.config]`.
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Starts the sink.
    fn open(config: Self::Config, ctx: &Context) -> Result<Self, Error>;

    /// Offsets this sink stored durably itself; the host resumes from these
    /// rather than from its own commits. Most sinks keep the default (none).
    fn stored_offsets(&self) -> Vec<StoredOffset> {
        Vec::new()
    }

    /// Writes one batch. Records refused on their merits go to `rejects`.
    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error>;

    /// Makes everything written so far durable. The host commits offsets only
    /// after this returns `Ok`.
    fn flush(&mut self) -> Result<(), Error>;

    /// The host is stopping this instance (after a final flush).
    fn close(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A plugin that changes, filters or enriches records.
pub trait Transform: Sized + 'static {
    /// The plugin's config, parsed from `[connector.config]`.
    type Config: DeserializeOwned + schemars::JsonSchema;

    /// Starts the transform.
    fn open(config: Self::Config, ctx: &Context) -> Result<Self, Error>;

    /// Reads `input` and writes the records to keep into `out`.
    fn process(
        &mut self,
        input: Batch<'_>,
        out: &mut BatchWriter,
        rejects: &mut Rejects,
    ) -> Result<(), Error>;

    /// The host is stopping this instance.
    fn close(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// Glue for the export macros; not part of the API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    pub use wit_bindgen;

    mod bindings {
        wit_bindgen::generate!({
            path: "../wit",
            world: "sluice:connector/imports",
        });
    }

    pub use bindings::sluice::connector::host;

    /// A config type whose JSON Schema can be derived.
    pub trait ConfigSchema: schemars::JsonSchema {}
    impl<T: schemars::JsonSchema> ConfigSchema for T {}

    /// The parts of a plugin's spec.
    #[derive(Debug)]
    pub struct Spec {
        pub name: String,
        pub version: String,
        pub description: String,
        pub config_schema: String,
    }

    pub fn spec<C: ConfigSchema>(name: &str, version: &str, description: &str) -> Spec {
        let schema = schemars::schema_for!(C);
        Spec {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            config_schema: serde_json::to_string(&schema)
                .unwrap_or_else(|e| format!("{{\"description\":\"schema failed: {e}\"}}")),
        }
    }

    fn config<C: DeserializeOwned>(json: &str) -> Result<C, Error> {
        serde_json::from_str(json).map_err(Error::invalid_config)
    }

    fn not_open() -> Error {
        Error::fatal("called before open succeeded")
    }

    fn with<T, R>(
        slot: &RefCell<Option<T>>,
        f: impl FnOnce(&mut T) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut slot = slot.borrow_mut();
        let instance = slot.as_mut().ok_or_else(not_open)?;
        f(instance)
    }

    /// Takes the instance out of its slot and closes it; closing twice, or
    /// before `open`, is fine.
    fn close<T>(
        slot: &RefCell<Option<T>>,
        close: impl FnOnce(&mut T) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match slot.borrow_mut().take() {
            Some(mut instance) => close(&mut instance),
            None => Ok(()),
        }
    }

    /// What a poll returns across the boundary.
    #[derive(Debug)]
    pub struct Polled {
        pub batch: Vec<u8>,
        pub position: Option<Vec<u8>>,
        pub end_of_stream: bool,
    }

    pub fn source_open<S: Source>(
        slot: &RefCell<Option<S>>,
        json: &str,
        ctx: &Context,
        resume_from: Option<&[u8]>,
    ) -> Result<(), Error> {
        let source = S::open(config(json)?, ctx, resume_from)?;
        *slot.borrow_mut() = Some(source);
        Ok(())
    }

    thread_local! {
        /// Size of the last batch polled: the next one starts with room
        /// for as much, rather than growing to it copy by copy.
        static LAST_POLL_BYTES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    pub fn source_poll<S: Source>(slot: &RefCell<Option<S>>, max: u32) -> Result<Polled, Error> {
        with(slot, |s| {
            let mut out = BatchWriter::with_capacity(LAST_POLL_BYTES.get());
            let poll = s.poll(&mut out, max as usize)?;
            LAST_POLL_BYTES.set(out.encoded_len());
            Ok(Polled {
                batch: out.finish(),
                position: poll.position,
                end_of_stream: poll.end_of_stream,
            })
        })
    }

    pub fn source_commit<S: Source>(
        slot: &RefCell<Option<S>>,
        position: &[u8],
    ) -> Result<(), Error> {
        with(slot, |s| s.commit(position))
    }

    pub fn source_close<S: Source>(slot: &RefCell<Option<S>>) -> Result<(), Error> {
        close(slot, S::close)
    }

    pub fn sink_open<S: Sink>(
        slot: &RefCell<Option<S>>,
        json: &str,
        ctx: &Context,
    ) -> Result<Vec<StoredOffset>, Error> {
        let sink = S::open(config(json)?, ctx)?;
        let offsets = sink.stored_offsets();
        *slot.borrow_mut() = Some(sink);
        Ok(offsets)
    }

    pub fn sink_write<S: Sink>(
        slot: &RefCell<Option<S>>,
        origin: &Origin,
        batch: &[u8],
    ) -> Result<Vec<Rejected>, Error> {
        let batch = Batch::parse(batch)
            .map_err(|e| Error::fatal(format!("host sent a malformed batch: {e}")))?;
        with(slot, |s| {
            let mut rejects = Rejects::default();
            s.write(origin, batch, &mut rejects)?;
            Ok(rejects.0)
        })
    }

    pub fn sink_flush<S: Sink>(slot: &RefCell<Option<S>>) -> Result<(), Error> {
        with(slot, |s| s.flush())
    }

    pub fn sink_close<S: Sink>(slot: &RefCell<Option<S>>) -> Result<(), Error> {
        close(slot, S::close)
    }

    pub fn transform_open<T: Transform>(
        slot: &RefCell<Option<T>>,
        json: &str,
        ctx: &Context,
    ) -> Result<(), Error> {
        let t = T::open(config(json)?, ctx)?;
        *slot.borrow_mut() = Some(t);
        Ok(())
    }

    pub fn transform_process<T: Transform>(
        slot: &RefCell<Option<T>>,
        batch: &[u8],
    ) -> Result<(Vec<u8>, Vec<Rejected>), Error> {
        let batch = Batch::parse(batch)
            .map_err(|e| Error::fatal(format!("host sent a malformed batch: {e}")))?;
        with(slot, |t| {
            let mut out = BatchWriter::new();
            let mut rejects = Rejects::default();
            t.process(batch, &mut out, &mut rejects)?;
            Ok((out.finish(), rejects.0))
        })
    }

    pub fn transform_close<T: Transform>(slot: &RefCell<Option<T>>) -> Result<(), Error> {
        close(slot, T::close)
    }
}
