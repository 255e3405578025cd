//! Names made from a record: a sink's key, topic or channel written as a
//! template, `"devices/{key}"`.
//!
//! A template is text with placeholders: `{key}` (the record's key),
//! `{topic}` and `{partition}` (where the host read it from) and `{offset}`
//! (its offset there). It is parsed once, at `open`, so a wrong one is an
//! invalid config; rendering it is a copy per piece.
//!
//! ```
//! use sluice_sdk::Origin;
//! use sluice_sdk::template::Template;
//!
//! let t = Template::parse("topic", "devices/{key}").unwrap();
//! let origin = Origin { topic: "events".into(), partition: 0, first_offset: 0 };
//! let mut out = Vec::new();
//! t.render(&origin, 7, Some(b"pump-1"), &mut out).unwrap();
//! assert_eq!(out, b"devices/pump-1");
//! ```

use crate::Origin;

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Key,
    Topic,
    Partition,
    Offset,
}

/// A template over a record's key and origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    /// Parses `text`, the config field `field`: an error names the field
    /// and says what a template can use.
    pub fn parse(field: &str, text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{field} {text:?} opens a {{ it does not close"))?;
            parts.push(match &rest[open + 1..open + close] {
                "key" => Part::Key,
                "topic" => Part::Topic,
                "partition" => Part::Partition,
                "offset" => Part::Offset,
                other => {
                    return Err(format!(
                        "{field} {text:?} names {{{other}}}: it can use {{key}}, {{topic}}, {{partition}} and {{offset}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(format!("{field} is empty"));
        }
        Ok(Template(parts))
    }

    /// True when the template uses the record's key.
    pub fn uses_key(&self) -> bool {
        self.0.contains(&Part::Key)
    }

    /// True when every record renders the same text (no placeholder).
    pub fn is_fixed(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Renders the template for the record at `offset` of `origin`'s topic
    /// and partition into `out` (cleared first); `None` when it uses the
    /// record's key and the record has none.
    pub fn render(
        &self,
        origin: &Origin,
        offset: u64,
        key: Option<&[u8]>,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        out.clear();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Key => out.extend_from_slice(key?),
                Part::Topic => out.extend_from_slice(origin.topic.as_bytes()),
                Part::Partition => out.extend_from_slice(origin.partition.to_string().as_bytes()),
                Part::Offset => out.extend_from_slice(offset.to_string().as_bytes()),
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_the_records_key_and_origin() {
        let origin = Origin {
            topic: "events".into(),
            partition: 3,
            first_offset: 0,
        };
        let t = Template::parse("key", "dev:{key}:{topic}/{partition}@{offset}").unwrap();
        let mut out = Vec::new();
        t.render(&origin, 42, Some(b"k1"), &mut out).unwrap();
        assert_eq!(out, b"dev:k1:events/3@42");
        assert_eq!(t.render(&origin, 42, None, &mut out), None);
        assert!(t.uses_key() && !t.is_fixed());
        assert!(Template::parse("key", "fixed").unwrap().is_fixed());
        let e = Template::parse("topic", "a{nope}").unwrap_err();
        assert!(e.starts_with("topic \"a{nope}\" names {nope}"), "{e}");
        assert!(Template::parse("key", "a{key").is_err());
        assert!(Template::parse("key", "").is_err());
    }
}
