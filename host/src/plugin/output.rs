//! What a plugin writes: its `log` import calls and its standard error go
//! into the host's log, as events of the instance's span; its standard
//! output, when granted, to the host's standard output, masked.
//!
//! A plugin is untrusted, and the host's log is what an operator reads (and
//! a log shipper parses), so everything a plugin writes there is:
//! - **one line**: CR, LF and every other control character are escaped
//!   (`\n`, `\u{1b}`), so a plugin cannot start a line that looks like the
//!   host's or another connector's, nor send escape sequences to a terminal;
//! - **cut** at [`MAX_LINE`] bytes (message and fields each), never in the
//!   middle of a secret, and then masked by the connector's `Redactor`;
//! - **rate limited** per instance by a [`LogBudget`] (a token bucket of
//!   [`BURST`] lines refilled at [`LINES_PER_SECOND`]); lines past it are
//!   counted, and the next line let through is preceded by one warning that
//!   says how many were dropped.
//!
//! A plugin's key/value fields become real fields of the event (so
//! `--log-format json` shows them as JSON members), on callsites made at
//! run time for each set of field names, at most [`MAX_CALLSITES`] of them:
//! past that, or for a name that is not a plain identifier, the fields are
//! written as one `fields` string instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::callsite::{Callsite, Identifier};
use tracing::field::{FieldSet, Value};
use tracing::metadata::Kind;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::secrets::Redactor;

/// Longest message (and longest field value) kept from one line, in bytes;
/// a longer stderr line is passed on in pieces.
pub const MAX_LINE: usize = 4096;

/// Most key/value fields kept from one `log` call.
pub const MAX_FIELDS: usize = 16;

/// Lines an instance may write in a burst before the rate limit applies.
pub const BURST: f64 = 500.0;

/// Lines per second an instance may write, sustained.
pub const LINES_PER_SECOND: f64 = 100.0;

/// Most distinct sets of field names given callsites of their own.
pub const MAX_CALLSITES: usize = 1024;

/// Escapes control characters, so that `text` stays on one line and carries
/// no terminal escape sequence. Tabs are kept.
pub fn one_line(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.extend(c.escape_unicode()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Cuts `text` to at most [`MAX_LINE`] bytes at a char boundary that does
/// not split a secret, marking the cut.
fn cut<'a>(text: &'a str, redactor: &Redactor) -> Cow<'a, str> {
    if text.len() <= MAX_LINE {
        return Cow::Borrowed(text);
    }
    let mut at = redactor.safe_cut(text.as_bytes(), MAX_LINE);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes cut)", &text[..at], text.len() - at))
}

/// Masks, cuts and escapes one piece of plugin text.
fn clean(text: &str, redactor: &Redactor) -> String {
    let text = cut(text, redactor);
    let text = redactor.redact(&text);
    one_line(&text).into_owned()
}

/// The rate limit of one instance's log lines: a token bucket.
#[derive(Debug)]
pub struct LogBudget {
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget {
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                dropped: 0,
            }),
        }
    }
}

impl LogBudget {
    /// `Some(n)` when a line may be written, `n` being how many were
    /// dropped since the last one let through; `None` when it is dropped.
    fn admit(&self) -> Option<u64> {
        let mut b = self.bucket.lock().expect("log budget lock");
        let now = Instant::now();
        let earned = now.duration_since(b.refilled).as_secs_f64() * LINES_PER_SECOND;
        b.tokens = (b.tokens + earned).min(BURST);
        b.refilled = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.dropped))
        } else {
            b.dropped += 1;
            None
        }
    }
}

/// One instance's voice in the host's log: its connector and index (for
/// lines written outside the instance's span), its rate limit and the
/// masking of its connector's secrets. Cheap to clone; when the last clone
/// goes (the instance's store is dropped), lines still dropped unreported
/// are reported.
#[derive(Debug, Clone)]
pub struct PluginLog(Arc<Voice>);

#[derive(Debug)]
struct Voice {
    connector: Arc<str>,
    instance: u32,
    redactor: Redactor,
    budget: LogBudget,
}

impl Drop for Voice {
    fn drop(&mut self) {
        let dropped = std::mem::take(
            &mut self
                .budget
                .bucket
                .get_mut()
                .expect("log budget lock")
                .dropped,
        );
        if dropped > 0 {
            self.in_span(|| report_dropped(dropped));
        }
    }
}

fn report_dropped(dropped: u64) {
    tracing::warn!(
        dropped,
        "plugin log lines dropped: over the rate limit of {LINES_PER_SECOND} lines/s"
    );
}

impl Voice {
    /// Runs `f` inside the instance's span: the one the pump runs in, or a
    /// new one when the call comes from elsewhere (a swap, a validation).
    fn in_span(&self, f: impl FnOnce()) {
        let current = tracing::Span::current();
        if current.metadata().is_some_and(|m| m.name() == "instance") {
            f();
        } else {
            tracing::info_span!("instance", connector = %self.connector, index = self.instance)
                .in_scope(f);
        }
    }
}

impl PluginLog {
    /// The log of instance `instance` of `connector`.
    pub fn new(connector: Arc<str>, instance: u32, redactor: Redactor) -> Self {
        PluginLog(Arc::new(Voice {
            connector,
            instance,
            redactor,
            budget: LogBudget::default(),
        }))
    }

    /// The redactor of the connector's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.0.redactor
    }

    /// Writes one line: `message` and key/value `fields`, masked, cut,
    /// escaped and rate limited.
    pub fn write(&self, level: Level, message: &str, fields: &[(String, String)]) {
        let voice = &self.0;
        let Some(dropped) = voice.budget.admit() else {
            return;
        };
        voice.in_span(|| {
            if dropped > 0 {
                report_dropped(dropped);
            }
            let message = clean(message, &voice.redactor);
            let fields: Vec<(String, String)> = fields
                .iter()
                .take(MAX_FIELDS)
                .map(|(k, v)| (clean(k, &voice.redactor), clean(v, &voice.redactor)))
                .collect();
            dispatch(level, &message, &fields, &voice.redactor);
        });
    }
}

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
fn dispatch(level: Level, message: &str, fields: &[(String, String)], redactor: &Redactor) {
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

/// Splits a plugin's output stream into lines and masks secrets in each,
/// never cutting a secret in two.
#[derive(Debug, Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Takes `bytes` and hands each complete line (without its newline),
    /// redacted, to `emit`, with `true`; or a piece of an overlong line,
    /// with `false`.
    fn push(&mut self, bytes: &[u8], redactor: &Redactor, mut emit: impl FnMut(&str, bool)) {
        self.partial.extend_from_slice(bytes);
        loop {
            let (end, skip) = match self.partial.iter().position(|&b| b == b'\n') {
                Some(at) => (at, 1),
                None if self.partial.len() >= MAX_LINE => {
                    match redactor.safe_cut(&self.partial, MAX_LINE) {
                        0 => return,
                        cut => (cut, 0),
                    }
                }
                None => return,
            };
            let line: Vec<u8> = self.partial.drain(..end + skip).take(end).collect();
            emit(&redactor.redact(&String::from_utf8_lossy(&line)), skip == 1);
        }
    }

    /// Hands on what is left.
    fn finish(&mut self, redactor: &Redactor, mut emit: impl FnMut(&str, bool)) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            emit(&redactor.redact(&String::from_utf8_lossy(&rest)), false);
        }
    }
}

/// A plugin's standard error: each line goes to the host's log as a
/// warning, tagged with the connector and instance, with secrets masked.
/// The last line is kept for the error report if the plugin then traps (a
/// Rust plugin's panic message arrives this way).
#[derive(Clone)]
pub struct PluginStderr {
    log: PluginLog,
    lines: Arc<Mutex<Lines>>,
    last: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for PluginStderr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginStderr")
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

impl PluginStderr {
    /// The standard error of the instance that writes to `log`.
    pub fn new(log: PluginLog) -> Self {
        PluginStderr {
            log,
            lines: Arc::default(),
            last: Arc::default(),
        }
    }

    /// The last line written, redacted.
    pub fn last_line(&self) -> Option<String> {
        self.last.lock().expect("stderr lock").clone()
    }

    fn emit(&self, text: &str) {
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        self.log
            .write(tracing::Level::WARN, &format!("plugin stderr: {text}"), &[]);
        *self.last.lock().expect("stderr lock") = Some(one_line(text).into_owned());
    }
}

impl IsTerminal for PluginStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginStderr {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for PluginStderr {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut lines = self.lines.lock().expect("stderr lock");
        lines.push(buf, self.log.redactor(), |l, _| self.emit(l));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut lines = self.lines.lock().expect("stderr lock");
        lines.finish(self.log.redactor(), |l, _| self.emit(l));
        Poll::Ready(Ok(()))
    }
}

/// A plugin's standard output, when granted: the host's standard output,
/// with secrets masked line by line (straight through when the manifest
/// has no secrets).
#[derive(Clone)]
pub struct PluginStdout {
    redactor: Redactor,
    lines: Arc<Mutex<Lines>>,
}

impl fmt::Debug for PluginStdout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginStdout").finish_non_exhaustive()
    }
}

impl PluginStdout {
    /// Standard output masking what `redactor` knows.
    pub fn new(redactor: Redactor) -> Self {
        PluginStdout {
            redactor,
            lines: Arc::default(),
        }
    }
}

impl IsTerminal for PluginStdout {
    fn is_terminal(&self) -> bool {
        std::io::IsTerminal::is_terminal(&std::io::stdout())
    }
}

impl StdoutStream for PluginStdout {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for PluginStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        use std::io::Write;
        let out = std::io::stdout();
        let mut out = out.lock();
        if self.redactor.is_empty() {
            return Poll::Ready(out.write_all(buf).map(|()| buf.len()));
        }
        let mut result = Ok(());
        let mut lines = self.lines.lock().expect("stdout lock");
        lines.push(buf, &self.redactor, |l, whole| {
            if result.is_ok() {
                result = if whole {
                    writeln!(out, "{l}")
                } else {
                    write!(out, "{l}")
                };
            }
        });
        Poll::Ready(result.map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use std::io::Write;
        Poll::Ready(std::io::stdout().flush())
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let mut lines = self.lines.lock().expect("stdout lock");
        lines.finish(&self.redactor, |l, _| {
            let _ = write!(out, "{l}");
        });
        Poll::Ready(out.flush())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lines_never_cut_a_secret_in_two() {
        let r = Redactor::new(["SECRET"]);
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let mut long = "x".repeat(MAX_LINE - 3);
        long.push_str("SECRET tail\n");
        for chunk in long.as_bytes().chunks(7) {
            lines.push(chunk, &r, |l, _| got.push(l.to_owned()));
        }
        let joined = got.concat();
        assert!(!joined.contains("SECRET"), "{joined}");
        assert!(joined.ends_with("*** tail"), "{joined}");
    }

    #[test]
    fn control_characters_are_escaped_onto_one_line() {
        assert_eq!(one_line("plain\ttext"), "plain\ttext");
        assert_eq!(
            one_line("ok\n2026-01-01 INFO host: forged\r\u{1b}[31m"),
            "ok\\n2026-01-01 INFO host: forged\\r\\u{1b}[31m"
        );
    }

    #[test]
    fn a_long_line_is_cut_without_splitting_a_secret() {
        let secret = "s3cr3t-value";
        let redactor = Redactor::new([secret]);
        let text = format!("{}{secret}{}", "a".repeat(MAX_LINE - 4), "b".repeat(100));
        let cleaned = clean(&text, &redactor);
        assert!(!cleaned.contains("s3cr"), "{cleaned}");
        assert!(cleaned.len() < MAX_LINE + 40);
        assert!(cleaned.ends_with("bytes cut)"));
    }

    #[test]
    fn the_budget_lets_a_burst_through_then_counts_what_it_drops() {
        let budget = LogBudget::default();
        let mut let_through = 0;
        for _ in 0..(BURST as usize + 50) {
            if budget.admit().is_some() {
                let_through += 1;
            }
        }
        // The refill over the loop's few microseconds adds at most a line.
        assert!((BURST as usize..=BURST as usize + 1).contains(&let_through));
        std::thread::sleep(std::time::Duration::from_millis(30));
        let dropped = budget.admit().expect("refilled after 30 ms");
        assert!((49..=50).contains(&dropped), "{dropped}");
    }

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
