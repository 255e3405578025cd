//! The NATS client's side of the broker: waiting on its runtime from any
//! thread, its errors as [`BrokerError`]s, the KV buckets, writer ids.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::jetstream::{self, kv, stream};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::super::BrokerError;

/// What went wrong, as a [`BrokerError`].
pub(super) fn failed(what: impl Into<String>) -> impl FnOnce(&dyn fmt::Display) -> BrokerError {
    let what = what.into();
    move |why| BrokerError::Nats {
        what,
        why: why.to_string(),
    }
}

pub(super) fn nats_err<E: fmt::Display>(what: impl Into<String>) -> impl FnOnce(E) -> BrokerError {
    let f = failed(what);
    move |e| f(&e)
}

/// A number no other broker opened on this or another host is likely to
/// have: the clock's nanoseconds, the process and a counter, mixed.
pub(super) fn writer_id() -> u64 {
    static OPENED: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed =
        nanos ^ (u64::from(std::process::id()) << 32) ^ OPENED.fetch_add(1, Ordering::Relaxed);
    // SplitMix64's finalizer: close inputs give unrelated ids.
    let mut z = mixed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Runs `fut` on `handle`'s runtime and waits for it, from any thread: on a
/// multi-threaded runtime's worker, the worker is handed off first.
pub(super) fn wait<T: Send + 'static>(
    handle: &Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let recv = move || rx.recv().expect("the NATS client's runtime runs");
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(recv)
        }
        _ => recv(),
    }
}

/// The KV bucket `name`, made if it is not there.
pub(super) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    what: &str,
    replicas: usize,
) -> Result<kv::Store, BrokerError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream, made as the client's `create_key_value` makes
    // it, without the account query that comes first there: its answer
    // does not parse from servers before 2.10 (Debian's 2.9).
    let making = format!("making the KV bucket {name}");
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        description: Some(format!("Sluice: {what}")),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(nats_err(making.clone()))?;
    js.get_key_value(name).await.map_err(nats_err(making))
}
