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

/// Makes `public.<name>` with `columns`, owned by the connectors' role.
fn owned_table(pg: &Postgres, name: &str, columns: &str) {
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE public.{name} ({columns}); ALTER TABLE public.{name} OWNER TO {USER}"
        ),
    );
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
pub(crate) fn lines_source(dir: &Path, lines: &[u8], rate: u64) -> Connector {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    std::fs::write(dir.join("in/lines.txt"), lines).unwrap();
    source("lines", "file-source", "events")
        .config("path", "/in")
        .config("rate", rate as i64)
        .files("in", "/in", "read-only")
}

/// `{"id":N mod keys,"seq":N,"note":"…"}` lines for N in `0..n`.
pub(crate) fn keyed_lines(n: u64, keys: u64) -> Vec<u8> {
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
    owned_table(
        &pg,
        "events",
        "id bigint, seq bigint PRIMARY KEY, note text, at timestamptz DEFAULT now()",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(dir.path(), &keyed_lines(10_000, 100), 0))
        .connector(pg_sink(dir.path(), &pg, "events"))
        .write(dir.path());
    run_finished(&manifest);
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
    run_finished(&manifest);
    assert_eq!(pg.psql("app", "SELECT count(*) FROM events"), "10000");
}

#[test]
fn postgres_sink_dead_letters_the_rows_postgres_refuses_and_commits_the_rest() {
    let Some(pg) = server() else { return };
    owned_table(
        &pg,
        "picky",
        "id bigint PRIMARY KEY, qty integer NOT NULL, note text",
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
            .connector(dead_letters("pg.dlq"))
            .write(&run_dir);
        run_finished(&manifest);
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
    run_finished(&manifest);
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
    owned_table(&pg, "t", "id bigint");
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
    owned_table(&pg, "t", "id bigint, seq bigint, note text");
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
    run_finished(&manifest);
    // The server takes nothing but TLS (`hostnossl … reject`).
    assert_eq!(pg.psql("app", "SELECT count(*) FROM t"), "1000");
}

#[test]
fn postgres_sink_upserting_a_million_records_killed_ten_times_keeps_the_last_value_per_key() {
    const RECORDS: u64 = 1_000_000;
    const KEYS: u64 = 100_000;
    let Some(pg) = server() else { return };
    owned_table(
        &pg,
        "latest",
        "id bigint PRIMARY KEY, seq bigint NOT NULL, note text",
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
    owned_table(&pg, "every", "id bigint, seq bigint NOT NULL, note text");
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
    owned_table(&pg, "steady", "id bigint, seq bigint NOT NULL, note text");
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(lines_source(dir.path(), &keyed_lines(RECORDS, 10), 40_000))
        .connector(pg_sink(dir.path(), &pg, "steady"))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    let count = |pg: &Postgres| -> u64 {
        pg.psql("app", "SELECT count(*) FROM steady")
            .parse()
            .unwrap()
    };
    wait_until("rows arrive", Duration::from_secs(30), || {
        count(&pg) > 20_000
    });
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

/// A `postgres-cdc` named `cdc` capturing `tables` into `changes`, and a
/// `file-sink` (JSON: key, value, headers) writing that topic to `out/`.
fn cdc_to_files(dir: &Path, pg: &Postgres, tables: &[&str]) -> ManifestBuilder {
    std::fs::write(dir.join("pg-password"), PASSWORD).unwrap();
    manifest()
        .connector(
            source("cdc", "postgres-cdc", "changes")
                .config("addr", pg.addr().as_str())
                .config("user", USER)
                .config("password", "${secret:pg}")
                .config("database", "app")
                .config("tables", tables.to_vec())
                .grant("net", vec![pg.addr().as_str()])
                .secret("pg", "file", "pg-password"),
        )
        .connector(
            sink("files", "file-sink", "changes")
                .set("flush_interval_ms", 100)
                .config("path", "/out")
                .config("format", "json")
                .files("out", "/out", "read-write"),
        )
}

/// A change as the test compares them: table, op (`c`, `u`, `d`), row id,
/// and `v` after it (none for a delete).
type Seen = (String, char, i64, Option<i64>);

/// The changes the `file-sink` wrote to `out/`, in log order, from their
/// envelopes.
fn captured(dir: &Path) -> Vec<(Seen, serde_json::Value)> {
    captured_in(&dir.join("out"))
}

/// The changes a `file-sink` wrote to `out`, in log order.
fn captured_in(out_dir: &Path) -> Vec<(Seen, serde_json::Value)> {
    let mut out = Vec::new();
    for f in output_files(out_dir) {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let env: serde_json::Value =
                serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            let table = format!(
                "{}.{}",
                r["headers"]["schema"].as_str().unwrap(),
                r["headers"]["table"].as_str().unwrap()
            );
            let op = env["op"].as_str().unwrap().chars().next().unwrap();
            let row = if op == 'd' {
                &env["before"]
            } else {
                &env["after"]
            };
            let id = row["id"].as_i64().unwrap();
            let v = if op == 'd' {
                None
            } else {
                env["after"]["v"].as_i64()
            };
            out.push(((table, op, id, v), env));
        }
    }
    out
}

/// What the server's own `test_decoding` slot `truth` says was committed,
/// in commit order.
fn committed(pg: &Postgres) -> Vec<Seen> {
    let text = pg.psql(
        "app",
        "SELECT data FROM pg_logical_slot_get_changes('truth', NULL, NULL) WHERE data LIKE 'table %'",
    );
    let number = |s: &str, field: &str| -> Option<i64> {
        let at = s.find(field)? + field.len();
        let digits: String = s[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse().ok()
    };
    text.lines()
        .map(|l| {
            // table public.a: UPDATE: [old-key: … new-tuple: ]id[integer]:5 v[bigint]:51
            let (table, rest) = l["table ".len()..].split_once(": ").unwrap();
            let (op, cols) = rest.split_once(": ").unwrap();
            let cols = cols.rsplit("new-tuple: ").next().unwrap();
            let op = match op {
                "INSERT" => 'c',
                "UPDATE" => 'u',
                "DELETE" => 'd',
                other => panic!("{other}"),
            };
            let id = number(cols, "id[integer]:").unwrap();
            let v = (op != 'd').then(|| number(cols, "v[bigint]:").unwrap());
            (table.to_owned(), op, id, v)
        })
        .collect()
}

/// A workload of about `changes` row changes over tables `a`, `b` and
/// `c`: inserts, updates and deletes of ranges, in transactions of one to
/// three statements of 1 to 1000 rows (5000 in every twentieth), every
/// seventh rolled back, with a
/// short sleep between transactions so that it lasts a few seconds.
fn workload(changes: u64, seed: u64) -> String {
    let mut rng = seed | 1;
    let mut below = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut sql = String::new();
    let (mut next, mut low) = ([0u64; 3], [0u64; 3]);
    let mut made = 0;
    let mut tx = 0;
    while made < changes {
        tx += 1;
        let rolled_back = tx % 7 == 0;
        // A rolled-back transaction's ids are used again by the next.
        let (kept_next, kept_low, kept_made) = (next, low, made);
        sql.push_str("BEGIN;\n");
        for _ in 0..=below(3) {
            let t = below(3) as usize;
            let name = ["a", "b", "c"][t];
            // Now and then a large one: kills land inside it.
            let n = if tx % 20 == 0 { 5000 } else { 1 + below(1000) };
            let live = next[t] - low[t];
            match below(4) {
                _ if live < 10 => {}
                0 => {
                    let lo = low[t] + below(live);
                    sql.push_str(&format!(
                        "UPDATE {name} SET v = v + 1 WHERE id >= {lo} AND id < {};\n",
                        lo + n
                    ));
                    made += n.min(next[t] - lo);
                    continue;
                }
                1 => {
                    let hi = (low[t] + n).min(next[t]);
                    sql.push_str(&format!("DELETE FROM {name} WHERE id < {hi};\n"));
                    made += hi - low[t];
                    low[t] = hi;
                    continue;
                }
                _ => {}
            }
            sql.push_str(&format!(
                "INSERT INTO {name} (id, v) SELECT g, g * 10 FROM generate_series({}, {}) g;\n",
                next[t],
                next[t] + n - 1
            ));
            made += n;
            next[t] += n;
        }
        if rolled_back {
            (next, low, made) = (kept_next, kept_low, kept_made);
            sql.push_str("ROLLBACK;\n");
        } else {
            sql.push_str("COMMIT;\n");
        }
        sql.push_str("SELECT pg_sleep(0.004);\n");
    }
    sql
}

#[test]
fn postgres_cdc_killed_at_random_moments_captures_every_committed_change_once_in_commit_order() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE a (id integer PRIMARY KEY, v bigint); \
         CREATE TABLE b (id integer PRIMARY KEY, v bigint); \
         CREATE TABLE c (id integer PRIMARY KEY, v bigint); \
         ALTER TABLE c REPLICA IDENTITY FULL; \
         ALTER TABLE a OWNER TO sluice; ALTER TABLE b OWNER TO sluice; ALTER TABLE c OWNER TO sluice",
    );
    // The server's own account of what commits, to compare with.
    pg.psql(
        "app",
        "SELECT 'truth' FROM pg_create_logical_replication_slot('truth', 'test_decoding')",
    );
    let dir = tempfile::tempdir().unwrap();
    // Batches of 100 records: most transactions span several, so kills
    // land inside one (the position then says how much of it is in), and
    // most batches hold changes of several tables, each routed to the
    // table's own topic: a kill also lands between the parts of a batch.
    std::fs::write(dir.path().join("pg-password"), PASSWORD).unwrap();
    let mut manifest = manifest().connector(
        source("cdc", "postgres-cdc", "{schema}.{table}")
            .config("addr", pg.addr().as_str())
            .config("user", USER)
            .config("password", "${secret:pg}")
            .config("database", "app")
            .config("tables", vec!["a", "b", "public.c"])
            .grant("net", vec![pg.addr().as_str()])
            .secret("pg", "file", "pg-password")
            .batch("max_records", 100),
    );
    for t in ["a", "b", "c"] {
        manifest = manifest.connector(
            sink(&format!("files-{t}"), "file-sink", &format!("public.{t}"))
                .set("flush_interval_ms", 100)
                .config("path", "/out")
                .config("format", "json")
                .files(&format!("out/{t}"), "/out", "read-write"),
        );
    }
    let manifest = manifest.write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    host.wait_for_log("made replication slot", Duration::from_secs(30));

    let script = dir.path().join("workload.sql");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("workload seed {seed}");
    std::fs::write(&script, workload(220_000, seed)).unwrap();
    let mut writer = pg
        .client("psql")
        .args(["-d", "app", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Kill the host at random moments while the workload runs, and start
    // it again each time.
    let moments = (Duration::from_millis(300), Duration::from_millis(900));
    let (mut host, _) = kill_at_random(host, dir.path(), &manifest, seed, 8, moments);
    assert!(writer.wait().unwrap().success(), "the workload ran");
    let truth = committed(&pg);
    assert!(truth.len() >= 200_000, "{} changes committed", truth.len());

    let out_dir = |t: &str| dir.path().join("out").join(t);
    wait_until(
        "the log holds every change",
        Duration::from_secs(180),
        || {
            ["a", "b", "c"]
                .iter()
                .map(|t| output_lines(&out_dir(t)).len())
                .sum::<usize>()
                >= truth.len()
        },
    );
    host.interrupt();
    let out = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130), "{}", host.log());

    let mut got = Vec::new();
    for t in ["a", "b", "c"] {
        let table = format!("public.{t}");
        let topic = captured_in(&out_dir(t));
        let stray = topic.iter().find(|(s, _)| s.0 != table);
        assert!(stray.is_none(), "topic {table} holds {stray:?}");
        got.extend(topic);
    }
    for table in ["public.a", "public.b", "public.c"] {
        let want: Vec<&Seen> = truth.iter().filter(|s| s.0 == table).collect();
        let have: Vec<&Seen> = got
            .iter()
            .map(|(s, _)| s)
            .filter(|s| s.0 == table)
            .collect();
        assert_eq!(
            have.len(),
            want.len(),
            "{table}: as many changes as were committed"
        );
        if let Some(i) = (0..want.len()).find(|&i| have[i] != want[i]) {
            panic!(
                "{table}: change {i} is {:?}, committed was {:?}",
                have[i], want[i]
            );
        }
    }
    // REPLICA IDENTITY FULL gives `before`; the default gives the key.
    let (_, update_c) = got
        .iter()
        .find(|(s, _)| s.0 == "public.c" && s.1 == 'u')
        .unwrap();
    assert_eq!(
        update_c["before"]["v"].as_i64().unwrap() + 1,
        update_c["after"]["v"].as_i64().unwrap()
    );
    let (_, delete_a) = got
        .iter()
        .find(|(s, _)| s.0 == "public.a" && s.1 == 'd')
        .unwrap();
    assert!(
        delete_a["before"]["v"].is_null() && delete_a["before"]["id"].is_i64(),
        "{delete_a}"
    );
    assert_eq!(delete_a["source"]["db"], "app");
}

#[test]
fn postgres_cdc_types_values_marks_unchanged_toast_follows_a_new_column_and_names_a_dropped_slot() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE kinds (id integer PRIMARY KEY, big bigint, amount numeric, ok boolean, \
         ratio double precision, name text, born date, at timestamptz, u uuid, doc jsonb, \
         raw bytea, tags text[], counts integer[], long text); \
         ALTER TABLE kinds ALTER COLUMN long SET STORAGE EXTERNAL; \
         ALTER TABLE kinds OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = cdc_to_files(dir.path(), &pg, &["kinds"]).write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    host.wait_for_log("made replication slot", Duration::from_secs(30));
    pg.psql(
        "app",
        "SET TIME ZONE 'UTC'; \
         INSERT INTO kinds VALUES (1, 9007199254740993, 12345678901234567890.000000001, true, 0.25, \
         'a \"quoted\" name', '2024-05-01', '2024-05-01 12:00:00.5+02', \
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, 2]}', '\\x68656c6c6f', \
         '{x,\"y z\",NULL}', '{1,2,3}', repeat('L', 100000))",
    );
    // The long value is stored out of line, and this update leaves it.
    pg.psql("app", "UPDATE kinds SET name = 'renamed' WHERE id = 1");
    pg.psql("app", "ALTER TABLE kinds ADD COLUMN added text");
    pg.psql(
        "app",
        "INSERT INTO kinds (id, added) VALUES (2, 'new column')",
    );
    pg.psql("app", "DELETE FROM kinds WHERE id = 2");
    wait_until("four changes", Duration::from_secs(30), || {
        output_lines(&dir.path().join("out")).len() >= 4
    });
    let got = captured(dir.path());
    assert_eq!(got.len(), 4, "{got:?}");
    let insert = &got[0].1["after"];
    assert_eq!(insert["big"], serde_json::json!(9007199254740993_i64));
    assert_eq!(
        insert["amount"], "12345678901234567890.000000001",
        "numeric loses nothing"
    );
    assert_eq!(insert["ok"], true);
    assert_eq!(insert["ratio"], 0.25);
    assert_eq!(insert["name"], "a \"quoted\" name");
    assert_eq!(insert["born"], "2024-05-01");
    assert_eq!(insert["at"], "2024-05-01T10:00:00.5+00:00");
    assert_eq!(insert["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(insert["doc"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(insert["raw"], "aGVsbG8=");
    assert_eq!(insert["tags"], serde_json::json!(["x", "y z", null]));
    assert_eq!(insert["counts"], serde_json::json!([1, 2, 3]));
    assert_eq!(insert["long"].as_str().unwrap().len(), 100_000);
    let update = &got[1].1;
    assert_eq!(update["op"], "u");
    assert_eq!(update["after"]["name"], "renamed");
    assert!(
        update["after"].get("long").is_none(),
        "not invented: {update}"
    );
    assert_eq!(update["unchanged"], serde_json::json!(["long"]));
    assert_eq!(
        got[2].1["after"]["added"], "new column",
        "the new column is picked up"
    );
    assert_eq!(got[3].1["op"], "d");
    assert_eq!(got[3].1["before"]["id"], 2);

    // A dropped slot: a fatal error that names it, not a silent new start.
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    pg.psql("app", "SELECT pg_drop_replication_slot('sluice_cdc')");
    // A fatal error is restarted with backoff; here once is enough.
    let once = cdc_to_files(dir.path(), &pg, &["kinds"])
        .with("cdc", |c| c.restart("attempts", 0))
        .write(dir.path());
    let out = run(&["run", "--no-progress", once.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("the replication slot \"sluice_cdc\" is gone"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD));
}

/// Transactions of one to three statements over tables `a`, `b` and `c`
/// holding ids `0..rows`: updates and deletes of short ranges anywhere,
/// inserts of new ids above, every seventh rolled back, a short sleep
/// between them.
fn churn(transactions: u64, rows: u64, seed: u64) -> String {
    let mut rng = seed | 1;
    let mut below = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut next = [rows; 3];
    let mut sql = String::new();
    for tx in 1..=transactions {
        let kept = next;
        sql.push_str("BEGIN;\n");
        for _ in 0..=below(3) {
            let t = below(3) as usize;
            let name = ["a", "b", "c"][t];
            let (lo, n) = (below(next[t]), 1 + below(50));
            match below(3) {
                0 => sql.push_str(&format!(
                    "UPDATE {name} SET v = v + 1 WHERE id >= {lo} AND id < {};\n",
                    lo + n
                )),
                1 => sql.push_str(&format!(
                    "DELETE FROM {name} WHERE id >= {lo} AND id < {};\n",
                    lo + n
                )),
                _ => {
                    sql.push_str(&format!(
                        "INSERT INTO {name} (id, v) SELECT g, g * 10 FROM generate_series({}, {}) g;\n",
                        next[t],
                        next[t] + n - 1
                    ));
                    next[t] += n;
                }
            }
        }
        if tx % 7 == 0 {
            // Its ids are used again.
            next = kept;
            sql.push_str("ROLLBACK;\n");
        } else {
            sql.push_str("COMMIT;\n");
        }
        sql.push_str("SELECT pg_sleep(0.002);\n");
    }
    sql
}

/// The rows `(table, id) -> v` that replaying `records` gives, or what in
/// them is told twice or out of turn.
fn replay(
    records: &[(Seen, serde_json::Value)],
) -> Result<std::collections::BTreeMap<(String, i64), i64>, String> {
    let mut rows = std::collections::BTreeMap::new();
    for (i, ((table, op, id, v), _)) in records.iter().enumerate() {
        let key = (table.clone(), *id);
        let there = rows.contains_key(&key);
        match op {
            'r' | 'c' if there => {
                return Err(format!("record {i}: {op} of {key:?}, which is there"));
            }
            'u' | 'd' if !there => {
                return Err(format!("record {i}: {op} of {key:?}, which is not there"));
            }
            'd' => {
                rows.remove(&key);
            }
            _ => {
                rows.insert(key, v.unwrap());
            }
        }
    }
    Ok(rows)
}

#[test]
fn postgres_cdc_snapshot_killed_while_it_reads_tells_every_row_once_then_its_changes() {
    let Some(pg) = server() else { return };
    let rows = 100_000;
    for t in ["a", "b", "c"] {
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE {t} (id integer PRIMARY KEY, v bigint); ALTER TABLE {t} OWNER TO sluice; \
                 INSERT INTO {t} SELECT g, g * 10 FROM generate_series(0, {rows} - 1) g"
            ),
        );
    }
    pg.psql(
        "app",
        "CREATE TABLE nokey (v bigint); ALTER TABLE nokey OWNER TO sluice",
    );
    let dir = tempfile::tempdir().unwrap();

    // A table the snapshot could not resume is refused at open, with the fix.
    let refused = cdc_to_files(dir.path(), &pg, &["a", "nokey"])
        .with("cdc", |c| c.restart("attempts", 0))
        .write(dir.path());
    let err = run_refused(&refused);
    assert!(
        err.contains("public.nokey has no primary key") && err.contains("snapshot = \"never\""),
        "{err}"
    );
    let made = pg.psql(
        "app",
        "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
    );
    assert_eq!(made.trim(), "0", "no slot or publication is left behind");

    // Small batches: the snapshot takes many, and kills land inside it.
    let manifest = cdc_to_files(dir.path(), &pg, &["a", "b", "c"])
        .with("cdc", |c| c.batch("max_records", 200))
        .write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    host.wait_for_log("reading the snapshot", Duration::from_secs(30));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("churn seed {seed}");
    let script = dir.path().join("churn.sql");
    std::fs::write(&script, churn(3000, rows, seed)).unwrap();
    let mut writer = pg
        .client("psql")
        .args(["-d", "app", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // One kill surely lands inside the snapshot (on a fast machine it is
    // read in under a second): as soon as its first rows are written.
    let out = dir.path().join("out");
    wait_until(
        "the snapshot's first rows are written",
        Duration::from_secs(30),
        || {
            output_files(&out)
                .iter()
                .any(|f| f.metadata().is_ok_and(|m| m.len() > 0))
        },
    );
    let mut host = host;
    host.kill();
    let first = host.log();
    let host = Host::start(
        dir.path(),
        "run-inside",
        &["run", "--no-progress", manifest.to_str().unwrap()],
    );
    let moments = (Duration::from_millis(200), Duration::from_millis(800));
    let (mut host, mut logs) = kill_at_random(host, dir.path(), &manifest, seed, 7, moments);
    logs.insert(0, first);
    assert!(writer.wait().unwrap().success(), "the churn ran");

    let table_rows = || -> std::collections::BTreeMap<(String, i64), i64> {
        pg.psql(
            "app",
            "SELECT 'public.a', id, v FROM a UNION ALL SELECT 'public.b', id, v FROM b \
             UNION ALL SELECT 'public.c', id, v FROM c",
        )
        .lines()
        .map(|l| {
            let mut f = l.split('|');
            let table = f.next().unwrap().to_owned();
            let id = f.next().unwrap().parse().unwrap();
            ((table, id), f.next().unwrap().parse().unwrap())
        })
        .collect()
    };
    let want = table_rows();
    let began = std::time::Instant::now();
    loop {
        let told = replay(&captured(dir.path()));
        if told.as_ref().is_ok_and(|rows| *rows == want) {
            break;
        }
        if began.elapsed() > Duration::from_secs(180) {
            match told {
                Err(e) => panic!("{e}"),
                Ok(rows) => {
                    let wrong: Vec<_> = want
                        .iter()
                        .filter(|(k, v)| rows.get(k) != Some(v))
                        .take(5)
                        .collect();
                    let extra: Vec<_> = rows
                        .keys()
                        .filter(|k| !want.contains_key(k))
                        .take(5)
                        .collect();
                    panic!(
                        "{} rows told, {} there; wrong or missing: {wrong:?}; not there: {extra:?}",
                        rows.len(),
                        want.len()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    logs.push(host.log());
    let all = logs.concat();
    eprintln!(
        "the snapshot went on at a new point {} times",
        all.matches("going on with the snapshot").count()
    );
    assert!(
        all.contains("going on with the snapshot"),
        "a kill landed inside the snapshot:\n{all}"
    );
    let records = captured(dir.path());
    let snapshot = records.iter().filter(|(s, _)| s.1 == 'r').count();
    assert!(snapshot >= 3 * rows as usize / 2, "{snapshot} rows read");
    let (_, first) = &records[0];
    assert_eq!(first["op"], "r");
    assert_eq!(first["source"]["snapshot"], true);
    assert!(first["before"].is_null());
}

#[test]
fn postgres_cdc_refuses_a_changed_table_list_while_its_snapshot_is_pending() {
    let Some(pg) = server() else { return };
    for t in ["a", "b"] {
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE {t} (id integer PRIMARY KEY, v bigint); ALTER TABLE {t} OWNER TO sluice; \
                 INSERT INTO {t} SELECT g, g FROM generate_series(1, 50000) g"
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    // Batches of 10: the snapshot takes long enough to be cut off.
    let first = cdc_to_files(dir.path(), &pg, &["a", "b"])
        .with("cdc", |c| c.batch("max_records", 10))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &first);
    wait_until("some rows are in the log", Duration::from_secs(30), || {
        output_lines(&dir.path().join("out")).len() >= 100
    });
    host.kill();
    // Marks are places in the list's order: another order is refused.
    let reordered = cdc_to_files(dir.path(), &pg, &["b", "a"])
        .with("cdc", |c| c.restart("attempts", 0))
        .write(dir.path());
    let err = run_refused(&reordered);
    assert!(
        err.contains("tables changed while the snapshot was read")
            && err.contains("[\"public.a\", \"public.b\"]"),
        "{err}"
    );
}

#[test]
fn the_postgres_cdc_example_does_what_its_readme_says() {
    let Some(pg) = Postgres::start() else { return };
    pg.psql(
        "postgres",
        &format!("CREATE ROLE sluice LOGIN REPLICATION PASSWORD '{PASSWORD}'"),
    );
    pg.psql("postgres", "CREATE DATABASE shop OWNER sluice");
    pg.psql("postgres", "CREATE DATABASE audit OWNER sluice");
    pg.psql(
        "shop",
        "CREATE TABLE orders (id integer PRIMARY KEY, customer text, amount numeric, placed timestamptz DEFAULT now()); \
         ALTER TABLE orders OWNER TO sluice",
    );
    pg.psql(
        "audit",
        "CREATE TABLE order_changes (before jsonb, after jsonb, op text, source jsonb, ts_ms bigint, unchanged jsonb); \
         ALTER TABLE order_changes OWNER TO sluice",
    );
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/postgres-cdc/sluice.toml");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("sluice.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("127.0.0.1:5432", &pg.addr());
    std::fs::write(&manifest, text).unwrap();
    let mut host = sluice()
        .args(["run", "--no-progress", manifest.to_str().unwrap()])
        .env("SLUICE_PG_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("host.log")).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("host.log")).unwrap_or_default();
    wait_until("the slot is made", Duration::from_secs(30), || {
        log().contains("made replication slot sluice_orders_cdc")
    });
    for sql in [
        "INSERT INTO orders VALUES (1, 'ada', 12.50)",
        "UPDATE orders SET amount = 15 WHERE id = 1",
        "BEGIN; DELETE FROM orders WHERE id = 1; ROLLBACK",
        "DELETE FROM orders WHERE id = 1",
    ] {
        pg.psql("shop", sql);
    }
    let lines = || -> usize { output_lines(&dir.path().join("out")).len() };
    wait_until(
        "three changes in the audit table and in files",
        Duration::from_secs(30),
        || pg.psql("audit", "SELECT count(*) FROM order_changes") == "3" && lines() == 3,
    );
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(
        pg.psql(
            "audit",
            "SELECT string_agg(op || ':' || coalesce(after->>'amount', before->>'id'), ',' ORDER BY (source->>'lsn')::bigint) FROM order_changes"
        ),
        "c:12.50,u:15,d:1"
    );
    assert!(!log().contains(PASSWORD));
}

#[test]
fn postgres_sink_upserts_by_the_record_key_and_deletes_on_a_tombstone_only_when_told_to() {
    let Some(pg) = server() else { return };
    for table in ["people", "people_kept"] {
        owned_table(&pg, table, "id bigint PRIMARY KEY, name text");
    }
    // Keys as a JSON object and as a bare number; a tombstone for id 1.
    let changes = keyed_records([
        (r#"{"id":1}"#, r#"{"name":"ada"}"#),
        ("2", r#"{"name":"bob"}"#),
        (r#"{"id":3}"#, r#"{"id":3,"name":"cy"}"#),
        (r#"{"id":1}"#, ""),
        (r#"{"id":2}"#, r#"{"name":"bobby"}"#),
    ]);
    for (table, delete_on_null, expected) in [
        ("people", true, "2|bobby,3|cy"),
        ("people_kept", false, "1|ada,2|bobby,3|cy"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest()
            .connector(
                source("keyed", wasm("emit-keyed"), "events").config("records", changes.clone()),
            )
            .connector(
                pg_sink(dir.path(), &pg, table)
                    .set("name", format!("pg-{table}"))
                    .config("mode", "upsert")
                    .config("key_columns", vec!["id"])
                    .config("delete_on_null", delete_on_null),
            )
            .connector(dead_letters(format!("pg-{table}.dlq").as_str()))
            .write(dir.path());
        run_finished(&manifest);
        assert_eq!(
            pg.psql(
                "app",
                &format!("SELECT string_agg(id || '|' || name, ',' ORDER BY id) FROM {table}")
            ),
            expected
        );
        let dead = output_lines(&dir.path().join("dlq"));
        if delete_on_null {
            assert!(dead.is_empty(), "{dead:?}");
        } else {
            assert_eq!(
                dead.len(),
                1,
                "the tombstone, not dropped silently: {dead:?}"
            );
            assert!(dead[0].contains("delete_on_null is off"), "{}", dead[0]);
        }
    }
}

#[test]
fn postgres_sink_streams_a_large_write_and_still_dead_letters_refused_rows_and_applies_deletes() {
    let Some(pg) = server() else { return };
    for table in ["wide", "wide_refused"] {
        owned_table(
            &pg,
            table,
            "id bigint PRIMARY KEY, qty integer NOT NULL, note text",
        );
    }
    owned_table(&pg, "wide_deleted", "id bigint PRIMARY KEY, note text");
    // Rows of 2 KB: a write of 200 is past the 128 KiB after which a COPY's
    // input goes to the server while the rest are decoded. All in one
    // batch: the source emits them in one poll.
    let note = "x".repeat(2000);
    // All rows good; then two refused, one in the input sent early and
    // one in the last.
    for (table, refused) in [("wide", vec![]), ("wide_refused", vec![17, 190])] {
        let rows: Vec<(String, String)> = (0..200)
            .map(|i| {
                let value = match i {
                    17 if refused.contains(&i) => {
                        format!("{{\"id\":17,\"qty\":\"many\",\"note\":\"{note}\"}}")
                    }
                    190 if refused.contains(&i) => format!("{{\"id\":190,\"note\":\"{note}\"}}"),
                    _ => format!("{{\"id\":{i},\"qty\":{i},\"note\":\"{note}\"}}"),
                };
                (i.to_string(), value)
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let inserting = manifest()
            .connector(
                source("keyed", wasm("emit-keyed"), "events")
                    .config("records", keyed_records(rows)),
            )
            .connector(pg_sink(dir.path(), &pg, table).set("name", table))
            .connector(dead_letters(format!("{table}.dlq").as_str()))
            .write(dir.path());
        run_finished(&inserting);
        assert_eq!(
            pg.psql(
                "app",
                &format!("SELECT count(*), sum(id), min(length(note)) FROM {table}")
            ),
            format!(
                "{}|{}|2000",
                200 - refused.len(),
                (0..200).sum::<i64>() - refused.iter().sum::<i64>()
            )
        );
        let dead = output_lines(&dir.path().join("dlq"));
        assert_eq!(dead.len(), refused.len(), "{dead:?}");
        assert_eq!(
            pg.psql(
                "app",
                &format!("SELECT next_offset FROM sluice_offsets WHERE connector = '{table}'")
            ),
            "200"
        );
    }

    // A tombstone after the COPY has begun: the write goes as statements,
    // in order, so the row inserted earlier in the batch is deleted.
    let mut changes: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("{{\"id\":{i}}}"),
                format!("{{\"note\":\"{note}\"}}"),
            )
        })
        .collect();
    changes.push((r#"{"id":5}"#.into(), String::new()));
    changes.push((r#"{"id":100}"#.into(), r#"{"note":"last"}"#.into()));
    let dir = tempfile::tempdir().unwrap();
    let deleting = manifest()
        .connector(
            source("keyed", wasm("emit-keyed"), "events").config("records", keyed_records(changes)),
        )
        .connector(
            pg_sink(dir.path(), &pg, "wide_deleted")
                .set("name", "pg-deleted")
                .config("key_columns", vec!["id"])
                .config("delete_on_null", true),
        )
        .write(dir.path());
    run_finished(&deleting);
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*), sum(id), count(*) FILTER (WHERE id = 5) FROM wide_deleted"
        ),
        format!("100|{}|0", (0..=100).sum::<i64>() - 5)
    );
}

#[test]
fn postgres_sink_logs_in_with_md5_and_clear_text_passwords_and_names_a_wrong_one() {
    let Some(pg) = server() else { return };
    for (user, method) in [("md5_user", "md5"), ("clear_user", "password")] {
        pg.allow_login(user, method);
        let password = format!("{method}-Pass-9");
        pg.create_user(user, &password, "app");
        // The server asks as the test means it to.
        assert_eq!(
            pg.psql(
                "postgres",
                &format!(
                    "SELECT auth_method FROM pg_hba_file_rules WHERE '{user}' = ANY(user_name)"
                )
            ),
            method
        );
        if method == "md5" {
            assert_eq!(
                pg.psql(
                    "postgres",
                    &format!(
                        "SELECT rolpassword LIKE 'md5%' FROM pg_authid WHERE rolname = '{user}'"
                    )
                ),
                "t"
            );
        }
        pg.psql(
            "app",
            &format!("CREATE TABLE {user}_rows (id bigint, seq bigint, note text); ALTER TABLE {user}_rows OWNER TO {user}"),
        );
        let dir = tempfile::tempdir().unwrap();
        let manifest = manifest()
            .connector(lines_source(dir.path(), &keyed_lines(100, 10), 0))
            .connector(
                pg_sink(dir.path(), &pg, &format!("{user}_rows"))
                    .set("name", user)
                    .config("user", user)
                    .config("offsets_table", format!("{user}_offsets")),
            )
            .write(dir.path());
        for (secret, works) in [(password.as_str(), true), ("not-it-Pass-1", false)] {
            std::fs::write(dir.path().join("pg-password"), secret).unwrap();
            let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
            let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
            assert!(
                !all.contains(secret),
                "{method}: the password shows:\n{all}"
            );
            if works {
                assert_eq!(out.status.code(), Some(0), "{method}: {all}");
                assert_eq!(
                    pg.psql("app", &format!("SELECT count(*) FROM {user}_rows")),
                    "100"
                );
            } else {
                assert_ne!(out.status.code(), Some(0), "{method}: {all}");
                assert!(
                    all.contains(&format!(
                        "password authentication failed for user \"{user}\""
                    )),
                    "{method}: {all}"
                );
            }
        }
    }
}

#[test]
fn postgres_sink_names_each_rows_table_from_a_field_and_dead_letters_a_record_without_it() {
    let Some(pg) = server() else { return };
    for table in ["by_red", "by_7"] {
        owned_table(&pg, table, "id bigint PRIMARY KEY, kind text");
    }
    let dir = tempfile::tempdir().unwrap();
    let lines = b"{\"id\":1,\"kind\":\"red\"}\n{\"id\":2,\"kind\":7}\n{\"id\":3}\n{\"id\":4,\"kind\":\"red\"}\n";
    let manifest = manifest()
        .connector(lines_source(dir.path(), lines, 0))
        .connector(pg_sink(dir.path(), &pg, "by_{kind}"))
        .connector(dead_letters("pg.dlq"))
        .write(dir.path());
    run_finished(&manifest);
    assert_eq!(
        pg.psql(
            "app",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM by_red"
        ),
        "1,4"
    );
    assert_eq!(pg.psql("app", "SELECT id, kind FROM by_7"), "2|7");
    let dead = output_lines(&dir.path().join("dlq"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0].contains("no field \\\"kind\\\"") && dead[0].contains("\"sluice.offset\":\"2\""),
        "{}",
        dead[0]
    );
    assert_eq!(stored_offsets(&pg), 4);
}

#[test]
fn postgres_cdc_refuses_to_snapshot_from_a_slot_it_was_told_to_use_that_exists_and_keeps_it() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE slotted (id integer PRIMARY KEY, v bigint); ALTER TABLE slotted OWNER TO sluice; \
         INSERT INTO slotted VALUES (1, 1); CREATE PUBLICATION taken_pub FOR TABLE slotted",
    );
    // Made by another tool, with its publication already there (pgoutput
    // reads the publication as of each change).
    pg.psql(
        "app",
        "SELECT 'made' FROM pg_create_logical_replication_slot('taken_slot', 'pgoutput')",
    );
    let dir = tempfile::tempdir().unwrap();
    let refused = cdc_to_files(dir.path(), &pg, &["slotted"])
        .with("cdc", |c| {
            c.config("slot", "taken_slot").restart("attempts", 0)
        })
        .write(dir.path());
    let err = run_refused(&refused);
    assert!(
        err.contains("the replication slot \"taken_slot\" exists already")
            && err.contains("snapshot = \"never\""),
        "{err}"
    );
    // Someone else's slot, perhaps: not dropped.
    assert_eq!(
        pg.psql(
            "app",
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'taken_slot'"
        ),
        "1"
    );
    // Told to stream from it, it does: the row inserted after the slot was
    // made, and not the one before.
    pg.psql("app", "INSERT INTO slotted VALUES (2, 2)");
    let streaming = cdc_to_files(dir.path(), &pg, &["slotted"])
        .with("cdc", |c| {
            c.config("slot", "taken_slot")
                .config("snapshot", "never")
                .config("publication", "taken_pub")
        })
        .write(dir.path());
    let mut host = Host::run(dir.path(), &streaming);
    wait_until("the change is in the log", Duration::from_secs(30), || {
        !output_lines(&dir.path().join("out")).is_empty()
    });
    host.kill();
    let seen: Vec<Seen> = captured(dir.path()).into_iter().map(|(s, _)| s).collect();
    assert_eq!(seen, vec![("public.slotted".to_owned(), 'c', 2, Some(2))]);
}

#[test]
fn postgres_cdc_snapshot_resumed_after_a_key_moved_past_its_cut_says_the_old_row_is_gone() {
    let Some(pg) = server() else { return };
    pg.psql(
        "app",
        "CREATE TABLE moved (id integer PRIMARY KEY, v bigint); ALTER TABLE moved OWNER TO sluice; \
         INSERT INTO moved SELECT g, g FROM generate_series(0, 49999) g",
    );
    let dir = tempfile::tempdir().unwrap();
    let manifest = cdc_to_files(dir.path(), &pg, &["moved"])
        .with("cdc", |c| c.batch("max_records", 50))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("some rows are in the log", Duration::from_secs(30), || {
        output_lines(&dir.path().join("out")).len() >= 500
    });
    host.kill();
    // Row 1, told by the first snapshot, moves past the cut (the key the
    // snapshot goes on from after the restart, at a new point); the next
    // snapshot reads it at its new key.
    pg.psql("app", "UPDATE moved SET id = 1000000 WHERE id = 1");
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("the snapshot is told", Duration::from_secs(60), || {
        output_lines(&dir.path().join("out")).len() >= 50_000
    });
    pg.psql("app", "UPDATE moved SET v = -1 WHERE id = 1000000");
    wait_until(
        "the change after it is told",
        Duration::from_secs(30),
        || {
            captured(dir.path())
                .iter()
                .any(|((_, op, id, v), _)| *op == 'u' && *id == 1_000_000 && *v == Some(-1))
        },
    );
    host.kill();
    let told = replay(&captured(dir.path())).unwrap();
    let table: std::collections::BTreeMap<(String, i64), i64> = pg
        .psql("app", "SELECT id, v FROM moved")
        .lines()
        .map(|l| {
            let (id, v) = l.split_once('|').unwrap();
            (
                ("public.moved".to_owned(), id.parse().unwrap()),
                v.parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(told.len(), table.len());
    assert!(
        !told.contains_key(&("public.moved".to_owned(), 1)),
        "row 1 moved, and is not told as gone"
    );
    assert_eq!(told, table);
}
