//! Waiting is not computing.
//!
//! Every way a WASI plugin waits (for a socket, a timer, a stream) ends in
//! one of a few `wasi:io` calls: `poll`, `pollable.block`, and the streams'
//! `blocking-*` methods. The host links its own versions of `wasi:io/poll`
//! and `wasi:io/streams` over wasmtime-wasi's (which they call), to do two
//! things around each wait:
//!
//! - **time it**: the time a call spends waiting is added to
//!   [`Waits::waited`], and the `cpu` grant is checked against the call's
//!   time less its waits (see `sandbox.rs`). A source may block in `poll`
//!   for as long as its data takes to come.
//! - **interrupt it**: when the pump must stop, pause or swap while a call
//!   waits, it raises the instance's [`Interrupt`]. A wait under way (or
//!   begun later in the same call) then ends at once, a `poll` answering
//!   that everything is ready; a read of an input stream that has nothing
//!   to give (a quiet socket) fails (wasi-libc makes it `EIO`), while a
//!   read of data already there (a file, a socket's buffer) still gets it;
//!   the contract's `interrupted` says true, so the plugin can tell this
//!   from a broken connection. A read of a file is never interrupted: it
//!   does not wait for anyone, and failing it would hand a plugin reading
//!   a file (through `read-via-stream`, as wasi-libc does) an error for a
//!   file that is fine; the host links its own `read-via-stream` to know
//!   which streams read files. Likewise a write to a stream with no room
//!   (a peer that does not read) fails instead of waiting. The plugin returns from its call, and the
//!   pump goes on to stop, pause or swap. The next call starts with the
//!   interrupt lowered.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{Result, StoreContextMut};
use wasmtime_wasi::filesystem::WasiFilesystemView as _;
use wasmtime_wasi::p2::bindings::filesystem::types::{Descriptor, ErrorCode, HostDescriptor};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi_io::bindings::wasi::io::{error, poll, streams};

use super::HostState;

/// Asks an instance's current call to stop waiting. Cheap to clone; the
/// clones share one switch.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<Switch>);

#[derive(Debug, Default)]
struct Switch {
    raised: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Interrupt {
    /// Ends the waits of the call under way, and any it begins later.
    pub fn raise(&self) {
        self.0.raised.store(true, Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// True once raised, until the next call starts.
    pub fn is_raised(&self) -> bool {
        self.0.raised.load(Ordering::Acquire)
    }

    /// Lowers it: a new call starts.
    pub(crate) fn lower(&self) {
        self.0.raised.store(false, Ordering::Release);
    }

    /// Resolves once raised.
    async fn raised(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_raised() {
                return;
            }
            notified.await;
        }
    }

    /// The error an interrupted read, or wait for room to write, gives the
    /// plugin.
    fn error() -> StreamError {
        StreamError::LastOperationFailed(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the host interrupted the wait: the connector is stopping, pausing or swapping",
            )
            .into(),
        )
    }
}

/// What `wasi:io` sees of an instance: its resource table, its interrupt,
/// and the time its current call has spent waiting.
/// The input streams of an instance that read files, by rep: their reads
/// are not interrupted.
#[derive(Debug, Default)]
pub(crate) struct FileStreams(HashSet<u32>);

pub(crate) struct Waits<'a> {
    table: &'a mut ResourceTable,
    interrupt: &'a Interrupt,
    waited: &'a mut Duration,
    file_streams: &'a mut FileStreams,
}

impl<'a> Waits<'a> {
    pub(crate) fn new(
        table: &'a mut ResourceTable,
        interrupt: &'a Interrupt,
        waited: &'a mut Duration,
        file_streams: &'a mut FileStreams,
    ) -> Self {
        Waits {
            table,
            interrupt,
            waited,
            file_streams,
        }
    }

    /// Whether `stream` reads a file.
    fn reads_a_file(&self, stream: &Resource<DynInputStream>) -> bool {
        self.file_streams.0.contains(&stream.rep())
    }

    /// Runs `wait` on the table, timed, and ended early (with `interrupted`)
    /// if the interrupt is raised.
    async fn wait<T>(
        &mut self,
        interrupted: impl FnOnce() -> T,
        wait: impl AsyncFnOnce(&mut ResourceTable) -> T,
    ) -> T {
        if self.interrupt.is_raised() {
            return interrupted();
        }
        let interrupt = self.interrupt.clone();
        self.timed(async |t: &mut ResourceTable| {
            tokio::select! {
                out = wait(t) => out,
                () = interrupt.raised() => interrupted(),
            }
        })
        .await
    }

    /// Runs `wait` on the table, its time added to the call's waits.
    async fn timed<T>(&mut self, wait: impl AsyncFnOnce(&mut ResourceTable) -> T) -> T {
        let started = Instant::now();
        let out = wait(self.table).await;
        *self.waited += started.elapsed();
        out
    }
}

struct WasiIoWaits;

impl HasData for WasiIoWaits {
    type Data<'a> = Waits<'a>;
}

/// Links the host's `wasi:io/poll` and `wasi:io/streams` over those
/// `wasmtime_wasi::p2::add_to_linker_async` added.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> Result<()> {
    linker.allow_shadowing(true);
    error::add_to_linker::<HostState, WasiIoWaits>(linker, HostState::waits)?;
    poll::add_to_linker::<HostState, WasiIoWaits>(linker, HostState::waits)?;
    streams::add_to_linker::<HostState, WasiIoWaits>(linker, HostState::waits)?;
    linker
        .instance("wasi:filesystem/types@0.2.12")?
        .func_wrap("[method]descriptor.read-via-stream", read_via_stream)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// wasmtime-wasi's `read-via-stream`, noting that the stream reads a file.
fn read_via_stream(
    mut store: StoreContextMut<'_, HostState>,
    (fd, offset): (Resource<Descriptor>, u64),
) -> Result<(std::result::Result<Resource<DynInputStream>, ErrorCode>,)> {
    let state = store.data_mut();
    let opened = match HostDescriptor::read_via_stream(&mut state.filesystem(), fd, offset) {
        Ok(stream) => {
            state.file_streams.0.insert(stream.rep());
            Ok(stream)
        }
        Err(e) => Err(e.downcast()?),
    };
    Ok((opened,))
}

impl poll::Host for Waits<'_> {
    async fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> Result<Vec<u32>> {
        // Interrupted, everything is ready: the plugin looks, and finds its
        // reads failing and its timers early.
        let n = u32::try_from(pollables.len())?;
        self.wait(
            || Ok((0..n).collect()),
            async move |t: &mut ResourceTable| poll::Host::poll(t, pollables).await,
        )
        .await
    }
}

impl poll::HostPollable for Waits<'_> {
    async fn block(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        self.wait(
            || Ok(()),
            async |t: &mut ResourceTable| poll::HostPollable::block(t, pollable).await,
        )
        .await
    }

    async fn ready(&mut self, pollable: Resource<DynPollable>) -> Result<bool> {
        if self.interrupt.is_raised() {
            return Ok(true);
        }
        poll::HostPollable::ready(self.table, pollable).await
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

impl error::Host for Waits<'_> {}

impl error::HostError for Waits<'_> {
    fn drop(&mut self, err: Resource<streams::Error>) -> Result<()> {
        error::HostError::drop(self.table, err)
    }

    fn to_debug_string(&mut self, err: Resource<streams::Error>) -> Result<String> {
        error::HostError::to_debug_string(self.table, err)
    }
}

impl streams::Host for Waits<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, err)
    }
}

impl streams::HostInputStream for Waits<'_> {
    async fn drop(&mut self, stream: Resource<DynInputStream>) -> Result<()> {
        self.file_streams.0.remove(&stream.rep());
        streams::HostInputStream::drop(self.table, stream).await
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        let file = self.reads_a_file(&stream);
        let bytes = streams::HostInputStream::read(self.table, stream, len)?;
        if bytes.is_empty() && len > 0 && !file && self.interrupt.is_raised() {
            return Err(Interrupt::error());
        }
        Ok(bytes)
    }

    async fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        if self.reads_a_file(&stream) {
            return self
                .timed(async |t: &mut ResourceTable| {
                    streams::HostInputStream::blocking_read(t, stream, len).await
                })
                .await;
        }
        if self.interrupt.is_raised() {
            return streams::HostInputStream::read(self, stream, len);
        }
        // Ended while it waits for data, nothing has been read: what comes
        // later stays in the stream.
        self.wait(
            || Err(Interrupt::error()),
            async |t: &mut ResourceTable| {
                streams::HostInputStream::blocking_read(t, stream, len).await
            },
        )
        .await
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        let file = self.reads_a_file(&stream);
        let skipped = streams::HostInputStream::skip(self.table, stream, len)?;
        if skipped == 0 && len > 0 && !file && self.interrupt.is_raised() {
            return Err(Interrupt::error());
        }
        Ok(skipped)
    }

    async fn blocking_skip(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        if self.reads_a_file(&stream) {
            return self
                .timed(async |t: &mut ResourceTable| {
                    streams::HostInputStream::blocking_skip(t, stream, len).await
                })
                .await;
        }
        if self.interrupt.is_raised() {
            return streams::HostInputStream::skip(self, stream, len);
        }
        self.wait(
            || Err(Interrupt::error()),
            async |t: &mut ResourceTable| {
                streams::HostInputStream::blocking_skip(t, stream, len).await
            },
        )
        .await
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}

impl streams::HostOutputStream for Waits<'_> {
    async fn drop(&mut self, stream: Resource<DynOutputStream>) -> Result<()> {
        streams::HostOutputStream::drop(self.table, stream).await
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        // A stream with no room (a peer that does not read) would have the
        // plugin wait for room: interrupted, that wait fails instead.
        let room = streams::HostOutputStream::check_write(self.table, stream)?;
        if room == 0 && self.interrupt.is_raised() {
            return Err(Interrupt::error());
        }
        Ok(room)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        streams::HostOutputStream::write(self.table, stream, bytes)
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }

    // A blocking write is timed as a wait but not interrupted: ending it
    // half done would lose what it was writing.
    async fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        self.timed(async |t: &mut ResourceTable| {
            streams::HostOutputStream::blocking_write_and_flush(t, stream, bytes).await
        })
        .await
    }

    async fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        self.timed(async |t: &mut ResourceTable| {
            streams::HostOutputStream::blocking_write_zeroes_and_flush(t, stream, len).await
        })
        .await
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }

    async fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.timed(async |t: &mut ResourceTable| {
            streams::HostOutputStream::blocking_flush(t, stream).await
        })
        .await
    }

    fn splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.table, dest, src, len)
    }

    async fn blocking_splice(
        &mut self,
        dest: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        if self.interrupt.is_raised() {
            return streams::HostOutputStream::splice(self.table, dest, src, len);
        }
        self.timed(async |t: &mut ResourceTable| {
            streams::HostOutputStream::blocking_splice(t, dest, src, len).await
        })
        .await
    }
}
