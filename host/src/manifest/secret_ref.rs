//! `${secret:NAME}` in a connector's config: the manifest check makes sure
//! each name is granted, and `crate::secrets` substitutes the values.

use std::collections::BTreeSet;

/// How a reference to a secret starts: `${secret:NAME}`.
pub const SECRET_REF_PREFIX: &str = "${secret:";

/// The names of the secrets a config refers to, as `${secret:NAME}`.
pub fn secret_references(config: &toml::Table) -> BTreeSet<String> {
    fn walk(v: &toml::Value, out: &mut BTreeSet<String>) {
        match v {
            toml::Value::String(s) => {
                let mut rest = s.as_str();
                while let Some(at) = rest.find(SECRET_REF_PREFIX) {
                    let after = &rest[at + SECRET_REF_PREFIX.len()..];
                    let Some(end) = after.find('}') else { break };
                    out.insert(after[..end].to_owned());
                    rest = &after[end + 1..];
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    config.values().for_each(|v| walk(v, &mut out));
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
    }
}
