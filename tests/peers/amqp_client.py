#!/usr/bin/python3
"""A third-party AMQP 0-9-1 client for the RabbitMQ tests and bench: pika
(Debian package python3-pika), so Sluice's RabbitMQ plugins are checked
against a client they share no code with.

    amqp_client.py declare PORT USER PASSWORD QUEUE...
        Declares durable queues.

    amqp_client.py publish PORT USER PASSWORD QUEUE COUNT [--from I] [--ids] [--transient]
        Publishes bodies {"seq":i} for i in I..I+COUNT to QUEUE (declared
        durable) through the default exchange, persistent unless told,
        with message_id "m<i>" when --ids. Prints "published COUNT" once
        the broker has them (the connection closed after them).

    amqp_client.py drain PORT USER PASSWORD QUEUE [--idle S]
        Consumes QUEUE (acknowledging) until nothing came for S seconds
        (default 2) and the queue holds nothing ready; prints each message
        as "MESSAGE_ID<TAB>BODY".

    amqp_client.py bench-publish PORT USER PASSWORD QUEUE COUNT SIZE
        Publishes COUNT persistent messages of SIZE bytes as fast as it can
        (no confirms), then waits until the queue holds them all; prints
        "records/s SECONDS".

    amqp_client.py bench-consume PORT USER PASSWORD QUEUE COUNT
        Consumes COUNT messages with a prefetch of 500, acknowledging every
        100 with `multiple`; prints "records/s SECONDS".
"""

import sys
import time

import pika


def connect(port, user, password):
    params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=int(port),
        credentials=pika.PlainCredentials(user, password),
        heartbeat=0,
    )
    return pika.BlockingConnection(params)


def declare(conn, queues):
    ch = conn.channel()
    for q in queues:
        ch.queue_declare(q, durable=True)
    return ch


def publish(conn, queue, count, first, ids, persistent):
    ch = declare(conn, [queue])
    mode = 2 if persistent else 1
    for i in range(first, first + count):
        props = pika.BasicProperties(
            delivery_mode=mode, message_id=("m%d" % i) if ids else None
        )
        ch.basic_publish("", queue, ('{"seq":%d}' % i).encode(), props)
    # The broker answers close only after the publishes before it.
    conn.close()
    print("published %d" % count)


def drain(conn, queue, idle):
    ch = declare(conn, [queue])
    ch.basic_qos(prefetch_count=1000)
    out = sys.stdout
    last = acked = 0
    for method, props, body in ch.consume(queue, inactivity_timeout=idle):
        if method is None:
            # A broker reading a long queue back from disk can pause: only
            # an empty queue ends the drain.
            if ch.queue_declare(queue, durable=True, passive=True).method.message_count == 0:
                break
            continue
        out.write("%s\t%s\n" % (props.message_id or "", body.decode("utf-8", "replace")))
        last = method.delivery_tag
        if last - acked >= 500:
            ch.basic_ack(last, multiple=True)
            acked = last
    if last > acked:
        ch.basic_ack(last, multiple=True)
    ch.cancel()
    conn.close()


def bench_publish(conn, queue, count, size):
    ch = declare(conn, [queue])
    ch.queue_purge(queue)
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2)
    start = time.monotonic()
    for _ in range(count):
        ch.basic_publish("", queue, body, props)
    while ch.queue_declare(queue, durable=True, passive=True).method.message_count < count:
        time.sleep(0.01)
    took = time.monotonic() - start
    conn.close()
    print("%.1f %.3f" % (count / took, took))


def bench_consume(conn, queue, count):
    ch = declare(conn, [queue])
    ch.basic_qos(prefetch_count=500)
    n = 0
    start = time.monotonic()
    for method, _props, _body in ch.consume(queue):
        n += 1
        if n % 100 == 0 or n == count:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if n == count:
            break
    took = time.monotonic() - start
    ch.cancel()
    conn.close()
    print("%.1f %.3f" % (count / took, took))


def main(argv):
    command, port, user, password, rest = argv[1], argv[2], argv[3], argv[4], argv[5:]
    conn = connect(port, user, password)
    if command == "declare":
        declare(conn, rest)
        conn.close()
    elif command == "publish":
        first = int(rest[rest.index("--from") + 1]) if "--from" in rest else 0
        publish(conn, rest[0], int(rest[1]), first, "--ids" in rest, "--transient" not in rest)
    elif command == "drain":
        idle = float(rest[rest.index("--idle") + 1]) if "--idle" in rest else 2.0
        drain(conn, rest[0], idle)
    elif command == "bench-publish":
        bench_publish(conn, rest[0], int(rest[1]), int(rest[2]))
    elif command == "bench-consume":
        bench_consume(conn, rest[0], int(rest[1]))
    else:
        sys.exit("unknown command %r" % command)


if __name__ == "__main__":
    main(sys.argv)
