//! Tests of the NATS broker against a `nats-server` of each test's own:
//! offsets across batches and restarts, positions, zombie fencing, group
//! offsets and plugin state.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use futures_util::StreamExt;

use sluice_batch::BatchWriter;
use sluice_test_servers::nats::NatsServer;

use super::*;
use crate::broker::StateError;
use crate::broker::testing::{batch, values};

fn config(url: &str) -> NatsConfig {
    NatsConfig {
        servers: vec![url.parse().unwrap()],
        access: NatsAccess::default(),
        replicas: 1,
        default_partitions: 2,
        partitions: BTreeMap::new(),
    }
}

fn at(producer: &str, position: &'static [u8]) -> Option<SourceCheckpoint<'static>> {
    let producer: &'static str = Box::leak(producer.to_owned().into_boxed_str());
    Some(SourceCheckpoint { producer, position })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_count_records_across_batches_producers_and_a_reopen() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let b = NatsBroker::open(config(&server.url())).unwrap();
    assert_eq!(b.ensure_topic("t.x").unwrap(), 2);
    assert_eq!(
        b.append("t.x", 1, &batch(0, 3), 3, at("a/0", b"p1"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.append("t.x", 1, &batch(3, 4), 4, at("b/0", b"q1"))
            .await
            .unwrap(),
        3
    );
    assert_eq!(b.append("t.x", 1, &batch(7, 2), 2, None).await.unwrap(), 7);
    assert_eq!(
        b.append("t.x", 0, &batch(100, 1), 1, None).await.unwrap(),
        0
    );
    assert_eq!(b.end_offset("t.x", 1).unwrap(), 9);

    let all = b.read("t.x", 1, 0, u64::MAX).await.unwrap();
    assert_eq!(values(&all).len(), 9);
    let mid = b.read("t.x", 1, 5, u64::MAX).await.unwrap();
    assert_eq!(mid[0].first_offset, 5);
    assert_eq!(mid[0].next_offset(), 7);
    assert_eq!(
        values(&mid),
        ["value-00005", "value-00006", "value-00007", "value-00008"]
    );
    assert!(b.read("t.x", 1, 9, u64::MAX).await.unwrap().is_empty());
    drop(b);

    // A new host finds the ends, the positions and the batches by offset
    // without hints (a binary search over the stream).
    let b = NatsBroker::open(config(&server.url())).unwrap();
    assert_eq!(b.ensure_topic("t.x").unwrap(), 2);
    assert_eq!(b.end_offset("t.x", 1).unwrap(), 9);
    assert_eq!(b.end_offset("t.x", 0).unwrap(), 1);
    assert_eq!(
        b.source_position("a/0").unwrap().as_deref(),
        Some(&b"p1"[..])
    );
    assert_eq!(
        b.source_position("b/0").unwrap().as_deref(),
        Some(&b"q1"[..])
    );
    assert_eq!(b.source_position("c/0").unwrap(), None);
    for from in 0..9 {
        let got = b.read("t.x", 1, from, u64::MAX).await.unwrap();
        assert_eq!(got[0].first_offset, from);
        let want: Vec<String> = (from..9).map(|i| format!("value-{i:05}")).collect();
        assert_eq!(values(&got), want, "from {from}");
    }
    assert_eq!(
        b.append("t.x", 1, &batch(9, 1), 1, at("a/0", b"p2"))
            .await
            .unwrap(),
        9
    );
    assert_eq!(
        b.source_position("a/0").unwrap().as_deref(),
        Some(&b"p2"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_as_the_same_producer_fences_the_first() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let old = NatsBroker::open(config(&server.url())).unwrap();
    let new = NatsBroker::open(config(&server.url())).unwrap();
    old.ensure_topic("t").unwrap();
    new.ensure_topic("t").unwrap();
    old.append("t", 0, &batch(0, 1), 1, at("s/0", b"1"))
        .await
        .unwrap();
    // The new instance takes over from what is stored.
    assert_eq!(
        new.source_position("s/0").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    new.append("t", 0, &batch(1, 1), 1, at("s/0", b"2"))
        .await
        .unwrap();
    // The old one, a zombie now, is refused, and stores nothing.
    let refused = old.append("t", 0, &batch(1, 1), 1, at("s/0", b"2'")).await;
    assert!(
        matches!(refused, Err(BrokerError::Fenced { ref producer, .. }) if producer == "s/0"),
        "{refused:?}"
    );
    let stored = new.read("t", 0, 0, u64::MAX).await.unwrap();
    assert_eq!(values(&stored), ["value-00000", "value-00001"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_and_plugin_state_outlive_the_host_and_are_forgotten_with_it() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let quota = StateQuota {
        bytes: 100,
        keys: 3,
    };
    let b = NatsBroker::open(config(&server.url())).unwrap();
    b.ensure_topic("t").unwrap();
    b.subscribe("sink.a", "t").unwrap();
    assert_eq!(b.committed_offset("sink.a", "t", 0), None);
    b.commit_offsets("sink.a", &[("t".into(), 1, 42)])
        .await
        .unwrap();
    let state = b.connector_state("sink.a", quota).unwrap();
    state.put("k/1", b"v1").unwrap();
    assert!(matches!(
        state.put("big", &[0; 200]),
        Err(StateError::QuotaExceeded { .. })
    ));
    drop((state, b));

    let b = NatsBroker::open(config(&server.url())).unwrap();
    b.ensure_topic("t").unwrap();
    b.subscribe("sink.a", "t").unwrap();
    assert_eq!(b.committed_offset("sink.a", "t", 1), Some(42));
    assert_eq!(b.committed_offset("sink.a", "t", 0), None);
    let state = b.connector_state("sink.a", quota).unwrap();
    assert_eq!(state.get("k/1").as_deref(), Some(&b"v1"[..]));
    assert_eq!(state.get("big"), None);

    b.forget_connector("sink.a").unwrap();
    assert_eq!(b.committed_offset("sink.a", "t", 1), None);
    b.subscribe("sink.a", "t").unwrap();
    assert_eq!(b.committed_offset("sink.a", "t", 1), None);
    assert_eq!(b.connector_state("sink.a", quota).unwrap().get("k/1"), None);
}

#[test]
fn a_url_with_a_password_is_shown_without_it() {
    let mut c = config("nats://u:pw@h:4222");
    c.servers.push("nats://h2:4222".parse().unwrap());
    assert_eq!(c.servers_shown(), "nats://***@h:4222,nats://h2:4222");
    assert!(!format!("{c:?}").contains("pw"), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_max_payload_is_stored_as_one_atomic_batch_of_messages() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let b = NatsBroker::open(config(&server.url())).unwrap();
    b.ensure_topic("big").unwrap();
    let mut w = BatchWriter::new();
    let value = vec![b'v'; 10_000];
    for _ in 0..300 {
        w.push_value(&value);
    }
    let big = w.finish();
    assert!(big.len() as u64 > 2 * b.server.max_payload, "{}", big.len());
    if !b.server.atomic {
        // Before NATS 2.12 there are no atomic batches: refused, clearly.
        let refused = b.append("big", 0, &big, 300, at("s/0", b"after")).await;
        assert!(
            matches!(refused, Err(BrokerError::TooLarge { .. })),
            "{refused:?}"
        );
        return;
    }
    assert_eq!(
        b.append("big", 0, &big, 300, at("s/0", b"after"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        b.append("big", 0, &batch(0, 1), 1, at("s/0", b"next"))
            .await
            .unwrap(),
        300
    );
    let stored = b.read("big", 0, 0, u64::MAX).await.unwrap();
    assert!(stored.len() > 2, "one message each: {}", stored.len());
    let mut next = 0;
    for s in &stored {
        assert_eq!(s.first_offset, next);
        next = s.next_offset();
    }
    assert_eq!(next, 301);
    drop(b);
    let b = NatsBroker::open(config(&server.url())).unwrap();
    b.ensure_topic("big").unwrap();
    assert_eq!(b.end_offset("big", 0).unwrap(), 301);
    assert_eq!(
        b.source_position("s/0").unwrap().as_deref(),
        Some(&b"next"[..])
    );
}

/// Reads `group`'s partition from `from` until `want` records came (the
/// consumer's messages may take a moment to arrive).
async fn read_all(b: &NatsBroker, group: &str, from: u64, want: usize) -> Vec<StoredBatch> {
    let mut got = Vec::new();
    let mut next = from;
    for _ in 0..100 {
        let read = b.read_as(group, "t", 0, next, u64::MAX).await.unwrap();
        if let Some(last) = read.last() {
            next = last.next_offset();
        }
        got.extend(read);
        if values(&got).len() >= want {
            break;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_reads_through_its_durable_consumer_and_acknowledges_its_commits() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let b = NatsBroker::open(config(&server.url())).unwrap();
    b.ensure_topic("t").unwrap();
    for i in 0..5 {
        b.append("t", 0, &batch(i * 2, 2), 2, None).await.unwrap();
    }
    let got = read_all(&b, "sink", 0, 10).await;
    let want: Vec<String> = (0..10).map(|i| format!("value-{i:05}")).collect();
    assert_eq!(values(&got), want);

    // A commit inside the third message acknowledges the two before it.
    b.commit_offsets("sink", &[("t".to_owned(), 0, 5)])
        .await
        .unwrap();
    let stream = b.js.get_stream("SLUICE_t").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer = stream
        .get_consumer(&names::consumer("sink", 0))
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.ack_floor.stream_sequence, 2, "{info:?}");
    assert_eq!(b.committed_offset("sink", "t", 0), Some(5));

    // Reading from elsewhere (a reset, a restart) makes the consumer again
    // from the message holding that offset.
    let again = read_all(&b, "sink", 3, 7).await;
    assert_eq!(values(&again), want[3..]);
    b.append("t", 0, &batch(10, 1), 1, None).await.unwrap();
    let more = read_all(&b, "sink", 10, 1).await;
    assert_eq!(values(&more), ["value-00010"]);

    // Deleting the connector deletes its consumers.
    b.forget_connector("sink").unwrap();
    let left: Vec<String> = stream
        .consumer_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_writing_one_partition_as_two_producers_number_offsets_after_each_other() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let one = NatsBroker::open(config(&server.url())).unwrap();
    let two = NatsBroker::open(config(&server.url())).unwrap();
    one.ensure_topic("t").unwrap();
    two.ensure_topic("t").unwrap();
    assert_eq!(
        one.append("t", 0, &batch(0, 3), 3, at("a/0", b"a1"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        two.append("t", 0, &batch(3, 2), 2, at("b/0", b"b1"))
            .await
            .unwrap(),
        3
    );
    // The first host still thinks the partition ends at 3: the server
    // refuses that, and it writes after the other's batch instead.
    assert_eq!(
        one.append("t", 0, &batch(5, 1), 1, at("a/0", b"a2"))
            .await
            .unwrap(),
        5
    );
    assert_eq!(two.append("t", 0, &batch(6, 1), 1, None).await.unwrap(), 6);
    let stored = one.read("t", 0, 0, u64::MAX).await.unwrap();
    let want: Vec<String> = (0..7).map(|i| format!("value-{i:05}")).collect();
    assert_eq!(values(&stored), want);
    let firsts: Vec<u64> = stored.iter().map(|b| b.first_offset).collect();
    assert_eq!(firsts, [0, 3, 5, 6]);
}
