//! The manifest: one TOML file that says which broker to use and which
//! connectors to run.
//!
//! Every struct here rejects unknown fields, every field's doc comment shows
//! its TOML, and every default lives in one `default_*` function. A manifest
//! that does not parse, or parses into something that cannot run, is reported
//! as a [`ManifestError`] with the file, line and column, the field, and what
//! to write instead.
//!
//! Relative paths in a manifest (the data directory, plugin files, granted
//! directories) are relative to the manifest's own folder, so a manifest runs
//! the same from wherever `sluice` is started.
//!
//! - `schema`: the structs serde reads the TOML into, their defaults, and
//!   what the rest of the host asks of them (a topic's policy, a path
//!   resolved beside the manifest).
//! - `check`: loading, and what the types alone cannot check, once;
//!   `check_broker`: the same for `[broker]`'s NATS settings;
//!   `check_transforms` for transforms and chains; `check_hybrid` for a
//!   hybrid source's `[connector.hybrid]`.
//! - `resolved`: what the check makes of sizes, durations and net rules
//!   ([`Limits`], [`RestartPolicy`], [`TopicPolicy`]), and every default.
//! - `error`: [`ManifestError`], located at file, line and column.
//! - `units`: sizes and durations as a manifest writes them.
//! - `net`: a `net` grant's entry ([`NetRule`]), parsed once here.
//! - `secret_ref`: the `${secret:NAME}` and `${switch:NAME}` references in
//!   a config.
//!
//! Nothing here imports the rest of the host: the manifest is the bottom
//! layer that `grants`, `secrets` and everything else read.

mod check;
mod check_broker;
mod check_hybrid;
mod check_transforms;
mod error;
mod net;
mod resolved;
mod schema;
mod secret_ref;
mod topic_template;
mod units;

pub use self::error::{Located, ManifestError};
pub use self::net::NetRule;
pub use self::resolved::{
    ClientIdentity, DEFAULT_CPU, DEFAULT_MAX_BACKLOG, DEFAULT_MEMORY_BYTES,
    DEFAULT_RESTART_ATTEMPTS, DEFAULT_RESTART_INITIAL, DEFAULT_RESTART_MAX, DEFAULT_RETENTION_AGE,
    DEFAULT_STATE_BYTES, DEFAULT_STATE_KEYS, Limits, RestartPolicy, TlsPolicy, TopicPolicy,
};
pub use self::schema::{
    BatchConfig, BrokerConfig, BrokerKind, BrokerTls, ConnectorConfig, ConnectorKind,
    DEFAULT_NATS_URL, FileGrant, FileMode, FsyncPolicy, GrantsConfig, HttpGrant, HybridConfig,
    Manifest, RestartConfig, SecretSource, TlsGrant, TopicSettings, TransformConfig,
};
pub use self::secret_ref::{
    SECRET_REF_PREFIX, SWITCH_REF_PREFIX, SWITCH_TIMESTAMP_MS, secret_references, switch_references,
};
pub use self::topic_template::{RouteError, TopicTemplate, check_topic_name};
pub use self::units::{format_bytes, format_size};
#[cfg(test)]
use self::units::{parse_bytes, parse_duration};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;
    use std::time::Duration;

    use super::*;

    const GOOD: &str = r#"
[broker]
data_dir = "d"

[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "events"
[connector.config]
count = 10

[[connector]]
name = "out"
kind = "sink"
plugin = "file-sink"
topics = ["events"]
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("dir/m.toml"), text)
    }

    #[test]
    fn defaults_fill_in_and_paths_resolve_beside_the_manifest() {
        let m = parse(GOOD).unwrap();
        assert_eq!(m.broker.fsync, FsyncPolicy::Interval);
        assert_eq!(m.data_dir(), Path::new("dir/d"));
        let sink = m.connectors[1].get_ref();
        assert_eq!(*sink.parallelism.get_ref(), 1);
        assert_eq!(sink.topic_names(), ["events"]);
        assert_eq!(sink.batch.max_records, 1000);
    }

    #[test]
    fn unknown_field_names_line_column_and_fix() {
        let bad = GOOD.replace("topic = \"events\"", "topic = \"events\"\npartitons = 4");
        let e = parse(&bad).unwrap_err();
        assert_eq!((e.line, e.column), (Some(10), Some(1)));
        let text = e.to_string();
        assert!(text.starts_with("dir/m.toml:10:1: "), "{text}");
        assert!(text.contains("unknown field `partitons`"), "{text}");
        assert!(
            text.contains("help: remove it, or correct the spelling"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let bad = GOOD.replace("name = \"out\"", "name = 7");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("name"));
        assert_eq!(e.line, Some(14));
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let bad = GOOD.replace("name = \"out\"", "name = \"gen\"");
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(14));
        assert!(
            e.to_string().contains("second connector is named \"gen\""),
            "{e}"
        );

        let bad = GOOD.replace("topics = [\"events\"]", "");
        let e = parse(&bad).unwrap_err();
        assert!(e.to_string().contains("reads no topic"), "{e}");
    }

    #[test]
    fn topic_settings_default_override_and_are_checked() {
        let m = parse(&format!(
            "{GOOD}\n[topics.events]\npartitions = 3\nmax_backlog = \"16 MiB\"\n\
             retention_age = \"forever\"\n"
        ))
        .unwrap();
        let (defaults, named) = m.topic_policies();
        assert_eq!(
            defaults,
            TopicPolicy {
                partitions: 1,
                retention_bytes: None,
                retention_age: Some(DEFAULT_RETENTION_AGE),
                max_backlog: DEFAULT_MAX_BACKLOG,
            }
        );
        assert_eq!(
            named["events"],
            TopicPolicy {
                partitions: 3,
                retention_bytes: None,
                retention_age: None,
                max_backlog: 16 << 20,
            }
        );
        let bad = GOOD.replace(
            "data_dir = \"d\"",
            "data_dir = \"d\"\nretention_bytes = \"lots\"",
        );
        let e = parse(&bad).unwrap_err();
        assert_eq!(e.line, Some(4));
        let text = e.to_string();
        assert!(text.contains("broker.retention_bytes"), "{text}");
        assert!(text.contains("\"unlimited\""), "{text}");
        let e = parse(&format!(
            "{GOOD}\n[topics.events]\nretention_age = \"a week\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("topics.events.retention_age"), "{e}");
        let e = parse(&format!("{GOOD}\n[topics.events]\nmax_backlog = \"0\"\n")).unwrap_err();
        assert!(e.to_string().contains("max_backlog is 0"), "{e}");
    }

    #[test]
    fn nats_settings_are_checked_against_the_broker_kind() {
        let nats = GOOD.replace("data_dir = \"d\"", "kind = \"nats\"\nreplicas = 3");
        let m = parse(&nats).unwrap();
        let servers: Vec<String> = m
            .nats_servers()
            .iter()
            .map(|s| s.as_url_str().to_owned())
            .collect();
        assert_eq!(servers, [DEFAULT_NATS_URL]);
        let two = nats.replace("replicas = 3", "url = \"nats://a:4222, nats://b:4223\"");
        let servers = parse(&two).unwrap().nats_servers().len();
        assert_eq!(servers, 2);
        let e =
            parse(&nats.replace("replicas = 3", "url = \"nats://a:4222,nats://b:x\"")).unwrap_err();
        assert_eq!(e.line, Some(4));
        let text = e.to_string();
        assert!(
            text.contains("\"nats://b:x\" is not a NATS server URL"),
            "{text}"
        );
        assert_eq!(m.nats_replicas(), 3);

        let e = parse(&GOOD.replace("data_dir = \"d\"", "url = \"nats://h:4222\"")).unwrap_err();
        assert_eq!(e.line, Some(3));
        let text = e.to_string();
        assert!(
            text.contains("broker.url") && text.contains("kind = \"nats\""),
            "{text}"
        );

        let e = parse(&nats.replace("replicas = 3", "replicas = 7")).unwrap_err();
        assert!(e.to_string().contains("1 to 5"), "{e}");

        let routed = nats.replace("topic = \"events\"", "topic = \"{schema}.{table}\"");
        let e = parse(&routed).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("connector[0].topic") && text.contains("embedded"),
            "{text}"
        );
    }

    #[test]
    fn nats_credentials_and_tls_are_checked_and_kept_typed() {
        let nats = GOOD.replace("data_dir = \"d\"", "kind = \"nats\"");
        let with =
            |extra: &str| nats.replace("kind = \"nats\"", &format!("kind = \"nats\"\n{extra}"));
        let m = parse(&with(
            "user = \"u\"\npassword = { env = \"P\" }\n\
             tls = { ca_file = \"ca.pem\", client_cert = { file = \"c.pem\" }, client_key = { env = \"K\" } }",
        ))
        .unwrap();
        let tls = m.nats_tls().unwrap();
        assert!(tls.ca_file.as_ref().unwrap().ends_with("ca.pem"));
        assert!(!tls.system_roots, "a CA file replaces the system's roots");
        assert!(tls.client_identity.is_some());
        assert!(parse(&nats).unwrap().nats_tls().is_none());

        for (extra, field, says) in [
            ("user = \"u\"", "broker.password", "a user needs a password"),
            (
                "password = { env = \"P\" }",
                "broker.user",
                "a password needs its user",
            ),
            (
                "token = { env = \"T\" }\nuser = \"u\"\npassword = { env = \"P\" }",
                "broker.token",
                "both a token and a user",
            ),
            (
                "password = { env = \"P\", file = \"p\" }\nuser = \"u\"",
                "broker.password",
                "exactly one of `env` and `file`",
            ),
            (
                "tls = { client_cert = { file = \"c.pem\" } }",
                "broker.tls.client_key",
                "needs both client_cert and client_key",
            ),
        ] {
            let text = parse(&with(extra)).unwrap_err().to_string();
            assert!(
                text.contains(field) && text.contains(says),
                "{extra}: {text}"
            );
        }
        for extra in ["user = \"u\"", "tls = { ca_file = \"ca.pem\" }"] {
            let embedded = GOOD.replace("data_dir = \"d\"", extra);
            let text = parse(&embedded).unwrap_err().to_string();
            assert!(text.contains("is a setting of the nats broker"), "{text}");
        }
    }

    #[test]
    fn the_check_parses_grants_and_restart_once_into_typed_limits() {
        let m = parse(&GOOD.replace(
            "[connector.config]\ncount = 10",
            "[connector.config]\ncount = 10\n[connector.grants]\nmemory = \"64 MiB\"\n\
             cpu = \"500ms\"\nstate = \"1 MiB\"\nnet = [\"10.0.0.0/8:9092-9094\"]\n\
             [connector.restart]\ninitial = \"5s\"\nmax = \"1s\"",
        ))
        .unwrap();
        let limits = &m.connectors[0].get_ref().limits;
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.cpu, Some(Duration::from_millis(500)));
        assert_eq!((limits.state, limits.state_keys), (Some(1 << 20), None));
        assert_eq!(
            limits.net,
            [NetRule::parse("10.0.0.0/8:9092-9094").unwrap()]
        );
        // `max` is never below `initial`.
        assert_eq!(
            limits.restart,
            RestartPolicy {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(5),
                attempts: DEFAULT_RESTART_ATTEMPTS
            }
        );
        // Nothing written: nothing granted past the defaults.
        assert_eq!(m.connectors[1].get_ref().limits, Limits::default());
        let e = parse(&GOOD.replace(
            "data_dir = \"d\"",
            "data_dir = \"d\"\nfsync_interval_ms = 0",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("fsync_interval_ms is 0"), "{e}");
    }

    #[test]
    fn config_fields_are_found_for_schema_errors() {
        let m = parse(GOOD).unwrap();
        let span = m.config_span(0, "/count").unwrap();
        assert_eq!(&m.source[span], "10");
    }

    #[test]
    fn sizes_format_for_people_and_as_written() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(33_619_968), "32.1 MiB");
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(1000), "1000 B");
        assert_eq!(parse_bytes(&format_size(3 << 30)), Ok(3 << 30));
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_bytes("64 MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("12").unwrap(), 12);
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2 fortnights").is_err());
    }
}
