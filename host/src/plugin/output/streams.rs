//! The plugin's standard streams as WASI sees them: standard error into
//! the host's log through its [`PluginLog`], standard output (when
//! granted) to the host's, both masked line by line.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use super::{MAX_LINE, PluginLog, one_line};
use crate::secrets::Redactor;

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
}
