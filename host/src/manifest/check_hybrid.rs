//! Checking `[connector.hybrid]`: on a source only, its secrets granted by
//! the connector, and `${switch:…}` only where it is filled.

use super::{ConnectorConfig, ConnectorKind, Manifest, ManifestError, SECRET_REF_PREFIX};
use super::{SWITCH_REF_PREFIX, SWITCH_TIMESTAMP_MS, secret_references, switch_references};

impl Manifest {
    /// Checks connector `i`'s `[connector.hybrid]`, if it has one.
    pub(super) fn check_hybrid(&self, i: usize, c: &ConnectorConfig) -> Result<(), ManifestError> {
        let name = c.name.get_ref();
        // `${switch:…}` is filled in the live source's config, and nowhere
        // else: anywhere else the plugin would read it as it is.
        if let Some(r) = switch_references(&c.config).into_iter().next() {
            let text = format!("{SWITCH_REF_PREFIX}{r}}}");
            return Err(self
                .error(
                    self.config_span_of_text(i, &text).unwrap_or(c.name.span()),
                    format!("the config of {} {name:?} uses {text}", c.kind),
                )
                .field(format!("connector[{i}].config"))
                .help(
                    "the hand-over is filled only in `[connector.hybrid.config]`, the live \
                     source a hybrid source runs once its bounded `plugin` has ended",
                ));
        }
        let Some(h) = &c.hybrid else {
            return Ok(());
        };
        let (span, h) = (h.span(), h.get_ref());
        let at_text = |text: &str| {
            self.source
                .get(span.clone())
                .and_then(|table| table.find(text))
                .map(|at| span.start + at..span.start + at + text.len())
                .unwrap_or(span.clone())
        };
        if c.kind != ConnectorKind::Source {
            return Err(self
                .error(
                    span.clone(),
                    format!("{} {name:?} has a [connector.hybrid]", c.kind),
                )
                .field(format!("connector[{i}].hybrid"))
                .help(
                    "only a source is hybrid (a bounded source, then a live one): remove it, \
                     or make the connector `kind = \"source\"`",
                ));
        }
        for r in switch_references(&h.config) {
            if r != SWITCH_TIMESTAMP_MS {
                let text = format!("{SWITCH_REF_PREFIX}{r}}}");
                return Err(self
                    .error(at_text(&text), format!("{text} is not a hand-over value"))
                    .field(format!("connector[{i}].hybrid.config"))
                    .help(format!(
                        "the bounded source hands over `{SWITCH_REF_PREFIX}{SWITCH_TIMESTAMP_MS}}}`: \
                         the newest record timestamp it stored, in milliseconds since the epoch"
                    )));
            }
        }
        // The live source runs in the connector's instance, under its
        // grants: its secrets are the connector's.
        for reference in secret_references(&h.config) {
            if !c.grants.secrets.contains_key(&reference) {
                let text = format!("{SECRET_REF_PREFIX}{reference}}}");
                return Err(self
                    .error(
                        at_text(&text),
                        format!("the live source's config uses secret {reference:?}, which is not granted"),
                    )
                    .field(format!("connector[{i}].hybrid.config"))
                    .help(format!(
                        "declare it: `[connector.grants.secrets]` `{reference} = {{ env = \"VARIABLE\" }}`"
                    )));
            }
        }
        Ok(())
    }
}
