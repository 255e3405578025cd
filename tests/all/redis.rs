//! The Redis connectors against a real `redis-server` started by the test
//! (`sluice-test-servers`): its own directory and port, stopped at the end.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::process::Stdio;
use std::time::Duration;

use sluice_test_servers::redis::RedisServer;

use crate::common::*;

/// A `redis-sink` named `rs` reading `events`, granted the server.
fn redis_sink(name: &str, r: &RedisServer, mode: &str, key: &str) -> Connector {
    sink(name, "redis-sink", "events")
        .config("addr", r.addr().as_str())
        .config("mode", mode)
        .config("key", key)
        .grant("net", vec![r.addr().as_str()])
}

/// The datagen `seq`s in the `value` fields of the stream `key`.
fn stream_seqs(r: &RedisServer, key: &str) -> Vec<u64> {
    r.cli(&["XRANGE", key, "-", "+"])
        .lines()
        .filter_map(|line| line.strip_prefix("{\"seq\":"))
        .map(|rest| rest[..rest.find([',', '}']).unwrap()].parse().unwrap())
        .collect()
}

/// The sum of the next offsets `connector` stored in Redis.
fn stored_offsets(r: &RedisServer, connector: &str) -> u64 {
    let all = r.cli(&["HGETALL", &format!("sluice:offsets:{connector}")]);
    let lines: Vec<&str> = all.lines().collect();
    lines
        .chunks(2)
        .map(|pair| pair[1].parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_redis_sink_killed_at_random_moments_adds_every_record_to_its_stream_once() {
    const RECORDS: u64 = 200_000;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 20,000 records/s: the 200,000 take ten seconds of running, so the
    // kills land while records flow.
    let manifest = manifest()
        .connector(gen_source(RECORDS, 20_000, 64))
        .connector(redis_sink("rs", &redis, "xadd", "events"))
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 200..1000);
    assert_exactly_once(stream_seqs(&redis, "events"), RECORDS);
    assert_eq!(stored_offsets(&redis, "rs"), RECORDS);
}

#[test]
fn each_redis_mode_writes_what_it_says_and_a_refused_command_is_dead_lettered() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    redis.cli(&["SET", "not-a-list", "a string"]);
    let dir = tempfile::tempdir().unwrap();
    // A subscriber to the channel before anything is published.
    let mut subscriber = std::process::Command::new("/usr/bin/redis-cli")
        .args(["-p", &redis.port().to_string(), "--raw", "SUBSCRIBE", "ch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the subscriber is there", Duration::from_secs(10), || {
        redis.cli(&["PUBSUB", "NUMSUB", "ch"]).lines().nth(1) == Some("1")
    });
    let records = keyed_records([("a", "1"), ("b", "2"), ("a", "3")]);
    let manifest = manifest()
        .connector(source("keyed", wasm("emit-keyed"), "events").config("records", records))
        .connector(redis_sink("set", &redis, "set", "s:{key}").config("ttl_ms", 600_000))
        .connector(redis_sink("hset", &redis, "hset", "h"))
        .connector(redis_sink("lpush", &redis, "lpush", "l"))
        .connector(redis_sink("rpush", &redis, "rpush", "r:{topic}"))
        .connector(redis_sink("xadd", &redis, "xadd", "x").config("maxlen", 1000))
        .connector(redis_sink("publish", &redis, "publish", "ch"))
        .connector(redis_sink("wrong", &redis, "rpush", "not-a-list"))
        .connector(dead_letters("wrong.dlq"))
        .write(dir.path());
    run_finished(&manifest);

    assert_eq!(redis.cli(&["MGET", "s:a", "s:b"]), "3\n2\n");
    let ttl: u64 = redis.cli(&["PTTL", "s:a"]).trim().parse().unwrap();
    assert!(ttl > 500_000 && ttl <= 600_000, "{ttl}");
    assert_eq!(redis.cli(&["HGETALL", "h"]), "a\n3\nb\n2\n");
    assert_eq!(redis.cli(&["LRANGE", "l", "0", "-1"]), "3\n2\n1\n");
    assert_eq!(redis.cli(&["LRANGE", "r:events", "0", "-1"]), "1\n2\n3\n");
    let entries = redis.cli(&["XRANGE", "x", "-", "+"]);
    let fields: Vec<&str> = entries.lines().filter(|l| !l.contains('-')).collect();
    assert_eq!(
        fields,
        [
            "value", "1", "key", "a", "value", "2", "key", "b", "value", "3", "key", "a"
        ]
    );
    subscriber.kill().unwrap();
    let heard = subscriber.wait_with_output().unwrap();
    let heard = String::from_utf8_lossy(&heard.stdout);
    let messages: Vec<&str> = heard.lines().collect();
    assert!(
        messages.ends_with(&[
            "message", "ch", "1", "message", "ch", "2", "message", "ch", "3"
        ]),
        "{heard}"
    );

    // The list that is a string: each push refused, with Redis's reason.
    assert_eq!(redis.cli(&["GET", "not-a-list"]), "a string\n");
    let dead = output_lines(&dir.path().join("dlq"));
    assert_eq!(dead.len(), 3, "{dead:?}");
    for line in &dead {
        assert!(line.contains("WRONGTYPE"), "{line}");
    }
    for sink in ["set", "hset", "lpush", "rpush", "xadd", "publish", "wrong"] {
        assert_eq!(stored_offsets(&redis, sink), 3, "{sink}");
    }

    // Run again: every sink resumes from the offsets it stored with its
    // data, and writes nothing twice.
    run_finished(&manifest);
    assert_eq!(redis.cli(&["LRANGE", "l", "0", "-1"]), "3\n2\n1\n");
    assert_eq!(redis.cli(&["XLEN", "x"]), "3\n");
}

#[test]
fn a_redis_server_stopped_and_started_mid_run_pauses_the_sink_once_and_loses_nothing() {
    const RECORDS: u64 = 100_000;
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(gen_source(RECORDS, 40_000, 64))
        .connector(redis_sink("rs", &redis, "xadd", "events"))
        .write(dir.path());
    let mut child = sluice()
        .args(["run", "--no-progress", manifest.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("run.log")).unwrap())
        .spawn()
        .unwrap();
    wait_until("records flow", Duration::from_secs(30), || {
        redis.cli(&["XLEN", "events"]).trim() != "0"
    });
    redis.stop();
    std::thread::sleep(Duration::from_millis(1500));
    redis.resume();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("run.log")).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert_exactly_once(stream_seqs(&redis, "events"), RECORDS);
    let away = format!("redis-sink: {} is away", redis.addr());
    assert_eq!(log.matches(&away).count(), 1, "said once: {log}");
    assert!(
        log.contains(&format!("redis-sink: {} is back", redis.addr())),
        "{log}"
    );
}

#[test]
fn redis_connectors_refuse_at_open_an_ungranted_server_and_a_wrong_password_and_show_no_password() {
    const PASSWORD: &str = "right-Redis-s3cr3t";
    let Some(redis) = RedisServer::start_with_password(PASSWORD) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let with_password = |c: Connector| {
        c.config("password", "${secret:redis}")
            .secret("redis", "file", "redis-password")
    };
    // A sink fed by datagen, or a source into files.
    let attempt = |c: Connector, password: &str| {
        std::fs::write(dir.path().join("redis-password"), password).unwrap();
        let other = if c.kind() == "source" {
            files_sink().set("topic", "copied")
        } else {
            gen_source(10, 0, 64)
        };
        let manifest = manifest().connector(other).connector(c).write(dir.path());
        let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
        let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        assert!(!all.contains("s3cr3t"), "the password shows:\n{all}");
        (out.status.code(), all)
    };

    // Granted another port only.
    let ungranted =
        with_password(redis_sink("rs", &redis, "xadd", "events")).grant("net", vec!["127.0.0.1:1"]);
    let (code, all) = attempt(ungranted, PASSWORD);
    assert_ne!(code, Some(0), "{all}");
    assert!(
        all.contains(&redis.addr()) && all.contains("grant"),
        "{all}"
    );

    // No password, then the wrong one.
    let (code, all) = attempt(redis_sink("rs", &redis, "xadd", "events"), PASSWORD);
    assert_ne!(code, Some(0), "{all}");
    assert!(all.contains("NOAUTH"), "{all}");
    let (code, all) = attempt(
        with_password(redis_sink("rs", &redis, "xadd", "events")),
        "wrong-s3cr3t",
    );
    assert_ne!(code, Some(0), "{all}");
    assert!(
        all.contains("WRONGPASS") && all.contains(&redis.addr()),
        "{all}"
    );

    let (code, all) = attempt(
        with_password(redis_sink("rs", &redis, "xadd", "events")),
        PASSWORD,
    );
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(stream_seqs(&redis, "events").len(), 10);

    // The source alike: ungranted, then the wrong password, then the right
    // one, which reads the ten entries the sink wrote.
    let reader = || {
        redis_source(&redis)
            .set("topic", "copied")
            .config("stream", "events")
            .config("bounded", true)
    };
    let (code, all) = attempt(
        with_password(reader()).grant("net", vec!["127.0.0.1:1"]),
        PASSWORD,
    );
    assert_ne!(code, Some(0), "{all}");
    assert!(
        all.contains(&redis.addr()) && all.contains("grant"),
        "{all}"
    );
    let (code, all) = attempt(with_password(reader()), "wrong-s3cr3t");
    assert_ne!(code, Some(0), "{all}");
    assert!(
        all.contains("WRONGPASS") && all.contains(&redis.addr()),
        "{all}"
    );
    let (code, all) = attempt(with_password(reader()), PASSWORD);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(seqs(&dir.path().join("out")).len(), 10, "{all}");
}

/// `XADD <stream> * value {"seq":N}` for N in `range`.
fn seq_entries(stream: &str, range: std::ops::Range<u64>) -> impl Iterator<Item = Vec<String>> {
    let stream = stream.to_owned();
    range.map(move |i| {
        vec![
            "XADD".into(),
            stream.clone(),
            "*".into(),
            "value".into(),
            format!("{{\"seq\":{i}}}"),
        ]
    })
}

/// A `redis-source` named `rsrc` reading the stream `src` into `events`.
fn redis_source(r: &RedisServer) -> Connector {
    source("rsrc", "redis-source", "events")
        .config("addr", r.addr().as_str())
        .config("stream", "src")
        .grant("net", vec![r.addr().as_str()])
}

/// How many entries of `src` the group `rsrc` has delivered and not had
/// acknowledged.
fn pending(r: &RedisServer) -> u64 {
    let summary = r.cli(&["XPENDING", "src", "rsrc"]);
    summary.lines().next().unwrap().parse().unwrap()
}

#[test]
fn a_redis_source_killed_at_random_moments_puts_every_entry_in_the_log_once() {
    const RECORDS: u64 = 200_000;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    redis.pipe(seq_entries("src", 0..RECORDS));
    let dir = tempfile::tempdir().unwrap();
    // The file-sink slowed to 20,000 records/s would hold the source back
    // only through the log's backlog; instead the source's batches are
    // small, so the run takes seconds and the kills land while it reads.
    let manifest = manifest()
        .connector(
            redis_source(&redis)
                .config("bounded", true)
                .batch("max_records", 2),
        )
        .connector(files_sink())
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 50..400);
    assert_exactly_once(seqs(&dir.path().join("out")), RECORDS);
    assert_eq!(pending(&redis), 0, "every entry acknowledged");
}

#[test]
fn a_redis_source_waits_for_new_entries_and_rides_out_a_server_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.pipe(seq_entries("src", 0..1000));
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(redis_source(&redis))
        .connector(files_sink())
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("the backlog arrives", Duration::from_secs(30), || {
        seqs(&out).len() >= 1000
    });
    // New entries while the source waits in its read.
    redis.pipe(seq_entries("src", 1000..2000));
    wait_until("new entries arrive", Duration::from_secs(30), || {
        seqs(&out).len() >= 2000
    });
    redis.stop();
    std::thread::sleep(Duration::from_millis(1500));
    redis.resume();
    redis.pipe(seq_entries("src", 2000..3000));
    wait_until(
        "entries after the restart arrive",
        Duration::from_secs(30),
        || seqs(&out).len() >= 3000,
    );
    // Ctrl-C: a clean stop, the last batch committed and acknowledged.
    host.interrupt();
    let ended = host.wait_for_exit(Duration::from_secs(30));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(130), "{log}");
    assert_exactly_once(seqs(&out), 3000);
    let away = format!("redis-source: {} is away", redis.addr());
    assert_eq!(log.matches(&away).count(), 1, "said once: {log}");
    assert_eq!(pending(&redis), 0, "every entry acknowledged: {log}");
}

/// While full reads come back, the source sends its next read ahead, and an
/// `XACK` sent after a read that waits (`BLOCK`) waits with it: stopped
/// then, the source acknowledges those entries again on a connection of
/// its own, so none is left pending.
#[test]
fn a_redis_source_stopped_with_acknowledgements_behind_a_waiting_read_leaves_nothing_pending() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(
            redis_source(&redis)
                .config("block_ms", 20_000)
                .batch("max_records", 10),
        )
        .connector(files_sink())
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    // Wait until the group exists (the source makes it at open).
    wait_until("the group exists", Duration::from_secs(30), || {
        redis.cli(&["XINFO", "GROUPS", "src"]).contains("rsrc")
    });
    // Each step fills a read of 10: the next two reads are sent ahead, the
    // second waiting behind the first.
    for step in 0..3 {
        // In one transaction: a waiting read takes all ten.
        let multi = std::iter::once(vec!["MULTI".to_owned()]);
        let exec = std::iter::once(vec!["EXEC".to_owned()]);
        redis.pipe(
            multi
                .chain(seq_entries("src", step * 10..step * 10 + 10))
                .chain(exec),
        );
        wait_until("the entries arrive", Duration::from_secs(30), || {
            seqs(&out).len() as u64 >= step * 10 + 10
        });
        // Time for the batch's commit, so its XACK goes with the next read.
        std::thread::sleep(Duration::from_millis(300));
    }
    host.interrupt();
    let ended = host.wait_for_exit(Duration::from_secs(30));
    let log = host.log();
    assert_eq!(ended.status.code(), Some(130), "{log}");
    assert_exactly_once(seqs(&out), 30);
    assert_eq!(
        pending(&redis),
        0,
        "every stored entry acknowledged: {}",
        redis.cli(&["XPENDING", "src", "rsrc", "-", "+", "100"])
    );
}
