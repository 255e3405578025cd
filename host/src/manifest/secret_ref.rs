//! References in a connector's config: `${secret:NAME}`, whose names the
//! manifest check makes sure are granted (`crate::secrets` substitutes the
//! values), and `${switch:NAME}`, a hybrid source's hand-over, filled in its
//! live source's config when it starts.

use std::collections::BTreeSet;

/// How a reference to a secret starts: `${secret:NAME}`.
pub const SECRET_REF_PREFIX: &str = "${secret:";

/// How a reference to a hybrid source's hand-over starts: `${switch:NAME}`.
pub const SWITCH_REF_PREFIX: &str = "${switch:";

/// The one hand-over value: the newest record timestamp the bounded source
/// stored, in milliseconds since the epoch.
pub const SWITCH_TIMESTAMP_MS: &str = "timestamp_ms";

/// The names of the secrets a config refers to, as `${secret:NAME}`.
pub fn secret_references(config: &toml::Table) -> BTreeSet<String> {
    references(config, SECRET_REF_PREFIX)
}

/// The hand-over values a config refers to, as `${switch:NAME}`.
pub fn switch_references(config: &toml::Table) -> BTreeSet<String> {
    references(config, SWITCH_REF_PREFIX)
}

/// The names after `prefix` up to `}` in the config's strings.
fn references(config: &toml::Table, prefix: &str) -> BTreeSet<String> {
    fn walk(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(at) = rest.find(prefix) {
                    let after = &rest[at + prefix.len()..];
                    let Some(end) = after.find('}') else { break };
                    out.insert(after[..end].to_owned());
                    rest = &after[end + 1..];
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, prefix, out)),
            toml::Value::Table(t) => t.values().for_each(|v| walk(v, prefix, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    config.values().for_each(|v| walk(v, prefix, &mut out));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn references_are_found_in_nested_strings() {
        let t: toml::Table =
            toml::from_str("a = \"x${secret:one}y${secret:two}\"\n[b]\nc = [\"${secret:three}\"]")
                .unwrap();
        let r: Vec<String> = secret_references(&t).into_iter().collect();
        assert_eq!(r, ["one", "three", "two"]);
        assert!(switch_references(&t).is_empty());
        let t: toml::Table = toml::from_str("a = { b = \"${switch:timestamp_ms}\" }").unwrap();
        assert_eq!(
            switch_references(&t).into_iter().collect::<Vec<_>>(),
            [SWITCH_TIMESTAMP_MS]
        );
    }
}
