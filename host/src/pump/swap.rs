//! A module swap, the step both pumps take between batches: the new
//! instance of the right kind comes out of its [`SwapRequest`], the pump
//! opens it its own way, and [`Swap::finish`] either puts it in the old
//! one's place and closes the old one, or lets the old one go on; either
//! way whoever asked is answered, with the pause the swap took (from when
//! the pump began to drain) or with why it did not happen.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::InstanceControl;
use crate::plugin::{
    Exports, Instance, PluginError, SinkInstance, SourceInstance, TransformInstance,
};

/// A module swap asked of one instance: the new instance (instantiated, not
/// yet opened) and where to say how it went.
#[derive(Debug)]
pub struct SwapRequest {
    /// The new instance.
    pub replacement: Replacement,
    /// The config document its `open` gets.
    pub config_json: String,
    /// The pause the swap took, or why the new instance did not open (the
    /// old one then runs on).
    pub done: oneshot::Sender<Result<Duration, String>>,
}

/// The new instance of a swap.
#[derive(Debug)]
pub enum Replacement {
    /// For a source instance.
    Source(SourceInstance),
    /// For a sink instance.
    Sink(SinkInstance),
    /// For a transform instance.
    Transform(TransformInstance),
}

impl Replacement {
    /// What kind of module it is, for a refusal.
    fn kind(&self) -> &'static str {
        match self {
            Replacement::Source(_) => "source",
            Replacement::Sink(_) => "sink",
            Replacement::Transform(_) => "transform",
        }
    }
}

/// A swap's new instance of the wrong kind: what to answer.
fn wrong_kind(new: &Replacement, of: &str) -> String {
    format!("a {} module cannot replace a {of}", new.kind())
}

impl TryFrom<Replacement> for SourceInstance {
    type Error = String;

    fn try_from(replacement: Replacement) -> Result<Self, Self::Error> {
        match replacement {
            Replacement::Source(new) => Ok(new),
            other => Err(wrong_kind(&other, "source")),
        }
    }
}

impl TryFrom<Replacement> for SinkInstance {
    type Error = String;

    fn try_from(replacement: Replacement) -> Result<Self, Self::Error> {
        match replacement {
            Replacement::Sink(new) => Ok(new),
            other => Err(wrong_kind(&other, "sink")),
        }
    }
}

impl TryFrom<Replacement> for TransformInstance {
    type Error = String;

    fn try_from(replacement: Replacement) -> Result<Self, Self::Error> {
        match replacement {
            Replacement::Transform(new) => Ok(new),
            other => Err(wrong_kind(&other, "transform")),
        }
    }
}

/// A swap a pump has taken, with its new instance not yet opened.
pub(crate) struct Swap<I> {
    /// The new instance; the pump opens it.
    pub(crate) new: I,
    /// The config document its `open` gets.
    pub(crate) config_json: String,
    /// When the pump began to drain: the start of the swap's pause.
    began: Instant,
    done: oneshot::Sender<Result<Duration, String>>,
}

impl<I: TryFrom<Replacement, Error = String>> Swap<I> {
    /// Between batches: the next swap to make, waiting while the connector
    /// is paused (see [`InstanceControl::next_swap`]); `None` once neither
    /// is asked. A request whose new instance is of another kind is answered
    /// as refused, and the old instance goes on.
    pub(crate) async fn next(control: &InstanceControl, since: &mut Instant) -> Option<Self> {
        loop {
            let SwapRequest {
                replacement,
                config_json,
                done,
            } = control.next_swap(since).await?;
            match I::try_from(replacement) {
                Ok(new) => {
                    return Some(Swap {
                        new,
                        config_json,
                        began: *since,
                        done,
                    });
                }
                Err(why) => answer(*since, done, Err(why)),
            }
        }
    }
}

impl<A: Exports> Swap<Instance<A>> {
    /// Ends the swap once the pump has tried to open the new instance. If
    /// it did not open, the old one goes on as if nothing happened. If it
    /// did, unless whoever asked has given up meanwhile (and may have
    /// swapped other instances back), it takes `current`'s place, the old
    /// one is closed, and `adopt` gets what the new one's `open` returned
    /// before the swap is answered.
    pub(crate) async fn finish<O>(
        self,
        current: &mut Instance<A>,
        opened: Result<O, PluginError>,
        adopt: impl FnOnce(O),
    ) {
        let Swap {
            new,
            config_json: _,
            began,
            done,
        } = self;
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(error = %e, "the new module did not open; the old one goes on");
                return answer(began, done, Err(e.to_string()));
            }
        };
        if let Some(old) = switch(current, new, &done).await {
            adopt(opened);
            answer(began, done, Ok(()));
            // Dropped after answering: dropping a store unmaps its memory,
            // which need not be in the pause.
            drop(old);
        }
    }
}

/// Answers a swap whose pause began at `began`.
fn answer(
    began: Instant,
    done: oneshot::Sender<Result<Duration, String>>,
    outcome: Result<(), String>,
) {
    let _ = done.send(outcome.map(|()| began.elapsed()));
}

/// The end of a swap whose new instance has opened: unless whoever asked
/// has given up meanwhile, the new instance takes `current`'s place and the
/// old one is closed. Returns the old instance, closed, if it switched. If
/// it did not switch, the new instance is closed and `current` goes on.
async fn switch<A: Exports>(
    current: &mut Instance<A>,
    mut new: Instance<A>,
    done: &oneshot::Sender<Result<Duration, String>>,
) -> Option<Instance<A>> {
    if done.is_closed() {
        tracing::warn!("the swap was withdrawn while the new module opened; the old one goes on");
        if let Err(e) = new.close().await {
            tracing::warn!(error = %e, "closing the withdrawn module failed");
        }
        return None;
    }
    let mut old = std::mem::replace(current, new);
    if let Err(e) = old.close().await {
        tracing::warn!(error = %e, "the old module failed to close after the swap");
    }
    tracing::info!("module swapped");
    Some(old)
}
