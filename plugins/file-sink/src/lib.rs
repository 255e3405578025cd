//! `file-sink`: writes each record's value as one line into files under a
//! directory the connector is granted, exactly once, even across a crash.
//!
//! Files are named `<topic>-<partition>-<first offset>.txt` after the first
//! record they hold, and roll when they pass `max_file_bytes`.
//!
//! **Exactly once.** On `flush` the sink syncs the file it is writing and
//! then records, per topic partition, the offset of the next record it
//! wants, the file and the file's length, in a small marker file
//! (`.sluice-offset-<topic>-<partition>`) replaced by an atomic rename. On
//! `open` it returns those offsets to the host, which resumes there rather
//! than at its own commits, and it first undoes whatever was written after
//! the marker: the marked file is cut back to its marked length, and files
//! begun after it are removed. So a record is in the output once whether
//! the host stopped cleanly or was killed at any moment. A reader should
//! skip dot-files (the markers); every `.txt` file holds whole lines.
//!
//! With several instances, instance `i` of `n` owns the partitions `p` with
//! `p % n == i` (the host's assignment), and recovers only those.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink, StoredOffset};

/// Config of the `file-sink`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory to write into, as the plugin sees it (the guest side of a
    /// `files` grant), e.g. `/out`.
    pub path: String,
    /// Start a new file once the current one holds this many bytes.
    #[serde(default = "default_max_file_bytes")]
    #[schemars(range(min = 1))]
    pub max_file_bytes: u64,
    /// `"value"`: each line is the record's value. `"json"`: each line is a
    /// JSON object with the record's origin (`topic`, `partition`,
    /// `offset`), `timestamp`, `key`, `value` (both as UTF-8 text, lossy)
    /// and `headers`: for reading a dead-letter topic.
    #[serde(default)]
    pub format: Format,
}

/// How a record becomes a line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The value alone.
    #[default]
    Value,
    /// A JSON object with the record's origin, key, value and headers.
    Json,
}

fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

/// The file being written for one topic partition.
#[derive(Debug)]
struct Current {
    file: BufWriter<File>,
    name: String,
    bytes: u64,
}

/// One topic partition's output.
#[derive(Debug, Default)]
struct Partition {
    current: Option<Current>,
    /// The offset after the last record written.
    next: u64,
    /// Written since the last marker.
    dirty: bool,
}

/// What a marker says: everything before `next` is in the files, the last
/// of them being `file`, `len` bytes long.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    next: u64,
    len: u64,
    file: String,
}

/// The sink's state.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    format: Format,
    /// By (topic, partition), so partitions never interleave.
    partitions: BTreeMap<(String, u32), Partition>,
    /// Offsets found in markers at open.
    stored: Vec<StoredOffset>,
}

fn marker_name(topic: &str, partition: u32) -> String {
    format!(".sluice-offset-{topic}-{partition}")
}

fn data_name(topic: &str, partition: u32, first: u64) -> String {
    format!("{topic}-{partition}-{first:020}.txt")
}

/// Splits `<topic>-<partition>-<first>.txt` (topics may hold `-`).
fn parse_data_name(name: &str) -> Option<(String, u32, u64)> {
    let stem = name.strip_suffix(".txt")?;
    let (rest, first) = stem.rsplit_once('-')?;
    let (topic, partition) = rest.rsplit_once('-')?;
    Some((
        topic.to_owned(),
        partition.parse().ok()?,
        first.parse().ok()?,
    ))
}

/// Splits `.sluice-offset-<topic>-<partition>`.
fn parse_marker_name(name: &str) -> Option<(String, u32)> {
    let rest = name.strip_prefix(".sluice-offset-")?;
    let (topic, partition) = rest.rsplit_once('-')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

fn parse_marker(text: &str) -> Option<Marker> {
    let mut parts = text.trim_end_matches('\n').splitn(3, ' ');
    Some(Marker {
        next: parts.next()?.parse().ok()?,
        len: parts.next()?.parse().ok()?,
        file: parts.next()?.to_owned(),
    })
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::retriable(format!("cannot {what} {}: {e}", path.display()))
}

impl FileSink {
    /// Reads the markers of the partitions this instance owns, and cuts
    /// back what was written after them. The other instances' files are
    /// left alone: they may be writing them meanwhile (a marker renamed
    /// into place vanishes from the listing under this one's eyes).
    fn recover(&mut self, ctx: &Context) -> Result<(), Error> {
        let owned = |p: u32| ctx.count <= 1 || p % ctx.count == ctx.index;
        let mut markers = BTreeMap::new();
        let mut data = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io("list", &self.dir, e))?;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                // Listed, then renamed or removed (by another instance:
                // nothing this one owns changes while it opens).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io("list", &self.dir, e)),
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(tmp) = name
                .strip_prefix(".sluice-offset-")
                .and_then(|n| n.strip_suffix(".tmp"))
            {
                if parse_marker_name(&format!(".sluice-offset-{tmp}"))
                    .is_some_and(|(_, p)| owned(p))
                {
                    // A marker of its own that was never renamed into place.
                    let _ = std::fs::remove_file(self.dir.join(&name));
                }
            } else if let Some(key) = parse_marker_name(&name) {
                if !owned(key.1) {
                    continue;
                }
                let path = self.dir.join(&name);
                let text = std::fs::read_to_string(&path).map_err(|e| io("read", &path, e))?;
                let marker = parse_marker(&text).ok_or_else(|| {
                    Error::fatal(format!("{} is not a file-sink marker", path.display()))
                })?;
                markers.insert(key, marker);
            } else if let Some(parsed) = parse_data_name(&name)
                && owned(parsed.1)
            {
                data.push((parsed, name));
            }
        }
        for ((topic, partition, first), name) in data {
            let marker = markers.get(&(topic.clone(), partition));
            let path = self.dir.join(&name);
            match marker {
                Some(m) if m.file == name => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(|e| io("open", &path, e))?;
                    file.set_len(m.len).map_err(|e| io("cut back", &path, e))?;
                    file.sync_all().map_err(|e| io("sync", &path, e))?;
                }
                Some(m) if first < m.next => {} // complete, before the marker
                _ => {
                    // Begun after the last marker: none of it was committed.
                    std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                }
            }
        }
        for ((topic, partition), m) in markers {
            self.stored.push(StoredOffset {
                topic: topic.clone(),
                partition,
                next_offset: m.next,
            });
            if m.len < self.max_file_bytes {
                // Go on appending to the marked file.
                let path = self.dir.join(&m.file);
                if let Ok(file) = OpenOptions::new().append(true).open(&path) {
                    self.partitions.insert(
                        (topic, partition),
                        Partition {
                            current: Some(Current {
                                file: BufWriter::with_capacity(1 << 20, file),
                                name: m.file.clone(),
                                bytes: m.len,
                            }),
                            next: m.next,
                            dirty: false,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// The file for a batch from `origin`: the partition's current one, or
    /// a new one when there is none or it is full.
    fn file_for(&mut self, origin: &Origin) -> Result<&mut Partition, Error> {
        let key = (origin.topic.clone(), origin.partition);
        let p = self.partitions.entry(key).or_default();
        if p.current
            .as_ref()
            .is_some_and(|c| c.bytes >= self.max_file_bytes)
        {
            let mut full = p.current.take().expect("checked above");
            sync(&self.dir, &mut full)?;
        }
        if p.current.is_none() {
            let name = data_name(&origin.topic, origin.partition, origin.first_offset);
            let path = self.dir.join(&name);
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            p.current = Some(Current {
                file: BufWriter::with_capacity(1 << 20, file),
                name,
                bytes: 0,
            });
        }
        Ok(p)
    }
}

fn sync(dir: &Path, c: &mut Current) -> Result<(), Error> {
    c.file
        .flush()
        .and_then(|()| c.file.get_ref().sync_all())
        .map_err(|e| io("flush", &dir.join(&c.name), e))
}

/// Replaces the marker of a partition: written aside, synced, renamed.
fn write_marker(dir: &Path, topic: &str, partition: u32, m: &Marker) -> Result<(), Error> {
    let name = marker_name(topic, partition);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| io("create", &tmp, e))?;
    writeln!(f, "{} {} {}", m.next, m.len, m.file)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    let path = dir.join(&name);
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into", &path, e))?;
    // Make the rename itself durable where the platform allows it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Sink for FileSink {
    type Config = Config;

    fn open(config: Config, ctx: &Context) -> Result<Self, Error> {
        let dir = PathBuf::from(&config.path);
        std::fs::read_dir(&dir).map_err(|e| {
            Error::invalid_config(format!(
                "cannot open directory {}: {e} (is it granted under [connector.grants] files?)",
                dir.display()
            ))
        })?;
        let mut sink = FileSink {
            dir,
            max_file_bytes: config.max_file_bytes,
            format: config.format,
            partitions: BTreeMap::new(),
            stored: Vec::new(),
        };
        sink.recover(ctx)?;
        Ok(sink)
    }

    fn stored_offsets(&self) -> Vec<StoredOffset> {
        self.stored.clone()
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        _rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let dir = self.dir.clone();
        let format = self.format;
        let p = self.file_for(origin)?;
        let current = p.current.as_mut().expect("file_for opens one");
        let mut line = Vec::new();
        for (i, record) in batch.iter().enumerate() {
            let value = match format {
                Format::Value => record.value,
                Format::Json => {
                    line.clear();
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    let headers: serde_json::Map<String, serde_json::Value> = record
                        .headers()
                        .map(|(k, v)| (k.to_owned(), text(v).into()))
                        .collect();
                    let json = serde_json::json!({
                        "topic": origin.topic,
                        "partition": origin.partition,
                        "offset": origin.first_offset + i as u64,
                        "timestamp": record.timestamp,
                        "key": record.key.map(text),
                        "value": text(record.value),
                        "headers": headers,
                    });
                    serde_json::to_writer(&mut line, &json)
                        .map_err(|e| Error::fatal(format!("cannot encode a record: {e}")))?;
                    &line
                }
            };
            current
                .file
                .write_all(value)
                .and_then(|()| current.file.write_all(b"\n"))
                .map_err(|e| io("write", &dir.join(&current.name), e))?;
            current.bytes += value.len() as u64 + 1;
        }
        p.next = origin.first_offset + batch.len() as u64;
        p.dirty = true;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        for ((topic, partition), p) in &mut self.partitions {
            if !p.dirty {
                continue;
            }
            let current = p.current.as_mut().expect("a written partition has a file");
            sync(&self.dir, current)?;
            let marker = Marker {
                next: p.next,
                len: current.bytes,
                file: current.name.clone(),
            };
            write_marker(&self.dir, topic, *partition, &marker)?;
            p.dirty = false;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        self.flush()
    }
}

sluice_sdk::export_sink!(FileSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_with_dashes_in_topics() {
        let name = data_name("my-topic", 3, 42);
        assert_eq!(parse_data_name(&name), Some(("my-topic".to_owned(), 3, 42)));
        assert_eq!(
            parse_marker_name(&marker_name("a-b", 7)),
            Some(("a-b".to_owned(), 7))
        );
        let m = Marker {
            next: 10,
            len: 20,
            file: name,
        };
        let text = format!("{} {} {}\n", m.next, m.len, m.file);
        assert_eq!(parse_marker(&text), Some(m));
    }

    /// Instance 0 of 2 opening while instance 1 is between writing its
    /// marker aside and renaming it: it cuts back only what it owns.
    #[test]
    fn an_instance_recovers_its_own_partitions_and_leaves_the_others_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let (own, other) = (data_name("t", 0, 0), data_name("t", 1, 0));
        put(&own, "a\nb\nc\n");
        put(&other, "x\ny\nz\n");
        put(&data_name("t", 0, 3), "d\n"); // begun after its marker
        put(&marker_name("t", 0), &format!("2 4 {own}\n"));
        put(&marker_name("t", 1), &format!("1 2 {other}\n"));
        put(&format!("{}.tmp", marker_name("t", 0)), "3 6 ");
        put(
            &format!("{}.tmp", marker_name("t", 1)),
            &format!("3 6 {other}\n"),
        );
        let config = Config {
            path: dir.path().to_str().unwrap().to_owned(),
            max_file_bytes: default_max_file_bytes(),
            format: Format::Value,
        };
        let ctx = Context {
            connector: "files".to_owned(),
            index: 0,
            count: 2,
        };
        let sink = FileSink::open(config, &ctx).unwrap();
        let stored: Vec<_> = sink
            .stored_offsets()
            .into_iter()
            .map(|o| (o.topic, o.partition, o.next_offset))
            .collect();
        assert_eq!(stored, [("t".to_owned(), 0, 2)]);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec![
            marker_name("t", 0),
            marker_name("t", 1),
            format!("{}.tmp", marker_name("t", 1)),
            own.clone(),
            other.clone(),
        ];
        want.sort();
        assert_eq!(names, want);
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read(&own), "a\nb\n");
        assert_eq!(read(&other), "x\ny\nz\n");
    }
}
