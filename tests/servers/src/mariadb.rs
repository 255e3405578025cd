//! A MariaDB server of the test's own: `mariadb-install-db` in a temporary
//! directory, `mariadbd` on a free port (127.0.0.1 only, its socket in that
//! directory), the redo log written but not synced at each commit. Runs as
//! the `mysql` system user when the tests run as root. Debian package:
//! `mariadb-server`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER: &str = "/usr/sbin/mariadbd";
const INSTALL: &str = "/usr/bin/mariadb-install-db";
const CLIENT: &str = "/usr/bin/mariadb";
/// The system user the server runs as under root.
const SYSTEM_USER: &str = "mysql";

/// A running MariaDB server, killed when dropped.
#[derive(Debug)]
pub struct Mariadb {
    dir: tempfile::TempDir,
    port: u16,
    server: Option<Child>,
}

/// Whether MariaDB's programs are installed, or why not.
pub fn installed() -> Result<(), String> {
    [SERVER, INSTALL, CLIENT]
        .iter()
        .find(|p| !Path::new(p).exists())
        .map_or(Ok(()), |p| {
            Err(format!("no {p} (Debian package mariadb-server)"))
        })
}

impl Mariadb {
    /// Starts a server; `None` (the test skips) when MariaDB is not
    /// installed and `CI` is unset.
    pub fn start() -> Option<Mariadb> {
        if !crate::required("MariaDB", installed()) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("sluice-mariadb-")
            .tempdir()
            .expect("a temporary directory");
        let mut server = Mariadb {
            dir,
            port: crate::free_port(),
            server: None,
        };
        // A temporary directory of its own: a starting server removes the
        // `#sql…` files it finds in its tmpdir, which in a shared /tmp are
        // other servers' temporary tables (concurrent installs failed so).
        std::fs::create_dir(server.tmp()).expect("make the server's tmpdir");
        crate::give_to(SYSTEM_USER, "mariadb-server", &server.tmp());
        let mut install = Command::new(INSTALL);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", server.data().display()))
            .arg(format!("--tmpdir={}", server.tmp().display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ]);
        if crate::is_root() {
            install.arg(format!("--user={SYSTEM_USER}"));
        }
        let out = install.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        crate::give_to(SYSTEM_USER, "mariadb-server", server.dir.path());
        server.start_again();
        Some(server)
    }

    /// Starts the server (again, after [`Mariadb::kill`]), waiting until
    /// it answers.
    pub fn start_again(&mut self) {
        let mut cmd = Command::new(SERVER);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--tmpdir={}", self.tmp().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.path().join("pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                self.dir.path().join("error.log").display()
            ))
            .arg(format!("--port={}", self.port))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=2",
                "--innodb-buffer-pool-size=256M",
                "--max-connections=100",
                // The bench's native limit is `LOAD DATA LOCAL INFILE`.
                "--local-infile=1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if crate::is_root() {
            cmd.arg(format!("--user={SYSTEM_USER}"));
        }
        self.server = Some(cmd.spawn().expect("start mariadbd"));
        let began = Instant::now();
        while self.try_sql("", "SELECT 1").is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "MariaDB did not answer within a minute:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server as a crash would (what was committed survives
    /// through the redo log, up to the last second's).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's error log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Runs `sql` as root in `database` (none if empty) through the
    /// server's socket; returns its output (tab-separated, no column
    /// names). Panics, with the client's message, if it fails.
    pub fn sql(&self, database: &str, sql: &str) -> String {
        self.try_sql(database, sql)
            .unwrap_or_else(|e| panic!("mariadb failed on {sql:?}: {e}"))
    }

    /// [`Mariadb::sql`], with the failure returned.
    pub fn try_sql(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = self.client();
        cmd.args(["-N", "-B", "-e", sql]);
        if !database.is_empty() {
            cmd.arg(database);
        }
        let out = cmd.output().expect("run mariadb");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The `mariadb` client, set to reach the server as root through its
    /// socket.
    pub fn client(&self) -> Command {
        let mut cmd = Command::new(CLIENT);
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("-uroot");
        cmd
    }

    /// Makes `database` and a user with `password` (`mysql_native_password`)
    /// that may do anything in it, from any host.
    pub fn create_user(&self, name: &str, password: &str, database: &str) {
        self.sql(
            "",
            &format!(
                "CREATE DATABASE IF NOT EXISTS `{database}`; \
                 CREATE USER '{name}'@'%' IDENTIFIED BY '{}'; \
                 GRANT ALL ON `{database}`.* TO '{name}'@'%'",
                password.replace('\'', "''")
            ),
        );
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.kill();
    }
}
