//! Support for the sandbox fixtures under `tests/fixtures/`.
//!
//! A probe is a bounded source that tries one thing when it opens (read a
//! file, connect to a port, look up a name, read a variable) and then emits
//! exactly one record saying what happened, as JSON:
//!
//! ```json
//! {"fixture":"read-etc-passwd","outcome":"denied","kind":"NotFound","error":"…"}
//! {"fixture":"connect-granted-port","outcome":"allowed","detail":"sent 5 bytes"}
//! ```
//!
//! The tests route that record to a file sink and read it, so each outcome
//! travels the same way a real record does.
//!
//! [`LineFile`] is what the sink fixtures write the records they take into,
//! and [`MarkedSink`] the sink the swap fixtures share.

use std::fmt::Display;

use sluice_sdk::{Batch, BatchWriter, Context, Error, Origin, Poll, Rejects, Sink};

/// What a probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    record: Option<String>,
}

impl Probe {
    /// A probe named `fixture` that found `result`.
    pub fn new<T: Display>(fixture: &str, result: std::io::Result<T>) -> Self {
        let record = match result {
            Ok(detail) => serde_json::json!({
                "fixture": fixture,
                "outcome": "allowed",
                "detail": detail.to_string(),
            }),
            Err(e) => {
                sluice_sdk::info!("{fixture}: denied: {e}");
                serde_json::json!({
                    "fixture": fixture,
                    "outcome": "denied",
                    "kind": format!("{:?}", e.kind()),
                    "error": e.to_string(),
                })
            }
        };
        Probe {
            record: Some(record.to_string()),
        }
    }

    /// Emits the outcome once, then ends.
    pub fn poll(&mut self, out: &mut BatchWriter) -> Result<Poll, Error> {
        if let Some(record) = self.record.take() {
            out.push_value(record.as_bytes());
        }
        Ok(Poll::default().done_if(true))
    }
}

/// The config of a probe that reads or writes one path; `None` takes the
/// fixture's default.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    /// The path to try.
    #[serde(default)]
    pub path: Option<String>,
}

/// The config of a probe that connects to an address.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddrConfig {
    /// Where to connect, e.g. `127.0.0.1:8080`.
    pub addr: String,
}

/// The config of a probe that looks something up by name (a host name, a
/// variable).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NameConfig {
    /// The name.
    #[serde(default)]
    pub name: Option<String>,
}

/// Reads `path` whole.
pub fn read(path: &str) -> std::io::Result<String> {
    std::fs::read_to_string(path).map(|s| format!("read {} bytes", s.len()))
}

/// Opens a TCP connection to `addr` (an IP address and port: no name
/// lookup) and sends `hello`.
pub fn connect_and_greet(addr: &str) -> std::io::Result<String> {
    use std::io::Write;
    let target: std::net::SocketAddr = addr.parse().map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}"))
    })?;
    let mut stream = std::net::TcpStream::connect(target)?;
    stream.write_all(b"hello")?;
    Ok(format!("sent 5 bytes to {target}"))
}

/// Defines the fixture's source and exports it: on `open` it evaluates
/// `$try` with the parsed config bound to `$config`, and reports the
/// outcome as its one record.
///
/// ```ignore
/// sluice_probe::probe!("read-etc-passwd", PathConfig, |c| {
///     sluice_probe::read(c.path.as_deref().unwrap_or("/etc/passwd"))
/// });
/// ```
#[macro_export]
macro_rules! probe {
    ($fixture:literal, $config:ty, |$c:ident| $try:expr) => {
        /// The probe.
        #[derive(Debug)]
        pub struct Fixture($crate::Probe);

        impl ::sluice_sdk::Source for Fixture {
            type Config = $config;

            fn open(
                $c: $config,
                _ctx: &::sluice_sdk::Context,
                _resume: Option<&[u8]>,
            ) -> Result<Self, ::sluice_sdk::Error> {
                Ok(Fixture($crate::Probe::new($fixture, $try)))
            }

            fn poll(
                &mut self,
                out: &mut ::sluice_sdk::BatchWriter,
                _max: usize,
            ) -> Result<::sluice_sdk::Poll, ::sluice_sdk::Error> {
                self.0.poll(out)
            }
        }

        ::sluice_sdk::export_source!(Fixture);
    };
}

/// The config of a sink fixture that stands in for a newer `file-sink` in
/// module swap tests: it takes `file-sink`'s fields (a swap keeps the
/// connector's config).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Directory to write into (the guest side of a `files` grant).
    pub path: String,
    /// Accepted for compatibility with `file-sink`; unused.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Accepted for compatibility with `file-sink`; unused.
    #[serde(default)]
    pub format: Option<String>,
}

/// A file of lines that a sink fixture writes each record's value into
/// (one file per instance, in a granted directory).
#[derive(Debug)]
pub struct LineFile(std::io::BufWriter<std::fs::File>);

impl LineFile {
    /// Creates (or empties) `path`; failing that is `fatal`.
    pub fn create(path: &str) -> Result<LineFile, Error> {
        std::fs::File::create(path)
            .map(|f| LineFile(std::io::BufWriter::new(f)))
            .map_err(|e| Error::fatal(format!("{path}: {e}")))
    }

    /// Opens `path` to add lines after those it holds (a restarted
    /// instance adds to what it wrote before); failing that is `fatal`.
    pub fn append(path: &str) -> Result<LineFile, Error> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|f| LineFile(std::io::BufWriter::new(f)))
            .map_err(|e| Error::fatal(format!("{path}: {e}")))
    }

    /// Writes `mark`, `value` and a newline; failing that is `retriable`.
    pub fn marked_line(&mut self, mark: &[u8], value: &[u8]) -> Result<(), Error> {
        use std::io::Write;
        self.0
            .write_all(mark)
            .map_err(|e| Error::retriable(e.to_string()))?;
        self.line(value)
    }

    /// Flushes and syncs the file's data to disk; failing that is
    /// `retriable`.
    pub fn sync(&mut self) -> Result<(), Error> {
        self.flush()?;
        self.0
            .get_ref()
            .sync_data()
            .map_err(|e| Error::retriable(e.to_string()))
    }

    /// Writes `value` and a newline; failing that is `retriable`.
    pub fn line(&mut self, value: &[u8]) -> Result<(), Error> {
        use std::io::Write;
        self.0
            .write_all(value)
            .and_then(|()| self.0.write_all(b"\n"))
            .map_err(|e| Error::retriable(e.to_string()))
    }

    /// Flushes to the file; failing that is `retriable`.
    pub fn flush(&mut self) -> Result<(), Error> {
        use std::io::Write;
        self.0.flush().map_err(|e| Error::retriable(e.to_string()))
    }
}

/// What sets one "newer `file-sink`" fixture of the swap tests apart from
/// another: the mark before each line, and which file an instance writes
/// (or that it refuses to open). The rest is [`MarkedSink`].
pub trait Marked: 'static {
    /// Written before each record's value, e.g. `b"v2 "`.
    const MARK: &'static [u8];

    /// The file instance `ctx.index` appends its lines to, under
    /// `config.path`; an error fails its `open`.
    fn file(config: &FileSinkConfig, ctx: &Context) -> Result<String, Error>;
}

/// A sink fixture writing each record's value as a line `<MARK><value>`
/// into the file `M::file` names, made durable on flush and close. It
/// stores no offsets of its own: the host resumes it from its group's
/// committed offsets.
#[derive(Debug)]
pub struct MarkedSink<M> {
    file: LineFile,
    marked: std::marker::PhantomData<M>,
}

impl<M: Marked> Sink for MarkedSink<M> {
    type Config = FileSinkConfig;

    fn open(config: FileSinkConfig, ctx: &Context) -> Result<Self, Error> {
        Ok(MarkedSink {
            file: LineFile::append(&M::file(&config, ctx)?)?,
            marked: std::marker::PhantomData,
        })
    }

    fn write(
        &mut self,
        _origin: &Origin,
        batch: Batch<'_>,
        _rejects: &mut Rejects,
    ) -> Result<(), Error> {
        for record in batch.iter() {
            self.file.marked_line(M::MARK, record.value)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.file.sync()
    }

    fn close(&mut self) -> Result<(), Error> {
        self.flush()
    }
}
