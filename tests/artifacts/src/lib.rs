//! The test fixtures (`tests/fixtures/<name>/`), built for `wasm32-wasip2`
//! by this crate's build script: plugins written to misbehave, one way
//! each, named for what they do (`loop-forever`, `memory-bomb`).

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/fixtures.rs"));

/// The component of fixture `name` (its crate name), if there is one.
pub fn fixture(name: &str) -> Option<PathBuf> {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, path)| PathBuf::from(path))
}
