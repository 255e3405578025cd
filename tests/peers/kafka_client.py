#!/usr/bin/python3
"""A third-party Kafka client for the kafka tests: Confluent's Python client
(Debian package python3-confluent-kafka), producing and consuming on the
test's own cluster, so Sluice's Kafka plugins are checked against a client
they share no code with.

    kafka_client.py produce BOOTSTRAP TOPIC COUNT PARTITIONS [--from I] [--value-bytes N]
                            [--no-src] [--compression CODEC]
        Writes records I..I+COUNT: record i goes to partition i % PARTITIONS
        with key "k<i>", value "v<i>" (padded with '.' to N bytes), headers
        i=<i> and (without --no-src) src=python, and timestamp
        1700000000000 + i, in batches compressed with CODEC (default none).
        Prints "produced COUNT" when the cluster has them all.

    kafka_client.py consume BOOTSTRAP TOPIC PARTITIONS COUNT [--timeout S]
                            [--read-uncommitted]
        Reads every partition from its start (read_committed unless told)
        until COUNT records came or S seconds (default 60) passed with
        none; prints each as a JSON line: partition, offset, key, value,
        headers (a list of [name, value] pairs), timestamp.

    kafka_client.py committed BOOTSTRAP GROUP TOPIC PARTITIONS
        Prints the offset consumer group GROUP has committed for each
        partition of TOPIC, as "PARTITION OFFSET" lines (-1001: none).

    kafka_client.py commit BOOTSTRAP GROUP TOPIC PARTITION:OFFSET...
        Commits those offsets for GROUP, as a consumer of it would.
"""

import json
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(bootstrap, topic, count, partitions, first, value_bytes, src=True, codec="none"):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": codec,
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1000000,
            "enable.idempotence": True,
        }
    )
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(err)

    for i in range(first, first + count):
        value = ("v%d" % i).ljust(value_bytes, ".")
        while True:
            try:
                producer.produce(
                    topic,
                    value=value,
                    key="k%d" % i,
                    partition=i % partitions,
                    timestamp=1700000000000 + i,
                    headers=[("i", str(i))] + ([("src", "python")] if src else []),
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(120)
    if left or failed:
        sys.exit("not delivered: %d left, errors %s" % (left, failed[:3]))
    print("produced %d" % count, flush=True)


def consume(bootstrap, topic, partitions, count, timeout, committed):
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "kafka-client-py",
            "enable.auto.commit": False,
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            # Checks each batch's CRC-32C (kafka-sink's, computed by the
            # host): a wrong one is an error, and its records go missing.
            "check.crcs": True,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen = 0
    last = time.monotonic()
    out = sys.stdout
    while seen < count and time.monotonic() - last < timeout:
        for msg in consumer.consume(10000, 0.5):
            if msg.error():
                continue
            last = time.monotonic()
            seen += 1
            text = lambda b: None if b is None else b.decode("utf-8", "replace")
            out.write(
                json.dumps(
                    {
                        "partition": msg.partition(),
                        "offset": msg.offset(),
                        "key": text(msg.key()),
                        "value": text(msg.value()),
                        "headers": [[k, text(v)] for k, v in (msg.headers() or [])],
                        "timestamp": msg.timestamp()[1],
                    }
                )
                + "\n"
            )
    out.flush()
    consumer.close()


def committed(bootstrap, group, topic, partitions):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    for tp in consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30):
        print("%d %d" % (tp.partition, tp.offset))
    consumer.close()


def commit(bootstrap, group, topic, pairs):
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    offsets = []
    for pair in pairs:
        p, o = pair.split(":")
        offsets.append(TopicPartition(topic, int(p), int(o)))
    consumer.commit(offsets=offsets, asynchronous=False)
    consumer.close()
    print("committed", flush=True)


def main(argv):
    def option(name, default, kind=int):
        if name in argv:
            return kind(argv[argv.index(name) + 1])
        return default

    if argv[1] == "produce":
        produce(
            argv[2],
            argv[3],
            int(argv[4]),
            int(argv[5]),
            option("--from", 0),
            option("--value-bytes", 0),
            "--no-src" not in argv,
            option("--compression", "none", str),
        )
    elif argv[1] == "consume":
        consume(
            argv[2],
            argv[3],
            int(argv[4]),
            int(argv[5]),
            option("--timeout", 60.0, float),
            "--read-uncommitted" not in argv,
        )
    elif argv[1] == "committed":
        committed(argv[2], argv[3], argv[4], int(argv[5]))
    elif argv[1] == "commit":
        commit(argv[2], argv[3], argv[4], argv[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
