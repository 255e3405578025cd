//! The PostgreSQL connectors against a PostgreSQL 15 the bench starts
//! (`sluice-test-servers`: its own directory and port, `fsync` off), each
//! beside the server's own limit measured in the same run: `psql \copy` of
//! the same rows into the same kind of table.

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

    let native = copy_natively(&pg, work, ROWS)?;
    report.add(
        Figure::new(
            "postgres",
            "native: psql \\copy, text format",
            native,
            "rows/s",
        )
        .aside("the server's own bulk load"),
    );
    for (label, table, extra, target) in [
        (
            "postgres-sink insert (COPY)",
            "bench_copy",
            "",
            Some(Target::at_least(0.5 * native)),
        ),
        (
            "postgres-sink insert (statements)",
            "bench_statements",
            "insert_with = \"statements\"",
            None,
        ),
        (
            "postgres-sink upsert, all keys new",
            "bench_upsert",
            "mode = \"upsert\"\nkey_columns = [\"seq\"]",
            None,
        ),
    ] {
        pg.psql(
            "app",
            &format!(
                "CREATE TABLE {table} (seq bigint PRIMARY KEY, pad text); ALTER TABLE {table} OWNER TO {USER}"
            ),
        );
        let rate = sink_run(&pg, bin, work, cache, table, extra)?;
        let rows: u64 = pg
            .psql("app", &format!("SELECT count(*) FROM {table}"))
            .parse()?;
        if rows != ROWS {
            bail!("{label}: {rows} of {ROWS} rows in {table}");
        }
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
    Ok(())
}

/// `psql \copy` of `rows` rows shaped as datagen's (a `seq`, 80 letters
/// of `pad`) from a file into a fresh table: rows/s, psql's start
/// included (a few milliseconds).
fn copy_natively(pg: &Postgres, work: &Path, rows: u64) -> anyhow::Result<f64> {
    pg.psql(
        "app",
        "CREATE TABLE bench_native (seq bigint PRIMARY KEY, pad text)",
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
            "\\copy bench_native (seq, pad) FROM '{}'",
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
{extra}
[connector.grants]
net = ["{addr}"]
secrets = {{ pg = {{ file = "pg-password" }} }}
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, table)
}
