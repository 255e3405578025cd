//! Builds guest crates of this workspace for `wasm32-wasip2`, from a build
//! script (the pattern of wasmtime's `test-programs/artifacts`).
//!
//! Two build scripts use it: the host's, for the plugins compiled into the
//! `sluice` binary, and `sluice-test-artifacts`', for the misbehaving
//! fixtures the integration tests load. Plugins are never committed as
//! binaries.
//!
//! The guests are built by a nested `cargo build` into their own target
//! directory (`target/plugins`, or `$SLUICE_PLUGIN_TARGET_DIR`), always with
//! the `plugin` profile (release, stripped, LTO), whatever profile the
//! caller is built with: a debug-built plugin is ten times slower and
//! nothing here debugs plugins.

// A build script's only way to speak is to print.
#![allow(clippy::print_stdout)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every plugin is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The workspace folders whose change means the guests must be rebuilt.
const WATCHED: &[&str] = &[
    "wit",
    "sdk",
    "batch",
    "plugins",
    "tests/fixtures",
    "tests/probe",
    "Cargo.toml",
    "Cargo.lock",
    ".cargo",
];

/// Builds `crates` (package names) for [`TARGET`] and returns the folder
/// that holds their components (`<crate_name>.wasm`, see [`wasm_path`]).
///
/// `manifest_dir` is the calling build script's `CARGO_MANIFEST_DIR`, one
/// folder below the workspace root. Panics with the failing command when
/// the build fails: a build script has nothing better to do.
pub fn build(manifest_dir: &Path, crates: &[&str]) -> PathBuf {
    let root = workspace_root(manifest_dir);
    for watched in WATCHED {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SLUICE_PLUGIN_TARGET_DIR");

    ensure_wasm_target();

    let target_dir = env::var_os("SLUICE_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cargo_target_dir(&root).join("plugins"));
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--profile", "plugin", "--target", TARGET])
        .env("CARGO_TARGET_DIR", &target_dir)
        // Host-side flags and wrappers (clippy's among them) have no business
        // in a wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET");
    for krate in crates {
        cmd.args(["-p", krate]);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    assert!(
        status.success(),
        "building the plugins for {TARGET} failed (command: {cmd:?}); see the errors above"
    );
    let dir = target_dir.join(TARGET).join("plugin");
    for krate in crates {
        let path = wasm_path(&dir, krate);
        assert!(
            path.exists(),
            "expected {} after the plugin build",
            path.display()
        );
    }
    dir
}

/// Where the component of crate `krate` is in a folder [`build`] returned.
pub fn wasm_path(dir: &Path, krate: &str) -> PathBuf {
    dir.join(format!("{}.wasm", krate.replace('-', "_")))
}

/// The guest crates under `folder` (relative to the workspace root): every
/// sub-folder with a `Cargo.toml`, each crate named as its folder, sorted.
pub fn crates_under(manifest_dir: &Path, folder: &str) -> Vec<String> {
    let dir = workspace_root(manifest_dir).join(folder);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn workspace_root(manifest_dir: &Path) -> PathBuf {
    let mut dir = manifest_dir;
    // The workspace root is the first folder above that has `wit/`.
    while !dir.join("wit").is_dir() {
        dir = dir
            .parent()
            .unwrap_or_else(|| panic!("no workspace root above {}", manifest_dir.display()));
    }
    dir.to_path_buf()
}

/// The workspace's target directory, honouring `CARGO_TARGET_DIR`.
fn cargo_target_dir(root: &Path) -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                root.join(dir)
            }
        }
        None => root.join("target"),
    }
}

/// Makes sure the Rust standard library for `wasm32-wasip2` is installed:
/// installs it with rustup if it can, and otherwise stops with the command
/// that would.
fn ensure_wasm_target() {
    if wasm_target_installed() {
        return;
    }
    println!(
        "cargo:warning=installing the {TARGET} target with rustup (needed to build the plugins)"
    );
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = env::var_os("RUSTUP_TOOLCHAIN") {
        rustup.arg("--toolchain").arg(toolchain);
    }
    let installed = rustup.status().map(|s| s.success()).unwrap_or(false);
    if !installed || !wasm_target_installed() {
        panic!(
            "the Rust target {TARGET} is not installed and rustup could not install it.\n\
             Run this, then build again:\n\n    rustup target add {TARGET}\n"
        );
    }
}

fn wasm_target_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
    else {
        return false;
    };
    let libdir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success()
        && std::fs::read_dir(&libdir)
            .map(|mut entries| {
                entries
                    .any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd")))
            })
            .unwrap_or(false)
}

/// The contract's version, read from the `package sluice:connector@X;` line
/// of `wit/connector.wit`: the one place it is written. The host's build
/// script and the SDK's export macros both take it from here.
///
/// Panics when the text has no such line: the build cannot go on without it.
pub fn contract_version(wit: &str) -> &str {
    wit.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("package sluice:connector@")?
                .strip_suffix(';')
        })
        .expect("wit/connector.wit declares `package sluice:connector@<version>;`")
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract_version_is_read_from_the_package_line() {
        let wit = "/// docs\npackage sluice:connector@0.3.1;\n\ninterface types {}\n";
        assert_eq!(super::contract_version(wit), "0.3.1");
        let real = include_str!("../../wit/connector.wit");
        assert!(super::contract_version(real).starts_with("0."));
    }
}
