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
//! - **rate limited** per connector by a [`LogBudget`] (a token bucket of
//!   [`BURST`] lines refilled at [`LINES_PER_SECOND`], shared by all its
//!   instances, so parallelism does not multiply it); lines past it are
//!   counted, and the next line let through is preceded by one warning that
//!   says how many were dropped.
//!
//! A plugin's key/value fields become real fields of the event (so
//! `--log-format json` shows them as JSON members), on callsites made at
//! run time for each set of field names, at most [`MAX_CALLSITES`] of them:
//! past that, or for a name that is not a plain identifier, the fields are
//! written as one `fields` string instead (`fields.rs`).
//!
//! `streams.rs` holds the WASI streams: standard error into the log (as
//! above) and, when granted, standard output to the host's, masked.

mod fields;
mod streams;

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::Level;

use crate::secrets::Redactor;

pub use self::streams::{PluginStderr, PluginStdout};

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

/// The rate limit of one connector's log lines: a token bucket. Cheap to
/// clone; clones share the bucket, one per connector.
#[derive(Debug, Clone)]
pub struct LogBudget {
    bucket: Arc<Mutex<Bucket>>,
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
            bucket: Arc::new(Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                dropped: 0,
            })),
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
        // The connector's other instances may report it later too; what
        // is taken here is reported once.
        let dropped =
            std::mem::take(&mut self.budget.bucket.lock().expect("log budget lock").dropped);
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
    /// The log of instance `instance` of `connector`, within the
    /// connector's `budget`.
    pub fn new(connector: Arc<str>, instance: u32, redactor: Redactor, budget: LogBudget) -> Self {
        PluginLog(Arc::new(Voice {
            connector,
            instance,
            redactor,
            budget,
        }))
    }

    /// The redactor of the connector's secrets.
    pub fn redactor(&self) -> &Redactor {
        &self.0.redactor
    }

    /// Writes one line: `message` and key/value `fields`, masked, cut,
    /// escaped and rate limited.
    pub fn write(&self, level: Level, message: &str, fields: &[(String, String)]) {
        // A line no subscriber would show is neither cleaned nor counted
        // against the budget: debug lines that are filtered out must not
        // crowd out the warnings that are not.
        if level > tracing::level_filters::LevelFilter::current() {
            return;
        }
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
            fields::dispatch(level, &message, &fields, &voice.redactor);
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
