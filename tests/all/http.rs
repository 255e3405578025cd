//! HTTP through the host, and `http-sink`, against a real HTTP server in a
//! process of its own (`tests/peers/http_receiver.py`, CPython's
//! `http.server`), which a test can SIGKILL and start again on its port.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// A test server of `tests/peers/` (`http_receiver.py` unless said
/// otherwise), listening on 127.0.0.1:`port`, keeping what it gets in
/// `dir`.
pub struct Receiver {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    script: &'static str,
    flags: Vec<String>,
}

impl Receiver {
    fn start(dir: &Path, flags: &[&str]) -> Receiver {
        Self::start_script("http_receiver.py", dir, flags)
    }

    pub fn start_script(script: &'static str, dir: &Path, flags: &[&str]) -> Receiver {
        let flags = flags.iter().map(|f| (*f).to_owned()).collect();
        // Port 0: the server takes a free port and says which.
        Self::on(script, 0, dir, flags)
    }

    fn on(script: &'static str, port: u16, dir: &Path, flags: Vec<String>) -> Receiver {
        std::fs::create_dir_all(dir).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/peers")
            .join(script);
        let mut child = Command::new("python3")
            .arg(path)
            .arg(port.to_string())
            .arg(dir)
            .args(&flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the server did not start: {first:?}"));
        Receiver {
            child,
            port,
            dir: dir.to_path_buf(),
            script,
            flags,
        }
    }

    /// SIGKILLs it, and starts another on the same port and folder.
    fn kill_and_restart(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        self.start_again();
    }

    /// SIGKILLs it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and folder, after [`Self::kill`].
    pub fn start_again(&mut self) {
        *self = Self::on(
            self.script,
            self.port,
            &self.dir,
            std::mem::take(&mut self.flags),
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest", self.port)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The seq of every record it received, repeats included.
    fn all(&self) -> Vec<u64> {
        lines_of(&self.dir.join("all.ndjson"))
            .iter()
            .map(|l| seq_of(l))
            .collect()
    }

    /// The seq of every record it kept (each key once).
    fn kept(&self) -> Vec<u64> {
        lines_of(&self.dir.join("kept.log"))
            .iter()
            .map(|l| seq_of(l.split_once('\t').unwrap().1))
            .collect()
    }

    /// How many connections it accepted.
    fn connections(&self) -> usize {
        lines_of(&self.dir.join("connections")).len()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn lines_of(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn seq_of(record: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(record).unwrap();
    v["seq"].as_u64().unwrap()
}

/// An `http-sink` named `post` reading `events` into `receiver`.
fn http_sink(receiver: &Receiver) -> Connector {
    sink("post", "http-sink", "events")
        .set("flush_interval_ms", 100)
        .config("url", receiver.url().as_str())
        .config("retry_initial_ms", 20)
        .config("retry_max_ms", 200)
        .grant("net", vec![receiver.addr().as_str()])
}

#[test]
fn http_sink_delivers_across_a_receiver_killed_mid_run_and_the_key_makes_it_exactly_once() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::start(&dir.path().join("receiver"), &[]);
    let manifest = manifest()
        .connector(gen_source(N, 5000, 32).batch("max_records", 200))
        .connector(http_sink(&receiver))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    wait_until("a quarter arrives", Duration::from_secs(60), || {
        receiver.kept().len() >= (N / 4) as usize
    });
    receiver.kill_and_restart(Duration::from_millis(700));
    let out = host.wait_for_exit(Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", host.log());
    let mut all = receiver.all();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "every record arrived at least once"
    );
    assert_exactly_once(receiver.kept(), N);
    let log = host.log();
    assert_eq!(log.matches("is away").count(), 1, "said once:\n{log}");
    assert_eq!(log.matches("is back").count(), 1, "{log}");
}

#[test]
fn http_sink_waits_out_503_for_as_long_as_retry_after_says() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("receiver"), &["--fail-first", "2"]);
    let manifest = manifest()
        .connector(gen_source(100, 0, 32))
        .connector(http_sink(&receiver))
        .write(dir.path());
    let started = std::time::Instant::now();
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two answers of Retry-After: 1 are two seconds of waiting"
    );
    assert_exactly_once(receiver.kept(), 100);
    assert!(
        stderr(&out).contains("it answered 503: busy"),
        "{}",
        stderr(&out)
    );
}

/// `lines` in a file that `file-source` reads into `events`, `sink` posting
/// them, and the dead-letter topic read back: what it holds, one JSON
/// object a record. The run must end well.
fn post_lines(dir: &Path, lines: &str, poster: Connector) -> Vec<serde_json::Value> {
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::write(input.join("records.ndjson"), lines).unwrap();
    let manifest = manifest()
        .connector(
            source("read", "file-source", "events")
                .config("path", "/in")
                .files("in", "/in", "read-only"),
        )
        .connector(poster)
        .connector(dead_letters("post.dlq"))
        .write(dir);
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    output_files(&dir.join("dlq"))
        .iter()
        .flat_map(|f| lines_of(f))
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect()
}

#[test]
fn http_sink_dead_letters_each_record_the_receiver_refuses_and_delivers_the_rest() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..100u64)
        .map(|i| format!("{{\"seq\":{i},\"bad\":{}}}\n", i % 10 == 3))
        .collect();
    let receiver = Receiver::start(&dir.path().join("receiver"), &["--reject-bad"]);
    let dead_letters = post_lines(dir.path(), &text, http_sink(&receiver));
    let mut kept = receiver.kept();
    kept.sort_unstable();
    let good: Vec<u64> = (0..100).filter(|i| i % 10 != 3).collect();
    assert_eq!(kept, good, "every good record delivered once");
    let mut dead = Vec::new();
    for r in dead_letters {
        assert_eq!(
            r["headers"]["sluice.error"], "HTTP 400: a record is bad",
            "{r}"
        );
        dead.push(seq_of(r["value"].as_str().unwrap()));
    }
    dead.sort_unstable();
    let bad: Vec<u64> = (0..100).filter(|i| i % 10 == 3).collect();
    assert_eq!(
        dead, bad,
        "each refused record dead-lettered, with the receiver's reason"
    );
}

#[test]
fn http_sink_sends_a_batch_as_requests_in_flight_together_and_dead_letters_only_the_refused() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..40u64)
        .map(|i| format!("{{\"seq\":{i},\"bad\":{}}}\n", i % 10 == 3))
        .collect();
    let receiver = Receiver::start(
        &dir.path().join("receiver"),
        &["--reject-bad", "--delay-ms", "200"],
    );
    // 8 requests of 5, 4 at a time; the 4 refused go again record by
    // record (20 requests), 4 at a time too.
    let poster = http_sink(&receiver)
        .batch("max_records", 40)
        .config("records_per_request", 5)
        .config("max_in_flight", 4);
    let dead_letters = post_lines(dir.path(), &text, poster);
    let mut kept = receiver.kept();
    kept.sort_unstable();
    let good: Vec<u64> = (0..40).filter(|i| i % 10 != 3).collect();
    assert_eq!(kept, good, "every good record delivered once");
    let mut dead: Vec<u64> = dead_letters
        .iter()
        .map(|r| seq_of(r["value"].as_str().unwrap()))
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, [3, 13, 23, 33], "only the refused records");
    let most: usize = lines_of(&receiver.dir.join("most_in_flight"))[0]
        .parse()
        .unwrap();
    assert_eq!(most, 4, "max_in_flight requests at once, and no more");
}

#[test]
fn http_sink_refuses_max_in_flight_0_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest()
        .connector(gen_source(10, 0, 32))
        .connector(
            sink("post", "http-sink", "events")
                .config("url", "http://127.0.0.1:9/ingest")
                .config("max_in_flight", 0)
                .grant("net", vec!["127.0.0.1:9"]),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("max_in_flight is 0: at least one request must be in flight"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_http_request_to_an_ungranted_port_is_refused_before_a_byte_leaves() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("receiver"), &[]);
    let other = format!("127.0.0.1:{}", receiver.port + 1);
    let manifest = manifest()
        .connector(gen_source(10, 0, 32))
        .connector(
            http_sink(&receiver)
                .grant("net", vec![other.as_str()])
                .restart("attempts", 0),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "refused to connect to {}, which no `net` grant allows",
            receiver.addr()
        )) && err.contains("the connector's net grant does not allow this peer"),
        "{err}"
    );
    assert_eq!(receiver.connections(), 0, "no connection was even opened");
}

#[test]
fn a_header_from_a_secret_reaches_the_server_and_shows_nowhere() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    const TOKEN: &str = "s3cret-token-6c1f9e";
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("receiver"), &[]);
    let mut headers = toml::Table::new();
    headers.insert("Authorization".into(), "Bearer ${secret:token}".into());
    let mut http = toml::Table::new();
    http.insert("headers".into(), headers.into());
    let manifest = manifest()
        .connector(gen_source(50, 0, 32))
        .connector(http_sink(&receiver).grant("http", http).secret(
            "token",
            "env",
            "SLUICE_TEST_HTTP_TOKEN",
        ))
        .write(dir.path());
    let env = [("SLUICE_TEST_HTTP_TOKEN", TOKEN), ("RUST_LOG", "debug")];
    let out = run_env(&["run", "--no-progress", manifest.to_str().unwrap()], &env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(receiver.kept(), 50);
    let seen = lines_of(&receiver.dir.join("authorization"));
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == &format!("Bearer {TOKEN}")),
        "every request carried the header: {seen:?}"
    );
    let validate = run_env(&["validate", manifest.to_str().unwrap()], &env);
    for (what, text) in [
        ("the run's log", stderr(&out)),
        (
            "validate",
            String::from_utf8_lossy(&validate.stdout).into_owned(),
        ),
    ] {
        assert!(!text.contains(TOKEN), "{what} shows the secret:\n{text}");
    }
    assert!(
        String::from_utf8_lossy(&validate.stdout).contains("authorization"),
        "validate names the header"
    );
}

#[test]
fn requests_started_together_are_in_flight_together() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(&dir.path().join("receiver"), &["--delay-ms", "300"]);
    let manifest = manifest()
        .connector(gen_source(8, 0, 32).batch("max_records", 8))
        .connector(
            sink("fan", wasm("http-fan-out"), "events")
                .config("url", receiver.url().as_str())
                .grant("net", vec![receiver.addr().as_str()]),
        )
        .write(dir.path());
    let out = run(&["run", "--no-progress", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(receiver.kept(), 8);
    let most: usize = lines_of(&receiver.dir.join("most_in_flight"))[0]
        .parse()
        .unwrap();
    assert!(
        most >= 4,
        "a batch's requests, started before any answer, wait together: {most} at most"
    );
}

#[test]
fn https_goes_through_the_hosts_tls_with_the_granted_ca_and_no_other() {
    if !tool("python3", "--version", "python3") || !tool("openssl", "version", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::tls::make_pki(dir.path());
    let (cert, key) = (pki.join("server.pem"), pki.join("server.key"));
    let receiver = Receiver::start(
        &dir.path().join("receiver"),
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap()],
    );
    let url = format!("https://localhost:{}/ingest", receiver.port);
    let https_sink = |tls: toml::Table| {
        http_sink(&receiver)
            .config("url", url.as_str())
            .grant("net", vec![format!("localhost:{}", receiver.port).as_str()])
            .grant("tls", tls)
    };
    let mut ca = toml::Table::new();
    ca.insert(
        "ca_file".into(),
        pki.join("ca.pem").to_str().unwrap().into(),
    );
    let trusting = manifest()
        .connector(gen_source(100, 0, 32))
        .connector(https_sink(ca))
        .write(dir.path());
    let out = run(&["run", "--no-progress", trusting.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_exactly_once(receiver.kept(), 100);

    // No CA granted: the test CA is not among the system's roots.
    let dir = tempfile::tempdir().unwrap();
    let untrusting = manifest()
        .connector(gen_source(100, 0, 32))
        .connector(https_sink(toml::Table::new()))
        .write(dir.path());
    let mut host = Host::run(dir.path(), &untrusting);
    host.wait_for_log(
        "TLS handshake with localhost failed: its certificate is not signed by a CA this \
         connector trusts",
        Duration::from_secs(60),
    );
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(receiver.all().len(), 100, "no request reached it");
}

#[test]
fn http_sink_posts_a_json_array_and_dead_letters_a_value_that_is_not_json() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..20u64)
        .map(|i| {
            if i == 7 {
                "not json\n".to_owned()
            } else {
                format!("{{\"seq\":{i}}}\n")
            }
        })
        .collect();
    let receiver = Receiver::start(&dir.path().join("receiver"), &[]);
    let dead = post_lines(
        dir.path(),
        &text,
        http_sink(&receiver).config("format", "json-array"),
    );
    let mut kept = receiver.kept();
    kept.sort_unstable();
    assert_eq!(kept, (0..20).filter(|&i| i != 7).collect::<Vec<_>>());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["value"], "not json");
    assert_eq!(
        dead[0]["headers"]["sluice.error"],
        "the value is not JSON, which a JSON array needs"
    );
}

/// An `http-source` named `read` in `mode` from `path` of `server` into
/// `events`, and a `file-sink` writing `out/`.
fn http_source_to_files(dir: &Path, server: &Receiver, mode: &str, path: &str) -> PathBuf {
    manifest()
        .connector(
            source("read", "http-source", "events")
                .config(
                    "url",
                    format!("http://127.0.0.1:{}{path}", server.port).as_str(),
                )
                .config("mode", mode)
                .config("records_pointer", "/items")
                .config("poll_interval_ms", 50)
                .config("retry_initial_ms", 20)
                .config("retry_max_ms", 200)
                .grant("net", vec![server.addr().as_str()]),
        )
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir)
}

#[test]
fn http_source_resumes_server_sent_events_from_the_last_event_id_after_the_server_dies() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    const N: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Receiver::start_script(
        "event_server.py",
        &dir.path().join("server"),
        &[&N.to_string()],
    );
    let manifest = http_source_to_files(dir.path(), &server, "sse", "/events");
    let host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("a third arrives", Duration::from_secs(60), || {
        seqs(&out).len() >= N / 3
    });
    server.kill_and_restart(Duration::from_millis(500));
    let log = stop_after(host, dir.path(), N);
    assert_eq!(
        seqs(&out),
        (1..=N as u64).collect::<Vec<_>>(),
        "every event once, in order: no gap, no repeat"
    );
    let requests = lines_of(&server.dir.join("requests"));
    assert!(requests.len() >= 2, "{requests:?}");
    let resumed: u64 = requests[1].split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        resumed >= (N / 3) as u64 && resumed < N as u64,
        "the second request asks from where the first left off: {requests:?}"
    );
    assert_eq!(log.matches("is away").count(), 1, "{log}");
}

#[test]
fn http_source_polls_an_endpoint_page_by_page_with_its_cursor() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Receiver::start_script("event_server.py", &dir.path().join("server"), &["1000"]);
    let manifest = http_source_to_files(dir.path(), &server, "poll", "/items");
    let host = Host::run(dir.path(), &manifest);
    stop_after(host, dir.path(), 1000);
    assert_eq!(
        seqs(&dir.path().join("out")),
        (1..=1000).collect::<Vec<_>>()
    );
    let requests = lines_of(&server.dir.join("requests"));
    assert!(
        requests.iter().any(|r| r.starts_with("/items?cursor=900 ")),
        "{requests:?}"
    );
}

#[test]
fn http_source_waits_as_long_as_retry_after_says_and_then_reads_on() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Receiver::start_script("event_server.py", &dir.path().join("server"), &["300"]);
    // Its first two answers are 429 with Retry-After: 1; the backoff alone
    // would try again within a tenth of a second.
    let manifest = http_source_to_files(dir.path(), &server, "poll", "/limited");
    let started = std::time::Instant::now();
    let host = Host::run(dir.path(), &manifest);
    let out = dir.path().join("out");
    wait_until("the first page arrives", Duration::from_secs(60), || {
        !seqs(&out).is_empty()
    });
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two answers of Retry-After: 1 are two seconds of waiting ({:?})",
        started.elapsed()
    );
    let log = stop_after(host, dir.path(), 300);
    assert_eq!(seqs(&out), (1..=300).collect::<Vec<_>>());
    assert_eq!(log.matches("is away").count(), 1, "said once:\n{log}");
    assert!(log.contains("it answered 429"), "{log}");
}

#[test]
fn http_source_reads_an_ndjson_stream() {
    if !tool("python3", "--version", "python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Receiver::start_script("event_server.py", &dir.path().join("server"), &["500"]);
    let manifest = http_source_to_files(dir.path(), &server, "ndjson", "/lines");
    let host = Host::run(dir.path(), &manifest);
    stop_after(host, dir.path(), 500);
    assert_eq!(seqs(&dir.path().join("out")), (1..=500).collect::<Vec<_>>());
}
