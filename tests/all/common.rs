//! Helpers shared by the integration tests: run the real `sluice` binary
//! on manifests written into a temporary folder, and read what sinks wrote.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// The `sluice` binary cargo built for these tests.
pub fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    // One compile cache for the whole test run: compiling plugins with a
    // debug-built engine is the slow part of every test.
    cmd.env("SLUICE_CACHE_DIR", cache_dir());
    cmd.env("SLUICE_LOG", "info");
    // No daemon unless a test starts one and names it: a daemon of the
    // machine's own must not answer a test's `plugins` verb.
    cmd.env(
        "SLUICE_DATA_DIR",
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-daemon"),
    );
    cmd
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sluice-test-cache")
}

/// A fixture's component (built by `sluice-test-artifacts`) or a built-in
/// plugin's (built by host/build.rs), by crate name.
pub fn wasm(krate: &str) -> PathBuf {
    sluice_test_artifacts::fixture(krate).unwrap_or_else(|| {
        PathBuf::from(env!("SLUICE_PLUGIN_WASM_DIR"))
            .join(format!("{}.wasm", krate.replace('-', "_")))
    })
}

/// Writes `manifest` as `sluice.toml` in `dir` and returns its path.
pub fn write_manifest(dir: &Path, manifest: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, manifest).unwrap();
    path
}

/// Runs `sluice <args…>` to completion.
pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// Runs `sluice <args…>` to completion with `env` set.
pub fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = sluice();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "sluice {args:?} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The summary line `sluice run` printed for connector `name`.
pub fn summary_line(out: &Output, name: &str) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no summary line for {name}"))
        .to_owned()
}

/// Writes files of numbered lines `{"seq":N}` into `dir` (created if
/// needed): one file per (name, range of N).
pub fn numbered_lines(dir: &Path, files: &[(&str, std::ops::Range<u64>)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, range) in files {
        let text: String = range
            .clone()
            .map(|i| format!("{{\"seq\":{i}}}\n"))
            .collect();
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// What the process wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `manifest` into `dir` and runs `sluice validate` on it; returns
/// the exit code and stderr.
pub fn validate_in(dir: &Path, manifest: &str) -> (Option<i32>, String) {
    let path = write_manifest(dir, manifest);
    let out = run(&["validate", path.to_str().unwrap()]);
    (out.status.code(), stderr(&out))
}

/// A `[[connector]]` table: a `datagen` source named `gen` writing `count`
/// records (0: endless) into `events`, at `rate` a second (0: as fast as it
/// goes), each value `payload_bytes` long.
pub fn gen_source(count: u64, rate: u64, payload_bytes: u32) -> String {
    format!(
        r#"
[[connector]]
name = "gen"
kind = "source"
plugin = "datagen"
topic = "events"
[connector.config]
count = {count}
rate = {rate}
payload_bytes = {payload_bytes}
"#
    )
}

/// A datagen → file-sink manifest writing under `out/`.
pub fn datagen_to_files(count: u64, rate: u64) -> String {
    format!(
        r#"
[broker]
data_dir = "data"
{gen}
[[connector]]
name = "files"
kind = "sink"
plugin = "file-sink"
topic = "events"
flush_interval_ms = 200
[connector.config]
path = "/out"
max_file_bytes = 200000
[connector.grants]
files = [{{ host = "out", guest = "/out", mode = "read-write" }}]
"#,
        gen = gen_source(count, rate, 64)
    )
}

/// The output files under `dir` in name order, leaving out dot-files (the
/// `file-sink`'s offset markers).
pub fn output_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    files
}

/// Every `seq` value in the lines of the files under `dir`, in file order.
pub fn seqs(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for f in output_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let rest = line
                .strip_prefix("{\"seq\":")
                .unwrap_or_else(|| panic!("not a datagen line in {}: {line}", f.display()));
            let end = rest.find([',', '}']).unwrap();
            out.push(rest[..end].parse().unwrap());
        }
    }
    out
}

/// Asserts `seqs` holds exactly 0..n, each once.
pub fn assert_exactly_once(mut seqs: Vec<u64>, n: u64) {
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(total, seqs.len(), "{} duplicate lines", total - seqs.len());
    assert_eq!(seqs.len() as u64, n, "expected {n} distinct seq values");
    assert_eq!(seqs.first().copied(), if n > 0 { Some(0) } else { None });
    assert_eq!(seqs.last().copied(), n.checked_sub(1));
}

/// A `sluice` process running in the background, its stdout and stderr
/// going to files; killed when dropped.
pub struct Host {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Host {
    /// Starts `sluice <args…>`, writing `<name>.out` and `<name>.log`
    /// (stderr) in `dir`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> Host {
        let (out, log) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.log")),
        );
        let child = sluice()
            .args(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Host { child, out, log }
    }

    /// Starts `sluice run --no-progress <manifest>`.
    pub fn run(dir: &Path, manifest: &Path) -> Host {
        Host::start(
            dir,
            "host",
            &["run", "--no-progress", manifest.to_str().unwrap()],
        )
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while it has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log contains `text`, or panics after `limit`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        wait_until(&format!("{text:?} is in the log"), limit, || {
            self.log().contains(text)
        });
    }

    /// Asks it to stop, as an operator would (SIGTERM).
    pub fn terminate(&self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(term.success());
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for it to exit, or panics after `limit`.
    pub fn wait_for_exit(&mut self, limit: Duration) -> Output {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < limit,
                "it did not finish within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Output {
            status,
            stdout: std::fs::read(&self.out).unwrap(),
            stderr: std::fs::read(&self.log).unwrap(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `done`, looking every 50 ms, or panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let began = Instant::now();
    while !done() {
        assert!(
            began.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
