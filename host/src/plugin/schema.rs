//! A config checked against the JSON Schema its plugin publishes: the one
//! place that does it, for `sluice validate`, `sluice run`, the daemon's
//! create, update and validate, and a module swap alike.

use super::Spec;

/// One way a config does not fit its plugin's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where, as a JSON pointer into the config (`/payload_bytes`; empty
    /// for the config as a whole).
    pub pointer: String,
    /// What is wrong, as the schema validator says it.
    pub message: String,
}

impl ConfigProblem {
    /// The field as a manifest names it: `payload_bytes`, `nested.field`;
    /// empty for the config as a whole.
    pub fn field(&self) -> String {
        self.pointer.trim_start_matches('/').replace('/', ".")
    }
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field().as_str() {
            "" => f.write_str(&self.message),
            field => write!(f, "{field}: {}", self.message),
        }
    }
}

/// The plugin's schema is not valid JSON Schema: the plugin is broken.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} publishes a config schema that is not valid JSON Schema: {reason}")]
pub struct SchemaError {
    /// The plugin.
    pub plugin: String,
    /// Why.
    pub reason: String,
}

impl Spec {
    /// Every way `config` does not fit this spec's config schema (none: it
    /// fits).
    pub fn check_config(
        &self,
        config: &serde_json::Value,
    ) -> Result<Vec<ConfigProblem>, SchemaError> {
        let validator =
            jsonschema::validator_for(&self.config_schema).map_err(|e| SchemaError {
                plugin: self.name.clone(),
                reason: e.to_string(),
            })?;
        Ok(validator
            .iter_errors(config)
            .map(|e| ConfigProblem {
                pointer: e.instance_path().as_str().to_owned(),
                message: e.to_string(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec() -> Spec {
        Spec {
            name: "p".into(),
            version: "1".into(),
            description: String::new(),
            config_schema: serde_json::json!({
                "type": "object",
                "properties": {"n": {"type": "integer"}, "inner": {"type": "object",
                    "properties": {"s": {"type": "string"}}}},
                "required": ["n"]
            }),
        }
    }

    #[test]
    fn problems_name_their_field() {
        let problems = spec()
            .check_config(&serde_json::json!({"n": "x", "inner": {"s": 1}}))
            .unwrap();
        let fields: Vec<String> = problems.iter().map(ConfigProblem::field).collect();
        assert_eq!(fields, ["inner.s", "n"]);
        assert!(
            problems[1]
                .to_string()
                .starts_with("n: \"x\" is not of type")
        );
        assert!(
            spec()
                .check_config(&serde_json::json!({"n": 1}))
                .unwrap()
                .is_empty()
        );
        let whole = &spec().check_config(&serde_json::json!({})).unwrap()[0];
        assert_eq!(whole.field(), "");
        assert!(whole.to_string().contains("\"n\" is a required property"));
    }

    #[test]
    fn a_broken_schema_is_the_plugins_fault() {
        let mut s = spec();
        s.config_schema = serde_json::json!({"type": 12});
        let e = s.check_config(&serde_json::json!({})).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("plugin p publishes a config schema"),
            "{e}"
        );
    }
}
