//! A source's `topic` with placeholders, `topic = "{schema}.{table}"`: each
//! record goes to the topic its headers name (Debezium's topic per table).

use std::fmt;

/// The longest topic name (Kafka's limit).
pub const MAX_TOPIC_LEN: usize = 249;

/// True for a character a topic name may hold.
pub fn is_topic_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

/// Checks a topic name: letters, digits, `.`, `_` and `-`, not only dots
/// (it is a folder name), at most [`MAX_TOPIC_LEN`] long.
pub fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a topic name is empty".into());
    }
    if let Some(ch) = name.chars().find(|&ch| !is_topic_char(ch)) {
        return Err(format!("topic name {name:?} holds {ch:?}"));
    }
    if name.chars().all(|ch| ch == '.') {
        return Err(format!("topic name {name:?} is only dots"));
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic name {name:?} is longer than {MAX_TOPIC_LEN} characters"
        ));
    }
    Ok(())
}

/// A topic name with `{header}` placeholders, parsed once by the manifest
/// check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Header(String),
}

/// Why a record has no topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The record lacks a header the template names.
    #[error("it has no `{header}` header, which topic {template:?} needs")]
    MissingHeader {
        /// The header.
        header: String,
        /// The template.
        template: String,
    },
    /// The header's value is not UTF-8.
    #[error("its `{header}` header is not UTF-8")]
    NotUtf8 {
        /// The header.
        header: String,
    },
    /// The rendered name is no topic name.
    #[error("{0}")]
    BadTopic(String),
}

impl TopicTemplate {
    /// Parses `text`: `None` if it has no placeholder (a plain topic name),
    /// or why it is not a template.
    pub fn parse(text: &str) -> Result<Option<TopicTemplate>, String> {
        if !text.contains(['{', '}']) {
            return Ok(None);
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err(format!("`}}` without `{{` in topic {text:?}"));
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Literal(rest[..i].to_owned()));
                    }
                    let after = &rest[i + 1..];
                    let Some(end) = after.find('}') else {
                        return Err(format!("`{{` without `}}` in topic {text:?}"));
                    };
                    let name = &after[..end];
                    if name.is_empty() || !name.chars().all(is_topic_char) {
                        return Err(format!(
                            "`{{{name}}}` in topic {text:?} names no header: use letters, \
                             digits, `.`, `_` and `-`"
                        ));
                    }
                    pieces.push(Piece::Header(name.to_owned()));
                    rest = &after[end + 1..];
                }
                None => {
                    pieces.push(Piece::Literal(rest.to_owned()));
                    rest = "";
                }
            }
        }
        for p in &pieces {
            if let Piece::Literal(l) = p
                && let Some(ch) = l.chars().find(|&ch| !is_topic_char(ch))
            {
                return Err(format!("topic {text:?} holds {ch:?} outside a placeholder"));
            }
        }
        Ok(Some(TopicTemplate {
            text: text.to_owned(),
            pieces,
        }))
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic of a record with `headers`. A character a topic name may
    /// not hold becomes `_` (as Debezium names topics), so `"my table"`
    /// goes to `my_table`.
    pub fn render<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    ) -> Result<String, RouteError> {
        let mut out = String::new();
        self.render_into(headers, &mut out)?;
        Ok(out)
    }

    /// [`TopicTemplate::render`] into `out` (cleared first), so that
    /// routing a batch allocates nothing per record.
    pub fn render_into<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
        out: &mut String,
    ) -> Result<(), RouteError> {
        out.clear();
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => out.push_str(l),
                Piece::Header(h) => {
                    let (_, value) = headers.clone().find(|(k, _)| k == h).ok_or_else(|| {
                        RouteError::MissingHeader {
                            header: h.clone(),
                            template: self.text.clone(),
                        }
                    })?;
                    let value = std::str::from_utf8(value)
                        .map_err(|_| RouteError::NotUtf8 { header: h.clone() })?;
                    out.extend(
                        value
                            .chars()
                            .map(|ch| if is_topic_char(ch) { ch } else { '_' }),
                    );
                }
            }
        }
        check_topic_name(out).map_err(RouteError::BadTopic)
    }

    /// Writes into `key` (cleared first) the values of the headers the
    /// template names, each length-prefixed: records with the same key go
    /// to the same topic, so a router renders each key once.
    pub fn key_into<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
        key: &mut Vec<u8>,
    ) -> Result<(), RouteError> {
        key.clear();
        for p in &self.pieces {
            if let Piece::Header(h) = p {
                let (_, value) = headers.clone().find(|(k, _)| k == h).ok_or_else(|| {
                    RouteError::MissingHeader {
                        header: h.clone(),
                        template: self.text.clone(),
                    }
                })?;
                key.extend_from_slice(&(value.len() as u32).to_le_bytes());
                key.extend_from_slice(value);
            }
        }
        Ok(())
    }

    /// True if some record could be routed to `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        fn at(pieces: &[Piece], topic: &str) -> bool {
            match pieces.split_first() {
                None => topic.is_empty(),
                Some((Piece::Literal(l), rest)) => {
                    topic.strip_prefix(l.as_str()).is_some_and(|t| at(rest, t))
                }
                Some((Piece::Header(_), rest)) => (0..=topic.len())
                    .filter(|&i| topic.is_char_boundary(i))
                    .any(|i| at(rest, &topic[i..])),
            }
        }
        at(&self.pieces, topic)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn headers<'a>(
        h: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + Clone {
        h.iter().map(|(k, v)| (*k, v.as_bytes()))
    }

    #[test]
    fn a_template_renders_from_headers() {
        let t = TopicTemplate::parse("cdc.{schema}.{table}")
            .unwrap()
            .unwrap();
        let h = [("schema", "public"), ("table", "order lines")];
        assert_eq!(t.render(headers(&h)).unwrap(), "cdc.public.order_lines");
        assert_eq!(
            t.render(headers(&[("schema", "public")])).unwrap_err(),
            RouteError::MissingHeader {
                header: "table".into(),
                template: "cdc.{schema}.{table}".into()
            }
        );
        let dots = TopicTemplate::parse("{t}").unwrap().unwrap();
        assert!(matches!(
            dots.render(headers(&[("t", "..")])),
            Err(RouteError::BadTopic(_))
        ));
        assert!(matches!(
            dots.render(headers(&[("t", "")])),
            Err(RouteError::BadTopic(_))
        ));
    }

    #[test]
    fn plain_names_and_bad_templates() {
        assert_eq!(TopicTemplate::parse("events").unwrap(), None);
        for bad in ["{", "a}", "{}", "{a b}", "x y.{t}", "{t"] {
            assert!(TopicTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_template_matches_the_topics_it_can_render() {
        let t = TopicTemplate::parse("{schema}.{table}").unwrap().unwrap();
        assert!(t.matches("public.orders"));
        assert!(!t.matches("orders"));
        let t = TopicTemplate::parse("cdc-{table}").unwrap().unwrap();
        assert!(t.matches("cdc-orders"));
        assert!(!t.matches("orders"));
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("public.orders").is_ok());
        for bad in ["", ".", "..", "a/b", &"x".repeat(250)] {
            assert!(check_topic_name(bad).is_err(), "{bad}");
        }
    }
}
