//! Real servers (PostgreSQL, MariaDB, Kafka: librdkafka's mock cluster and
//! tansu) for the integration tests and the bench, started the way
//! STYLE.md asks: by the test itself, in a temporary directory, on a
//! 127.0.0.1 port of its own, and stopped when the handle is dropped.
//!
//! A server whose programs are not installed makes [`required`] return
//! `false` (the test skips, saying so) only where `CI` is unset; under
//! `CI=true` it fails the test, naming the Debian package to install
//! (`.ci/run` installs them).

#![allow(clippy::print_stderr)]

pub mod activemq;
pub mod kafka;
pub mod mariadb;
pub mod mosquitto;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;
pub mod tansu;

use std::ffi::CString;
use std::path::Path;

/// Whether a server the test needs is there: `Ok` as is; `Err(why)` skips
/// the test (returns `false`, saying why) where `CI` is unset, and panics
/// under `CI`.
pub fn required(what: &str, found: Result<(), String>) -> bool {
    match found {
        Ok(()) => true,
        Err(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "{what} is required under CI: {why}"
            );
            eprintln!("skipped: {what} is not installed ({why})");
            false
        }
    }
}

/// Waits until `child` (the server `what`) accepts connections on every one
/// of `ports` on 127.0.0.1, for at most `within`. Panics if it does not, or
/// if it exits first, with its last words (`log`).
pub(crate) fn wait_listening(
    child: &mut std::process::Child,
    what: &str,
    ports: &[u16],
    within: std::time::Duration,
    log: impl Fn() -> String,
) {
    use std::net::TcpStream;
    let deadline = std::time::Instant::now() + within;
    while ports
        .iter()
        .any(|&port| TcpStream::connect(("127.0.0.1", port)).is_err())
    {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}: {}", log());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not listen in {} s",
            within.as_secs()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// True when this process runs as root (CI does): servers that refuse
/// root (PostgreSQL) then run as their own system user.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `path` (and what is in it) to the system user `user` (made by the
/// Debian package `package`) when we are root, so that a server run as
/// that user can use it.
pub(crate) fn give_to(user: &str, package: &str, path: &Path) {
    if !is_root() {
        return;
    }
    let name = CString::new(user).expect("no NUL");
    // SAFETY: getpwnam gets a NUL-terminated name and returns a pointer to
    // static storage or null; we read two fields at once.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        assert!(
            !pw.is_null(),
            "no system user {user} (made by the Debian package {package})"
        );
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
        if p.is_dir() {
            for entry in std::fs::read_dir(&p).expect("read_dir") {
                todo.push(entry.expect("a directory entry").path());
            }
        }
    }
}
