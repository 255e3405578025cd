//! `/metrics`: every connector's counters in the Prometheus text format,
//! through the `metrics` crate's Prometheus exporter (used as a local
//! recorder: nothing global, nothing listening on its own).
//!
//! Counters are cumulative over the daemon's run (a connector's stop and
//! start do not reset them). A deleted connector's series leave the
//! exposition two minutes later. (One created again under the same name
//! before then shows its old counters until its new ones pass them.) Batch latency is recorded by the pumps as it
//! happens; the rest is read from the connectors' reports at each scrape.

use std::sync::Arc;

use metrics::{Key, Label, Metadata, Recorder as _, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use metrics_util::MetricKindMask;

use crate::manifest::ConnectorKind;
use crate::pump::PumpStats;
use crate::supervisor::{ConnectorReport, StatsFactory};

const RECORDS: &str = "sluice_connector_records_total";
const BYTES: &str = "sluice_connector_bytes_total";
const DEAD_LETTERED: &str = "sluice_connector_dead_lettered_total";
const RESTARTS: &str = "sluice_connector_restarts_total";
const ERRORS: &str = "sluice_connector_errors_total";
const LAG: &str = "sluice_connector_lag_records";
const UP: &str = "sluice_connector_up";
const BATCH: &str = "sluice_connector_batch_seconds";

/// A deleted connector's counters and gauges leave the exposition after
/// this long without a scrape setting them.
const FORGET_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Counters summed over a connector's runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    /// Records moved.
    pub records: u64,
    /// Value bytes moved.
    pub bytes: u64,
    /// Records dead-lettered.
    pub refused: u64,
    /// Instance restarts after failures.
    pub restarts: u64,
}

impl Totals {
    /// The counters of one run.
    pub(crate) fn of(r: &ConnectorReport) -> Totals {
        Totals {
            records: r.records(),
            bytes: r.bytes(),
            refused: r.refused(),
            restarts: u64::from(r.restarts()),
        }
    }

    /// Both runs' counters summed.
    pub(crate) fn plus(self, o: Totals) -> Totals {
        Totals {
            records: self.records + o.records,
            bytes: self.bytes + o.bytes,
            refused: self.refused + o.refused,
            restarts: self.restarts + o.restarts,
        }
    }
}

/// One connector, as a scrape sees it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: ConnectorKind,
    /// Its status state.
    pub state: String,
    /// Counters over its runs.
    pub totals: Totals,
    /// A sink's lag.
    pub lag: Option<u64>,
    /// Instances failed for good.
    pub failed_instances: u64,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty set of metrics with their descriptions.
    pub fn new() -> Self {
        // Every scrape sets the counters and gauges of every connector, so
        // those not set for a while belong to deleted connectors.
        let recorder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("the buckets are not empty")
            .idle_timeout(
                MetricKindMask::COUNTER | MetricKindMask::GAUGE,
                Some(FORGET_AFTER),
            )
            .build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, help.into());
        };
        describe(
            RECORDS,
            None,
            "Records moved: appended to the topic by a source, taken from its topics by a sink.",
        );
        describe(BYTES, Some(Unit::Bytes), "Value bytes moved.");
        describe(
            DEAD_LETTERED,
            None,
            "Records a sink refused, sent to its dead-letter topic.",
        );
        describe(RESTARTS, None, "Instance restarts after failures.");
        describe(
            ERRORS,
            None,
            "Instance failures: restarted ones and those that failed for good.",
        );
        recorder.describe_gauge(
            LAG.into(),
            None,
            "Records in a sink's topics its group has not committed.".into(),
        );
        recorder.describe_gauge(
            UP.into(),
            None,
            "1 while the connector runs (or is paused), else 0.".into(),
        );
        recorder.describe_histogram(BATCH.into(), Some(Unit::Seconds), "Time from taking a batch to handing it on: poll to append (source), read to write (sink).".into());
        Metrics {
            recorder: Arc::new(recorder),
        }
    }

    /// Counters whose batch latency goes into this connector's histogram.
    pub fn stats_factory(&self) -> StatsFactory {
        let recorder = self.recorder.clone();
        Arc::new(move |name: &str, _kind: ConnectorKind| {
            let key = Key::from_parts(BATCH, vec![Label::new("connector", name.to_owned())]);
            PumpStats::with_histogram(recorder.register_histogram(&key, &METADATA))
        })
    }

    /// The exposition, with every row's counters brought up to date.
    pub fn render(&self, rows: &[Row]) -> String {
        for row in rows {
            let labels = || {
                vec![
                    Label::new("connector", row.name.clone()),
                    Label::new("kind", row.kind.to_string()),
                ]
            };
            let counter = |name: &'static str, value: u64| {
                self.recorder
                    .register_counter(&Key::from_parts(name, labels()), &METADATA)
                    .absolute(value);
            };
            counter(RECORDS, row.totals.records);
            counter(BYTES, row.totals.bytes);
            counter(DEAD_LETTERED, row.totals.refused);
            counter(RESTARTS, row.totals.restarts);
            counter(ERRORS, row.totals.restarts + row.failed_instances);
            let up = matches!(row.state.as_str(), "running" | "paused");
            self.recorder
                .register_gauge(&Key::from_parts(UP, labels()), &METADATA)
                .set(if up { 1.0 } else { 0.0 });
            if let Some(lag) = row.lag {
                self.recorder
                    .register_gauge(&Key::from_parts(LAG, labels()), &METADATA)
                    .set(lag as f64);
            }
        }
        self.recorder.handle().render()
    }
}
