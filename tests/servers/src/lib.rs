//! Real servers for the integration tests and the bench, started the way
//! STYLE.md asks: by the test itself, in a temporary directory, on a
//! 127.0.0.1 port of its own, and stopped when the handle is dropped.
//!
//! A server whose programs are not installed makes [`required`] return
//! `false` (the test skips, saying so) only where `CI` is unset; under
//! `CI=true` it fails the test, naming the Debian package to install
//! (`.ci/run` installs them).

#![allow(clippy::print_stderr)]

pub mod postgres;

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
