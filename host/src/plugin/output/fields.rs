//! A plugin's key/value fields as real fields of a tracing event: tracing
//! wants `'static` callsites naming their fields, so one is made (and
//! leaked) for each level and set of field names a plugin uses, at most
//! [`MAX_CALLSITES`] for the life of the process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use tracing::callsite::{Callsite, Identifier};
use tracing::field::{FieldSet, Value};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};

use super::{MAX_CALLSITES, MAX_FIELDS, clean};
use crate::secrets::Redactor;

/// A callsite made at run time for one level and set of field names.
struct PluginCallsite {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for PluginCallsite {
    fn set_interest(&self, _: Interest) {}

    fn metadata(&self) -> &Metadata<'_> {
        self.meta.get().expect("set when the callsite is made")
    }
}

type CallsiteKey = (Level, Vec<String>);

fn callsites() -> &'static Mutex<HashMap<CallsiteKey, &'static Metadata<'static>>> {
    static CALLSITES: OnceLock<Mutex<HashMap<CallsiteKey, &'static Metadata<'static>>>> =
        OnceLock::new();
    CALLSITES.get_or_init(Default::default)
}

/// A field name a plugin may give: a plain identifier, not one the event
/// already has.
fn plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !matches!(name, "message" | "fields" | "connector" | "index")
}

/// The callsite for `level` and `names` (the message first), made and
/// registered the first time; `None` past [`MAX_CALLSITES`].
fn callsite(level: Level, names: &[&str]) -> Option<&'static Metadata<'static>> {
    let key = (level, names.iter().map(|n| (*n).to_owned()).collect());
    let mut all = callsites().lock().expect("callsites lock");
    if let Some(meta) = all.get(&key) {
        return Some(meta);
    }
    if all.len() >= MAX_CALLSITES {
        return None;
    }
    // Leaked on purpose: tracing needs 'static callsites, and there are at
    // most MAX_CALLSITES of them for the life of the process.
    let site: &'static PluginCallsite = Box::leak(Box::new(PluginCallsite {
        meta: OnceLock::new(),
    }));
    let names: &'static [&'static str] = Box::leak(
        key.1
            .iter()
            .map(|n| &*Box::leak(n.clone().into_boxed_str()))
            .collect::<Vec<&'static str>>()
            .into_boxed_slice(),
    );
    let meta = Metadata::new(
        "plugin log",
        "sluice::plugin",
        level,
        None,
        None,
        None,
        FieldSet::new(names, Identifier(site)),
        Kind::EVENT,
    );
    let meta: &'static Metadata<'static> = site.meta.get_or_init(|| meta);
    tracing::callsite::register(site);
    all.insert(key, meta);
    Some(meta)
}

/// Sends one event: fields as fields when they have plain names and a
/// callsite can be had, else as one `fields` string.
pub(super) fn dispatch(
    level: Level,
    message: &str,
    fields: &[(String, String)],
    redactor: &Redactor,
) {
    let plain = fields.iter().all(|(k, _)| plain_name(k))
        && fields
            .iter()
            .enumerate()
            .all(|(i, (k, _))| fields[..i].iter().all(|(j, _)| j != k));
    let mut names: Vec<&str> = vec!["message"];
    let joined;
    let mut values: Vec<&str> = vec![message];
    let site = if plain {
        names.extend(fields.iter().map(|(k, _)| k.as_str()));
        values.extend(fields.iter().map(|(_, v)| v.as_str()));
        callsite(level, &names)
    } else {
        None
    };
    let meta = match site {
        Some(meta) => meta,
        None => {
            joined = clean(
                &fields
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                redactor,
            );
            names = vec!["message"];
            values = vec![message];
            if !fields.is_empty() {
                names.push("fields");
                values.push(&joined);
            }
            match callsite(level, &names) {
                Some(meta) => meta,
                None => return fallback(level, message, &joined),
            }
        }
    };
    let fieldset = meta.fields();
    let all: Vec<tracing::field::Field> = fieldset.iter().collect();
    let message_field = &all[0];
    let mut pairs: [(&tracing::field::Field, Option<&dyn Value>); MAX_FIELDS + 2] =
        [(message_field, None); MAX_FIELDS + 2];
    let display: Vec<tracing::field::DisplayValue<&str>> =
        values.iter().map(|v| tracing::field::display(*v)).collect();
    for (i, field) in all.iter().enumerate() {
        pairs[i] = (field, Some(&display[i] as &dyn Value));
    }
    let values = fieldset.value_set(&pairs);
    tracing::dispatcher::get_default(|d| {
        if d.enabled(meta) {
            d.event(&tracing::Event::new(meta, &values));
        }
    });
}

/// Past [`MAX_CALLSITES`] (and for the message alone, all callsites taken):
/// a static callsite per level.
fn fallback(level: Level, message: &str, fields: &str) {
    match level {
        Level::TRACE => tracing::trace!(fields, "{message}"),
        Level::DEBUG => tracing::debug!(fields, "{message}"),
        Level::INFO => tracing::info!(fields, "{message}"),
        Level::WARN => tracing::warn!(fields, "{message}"),
        _ => tracing::error!(fields, "{message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_must_be_plain() {
        assert!(plain_name("rows"));
        assert!(plain_name("db.table_1"));
        assert!(!plain_name("message"));
        assert!(!plain_name("two words"));
        assert!(!plain_name("1st"));
        assert!(!plain_name(""));
    }
}
