//! Checking the transforms of a manifest: the `[[transform]]` tables, the
//! `transforms` chains that name them, and a transform connector's
//! `output`.

use std::collections::BTreeSet;

use super::topic_template::TopicTemplate;
use super::{
    BrokerKind, ConnectorConfig, ConnectorKind, Manifest, ManifestError, SECRET_REF_PREFIX,
    secret_references,
};

impl Manifest {
    /// Checks the `[[transform]]` tables: each named, once.
    pub(super) fn check_transforms(&self) -> Result<(), ManifestError> {
        let mut names = BTreeSet::new();
        for (i, t) in self.transforms.iter().enumerate() {
            let name = t.get_ref().name.get_ref();
            if !valid_name(name) {
                return Err(self
                    .error(t.get_ref().name.span(), format!("transform name {name:?} is not allowed"))
                    .field(format!("transform[{i}].name"))
                    .help("use letters, digits, `.`, `_` and `-` (not only dots), e.g. `name = \"mask-pii\"`"));
            }
            if !names.insert(name.clone()) {
                return Err(self
                    .error(
                        t.get_ref().name.span(),
                        format!("a second transform is named {name:?}"),
                    )
                    .field(format!("transform[{i}].name"))
                    .help("transform names must be unique; rename one of them"));
            }
        }
        Ok(())
    }

    /// Checks connector `i`'s `transforms` chain: each a `[[transform]]`,
    /// on a source or a sink, on the embedded broker.
    pub(super) fn check_chain(&self, i: usize, c: &ConnectorConfig) -> Result<(), ManifestError> {
        let Some(chain) = &c.transforms else {
            return Ok(());
        };
        let name = c.name.get_ref();
        let at = |why: String, help: String| {
            self.error(chain.span(), why)
                .field(format!("connector[{i}].transforms"))
                .help(help)
        };
        if c.kind == ConnectorKind::Transform {
            return Err(at(
                format!("transform {name:?} has a `transforms` chain"),
                "remove it: a transform connector's plugin is its transform; chain another \
                 transform connector after it (its `topic` = this one's `output`)"
                    .into(),
            ));
        }
        if self.broker.kind == BrokerKind::Nats {
            return Err(at(
                format!(
                    "{} {name:?} has a chain of transforms, whose output, dead letters and \
                     position the nats broker cannot store in one write",
                    c.kind
                ),
                "one NATS message cannot span streams: run chains on `kind = \"embedded\"`".into(),
            ));
        }
        for step in chain.get_ref() {
            let Some((j, t)) = self
                .transforms
                .iter()
                .enumerate()
                .find(|(_, t)| t.get_ref().name.get_ref() == step)
            else {
                let defined: Vec<&str> = self
                    .transforms
                    .iter()
                    .map(|t| t.get_ref().name.get_ref().as_str())
                    .collect();
                return Err(at(
                    format!(
                        "{} {name:?} names transform {step:?}, which no [[transform]] defines",
                        c.kind
                    ),
                    if defined.is_empty() {
                        format!(
                            "define it: `[[transform]]` with `name = \"{step}\"` and its `plugin`"
                        )
                    } else {
                        format!(
                            "name one of {}, or define it in a `[[transform]]`",
                            defined.join(", ")
                        )
                    },
                ));
            };
            // A step runs inside the connector's instance: its
            // `${secret:NAME}` is filled from the connector's secrets.
            for reference in secret_references(&t.get_ref().config) {
                if !c.grants.secrets.contains_key(&reference) {
                    let text = format!("{SECRET_REF_PREFIX}{reference}}}");
                    let span = self
                        .source
                        .get(t.span())
                        .and_then(|table| table.find(&text))
                        .map(|at| t.span().start + at..t.span().start + at + text.len());
                    return Err(self
                        .error(
                            span.unwrap_or(t.get_ref().name.span()),
                            format!(
                                "transform {step:?} uses secret {reference:?}, which {} {name:?} \
                                 does not grant",
                                c.kind
                            ),
                        )
                        .field(format!("transform[{j}].config"))
                        .help(format!(
                            "a chain's transforms take their secrets from the connector that \
                             runs them: `[connector.grants.secrets]` `{reference} = {{ env = \
                             \"VARIABLE\" }}` in {name:?}"
                        )));
                }
            }
        }
        Ok(())
    }

    /// Checks connector `i`'s `output`: a transform's, as a topic or a
    /// template (returned), never one it reads; no other kind has one.
    pub(super) fn check_output(
        &self,
        i: usize,
        c: &ConnectorConfig,
    ) -> Result<Option<TopicTemplate>, ManifestError> {
        let name = c.name.get_ref();
        match (&c.output, c.kind) {
            (None, ConnectorKind::Transform) => Err(self
                .error(c.name.span(), format!("transform {name:?} has no `output`"))
                .field(format!("connector[{i}].output"))
                .help("name the topic it writes: `output = \"clean-events\"`")),
            (Some(output), ConnectorKind::Transform) => {
                let route = TopicTemplate::parse(output.get_ref()).map_err(|why| {
                    self.error(output.span(), why)
                        .field(format!("connector[{i}].output"))
                        .help(
                            "name a header in braces among letters, digits, `.`, `_` and \
                                 `-`: `output = \"events.{lane}\"`",
                        )
                })?;
                let loops = match &route {
                    Some(t) => c.topic_names().iter().any(|r| t.matches(r)),
                    None => c.topic_names().contains(output.get_ref()),
                };
                if loops {
                    return Err(self
                        .error(
                            output.span(),
                            format!(
                                "transform {name:?} would write a topic it reads, feeding itself"
                            ),
                        )
                        .field(format!("connector[{i}].output"))
                        .help("write another topic, e.g. `output = \"events.clean\"`"));
                }
                if self.broker.kind == BrokerKind::Nats {
                    return Err(self
                            .error(output.span(), format!(
                                "transform {name:?} stores its output, its dead letters and its input offsets in one write, which the nats broker cannot do atomically"
                            ))
                            .field(format!("connector[{i}].output"))
                            .help("one NATS message cannot span streams: run transform connectors on `kind = \"embedded\"`"));
                }
                Ok(route)
            }
            (Some(output), _) => Err(self
                .error(output.span(), format!("a {} has no `output`", c.kind))
                .field(format!("connector[{i}].output"))
                .help("remove it; only a transform connector writes an `output` topic")),
            (None, _) => Ok(None),
        }
    }
}

/// A connector's or transform's name: it names folders (its journal, its
/// state), so letters, digits, `.`, `_` and `-`, not only dots.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'))
        && !name.chars().all(|ch| ch == '.')
}
