//! Secrets: named values the host reads from an environment variable or a
//! file, hands to a plugin where its config says `${secret:NAME}`, and never
//! shows.
//!
//! The manifest holds only where a secret comes from, never its value. The
//! value exists in the host's memory and in the config document the plugin
//! receives; everything the host prints or writes on a plugin's behalf (its
//! log lines, its standard error, its error messages, config errors) passes
//! through a [`Redactor`] that replaces every secret value with `***`.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::manifest::{ConnectorConfig, Manifest, SECRET_REF_PREFIX, SecretSource};

/// What the redactor writes instead of a secret.
pub const MASK: &str = "***";

/// Why a secret's source cannot be read. Names where it was looked for,
/// never a value.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    /// The environment variable is not set (or not Unicode).
    #[error("comes from environment variable {0}, which is not set")]
    Env(String),
    /// The file cannot be read.
    #[error("comes from file {}, which cannot be read: {reason}", path.display())]
    File {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A connector's secret that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("secret {name:?} of connector {connector:?} {why}")]
pub struct SecretError {
    /// Connector.
    pub connector: String,
    /// Secret.
    pub name: String,
    /// Where it was looked for.
    pub why: Unreadable,
}

/// Reads the value `source` names: an environment variable, or a file
/// (relative to `manifest`'s folder) without its last line end.
pub fn read(source: &SecretSource, manifest: &Manifest) -> Result<String, Unreadable> {
    match source {
        SecretSource { env: Some(var), .. } => {
            std::env::var(var).map_err(|_| Unreadable::Env(var.clone()))
        }
        SecretSource {
            file: Some(path), ..
        } => {
            let path = manifest.resolve(path);
            let mut text = std::fs::read_to_string(&path).map_err(|e| Unreadable::File {
                reason: e.to_string(),
                path,
            })?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
        SecretSource {
            env: None,
            file: None,
        } => unreachable!("the manifest check requires env or file"),
    }
}

/// The resolved secrets of one connector. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Secrets(Vec<(String, String)>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Secrets {
    /// Reads every secret granted to `connector`.
    pub fn resolve(manifest: &Manifest, connector: &ConnectorConfig) -> Result<Self, SecretError> {
        let name = connector.name.get_ref();
        let mut values = Vec::new();
        for (secret, source) in &connector.grants.secrets {
            let value = read(source.get_ref(), manifest).map_err(|why| SecretError {
                connector: name.clone(),
                name: secret.clone(),
                why,
            })?;
            values.push((secret.clone(), value));
        }
        Ok(Secrets(values))
    }

    /// Secrets read elsewhere than a connector's grants (the broker's), by
    /// the names a [`crate::manifest::TlsPolicy`] gives them.
    pub(crate) fn from_values(values: Vec<(String, String)>) -> Self {
        Secrets(values)
    }

    /// Replaces every `${secret:NAME}` in the config's strings with the
    /// value. The manifest check made sure every name is granted.
    pub fn substitute(&self, config: &mut serde_json::Value) {
        match config {
            serde_json::Value::String(s) if s.contains(SECRET_REF_PREFIX) => {
                *s = self.substitute_str(s);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|v| self.substitute(v)),
            serde_json::Value::Object(o) => o.values_mut().for_each(|v| self.substitute(v)),
            _ => {}
        }
    }

    /// `text` with every `${secret:NAME}` replaced by the value (a config
    /// string, or a header the host adds for the plugin).
    pub fn substitute_str(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (name, value) in &self.0 {
            let pattern = format!("{SECRET_REF_PREFIX}{name}}}");
            if text.contains(&pattern) {
                text = text.replace(&pattern, value);
            }
        }
        text
    }

    /// The value of secret `name`, for the host's own use (a TLS client
    /// identity); `None` if it is not granted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values, for a [`Redactor`].
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(_, v)| v.as_str())
    }
}

/// Replaces secret values with [`MASK`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor(Arc<Vec<String>>);

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.0.len())
    }
}

impl Redactor {
    /// A redactor of these values (empty ones are ignored). Longer values
    /// are replaced first, so a secret containing another is masked whole.
    ///
    /// Each secret is also masked as it looks escaped in JSON (how config
    /// errors quote a value) and in Rust's `{:?}` (how a plugin's own error
    /// may quote it), and line by line when it spans lines (a PEM key), since
    /// output is masked a line at a time.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut v: Vec<String> = Vec::new();
        for secret in values {
            let json = serde_json::to_string(secret).unwrap_or_default();
            let debug = format!("{secret:?}");
            v.push(secret.to_owned());
            v.push(json[1..json.len().saturating_sub(1).max(1)].to_owned());
            v.push(debug[1..debug.len().saturating_sub(1).max(1)].to_owned());
            v.extend(
                secret
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
        v.retain(|s| !s.is_empty());
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.dedup();
        Redactor(Arc::new(v))
    }

    /// True when there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The largest cut at or before `want` in `buf` (a stream that goes on
    /// after it) that neither splits a secret nor ends inside the start of
    /// one, so the parts can be masked apart.
    pub fn safe_cut(&self, buf: &[u8], want: usize) -> usize {
        let longest = self.0.iter().map(String::len).max().unwrap_or(0);
        let mut cut = want.min(buf.len().saturating_sub(longest.saturating_sub(1)));
        loop {
            let before = cut;
            for secret in self.0.iter().map(String::as_bytes) {
                let mut i = 0;
                while i + secret.len() <= buf.len() && i < cut {
                    if &buf[i..i + secret.len()] == secret && cut < i + secret.len() {
                        cut = i;
                        break;
                    }
                    i += 1;
                }
            }
            if cut == before {
                return cut;
            }
        }
    }

    /// `text` with every secret replaced.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.0.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn substitution_and_redaction() {
        let s = Secrets(vec![("pw".into(), "hunter2".into())]);
        let mut v = serde_json::json!({"url": "pg://u:${secret:pw}@h", "n": 1});
        s.substitute(&mut v);
        assert_eq!(v["url"], "pg://u:hunter2@h");
        let r = Redactor::new(s.values());
        assert_eq!(r.redact("bad password hunter2!"), "bad password ***!");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_and_multi_line_forms_are_masked_too() {
        let r = Redactor::new(["pa\"ss\\word", "-----BEGIN-----\nAAAA\n-----END-----\n"]);
        assert_eq!(r.redact(r#"got "pa\"ss\\word""#), r#"got "***""#);
        assert_eq!(r.redact("line: AAAA"), "line: ***");
        assert!(!r.redact("-----BEGIN-----").contains("BEGIN"));
    }
}
