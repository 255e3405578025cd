//! What the brokers' tests share: batches of numbered values, and the
//! values read back.

#![allow(clippy::unwrap_used)]

use sluice_batch::{Batch, BatchWriter};

use super::StoredBatch;

/// A batch of the values `value-<from>` to `value-<from + n - 1>`.
pub fn batch(from: u32, n: u32) -> Vec<u8> {
    let mut w = BatchWriter::new();
    for i in from..from + n {
        w.push_value(format!("value-{i:05}").as_bytes());
    }
    w.finish()
}

/// The values of `batches`, in order.
pub fn values(batches: &[StoredBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            Batch::parse(&b.bytes)
                .unwrap()
                .iter()
                .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}
