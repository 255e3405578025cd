//! `file-sink`: writes each record's value as one line into files under a
//! directory the connector is granted.
//!
//! Files are named `<topic>-<partition>-<first offset>.txt` after the first
//! record they hold, and roll when they pass `max_file_bytes`. `flush` writes
//! out the buffer and syncs the file, so what the sink reports flushed is on
//! disk. After a crash the host redelivers from its last committed offset;
//! a file that began with uncommitted records is then written again under
//! the same name, but records appended to an older file after its last
//! flush can appear twice. (Storing the sink's own offsets with its files,
//! for exactly once, is planned with the crash-safety work.)

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};

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
}

fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

/// An open output file.
#[derive(Debug)]
struct Current {
    file: BufWriter<File>,
    path: PathBuf,
    bytes: u64,
}

/// The sink's state.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    /// One open file per (topic, partition), so partitions never interleave.
    current: Vec<((String, u32), Current)>,
}

impl FileSink {
    fn file_for(&mut self, origin: &Origin) -> Result<&mut Current, Error> {
        let key = (origin.topic.clone(), origin.partition);
        let full = self
            .current
            .iter()
            .position(|(k, c)| *k == key && c.bytes >= self.max_file_bytes);
        if let Some(i) = full {
            let (_, mut done) = self.current.swap_remove(i);
            finish(&mut done)?;
        }
        let i = match self.current.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let name = format!(
                    "{}-{}-{:020}.txt",
                    origin.topic, origin.partition, origin.first_offset
                );
                let path = self.dir.join(name);
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| Error::fatal(format!("cannot create {}: {e}", path.display())))?;
                self.current.push((
                    key,
                    Current {
                        file: BufWriter::with_capacity(1 << 20, file),
                        path,
                        bytes: 0,
                    },
                ));
                self.current.len() - 1
            }
        };
        Ok(&mut self.current[i].1)
    }
}

fn finish(c: &mut Current) -> Result<(), Error> {
    c.file
        .flush()
        .and_then(|()| c.file.get_ref().sync_all())
        .map_err(|e| Error::retriable(format!("cannot flush {}: {e}", c.path.display())))
}

impl Sink for FileSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        let dir = PathBuf::from(&config.path);
        std::fs::read_dir(&dir).map_err(|e| {
            Error::invalid_config(format!(
                "cannot open directory {}: {e} (is it granted under [connector.grants] files?)",
                dir.display()
            ))
        })?;
        Ok(FileSink {
            dir,
            max_file_bytes: config.max_file_bytes,
            current: Vec::new(),
        })
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        _rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let current = self.file_for(origin)?;
        for record in batch.iter() {
            current
                .file
                .write_all(record.value)
                .and_then(|()| current.file.write_all(b"\n"))
                .map_err(|e| {
                    Error::retriable(format!("cannot write {}: {e}", current.path.display()))
                })?;
            current.bytes += record.value.len() as u64 + 1;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        for (_, c) in &mut self.current {
            finish(c)?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        self.flush()
    }
}

sluice_sdk::export_sink!(FileSink);
