//! A wrong manifest is refused with its file, line, column, field and fix.

#![allow(clippy::unwrap_used)]

use crate::common::*;

const GOOD: &str = r#"[broker]
data_dir = "data"

[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "events"
"#;

fn validate(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    validate_in(dir.path(), text)
}

#[test]
fn an_unknown_field_is_refused_with_file_line_column_and_the_fix() {
    let (code, err) =
        validate(&GOOD.replace("topic = \"events\"", "topic = \"events\"\nparalelism = 2"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("sluice.toml:9:1: field `paralelism`: unknown field `paralelism`"),
        "{err}"
    );
    assert!(
        err.contains("help: remove it, or correct the spelling: expected one of"),
        "{err}"
    );
    assert!(
        err.contains("`parallelism`"),
        "the fix lists the right name: {err}"
    );
}

#[test]
fn a_wrong_type_is_refused_with_file_line_column() {
    let (code, err) = validate(&GOOD.replace("data_dir = \"data\"", "data_dir = 42"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("sluice.toml:2:12: field `data_dir`: invalid type: integer `42`"),
        "{err}"
    );
    assert!(err.contains("help: write"), "{err}");
}

#[test]
fn an_unknown_kind_lists_the_allowed_values() {
    let (code, err) = validate(&GOOD.replace("kind = \"source\"", "kind = \"spout\""));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:6:8"), "{err}");
    assert!(
        err.contains("`source`") && err.contains("`sink`") && err.contains("`transform`"),
        "{err}"
    );
}

#[test]
fn a_transform_connector_needs_an_output_that_is_not_what_it_reads() {
    let transform = "\n[[connector]]\nname = \"keep\"\nkind = \"transform\"\nplugin = \"filter\"\ntopic = \"events\"\n";
    let config = "[connector.config]\nfield = \"/a\"\nexists = true\n";
    let (code, err) = validate(&format!("{GOOD}{transform}{config}"));
    assert_eq!(code, Some(2));
    assert!(err.contains("field `connector[1].output`"), "{err}");
    assert!(err.contains("transform \"keep\" has no `output`"), "{err}");
    assert!(err.contains("help: name the topic it writes"), "{err}");

    for output in ["events", "{table}"] {
        let (code, err) = validate(&format!("{GOOD}{transform}output = \"{output}\"\n{config}"));
        assert_eq!(code, Some(2), "{output}");
        assert!(
            err.contains("would write a topic it reads"),
            "{output}: {err}"
        );
    }

    let (code, err) =
        validate(&GOOD.replace("topic = \"events\"", "topic = \"events\"\noutput = \"x\""));
    assert_eq!(code, Some(2));
    assert!(err.contains("a source has no `output`"), "{err}");

    let (code, out) = validate(&format!("{GOOD}{transform}output = \"kept\"\n{config}"));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn a_missing_file_and_an_unknown_plugin_are_explained() {
    let out = run(&["validate", "/nonexistent/sluice.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the manifest"));

    let (code, err) = validate(&GOOD.replace("plugin = \"datagen\"", "plugin = \"datagem\""));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:7:10"), "{err}");
    assert!(err.contains("unknown plugin \"datagem\""), "{err}");
    assert!(
        err.contains(
            "datagen, fields, file-sink, file-source, filter, http-enrich, http-sink, http-source, kafka-sink, kafka-source, key, mariadb-sink, mqtt-sink, mqtt-source, postgres-cdc, postgres-sink, print, rabbitmq-sink, rabbitmq-source, redis-sink, redis-source, route, socket-sink, socket-source, stomp-sink, stomp-source, timestamp"
        ),
        "lists the built-ins: {err}"
    );
}

#[test]
fn a_state_grant_that_does_not_parse_is_refused_with_the_fix() {
    let (code, err) = validate(&format!("{GOOD}[connector.grants]\nstate = \"roomy\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:9"), "{err}");
    assert!(err.contains("connector[0].grants.state"), "{err}");
    assert!(
        err.contains("state = \"64 MiB\""),
        "the fix shows a size: {err}"
    );
}

#[test]
fn a_memory_or_cpu_grant_that_does_not_parse_is_refused_with_the_fix() {
    let (code, err) = validate(&format!("{GOOD}[connector.grants]\nmemory = \"lots\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:10"), "{err}");
    assert!(err.contains("connector[0].grants.memory"), "{err}");
    assert!(
        err.contains("memory = \"64 MiB\""),
        "the fix shows a size: {err}"
    );

    let (code, err) = validate(&format!(
        "{GOOD}[connector.grants]\ncpu = \"2 fortnights\"\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("connector[0].grants.cpu"), "{err}");
    assert!(
        err.contains("cpu = \"2s\""),
        "the fix shows a duration: {err}"
    );
}

#[test]
fn a_net_rule_that_does_not_parse_is_located_with_the_forms_that_do() {
    let (code, err) = validate(&format!(
        "{GOOD}[connector.grants]\nnet = [\"127.0.0.1:80\", \"db.internal\"]\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:24"), "{err}");
    assert!(err.contains("field `connector[0].grants.net[1]`"), "{err}");
    assert!(err.contains("\"db.internal\" has no port"), "{err}");
    assert!(
        err.contains("help: write `host:port`, `ip:port` or `cidr:port`"),
        "{err}"
    );
}

#[test]
fn a_secret_needs_exactly_one_source_and_every_reference_a_grant() {
    let (code, err) = validate(&format!(
        "{GOOD}[connector.grants.secrets]\npw = {{ env = \"A\", file = \"b\" }}\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:6"), "{err}");
    assert!(
        err.contains("field `connector[0].grants.secrets.pw`"),
        "{err}"
    );
    assert!(
        err.contains("needs exactly one of `env` and `file`"),
        "{err}"
    );

    let (code, err) = validate(&format!(
        "{GOOD}[connector.config]\nseed = \"${{secret:missing}}\"\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:9"), "{err}");
    assert!(
        err.contains("uses secret \"missing\", which is not granted"),
        "{err}"
    );
    assert!(err.contains("help: declare it"), "{err}");
}

#[test]
fn a_restart_delay_that_does_not_parse_is_located() {
    let (code, err) = validate(&format!("{GOOD}[connector.restart]\ninitial = \"soon\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:11"), "{err}");
    assert!(
        err.contains("field `connector[0].restart.initial`"),
        "{err}"
    );
}

#[test]
fn an_env_grant_that_is_not_a_variable_name_is_located() {
    let (code, err) = validate(&format!(
        "{GOOD}[connector.grants]\nenv = [\"TZ\", \"A=B\"]\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("sluice.toml:10:14"), "{err}");
    assert!(err.contains("field `connector[0].grants.env[1]`"), "{err}");
    assert!(
        err.contains("\"A=B\" is not an environment variable name"),
        "{err}"
    );
}

#[test]
fn a_cpu_grant_under_one_tick_is_refused() {
    let (code, err) = validate(&format!("{GOOD}[connector.grants]\ncpu = \"5ms\"\n"));
    assert_eq!(code, Some(2));
    assert!(err.contains("field `connector[0].grants.cpu`"), "{err}");
    assert!(err.contains("shorter than the host's clock tick"), "{err}");
    assert!(
        err.contains("help: grant at least `cpu = \"10ms\"`"),
        "{err}"
    );
}

#[test]
fn a_secret_file_that_cannot_be_read_is_named_never_a_value() {
    let (code, err) = validate(&format!(
        "{GOOD}[connector.grants.secrets]\npw = {{ file = \"no-such-file\" }}\n"
    ));
    assert_eq!(code, Some(2));
    assert!(err.contains("field `connector[0].grants.secrets`"), "{err}");
    assert!(
        err.contains("secret \"pw\" of connector \"gen\" comes from file"),
        "{err}"
    );
    assert!(err.contains("no-such-file, which cannot be read"), "{err}");
}

const SINK: &str = r#"
[[connector]]
name = "out"
kind = "sink"
plugin = "file-sink"
topic = "events"
"#;

#[test]
fn a_dead_letter_topic_belongs_to_a_sink_and_not_to_what_it_reads() {
    let (code, err) = validate(&GOOD.replace(
        "topic = \"events\"",
        "topic = \"events\"\ndead_letter_topic = \"x\"",
    ));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("field `connector[0].dead_letter_topic`"),
        "{err}"
    );
    assert!(
        err.contains("a source without transforms has no dead-letter topic"),
        "{err}"
    );

    let (code, err) = validate(&format!("{GOOD}{SINK}dead_letter_topic = \"events\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("field `connector[1].dead_letter_topic`"),
        "{err}"
    );
    assert!(
        err.contains("a sink cannot dead-letter into a topic it reads"),
        "{err}"
    );
    assert!(
        err.contains("help: use another topic, e.g. `dead_letter_topic = \"out.dlq\"`"),
        "{err}"
    );
}

#[test]
fn a_broken_topic_template_or_a_topic_of_dots_is_refused_with_the_fix() {
    let (code, err) = validate(&GOOD.replace("topic = \"events\"", "topic = \"{schema.{table}\""));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("sluice.toml:8:9: field `connector[0].topic`"),
        "{err}"
    );
    assert!(err.contains("names no header"), "{err}");
    assert!(err.contains("help: name a header in braces"), "{err}");

    // A topic is a folder: `..` would be the data folder's parent.
    let (code, err) = validate(&GOOD.replace("topic = \"events\"", "topic = \"..\""));
    assert_eq!(code, Some(2));
    assert!(err.contains("topic name \"..\" is only dots"), "{err}");

    // A sink's topics are names, never templates.
    let sink = format!(
        "{GOOD}\n[[connector]]\nname = \"out\"\nkind = \"sink\"\nplugin = \"blackhole\"\ntopic = \"{{table}}\"\n"
    );
    let (code, err) = validate(&sink);
    assert_eq!(code, Some(2));
    assert!(err.contains("topic name \"{table}\" holds '{'"), "{err}");

    let (code, out) =
        validate(&GOOD.replace("topic = \"events\"", "topic = \"cdc.{schema}.{table}\""));
    assert_eq!(code, Some(0), "{out}");
}
