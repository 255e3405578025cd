//! A PostgreSQL server of the test's own: `initdb` in a temporary
//! directory, `pg_ctl start` on a free port (127.0.0.1 only, its socket in
//! that directory), logical replication on, `fsync` off. Runs as the
//! `postgres` system user when the tests run as root (PostgreSQL refuses
//! root). Debian package: `postgresql-15`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The superuser the server is made with.
pub const SUPERUSER: &str = "postgres";

/// What the server is started with, besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Refuse connections that do not use TLS (`hostssl` only).
    pub require_tls: bool,
}

/// A running PostgreSQL server, stopped (immediately) when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    running: bool,
}

/// The directory of PostgreSQL 15's programs, or why there is none.
pub fn bin_dir() -> Result<PathBuf, String> {
    let dir = PathBuf::from("/usr/lib/postgresql/15/bin");
    if dir.join("postgres").exists() && dir.join("initdb").exists() {
        Ok(dir)
    } else {
        Err(format!(
            "no {} (Debian package postgresql-15)",
            dir.join("postgres").display()
        ))
    }
}

impl Postgres {
    /// Starts a server with the defaults; `None` (the test skips) when
    /// PostgreSQL is not installed and `CI` is unset.
    pub fn start() -> Option<Postgres> {
        Self::start_with(&Options::default())
    }

    /// Starts a server with `options`; see [`Postgres::start`].
    pub fn start_with(options: &Options) -> Option<Postgres> {
        let bin = bin_dir();
        if !crate::required(
            "PostgreSQL 15",
            bin.as_ref().map(|_| ()).map_err(Clone::clone),
        ) {
            return None;
        }
        let bin = bin.expect("checked");
        let dir = tempfile::Builder::new()
            .prefix("sluice-postgres-")
            .tempdir()
            .expect("a temporary directory");
        let server = Postgres {
            dir,
            bin,
            port: crate::free_port(),
            password: format!("pg-test-{}", std::process::id()),
            running: false,
        };
        server.init(options);
        let mut server = server;
        server.start_again();
        Some(server)
    }

    fn init(&self, options: &Options) {
        let pwfile = self.dir.path().join("pwfile");
        std::fs::write(&pwfile, &self.password).expect("write the password file");
        if let Some((cert, key)) = &options.tls {
            std::fs::copy(cert, self.dir.path().join("server.crt")).expect("copy the cert");
            std::fs::copy(key, self.dir.path().join("server.key")).expect("copy the key");
            set_mode(&self.dir.path().join("server.key"), 0o600);
        }
        give_to_postgres(self.dir.path());
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                SUPERUSER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        check(&out, "initdb");
        let mut conf = format!(
            "\n# sluice tests\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{}'\n\
             fsync = off\n\
             full_page_writes = off\n\
             wal_level = logical\n\
             max_wal_senders = 10\n\
             max_replication_slots = 10\n\
             max_connections = 50\n",
            self.port,
            self.dir.path().display()
        );
        if options.tls.is_some() {
            conf.push_str(&format!(
                "ssl = on\nssl_cert_file = '{0}/server.crt'\nssl_key_file = '{0}/server.key'\n",
                self.dir.path().display()
            ));
        }
        append(&self.data().join("postgresql.conf"), &conf);
        if options.require_tls {
            // Only TLS from 127.0.0.1: the first matching line wins.
            let hba = "hostnossl all all 0.0.0.0/0 reject\n\
                       hostssl all all 127.0.0.1/32 scram-sha-256\n\
                       hostssl replication all 127.0.0.1/32 scram-sha-256\n\
                       local all all trust\n";
            std::fs::write(self.data().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
            give_to_postgres(&self.data().join("pg_hba.conf"));
        }
    }

    /// Starts the server (again, after [`Postgres::stop`]), waiting until
    /// it takes connections.
    pub fn start_again(&mut self) {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl start");
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        self.running = true;
    }

    /// Stops the server (fast: sessions are ended, what was committed is
    /// kept).
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast");
    }

    /// Stops the server as a crash would (`immediate`: no checkpoint; what
    /// was committed survives through the WAL).
    pub fn crash(&mut self) {
        self.pg_ctl_stop("immediate");
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
            .expect("run pg_ctl stop");
        check(&out, "pg_ctl stop");
        self.running = false;
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Runs `sql` with `psql` as the superuser in `database`, over TCP;
    /// returns its output (`-At`: unaligned, tuples only, `|` between
    /// columns). Panics, with psql's message, if it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("psql failed on {sql:?}: {e}"))
    }

    /// [`Postgres::psql`], with the failure returned.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = self
            .client("psql")
            .args(["-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A client program of the server's (`psql`, `pgbench`,
    /// `pg_recvlogical`) set to reach it as the superuser over TCP.
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .env("PGPASSWORD", &self.password)
        .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// Makes a database.
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Makes a login role with `password` that may replicate and that owns
    /// `database`'s public schema (so it may create tables there).
    pub fn create_user(&self, name: &str, password: &str, database: &str) {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE \"{name}\" LOGIN REPLICATION PASSWORD '{}'",
                password.replace('\'', "''")
            ),
        );
        self.psql(
            database,
            &format!(
                "GRANT ALL ON DATABASE \"{database}\" TO \"{name}\"; \
                 ALTER SCHEMA public OWNER TO \"{name}\""
            ),
        );
    }

    /// Makes `user` log in over TCP with `method` (`md5`, `password`…), by
    /// a `pg_hba.conf` line ahead of the others, and reloads the server.
    /// With `md5`, the password is stored as an MD5 hash (create the role
    /// after this call), else the server would answer with SCRAM.
    pub fn allow_login(&self, user: &str, method: &str) {
        let hba = self.data().join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        std::fs::write(
            &hba,
            format!("host all \"{user}\" 127.0.0.1/32 {method}\n{rest}"),
        )
        .expect("write pg_hba.conf");
        give_to_postgres(&hba);
        if method == "md5" {
            self.psql("postgres", "ALTER SYSTEM SET password_encryption = 'md5'");
        }
        self.psql("postgres", "SELECT pg_reload_conf()");
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of the server's programs, run as the `postgres` user when we
    /// are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if crate::is_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", SUPERUSER, "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .output();
        }
    }
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Gives `path` to the `postgres` user when we are root.
fn give_to_postgres(path: &Path) {
    crate::give_to(SUPERUSER, "postgresql-15", path);
}
