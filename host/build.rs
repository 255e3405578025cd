//! Builds the built-in plugins and the test fixtures for `wasm32-wasip2`, so
//! that a plain `cargo run` or `cargo test` has them (the pattern of
//! wasmtime's `test-programs/artifacts`). Plugins are never committed as
//! binaries.
//!
//! The plugins are built by a nested `cargo build` into their own target
//! directory (`target/plugins`), always with the `plugin` profile (release,
//! stripped), whatever profile the host is built with: a debug-built plugin
//! is ten times slower and nothing here debugs plugins.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Plugins compiled into the `sluice` binary, by crate name.
const BUILTIN: &[&str] = &["blackhole", "datagen", "file-sink", "file-source", "print"];

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    for watched in [
        "wit",
        "sdk",
        "batch",
        "plugins",
        "tests/fixtures",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    ensure_wasm_target();

    let target_dir = env::var_os("SLUICE_PLUGIN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cargo_target_dir(&root).join("plugins"));
    println!("cargo:rerun-if-env-changed=SLUICE_PLUGIN_TARGET_DIR");

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
    for krate in BUILTIN
        .iter()
        .map(|s| (*s).to_owned())
        .chain(fixtures(&root))
    {
        cmd.args(["-p", &krate]);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the plugins: {e}"));
    assert!(
        status.success(),
        "building the plugins for {TARGET} failed (command: {cmd:?}); see the errors above"
    );

    let wasm_dir = target_dir.join(TARGET).join("plugin");
    let mut code = String::from(
        "/// Plugins compiled into the binary: (name, component bytes).\n\
         pub const BUILTIN: &[(&str, &[u8])] = &[\n",
    );
    for name in BUILTIN {
        let path = wasm_path(&wasm_dir, name);
        writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .expect("writing to a String");
    }
    code.push_str("];\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("builtin_plugins.rs"), code).expect("write builtin_plugins.rs");

    // Integration tests find fixtures (and built-ins, by path) here.
    println!(
        "cargo:rustc-env=SLUICE_PLUGIN_WASM_DIR={}",
        wasm_dir.display()
    );
}

/// The guest crates that exist only for tests: every folder under
/// `tests/fixtures/` (each crate is named as its folder).
fn fixtures(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("tests/fixtures"))
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn wasm_path(dir: &Path, krate: &str) -> PathBuf {
    let path = dir.join(format!("{}.wasm", krate.replace('-', "_")));
    assert!(
        path.exists(),
        "expected {} after the plugin build",
        path.display()
    );
    path
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
