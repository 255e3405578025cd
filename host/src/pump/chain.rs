//! A chain of transforms on a source or a sink (`transforms = [...]`,
//! Kafka Connect's single message transforms): each batch goes through
//! every step in order, between the plugin and the log, in the pump of the
//! connector's instance. The steps live and die with that instance: opened
//! when it opens, restarted with it, closed when it ends.
//!
//! A step may drop, change, add and refuse records (a sink's chain may not
//! add: see `SinkPump`). What a step refuses is handed back with the step's
//! name and the record, for the pump to dead-letter in the same write as
//! what it stores.

use std::sync::Arc;

use sluice_batch::{Batch, RecordRef};

use super::{Retry, StopSignal, interruptible};
use crate::manifest::RestartPolicy;
use crate::plugin::{PluginError, Processed, Refused, TransformInstance};

/// One step of a chain: a `[[transform]]`'s instance.
#[derive(Debug)]
pub struct ChainStep {
    /// The `[[transform]]`'s name.
    pub name: Arc<str>,
    /// Its instance, opened.
    pub instance: TransformInstance,
}

/// The steps of a connector instance's chain, in order (none: no chain).
#[derive(Debug, Default)]
pub struct Chain {
    /// The steps.
    pub steps: Vec<ChainStep>,
}

/// What came out of the last step.
#[derive(Debug)]
pub(crate) struct Chained {
    /// The batch.
    pub(crate) batch: Vec<u8>,
    /// Its records.
    pub(crate) records: u32,
    /// Their values' size.
    pub(crate) value_bytes: u64,
}

impl Chain {
    /// True without steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs `batch` (of `records`, their values `value_bytes` long) through
    /// every step in order, retrying a step's `retriable` errors in place by
    /// `retry`. Each record a step refuses goes to `refused` with the step's
    /// place in the chain and name, and the record's index in that step's
    /// input and the record. `None`: stopped while a step waited; nothing of
    /// the batch may be stored.
    pub(crate) async fn run(
        &mut self,
        mut batch: Vec<u8>,
        mut records: u32,
        mut value_bytes: u64,
        stop: &StopSignal,
        retry: RestartPolicy,
        mut refused: impl FnMut(usize, &str, usize, RecordRef<'_>, &str),
    ) -> anyhow::Result<Option<Chained>> {
        for (k, step) in self.steps.iter_mut().enumerate() {
            let mut tries = Retry::new(retry);
            let done = loop {
                let interrupt = step.instance.interrupter();
                let call = step.instance.process(&batch, records);
                // Only a stop interrupts: the batch was polled (or read)
                // whole, and a pause or swap waits for its end.
                let tried = interruptible(call, stop, None, &interrupt).await;
                if interrupt.is_raised() && tried.as_ref().is_err_and(PluginError::is_returned) {
                    return Ok(None);
                }
                let settled = tries.settle(tried, "process", stop).await.map_err(|e| {
                    anyhow::Error::new(e).context(format!("transform {:?}", step.name))
                })?;
                if let Some(done) = settled {
                    break done;
                }
            };
            let Processed {
                batch: output,
                records: out_records,
                value_bytes: out_bytes,
                refused: step_refused,
            } = done;
            if !step_refused.is_empty() {
                each_refused(&batch, &step_refused, |index, record, reason| {
                    refused(k, &step.name, index, record, reason);
                })?;
            }
            (batch, records, value_bytes) = (output, out_records, out_bytes);
        }
        Ok(Some(Chained {
            batch,
            records,
            value_bytes,
        }))
    }

    /// Closes every step; a step that fails to close is said, not fatal.
    pub(crate) async fn close(&mut self) {
        for step in &mut self.steps {
            if let Err(e) = step.instance.close().await {
                tracing::warn!(transform = %step.name, error = %e, "a transform of the chain failed to close");
            }
        }
    }
}

/// Calls `each` with the index of every record of `batch` that `refused`
/// names (each once: the instance checked it), the record and its reason.
fn each_refused(
    batch: &[u8],
    refused: &[Refused],
    mut each: impl FnMut(usize, RecordRef<'_>, &str),
) -> anyhow::Result<()> {
    let mut by_index: Vec<&Refused> = refused.iter().collect();
    by_index.sort_by_key(|r| r.index);
    let mut next = by_index.into_iter().peekable();
    for (index, record) in Batch::parse(batch)?.iter().enumerate() {
        if let Some(r) = next.next_if(|r| r.index as usize == index) {
            each(index, record, &r.reason);
        }
    }
    Ok(())
}
