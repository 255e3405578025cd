//! One life of an instance, as [`crate::supervisor::supervise`] runs it
//! again after each failure: a source opens at the position stored with its
//! last batch, a sink at the offsets it stored itself or its group's; each
//! then runs its pump. And [`HostParts`], what every instance shares with
//! the rest of the host.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;

use super::seals::Seals;
use crate::broker::Broker;
use crate::broker::HostBroker;
use crate::check::CheckedConnector;
use crate::grants::GrantSet;
use crate::manifest::ConnectorKind;
use crate::plugin::instance::SinkOffset;
use crate::plugin::{InstanceSetup, Plugin, PluginHost, SourceInstance};
use crate::pump::transform::decode_offsets;
use crate::pump::{
    Assignment, DeadLetter, Destination, HybridPosition, InstanceControl, InstanceState, PumpStats,
    SinkPump, SinkPumpConfig, SourceEnd, SourcePump, SourcePumpConfig, TransformPump,
    TransformPumpConfig,
};
use crate::pump::{Chain, ChainStep};
use crate::secrets::Redactor;
use crate::supervisor::{Life, LifeEnd};

/// Makes the counters of one instance of a connector (named, of a kind).
pub type StatsFactory = Arc<dyn Fn(&str, ConnectorKind) -> PumpStats + Send + Sync>;

/// What a connector's instances share with the rest of the host.
#[derive(Clone)]
pub struct HostParts {
    /// Loads and instantiates plugins.
    pub plugins: Arc<PluginHost>,
    /// The broker.
    pub broker: Arc<HostBroker>,
    /// Masks secrets in what the host says.
    pub redactor: Redactor,
    /// The seals of a bounded run (empty in the daemon).
    pub seals: Arc<Seals>,
    /// Makes a connector's per-instance counters (the daemon's record batch
    /// latency into its metrics).
    pub stats: StatsFactory,
}

impl std::fmt::Debug for HostParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostParts")
            .field("broker", &self.broker)
            .field("seals", &self.seals)
            .finish_non_exhaustive()
    }
}

/// Counters that record their batch latency nowhere (`sluice run`).
pub fn plain_stats() -> StatsFactory {
    Arc::new(|_, _| PumpStats::default())
}

/// What every life of one instance shares.
pub(super) struct Shared {
    pub(super) current: Arc<RwLock<Arc<CheckedConnector>>>,
    pub(super) host: HostParts,
    pub(super) setup: InstanceSetup,
    pub(super) control: Arc<InstanceControl>,
}

impl Shared {
    fn connector(&self) -> Arc<CheckedConnector> {
        self.current.read().expect("connector lock").clone()
    }
}

/// A source instance: each life opens at the position stored with the
/// last batch it appended, and runs the pump. A hybrid source's life runs
/// its bounded source until it ends, then its live source (see
/// [`crate::pump::HybridPosition`]), or only the live one once a live
/// batch is stored.
pub(super) struct SourceLife {
    pub(super) shared: Shared,
    pub(super) destination: Destination,
    pub(super) producer: String,
}

impl Life for SourceLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = s.connector();
        // In a cluster, another host may have run this instance meanwhile.
        s.host
            .broker
            .reopen_producer(&self.producer)
            .with_context(|| format!("reading the writes of {} again", self.producer))?;
        let resume = s
            .host
            .broker
            .source_position(&self.producer)
            .with_context(|| format!("reading the position of {}", self.producer))?;
        let Some(live) = &c.hybrid else {
            let instance = self
                .open(&c.plugin, &c.config_json, resume.as_deref(), "source")
                .await?;
            let (end, _) = self.pump(&c, instance, None).await?;
            return Ok(ended(end));
        };
        let mut at = match resume {
            Some(stored) => HybridPosition::decode(&self.producer, &stored)?,
            None => HybridPosition::default(),
        };
        if !at.live {
            let instance = self
                .open(
                    &c.plugin,
                    &c.config_json,
                    at.inner.as_deref(),
                    "bounded source",
                )
                .await?;
            match self.pump(&c, instance, Some(at)).await? {
                (SourceEnd::Stopped, _) => return Ok(LifeEnd::Stopped),
                (SourceEnd::EndOfStream, bounded) => {
                    let bounded = bounded.expect("a hybrid source's pump keeps its position");
                    at = HybridPosition {
                        live: true,
                        newest_ms: Some(bounded.switch_ms()),
                        inner: None,
                    };
                }
            }
            tracing::info!(
                switch_timestamp_ms = at.newest_ms,
                live = live.plugin.name(),
                "hybrid source: the bounded source ended; the live source starts from the hand-over"
            );
        }
        let config = live.config_json(at.newest_ms.unwrap_or_else(|| at.switch_ms()));
        let instance = self
            .open(&live.plugin, &config, at.inner.as_deref(), "live source")
            .await?;
        let (end, _) = self.pump(&c, instance, Some(at)).await?;
        Ok(ended(end))
    }
}

/// A source's life ended as its pump did.
fn ended(end: SourceEnd) -> LifeEnd {
    match end {
        SourceEnd::EndOfStream => {
            tracing::info!("source reached its end");
            LifeEnd::Finished
        }
        SourceEnd::Stopped => LifeEnd::Stopped,
    }
}

impl SourceLife {
    /// Instantiates `plugin` and opens it with `config` at `resume`.
    async fn open(
        &self,
        plugin: &Plugin,
        config: &str,
        resume: Option<&[u8]>,
        what: &str,
    ) -> anyhow::Result<SourceInstance> {
        let s = &self.shared;
        let mut instance = s.host.plugins.source(plugin, &s.setup).await?;
        instance.open(config, resume).await.with_context(|| {
            format!(
                "opening {what} {:?} instance {}",
                s.setup.connector, s.setup.index
            )
        })?;
        Ok(instance)
    }

    /// Runs the pump of `instance` (with the connector's chain) until the
    /// source ends or the instance stops; a hybrid source's pump gives its
    /// position back.
    async fn pump(
        &self,
        c: &CheckedConnector,
        instance: SourceInstance,
        hybrid: Option<HybridPosition>,
    ) -> anyhow::Result<(SourceEnd, Option<HybridPosition>)> {
        let s = &self.shared;
        let chain = open_chain(s, c).await?;
        let dead_letter = if chain.is_empty() {
            None
        } else {
            Some(dead_letter(s, c)?)
        };
        s.control.set_state(InstanceState::Running);
        let pump = SourcePump {
            instance,
            broker: s.host.broker.clone(),
            destination: self.destination.clone(),
            routes: HashMap::new(),
            spare: Vec::new(),
            producer: self.producer.clone(),
            config: SourcePumpConfig {
                max_records: c.config.batch.max_records,
                max_bytes: c
                    .config
                    .batch
                    .max_bytes
                    .min(s.host.broker.max_append_bytes()),
                linger: Duration::from_millis(c.config.batch.linger_ms),
                retry: c.restart,
            },
            stats: s.control.stats.clone(),
            stop: s.control.stop.clone(),
            control: s.control.clone(),
            chain,
            dead_letter,
            hybrid,
        };
        pump.run().await
    }
}

/// A sink instance: each life opens, resumes from the offsets the sink
/// stored itself or else its group's committed offsets, and runs the pump.
pub(super) struct SinkLife {
    pub(super) shared: Shared,
    pub(super) seals: Arc<Seals>,
    /// Set after an offsets reset: the group's offsets win, once.
    pub(super) ignore_stored: bool,
}

impl Life for SinkLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = s.connector();
        let name = c.config.name.get_ref();
        let index = s.setup.index;
        let mut instance = s.host.plugins.sink(&c.plugin, &s.setup).await?;
        let mut stored = instance
            .open(&c.config_json)
            .await
            .with_context(|| format!("opening sink {name:?} instance {index}"))?;
        if std::mem::take(&mut self.ignore_stored) && !stored.is_empty() {
            tracing::info!(
                "the sink's own stored offsets are set aside once: its offsets were reset"
            );
            stored.clear();
        }
        let broker = &s.host.broker;
        let dead_letter = dead_letter(s, &c)?;
        let assignments = assignments(s, &self.seals, &c, &stored)?;
        if assignments.is_empty() {
            tracing::info!("no partition left for this instance; it stays idle");
            return Ok(LifeEnd::Finished);
        }
        s.control.set_state(InstanceState::Running);
        let pump = SinkPump {
            instance,
            broker: broker.clone(),
            group: name.clone(),
            assignments,
            config: SinkPumpConfig {
                max_bytes: c.config.batch.max_bytes,
                max_records: c.config.batch.max_records,
                flush_interval: Duration::from_millis(c.config.flush_interval_ms),
                retry: c.restart,
            },
            stats: s.control.stats.clone(),
            stop: s.control.stop.clone(),
            control: s.control.clone(),
            connector: s.setup.connector.clone(),
            dead_letter,
            chain: open_chain(s, &c).await?,
        };
        pump.run().await?;
        Ok(if s.control.stop.is_stopped() {
            LifeEnd::Stopped
        } else {
            tracing::info!("sink drained its topics");
            LifeEnd::Finished
        })
    }
}

/// A transform instance: each life opens, resumes from the input offsets
/// stored with its last output (else its group's committed offsets), and
/// runs the pump.
pub(super) struct TransformLife {
    pub(super) shared: Shared,
    pub(super) seals: Arc<Seals>,
    pub(super) output: Destination,
    pub(super) producer: String,
}

impl Life for TransformLife {
    async fn run(&mut self) -> anyhow::Result<LifeEnd> {
        let s = &self.shared;
        let c = s.connector();
        let name = c.config.name.get_ref();
        let index = s.setup.index;
        let broker = &s.host.broker;
        let mut instance = s.host.plugins.transform(&c.plugin, &s.setup).await?;
        broker
            .reopen_producer(&self.producer)
            .with_context(|| format!("reading the writes of {} again", self.producer))?;
        let stored: Vec<SinkOffset> = match broker
            .source_position(&self.producer)
            .with_context(|| format!("reading the input offsets of {}", self.producer))?
        {
            Some(p) => decode_offsets(&p)?
                .into_iter()
                .map(|(topic, partition, next_offset)| SinkOffset {
                    topic,
                    partition,
                    next_offset,
                })
                .collect(),
            None => Vec::new(),
        };
        instance
            .open(&c.config_json)
            .await
            .with_context(|| format!("opening transform {name:?} instance {index}"))?;
        let dead_letter = dead_letter(s, &c)?;
        let assignments = assignments(s, &self.seals, &c, &stored)?;
        if assignments.is_empty() {
            tracing::info!("no partition left for this instance; it stays idle");
            return Ok(LifeEnd::Finished);
        }
        s.control.set_state(InstanceState::Running);
        let pump = TransformPump {
            instance,
            broker: broker.clone(),
            group: name.clone(),
            producer: self.producer.clone(),
            assignments,
            output: self.output.clone(),
            routes: HashMap::new(),
            config: TransformPumpConfig {
                max_bytes: c
                    .config
                    .batch
                    .max_bytes
                    .min(s.host.broker.max_append_bytes()),
                max_records: c.config.batch.max_records,
                commit_interval: Duration::from_millis(c.config.flush_interval_ms),
                retry: c.restart,
            },
            stats: s.control.stats.clone(),
            stop: s.control.stop.clone(),
            control: s.control.clone(),
            connector: s.setup.connector.clone(),
            dead_letter,
        };
        pump.run().await?;
        Ok(if s.control.stop.is_stopped() {
            LifeEnd::Stopped
        } else {
            tracing::info!("transform drained its topics");
            LifeEnd::Finished
        })
    }
}

/// Opens an instance of each transform of the connector's chain, for one
/// life of one of its instances. A chain's transforms are granted nothing
/// (their configs may hold the connector's secrets, filled in by the check).
async fn open_chain(s: &Shared, c: &CheckedConnector) -> anyhow::Result<Chain> {
    let mut steps = Vec::with_capacity(c.chain.len());
    for t in &c.chain {
        let setup = InstanceSetup {
            grants: GrantSet::none(),
            state: None,
            ..s.setup.clone()
        };
        let mut instance = s.host.plugins.transform(&t.plugin, &setup).await?;
        instance
            .open(&t.config_json)
            .await
            .with_context(|| format!("opening transform {:?} of the chain", t.name))?;
        steps.push(ChainStep {
            name: t.name.as_str().into(),
            instance,
        });
    }
    Ok(Chain { steps })
}

/// The dead-letter topic of an instance, created if new.
fn dead_letter(s: &Shared, c: &CheckedConnector) -> anyhow::Result<DeadLetter> {
    let topic = c.config.dead_letter_topic();
    Ok(DeadLetter {
        partitions: s
            .host
            .broker
            .ensure_topic(&topic)
            .with_context(|| format!("creating dead-letter topic {topic:?}"))?,
        topic,
        connector: s.setup.connector.clone(),
        unsynced: Default::default(),
        stats: s.control.stats.clone(),
    })
}

/// The partitions a sink or transform instance reads (`p % parallelism ==
/// index`), each from the offset the plugin stored itself (a sink) or
/// that was stored with its output (a transform) or the group's committed
/// offset, whichever is further, else the start.
fn assignments(
    s: &Shared,
    seals: &Seals,
    c: &CheckedConnector,
    stored: &[SinkOffset],
) -> anyhow::Result<Vec<Assignment>> {
    let broker = &s.host.broker;
    let name = c.config.name.get_ref();
    let parallelism = s.setup.count;
    let mut assignments = Vec::new();
    for topic in c.config.topic_names() {
        let partitions = broker
            .ensure_topic(&topic)
            .with_context(|| format!("creating topic {topic:?}"))?;
        for partition in (0..partitions).filter(|p| p % parallelism == s.setup.index) {
            // In a cluster, another host may have run this instance
            // meanwhile: its committed offsets and dead letters.
            broker
                .reopen_partition(name, &topic, partition)
                .and_then(|()| broker.reopen_producer(&format!("{name}/dlq/{topic}/{partition}")))
                .with_context(|| format!("reading {topic}/{partition} again"))?;
            let committed = broker.committed_offset(name, &topic, partition);
            let own = stored
                .iter()
                .find(|o| o.topic == topic && o.partition == partition)
                .map(|o| o.next_offset);
            // What was stored with the output is never behind the group's
            // commits, unless another module delivered meanwhile (a sink
            // swapped out and back): those records are in that module's
            // output already. As a swap does, go on from the further.
            if let (Some(own), Some(committed)) = (own, committed)
                && own < committed
            {
                tracing::info!(
                    topic = %topic, partition, stored = own, committed,
                    "the offset stored with the output is behind the group's (another module \
                     delivered since); going on from the group's"
                );
            }
            let wanted = own.max(committed).unwrap_or(0);
            let end = broker.end_offset(&topic, partition)?;
            if wanted > end {
                tracing::warn!(
                    topic = %topic, partition, committed = wanted, end,
                    "the committed offset is past the end of the log (it lost data it had \
                     acknowledged, e.g. to a power loss under fsync = \"never\"); resuming at the end"
                );
            }
            assignments.push(Assignment {
                topic: topic.clone(),
                partition,
                next: wanted.min(end),
                seal: seals.seal(&topic),
            });
        }
    }
    Ok(assignments)
}
