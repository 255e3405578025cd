//! TLS through the host, against a real TLS server: `openssl s_server`
//! (Debian's `openssl`), with a CA, a server and a client certificate the
//! test makes with the `openssl` command. The plugins see only streams: the
//! handshake, the certificate checks and the client key are the host's.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::*;

/// A folder for the test with a test CA in it (see [`make_pki`]), or
/// `None` where `openssl` is missing (see [`tool`]).
pub(crate) fn with_pki() -> Option<(tempfile::TempDir, PathBuf)> {
    if !tool("openssl", "version", "openssl") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    Some((dir, pki))
}

/// Runs `openssl args…` in `dir`, which must succeed.
fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
}

/// A test CA in `dir/pki`: `ca.pem`; a server certificate for `localhost`
/// and 127.0.0.1 (`server.pem`, `server.key`); a client certificate
/// (`client.pem`, `client.key`).
pub fn make_pki(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=sluice-test-ca",
    ]);
    run_openssl(&pki, &ca);
    for (who, cn, ext) in [
        (
            "server",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/CN=sluice-client",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        let (key, csr, pem, extfile) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        std::fs::write(pki.join(&extfile), ext).unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", cn]);
        run_openssl(&pki, &req);
        run_openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
    pki
}

/// `openssl s_server` on a port of its own, serving one client at a time
/// with the server certificate, and asking for a client certificate signed
/// by the test CA if `verify_clients`. What the test writes to `input`
/// goes to the connected client.
struct TlsServer {
    child: Child,
    port: u16,
    input: ChildStdin,
    /// Everything the server printed, line by line.
    output: mpsc::Receiver<String>,
}

impl TlsServer {
    fn start(pki: &Path, verify_clients: bool) -> TlsServer {
        let mut cmd = Command::new("openssl");
        // Port 0: the server takes a free port and says which.
        cmd.current_dir(pki).args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ]);
        if verify_clients {
            cmd.args(["-Verify", "1", "-CAfile", "ca.pem"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, output) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let input = child.stdin.take().unwrap();
        let mut server = TlsServer {
            child,
            port: 0,
            input,
            output,
        };
        let accept = server.wait_for("ACCEPT");
        server.port = accept.rsplit(':').next().unwrap().trim().parse().unwrap();
        server
    }

    /// Waits (a minute at most) for a line of the server's output holding
    /// `text`; returns it.
    fn wait_for(&self, text: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(e) => panic!("openssl s_server never printed {text:?}: {e}"),
            }
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Sends `bytes` to the connected client (or the next one).
    fn send(&mut self, bytes: &[u8]) {
        self.input.write_all(bytes).unwrap();
        self.input.flush().unwrap();
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `socket-source` over TLS to `server` into `events`, with `tls` as its
/// `[connector.grants.tls]`, and a `file-sink` writing `out/`.
fn tls_source_to_files(server: &TlsServer, tls: toml::Table) -> ManifestBuilder {
    let addr = server.addr();
    manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", addr.as_str())
                .config("tls", true)
                .config("reconnect_initial_ms", 20)
                .config("reconnect_max_ms", 200)
                .grant("net", vec![addr.as_str()])
                .grant("tls", tls),
        )
        .connector(files_sink().set("flush_interval_ms", 50))
}

/// A line of digits for each N in `range`: `openssl s_server` may take a
/// line of what it is sent that begins with a letter (`q`, `r`, …) as a
/// command when a read of its input happens to start there, so the lines
/// it relays hold none.
fn number_lines(range: std::ops::Range<u64>) -> Vec<u8> {
    range.flat_map(|i| format!("{i}\n").into_bytes()).collect()
}

/// The numbers of the lines written under `dir`, in file order.
fn numbers(dir: &Path) -> Vec<u64> {
    output_lines(dir)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn ca_grant(pki: &Path) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert(
        "ca_file".into(),
        pki.join("ca.pem").to_str().unwrap().into(),
    );
    t
}

/// `c` granted the test CA and the client identity, from secrets read
/// from files.
fn with_identity(c: Connector, pki: &Path) -> Connector {
    let mut tls = ca_grant(pki);
    tls.insert("client_cert".into(), "tls_cert".into());
    tls.insert("client_key".into(), "tls_key".into());
    c.grant("tls", tls)
        .secret("tls_cert", "file", pki.join("client.pem").to_str().unwrap())
        .secret("tls_key", "file", pki.join("client.key").to_str().unwrap())
}

#[test]
fn a_tls_source_reads_from_a_server_its_granted_ca_vouches_for() {
    let Some((dir, pki)) = with_pki() else { return };
    let mut server = TlsServer::start(&pki, false);
    let manifest = tls_source_to_files(&server, ca_grant(&pki)).write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    server.send(&number_lines(0..2000));
    stop_after(host, dir.path(), 2000);
    assert_eq!(
        numbers(&dir.path().join("out")),
        (0..2000).collect::<Vec<_>>(),
        "every line, in order, once"
    );
}

#[test]
fn a_granted_ca_is_trusted_beside_the_system_roots_when_both_are_asked_for() {
    let Some((dir, pki)) = with_pki() else { return };
    let mut server = TlsServer::start(&pki, false);
    let mut tls = ca_grant(&pki);
    tls.insert("system_roots".into(), true.into());
    let manifest = tls_source_to_files(&server, tls).write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    server.send(&number_lines(0..100));
    stop_after(host, dir.path(), 100);
    assert_eq!(
        numbers(&dir.path().join("out")),
        (0..100).collect::<Vec<_>>()
    );
}

#[test]
fn a_server_no_granted_ca_vouches_for_is_refused_naming_it_and_why() {
    let Some((dir, pki)) = with_pki() else { return };
    let mut server = TlsServer::start(&pki, false);
    // No CA granted: the host trusts the system's roots only, and the test
    // CA is not one of them.
    let manifest = tls_source_to_files(&server, toml::Table::new()).write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    server.send(&number_lines(0..10));
    host.wait_for_log(
        "TLS handshake with 127.0.0.1 failed: its certificate is not signed by a CA this \
         connector trusts (grant its CA with [connector.grants.tls] ca_file)",
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    host.interrupt();
    let output = host.wait_for_exit(Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(130), "{}", host.log());
    assert!(
        numbers(&dir.path().join("out")).is_empty(),
        "nothing is read from a server that was not trusted"
    );
    assert_eq!(
        host.log().matches("is not signed by a CA").count(),
        1,
        "said once, however many tries:\n{}",
        host.log()
    );
}

#[test]
fn a_server_that_wants_a_client_certificate_gets_the_granted_one_and_no_other() {
    let Some((dir, pki)) = with_pki() else { return };

    // Granted: the host presents the identity, and the lines flow.
    let mut server = TlsServer::start(&pki, true);
    let manifest = manifest()
        .connector(with_identity(
            source("sock", "socket-source", "events")
                .config("addr", server.addr().as_str())
                .config("tls", true)
                .config("server_name", "localhost")
                .grant("net", vec![server.addr().as_str()]),
            &pki,
        ))
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir.path());
    let host = Host::run(dir.path(), &manifest);
    server.send(&number_lines(0..100));
    let log = stop_after(host, dir.path(), 100);
    assert_exactly_once(numbers(&dir.path().join("out")), 100);
    let key = std::fs::read_to_string(pki.join("client.key")).unwrap();
    let key_line = key.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "the key is in no log line:\n{log}");
    drop(server);

    // Not granted: the server refuses the connection, and nothing flows.
    let dir = tempfile::tempdir().unwrap();
    let mut server = TlsServer::start(&pki, true);
    let manifest = tls_source_to_files(&server, ca_grant(&pki)).write(dir.path());
    let mut host = Host::run(dir.path(), &manifest);
    server.send(&number_lines(0..100));
    server.wait_for("peer did not return a certificate");
    host.wait_for_log("is away", Duration::from_secs(60));
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    assert!(
        numbers(&dir.path().join("out")).is_empty(),
        "{}",
        host.log()
    );
}

/// `bytes`, inverted and hex-encoded, as `tls-scan-memory` takes a needle.
fn needle(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b ^ 0xff)).collect()
}

#[test]
fn the_client_key_never_enters_the_plugins_memory() {
    let Some((dir, pki)) = with_pki() else { return };
    let mut server = TlsServer::start(&pki, true);
    let key_pem = std::fs::read_to_string(pki.join("client.key")).unwrap();
    run_openssl(
        &pki,
        &[
            "pkey",
            "-in",
            "client.key",
            "-outform",
            "DER",
            "-out",
            "client.der",
        ],
    );
    let key_der = std::fs::read(pki.join("client.der")).unwrap();
    let greeting = "hello from the TLS server, 5bd81e";
    let needles = vec![
        // The control: what the plugin read is in its memory.
        needle(greeting.as_bytes()),
        // The key, as PEM text (a line of it) and as DER.
        needle(key_pem.lines().nth(1).unwrap().as_bytes()),
        needle(&key_der),
    ];
    let manifest = manifest()
        .connector(with_identity(
            source("scan", wasm("tls-scan-memory"), "events")
                .config("addr", server.addr().as_str())
                .config("server_name", "localhost")
                .config("needles", needles)
                .grant("net", vec![server.addr().as_str()]),
            &pki,
        ))
        .connector(files_sink().set("flush_interval_ms", 50))
        .write(dir.path());
    server.send(format!("{greeting}\n").as_bytes());
    let out = run(&["run", manifest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = output_lines(&dir.path().join("out"));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let record: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(record["line"], greeting, "the mutual TLS handshake worked");
    assert_eq!(
        record["found"],
        serde_json::json!([true, false, false]),
        "the plugin holds what it read, and neither form of the client key"
    );
}

/// A manifest in `dir` whose `socket-source` has the TLS grant `tls` and
/// the secret `cert` (from `SLUICE_TEST_TLS_CERT`), for `validate` to
/// check; its peer is never reached.
fn tls_grant_to_check(dir: &Path, tls: toml::Table) -> PathBuf {
    manifest()
        .connector(
            source("sock", "socket-source", "events")
                .config("addr", "127.0.0.1:1")
                .config("tls", true)
                .grant("net", vec!["127.0.0.1:1"])
                .grant("tls", tls)
                .secret("cert", "env", "SLUICE_TEST_TLS_CERT"),
        )
        .connector(files_sink())
        .write(dir)
}

#[test]
fn a_tls_grant_naming_a_secret_that_is_not_granted_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut tls = toml::Table::new();
    tls.insert("client_cert".into(), "cert".into());
    tls.insert("client_key".into(), "key".into());
    let manifest = tls_grant_to_check(dir.path(), tls);
    let out = run(&["validate", manifest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("client_key names secret \"key\", which is not granted")
            && err.contains("connector[0].grants.tls.client_key")
            && err.contains("[connector.grants.secrets]"),
        "{err}"
    );
}

#[test]
fn the_grants_server_name_is_checked_whatever_name_the_plugin_asks_for() {
    let Some((dir, pki)) = with_pki() else { return };
    // The plugin asks for a name the server's certificate is not for.
    let asking_wrong = |server: &TlsServer, tls: toml::Table| {
        tls_source_to_files(server, tls).with("sock", |c| c.config("server_name", "wrong.example"))
    };
    let mut server = TlsServer::start(&pki, false);
    let mut host = Host::run(
        dir.path(),
        &asking_wrong(&server, ca_grant(&pki)).write(dir.path()),
    );
    host.wait_for_log(
        "TLS handshake with wrong.example failed: its certificate is not for the name wrong.example",
        Duration::from_secs(60),
    );
    host.interrupt();
    host.wait_for_exit(Duration::from_secs(30));
    drop(server);

    // The grant's name wins: the handshake checks `localhost`, and works.
    let mut tls = ca_grant(&pki);
    tls.insert("server_name".into(), "localhost".into());
    server = TlsServer::start(&pki, false);
    let host = Host::run(dir.path(), &asking_wrong(&server, tls).write(dir.path()));
    server.send(&number_lines(0..10));
    stop_after(host, dir.path(), 10);
}

#[test]
fn a_tls_grant_that_cannot_work_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let check = |tls: toml::Table, field: &str, says: &str| {
        let manifest = tls_grant_to_check(dir.path(), tls);
        let out = run_env(
            &["validate", manifest.to_str().unwrap()],
            &[("SLUICE_TEST_TLS_CERT", "not a certificate")],
        );
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!("connector[0].grants.tls.{field}")) && err.contains(says),
            "{err}"
        );
    };
    let mut missing_ca = toml::Table::new();
    missing_ca.insert("ca_file".into(), "no-such-ca.pem".into());
    check(missing_ca, "ca_file", "cannot read the TLS CA file");
    let mut cert_alone = toml::Table::new();
    cert_alone.insert("client_cert".into(), "cert".into());
    check(
        cert_alone,
        "client_key",
        "a client certificate needs both client_cert and client_key",
    );
    let mut bad_name = toml::Table::new();
    bad_name.insert("server_name".into(), "not a name!".into());
    check(
        bad_name,
        "server_name",
        "is not a DNS name or an IP address",
    );
}
