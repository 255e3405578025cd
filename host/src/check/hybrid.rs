//! A hybrid source's live source (`[connector.hybrid]`), checked once: its
//! plugin a source, its config accepted by the plugin's schema with the
//! hand-over (`${switch:timestamp_ms}`) filled in, a number where the
//! schema takes one there.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::schema_help;
use crate::manifest::{
    ConnectorConfig, Manifest, ManifestError, SWITCH_REF_PREFIX, SWITCH_TIMESTAMP_MS,
};
use crate::plugin::{Plugin, PluginHost, PluginKind, PluginRef, Spec};
use crate::secrets::{Redactor, Secrets};

/// A hybrid source's live source (`[connector.hybrid]`): its plugin loaded,
/// and its config accepted by the plugin's schema with the hand-over
/// filled in. Its `Debug` leaves out the config, which may hold secrets.
#[derive(Clone)]
pub struct CheckedHybrid {
    /// The loaded plugin.
    pub plugin: Plugin,
    /// Where it was loaded from.
    pub plugin_ref: PluginRef,
    /// What the plugin says of itself.
    pub spec: Spec,
    /// The config as a JSON document, secrets substituted and each
    /// `${switch:timestamp_ms}` still in place.
    config: serde_json::Value,
    /// Where the config is only `${switch:timestamp_ms}` and the schema
    /// takes a number: JSON pointers.
    numbers: Vec<String>,
}

impl std::fmt::Debug for CheckedHybrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedHybrid")
            .field("plugin", &self.plugin)
            .finish_non_exhaustive()
    }
}

impl CheckedHybrid {
    /// The live source's config document with the hand-over filled in:
    /// `switch_ms`, the newest record timestamp the bounded source stored.
    pub fn config_json(&self, switch_ms: i64) -> String {
        let mut config = self.config.clone();
        fill_switch(&mut config, switch_ms, &self.numbers, &mut String::new());
        config.to_string()
    }
}

/// Fills each `${switch:timestamp_ms}` in `value` (found at JSON pointer
/// `at`) with `ms`: as a number where the string is only the placeholder
/// and its pointer is in `numbers`, else as text.
fn fill_switch(value: &mut serde_json::Value, ms: i64, numbers: &[String], at: &mut String) {
    let placeholder = format!("{SWITCH_REF_PREFIX}{SWITCH_TIMESTAMP_MS}}}");
    match value {
        serde_json::Value::String(s) if *s == placeholder && numbers.contains(at) => {
            *value = serde_json::Value::from(ms);
        }
        serde_json::Value::String(s) if s.contains(&placeholder) => {
            *s = s.replace(&placeholder, &ms.to_string());
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                let len = at.len();
                let _ = write!(at, "/{i}");
                fill_switch(v, ms, numbers, at);
                at.truncate(len);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                let len = at.len();
                let _ = write!(at, "/{}", k.replace('~', "~0").replace('/', "~1"));
                fill_switch(v, ms, numbers, at);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// The JSON pointers of the strings in `value` that are only
/// `${switch:timestamp_ms}`.
fn whole_placeholders(value: &serde_json::Value, at: &mut String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s)
            if *s == format!("{SWITCH_REF_PREFIX}{SWITCH_TIMESTAMP_MS}}}") =>
        {
            out.push(at.clone());
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let len = at.len();
                let _ = write!(at, "/{i}");
                whole_placeholders(v, at, out);
                at.truncate(len);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                let len = at.len();
                let _ = write!(at, "/{}", k.replace('~', "~0").replace('/', "~1"));
                whole_placeholders(v, at, out);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// Loads and checks connector `index`'s live source, if it is a hybrid
/// source: a source plugin whose schema takes the config, secrets filled
/// and the hand-over filled with a timestamp (a number where the schema
/// takes one there).
pub(super) async fn check(
    manifest: &Manifest,
    plugins: &PluginHost,
    index: usize,
    c: &ConnectorConfig,
    secrets: &Secrets,
) -> anyhow::Result<Option<CheckedHybrid>> {
    let Some(h) = &c.hybrid else {
        return Ok(None);
    };
    let name = c.name.get_ref();
    let (span, h) = (h.span(), h.get_ref());
    let at_plugin = |e: &dyn std::fmt::Display| {
        ManifestError::at(
            &manifest.path,
            &manifest.source,
            Some(h.plugin.span()),
            e.to_string(),
        )
        .field(format!("connector[{index}].hybrid.plugin"))
    };
    let reference = PluginRef::resolve(h.plugin.get_ref(), &manifest.base_dir)
        .map_err(|e| at_plugin(&e).help("`sluice plugins list` shows the built-in plugins"))?;
    let plugin = plugins.load(&reference).map_err(|e| at_plugin(&e))?;
    plugin.expect_kind(PluginKind::Source).map_err(|e| {
        at_plugin(&e).help(
            "a hybrid source goes on with a source plugin, such as `plugin = \"socket-source\"`",
        )
    })?;
    let spec = plugins.spec(&plugin).await.with_context(|| {
        format!(
            "reading the spec of plugin {} for connector {name:?}'s live source",
            plugin.name()
        )
    })?;
    let mut config =
        serde_json::to_value(&h.config).context("turning [connector.hybrid.config] into JSON")?;
    secrets.substitute(&mut config);
    // A placeholder alone becomes a number where the schema takes one
    // (`start = "${switch:timestamp_ms}"` for kafka-source), else text.
    let mut whole = Vec::new();
    whole_placeholders(&config, &mut String::new(), &mut whole);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let trial = CheckedHybrid {
        plugin,
        plugin_ref: reference,
        spec,
        config,
        numbers: whole,
    };
    let tried: serde_json::Value = serde_json::from_str(&trial.config_json(now_ms))?;
    let refused: Vec<String> = trial
        .spec
        .check_config(&tried)?
        .into_iter()
        .map(|p| p.pointer)
        .collect();
    let hybrid = CheckedHybrid {
        numbers: trial
            .numbers
            .iter()
            .filter(|p| !refused.contains(p))
            .cloned()
            .collect(),
        ..trial
    };
    let filled: serde_json::Value = serde_json::from_str(&hybrid.config_json(now_ms))?;
    let redactor = Redactor::new(secrets.values());
    let mut problems = Vec::new();
    for problem in hybrid.spec.check_config(&filled)? {
        let field = problem.field();
        let e = ManifestError::at(
            &manifest.path,
            &manifest.source,
            Some(span.clone()),
            format!(
                "connector {name:?}'s live source: {} (checked against the config schema of \
                 plugin {}, `${{switch:timestamp_ms}}` filled)",
                problem.message,
                hybrid.plugin.name()
            ),
        )
        .field(if field.is_empty() {
            format!("connector[{index}].hybrid.config")
        } else {
            format!("connector[{index}].hybrid.config.{field}")
        })
        .help(schema_help(
            &hybrid.spec.config_schema,
            &problem.pointer,
            hybrid.plugin.name(),
        ));
        problems.push(redactor.redact(&e.to_string()).into_owned());
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n\n"));
    }
    Ok(Some(hybrid))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_hand_over_is_a_number_only_where_asked_and_text_elsewhere() {
        let config = serde_json::json!({
            "start": "${switch:timestamp_ms}",
            "cursor": "${switch:timestamp_ms}",
            "url": "http://h/items?since=${switch:timestamp_ms}",
            "a/b": ["${switch:timestamp_ms}"],
        });
        let mut whole = Vec::new();
        whole_placeholders(&config, &mut String::new(), &mut whole);
        whole.sort();
        assert_eq!(whole, ["/a~1b/0", "/cursor", "/start"]);
        let mut filled = config.clone();
        let numbers = ["/start".to_owned(), "/a~1b/0".to_owned()];
        fill_switch(&mut filled, 42, &numbers, &mut String::new());
        assert_eq!(
            filled,
            serde_json::json!({
                "start": 42,
                "cursor": "42",
                "url": "http://h/items?since=42",
                "a/b": [42],
            })
        );
    }
}
