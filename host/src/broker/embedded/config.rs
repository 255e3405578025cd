//! The embedded log's settings, from a manifest's `[broker]` and `[topics]`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::manifest::{FsyncPolicy, Manifest, TopicPolicy};

/// Settings of an [`EmbeddedLog`].
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// When to sync.
    pub fsync: FsyncPolicy,
    /// Period of the background sync under [`FsyncPolicy::Interval`].
    pub fsync_interval: Duration,
    /// Roll segments at this size.
    pub segment_bytes: u64,
    /// Partitions, retention and backlog of topics not in `policies`.
    pub default_policy: TopicPolicy,
    /// Those of topics named in the manifest.
    pub policies: BTreeMap<String, TopicPolicy>,
}

impl LogConfig {
    /// The settings a manifest gives.
    pub fn from_manifest(m: &Manifest) -> Self {
        let (default_policy, policies) = m.topic_policies();
        LogConfig {
            fsync: m.broker.fsync,
            fsync_interval: Duration::from_millis(m.broker.fsync_interval_ms),
            segment_bytes: m.broker.segment_bytes,
            default_policy,
            policies,
        }
    }

    /// The settings of a manifest with no `[broker]` or `[topics]`.
    pub fn defaults() -> Self {
        let b = crate::manifest::BrokerConfig::default();
        LogConfig {
            fsync: b.fsync,
            fsync_interval: Duration::from_millis(b.fsync_interval_ms),
            segment_bytes: b.segment_bytes,
            default_policy: TopicPolicy {
                partitions: b.partitions,
                ..TopicPolicy::default()
            },
            policies: BTreeMap::new(),
        }
    }

    pub(super) fn policy(&self, topic: &str) -> TopicPolicy {
        self.policies
            .get(topic)
            .copied()
            .unwrap_or(self.default_policy)
    }
}
