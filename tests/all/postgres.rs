//! The PostgreSQL connectors against a real PostgreSQL 15 started by the
//! test (`sluice-test-servers`): its own directory and port, logical
//! replication on, stopped at the end.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::Path;
use std::time::Duration;

use sluice_test_servers::postgres::{Options, Postgres};

use crate::common::*;

/// The role the connectors log in as, and its password (granted to them as
/// a secret from a file, so it is in no manifest).
const USER: &str = "sluice";
const PASSWORD: &str = "s3cret-Pg-pass";

/// A server with database `app` and the role `sluice` owning its public
/// schema; `None` (skip) where PostgreSQL is missing and `CI` is unset.
fn server_with(options: &Options) -> Option<Postgres> {
    let pg = Postgres::start_with(options)?;
    pg.create_database("app");
    pg.create_user(USER, PASSWORD, "app");
    Some(pg)
}

fn server() -> Option<Postgres> {
    server_with(&Options::default())
}

/// A `postgres-sink` named `pg` reading `events` into `table`, granted the
/// server and its password (written to `dir/pg-password`).
fn pg_sink(dir: &Path, pg: &Postgres, table: &str) -> Connector {
    std::fs::write(dir.join("pg-password"), PASSWORD).unwrap();
    sink("pg", "postgres-sink", "events")
        .config("addr", pg.addr().as_str())
        .config("user", USER)
        .config("password", "${secret:pg}")
        .config("database", "app")
        .config("table", table)
        .grant("net", vec![pg.addr().as_str()])
        .secret("pg", "file", "pg-password")
}

/// A `file-source` named `lines` reading `dir/in/` into `events`, at `rate`
/// lines a second (0: as fast as it reads).
fn lines_source(dir: &Path, lines: &[u8], rate: u64) -> Connector {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/lines.txt"), lines).unwrap();
    source("lines", "file-source", "events")
        .config("path", "/in")
        .config("rate", rate as i64)
        .files("in", "/in", "read-only")
}

/// `{"id":N mod keys,"seq":N,"note":"…"}` lines for N in `0..n`.
fn keyed_lines(n: u64, keys: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            format!("{{\"id\":{},\"seq\":{i},\"note\":\"n{i}\"}}\n", i % keys).into_bytes()
        })
        .collect()
}

/// The sum of `pg`'s stored offsets for connector `pg`.
fn stored_offsets(pg: &Postgres) -> u64 {
    pg.psql(
        "app",
        "SELECT coalesce(sum(next_offset), 0) FROM sluice_offsets WHERE connector = 'pg'",
    )
    .parse()
    .unwrap()
}

#[test]
fn postgres_sink_inserts_records_as_rows_and_stores_its_offsets_with_them() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.events (id bigint, seq bigint PRIMARY KEY, note text, at timestamptz DEFAULT now()); \
         ALTER TABLE public.events OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(dir.path(), &keyed_lines(10_000, 100), 0))
        .connector(pg_sink(dir.path(), &pg, "events"))
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*), count(DISTINCT seq), sum(seq), count(at) FROM events"
        ),
        format!("10000|10000|{}|10000", (0..10_000u64).sum::<u64>())
    );
    assert_eq!(
        pg.psql("app", "SELECT note FROM events WHERE seq = 4242"),
        "n4242"
    );
    assert_eq!(stored_offsets(&pg), 10_000);
    // Run again: the sink resumes from the offsets it stored, and nothing
    // is written twice (the primary key would refuse it to the DLQ).
    let again = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(pg.psql("app", "SELECT count(*) FROM events"), "10000");
}

#[test]
fn postgres_sink_dead_letters_the_rows_postgres_refuses_and_commits_the_rest() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.picky (id bigint PRIMARY KEY, qty integer NOT NULL, note text); \
         ALTER TABLE public.picky OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..100 {
        match i {
            // Not an integer, and a NOT NULL column left out.
            17 => lines.push_str("{\"id\":17,\"qty\":\"many\"}\n"),
            60 => lines.push_str("{\"id\":60,\"note\":\"no qty\"}\n"),
            _ => lines.push_str(&format!("{{\"id\":{i},\"qty\":{i}}}\n")),
        }
    }
    for insert_with in ["copy", "statements"] {
        pg.psql("app", "TRUNCATE picky; DROP TABLE IF EXISTS sluice_offsets");
        let run_dir = dir.path().join(insert_with);
        std::fs::create_dir_all(&run_dir).unwrap();
        let manifest = manifest()
            .connector(lines_source(&run_dir, lines.as_bytes(), 0))
            .connector(pg_sink(&run_dir, &pg, "picky").config("insert_with", insert_with))
            .connector(
                sink("dlq-reader", "file-sink", "pg.dlq")
                    .config("path", "/out")
                    .config("format", "json")
                    .files("dlq", "/out", "read-write"),
            )
            .write(&run_dir);
        let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert_eq!(
            pg.psql("app", "SELECT count(*), sum(id) FROM picky"),
            format!("98|{}", (0..100).sum::<i64>() - 17 - 60),
            "{insert_with}: the good rows are in"
        );
        let mut dead: Vec<(String, String)> = Vec::new();
        for f in output_files(&run_dir.join("dlq")) {
            for line in std::fs::read_to_string(f).unwrap().lines() {
                let r: serde_json::Value = serde_json::from_str(line).unwrap();
                dead.push((
                    r["headers"]["sluice.offset"].as_str().unwrap().to_owned(),
                    r["headers"]["sluice.error"].as_str().unwrap().to_owned(),
                ));
            }
        }
        dead.sort();
        assert_eq!(dead.len(), 2, "{insert_with}: {dead:?}");
        assert_eq!(dead[0].0, "17");
        assert!(
            dead[0].1.contains("invalid input syntax for type integer"),
            "PostgreSQL's own message: {}",
            dead[0].1
        );
        assert_eq!(dead[1].0, "60");
        assert!(
            dead[1].1.contains("null value in column \"qty\"") && dead[1].1.contains("23502"),
            "{}",
            dead[1].1
        );
        assert_eq!(stored_offsets(&pg), 100, "{insert_with}");
    }
}

#[test]
fn postgres_sink_creates_a_missing_table_only_when_told_to() {
    let Some(pg) = server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = b"{\"id\":1,\"name\":\"a\",\"score\":1.5,\"ok\":true,\"tags\":[\"x\"],\"at\":\"2024-05-01T12:00:00Z\"}\n";
    let without = manifest()
        .connector(lines_source(dir.path(), lines, 0))
        .connector(pg_sink(dir.path(), &pg, "made_{topic}"))
        .write(dir.path());
    let out = run(&["run", "--no-progress", without.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("there is no table \"made_events\"") && err.contains("create_table = true"),
        "{err}"
    );

    let manifest = manifest()
        .connector(lines_source(dir.path(), lines, 0))
        .connector(pg_sink(dir.path(), &pg, "made_{topic}").config("create_table", true))
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY column_name) \
             FROM information_schema.columns WHERE table_name = 'made_events'"
        ),
        "at timestamp with time zone, id bigint, name text, ok boolean, score double precision, tags jsonb"
    );
    assert_eq!(
        pg.psql(
            "app",
            "SELECT id, name, score, ok, tags->>0 FROM made_events"
        ),
        "1|a|1.5|t|x"
    );
}

#[test]
fn postgres_sink_refuses_at_open_an_ungranted_server_and_a_wrong_password_and_shows_no_password() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.t (id bigint); ALTER TABLE public.t OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let lines = keyed_lines(10, 10);
    let fails_with = |sink: Connector, expected: &[&str], secret: &str| {
        let manifest = manifest()
            .connector(lines_source(dir.path(), &lines, 0))
            .connector(sink)
            .write(dir.path());
        std::fs::write(dir.path().join("pg-password"), secret).unwrap();
        let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
        assert_ne!(out.status.code(), Some(0));
        let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
        for e in expected {
            assert!(all.contains(e), "expected {e:?} in:\n{all}");
        }
        assert!(!all.contains(secret), "the password shows:\n{all}");
        assert!(!all.contains(PASSWORD), "the password shows:\n{all}");
    };

    // Granted another port only.
    fails_with(
        pg_sink(dir.path(), &pg, "t").grant("net", vec!["127.0.0.1:1"]),
        &["connecting to", "grant"],
        PASSWORD,
    );
    // The wrong password, from the secret.
    let wrong = "not-the-Password-42";
    let wrong_sink = pg_sink(dir.path(), &pg, "t");
    fails_with(
        wrong_sink,
        &[
            "password authentication failed for user \"sluice\"",
            "28P01",
        ],
        wrong,
    );
}

#[test]
fn postgres_sink_speaks_tls_through_the_host_to_a_server_that_requires_it() {
    let Some((dir, pki)) = crate::tls::with_pki() else {
        return;
    };
    let Some(pg) = server_with(&Options {
        tls: Some((pki.join("server.pem"), pki.join("server.key"))),
        require_tls: true,
    }) else {
        return;
    };
    pg.psql("app", "CREATE TABLE public.t (id bigint, seq bigint, note text); ALTER TABLE public.t OWNER TO sluice");
    let lines = keyed_lines(1000, 10);
    let mut ca = toml::Table::new();
    ca.insert(
        "ca_file".into(),
        pki.join("ca.pem").to_str().unwrap().into(),
    );
    let tls_sink = |tls: bool| {
        let sink = pg_sink(dir.path(), &pg, "t")
            .config("tls", tls)
            .config("server_name", "localhost");
        if tls {
            sink.grant("tls", ca.clone())
        } else {
            sink
        }
    };

    // In plain text: the server's refusal, and what to do.
    let plain = manifest()
        .connector(lines_source(dir.path(), &lines, 0))
        .connector(tls_sink(false))
        .write(dir.path());
    let out = run(&["run", "--no-progress", plain.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("no encryption") && err.contains("set tls = true"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD));

    // TLS without the CA granted: the server's certificate is not trusted.
    let untrusted = manifest()
        .connector(lines_source(dir.path(), &lines, 0))
        .connector(
            pg_sink(dir.path(), &pg, "t")
                .config("tls", true)
                .config("server_name", "localhost"),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", untrusted.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("TLS handshake with") && err.contains(&pg.addr()),
        "{err}"
    );

    // With the CA granted: it works.
    let manifest = manifest()
        .connector(lines_source(dir.path(), &lines, 0))
        .connector(tls_sink(true))
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The server takes nothing but TLS (`hostnossl … reject`).
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "1000");
}

#[test]
fn postgres_sink_upserting_a_million_records_killed_ten_times_keeps_the_last_value_per_key() {
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 100_000;
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.latest (id bigint PRIMARY KEY, seq bigint NOT NULL, note text); \
         ALTER TABLE public.latest OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    // 100,000 lines a second: ten seconds of records, so the kills land
    // while they flow.
    let manifest = manifest()
        .connector(lines_source(
            dir.path(),
            &keyed_lines(RECORDS, KEYS),
            100_000,
        ))
        .connector(
            pg_sink(dir.path(), &pg, "latest")
                .config("mode", "upsert")
                .config("key_columns", vec!["id"]),
        )
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 300..1500);
    // Each key's last record: seq = RECORDS - KEYS + id.
    assert_eq!(
        pg.psql(
            "app",
            &format!(
                "SELECT count(*), count(*) FILTER (WHERE seq = {} + id AND note = 'n' || seq) FROM latest",
                RECORDS - KEYS
            )
        ),
        format!("{KEYS}|{KEYS}")
    );
    assert_eq!(
        stored_offsets(&pg),
        RECORDS,
        "the offsets table is at the log's end"
    );
}

#[test]
fn postgres_sink_inserting_killed_ten_times_writes_every_record_exactly_once() {
    const RECORDS: u64 = 300_000;
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.every (id bigint, seq bigint NOT NULL, note text); \
         ALTER TABLE public.every OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(
            dir.path(),
            &keyed_lines(RECORDS, 1000),
            60_000,
        ))
        .connector(pg_sink(dir.path(), &pg, "every"))
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 200..1000);
    // No primary key: a record written twice would be two rows.
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM every"
        ),
        format!("{RECORDS}|{RECORDS}|0|{}", RECORDS - 1)
    );
    assert_eq!(stored_offsets(&pg), RECORDS);
}

#[test]
fn postgres_sink_waits_out_a_server_restart_says_so_once_and_loses_nothing() {
    const RECORDS: u64 = 200_000;
    let Some(mut pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE public.steady (id bigint, seq bigint NOT NULL, note text); \
         ALTER TABLE public.steady OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(dir.path(), &keyed_lines(RECORDS, 10), 40_000))
        .connector(pg_sink(dir.path(), &pg, "steady"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let count = |pg: &Postgres| -> u64 { pg.psql("app", "SELECT count(*) FROM steady").parse().unwrap() };
    wait_until("rows arrive", Duration::from_secs(30), || count(&pg) > 20_000);
    pg.stop();
    host.wait_for_log("is away", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    pg.start_again();
    let out = host.wait_for_exit(Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0), "{}", host.log());
    assert_eq!(
        pg.psql("app", "SELECT count(*), count(DISTINCT seq) FROM steady"),
        format!("{RECORDS}|{RECORDS}")
    );
    let log = host.log();
    assert_eq!(log.matches("is away").count(), 1, "said once:\n{log}");
    assert_eq!(log.matches("is back").count(), 1, "said once:\n{log}");
}
