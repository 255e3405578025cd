//! A connector's plugin state (the `state-get`/`state-put` imports): a
//! small durable key/value map per connector, bounded by its `state` grant.
//!
//! On disk it is `<dir>/<connector>.state`, an append-only file of records:
//!
//! ```text
//! crc32c (u32 LE, over the rest) | key length (u32 LE) | value length (u32 LE) | key | value
//! ```
//!
//! A put appends one record and syncs it, so it costs about the size of its
//! value, never of the whole map (the previous format, one JSON document
//! rewritten on every put, cost the whole map each time: a plugin could make
//! every put rewrite gigabytes). On open the records are replayed in order,
//! later ones winning; a torn tail (a crash in the middle of an append) is
//! cut off. Once the file holds more than twice the live data plus
//! [`COMPACT_SLACK`], it is rewritten with only the live records, through a
//! temporary file and a rename. A state an older Sluice stored as
//! `<connector>.json` is read once and rewritten in this form.
//!
//! The live map is held in memory too; the quota bounds it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::super::{BrokerError, StateError, StateQuota, StateStore, keys_in};
use super::state::write_atomic;

/// Bytes of dead records a state file may carry before it is compacted, on
/// top of as many as it holds live.
pub const COMPACT_SLACK: u64 = 1 << 20;

/// A record's head: checksum, key length, value length.
const HEAD: usize = 12;

/// One connector's durable key/value state.
#[derive(Debug)]
pub struct ConnectorState {
    connector: String,
    path: PathBuf,
    quota: StateQuota,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Bytes in the file (all whole records).
    len: u64,
    values: BTreeMap<String, Vec<u8>>,
    /// Bytes of keys and values in `values`.
    live: u64,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BrokerError {
    let path = path.to_path_buf();
    move |source| BrokerError::Io { what, path, source }
}

fn encode(key: &str, value: &[u8]) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEAD + key.len() + value.len());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&(key.len() as u32).to_le_bytes());
    rec.extend_from_slice(&(value.len() as u32).to_le_bytes());
    rec.extend_from_slice(key.as_bytes());
    rec.extend_from_slice(value);
    let crc = crc32c::crc32c(&rec[4..]);
    rec[..4].copy_from_slice(&crc.to_le_bytes());
    rec
}

/// Replays the records of `bytes`; returns the map and the length of the
/// whole records (anything after is a torn tail).
fn replay(bytes: &[u8]) -> (BTreeMap<String, Vec<u8>>, u64) {
    let mut values = BTreeMap::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + HEAD) {
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().expect("4 bytes"));
        let (crc, klen, vlen) = (word(0), word(4) as usize, word(8) as usize);
        let end = at + HEAD + klen + vlen;
        let Some(body) = bytes.get(at + 4..end) else {
            break;
        };
        if crc32c::crc32c(body) != crc {
            break;
        }
        let Ok(key) = std::str::from_utf8(&body[8..8 + klen]) else {
            break;
        };
        values.insert(key.to_owned(), body[8 + klen..].to_vec());
        at = end;
    }
    (values, at as u64)
}

fn live_bytes(values: &BTreeMap<String, Vec<u8>>) -> u64 {
    values.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
}

impl ConnectorState {
    /// Opens (or creates) the state of `connector` in `dir`, bounded by
    /// `quota`. A state stored before over its quota stays readable; only
    /// puts are refused until it shrinks.
    pub fn open(dir: &Path, connector: &str, quota: StateQuota) -> Result<Self, BrokerError> {
        std::fs::create_dir_all(dir).map_err(io("cannot create folder", dir))?;
        let path = dir.join(format!("{connector}.state"));
        let legacy = dir.join(format!("{connector}.json"));
        if !path.exists() && legacy.exists() {
            migrate(&legacy, &path)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io("cannot read", &path))?;
        let (values, len) = replay(&bytes);
        if len < bytes.len() as u64 {
            tracing::warn!(
                connector,
                path = %path.display(),
                cut = bytes.len() as u64 - len,
                "plugin state had a torn last write (a crash mid-put); cut back to the last whole one"
            );
            file.set_len(len).map_err(io("cannot cut", &path))?;
            file.sync_data().map_err(io("cannot sync", &path))?;
        }
        let live = live_bytes(&values);
        Ok(ConnectorState {
            connector: connector.to_owned(),
            path,
            quota,
            inner: Mutex::new(Inner {
                file,
                len,
                values,
                live,
            }),
        })
    }

    /// Rewrites the file with only the live records.
    fn compact(&self, inner: &mut Inner) -> Result<(), BrokerError> {
        let mut all = Vec::with_capacity(inner.live as usize + HEAD * inner.values.len());
        for (k, v) in &inner.values {
            all.extend_from_slice(&encode(k, v));
        }
        write_atomic(&self.path, &all)?;
        inner.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io("cannot open", &self.path))?;
        inner.len = all.len() as u64;
        Ok(())
    }
}

/// What the state of `connector` in `dir` holds, read without changing
/// anything: no file is made, migrated or cut (a torn tail is left for the
/// next open to cut, and not read).
pub fn read(dir: &Path, connector: &str) -> Result<BTreeMap<String, Vec<u8>>, BrokerError> {
    let path = dir.join(format!("{connector}.state"));
    match std::fs::read(&path) {
        Ok(bytes) => Ok(replay(&bytes).0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let legacy = dir.join(format!("{connector}.json"));
            match std::fs::read_to_string(&legacy) {
                Ok(text) => serde_json::from_str(&text).map_err(|e| BrokerError::Corrupt {
                    path: legacy,
                    byte: 0,
                    why: format!("connector state is not valid JSON: {e}"),
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
                Err(e) => Err(io("cannot read", &legacy)(e)),
            }
        }
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

/// Reads a JSON state of an older Sluice and stores it as records.
fn migrate(legacy: &Path, path: &Path) -> Result<(), BrokerError> {
    let text = std::fs::read_to_string(legacy).map_err(io("cannot read", legacy))?;
    let values: BTreeMap<String, Vec<u8>> =
        serde_json::from_str(&text).map_err(|e| BrokerError::Corrupt {
            path: legacy.to_path_buf(),
            byte: 0,
            why: format!("connector state is not valid JSON: {e}"),
        })?;
    let mut all = Vec::new();
    for (k, v) in &values {
        all.extend_from_slice(&encode(k, v));
    }
    write_atomic(path, &all)?;
    std::fs::remove_file(legacy).map_err(io("cannot remove", legacy))
}

impl StateStore for ConnectorState {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let inner = self.inner.lock().expect("state lock");
        inner.values.get(key).cloned()
    }

    fn keys(&self, prefix: &str) -> Vec<(String, usize)> {
        keys_in(&self.inner.lock().expect("state lock").values, prefix)
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        let mut inner = self.inner.lock().expect("state lock");
        let bytes = self
            .quota
            .admit(&self.connector, &inner.values, inner.live, key, value)?;
        let record = encode(key, value);
        let before = inner.len;
        let written = inner
            .file
            .write_all(&record)
            .and_then(|()| inner.file.sync_data());
        if let Err(source) = written {
            // Cut back what part of the record got in, so the file holds
            // whole records only (a full disk pauses, it does not corrupt).
            let _ = inner.file.set_len(before);
            return Err(StateError::Unavailable {
                connector: self.connector.clone(),
                source: BrokerError::Io {
                    what: "cannot write",
                    path: self.path.clone(),
                    source,
                },
            });
        }
        inner.len += record.len() as u64;
        inner.values.insert(key.to_owned(), value.to_vec());
        inner.live = bytes;
        if inner.len > 2 * inner.live + COMPACT_SLACK {
            // The put is durable already; a failed compaction only leaves
            // the file longer than it needs to be.
            if let Err(e) = self.compact(&mut inner) {
                tracing::warn!(connector = %self.connector, error = %e, "cannot compact plugin state");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const ROOMY: StateQuota = StateQuota {
        bytes: 64 << 20,
        keys: 10_000,
    };

    #[test]
    fn puts_survive_a_reopen_and_the_last_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        s.put("a", b"1").unwrap();
        s.put("b", b"2").unwrap();
        s.put("a", b"3").unwrap();
        drop(s);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("a").unwrap(), b"3");
        assert_eq!(s.get("b").unwrap(), b"2");
        assert_eq!(s.get("c"), None);
    }

    #[test]
    fn a_put_appends_its_record_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        s.put("big", &vec![7; 100_000]).unwrap();
        let path = dir.path().join("c.state");
        let after_big = std::fs::metadata(&path).unwrap().len();
        s.put("small", b"x").unwrap();
        let grew = std::fs::metadata(&path).unwrap().len() - after_big;
        assert_eq!(grew, (HEAD + "small".len() + 1) as u64);
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        s.put("kept", b"yes").unwrap();
        drop(s);
        let path = dir.path().join("c.state");
        let whole = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode("torn", b"value")[..10]).unwrap();
        drop(f);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("kept").unwrap(), b"yes");
        assert_eq!(s.get("torn"), None);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        s.put("after", b"ok").unwrap();
        drop(s);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("after").unwrap(), b"ok");
    }

    #[test]
    fn reading_a_state_changes_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let nowhere = dir.path().join("state");
        assert!(read(&nowhere, "c").unwrap().is_empty());
        assert!(!nowhere.exists(), "no folder made");
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        s.put("kept", b"yes").unwrap();
        drop(s);
        let path = dir.path().join("c.state");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&encode("torn", b"value")[..10]).unwrap();
        drop(f);
        let torn = std::fs::metadata(&path).unwrap().len();
        let values = read(dir.path(), "c").unwrap();
        assert_eq!(values.len(), 1);
        assert_eq!(values["kept"], b"yes");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), torn, "not cut");
    }

    #[test]
    fn a_put_past_the_quota_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let quota = StateQuota {
            bytes: 1000,
            keys: 3,
        };
        let s = ConnectorState::open(dir.path(), "c", quota).unwrap();
        s.put("a", &[0; 500]).unwrap();
        let err = s.put("b", &[0; 500]).unwrap_err();
        assert!(
            matches!(err, StateError::QuotaExceeded { bytes: 1002, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("state grant"), "{err}");
        assert_eq!(s.get("b"), None);
        // Replacing a value counts the new one only.
        s.put("a", &[1; 900]).unwrap();
        s.put("b", b"").unwrap();
        s.put("c", b"").unwrap();
        let err = s.put("d", b"").unwrap_err();
        assert!(
            matches!(err, StateError::QuotaExceeded { keys: 4, .. }),
            "{err}"
        );
        s.put("c", b"1").unwrap();
    }

    #[test]
    fn a_put_the_disk_refuses_is_unavailable_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        s.put("k", b"old").unwrap();
        let path = dir.path().join("c.state");
        let len = std::fs::metadata(&path).unwrap().len();
        // A handle that cannot write stands for a disk that refuses.
        s.inner.lock().unwrap().file = File::open(&path).unwrap();
        let err = s.put("k", b"new").unwrap_err();
        assert!(matches!(err, StateError::Unavailable { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("cannot store the state of connector \"c\""),
            "{err}"
        );
        assert_eq!(s.get("k").unwrap(), b"old");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        drop(s);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("k").unwrap(), b"old");
    }

    #[test]
    fn dead_records_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        for i in 0..100u8 {
            s.put("k", &vec![i; 64 << 10]).unwrap();
        }
        let len = std::fs::metadata(dir.path().join("c.state")).unwrap().len();
        assert!(len <= 2 * (64 << 10) + COMPACT_SLACK + (64 << 10), "{len}");
        drop(s);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("k").unwrap(), vec![99; 64 << 10]);
    }

    #[test]
    fn a_json_state_of_an_older_sluice_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.json"), r#"{"cursor":[1,2,3]}"#).unwrap();
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("cursor").unwrap(), [1, 2, 3]);
        assert!(!dir.path().join("c.json").exists());
        drop(s);
        let s = ConnectorState::open(dir.path(), "c", ROOMY).unwrap();
        assert_eq!(s.get("cursor").unwrap(), [1, 2, 3]);
    }
}
