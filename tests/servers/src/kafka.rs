//! A Kafka cluster of the test's own: librdkafka's mock cluster (the
//! `rdkafka` crate's `mocking` module, librdkafka built from the crate's
//! bundled source), in this process, its brokers listening on 127.0.0.1
//! ports of their own. It speaks the Kafka protocol (produce, fetch,
//! offsets, idempotent and transactional producers, consumer groups) and
//! can fail requests or go down on demand. It keeps everything in memory,
//! **at most 5 MiB a partition** (it drops the oldest batches beyond that:
//! keep a test's data under it, or compress it), and has no SASL, no
//! `CreateTopics` (make topics with [`MockKafka::create_topic`]), no
//! transaction markers for `read_committed` readers, and checks sequence
//! numbers only for transactional producers.
//!
//! Nothing to install: it is built with the tests. [`confluent_kafka`]
//! finds the third-party client the tests check the wire against.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

pub use rdkafka::types::{RDKafkaApiKey as ApiKey, RDKafkaRespErr as ErrorCode};

/// A running mock cluster, gone when dropped.
pub struct MockKafka {
    cluster: MockCluster<'static, DefaultProducerContext>,
    brokers: i32,
}

impl std::fmt::Debug for MockKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockKafka")
            .field("bootstrap", &self.bootstrap())
            .field("brokers", &self.brokers)
            .finish()
    }
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers (ids 1..=brokers).
    pub fn start(brokers: i32) -> MockKafka {
        let cluster = MockCluster::new(brokers).expect("librdkafka's mock cluster starts");
        MockKafka { cluster, brokers }
    }

    /// `host:port,host:port…`: every broker, as `bootstrap.servers` takes it.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The brokers' addresses, each `127.0.0.1:port`.
    pub fn addrs(&self) -> Vec<String> {
        self.bootstrap().split(',').map(str::to_owned).collect()
    }

    /// Makes `topic` with `partitions` partitions, each on `replicas`
    /// brokers.
    pub fn create_topic(&self, topic: &str, partitions: i32, replicas: i32) {
        self.cluster
            .create_topic(topic, partitions, replicas)
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
    }

    /// Moves the leadership of `topic`'s `partition` to `broker`.
    pub fn set_leader(&self, topic: &str, partition: i32, broker: i32) {
        self.cluster
            .partition_leader(topic, partition, Some(broker))
            .unwrap_or_else(|e| panic!("move the leader of {topic}/{partition}: {e}"));
    }

    /// Fails the next requests of kind `api`, one error each, in order.
    pub fn fail_requests(&self, api: ApiKey, errors: &[ErrorCode]) {
        self.cluster.request_errors(api, errors);
    }

    /// Takes every broker down: connections are closed and refused.
    pub fn down(&self) {
        self.cluster.broker_down(-1).expect("brokers down");
    }

    /// Brings every broker back up.
    pub fn up(&self) {
        self.cluster.broker_up(-1).expect("brokers up");
    }
}

/// A Python interpreter that has `confluent_kafka` (Debian package
/// `python3-confluent-kafka`), or why there is none.
pub fn confluent_kafka() -> Result<std::path::PathBuf, String> {
    let python = std::path::PathBuf::from("/usr/bin/python3");
    let found = std::process::Command::new(&python)
        .args(["-c", "import confluent_kafka"])
        .output();
    match found {
        Ok(out) if out.status.success() => Ok(python),
        Ok(_) => Err(
            "no confluent_kafka for /usr/bin/python3 (Debian package python3-confluent-kafka)"
                .into(),
        ),
        Err(e) => Err(format!("no /usr/bin/python3 ({e}; Debian package python3)")),
    }
}
