//! Helpers shared by the integration tests: run the real `sluice` binary
//! on manifests written into a temporary folder, and read what sinks wrote.

#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

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

/// Runs `sluice run` on `manifest`, which must finish (exit 0).
pub fn run_finished(manifest: &Path) -> Output {
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    out
}

/// Runs `sluice run` on `manifest`, which must fail; returns what it said
/// on stderr.
pub fn run_refused(manifest: &Path) -> String {
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    stderr(&out)
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

/// A manifest built in code: `[broker] data_dir = "data"`, then what the
/// test adds. Written as TOML by [`ManifestBuilder::write`].
///
/// ```ignore
/// manifest()
///     .connector(gen_source(100, 0, 64))
///     .connector(sink("out", "file-sink", "events").config("path", "/out").files("out", "/out", "read-write"))
///     .write(dir)
/// ```
#[derive(Debug, Clone)]
pub struct ManifestBuilder {
    broker: toml::Table,
    topics: toml::Table,
    connectors: Vec<Connector>,
    transforms: Vec<toml::Table>,
}

/// A manifest whose log lives in `data/` beside it.
pub fn manifest() -> ManifestBuilder {
    let mut broker = toml::Table::new();
    broker.insert("data_dir".into(), "data".into());
    ManifestBuilder {
        broker,
        topics: toml::Table::new(),
        connectors: Vec::new(),
        transforms: Vec::new(),
    }
}

impl ManifestBuilder {
    /// Sets `key` in `[broker]`.
    pub fn broker(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.broker.insert(key.into(), value.into());
        self
    }

    /// Sets `key` in `[topics.<topic>]`.
    pub fn topic(mut self, topic: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        table(&mut self.topics, topic).insert(key.into(), value.into());
        self
    }

    /// Adds a `[[connector]]`.
    pub fn connector(mut self, c: Connector) -> Self {
        self.connectors.push(c);
        self
    }

    /// Adds a `[[transform]]` named `name` running `plugin` with `config`
    /// (for the `transforms` chains of connectors).
    pub fn transform(
        mut self,
        name: &str,
        plugin: impl AsRef<std::ffi::OsStr>,
        config: &[(&str, toml::Value)],
    ) -> Self {
        let mut t = toml::Table::new();
        t.insert("name".into(), name.into());
        t.insert("plugin".into(), plugin.as_ref().to_str().unwrap().into());
        let config: toml::Table = config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        t.insert("config".into(), config.into());
        self.transforms.push(t);
        self
    }

    /// Changes the connector named `name`.
    pub fn with(mut self, name: &str, change: impl FnOnce(Connector) -> Connector) -> Self {
        let i = self
            .connectors
            .iter()
            .position(|c| c.0["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no connector {name:?}"));
        let c = self.connectors.remove(i);
        self.connectors.insert(i, change(c));
        self
    }

    /// Writes it as `sluice.toml` in `dir` and returns the path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_manifest(dir, &self.to_string())
    }

    /// Writes it at `path` and returns the path.
    pub fn write_to(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_string()).unwrap();
        path.to_path_buf()
    }
}

impl std::fmt::Display for ManifestBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut doc = toml::Table::new();
        doc.insert("broker".into(), self.broker.clone().into());
        if !self.topics.is_empty() {
            doc.insert("topics".into(), self.topics.clone().into());
        }
        let connectors = self.connectors.iter().map(|c| c.0.clone().into());
        doc.insert("connector".into(), toml::Value::Array(connectors.collect()));
        if !self.transforms.is_empty() {
            let transforms = self.transforms.iter().map(|t| t.clone().into());
            doc.insert("transform".into(), toml::Value::Array(transforms.collect()));
        }
        f.write_str(&toml::to_string(&doc).map_err(|_| std::fmt::Error)?)
    }
}

/// One `[[connector]]` table of a [`ManifestBuilder`].
#[derive(Debug, Clone)]
pub struct Connector(toml::Table);

/// A source named `name` running `plugin` (a built-in's name or a
/// component's path) into `topic`.
pub fn source(name: &str, plugin: impl AsRef<std::ffi::OsStr>, topic: &str) -> Connector {
    connector(name, "source", plugin).set("topic", topic)
}

/// A sink named `name` running `plugin`, reading `topic`.
pub fn sink(name: &str, plugin: impl AsRef<std::ffi::OsStr>, topic: &str) -> Connector {
    connector(name, "sink", plugin).set("topic", topic)
}

/// A transform connector named `name` running `plugin`, reading `topic`
/// and writing `output`.
pub fn transform(
    name: &str,
    plugin: impl AsRef<std::ffi::OsStr>,
    topic: &str,
    output: &str,
) -> Connector {
    connector(name, "transform", plugin)
        .set("topic", topic)
        .set("output", output)
}

fn connector(name: &str, kind: &str, plugin: impl AsRef<std::ffi::OsStr>) -> Connector {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert("kind".into(), kind.into());
    let plugin = plugin.as_ref().to_str().unwrap();
    t.insert("plugin".into(), plugin.into());
    Connector(t)
}

impl Connector {
    /// Its kind: `source`, `sink` or `transform`.
    pub fn kind(&self) -> &str {
        self.0["kind"].as_str().unwrap()
    }

    /// Sets `key` of the connector's table (`topics`, `parallelism`,
    /// `flush_interval_ms`, …).
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// Removes `key` of the connector's table.
    pub fn unset(mut self, key: &str) -> Self {
        self.0.remove(key);
        self
    }

    /// Sets `key` in `[connector.config]`.
    pub fn config(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.sub("config", key, value)
    }

    /// Sets `key` in `[connector.grants]`.
    pub fn grant(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.sub("grants", key, value)
    }

    /// Sets `key` in `[connector.restart]`.
    pub fn restart(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.sub("restart", key, value)
    }

    /// Sets `key` in `[connector.batch]`.
    pub fn batch(self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.sub("batch", key, value)
    }

    /// Makes it a hybrid source: `[connector.hybrid]` runs `plugin` with
    /// `config` once the connector's own plugin has ended.
    pub fn hybrid(mut self, plugin: &str, config: &[(&str, toml::Value)]) -> Self {
        let h = table(&mut self.0, "hybrid");
        h.insert("plugin".into(), plugin.into());
        let config: toml::Table = config
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        h.insert("config".into(), config.into());
        self
    }

    /// Grants the host directory `host` (beside the manifest) at `guest`,
    /// `mode` `"read-only"` or `"read-write"`.
    pub fn files(mut self, host: &str, guest: &str, mode: &str) -> Self {
        let mut grant = toml::Table::new();
        grant.insert("host".into(), host.into());
        grant.insert("guest".into(), guest.into());
        grant.insert("mode".into(), mode.into());
        let grants = table(&mut self.0, "grants");
        let files = grants
            .entry("files")
            .or_insert_with(|| toml::Value::Array(Vec::new()));
        files.as_array_mut().unwrap().push(grant.into());
        self
    }

    /// Grants the secret `name`, read `from` (`"env"` or `"file"`) `where_`.
    pub fn secret(mut self, name: &str, from: &str, where_: &str) -> Self {
        let mut source = toml::Table::new();
        source.insert(from.into(), where_.into());
        let grants = table(&mut self.0, "grants");
        table(grants, "secrets").insert(name.into(), source.into());
        self
    }

    fn sub(mut self, sub: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        table(&mut self.0, sub).insert(key.into(), value.into());
        self
    }
}

impl std::fmt::Display for Connector {
    /// The connector alone, as one `[[connector]]` table: what the daemon's
    /// `connectors create` takes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut doc = toml::Table::new();
        doc.insert(
            "connector".into(),
            toml::Value::Array(vec![self.0.clone().into()]),
        );
        f.write_str(&toml::to_string(&doc).map_err(|_| std::fmt::Error)?)
    }
}

/// The table at `key` of `parent`, made if missing.
fn table<'a>(parent: &'a mut toml::Table, key: &str) -> &'a mut toml::Table {
    parent
        .entry(key)
        .or_insert_with(|| toml::Table::new().into())
        .as_table_mut()
        .unwrap()
}

/// A `datagen` source named `gen` writing `count` records (0: endless)
/// into `events`, at `rate` a second (0: as fast as it goes), each value
/// `payload_bytes` long.
pub fn gen_source(count: u64, rate: u64, payload_bytes: u32) -> Connector {
    source("gen", "datagen", "events")
        .config("count", count as i64)
        .config("rate", rate as i64)
        .config("payload_bytes", i64::from(payload_bytes))
}

/// A `file-sink` named `files` reading `events` into `out/`, flushing
/// every 200 ms, starting a new file past 200,000 bytes.
pub fn files_sink() -> Connector {
    sink("files", "file-sink", "events")
        .set("flush_interval_ms", 200)
        .config("path", "/out")
        .config("max_file_bytes", 200_000)
        .files("out", "/out", "read-write")
}

/// A datagen → file-sink manifest writing under `out/`.
pub fn datagen_to_files(count: u64, rate: u64) -> ManifestBuilder {
    manifest()
        .connector(gen_source(count, rate, 64))
        .connector(files_sink())
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

/// A `file-sink` named `dlq-reader` writing the dead letters of `topic` as
/// JSON lines into the host directory `dlq` (read them with
/// [`output_lines`]).
pub fn dead_letters(topic: &str) -> Connector {
    sink("dlq-reader", "file-sink", topic)
        .config("path", "/out")
        .config("format", "json")
        .files("dlq", "/out", "read-write")
}

/// The `seq` of a datagen record read back as a JSON line (a `file-sink`
/// with `format = "json"`): the record's `value` is `{"seq":N,…}`.
pub fn json_line_seq(r: &serde_json::Value) -> u64 {
    r["value"].as_str().unwrap()[7..]
        .split([',', '}'])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `(key, value)` pairs as the `records` of the `emit-keyed` fixture (an
/// empty value is a tombstone).
pub fn keyed_records<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> toml::Value {
    toml::Value::Array(
        pairs
            .into_iter()
            .map(|(k, v)| toml::Value::Array(vec![k.into().into(), v.into().into()]))
            .collect(),
    )
}

/// Every line of every file under `dir`, in file order.
pub fn output_lines(dir: &Path) -> Vec<String> {
    output_files(dir)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `seq` value in the lines of the files under `dir`, in file order.
pub fn seqs(dir: &Path) -> Vec<u64> {
    let mut out = Vec::new();
    for f in output_files(dir) {
        let text = std::fs::read_to_string(&f).unwrap();
        // A line without its newline is one the sink is writing now.
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let line = line.trim_end();
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

/// Asserts `seqs` holds each of 0..n at least once (and nothing else);
/// returns how many are repeats.
pub fn assert_at_least_once(mut seqs: Vec<u64>, n: u64) -> usize {
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, n, "expected {n} distinct seq values");
    assert_eq!(seqs.first().copied(), if n > 0 { Some(0) } else { None });
    assert_eq!(seqs.last().copied(), n.checked_sub(1));
    total - seqs.len()
}

/// Asserts that each of `sides` (plugin names) said once in `log` that
/// the peer at `addr` is away, and then that it is back: the outage
/// messages of `sluice_sdk::outage::Outage`.
pub fn assert_each_away_once_then_back(log: &str, sides: &[&str], addr: &str) {
    for side in sides {
        let away = format!("{side}: {addr} is away");
        assert_eq!(log.matches(&away).count(), 1, "{side} said once: {log}");
        let back = format!("{side}: {addr} is back");
        assert!(log.contains(&back), "{log}");
    }
}

/// Runs `sluice run` once on a manifest of `connectors` written in `dir`,
/// the file `dir/<secret_file>` holding `password` (the connectors read it
/// as a secret), and returns the exit code and all it printed. Asserts
/// that nothing printed shows the password: the tests' all hold "s3cr3t".
pub fn run_with_secret(
    dir: &Path,
    secret_file: &str,
    password: &str,
    connectors: Vec<Connector>,
) -> (Option<i32>, String) {
    std::fs::write(dir.join(secret_file), password).unwrap();
    let mut m = manifest();
    for c in connectors {
        m = m.connector(c);
    }
    let manifest = m.write(dir);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(!all.contains("s3cr3t"), "the password shows:\n{all}");
    (out.status.code(), all)
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
        self.signal("TERM");
    }

    /// Presses Ctrl-C on it (SIGINT).
    pub fn interrupt(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
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
            std::thread::sleep(Duration::from_millis(5));
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

/// A seed for a test's random moments, from the clock, printed (`kill
/// seed N`) so that a failing run can be told apart.
pub fn kill_seed() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill seed {seed}");
    seed
}

/// Kills `host` with SIGKILL `kills` times, each `least` plus up to
/// `spread` after it last started (xorshift from `seed`), and starts it
/// again on `manifest` each time (its output in `run-<i>.log`). Returns
/// the last host, and each killed one's log.
pub fn kill_at_random(
    mut host: Host,
    dir: &Path,
    manifest: &Path,
    seed: u64,
    kills: u32,
    (least, spread): (Duration, Duration),
) -> (Host, Vec<String>) {
    let mut rng = seed | 1;
    let mut logs = Vec::new();
    for i in 0..kills {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let spread_ms = spread.as_millis().max(1) as u64;
        std::thread::sleep(least + Duration::from_millis(rng % spread_ms));
        host.kill();
        logs.push(host.log());
        host = Host::start(
            dir,
            &format!("run-{i}"),
            &["run", "--no-progress", manifest.to_str().unwrap()],
        );
    }
    (host, logs)
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

/// Stops the host with Ctrl-C once `out/` under `dir` holds `n` lines (a
/// minute at most), checks it exits 130, and returns its log.
pub fn stop_after(mut host: Host, dir: &Path, n: usize) -> String {
    let out = dir.join("out");
    // Whole lines only: the sink may be writing the last one.
    let lines = || {
        output_files(&out)
            .iter()
            .map(|f| {
                std::fs::read(f)
                    .unwrap()
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
            })
            .sum::<usize>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines() < n {
        assert!(
            Instant::now() < deadline,
            "timed out after 60s waiting for {n} lines ({} came); the host's log:\n{}",
            lines(),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    host.interrupt();
    let output = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(130), "{}", host.log());
    host.log()
}

/// `{"seq":N}` lines for each N in `range`.
pub fn seq_lines(range: std::ops::Range<u64>) -> Vec<u8> {
    range
        .flat_map(|i| format!("{{\"seq\":{i}}}\n").into_bytes())
        .collect()
}

/// Whether the tool `command` runs (`command --version`, or `version_arg`):
/// `false` (the test skips, saying so) only where it is missing and `CI` is
/// unset; under `CI` a missing tool fails the test, naming the Debian
/// package that has it.
pub fn tool(command: &str, version_arg: &str, package: &str) -> bool {
    match Command::new(command).arg(version_arg).output() {
        Ok(out) if out.status.success() => true,
        other => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{command} is required under CI (Debian package {package}): {other:?}"
            );
            eprintln!("skipped: {command} is not installed (Debian package {package})");
            false
        }
    }
}

/// A `sluice serve` on a port of its choosing, killed on drop.
pub struct Daemon {
    host: Host,
    /// Its `--data-dir`.
    pub data: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = dir.join("data");
        let _ = std::fs::remove_file(data.join("daemon.json"));
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut host = Host::start(dir, &format!("serve-{start}"), &args);
        let began = Instant::now();
        while !data.join("daemon.json").exists() {
            assert!(
                host.is_running(),
                "sluice serve exited at start:\n{}",
                host.log()
            );
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "sluice serve did not answer within 60 s:\n{}",
                host.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon { host, data }
    }

    /// `sluice <verb> --data-dir <data> <args…>`.
    pub fn cli(&self, verb: &str, args: &[&str]) -> Output {
        let mut cmd = sluice();
        cmd.arg(verb).arg("--data-dir").arg(&self.data).args(args);
        let out = cmd.output().unwrap();
        if !out.status.success() {
            eprintln!(
                "sluice {verb} {args:?} exited {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    pub fn json(&self, verb: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(verb, &all);
        assert!(out.status.success(), "sluice {verb} {args:?} failed");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn status(&self, name: &str) -> Value {
        self.json("connectors", &["status", name])
    }

    pub fn ok(&self, args: &[&str]) {
        let out = self.cli("connectors", args);
        assert!(out.status.success(), "sluice connectors {args:?} failed");
    }

    pub fn url(&self) -> String {
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(self.data.join("daemon.json")).unwrap())
                .unwrap();
        info["url"].as_str().unwrap().to_owned()
    }

    pub fn log(&self) -> String {
        self.host.log()
    }

    pub fn kill(&mut self) {
        self.host.kill();
    }

    pub fn terminate(&mut self) -> Option<i32> {
        self.host.terminate();
        self.host
            .wait_for_exit(Duration::from_secs(60))
            .status
            .code()
    }
}

/// The records the topic holds: the generator's total over every run.
pub fn topic_end(d: &Daemon, sink: &str) -> u64 {
    let o = d.json("connectors", &["offsets", sink]);
    o["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end"].as_u64().unwrap_or(0))
        .sum()
}

/// Stops `gen` and waits until every sink in `sinks` has taken the whole
/// topic; returns its size.
pub fn drain(d: &Daemon, sinks: &[&str]) -> u64 {
    d.ok(&["stop", "gen"]);
    let end = topic_end(d, sinks[0]);
    for s in sinks {
        wait_until(&format!("{s} catches up"), Duration::from_secs(60), || {
            d.status(s)["lag"] == 0
        });
    }
    end
}
