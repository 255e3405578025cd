//! Builds every crate under `tests/fixtures/` for `wasm32-wasip2` and tells
//! the library where the components are. Only the tests depend on this
//! crate, so building the host alone never builds a fixture.

use std::env;
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let fixtures = sluice_plugin_build::crates_under(&manifest_dir, "tests/fixtures");
    let names: Vec<&str> = fixtures.iter().map(String::as_str).collect();
    let dir = sluice_plugin_build::build(&manifest_dir, &names);

    let mut code = String::from("/// Every fixture: (crate name, path of its component).\n");
    code.push_str("pub const FIXTURES: &[(&str, &str)] = &[\n");
    for name in &names {
        let path = sluice_plugin_build::wasm_path(&dir, name);
        writeln!(code, "    ({name:?}, {:?}),", path.display().to_string())
            .expect("writing to a String");
    }
    code.push_str("];\n");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    std::fs::write(out_dir.join("fixtures.rs"), code).expect("write fixtures.rs");
}
