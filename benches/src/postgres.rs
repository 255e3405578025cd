//! The PostgreSQL connectors against a PostgreSQL 15 the bench starts
//! (`sluice-test-servers`: its own directory and port, `fsync` off), each
//! beside the server's own limit measured in the same run: `psql \copy` of
//! the same rows into the same kind of table for the sink; for the CDC
//! source, `pg_recvlogical` reading the same changes through `pgoutput`
//! from a slot of its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use sluice_test_servers::postgres::Postgres;

use crate::report::{Figure, Report, Target, say};

/// Rows each run writes.
pub const ROWS: u64 = 500_000;

const USER: &str = "sluice";
const PASSWORD: &str = "bench-pass";

/// Every figure of the section; says why and returns when PostgreSQL is
/// not installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\npostgres: datagen -> log -> postgres-sink, {ROWS} records of 100 B as rows (seq bigint, pad text), one transaction a batch of 1000; beside psql \\copy of the same rows"
    ));
    if let Err(why) = sluice_test_servers::postgres::bin_dir() {
        say(format!("postgres: skipped, {why}"));
        return Ok(());
    }
    let pg = Postgres::start().context("PostgreSQL 15 is installed but did not start")?;
    pg.create_database("app");
    pg.create_user(USER, PASSWORD, "app");

    // The median of three: one run of each swings by a third here.
    let native = crate::median(
        (0..3)
            .map(|i| copy_natively(&pg, work, ROWS, i))
            .collect::<anyhow::Result<_>>()?,
    );
    report.add(
        Figure::new(
            "postgres",
            "native: psql \\copy, text format",
            native,
            "rows/s",
        )
        .aside("the server's own bulk load"),
    );
    for (label, name, extra, runs, target) in [
        (
            "postgres-sink insert (COPY)",
            "bench_copy",
            "",
            3,
            Some(Target::at_least(0.5 * native)),
        ),
        (
            "postgres-sink insert (COPY), writes of 10000",
            "bench_copy_big",
            "[connector.batch]\nmax_records = 10000",
            3,
            Some(Target::at_least(0.5 * native)),
        ),
        (
            "postgres-sink insert (statements)",
            "bench_statements",
            "insert_with = \"statements\"",
            1,
            None,
        ),
        (
            "postgres-sink upsert, all keys new",
            "bench_upsert",
            "mode = \"upsert\"\nkey_columns = [\"seq\"]",
            1,
            None,
        ),
    ] {
        let mut rates = Vec::new();
        for run in 0..runs {
            let table = format!("{name}_{run}");
            pg.psql(
                "app",
                &format!(
                    "CREATE TABLE {table} (seq bigint PRIMARY KEY, pad text); ALTER TABLE {table} OWNER TO {USER}"
                ),
            );
            rates.push(sink_run(&pg, bin, work, cache, &table, extra)?);
            let rows: u64 = pg
                .psql("app", &format!("SELECT count(*) FROM {table}"))
                .parse()?;
            if rows != ROWS {
                bail!("{label}: {rows} of {ROWS} rows in {table}");
            }
        }
        let rate = crate::median(rates);
        report.add(
            Figure::new(
                "postgres",
                format!("datagen -> log -> {label}"),
                rate,
                "rows/s",
            )
            .aside(format!("{:.2} of \\copy", rate / native))
            .target(target),
        );
    }
    cdc(report, &pg, bin, work, cache)?;
    snapshot(report, &pg, bin, work, cache)
}

/// Rows the snapshot run reads.
const SNAPSHOT_ROWS: u64 = 500_000;

/// `postgres-cdc`'s initial snapshot of a table of `SNAPSHOT_ROWS` rows →
/// log → `blackhole`, beside psql reading the same rows in the same order
/// (`\copy (SELECT … ORDER BY id) TO /dev/null`, text format).
fn snapshot(
    report: &mut Report,
    pg: &Postgres,
    bin: &Path,
    work: &Path,
    cache: &Path,
) -> anyhow::Result<()> {
    say(format!(
        "\npostgres: postgres-cdc snapshot -> log -> blackhole, {SNAPSHOT_ROWS} rows of ~100 B read as r records; beside psql \\copy (SELECT … ORDER BY id) TO /dev/null"
    ));
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE snap_bench (id bigint PRIMARY KEY, v bigint, pad text); \
             ALTER TABLE snap_bench OWNER TO {USER}; \
             INSERT INTO snap_bench SELECT g, g, repeat('x', 80) FROM generate_series(1, {SNAPSHOT_ROWS}) g"
        ),
    );
    // Apart: VACUUM runs in no transaction.
    pg.psql("app", "VACUUM ANALYZE snap_bench");
    let started = Instant::now();
    let out = pg
        .client("psql")
        .args(["-d", "app", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg("\\copy (SELECT * FROM snap_bench ORDER BY id) TO '/dev/null'")
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("psql \\copy TO: {}", String::from_utf8_lossy(&out.stderr));
    }
    let native = SNAPSHOT_ROWS as f64 / secs;
    report.add(
        Figure::new(
            "postgres",
            "native: psql \\copy (SELECT … ORDER BY id) TO /dev/null",
            native,
            "rows/s",
        )
        .aside("the server's own export of the same rows"),
    );
    let dir = tempfile::tempdir_in(work)?;
    let source = cdc_source(pg, dir.path(), "snap", r#"tables = ["snap_bench"]"#)?;
    let sink = crate::network::to_blackhole(bin, work, cache, SNAPSHOT_ROWS, &source)?;
    let (rate, mb) = crate::arrival_rates(&sink);
    report.add(
        Figure::new(
            "postgres",
            "postgres-cdc snapshot -> log -> blackhole",
            rate,
            "rows/s",
        )
        .aside(format!(
            "{:.2} of psql's export, {mb:.0} MB/s of envelopes",
            rate / native
        )),
    );
    Ok(())
}

/// The middle of `values`.
/// Changes the CDC runs read: a pgbench workload of transactions of 100
/// inserts each.
pub const CHANGES: u64 = 500_000;

/// `pg_recvlogical` and `postgres-cdc` → log → `blackhole`, each reading
/// the same [`CHANGES`] from a slot of its own (both made before the
/// workload, so both read it from the WAL on disk).
fn cdc(
    report: &mut Report,
    pg: &Postgres,
    bin: &Path,
    work: &Path,
    cache: &Path,
) -> anyhow::Result<()> {
    say(format!(
        "\npostgres: postgres-cdc -> log -> blackhole, {CHANGES} changes (pgbench: transactions of 100 inserts of ~100 B rows); beside pg_recvlogical reading them through pgoutput"
    ));
    pg.psql(
        "app",
        &format!(
            "CREATE TABLE cdc_bench (id bigserial PRIMARY KEY, v bigint, pad text); \
             ALTER TABLE cdc_bench OWNER TO {USER}; \
             CREATE PUBLICATION bench_pub FOR TABLE cdc_bench"
        ),
    );
    for slot in ["native_slot", "sluice_slot", "routed_slot"] {
        pg.psql(
            "app",
            &format!("SELECT 1 FROM pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        );
    }
    let script = work.join("cdc-workload.sql");
    std::fs::write(
        &script,
        "INSERT INTO cdc_bench (v, pad) SELECT g, repeat('x', 80) FROM generate_series(1, 100) g;\n",
    )?;
    let out = pg
        .client("pgbench")
        .args(["-n", "-c", "2", "-t"])
        .arg((CHANGES / 200).to_string())
        .arg("-f")
        .arg(&script)
        .arg("app")
        .output()?;
    if !out.status.success() {
        bail!("pgbench: {}", String::from_utf8_lossy(&out.stderr));
    }
    let end = pg.psql("app", "SELECT pg_current_wal_lsn()");

    // Timed as the sink's side is: from the first byte of changes to the
    // last (its start and the server's first decoding left out).
    let mut child = pg
        .client("pg_recvlogical")
        .args(["-d", "app", "--slot", "native_slot", "--start", "--no-loop"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
        .args(["-E", &end, "-f", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("pg_recvlogical's output")?;
    let (mut first, mut buf) = (None, vec![0u8; 1 << 16]);
    loop {
        let n = std::io::Read::read(&mut stdout, &mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let out = child.wait_with_output()?;
    if !out.status.success() || secs == 0.0 {
        bail!("pg_recvlogical: {}", String::from_utf8_lossy(&out.stderr));
    }
    let native = CHANGES as f64 / secs;
    report.add(
        Figure::new(
            "postgres",
            "native: pg_recvlogical, pgoutput to /dev/null",
            native,
            "changes/s",
        )
        .aside("the server's own logical decoding client"),
    );

    // `postgres-cdc` reading `slot` into `topic` (a template routes), and
    // `blackhole` reading `sink_topic`: what reached the sink, per second.
    let sluice = |slot: &str, topic: &str, sink_topic: &str| -> anyhow::Result<(f64, f64)> {
        let dir = tempfile::tempdir_in(work)?;
        let source = cdc_source(
            pg,
            dir.path(),
            "cdc",
            &format!(
                "tables = [\"cdc_bench\"]\nslot = \"{slot}\"\npublication = \"bench_pub\"\nsnapshot = \"never\""
            ),
        )?
        .replace("topic = \"bench\"", &format!("topic = \"{topic}\""));
        let sink =
            crate::network::to_blackhole_from(bin, work, cache, CHANGES, &source, sink_topic)?;
        Ok(crate::arrival_rates(&sink))
    };
    let (rate, mb) = sluice("sluice_slot", "bench", "bench")?;
    report.add(
        Figure::new(
            "postgres",
            "postgres-cdc -> log -> blackhole",
            rate,
            "changes/s",
        )
        .aside(format!(
            "{:.2} of pg_recvlogical, {mb:.0} MB/s of envelopes",
            rate / native
        ))
        .target(Target::at_least((0.8 * native).max(100_000.0))),
    );

    // The same changes routed to a topic per table: each batch is written
    // ahead to the source's journal, then to its topic.
    let (routed, _) = sluice("routed_slot", "{schema}.{table}", "public.cdc_bench")?;
    report.add(
        Figure::new(
            "postgres",
            "postgres-cdc, topic per table -> log -> blackhole",
            routed,
            "changes/s",
        )
        .aside(format!(
            "{:.2} of pg_recvlogical, {:.2} of one topic",
            routed / native,
            routed / rate
        ))
        .target(Target::at_least((0.8 * native).max(100_000.0))),
    );
    Ok(())
}

/// The manifest of a `postgres-cdc` source named `name` into topic
/// `bench`, batches of 1000, with `config` lines added to its config; its
/// password in a file in `dir`, granted as a secret.
fn cdc_source(pg: &Postgres, dir: &Path, name: &str, config: &str) -> anyhow::Result<String> {
    let addr = pg.addr();
    let password = dir.join("pg-password");
    std::fs::write(&password, PASSWORD)?;
    Ok(format!(
        r#"[broker]
data_dir = "data"

[[connector]]
name = "{name}"
kind = "source"
plugin = "postgres-cdc"
topic = "bench"
[connector.batch]
max_records = 1000
[connector.config]
addr = "{addr}"
user = "{USER}"
password = "${{secret:pg}}"
database = "app"
{config}
[connector.grants]
net = ["{addr}"]
secrets = {{ pg = {{ file = "{}" }} }}
"#,
        password.display()
    ))
}

/// `psql \copy` of `rows` rows shaped as datagen's (a `seq`, 80 letters
/// of `pad`) from a file into a fresh table: rows/s, psql's start
/// included (a few milliseconds).
fn copy_natively(pg: &Postgres, work: &Path, rows: u64, run: usize) -> anyhow::Result<f64> {
    let table = format!("bench_native_{run}");
    pg.psql(
        "app",
        &format!("CREATE TABLE {table} (seq bigint PRIMARY KEY, pad text)"),
    );
    let file = work.join("postgres-rows.tsv");
    let pad = "x".repeat(80);
    let mut text = String::with_capacity(rows as usize * 90);
    for i in 0..rows {
        text.push_str(&format!("{i}\t{pad}\n"));
    }
    std::fs::write(&file, text)?;
    let started = Instant::now();
    let out = pg
        .client("psql")
        .args(["-d", "app", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy {table} (seq, pad) FROM '{}'",
            file.display()
        ))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("psql \\copy: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(rows as f64 / secs)
}

/// `datagen` → log → `postgres-sink` into `table` (with `extra` config
/// lines), as the connector `table` (each run its own offsets): the sink's rows/s from its start to its last flush, as the run's
/// summary says.
fn sink_run(
    pg: &Postgres,
    bin: &Path,
    work: &Path,
    cache: &Path,
    table: &str,
    extra: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::write(dir.path().join("pg-password"), PASSWORD)?;
    let addr = pg.addr();
    // `extra` is config lines, or a table of its own (`[connector.batch]`).
    let (config, batch) = if extra.starts_with('[') {
        ("", extra)
    } else {
        (extra, "")
    };
    let manifest = crate::files::datagen_into(
        ROWS,
        100,
        &format!(
            r#"[[connector]]
name = "{table}"
kind = "sink"
plugin = "postgres-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
user = "{USER}"
password = "${{secret:pg}}"
database = "app"
table = "{table}"
{config}
[connector.grants]
net = ["{addr}"]
secrets = {{ pg = {{ file = "pg-password" }} }}
{batch}
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, table)
}
