//! A cluster, as a client sees it: the brokers (from the bootstrap list,
//! then from metadata), which broker leads each partition, a connection per
//! broker opened when first needed, and the requests a source and a sink
//! make, each sent to the partition's leader.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::ops::RangeInclusive;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FindCoordinatorRequest, GroupId, InitProducerIdRequest,
    ListOffsetsRequest, MetadataRequest, MetadataResponse, OffsetCommitRequest, OffsetFetchRequest,
    ProduceRequest, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Request, StrBytes};

use crate::conn::{Connection, Dial};
use crate::error::KafkaError;
use crate::sasl::Credentials;

/// What a record's reader may see of transactions: only committed
/// records (`ReadCommitted`, the default), or everything written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// Records of open or aborted transactions are not read.
    #[default]
    ReadCommitted,
    /// Every record, as written.
    ReadUncommitted,
}

impl Isolation {
    fn level(self) -> i8 {
        match self {
            Isolation::ReadCommitted => 1,
            Isolation::ReadUncommitted => 0,
        }
    }
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a partition stands, from metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The broker that leads it (-1 while none does).
    pub leader: i32,
    /// The leader's epoch.
    pub leader_epoch: i32,
}

/// An offset to look up with [`Client::list_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset the partition still holds.
    Earliest,
    /// The offset the next record will get (for `read_committed`, the
    /// last stable offset).
    Latest,
    /// The first offset whose timestamp is at or after this many
    /// milliseconds since the Unix epoch (the end, if none is).
    Timestamp(i64),
}

impl OffsetSpec {
    fn timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// One partition of a fetch's answer.
#[derive(Debug)]
pub struct Fetched {
    /// The partition.
    pub tp: TopicPartition,
    /// The offset it was fetched from.
    pub from: i64,
    /// Its error, if the broker answered one for this partition.
    pub error: Option<KafkaError>,
    /// The offset after the last record written.
    pub high_watermark: i64,
    /// The offset after the last record of a decided transaction.
    pub last_stable_offset: i64,
    /// (producer id, first offset) of each aborted transaction in range.
    pub aborted: Vec<(i64, i64)>,
    /// The record batches.
    pub records: Bytes,
}

/// The sizes and wait of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// How long a broker may wait for `min_bytes` to arrive.
    pub max_wait_ms: i32,
    /// The bytes a broker waits for before it answers.
    pub min_bytes: i32,
    /// The most a broker answers with.
    pub max_bytes: i32,
    /// The most a broker answers with for one partition.
    pub partition_max_bytes: i32,
}

impl Default for FetchLimits {
    fn default() -> Self {
        // The Java consumer's defaults: fetch.max.wait.ms, fetch.min.bytes,
        // fetch.max.bytes, max.partition.fetch.bytes.
        FetchLimits {
            max_wait_ms: 500,
            min_bytes: 1,
            max_bytes: 50 << 20,
            partition_max_bytes: 1 << 20,
        }
    }
}

/// Partitions (with what is asked of each) by the broker that leads them.
type ByLeader<T> = BTreeMap<i32, Vec<(TopicPartition, PartitionInfo, T)>>;

/// A partition's outcome of a produce: the offset its batch got, or the
/// error.
pub type Produced = (TopicPartition, Result<i64, KafkaError>);

/// A request's parts, with the broker's address and answer, or the error
/// that broke the exchange.
type Answer<R, P> = (P, Result<(String, <R as Request>::Response), KafkaError>);

/// Requests sent to their brokers whose answers are not yet read, and the
/// parts of those that could not be sent.
struct Scattered<R: Request, P> {
    failed: Vec<Answer<R, P>>,
    sent: Vec<(Sent, P)>,
}

impl<R: Request, P> std::fmt::Debug for Scattered<R, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scattered")
            .field("failed", &self.failed.len())
            .field("sent", &self.sent.iter().map(|s| s.0).collect::<Vec<_>>())
            .finish()
    }
}

/// Where a request went.
#[derive(Debug, Clone, Copy)]
struct Sent {
    broker: i32,
    /// The connection's [`Connection::serial`].
    serial: u64,
    version: i16,
    correlation: i32,
}

/// A fetch sent by [`Client::fetch_send`], to read with
/// [`Client::fetch_receive`], or dropped with the connections
/// ([`Client::disconnect`]): answers left owed on a connection would be
/// taken for a later request's.
#[derive(Debug)]
#[must_use = "the answers are read by `Client::fetch_receive`"]
pub struct FetchSent {
    leaderless: Vec<Fetched>,
    scattered: Scattered<FetchRequest, Vec<(TopicPartition, i64)>>,
}

/// A client of one cluster.
#[derive(Debug)]
pub struct Client<D: Dial> {
    dial: D,
    credentials: Option<Credentials>,
    bootstrap: Vec<String>,
    client_id: String,
    /// Broker id → `host:port`.
    brokers: BTreeMap<i32, String>,
    connections: HashMap<i32, Connection<D::Stream>>,
    /// Topic → its partitions, in order.
    topics: BTreeMap<String, Vec<PartitionInfo>>,
}

impl<D: Dial> Client<D> {
    /// A client that finds the cluster through `bootstrap` (`host:port`
    /// each); nothing is connected until the first request.
    pub fn new(dial: D, bootstrap: Vec<String>, client_id: &str) -> Self {
        Client {
            credentials: None,
            dial,
            bootstrap,
            client_id: client_id.to_owned(),
            brokers: BTreeMap::new(),
            connections: HashMap::new(),
            topics: BTreeMap::new(),
        }
    }

    /// Logs every connection in with SASL.
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// The topics known from the last metadata, with their partitions.
    pub fn topics(&self) -> &BTreeMap<String, Vec<PartitionInfo>> {
        &self.topics
    }

    /// Drops every connection (after an error that leaves their state
    /// unknown); the next request connects again.
    pub fn disconnect(&mut self) {
        self.connections.clear();
    }

    /// Asks for the metadata of `topics` (every topic, for `None`) and
    /// keeps it: brokers, partitions and their leaders. Topics that do not
    /// exist are left out.
    pub fn refresh_metadata(&mut self, topics: Option<&[String]>) -> Result<(), KafkaError> {
        let request = MetadataRequest::default()
            .with_topics(topics.map(|names| {
                names
                    .iter()
                    .map(|n| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                    })
                    .collect()
            }))
            .with_allow_auto_topic_creation(false);
        let (addr, response) = self.any_broker(|conn| {
            let version = conn.version::<MetadataRequest>(4..=9)?;
            conn.call(&request, version)
        })?;
        self.learn(&addr, response)
    }

    fn learn(&mut self, addr: &str, response: MetadataResponse) -> Result<(), KafkaError> {
        let brokers: BTreeMap<i32, String> = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", &*b.host, b.port)))
            .collect();
        // A broker that moved or left: its connection goes.
        self.connections
            .retain(|id, conn| brokers.get(id).is_some_and(|a| a == conn.addr()));
        self.brokers = brokers;
        for topic in response.topics {
            let Some(name) = topic.name else { continue };
            let name = name.0.to_string();
            match kafka_protocol::ResponseError::try_from_code(topic.error_code) {
                None => {}
                Some(kafka_protocol::ResponseError::UnknownTopicOrPartition) => {
                    self.topics.remove(&name);
                    continue;
                }
                Some(_) => {
                    KafkaError::check(addr, format!("Metadata for {name}"), topic.error_code)?;
                }
            }
            let mut partitions = vec![
                PartitionInfo {
                    leader: -1,
                    leader_epoch: -1
                };
                topic.partitions.len()
            ];
            for p in topic.partitions {
                let Ok(index) = usize::try_from(p.partition_index) else {
                    continue;
                };
                if index >= partitions.len() {
                    partitions.resize(
                        index + 1,
                        PartitionInfo {
                            leader: -1,
                            leader_epoch: -1,
                        },
                    );
                }
                partitions[index] = PartitionInfo {
                    leader: if p.error_code == 0 || p.leader_id.0 >= 0 {
                        p.leader_id.0
                    } else {
                        -1
                    },
                    leader_epoch: p.leader_epoch,
                };
            }
            self.topics.insert(name, partitions);
        }
        Ok(())
    }

    /// Runs `call` on a connection to some broker: one already open, else
    /// the known brokers and the bootstrap list in turn, until one answers.
    pub(crate) fn any_broker<T>(
        &mut self,
        mut call: impl FnMut(&mut Connection<D::Stream>) -> Result<T, KafkaError>,
    ) -> Result<(String, T), KafkaError> {
        let mut last = None;
        let open: Vec<i32> = self.connections.keys().copied().collect();
        for id in open {
            let conn = self.connections.get_mut(&id).expect("listed");
            match call(conn) {
                Ok(t) => return Ok((conn.addr().to_owned(), t)),
                Err(e) if e.is_interrupted() => return Err(e),
                Err(e) => {
                    self.connections.remove(&id);
                    last = Some(e);
                }
            }
        }
        let addrs: Vec<String> = self
            .brokers
            .values()
            .chain(self.bootstrap.iter())
            .cloned()
            .collect();
        for addr in addrs {
            let tried = self
                .dial
                .dial(&addr)
                .map_err(|e| KafkaError::io(&addr, e))
                .and_then(|stream| {
                    Connection::open(stream, &addr, &self.client_id, self.credentials.as_ref())
                })
                .and_then(|mut conn| call(&mut conn).map(|t| (conn, t)));
            match tried {
                Ok((conn, t)) => {
                    if let Some((&id, _)) = self.brokers.iter().find(|(_, a)| **a == addr) {
                        self.connections.insert(id, conn);
                    }
                    return Ok((addr, t));
                }
                Err(e) if e.is_interrupted() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| KafkaError::Unsupported("no bootstrap server".into())))
    }

    /// The connection to broker `id`, opened if need be.
    pub fn broker(&mut self, id: i32) -> Result<&mut Connection<D::Stream>, KafkaError> {
        if !self.connections.contains_key(&id) {
            let addr = self.brokers.get(&id).cloned().ok_or_else(|| {
                KafkaError::protocol("?", format!("broker {id} is not in the metadata"))
            })?;
            let stream = self
                .dial
                .dial(&addr)
                .map_err(|e| KafkaError::io(&addr, e))?;
            let conn = Connection::open(stream, &addr, &self.client_id, self.credentials.as_ref())?;
            self.connections.insert(id, conn);
        }
        Ok(self.connections.get_mut(&id).expect("just made"))
    }

    /// Forgets broker `id`'s connection (it failed).
    pub fn drop_broker(&mut self, id: i32) {
        self.connections.remove(&id);
    }

    /// The partition's leader, from the last metadata.
    pub fn leader(&self, tp: &TopicPartition) -> Option<PartitionInfo> {
        self.topics
            .get(&tp.topic)
            .and_then(|ps| ps.get(usize::try_from(tp.partition).ok()?))
            .copied()
            .filter(|p| p.leader >= 0)
    }

    /// Groups `items` by the leader of their partition; those without a
    /// known leader come back in the second list.
    fn by_leader<T>(
        &self,
        items: impl IntoIterator<Item = (TopicPartition, T)>,
    ) -> (ByLeader<T>, Vec<TopicPartition>) {
        let mut grouped: BTreeMap<i32, Vec<_>> = BTreeMap::new();
        let mut leaderless = Vec::new();
        for (tp, t) in items {
            match self.leader(&tp) {
                Some(info) => grouped.entry(info.leader).or_default().push((tp, info, t)),
                None => leaderless.push(tp),
            }
        }
        (grouped, leaderless)
    }

    /// Looks up an offset of each partition, asking each leader.
    pub fn list_offsets(
        &mut self,
        partitions: &[TopicPartition],
        spec: OffsetSpec,
        isolation: Isolation,
    ) -> Result<BTreeMap<TopicPartition, i64>, KafkaError> {
        let (grouped, leaderless) = self.by_leader(partitions.iter().map(|tp| (tp.clone(), ())));
        if let Some(tp) = leaderless.first() {
            return Err(leader_not_available("ListOffsets", tp));
        }
        let mut found = BTreeMap::new();
        for (leader, parts) in grouped {
            let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (tp, info, ()) in &parts {
                topics.entry(&tp.topic).or_default().push(
                    ListOffsetsPartition::default()
                        .with_partition_index(tp.partition)
                        .with_current_leader_epoch(info.leader_epoch)
                        .with_timestamp(spec.timestamp()),
                );
            }
            let request = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_isolation_level(isolation.level())
                .with_topics(by_topic(topics, |name, ps| {
                    ListOffsetsTopic::default()
                        .with_name(name)
                        .with_partitions(ps)
                }));
            let (addr, response) = self.call_on(leader, &request, 2..=7)?;
            for topic in response.topics {
                for p in topic.partitions {
                    let tp = TopicPartition {
                        topic: topic.name.0.to_string(),
                        partition: p.partition_index,
                    };
                    KafkaError::check(&addr, format!("ListOffsets {tp}"), p.error_code)?;
                    found.insert(tp, p.offset);
                }
            }
        }
        Ok(found)
    }

    /// Sends `request` to broker `id` in the highest version of
    /// `versions` both speak, and reads the answer; a connection that
    /// failed is dropped.
    pub(crate) fn call_on<R: Request>(
        &mut self,
        id: i32,
        request: &R,
        versions: RangeInclusive<i16>,
    ) -> Result<(String, R::Response), KafkaError> {
        let conn = self.broker(id)?;
        let addr = conn.addr().to_owned();
        let answered = conn
            .version::<R>(versions)
            .and_then(|version| conn.call(request, version));
        match answered {
            Ok(response) => Ok((addr, response)),
            Err(e) => {
                self.drop_broker(id);
                Err(e)
            }
        }
    }

    /// Sends each request to its broker, all before any answer is read, so
    /// the brokers work in parallel; [`Client::gather`] reads the answers.
    /// A request that cannot be sent fails its `parts` at once (that
    /// connection is dropped). A host interrupt ends it with `Err`.
    fn scatter_send<R: Request, P>(
        &mut self,
        requests: Vec<(i32, R, P)>,
        versions: RangeInclusive<i16>,
    ) -> Result<Scattered<R, P>, KafkaError> {
        let mut failed = Vec::new();
        let mut sent = Vec::new();
        for (id, request, parts) in requests {
            let sending = self.broker(id).and_then(|conn| {
                let version = conn.version::<R>(versions.clone())?;
                let correlation = conn.send(&request, version)?;
                Ok(Sent {
                    broker: id,
                    serial: conn.serial(),
                    version,
                    correlation,
                })
            });
            match sending {
                Ok(s) => sent.push((s, parts)),
                Err(e) if e.is_interrupted() => return Err(e),
                Err(e) => {
                    self.drop_broker(id);
                    failed.push((parts, Err(e)));
                }
            }
        }
        Ok(Scattered { failed, sent })
    }

    /// Reads the answers to [`Client::scatter_send`]'s requests: each
    /// request's `parts` come back with the broker's address and answer,
    /// or with the error that broke the exchange (that connection is
    /// dropped). A connection dropped since its request was sent never
    /// answers: its parts come back with an error. A host interrupt ends
    /// it with `Err`, and the connections still owed an answer are dropped.
    fn gather<R: Request, P>(
        &mut self,
        scattered: Scattered<R, P>,
    ) -> Result<Vec<Answer<R, P>>, KafkaError> {
        let Scattered {
            failed: mut out,
            sent,
        } = scattered;
        let mut interrupted = None;
        for (sent, parts) in sent {
            let Sent {
                broker,
                serial,
                version,
                correlation,
            } = sent;
            if interrupted.is_some() {
                self.drop_broker(broker);
                continue;
            }
            let Some(conn) = self
                .connections
                .get_mut(&broker)
                .filter(|c| c.serial() == serial)
            else {
                let addr = self.brokers.get(&broker).map_or("?", String::as_str);
                let gone = io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the connection closed before the answer came",
                );
                out.push((parts, Err(KafkaError::io(addr, gone))));
                continue;
            };
            let addr = conn.addr().to_owned();
            let answer = if conn.oldest_owed() == Some(correlation) {
                conn.receive::<R>(version)
            } else {
                Err(KafkaError::protocol(
                    &addr,
                    format!("answers read out of order (request {correlation} is not the oldest)"),
                ))
            };
            match answer {
                Ok(response) => out.push((parts, Ok((addr, response)))),
                Err(e) => {
                    self.drop_broker(broker);
                    if e.is_interrupted() {
                        interrupted = Some(e);
                    } else {
                        out.push((parts, Err(e)));
                    }
                }
            }
        }
        match interrupted {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Fetches each partition from its offset: one request to each leader,
    /// all sent before any answer is read, so the brokers wait in
    /// parallel. Partitions without a known leader, and those whose
    /// leader could not be asked, come back with an error.
    pub fn fetch(
        &mut self,
        partitions: &[(TopicPartition, i64)],
        limits: FetchLimits,
        isolation: Isolation,
    ) -> Result<Vec<Fetched>, KafkaError> {
        let sent = self.fetch_send(partitions, limits, isolation)?;
        self.fetch_receive(sent)
    }

    /// The first half of [`Client::fetch`]: sends the requests, so the
    /// brokers gather the records while the caller does something else
    /// (a source hands over the last fetch's records). Other requests may
    /// go to the same brokers meanwhile.
    pub fn fetch_send(
        &mut self,
        partitions: &[(TopicPartition, i64)],
        limits: FetchLimits,
        isolation: Isolation,
    ) -> Result<FetchSent, KafkaError> {
        let (grouped, leaderless) = self.by_leader(partitions.iter().cloned());
        let leaderless: Vec<Fetched> = leaderless
            .into_iter()
            .map(|tp| {
                let from = partitions
                    .iter()
                    .find(|(p, _)| *p == tp)
                    .map_or(-1, |p| p.1);
                let e = leader_not_available("Fetch", &tp);
                failed(tp, from, e)
            })
            .collect();
        let mut requests = Vec::new();
        for (leader, parts) in grouped {
            let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
            for (tp, info, offset) in &parts {
                topics.entry(&tp.topic).or_default().push(
                    FetchPartition::default()
                        .with_partition(tp.partition)
                        .with_current_leader_epoch(info.leader_epoch)
                        .with_fetch_offset(*offset)
                        .with_partition_max_bytes(limits.partition_max_bytes),
                );
            }
            let request = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(limits.max_wait_ms)
                .with_min_bytes(limits.min_bytes)
                .with_max_bytes(limits.max_bytes)
                .with_isolation_level(isolation.level())
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(by_topic(topics, |name, ps| {
                    FetchTopic::default().with_topic(name).with_partitions(ps)
                }));
            let asked: Vec<(TopicPartition, i64)> =
                parts.into_iter().map(|(tp, _, from)| (tp, from)).collect();
            requests.push((leader, request, asked));
        }
        // Not 12, the first flexible version: tansu 0.6.0 answers it with a
        // tagged field of version 16 (node endpoints), which the codec
        // refuses; and 12 adds nothing a consumer uses (diverging epochs are
        // for followers).
        let scattered = self.scatter_send(requests, 4..=11)?;
        Ok(FetchSent {
            leaderless,
            scattered,
        })
    }

    /// The second half of [`Client::fetch`]: reads the answers. A
    /// connection dropped since the fetch was sent (after an error, or by
    /// [`Client::disconnect`]) fails its partitions.
    pub fn fetch_receive(&mut self, sent: FetchSent) -> Result<Vec<Fetched>, KafkaError> {
        let FetchSent {
            leaderless: mut out,
            scattered,
        } = sent;
        for (asked, answer) in self.gather(scattered)? {
            let response = answer.and_then(|(addr, r)| {
                KafkaError::check(&addr, "Fetch", r.error_code).map(|()| (addr, r))
            });
            let (addr, response) = match response {
                Ok(r) => r,
                Err(e) => {
                    out.extend(
                        asked
                            .into_iter()
                            .map(|(tp, from)| failed(tp, from, duplicate(&e))),
                    );
                    continue;
                }
            };
            for topic in response.responses {
                let name = topic.topic.0.to_string();
                for p in topic.partitions {
                    let tp = TopicPartition {
                        topic: name.clone(),
                        partition: p.partition_index,
                    };
                    let from = asked.iter().find(|(a, _)| *a == tp).map_or(-1, |a| a.1);
                    let error = KafkaError::check(&addr, format!("Fetch {tp}"), p.error_code).err();
                    let mut aborted: Vec<(i64, i64)> = p
                        .aborted_transactions
                        .unwrap_or_default()
                        .iter()
                        .map(|a| (a.producer_id.0, a.first_offset))
                        .collect();
                    aborted.sort_by_key(|a| a.1);
                    out.push(Fetched {
                        tp,
                        from,
                        error,
                        high_watermark: p.high_watermark,
                        last_stable_offset: p.last_stable_offset,
                        aborted,
                        records: p.records.unwrap_or_default(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Asks any broker for a producer id and epoch for an idempotent
    /// producer (no transactional id).
    pub fn init_producer_id(&mut self) -> Result<(i64, i16), KafkaError> {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(-1)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let (addr, response) = self.any_broker(|conn| {
            let version = conn.version::<InitProducerIdRequest>(0..=4)?;
            conn.call(&request, version)
        })?;
        KafkaError::check(&addr, "InitProducerId", response.error_code)?;
        Ok((response.producer_id.0, response.producer_epoch))
    }

    /// Writes one record batch (made by
    /// [`BatchBuilder`](crate::records::BatchBuilder)) to each partition,
    /// `acks = all`: one request to each leader, all sent before any
    /// answer is read. Each partition's outcome: the offset its batch got,
    /// or the error (partitions without a known leader, and those whose
    /// leader could not be asked, included).
    pub fn produce(
        &mut self,
        batches: Vec<(TopicPartition, Bytes)>,
        transactional_id: Option<&str>,
        timeout_ms: i32,
    ) -> Result<Vec<Produced>, KafkaError> {
        let (grouped, leaderless) = self.by_leader(batches);
        let mut out: Vec<Produced> = leaderless
            .into_iter()
            .map(|tp| {
                let e = leader_not_available("Produce", &tp);
                (tp, Err(e))
            })
            .collect();
        let txn = transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.to_owned())));
        let mut requests = Vec::new();
        for (leader, parts) in grouped {
            let mut topics: BTreeMap<&str, Vec<PartitionProduceData>> = BTreeMap::new();
            for (tp, _, bytes) in &parts {
                topics.entry(&tp.topic).or_default().push(
                    PartitionProduceData::default()
                        .with_index(tp.partition)
                        .with_records(Some(bytes.clone())),
                );
            }
            let request = ProduceRequest::default()
                .with_transactional_id(txn.clone())
                .with_acks(-1)
                .with_timeout_ms(timeout_ms)
                .with_topic_data(by_topic(topics, |name, ps| {
                    TopicProduceData::default()
                        .with_name(name)
                        .with_partition_data(ps)
                }));
            let tps: Vec<TopicPartition> = parts.into_iter().map(|(tp, ..)| tp).collect();
            requests.push((leader, request, tps));
        }
        let scattered = self.scatter_send(requests, 3..=9)?;
        for (tps, answer) in self.gather(scattered)? {
            let (addr, response) = match answer {
                Ok(r) => r,
                Err(e) => {
                    out.extend(tps.into_iter().map(|tp| (tp, Err(duplicate(&e)))));
                    continue;
                }
            };
            let mut answered = BTreeMap::new();
            for topic in response.responses {
                let name = topic.name.0.to_string();
                for p in topic.partition_responses {
                    let tp = TopicPartition {
                        topic: name.clone(),
                        partition: p.index,
                    };
                    let what = match p.error_message.as_deref() {
                        Some(m) if !m.is_empty() => format!("Produce {tp} ({m})"),
                        _ => format!("Produce {tp}"),
                    };
                    let outcome =
                        KafkaError::check(&addr, what, p.error_code).map(|()| p.base_offset);
                    answered.insert(tp, outcome);
                }
            }
            for tp in tps {
                let outcome = answered.remove(&tp).unwrap_or_else(|| {
                    Err(KafkaError::protocol(&addr, format!("no answer for {tp}")))
                });
                out.push((tp, outcome));
            }
        }
        Ok(out)
    }

    /// The broker that coordinates consumer group `group` (its id),
    /// asking any broker. Learns the coordinator's address too.
    pub fn group_coordinator(&mut self, group: &str) -> Result<i32, KafkaError> {
        self.find_coordinator(group, 0, &format!("group {group}"))
    }

    /// The broker that coordinates `key` (a group for `key_type` 0, a
    /// transactional id for 1), asking any broker; its address is kept.
    pub(crate) fn find_coordinator(
        &mut self,
        key: &str,
        key_type: i8,
        what: &str,
    ) -> Result<i32, KafkaError> {
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(key.to_owned()))
            .with_key_type(key_type);
        let (addr, response) = self.any_broker(|conn| {
            let version = conn.version::<FindCoordinatorRequest>(1..=3)?;
            conn.call(&request, version)
        })?;
        KafkaError::check(
            &addr,
            format!("FindCoordinator for {what}"),
            response.error_code,
        )?;
        let id = response.node_id.0;
        self.brokers
            .entry(id)
            .or_insert_with(|| format!("{}:{}", &*response.host, response.port));
        Ok(id)
    }

    /// The offsets consumer group `group` has committed for `partitions`
    /// (those it has none for are left out), from its coordinator.
    pub fn group_offsets(
        &mut self,
        coordinator: i32,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, KafkaError> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            topics.entry(&tp.topic).or_default().push(tp.partition);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(Some(by_topic(topics, |name, ps| {
                OffsetFetchRequestTopic::default()
                    .with_name(name)
                    .with_partition_indexes(ps)
            })));
        let (addr, response) = self.call_on(coordinator, &request, 1..=7)?;
        KafkaError::check(
            &addr,
            format!("OffsetFetch for group {group}"),
            response.error_code,
        )?;
        let mut found = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                let tp = TopicPartition {
                    topic: topic.name.0.to_string(),
                    partition: p.partition_index,
                };
                KafkaError::check(&addr, format!("OffsetFetch {tp}"), p.error_code)?;
                if p.committed_offset >= 0 {
                    found.insert(tp, p.committed_offset);
                }
            }
        }
        Ok(found)
    }

    /// Commits `offsets` (the next offset to read, as Kafka's tools expect)
    /// for consumer group `group`, as a client outside the group's
    /// membership does (generation -1): the group's lag then shows what
    /// is not read yet.
    pub fn commit_group_offsets(
        &mut self,
        coordinator: i32,
        group: &str,
        offsets: &BTreeMap<TopicPartition, i64>,
    ) -> Result<(), KafkaError> {
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (tp, offset) in offsets {
            topics.entry(&tp.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_retention_time_ms(-1)
            .with_topics(by_topic(topics, |name, ps| {
                OffsetCommitRequestTopic::default()
                    .with_name(name)
                    .with_partitions(ps)
            }));
        let (addr, response) = self.call_on(coordinator, &request, 2..=7)?;
        for topic in response.topics {
            for p in topic.partitions {
                KafkaError::check(
                    &addr,
                    format!(
                        "OffsetCommit {}/{} for group {group}",
                        &*topic.name.0, p.partition_index
                    ),
                    p.error_code,
                )?;
            }
        }
        Ok(())
    }
}

/// A request's per-topic parts, from its partitions grouped by topic.
fn by_topic<P, T>(
    topics: BTreeMap<&str, Vec<P>>,
    topic: impl Fn(TopicName, Vec<P>) -> T,
) -> Vec<T> {
    topics
        .into_iter()
        .map(|(name, ps)| topic(TopicName(StrBytes::from_string(name.to_owned())), ps))
        .collect()
}

/// The error for a partition whose leader the metadata does not know.
fn leader_not_available(what: &str, tp: &TopicPartition) -> KafkaError {
    KafkaError::Broker {
        addr: "-".into(),
        what: format!("{what} {tp}"),
        code: kafka_protocol::ResponseError::LeaderNotAvailable,
    }
}

fn failed(tp: TopicPartition, from: i64, error: KafkaError) -> Fetched {
    Fetched {
        tp,
        from,
        error: Some(error),
        high_watermark: -1,
        last_stable_offset: -1,
        aborted: Vec::new(),
        records: Bytes::new(),
    }
}

/// The same error again, for each partition of a request that failed
/// as a whole.
fn duplicate(e: &KafkaError) -> KafkaError {
    match e {
        KafkaError::Io { addr, error } => KafkaError::Io {
            addr: addr.clone(),
            error: std::io::Error::new(error.kind(), error.to_string()),
        },
        KafkaError::Broker { addr, what, code } => KafkaError::Broker {
            addr: addr.clone(),
            what: what.clone(),
            code: *code,
        },
        other => KafkaError::protocol("-", other),
    }
}
