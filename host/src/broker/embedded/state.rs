//! Small durable files beside the log: committed consumer-group offsets
//! and the source positions of frames that retention removed. Both are
//! JSON, rewritten whole through a temporary file, synced, and renamed into
//! place, so a crash leaves either the old file or the new one. (Plugin
//! state is in `plugin_state.rs`: it is written a put at a time.)

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::super::BrokerError;

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    let io = |what| {
        move |source| BrokerError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("cannot create folder for"))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io("cannot write"))?;
        f.write_all(bytes).map_err(io("cannot write"))?;
        f.sync_all().map_err(io("cannot sync"))?;
    }
    std::fs::rename(&tmp, path).map_err(io("cannot replace"))?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename itself durable; not every file system allows it.
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the stored source positions, if any (see [`store_positions`]).
pub fn load_positions(path: &Path) -> Result<HashMap<String, Vec<u8>>, BrokerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| BrokerError::Corrupt {
            path: path.to_path_buf(),
            byte: 0,
            why: format!("stored source positions are not valid JSON: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(source) => Err(BrokerError::Io {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Stores every source's position, before retention deletes the frames
/// that carry some of them.
pub fn store_positions(
    path: &Path,
    positions: &HashMap<String, Vec<u8>>,
) -> Result<(), BrokerError> {
    let json = serde_json::to_vec(positions).expect("a map of byte lists serializes");
    write_atomic(path, &json)
}

/// Reads every `<group>.json` in `dir`.
pub fn load_groups(dir: &Path) -> Result<HashMap<String, BTreeMap<String, u64>>, BrokerError> {
    let mut groups = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(groups);
    };
    for e in entries.flatten() {
        let path = e.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).map_err(|source| BrokerError::Io {
            what: "cannot read",
            path: path.clone(),
            source,
        })?;
        let offsets = serde_json::from_str(&text).map_err(|e| BrokerError::Corrupt {
            path: path.clone(),
            byte: 0,
            why: format!("committed offsets are not valid JSON: {e}"),
        })?;
        groups.insert(name.to_owned(), offsets);
    }
    Ok(groups)
}

/// Stores one group's offsets.
pub fn store_group(
    dir: &Path,
    group: &str,
    offsets: &BTreeMap<String, u64>,
) -> Result<(), BrokerError> {
    let json = serde_json::to_vec_pretty(offsets).expect("a map of numbers serializes");
    write_atomic(&dir.join(format!("{group}.json")), &json)
}
