//! Redis: a `redis-server` (Debian's package `redis-server`) of the test's
//! own, on a free 127.0.0.1 port, its data (an append-only file) in a
//! temporary directory, killed when dropped. It can be stopped (SIGTERM:
//! it writes what it holds) and started again on the same port and data,
//! as an operator restarts it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's package puts the server and its client.
const SERVER: &str = "/usr/bin/redis-server";
const CLI: &str = "/usr/bin/redis-cli";

/// A running Redis server, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server that lets any client in; `None` (the test skips)
    /// when Redis is not installed and `CI` is unset.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(None)
    }

    /// Starts a server whose clients must give `password` (`requirepass`).
    pub fn start_with_password(password: &str) -> Option<RedisServer> {
        RedisServer::start_with(Some(password.to_owned()))
    }

    fn start_with(password: Option<String>) -> Option<RedisServer> {
        let found = [SERVER, CLI]
            .iter()
            .find(|p| !std::path::Path::new(p).is_file())
            .map_or(Ok(()), |p| {
                Err(format!("no {p} (Debian package redis-server)"))
            });
        if !crate::required("redis-server", found) {
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: crate::free_port(),
            password,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        server.resume();
        Some(server)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `redis-cli` with `args` against the server (as the password's
    /// user if it has one), which must succeed; returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.cli_output(args);
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis-cli` with `args`, raw output (`--raw`), whatever it says.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        let mut command = Command::new(CLI);
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        command.args(args).output().expect("redis-cli runs")
    }

    /// Sends `commands` (each a list of arguments) through `redis-cli
    /// --pipe`, Redis's own bulk loader, which must take them all.
    pub fn pipe(&self, commands: impl IntoIterator<Item = Vec<String>>) {
        use std::io::Write as _;
        let mut protocol = Vec::new();
        for args in commands {
            protocol.extend(format!("*{}\r\n", args.len()).bytes());
            for a in args {
                protocol.extend(format!("${}\r\n{a}\r\n", a.len()).bytes());
            }
        }
        let mut command = Command::new(CLI);
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--pipe"]);
        if let Some(password) = &self.password {
            command.env("REDISCLI_AUTH", password);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli runs");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(&protocol)
            .expect("redis-cli reads its input");
        let out = child.wait_with_output().expect("redis-cli ends");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("errors: 0"),
            "redis-cli --pipe: {said}"
        );
    }

    /// Stops the server as an operator would (SIGTERM: it writes its
    /// append-only file and exits), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server runs already");
        let mut command = Command::new(SERVER);
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--save", "", "--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--logfile")
            .arg(self.log_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let mut child = command.spawn().expect("redis-server starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        crate::wait_listening(
            &mut child,
            "redis-server",
            &[self.port],
            Duration::from_secs(20),
            || std::fs::read_to_string(self.log_path()).unwrap_or_default(),
        );
        self.child = Some(child);
        // Listening is not serving: a restarted server answers LOADING
        // until it has read its data back.
        while String::from_utf8_lossy(&self.cli_output(&["PING"]).stdout).trim() != "PONG" {
            assert!(
                Instant::now() < deadline,
                "redis-server did not load its data in 20 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
