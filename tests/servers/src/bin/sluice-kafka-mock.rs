//! `sluice-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]…`: a Kafka
//! cluster for trying the Kafka connectors without installing Kafka
//! (librdkafka's mock cluster, in memory). Prints the bootstrap servers and
//! runs until killed.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use sluice_test_servers::kafka::MockKafka;

fn main() {
    let mut brokers = 1;
    let mut topics = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--brokers", Some(n)) => brokers = n.parse().unwrap_or_else(|_| usage()),
            ("--topic", Some(t)) => {
                let (name, partitions) = t.rsplit_once(':').unwrap_or((t.as_str(), "1"));
                let partitions: i32 = partitions.parse().unwrap_or_else(|_| usage());
                topics.push((name.to_owned(), partitions));
            }
            _ => usage(),
        }
    }
    let kafka = MockKafka::start(brokers);
    for (name, partitions) in &topics {
        kafka.create_topic(name, *partitions, brokers.min(3));
    }
    println!("{}", kafka.bootstrap());
    loop {
        std::thread::park();
    }
}

fn usage() -> ! {
    eprintln!("usage: sluice-kafka-mock [--brokers N] [--topic NAME:PARTITIONS]...");
    std::process::exit(2)
}
