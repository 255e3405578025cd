//! Loading a manifest, and checking once what its types alone cannot: each
//! value that is a small language of its own (sizes, durations, net rules,
//! secret names and references) is parsed here, a bad one is reported where
//! it is written, with the fix, and a good one is kept typed (the manifest's
//! topic policies, each connector's [`Limits`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use rustls_pki_types::ServerName;
use toml::Spanned;

use super::check_transforms::valid_name;
use super::error::from_toml;
use super::net::NetRule;
use super::resolved::{ClientIdentity, Limits, RestartPolicy, TlsPolicy, TopicPolicy};
use super::secret_ref::secret_references;
use super::topic_template::{TopicTemplate, check_topic_name};
use super::units::{parse_bytes, parse_duration};
use super::{BrokerKind, ConnectorConfig, ConnectorKind, Manifest, ManifestError, TopicSettings};

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            ManifestError::at(path, "", None, format!("cannot read the manifest: {e}")).help(
                "check the path; `sluice run examples/quickstart/sluice.toml` runs the quickstart",
            )
        })?;
        Self::parse(path, &source)
    }

    /// Parses and checks `source`, read from `path`.
    pub fn parse(path: &Path, source: &str) -> Result<Manifest, ManifestError> {
        let mut manifest: Manifest =
            toml::from_str(source).map_err(|e| from_toml(path, source, &e))?;
        manifest.path = path.to_path_buf();
        manifest.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        manifest.source = source.to_owned();
        manifest.check()?;
        Ok(manifest)
    }

    pub(super) fn error(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> ManifestError {
        let span = (span.end > 0 || span.start > 0).then_some(span);
        ManifestError::at(&self.path, &self.source, span, message)
    }

    /// Checks what the types alone cannot, and keeps what it parsed: the
    /// topic policies and each connector's [`Limits`].
    fn check(&mut self) -> Result<(), ManifestError> {
        if self.broker.partitions == 0 {
            return Err(
                ManifestError::at(&self.path, &self.source, None, "partitions is 0")
                    .field("broker.partitions")
                    .help("a topic needs at least one partition: `partitions = 1`"),
            );
        }
        if self.broker.fsync_interval_ms == 0 {
            return Err(ManifestError::at(
                &self.path,
                &self.source,
                None,
                "fsync_interval_ms is 0",
            )
            .field("broker.fsync_interval_ms")
            .help("sync at most every millisecond, or say `fsync = \"always\"`"));
        }
        (self.nats_servers, self.nats_tls) = self.check_broker_kind()?;
        let defaults = TopicPolicy {
            partitions: self.broker.partitions,
            ..TopicPolicy::default()
        };
        let defaults = self.topic_policy("broker", &self.broker.topic_settings(), defaults)?;
        let mut policies = std::collections::BTreeMap::new();
        for (name, t) in &self.topics {
            let policy = self.topic_policy(&format!("topics.{name}"), t, defaults)?;
            policies.insert(name.clone(), policy);
        }
        (self.topic_defaults, self.topic_policies) = (defaults, policies);
        self.check_transforms()?;
        let checked = self.check_connectors()?;
        for (c, (limits, route)) in self.connectors.iter_mut().zip(checked) {
            let c = c.get_mut();
            (c.limits, c.route) = (limits, route);
        }
        Ok(())
    }

    /// Checks every connector, and returns the limits and the topic
    /// template parsed from each.
    fn check_connectors(&self) -> Result<Vec<(Limits, Option<TopicTemplate>)>, ManifestError> {
        let mut all = Vec::with_capacity(self.connectors.len());
        if self.connectors.is_empty() {
            return Err(
                ManifestError::at(&self.path, &self.source, None, "no connector")
                    .help("add a [[connector]] table with name, kind, plugin and topic"),
            );
        }
        let mut names = BTreeSet::new();
        for (i, c) in self.connectors.iter().enumerate() {
            let c = c.get_ref();
            let name = c.name.get_ref();
            let mut route = None;
            if !valid_name(name) {
                return Err(self
                    .error(
                        c.name.span(),
                        format!("connector name {name:?} is not allowed"),
                    )
                    .field(format!("connector[{i}].name"))
                    .help("use letters, digits, `.`, `_` and `-` (not only dots), e.g. `name = \"orders-sink\"`"));
            }
            if !names.insert(name.clone()) {
                return Err(self
                    .error(
                        c.name.span(),
                        format!("a second connector is named {name:?}"),
                    )
                    .field(format!("connector[{i}].name"))
                    .help("connector names must be unique; rename one of them"));
            }
            if *c.parallelism.get_ref() == 0 {
                return Err(self
                    .error(c.parallelism.span(), "parallelism is 0")
                    .field(format!("connector[{i}].parallelism"))
                    .help("run at least one instance: `parallelism = 1`"));
            }
            match c.kind {
                ConnectorKind::Source => {
                    if c.topic.is_none() || c.topics.is_some() {
                        let span = c.topics.as_ref().map_or(c.name.span(), Spanned::span);
                        return Err(self
                            .error(span, format!("source {name:?} needs exactly one `topic`"))
                            .field(format!("connector[{i}].topic"))
                            .help("a source writes to one topic: `topic = \"events\"`"));
                    }
                    let topic = c.topic.as_ref().expect("checked above");
                    route = TopicTemplate::parse(topic.get_ref()).map_err(|why| {
                        self.error(topic.span(), why)
                            .field(format!("connector[{i}].topic"))
                            .help(
                                "name a header in braces among letters, digits, `.`, `_` and \
                                 `-`: `topic = \"{schema}.{table}\"`",
                            )
                    })?;
                    if route.is_some() && self.broker.kind == BrokerKind::Nats {
                        return Err(self
                            .error(topic.span(), format!(
                                "source {name:?} routes records over topics, which the nats broker cannot store atomically"
                            ))
                            .field(format!("connector[{i}].topic"))
                            .help(
                                "one NATS message cannot span streams: write one topic                                  (`topic = \"changes\"`), or use `kind = \"embedded\"`",
                            ));
                    }
                }
                ConnectorKind::Sink | ConnectorKind::Transform => {
                    if c.topic_names().is_empty() {
                        return Err(self
                            .error(c.name.span(), format!("{} {name:?} reads no topic", c.kind))
                            .field(format!("connector[{i}].topics"))
                            .help("name what it reads: `topic = \"events\"` or `topics = [\"a\", \"b\"]`"));
                    }
                }
            }
            if let Some(template) = self.check_output(i, c)? {
                route = Some(template);
            }
            self.check_chain(i, c)?;
            self.check_hybrid(i, c)?;
            if let Some(t) = &c.dead_letter_topic {
                if !c.has_dead_letters() {
                    return Err(self
                        .error(
                            t.span(),
                            "a source without transforms has no dead-letter topic",
                        )
                        .field(format!("connector[{i}].dead_letter_topic"))
                        .help("remove it; only sinks, transforms and chains refuse records"));
                }
                if c.output
                    .as_ref()
                    .is_some_and(|o| o.get_ref() == t.get_ref())
                {
                    return Err(self
                        .error(t.span(), "a transform cannot dead-letter into its output")
                        .field(format!("connector[{i}].dead_letter_topic"))
                        .help(format!(
                            "use another topic, e.g. `dead_letter_topic = \"{name}.dlq\"`"
                        )));
                }
                if c.topic_names().contains(t.get_ref()) {
                    return Err(self
                        .error(
                            t.span(),
                            format!("a {} cannot dead-letter into a topic it reads", c.kind),
                        )
                        .field(format!("connector[{i}].dead_letter_topic"))
                        .help(format!(
                            "use another topic, e.g. `dead_letter_topic = \"{name}.dlq\"`"
                        )));
                }
            }
            let plain_topics = if route.is_some() && c.kind == ConnectorKind::Source {
                Vec::new()
            } else {
                c.topic_names()
            };
            let plain_output = c
                .output
                .as_ref()
                .filter(|_| route.is_none())
                .map(|t| t.get_ref().clone());
            for t in plain_topics
                .into_iter()
                .chain(plain_output)
                .chain(c.dead_letter_topic.as_ref().map(|t| t.get_ref().clone()))
            {
                if let Err(why) = check_topic_name(&t) {
                    let span = c
                        .topic
                        .as_ref()
                        .map(Spanned::span)
                        .or(c.topics.as_ref().map(Spanned::span))
                        .unwrap_or(c.name.span());
                    return Err(self
                        .error(span, why)
                        .field(format!("connector[{i}].topic"))
                        .help("use letters, digits, `.`, `_` and `-` (not only dots)"));
                }
            }
            if c.batch.max_records == 0 || c.batch.max_bytes == 0 {
                return Err(self
                    .error(c.name.span(), "a batch limit is 0")
                    .field(format!("connector[{i}].batch"))
                    .help("max_records and max_bytes must be at least 1"));
            }
            let size = |grant: &str, size: &Option<Spanned<String>>| {
                let Some(size) = size else { return Ok(None) };
                parse_bytes(size.get_ref()).map(Some).map_err(|why| {
                    self.error(size.span(), why)
                        .field(format!("connector[{i}].grants.{grant}"))
                        .help(format!(
                            "write a size such as `{grant} = \"64 MiB\"` (B, KiB, MiB, GiB)"
                        ))
                })
            };
            let memory = size("memory", &c.grants.memory)?;
            let state = size("state", &c.grants.state)?;
            let cpu = match &c.grants.cpu {
                None => None,
                Some(cpu) => {
                    let d = parse_duration(cpu.get_ref()).map_err(|why| {
                        self.error(cpu.span(), why)
                            .field(format!("connector[{i}].grants.cpu"))
                            .help("write a duration such as `cpu = \"2s\"` or `cpu = \"500ms\"`")
                    })?;
                    if d < Duration::from_millis(10) {
                        return Err(self
                            .error(
                                cpu.span(),
                                "a cpu grant under 10ms is shorter than the host's clock tick",
                            )
                            .field(format!("connector[{i}].grants.cpu"))
                            .help("grant at least `cpu = \"10ms\"`"));
                    }
                    Some(d)
                }
            };
            let net = self.check_net_env_secrets(i, c)?;
            let tls = self.check_tls(i, c)?;
            let http_headers = self.check_http(i, c)?;
            let wait = |field: &str, value: &Option<Spanned<String>>, default: Duration| {
                let Some(v) = value else { return Ok(default) };
                parse_duration(v.get_ref()).map_err(|why| {
                    self.error(v.span(), why)
                        .field(format!("connector[{i}].restart.{field}"))
                        .help(format!("write a duration such as `{field} = \"1s\"`"))
                })
            };
            let d = RestartPolicy::default();
            let initial = wait("initial", &c.restart.initial, d.initial)?;
            let restart = RestartPolicy {
                initial,
                max: wait("max", &c.restart.max, d.max)?.max(initial),
                attempts: c.restart.attempts.unwrap_or(d.attempts),
            };
            all.push((
                Limits {
                    memory,
                    cpu,
                    state,
                    state_keys: c.grants.state_keys,
                    net,
                    tls,
                    http_headers,
                    restart,
                },
                route,
            ));
        }
        Ok(all)
    }

    /// Checks the `net`, `env` and `secrets` grants of connector `i`, and
    /// that every `${secret:NAME}` in its config names a granted secret.
    /// Returns the parsed `net` rules.
    fn check_net_env_secrets(
        &self,
        i: usize,
        c: &ConnectorConfig,
    ) -> Result<Vec<NetRule>, ManifestError> {
        let mut rules = Vec::with_capacity(c.grants.net.len());
        for (j, rule) in c.grants.net.iter().enumerate() {
            let parsed = NetRule::parse(rule.get_ref()).map_err(|why| {
                self.error(rule.span(), why)
                    .field(format!("connector[{i}].grants.net[{j}]"))
                    .help(
                        "write `host:port`, `ip:port` or `cidr:port`, with a port or a range, \
                         e.g. `\"db.internal:5432\"`, `\"10.0.0.0/8:9092-9094\"` or `\"[::1]:6379\"`",
                    )
            })?;
            rules.push(parsed);
        }
        for (j, name) in c.grants.env.iter().enumerate() {
            let n = name.get_ref();
            if n.is_empty() || n.contains('=') || n.contains('\0') {
                return Err(self
                    .error(
                        name.span(),
                        format!("{n:?} is not an environment variable name"),
                    )
                    .field(format!("connector[{i}].grants.env[{j}]"))
                    .help("list variable names only, e.g. `env = [\"TZ\"]`"));
            }
        }
        for (name, source) in &c.grants.secrets {
            let field = format!("connector[{i}].grants.secrets.{name}");
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'));
            if !valid {
                return Err(self
                    .error(
                        source.span(),
                        format!("secret name {name:?} is not allowed"),
                    )
                    .field(field)
                    .help("use letters, digits, `_`, `-` and `.`"));
            }
            let s = source.get_ref();
            if s.env.is_some() == s.file.is_some() {
                return Err(self
                    .error(source.span(), format!("secret {name:?} needs exactly one of `env` and `file`"))
                    .field(field)
                    .help(format!(
                        "write `{name} = {{ env = \"VARIABLE\" }}` or `{name} = {{ file = \"path\" }}`"
                    )));
            }
        }
        for reference in secret_references(&c.config) {
            if !c.grants.secrets.contains_key(&reference) {
                let span = self.config_span_of_text(i, &format!("${{secret:{reference}}}"));
                return Err(self
                    .error(span.unwrap_or(c.name.span()), format!("the config uses secret {reference:?}, which is not granted"))
                    .field(format!("connector[{i}].config"))
                    .help(format!(
                        "declare it: `[connector.grants.secrets]` `{reference} = {{ env = \"VARIABLE\" }}`"
                    )));
            }
        }
        Ok(rules)
    }

    /// Checks `[connector.grants.tls]` of connector `i`: the client
    /// certificate and key come together and name granted secrets, and the
    /// server name is one a certificate can carry. The CA file and the
    /// secrets are read when the connector starts.
    fn check_tls(&self, i: usize, c: &ConnectorConfig) -> Result<TlsPolicy, ManifestError> {
        let t = &c.grants.tls;
        let field = |name: &str| format!("connector[{i}].grants.tls.{name}");
        let secret = |name: &str, value: &Spanned<String>| {
            let secret = value.get_ref();
            if c.grants.secrets.contains_key(secret) {
                Ok(secret.clone())
            } else {
                Err(self
                    .error(
                        value.span(),
                        format!("{name} names secret {secret:?}, which is not granted"),
                    )
                    .field(field(name))
                    .help(format!(
                        "declare it: `[connector.grants.secrets]` `{secret} = {{ file = \"{name}.pem\" }}`"
                    )))
            }
        };
        let client_identity = match (&t.client_cert, &t.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_secret: secret("client_cert", cert)?,
                key_secret: secret("client_key", key)?,
            }),
            (Some(one), None) | (None, Some(one)) => {
                let missing = if t.client_cert.is_none() {
                    "client_cert"
                } else {
                    "client_key"
                };
                return Err(self
                    .error(
                        one.span(),
                        "a client certificate needs both client_cert and client_key",
                    )
                    .field(field(missing))
                    .help(format!(
                        "add `{missing} = \"SECRET\"`, naming the secret that holds it"
                    )));
            }
        };
        let server_name = match &t.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.get_ref().clone()).map_err(|_| {
                self.error(
                    name.span(),
                    format!("{:?} is not a DNS name or an IP address", name.get_ref()),
                )
                .field(field("server_name"))
                .help("write the name the server's certificate is for, e.g. `server_name = \"db.internal\"`")
            })?),
        };
        let ca_file = t.ca_file.as_ref().map(|f| self.resolve(f.get_ref()));
        Ok(TlsPolicy {
            system_roots: t.system_roots.unwrap_or(ca_file.is_none()),
            ca_file,
            client_identity,
            server_name,
        })
    }

    /// Checks `[connector.grants.http]` of connector `i`: each header name
    /// is one, and each secret a value uses is granted.
    fn check_http(
        &self,
        i: usize,
        c: &ConnectorConfig,
    ) -> Result<Vec<(HeaderName, String)>, ManifestError> {
        let mut headers = Vec::new();
        for (name, value) in &c.grants.http.headers {
            let field = format!("connector[{i}].grants.http.headers.{name}");
            let header = HeaderName::try_from(name.as_str()).map_err(|_| {
                self.error(value.span(), format!("{name:?} is not an HTTP header name"))
                    .field(field.clone())
                    .help("write a header name such as `Authorization` or `X-Api-Key`")
            })?;
            let mut table = toml::Table::new();
            table.insert(name.clone(), value.get_ref().clone().into());
            if let Some(missing) = secret_references(&table)
                .into_iter()
                .find(|r| !c.grants.secrets.contains_key(r))
            {
                return Err(self
                    .error(
                        value.span(),
                        format!("header {name} uses secret {missing:?}, which is not granted"),
                    )
                    .field(field)
                    .help(format!(
                        "declare it: `[connector.grants.secrets]` `{missing} = {{ env = \"VARIABLE\" }}`"
                    )));
            }
            headers.push((header, value.get_ref().clone()));
        }
        Ok(headers)
    }

    /// Where `text` first appears in the manifest, at or after connector
    /// `i`'s table.
    pub(super) fn config_span_of_text(
        &self,
        i: usize,
        text: &str,
    ) -> Option<std::ops::Range<usize>> {
        let from = self.connectors.get(i)?.span().start;
        let at = self.source.get(from..)?.find(text)? + from;
        Some(at..at + text.len())
    }

    /// Checks the partitions, retention and backlog settings of `[broker]`
    /// (`table` `"broker"`) or of `[topics.<name>]`, and returns them over
    /// `defaults`.
    fn topic_policy(
        &self,
        table: &str,
        t: &TopicSettings,
        defaults: TopicPolicy,
    ) -> Result<TopicPolicy, ManifestError> {
        let mut policy = defaults;
        if let Some(p) = &t.partitions {
            if *p.get_ref() == 0 {
                return Err(self
                    .error(p.span(), "partitions is 0")
                    .field(format!("{table}.partitions"))
                    .help("a topic needs at least one partition: `partitions = 1`"));
            }
            policy.partitions = *p.get_ref();
        }
        // A size, or `word` (meaning no limit) where one is allowed.
        let size = |field: &str, v: &Spanned<String>, word: Option<&str>| {
            if word.is_some_and(|w| v.get_ref() == w) {
                return Ok(None);
            }
            let or = word.map_or(String::new(), |w| format!(", or `\"{w}\"`"));
            let help = format!("write a size such as `{field} = \"1 GiB\"`{or}");
            let n = parse_bytes(v.get_ref()).map_err(|why| {
                self.error(v.span(), why)
                    .field(format!("{table}.{field}"))
                    .help(help.clone())
            })?;
            if n == 0 {
                return Err(self
                    .error(v.span(), format!("{field} is 0"))
                    .field(format!("{table}.{field}"))
                    .help(help));
            }
            Ok(Some(n))
        };
        if let Some(v) = &t.retention_bytes {
            policy.retention_bytes = size("retention_bytes", v, Some("unlimited"))?;
        }
        if let Some(v) = &t.max_backlog
            && let Some(n) = size("max_backlog", v, None)?
        {
            policy.max_backlog = n;
        }
        if let Some(v) = &t.retention_age {
            policy.retention_age = if v.get_ref() == "forever" {
                None
            } else {
                Some(parse_duration(v.get_ref()).map_err(|why| {
                    self.error(v.span(), why)
                        .field(format!("{table}.retention_age"))
                        .help("write a duration such as `retention_age = \"7d\"`, or `\"forever\"`")
                })?)
            };
        }
        Ok(policy)
    }
}
