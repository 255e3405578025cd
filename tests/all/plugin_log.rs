//! What a plugin writes into the host's log (`log-flood` fixture): one line
//! per call whatever it holds, cut when huge, rate limited when it floods,
//! its connector named once, its fields as fields.

#![allow(clippy::unwrap_used)]

use std::process::Output;

use crate::common::*;

/// Runs `log-flood` alone with `config` and `env` for the host; returns
/// the output once it ends.
fn run_flood(config: &[(&str, toml::Value)], env: &[(&str, &str)]) -> Output {
    run_flood_in(1, config, env)
}

/// [`run_flood`] with `parallelism` instances.
fn run_flood_in(parallelism: u32, config: &[(&str, toml::Value)], env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let fixture = source("fixture", wasm("log-flood"), "probe").set("parallelism", parallelism);
    let fixture = config
        .iter()
        .fold(fixture, |c, (k, v)| c.config(k, v.clone()));
    let m = manifest().connector(fixture).write(dir.path());
    let out = run_env(&["run", "--no-progress", m.to_str().unwrap()], env);
    assert_eq!(out.status.code(), Some(0), "the fixture ends cleanly");
    out
}

#[test]
fn a_plugin_cannot_forge_a_host_log_line() {
    let out = run_flood(&[("mode", "forge".into())], &[]);
    let log = stderr(&out);
    for line in log.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "a forged line starts a line of its own: {line:?}\n{log}"
        );
        assert!(
            !line.contains('\u{1b}') && !line.contains('\r'),
            "a plugin's escape or carriage return reached the log: {line:?}"
        );
    }
    let message = log.lines().find(|l| l.contains("forge-message")).unwrap();
    assert!(
        message.contains(r"forge-message\n2026-01-01T00:00:00")
            && message.contains(r"\r\u{1b}[31mred"),
        "{message}"
    );
    assert!(message.contains(r"forge-field\n2026-01-01"), "{message}");
    let stderr_line = log.lines().find(|l| l.contains("forge-stderr")).unwrap();
    assert!(
        stderr_line.contains(r"forge-stderr\r2026-01-01"),
        "{stderr_line}"
    );
}

#[test]
fn a_plugin_line_names_its_connector_once_with_its_fields_as_fields() {
    let out = run_flood(&[("mode", "forge".into())], &[]);
    let log = stderr(&out);
    let message = log.lines().find(|l| l.contains("forge-message")).unwrap();
    assert_eq!(message.matches("fixture").count(), 1, "{message}");
    assert!(!message.contains("fields="), "{message}");
    assert!(message.contains(" rows=3"), "{message}");

    let out = run_flood(
        &[("mode", "forge".into())],
        &[("SLUICE_LOG_FORMAT", "json")],
    );
    let log = stderr(&out);
    let message = log.lines().find(|l| l.contains("forge-message")).unwrap();
    let event: serde_json::Value = serde_json::from_str(message).unwrap();
    assert_eq!(event["fields"]["rows"], "3", "{message}");
    assert_eq!(event["span"]["connector"], "fixture", "{message}");
    assert!(
        event["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("forge-message\\n2026"),
        "{message}"
    );
}

#[test]
fn a_log_flood_is_cut_to_the_rate_limit_and_says_how_much_it_dropped() {
    // Two instances of 20,000 lines each share the connector's one budget.
    let lines: usize = 20_000;
    let out = run_flood_in(
        2,
        &[("mode", "flood".into()), ("lines", (lines as i64).into())],
        &[],
    );
    let lines = 2 * lines;
    let log = stderr(&out);
    let kept = log.lines().filter(|l| l.contains("flood line")).count();
    assert!(
        (100..=700).contains(&kept),
        "one burst of 500 lines for the connector gets through, not {kept}"
    );
    // One report per stretch of dropped lines: when the next line gets
    // through, or when the instance ends.
    let reports: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin log lines dropped"))
        .collect();
    assert!(
        !reports.is_empty(),
        "no report of the dropped lines:\n{log}"
    );
    let dropped: usize = reports
        .iter()
        .map(|report| {
            report
                .split("dropped=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("no count in {report}"))
        })
        .sum();
    assert_eq!(kept + dropped, lines, "{reports:?}");
}

#[test]
fn one_huge_log_call_is_cut_to_one_short_line() {
    let bytes = 8 << 20;
    let out = run_flood(&[("mode", "huge".into()), ("bytes", bytes.into())], &[]);
    let log = stderr(&out);
    let longest = log.lines().map(str::len).max().unwrap();
    assert!(
        longest < 10_000,
        "a line of {longest} bytes reached the log"
    );
    let line = log.lines().find(|l| l.contains("hhhh")).unwrap();
    assert!(
        line.contains(&format!("({} bytes cut)", bytes - 4096)),
        "{}",
        &line[line.len() - 200..]
    );
}
