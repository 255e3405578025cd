//! `mariadb-sink` against a real MariaDB started by the test
//! (`sluice-test-servers`): its own directory and port, killed at the end.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use sluice_test_servers::mariadb::Mariadb;

use crate::common::*;
use crate::postgres::{keyed_lines, lines_source};

/// The user the sink logs in as, and its password (granted to it as a
/// secret from a file, so it is in no manifest).
const USER: &str = "sluice";
const PASSWORD: &str = "s3cret-Maria-pass";

/// A server with database `app` and the user `sluice`; `None` (skip) where
/// MariaDB is missing and `CI` is unset.
fn server() -> Option<Mariadb> {
    let db = Mariadb::start()?;
    db.create_user(USER, PASSWORD, "app");
    Some(db)
}

/// A `mariadb-sink` named `maria` reading `events` into `table`, granted
/// the server and its password (written to `dir/db-password`).
fn maria_sink(dir: &Path, db: &Mariadb, table: &str) -> Connector {
    std::fs::write(dir.join("db-password"), PASSWORD).unwrap();
    sink("maria", "mariadb-sink", "events")
        .config("addr", db.addr().as_str())
        .config("user", USER)
        .config("password", "${secret:db}")
        .config("database", "app")
        .config("table", table)
        .grant("net", vec![db.addr().as_str()])
        .secret("db", "file", "db-password")
}

/// The sum of the stored offsets of connector `maria`.
fn stored_offsets(db: &Mariadb) -> u64 {
    db.sql(
        "app",
        "SELECT coalesce(sum(next_offset), 0) FROM sluice_offsets WHERE connector = 'maria'",
    )
    .parse()
    .unwrap()
}

#[test]
fn mariadb_sink_inserting_killed_ten_times_writes_every_record_exactly_once() {
    const RECORDS: u64 = 200_000;
    let Some(db) = server() else { return };
    db.sql(
        "app",
        "CREATE TABLE every (id BIGINT, seq BIGINT NOT NULL, note TEXT) ENGINE = InnoDB",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(
            dir.path(),
            &keyed_lines(RECORDS, 1000),
            40_000,
        ))
        .connector(maria_sink(dir.path(), &db, "every"))
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 200..1000);
    // No primary key: a record written twice would be two rows.
    assert_eq!(
        db.sql(
            "app",
            "SELECT count(*), count(DISTINCT seq), min(seq), max(seq) FROM every"
        ),
        format!("{RECORDS}\t{RECORDS}\t0\t{}", RECORDS - 1)
    );
    assert_eq!(stored_offsets(&db), RECORDS);
}

#[test]
fn mariadb_sink_upserting_killed_ten_times_keeps_the_last_value_per_key() {
    const RECORDS: u64 = 300_000;
    const KEYS: u64 = 30_000;
    let Some(db) = server() else { return };
    db.sql(
        "app",
        "CREATE TABLE latest (id BIGINT PRIMARY KEY, seq BIGINT NOT NULL, note TEXT) ENGINE = InnoDB",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(
            dir.path(),
            &keyed_lines(RECORDS, KEYS),
            50_000,
        ))
        .connector(
            maria_sink(dir.path(), &db, "latest")
                .config("mode", "upsert")
                .config("key_columns", vec!["id"]),
        )
        .write(dir.path());
    crate::crash::storm(dir.path(), &manifest, 10, 200..1000);
    // Each key's last record: seq = RECORDS - KEYS + id.
    assert_eq!(
        db.sql(
            "app",
            &format!(
                "SELECT count(*), sum(seq = {} + id AND note = concat('n', seq)) FROM latest",
                RECORDS - KEYS
            )
        ),
        format!("{KEYS}\t{KEYS}")
    );
    assert_eq!(
        stored_offsets(&db),
        RECORDS,
        "the offsets table is at the log's end"
    );
}

#[test]
fn mariadb_sink_dead_letters_the_rows_mariadb_refuses_and_deletes_on_a_tombstone() {
    let Some(db) = server() else { return };
    db.sql(
        "app",
        "CREATE TABLE picky (id BIGINT PRIMARY KEY, qty INT NOT NULL, note VARCHAR(10)) ENGINE = InnoDB",
    );
    let dir = tempfile::tempdir().unwrap();
    let mut lines = String::new();
    for i in 0..100 {
        match i {
            // Not an integer, and a NOT NULL column left out.
            17 => lines.push_str("{\"id\":17,\"qty\":\"many\"}\n"),
            60 => lines.push_str("{\"id\":60,\"note\":\"no qty\"}\n"),
            _ => lines.push_str(&format!(
                "{{\"id\":{i},\"qty\":{i},\"note\":\"it's {i}\"}}\n"
            )),
        }
    }
    let picky = manifest()
        .connector(lines_source(dir.path(), lines.as_bytes(), 0))
        .connector(maria_sink(dir.path(), &db, "picky"))
        .connector(dead_letters("maria.dlq"))
        .write(dir.path());
    run_finished(&picky);
    assert_eq!(
        db.sql("app", "SELECT count(*), sum(id) FROM picky"),
        format!("98\t{}", (0..100).sum::<i64>() - 17 - 60),
        "the good rows are in"
    );
    assert_eq!(
        db.sql("app", "SELECT note FROM picky WHERE id = 5"),
        "it's 5"
    );
    let mut dead: Vec<(String, String)> = Vec::new();
    for f in output_files(&dir.path().join("dlq")) {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            dead.push((
                r["headers"]["sluice.offset"].as_str().unwrap().to_owned(),
                r["headers"]["sluice.error"].as_str().unwrap().to_owned(),
            ));
        }
    }
    dead.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].0, "17");
    assert!(
        dead[0].1.contains("Incorrect integer value") && dead[0].1.contains("1366"),
        "MariaDB's own message: {}",
        dead[0].1
    );
    assert_eq!(dead[1].0, "60");
    assert!(
        dead[1].1.contains("qty") && dead[1].1.contains("1364"),
        "{}",
        dead[1].1
    );
    assert_eq!(stored_offsets(&db), 100);

    // Upsert by the record's key (a JSON object, a bare number); a
    // tombstone deletes its row.
    let keyed = dir.path().join("keyed");
    std::fs::create_dir_all(&keyed).unwrap();
    let changes = keyed_records([("5", r#"{"qty":500}"#), (r#"{"id":6}"#, "")]);
    let keyed_manifest = manifest()
        .connector(source("keyed", wasm("emit-keyed"), "events").config("records", changes))
        .connector(
            maria_sink(&keyed, &db, "picky")
                .set("name", "maria-keyed")
                .config("mode", "upsert")
                .config("key_columns", vec!["id"])
                .config("delete_on_null", true),
        )
        .write(&keyed);
    run_finished(&keyed_manifest);
    assert_eq!(
        db.sql("app", "SELECT qty, note FROM picky WHERE id = 5"),
        "500\tit's 5"
    );
    assert_eq!(
        db.sql("app", "SELECT count(*) FROM picky WHERE id = 6"),
        "0"
    );
}

#[test]
fn mariadb_sink_refuses_at_open_what_cannot_work_and_shows_no_password() {
    let Some(db) = server() else { return };
    db.sql("app", "CREATE TABLE t (id BIGINT) ENGINE = InnoDB; CREATE TABLE loose (id BIGINT) ENGINE = MyISAM");
    let dir = tempfile::tempdir().unwrap();
    let lines = keyed_lines(10, 10);
    let fails_with = |sink: Connector, expected: &[&str], secret: &str| {
        let manifest = manifest()
            .connector(lines_source(dir.path(), &lines, 0))
            .connector(sink)
            .write(dir.path());
        std::fs::write(dir.path().join("db-password"), secret).unwrap();
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
        maria_sink(dir.path(), &db, "t").grant("net", vec!["127.0.0.1:1"]),
        &["connecting to", "grant"],
        PASSWORD,
    );
    // The wrong password, from the secret.
    fails_with(
        maria_sink(dir.path(), &db, "t"),
        &["Access denied for user 'sluice'", "1045"],
        "not-the-Password-42",
    );
    fails_with(
        maria_sink(dir.path(), &db, "nope"),
        &["there is no table \"nope\""],
        PASSWORD,
    );
    fails_with(
        maria_sink(dir.path(), &db, "loose"),
        &["MyISAM", "ENGINE = InnoDB"],
        PASSWORD,
    );
}

#[test]
fn mariadb_sink_waits_out_a_server_crash_says_so_once_and_loses_nothing() {
    const RECORDS: u64 = 150_000;
    let Some(mut db) = server() else { return };
    db.sql(
        "app",
        "CREATE TABLE steady (id BIGINT, seq BIGINT NOT NULL, note TEXT) ENGINE = InnoDB",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(dir.path(), &keyed_lines(RECORDS, 10), 30_000))
        .connector(maria_sink(dir.path(), &db, "steady"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let count = |db: &Mariadb| -> u64 {
        db.sql("app", "SELECT count(*) FROM steady")
            .parse()
            .unwrap()
    };
    wait_until("rows arrive", Duration::from_secs(30), || {
        count(&db) > 20_000
    });
    // Killed as a crash would: a transaction may be cut off mid-commit.
    db.kill();
    host.wait_for_log("is away", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    db.start_again();
    let out = host.wait_for_exit(Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0), "{}", host.log());
    assert_eq!(
        db.sql("app", "SELECT count(*), count(DISTINCT seq) FROM steady"),
        format!("{RECORDS}\t{RECORDS}")
    );
    assert_eq!(stored_offsets(&db), RECORDS);
    let log = host.log();
    assert_eq!(log.matches("is away").count(), 1, "said once:\n{log}");
    assert_eq!(log.matches("is back").count(), 1, "said once:\n{log}");
}
