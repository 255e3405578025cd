//! A JSON document to edit, its object members in the order they came (a
//! `serde_json::Value` sorts them, and records are read by people).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use super::Pointer;

/// A JSON document whose objects keep their members' order.
///
/// ```
/// use sluice_sdk::json::{Doc, Pointer};
///
/// let p = |t| Pointer::parse(t).unwrap();
/// let mut doc = Doc::parse(br#"{"id":7,"user":{"name":"Ann","ssn":"123"},"ts":1}"#).unwrap();
/// doc.remove(&p("/user/ssn"));
/// doc.rename(&p("/user/name"), "full_name");
/// doc.retain(&[p("/user"), p("/id")]);
/// assert_eq!(doc.to_vec(), br#"{"id":7,"user":{"full_name":"Ann"}}"#);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// An object, its members in order (a repeated key stays repeated).
    Object(Vec<(String, Doc)>),
    /// An array.
    Array(Vec<Doc>),
    /// A string, number, boolean or `null`.
    Scalar(Value),
}

impl Doc {
    /// Parses `bytes`, which must be one JSON value.
    pub fn parse(bytes: &[u8]) -> Result<Doc, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Appends the document, compact, to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a Doc always serializes");
    }

    /// The document, compact.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    /// The value `pointer` names, if it is there.
    pub fn get(&self, pointer: &Pointer) -> Option<&Doc> {
        pointer
            .tokens
            .iter()
            .try_fold(self, |doc, token| doc.child(token))
    }

    /// The value `pointer` names, to change in place.
    pub fn get_mut(&mut self, pointer: &Pointer) -> Option<&mut Doc> {
        pointer
            .tokens
            .iter()
            .try_fold(self, |doc, token| doc.child_mut(token))
    }

    /// Removes the member or element `pointer` names (each member of that
    /// name, if repeated); returns whether there was one.
    pub fn remove(&mut self, pointer: &Pointer) -> bool {
        let Some((last, parent)) = self.parent_mut(pointer) else {
            return false;
        };
        match parent {
            Doc::Object(members) => {
                let before = members.len();
                members.retain(|(k, _)| k != last);
                members.len() != before
            }
            Doc::Array(items) => match index(last) {
                Some(i) if i < items.len() => {
                    items.remove(i);
                    true
                }
                _ => false,
            },
            Doc::Scalar(_) => false,
        }
    }

    /// Renames the object member `pointer` names to `to`, in its place; a
    /// member already named `to` there is replaced. Returns whether there
    /// was one to rename.
    pub fn rename(&mut self, pointer: &Pointer, to: &str) -> bool {
        let Some((last, Doc::Object(members))) = self.parent_mut(pointer) else {
            return false;
        };
        let Some(at) = members.iter().rposition(|(k, _)| k == last) else {
            return false;
        };
        members[at].0 = to.to_owned();
        let mut i = 0;
        members.retain(|(k, _)| {
            i += 1;
            i - 1 == at || k != to
        });
        true
    }

    /// Keeps only what `pointers` name (and the objects and arrays on the
    /// way to them); `""` keeps everything.
    pub fn retain(&mut self, pointers: &[Pointer]) {
        let paths: Vec<&[String]> = pointers.iter().map(|p| p.tokens.as_slice()).collect();
        self.retain_paths(&paths);
    }

    fn retain_paths(&mut self, paths: &[&[String]]) {
        if paths.iter().any(|p| p.is_empty()) {
            return;
        }
        let below = |token: &str| -> Vec<&[String]> {
            paths
                .iter()
                .filter(|p| p[0] == token)
                .map(|p| &p[1..])
                .collect()
        };
        match self {
            Doc::Object(members) => members.retain_mut(|(k, v)| {
                let rest = below(k);
                v.retain_paths(&rest);
                !rest.is_empty()
            }),
            Doc::Array(items) => {
                let mut i = 0;
                items.retain_mut(|v| {
                    let rest = below(&i.to_string());
                    i += 1;
                    v.retain_paths(&rest);
                    !rest.is_empty()
                });
            }
            Doc::Scalar(_) => {}
        }
    }

    /// The last token of `pointer` and the value holding what it names.
    fn parent_mut<'p>(&mut self, pointer: &'p Pointer) -> Option<(&'p str, &mut Doc)> {
        let (last, path) = pointer.tokens.split_last()?;
        let parent = path
            .iter()
            .try_fold(self, |doc, token| doc.child_mut(token))?;
        Some((last, parent))
    }

    fn child(&self, token: &str) -> Option<&Doc> {
        match self {
            Doc::Object(members) => members.iter().rev().find(|(k, _)| k == token).map(|m| &m.1),
            Doc::Array(items) => items.get(index(token)?),
            Doc::Scalar(_) => None,
        }
    }

    fn child_mut(&mut self, token: &str) -> Option<&mut Doc> {
        match self {
            Doc::Object(members) => members
                .iter_mut()
                .rev()
                .find(|(k, _)| k == token)
                .map(|m| &mut m.1),
            Doc::Array(items) => items.get_mut(index(token)?),
            Doc::Scalar(_) => None,
        }
    }
}

/// A pointer token as an array index (RFC 6901: no sign, no leading zero).
fn index(token: &str) -> Option<usize> {
    if token != "0" && token.starts_with('0') || token.starts_with('+') {
        return None;
    }
    token.parse().ok()
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Doc::Scalar(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(entry) = map.next_entry::<String, Doc>()? {
            members.push(entry);
        }
        Ok(Doc::Object(members))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Array(items))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::from(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Doc, E> {
        Ok(Doc::Scalar(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(text: &str) -> Pointer {
        Pointer::parse(text).unwrap()
    }

    fn edited(doc: &str, edit: impl FnOnce(&mut Doc)) -> String {
        let mut d = Doc::parse(doc.as_bytes()).unwrap();
        edit(&mut d);
        String::from_utf8(d.to_vec()).unwrap()
    }

    #[test]
    fn a_document_reads_back_in_its_order_as_serde_json_reads_it() {
        for doc in [
            r#"{"z":1,"a":[true,null,"x",{"m":-1.5,"b":{}}],"e":"\u00e9\n"}"#,
            "[]",
            "12",
            r#"{"a":1,"a":2}"#,
        ] {
            let ours = Doc::parse(doc.as_bytes()).unwrap().to_vec();
            let theirs: Value = serde_json::from_str(doc).unwrap();
            assert_eq!(serde_json::from_slice::<Value>(&ours).unwrap(), theirs);
        }
        assert_eq!(
            edited(r#"{ "z" : 1 , "a" : 2 }"#, |_| {}),
            r#"{"z":1,"a":2}"#
        );
        assert!(Doc::parse(b"{").is_err());
    }

    #[test]
    fn remove_rename_and_get_follow_the_pointer_into_objects_and_arrays() {
        let doc = r#"{"a":{"b":[10,{"c":1,"d":2}]},"x":0}"#;
        assert_eq!(
            edited(doc, |d| assert!(d.remove(&p("/a/b/1/c")))),
            r#"{"a":{"b":[10,{"d":2}]},"x":0}"#
        );
        assert_eq!(
            edited(doc, |d| assert!(d.remove(&p("/a/b/0")))),
            r#"{"a":{"b":[{"c":1,"d":2}]},"x":0}"#
        );
        assert_eq!(edited(doc, |d| assert!(!d.remove(&p("/a/q")))), doc);
        assert_eq!(edited(doc, |d| assert!(!d.remove(&p("/x/y")))), doc);
        assert_eq!(
            edited(doc, |d| assert!(d.rename(&p("/a/b/1/c"), "d"))),
            r#"{"a":{"b":[10,{"d":1}]},"x":0}"#
        );
        assert_eq!(edited(doc, |d| assert!(!d.rename(&p("/a/b/0"), "n"))), doc);
        let d = Doc::parse(doc.as_bytes()).unwrap();
        assert_eq!(d.get(&p("/a/b/1/d")), Some(&Doc::Scalar(Value::from(2))));
        assert_eq!(d.get(&p("/a/b/01")), None);
        assert_eq!(d.get(&p("")), Some(&d));
    }

    #[test]
    fn retain_keeps_what_is_named_and_the_way_to_it() {
        let doc = r#"{"id":1,"user":{"name":"a","ssn":"s"},"tags":["x","y"],"ts":2}"#;
        assert_eq!(
            edited(doc, |d| d.retain(&[
                p("/user/name"),
                p("/ts"),
                p("/tags/1")
            ])),
            r#"{"user":{"name":"a"},"tags":["y"],"ts":2}"#
        );
        assert_eq!(edited(doc, |d| d.retain(&[p("")])), doc);
        assert_eq!(edited(doc, |d| d.retain(&[p("/nothing")])), "{}");
    }
}
