//! `mariadb-sink` against a MariaDB the bench starts (`sluice-test-servers`:
//! its own directory and port, the redo log not synced at each commit),
//! beside the server's own bulk load measured in the same run: `LOAD DATA
//! LOCAL INFILE` of the same rows into the same kind of table.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, bail};
use sluice_test_servers::mariadb::Mariadb;

use crate::report::{Figure, Report, say};

/// Rows each run writes.
const ROWS: u64 = 200_000;

const USER: &str = "sluice";
const PASSWORD: &str = "bench-pass";

/// Every figure of the section; says why and returns when MariaDB is not
/// installed.
pub fn section(report: &mut Report, bin: &Path, work: &Path, cache: &Path) -> anyhow::Result<()> {
    say(format!(
        "\nmariadb: datagen -> log -> mariadb-sink, {ROWS} records of 100 B as rows (seq bigint, pad text), one transaction a batch of 1000; beside LOAD DATA LOCAL INFILE of the same rows"
    ));
    if let Err(why) = sluice_test_servers::mariadb::installed() {
        say(format!("mariadb: skipped, {why}"));
        return Ok(());
    }
    let db = Mariadb::start().context("MariaDB is installed but did not start")?;
    db.create_user(USER, PASSWORD, "app");

    let native = load_natively(&db, work)?;
    report.add(
        Figure::new(
            "mariadb",
            "native: LOAD DATA LOCAL INFILE",
            native,
            "rows/s",
        )
        .aside("the server's own bulk load"),
    );
    for (label, extra) in [
        ("mariadb-sink insert", ""),
        (
            "mariadb-sink upsert, all keys new",
            "mode = \"upsert\"\nkey_columns = [\"seq\"]",
        ),
    ] {
        let table = if extra.is_empty() {
            "bench_insert"
        } else {
            "bench_upsert"
        };
        db.sql(
            "app",
            &format!("CREATE TABLE {table} (seq BIGINT PRIMARY KEY, pad TEXT) ENGINE = InnoDB"),
        );
        let rate = sink_run(&db, bin, work, cache, table, extra)?;
        let rows: u64 = db
            .sql("app", &format!("SELECT count(*) FROM {table}"))
            .parse()?;
        if rows != ROWS {
            bail!("{label}: {rows} of {ROWS} rows in {table}");
        }
        report.add(
            Figure::new(
                "mariadb",
                format!("datagen -> log -> {label}"),
                rate,
                "rows/s",
            )
            .aside(format!("{:.2} of LOAD DATA", rate / native)),
        );
    }
    Ok(())
}

/// `LOAD DATA LOCAL INFILE` of `ROWS` rows shaped as datagen's (a `seq`,
/// 80 letters of `pad`) into a fresh table: rows/s, the client's start
/// included (a few milliseconds).
fn load_natively(db: &Mariadb, work: &Path) -> anyhow::Result<f64> {
    db.sql(
        "app",
        "CREATE TABLE bench_native (seq BIGINT PRIMARY KEY, pad TEXT) ENGINE = InnoDB",
    );
    let file = work.join("mariadb-rows.tsv");
    let pad = "x".repeat(80);
    let mut text = String::with_capacity(ROWS as usize * 90);
    for i in 0..ROWS {
        text.push_str(&format!("{i}\t{pad}\n"));
    }
    std::fs::write(&file, text)?;
    let started = Instant::now();
    let out = db
        .client()
        .args(["--local-infile=1", "app", "-e"])
        .arg(format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE bench_native (seq, pad)",
            file.display()
        ))
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("LOAD DATA: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(ROWS as f64 / secs)
}

/// `datagen` → log → `mariadb-sink` into `table` (with `extra` config
/// lines), as the connector `table`: the sink's rows/s from its start to
/// its last flush, as the run's summary says.
fn sink_run(
    db: &Mariadb,
    bin: &Path,
    work: &Path,
    cache: &Path,
    table: &str,
    extra: &str,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir_in(work)?;
    std::fs::write(dir.path().join("db-password"), PASSWORD)?;
    let addr = db.addr();
    let manifest = crate::files::datagen_into(
        ROWS,
        100,
        &format!(
            r#"[[connector]]
name = "{table}"
kind = "sink"
plugin = "mariadb-sink"
topic = "bench"
[connector.config]
addr = "{addr}"
user = "{USER}"
password = "${{secret:db}}"
database = "app"
table = "{table}"
{extra}
[connector.grants]
net = ["{addr}"]
secrets = {{ db = {{ file = "db-password" }} }}
"#
        ),
    );
    let summary = crate::files::sluice_run(bin, cache, dir.path(), &manifest)?;
    crate::files::summary_rate(&summary, table)
}
