//! Manifest errors: where (file, line, column, field), what, and the fix.

use std::path::{Path, PathBuf};

use super::Manifest;

/// A manifest problem, located in its file. Boxed: it travels in `Result`s.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.0.render())]
pub struct ManifestError(Box<Located>);

impl std::ops::Deref for ManifestError {
    type Target = Located;
    fn deref(&self) -> &Located {
        &self.0
    }
}

/// The details of a [`ManifestError`].
#[derive(Debug, Clone)]
pub struct Located {
    /// The manifest's path.
    pub file: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known.
    pub column: Option<usize>,
    /// The field at fault, if known (e.g. `connector[0].kind`).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub help: Option<String>,
    /// The offending source line, for the caret display.
    pub snippet: Option<String>,
}

impl ManifestError {
    /// An error at byte `span` of `source`.
    pub fn at(
        file: &Path,
        source: &str,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let mut e = Located {
            file: file.to_path_buf(),
            line: None,
            column: None,
            field: None,
            message: message.into(),
            help: None,
            snippet: None,
        };
        if let Some(span) = span.filter(|s| s.start <= source.len()) {
            let before = &source[..span.start];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = source[line_start..span.start].chars().count() + 1;
            let line_end = source[span.start..]
                .find('\n')
                .map_or(source.len(), |i| span.start + i);
            e.line = Some(line);
            e.column = Some(column);
            e.snippet = Some(
                source[line_start..line_end]
                    .trim_end_matches('\r')
                    .to_owned(),
            );
        }
        ManifestError(Box::new(e))
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    /// Says what to write instead.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.0.help = Some(help.into());
        self
    }
}

impl Located {
    fn render(&self) -> String {
        let mut out = format!("{}", self.file.display());
        if let (Some(l), Some(c)) = (self.line, self.column) {
            out.push_str(&format!(":{l}:{c}"));
        }
        out.push_str(": ");
        if let Some(field) = &self.field {
            out.push_str(&format!("field `{field}`: "));
        }
        out.push_str(&self.message);
        if let (Some(snippet), Some(line), Some(col)) = (&self.snippet, self.line, self.column) {
            let gutter = line.to_string().len();
            out.push_str(&format!(
                "\n{:gutter$} |\n{line} | {snippet}\n{:gutter$} | {:>col$}",
                "", "", "^"
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n  help: {help}"));
        }
        out
    }
}

/// Turns a toml error into a located [`ManifestError`] with a fix.
pub(super) fn from_toml(path: &Path, source: &str, e: &toml::de::Error) -> ManifestError {
    let message = e.message().trim().to_owned();
    let mut err = ManifestError::at(path, source, e.span(), message.clone());
    let key = err
        .snippet
        .as_deref()
        .and_then(|s| s.split_once('='))
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    if let Some(key) = key {
        err = err.field(key);
    }
    let help = if message.starts_with("unknown field") {
        match message.split_once(", expected ") {
            Some((_, expected)) => {
                format!("remove it, or correct the spelling: expected {expected}")
            }
            None => "remove it, or correct the spelling".to_owned(),
        }
    } else if message.starts_with("invalid type") {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("write {expected} here"),
            None => "check the value's type".to_owned(),
        }
    } else if message.starts_with("unknown variant") {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("use one of {expected}"),
            None => "check the spelling of the value".to_owned(),
        }
    } else if message.starts_with("missing field") {
        "add the field; `sluice validate` shows each connector's fields".to_owned()
    } else {
        "see examples/quickstart/README.md for a manifest that works".to_owned()
    };
    err.help(help)
}

impl Manifest {
    /// Finds the manifest location of `connector[index].config.<pointer>`
    /// (a JSON pointer such as `/payload_bytes`), for config errors.
    pub fn config_span(&self, index: usize, pointer: &str) -> Option<std::ops::Range<usize>> {
        let doc = toml_edit::Document::parse(self.source.clone()).ok()?;
        let connectors = doc.get("connector")?.as_array_of_tables()?;
        let table = connectors.get(index)?;
        let mut item = table.get("config")?;
        let mut span = item.span();
        for part in pointer.split('/').filter(|p| !p.is_empty()) {
            match item {
                toml_edit::Item::Table(t) => {
                    let Some(next) = t.get(part) else { break };
                    item = next;
                    span = item.span().or(span);
                }
                toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
                    let Some(v) = t.get(part) else { break };
                    span = v.span().or(span);
                    break;
                }
                toml_edit::Item::Value(toml_edit::Value::Array(a)) => {
                    let Some(v) = part.parse::<usize>().ok().and_then(|i| a.get(i)) else {
                        break;
                    };
                    span = v.span().or(span);
                    break;
                }
                _ => break,
            }
        }
        span.or_else(|| table.span())
    }
}
