//! A full disk: the log refuses writes (sources wait, sinks hold their
//! commits, nothing is dropped), says so once, and says once when writes
//! succeed again.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Inner;
use crate::broker::BrokerError;

/// Since when writes have failed for want of space, and the largest write
/// that failed.
#[derive(Debug)]
pub(super) struct Full {
    since: Instant,
    needed: u64,
}

/// Passes `result` of a write of `bytes` through, saying once when writes
/// start failing for want of space, and once when they succeed again. Only
/// a write at least as large as one that failed counts as space being back:
/// a small commit may fit where a batch does not.
pub(super) fn space<T>(
    inner: &Inner,
    bytes: u64,
    result: Result<T, BrokerError>,
) -> Result<T, BrokerError> {
    match &result {
        Err(e) if e.is_disk_full() => {
            let mut full = inner.full.lock().expect("disk-full lock");
            match &mut *full {
                Some(f) => f.needed = f.needed.max(bytes),
                None => {
                    *full = Some(Full {
                        since: Instant::now(),
                        needed: bytes,
                    });
                    inner.full_flag.store(true, Ordering::Relaxed);
                    tracing::error!(
                        data_dir = %inner.dir.display(),
                        error = %e,
                        "the disk is full: the log refuses writes, so sources wait and sinks hold \
                         their commits; nothing is dropped. Free space and the flow resumes by itself"
                    );
                }
            }
        }
        Ok(_) if inner.full_flag.load(Ordering::Relaxed) => {
            let mut full = inner.full.lock().expect("disk-full lock");
            if let Some(f) = full.take_if(|f| bytes >= f.needed) {
                inner.full_flag.store(false, Ordering::Relaxed);
                tracing::info!(
                    data_dir = %inner.dir.display(),
                    "disk space is back: writes resumed after {:.1}s",
                    f.since.elapsed().as_secs_f64()
                );
            }
        }
        _ => {}
    }
    result
}
