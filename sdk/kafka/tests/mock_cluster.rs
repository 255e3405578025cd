//! The client against librdkafka's mock cluster, over native sockets:
//! records written by librdkafka's producer are read back whole.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_kafka::records::Batches;
use sluice_kafka::{Client, Dial, FetchLimits, Isolation, OffsetSpec, TopicPartition};
use sluice_test_servers::kafka::MockKafka;

struct Native;

impl Dial for Native {
    type Stream = TcpStream;
    fn dial(&mut self, addr: &str) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

fn produce(kafka: &MockKafka, topic: &str, n: usize, compression: &str) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..n {
        let key = format!("k{i}");
        let value = format!("v{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "i",
            value: Some(&i.to_string()),
        });
        loop {
            let record = BaseRecord::to(topic)
                .key(&key)
                .payload(&value)
                .partition((i % 3) as i32)
                .timestamp(1_000 + i as i64)
                .headers(headers.clone());
            match producer.send(record) {
                Ok(()) => break,
                Err(_) => {
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[test]
fn fetches_what_librdkafka_produced_with_every_codec() {
    let kafka = MockKafka::start(3);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("t-{codec}");
        kafka.create_topic(&topic, 3, 3);
        produce(&kafka, &topic, 300, codec);
        let mut client = Client::new(Native, kafka.addrs(), "test");
        client
            .refresh_metadata(Some(std::slice::from_ref(&topic)))
            .unwrap();
        assert_eq!(client.topics()[&topic].len(), 3);
        let tps: Vec<TopicPartition> = (0..3)
            .map(|p| TopicPartition {
                topic: topic.clone(),
                partition: p,
            })
            .collect();
        let earliest = client
            .list_offsets(&tps, OffsetSpec::Earliest, Isolation::ReadCommitted)
            .unwrap();
        let latest = client
            .list_offsets(&tps, OffsetSpec::Latest, Isolation::ReadCommitted)
            .unwrap();
        assert!(earliest.values().all(|&o| o == 0), "{earliest:?}");
        assert!(latest.values().all(|&o| o == 100), "{latest:?}");
        let mut next: Vec<(TopicPartition, i64)> = tps.iter().map(|tp| (tp.clone(), 0)).collect();
        let mut seen = vec![Vec::new(); 3];
        let mut scratch = Vec::new();
        while next.iter().any(|(_, o)| *o < 100) {
            let fetched = client
                .fetch(&next, FetchLimits::default(), Isolation::ReadCommitted)
                .unwrap();
            for f in fetched {
                assert!(f.error.is_none(), "{:?}", f.error);
                for batch in Batches::new(&f.records) {
                    let batch = batch.unwrap();
                    for r in batch.records(&mut scratch).unwrap() {
                        let r = r.unwrap();
                        if r.offset < f.from {
                            continue;
                        }
                        let i: usize = std::str::from_utf8(r.key.unwrap())
                            .unwrap()
                            .strip_prefix('k')
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert_eq!(r.value.unwrap(), format!("v{i}").as_bytes());
                        assert_eq!(r.timestamp, 1_000 + i as i64);
                        let headers: Vec<_> = r.headers().map(Result::unwrap).collect();
                        assert_eq!(headers, vec![("i", Some(i.to_string().as_bytes()))]);
                        seen[f.tp.partition as usize].push((r.offset, i));
                    }
                    let slot = next.iter_mut().find(|(tp, _)| *tp == f.tp).unwrap();
                    slot.1 = slot.1.max(batch.next_offset());
                }
            }
        }
        for (p, records) in seen.iter().enumerate() {
            let want: Vec<(i64, usize)> = (0..100).map(|o| (o as i64, o * 3 + p)).collect();
            assert_eq!(*records, want, "{codec} partition {p}");
        }
    }
}

#[test]
fn group_offsets_committed_are_read_back() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("g", 2, 1);
    let mut client = Client::new(Native, kafka.addrs(), "test");
    client.refresh_metadata(None).unwrap();
    let coordinator = client.group_coordinator("grp").unwrap();
    let tp = |p| TopicPartition {
        topic: "g".into(),
        partition: p,
    };
    let none = client
        .group_offsets(coordinator, "grp", &[tp(0), tp(1)])
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    let offsets = [(tp(0), 100), (tp(1), 200)].into_iter().collect();
    client
        .commit_group_offsets(coordinator, "grp", &offsets)
        .unwrap();
    let back = client
        .group_offsets(coordinator, "grp", &[tp(0), tp(1)])
        .unwrap();
    assert_eq!(back, offsets);
}

#[test]
fn group_offsets_librdkafka_committed_are_read_back() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let kafka = MockKafka::start(1);
    kafka.create_topic("t", 2, 1);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", "g")
        .create()
        .unwrap();
    let mut list = TopicPartitionList::new();
    list.add_partition_offset("t", 0, Offset::Offset(100))
        .unwrap();
    list.add_partition_offset("t", 1, Offset::Offset(200))
        .unwrap();
    consumer.commit(&list, CommitMode::Sync).unwrap();
    let mut client = Client::new(Native, kafka.addrs(), "test");
    client.refresh_metadata(Some(&["t".to_owned()])).unwrap();
    let coordinator = client.group_coordinator("g").unwrap();
    let tp = |p| TopicPartition {
        topic: "t".into(),
        partition: p,
    };
    let back = client
        .group_offsets(coordinator, "g", &[tp(0), tp(1)])
        .unwrap();
    assert_eq!(back.len(), 2, "{back:?}");
}

#[test]
fn calls_between_a_fetch_sent_and_received_get_their_own_answers() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("ahead", 3, 1);
    produce(&kafka, "ahead", 30, "none");
    let mut client = Client::new(Native, kafka.addrs(), "test");
    client.refresh_metadata(None).unwrap();
    let tps: Vec<TopicPartition> = (0..3)
        .map(|p| TopicPartition {
            topic: "ahead".into(),
            partition: p,
        })
        .collect();
    let from: Vec<(TopicPartition, i64)> = tps.iter().map(|tp| (tp.clone(), 0)).collect();
    // Two fetches owed on the one connection, then a metadata call and a
    // list of offsets on it before either answer is read.
    let first = client
        .fetch_send(&from, FetchLimits::default(), Isolation::ReadCommitted)
        .unwrap();
    let later: Vec<(TopicPartition, i64)> = tps.iter().map(|tp| (tp.clone(), 5)).collect();
    let second = client
        .fetch_send(&later, FetchLimits::default(), Isolation::ReadCommitted)
        .unwrap();
    client.refresh_metadata(None).unwrap();
    let latest = client
        .list_offsets(&tps, OffsetSpec::Latest, Isolation::ReadCommitted)
        .unwrap();
    assert!(latest.values().all(|&o| o == 10), "{latest:?}");
    let first_offsets = |fetched: Vec<sluice_kafka::Fetched>| {
        let mut scratch = Vec::new();
        let mut firsts: Vec<(i32, i64)> = fetched
            .iter()
            .map(|f| {
                assert!(f.error.is_none(), "{:?}", f.error);
                let batch = Batches::new(&f.records).next().unwrap().unwrap();
                let first = batch
                    .records(&mut scratch)
                    .unwrap()
                    .map(Result::unwrap)
                    .find(|r| r.offset >= f.from)
                    .unwrap();
                (f.tp.partition, first.offset)
            })
            .collect();
        firsts.sort();
        firsts
    };
    assert_eq!(
        first_offsets(client.fetch_receive(first).unwrap()),
        [(0, 0), (1, 0), (2, 0)]
    );
    assert_eq!(
        first_offsets(client.fetch_receive(second).unwrap()),
        [(0, 5), (1, 5), (2, 5)]
    );

    // A fetch whose connection was dropped before its answer fails its
    // partitions with an error worth trying again, and the client goes on.
    let lost = client
        .fetch_send(&from, FetchLimits::default(), Isolation::ReadCommitted)
        .unwrap();
    client.disconnect();
    let fetched = client.fetch_receive(lost).unwrap();
    assert_eq!(fetched.len(), 3);
    assert!(
        fetched
            .iter()
            .all(|f| f.error.as_ref().is_some_and(|e| e.is_retriable())),
        "{fetched:?}"
    );
    let again = client
        .fetch(&from, FetchLimits::default(), Isolation::ReadCommitted)
        .unwrap();
    assert_eq!(first_offsets(again), [(0, 0), (1, 0), (2, 0)]);
}

/// What makes `kafka-sink`'s retries safe: a batch sent again with the same
/// producer id, epoch and sequence numbers (after its answer was lost) is
/// stored once, and the next batch follows it. Transactional: the mock
/// cluster checks sequence numbers only for transactional producers (so
/// this is `exactly_once`'s path; a plain idempotent producer's batches
/// carry the same stamp, and Kafka checks them the same way).
#[test]
fn a_batch_sent_again_with_the_same_sequence_numbers_is_stored_once() {
    use sluice_kafka::records::{BatchBuilder, Compression, NewRecord, ProducerStamp};
    use sluice_kafka::{Bytes, KafkaError, ResponseError};

    let kafka = MockKafka::start(1);
    kafka.create_topic("idem", 1, 1);
    let mut client = Client::new(Native, kafka.addrs(), "test");
    client.refresh_metadata(None).unwrap();
    let coordinator = client.transaction_coordinator("idem-txn").unwrap();
    let producer = client
        .init_transactions(coordinator, "idem-txn", 60_000)
        .unwrap();
    let (id, epoch) = (producer.id, producer.epoch);
    let tp = TopicPartition {
        topic: "idem".into(),
        partition: 0,
    };
    client
        .add_partitions_to_txn(coordinator, &producer, std::slice::from_ref(&tp))
        .unwrap();
    let batch = |first: i32, values: &[&str]| {
        let mut builder = BatchBuilder::new();
        for v in values {
            builder.push(
                NewRecord {
                    timestamp: 1,
                    key: None,
                    value: Some(v.as_bytes()),
                },
                std::iter::empty(),
            );
        }
        let mut out = Vec::new();
        let stamp = ProducerStamp {
            id,
            epoch,
            base_sequence: first,
            transactional: true,
        };
        builder.finish(Compression::None, stamp, &mut out).unwrap();
        Bytes::from(out)
    };
    let send = |client: &mut Client<Native>, bytes: Bytes| {
        let mut outcomes = client
            .produce(vec![(tp.clone(), bytes)], Some("idem-txn"), 5_000)
            .unwrap();
        outcomes.pop().unwrap().1
    };
    let first = batch(0, &["a", "b", "c"]);
    assert_eq!(send(&mut client, first.clone()).unwrap(), 0);
    // Its answer lost: sent again, as the sink does, on a new connection.
    client.disconnect();
    match send(&mut client, first) {
        Ok(offset) => assert_eq!(offset, 0, "a duplicate answers with the first's offset"),
        Err(KafkaError::Broker {
            code: ResponseError::DuplicateSequenceNumber,
            ..
        }) => {}
        Err(e) => panic!("{e}"),
    }
    assert_eq!(send(&mut client, batch(3, &["d"])).unwrap(), 3);
    // A sequence number that skips ahead is refused, not stored.
    assert!(send(&mut client, batch(9, &["z"])).is_err());

    let mut scratch = Vec::new();
    let mut values = Vec::new();
    let mut next = 0;
    while next < 4 {
        let fetched = client
            .fetch(
                &[(tp.clone(), next)],
                FetchLimits::default(),
                Isolation::ReadUncommitted,
            )
            .unwrap();
        for batch in Batches::new(&fetched[0].records) {
            let batch = batch.unwrap();
            for r in batch.records(&mut scratch).unwrap() {
                let r = r.unwrap();
                if r.offset >= next {
                    values.push((
                        r.offset,
                        String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
                    ));
                }
            }
            next = next.max(batch.next_offset());
        }
    }
    let want: Vec<(i64, String)> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as i64, v.to_string()))
        .collect();
    assert_eq!(values, want);
}
