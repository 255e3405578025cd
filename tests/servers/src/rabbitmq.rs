//! RabbitMQ: a node of Debian's package `rabbitmq-server` (3.10) of the
//! test's own, on a free 127.0.0.1 port, its database in a temporary
//! directory, with an Erlang port mapper of its own on another (so it
//! neither needs nor disturbs the machine's), killed when dropped.
//!
//! Its one user has a password; [`RabbitMq::start_with_login`] gives it the
//! queues named `allowed.…` (and the default exchange) only. The tests'
//! own publishing and reading is done by a third-party client, Python's
//! pika (Debian package `python3-pika`), through
//! `tests/peers/amqp_client.py`: [`RabbitMq::client`].

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const EPMD: &str = "/usr/bin/epmd";
const PYTHON: &str = "/usr/bin/python3";

/// A running RabbitMQ node, killed when dropped.
#[derive(Debug)]
pub struct RabbitMq {
    server: Option<Child>,
    epmd: Option<Child>,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    user: String,
    password: String,
    dir: tempfile::TempDir,
}

impl RabbitMq {
    /// Starts a node whose user `guest` (password `guest`, as a packaged
    /// node has) may do anything; `None` (the test skips) when RabbitMQ or
    /// pika is not installed and `CI` is unset.
    pub fn start() -> Option<RabbitMq> {
        RabbitMq::start_with("guest", "guest", ".*")
    }

    /// Starts a node whose one user is `user` with `password`, allowed
    /// the queues named `allowed.…` and the default exchange only.
    pub fn start_with_login(user: &str, password: &str) -> Option<RabbitMq> {
        RabbitMq::start_with(user, password, r"^(allowed\..*|amq\.default)$")
    }

    fn start_with(user: &str, password: &str, allowed: &str) -> Option<RabbitMq> {
        let found = [SERVER, EPMD]
            .into_iter()
            .find(|p| !Path::new(p).is_file())
            .map_or(Ok(()), |p| {
                Err(format!("no {p} (Debian package rabbitmq-server)"))
            })
            .and_then(|()| pika_installed());
        if !crate::required("rabbitmq", found) {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path();
        let port = crate::free_port();
        let config = format!(
            "listeners.tcp.default = 127.0.0.1:{port}\n\
             loopback_users = none\n\
             default_user = {user}\n\
             default_pass = {password}\n\
             default_permissions.configure = {allowed}\n\
             default_permissions.read = {allowed}\n\
             default_permissions.write = {allowed}\n\
             log.console = true\n\
             log.console.level = warning\n\
             log.file = false\n"
        );
        std::fs::write(d.join("rabbitmq.conf"), config).expect("rabbitmq.conf written");
        std::fs::write(d.join("enabled_plugins"), "[].\n").expect("enabled_plugins written");
        let mut node = RabbitMq {
            server: None,
            epmd: None,
            port,
            dist_port: crate::free_port(),
            epmd_port: crate::free_port(),
            user: user.to_owned(),
            password: password.to_owned(),
            dir,
        };
        node.resume();
        Some(node)
    }

    /// Starts the node (again) on its ports and data, and waits until it
    /// takes connections.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "the node runs already");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rabbitmq.log"))
            .expect("the node's log");
        let epmd = Command::new(EPMD)
            .args([
                "-port",
                &self.epmd_port.to_string(),
                "-address",
                "127.0.0.1",
            ])
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("the log twice"))
            .process_group(0)
            .spawn()
            .expect("epmd starts");
        self.epmd = Some(epmd);
        let mut server = Command::new(SERVER)
            .env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("sluice-{}@localhost", self.port),
            )
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .stdout(log.try_clone().expect("the log twice"))
            .stderr(log)
            // Its own process group: the script, the VM and its helpers
            // go together when stopped.
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !self.answers() {
            if let Ok(Some(status)) = server.try_wait() {
                panic!("rabbitmq exited at start: {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq did not listen in 90 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(server);
    }

    /// Whether the node speaks AMQP on its port: it listens a moment
    /// before it is ready, and answers the protocol header with
    /// `connection.start` only then.
    fn answers(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut first = [0u8; 1];
        s.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
            && matches!(s.read(&mut first), Ok(1) if first[0] == 1)
    }

    /// Kills the node (SIGKILL): what it stored stays.
    pub fn stop(&mut self) {
        if self.server.is_some() {
            self.thaw();
        }
        for child in [self.server.take(), self.epmd.take()].into_iter().flatten() {
            let mut child = child;
            // SAFETY: kill(2) on the process group this child leads.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "rabbitmq did not stop in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `rabbitmqctl ARGS…` against the node (a second or two: it is an
    /// Erlang node of its own) and returns what it printed; panics if it
    /// fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let d = self.dir.path();
        let out = Command::new(CTL)
            .args(args)
            .env("HOME", d)
            .env(
                "RABBITMQ_NODENAME",
                format!("sluice-{}@localhost", self.port),
            )
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Freezes the node (SIGSTOP): its connections stay open and the
    /// kernel still takes bytes for it, but it answers nothing, heartbeats
    /// included, as a hung broker does, until [`RabbitMq::thaw`].
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Lets a frozen node go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        let server = self.server.as_ref().expect("the node runs");
        // SAFETY: kill(2) on the process group this child leads.
        unsafe { libc::kill(-(server.id() as i32), signal) };
    }

    /// `127.0.0.1:port` of its AMQP listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Its user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("rabbitmq.log")
    }

    /// Runs `amqp_client.py COMMAND PORT USER PASSWORD ARGS…` (pika, as
    /// the node's user) and returns what it printed; panics if it fails.
    pub fn client(&self, command: &str, args: &[&str]) -> String {
        let out = self
            .client_command(command, args)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "amqp_client.py {command} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    }

    /// The command [`RabbitMq::client`] runs, to run it otherwise (in the
    /// background, say).
    pub fn client_command(&self, command: &str, args: &[&str]) -> Command {
        let mut c = Command::new(PYTHON);
        c.arg(client_script())
            .arg(command)
            .arg(self.port.to_string())
            .arg(&self.user)
            .arg(&self.password)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Runs the client and returns its whole output, failing or not.
    pub fn client_output(&self, command: &str, args: &[&str]) -> Output {
        self.client_command(command, args)
            .output()
            .expect("python3 runs")
    }
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `tests/peers/amqp_client.py`.
pub fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../peers/amqp_client.py")
}

fn pika_installed() -> Result<(), String> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("no pika for /usr/bin/python3 (Debian package python3-pika)".into())
    }
}
