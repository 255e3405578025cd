//! `sluice-kafka-mock [--port PORT] [--brokers N] [--topic NAME:PARTITIONS]…`:
//! a Kafka cluster for trying the Kafka connectors without installing
//! Kafka: librdkafka's mock cluster, in memory (at most 5 MiB a partition;
//! older batches are dropped). Prints the bootstrap servers and runs until
//! killed.
//!
//! With `--port` (one broker only) the broker is reached at
//! 127.0.0.1:PORT: the mock cluster listens on a port of its own choosing,
//! so this forwards PORT to it and has it advertise PORT in its metadata.
//! The examples use `--port 9092`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::ffi::{CStr, CString};
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};

use rdkafka::ClientConfig;
use rdkafka::bindings as rd;
use rdkafka::producer::{BaseProducer, Producer as _};

fn main() {
    let mut brokers = 1;
    let mut port = None;
    let mut topics = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--brokers", Some(n)) => brokers = n.parse().unwrap_or_else(|_| usage()),
            ("--port", Some(p)) => port = Some(p.parse::<u16>().unwrap_or_else(|_| usage())),
            ("--topic", Some(t)) => {
                let (name, partitions) = t.rsplit_once(':').unwrap_or((t.as_str(), "1"));
                let partitions: i32 = partitions.parse().unwrap_or_else(|_| usage());
                topics.push((name.to_owned(), partitions));
            }
            _ => usage(),
        }
    }
    if port.is_some() && brokers != 1 {
        eprintln!("sluice-kafka-mock: --port takes one broker");
        std::process::exit(2);
    }
    // A client whose configuration makes librdkafka start a mock cluster
    // of its own; the cluster lives as long as the client.
    let client: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", brokers.to_string())
        .create()
        .unwrap_or_else(|e| fail(&format!("starting the mock cluster: {e}")));
    // SAFETY: the handle is the live client's; the cluster pointer it
    // returns lives as long as the client, which lives until exit.
    let cluster = unsafe { rd::rd_kafka_handle_mock_cluster(client.client().native_ptr()) };
    if cluster.is_null() {
        fail("librdkafka made no mock cluster");
    }
    // SAFETY: a live cluster; the string it returns is its own, copied here.
    let listening = unsafe { CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(cluster)) }
        .to_string_lossy()
        .into_owned();
    for (name, partitions) in &topics {
        let name_c = CString::new(name.as_str()).unwrap_or_else(|_| usage());
        // SAFETY: a live cluster and a NUL-terminated name.
        let err = unsafe {
            rd::rd_kafka_mock_topic_create(cluster, name_c.as_ptr(), *partitions, brokers.min(3))
        };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            fail(&format!("making topic {name}: {err:?}"));
        }
    }
    let bootstrap = match port {
        None => listening,
        Some(port) => {
            let listener = TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| fail(&format!("listening on 127.0.0.1:{port}: {e}")));
            let host = CString::new("127.0.0.1").expect("no NUL");
            // SAFETY: a live cluster and a NUL-terminated host.
            unsafe {
                rd::rd_kafka_mock_broker_set_host_port(cluster, 1, host.as_ptr(), port.into())
            };
            std::thread::spawn(move || forward(listener, listening));
            format!("127.0.0.1:{port}")
        }
    };
    println!("{bootstrap}");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::park();
    }
}

/// Forwards every connection to `listener` to `to`, both ways.
fn forward(listener: TcpListener, to: String) {
    for client in listener.incoming().flatten() {
        let Ok(broker) = TcpStream::connect(&to) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = broker.set_nodelay(true);
        let (Ok(client2), Ok(broker2)) = (client.try_clone(), broker.try_clone()) else {
            continue;
        };
        std::thread::spawn(move || pipe(client, broker));
        std::thread::spawn(move || pipe(broker2, client2));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

fn fail(what: &str) -> ! {
    eprintln!("sluice-kafka-mock: {what}");
    std::process::exit(1)
}

fn usage() -> ! {
    eprintln!("usage: sluice-kafka-mock [--port PORT] [--brokers N] [--topic NAME:PARTITIONS]...");
    std::process::exit(2)
}
