//! `file-source`: reads lines from the files of a directory the connector is
//! granted, in file-name order.
//!
//! Each line becomes one record (without its newline). The position is the
//! file name and the byte offset after the last line read, so a restarted
//! instance continues at the next line. Bounded by default: it ends once
//! every file is read to its end. With `tail = true` it keeps watching for
//! lines appended to the last file and for new files.
//!
//! With `parallelism = N`, instance `i` reads the files whose name hashes to
//! `i` modulo `N`, so each file is read by exactly one instance.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use sluice_sdk::{BatchWriter, Context, Error, Poll, Source};

/// Config of the `file-source`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory to read, as the plugin sees it (the guest side of a `files`
    /// grant), e.g. `/in`.
    pub path: String,
    /// Keep reading as files grow and appear instead of ending.
    #[serde(default)]
    pub tail: bool,
    /// Lines per second per instance; 0 means as fast as it can read.
    #[serde(default)]
    pub rate: u64,
}

/// The reader's state.
#[derive(Debug)]
pub struct FileSource {
    dir: PathBuf,
    tail: bool,
    /// This instance's index and the connector's parallelism.
    index: u32,
    count: u32,
    /// The file being read and the byte offset after the last line emitted.
    file: Option<String>,
    offset: u64,
    reader: Option<BufReader<File>>,
    /// Lines per second (0: no limit), since `started`.
    rate: u64,
    started: std::time::Instant,
    emitted: u64,
}

/// Encodes a position: the offset as a little-endian u64, then the name.
fn encode(file: &str, offset: u64) -> Vec<u8> {
    let mut p = offset.to_le_bytes().to_vec();
    p.extend_from_slice(file.as_bytes());
    p
}

fn decode(p: &[u8]) -> Result<(String, u64), Error> {
    let bad = || Error::fatal("stored position is not a file-source position");
    let offset = u64::from_le_bytes(p.get(..8).ok_or_else(bad)?.try_into().map_err(|_| bad())?);
    let name = std::str::from_utf8(&p[8..]).map_err(|_| bad())?;
    Ok((name.to_owned(), offset))
}

impl FileSource {
    /// File names in the directory, sorted.
    fn files(&self) -> Result<Vec<String>, Error> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::retriable(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                // Listed, then renamed or removed by whoever writes the
                // folder: not a file to read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(Error::retriable(format!(
                        "cannot list {}: {e}",
                        self.dir.display()
                    )));
                }
            };
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if let (true, Ok(name)) = (is_file, entry.file_name().into_string())
                && sluice_sdk::hash::fnv1a(name.as_bytes()) % u64::from(self.count.max(1))
                    == u64::from(self.index)
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Moves to the first file after the current one; false if there is none.
    fn advance(&mut self) -> Result<bool, Error> {
        let files = self.files()?;
        let next = match &self.file {
            None => files.into_iter().next(),
            Some(cur) => files.into_iter().find(|f| f > cur),
        };
        match next {
            None => Ok(false),
            Some(name) => {
                self.file = Some(name);
                self.offset = 0;
                self.reader = None;
                Ok(true)
            }
        }
    }

    fn reader(&mut self) -> Result<Option<&mut BufReader<File>>, Error> {
        if self.reader.is_none() {
            let Some(name) = &self.file else {
                return Ok(None);
            };
            let path = self.dir.join(name);
            let mut f = File::open(&path)
                .map_err(|e| Error::retriable(format!("cannot open {}: {e}", path.display())))?;
            f.seek(SeekFrom::Start(self.offset))
                .map_err(|e| Error::retriable(format!("cannot seek {}: {e}", path.display())))?;
            self.reader = Some(BufReader::with_capacity(1 << 20, f));
        }
        Ok(self.reader.as_mut())
    }
}

impl Source for FileSource {
    type Config = Config;

    fn open(config: Config, ctx: &Context, resume_from: Option<&[u8]>) -> Result<Self, Error> {
        let dir = PathBuf::from(&config.path);
        std::fs::read_dir(&dir).map_err(|e| {
            Error::invalid_config(format!(
                "cannot open directory {}: {e} (is it granted under [connector.grants] files?)",
                dir.display()
            ))
        })?;
        let (file, offset) = match resume_from {
            Some(p) => {
                let (f, o) = decode(p)?;
                (Some(f), o)
            }
            None => (None, 0),
        };
        Ok(FileSource {
            dir,
            tail: config.tail,
            index: ctx.index,
            count: ctx.count,
            file,
            offset,
            reader: None,
            rate: config.rate,
            started: std::time::Instant::now(),
            emitted: 0,
        })
    }

    fn poll(&mut self, out: &mut BatchWriter, max_records: usize) -> Result<Poll, Error> {
        if self.file.is_none() && !self.advance()? {
            return Ok(Poll {
                position: None,
                end_of_stream: !self.tail,
            });
        }
        let mut budget = max_records;
        if self.rate > 0 {
            let due = (self.started.elapsed().as_secs_f64() * self.rate as f64) as u64;
            budget =
                budget.min(usize::try_from(due.saturating_sub(self.emitted)).unwrap_or(usize::MAX));
            if budget == 0 {
                let position = self.file.as_deref().map(|f| encode(f, self.offset));
                return Ok(Poll {
                    position,
                    end_of_stream: false,
                });
            }
        }
        let start_len = out.len();
        let mut line = Vec::new();
        while out.len() < start_len + budget {
            let tail = self.tail;
            let Some(reader) = self.reader()? else { break };
            line.clear();
            let n = match reader.read_until(b'\n', &mut line) {
                Ok(n) => n,
                Err(e) => {
                    // The reader may have taken part of a line before the
                    // read failed: open the file again at the last whole
                    // line. Lines
                    // already read in this poll go out with their position;
                    // an error would drop them with the batch.
                    self.reader = None;
                    if out.len() > start_len {
                        break;
                    }
                    return Err(Error::retriable(format!("cannot read: {e}")));
                }
            };
            let complete = line.last() == Some(&b'\n');
            if n > 0 && (complete || !tail) {
                let value = line.strip_suffix(b"\n").unwrap_or(&line);
                out.push_value(value);
                self.offset += n as u64;
                continue;
            }
            if n > 0 {
                // A line still being written: read it again once it is whole,
                // and stay on this file until then.
                self.reader = None;
                break;
            }
            // At the end of this file: go on to the next, if there is one.
            if !self.advance()? {
                if tail {
                    // A WASI file read that reached the end stays there
                    // (lines appended later were never read): open the
                    // file again at the offset in the next poll.
                    self.reader = None;
                }
                break;
            }
        }
        self.emitted += (out.len() - start_len) as u64;
        let position = self.file.as_deref().map(|f| encode(f, self.offset));
        let done = !self.tail && out.is_empty() && {
            // Nothing read in this poll and no further file: the end.
            self.files()?
                .iter()
                .all(|f| Some(f.as_str()) <= self.file.as_deref())
        };
        Ok(Poll {
            position,
            end_of_stream: done,
        })
    }
}

sluice_sdk::export_source!(FileSource);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn positions_round_trip() {
        assert_eq!(
            decode(&encode("a.txt", 42)).unwrap(),
            ("a.txt".to_owned(), 42)
        );
        assert!(decode(b"short").is_err());
    }

    #[test]
    fn reads_every_line_of_every_file_once_and_resumes() {
        let dir = std::env::temp_dir().join(format!("file-source-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), "1\n2\n3\n").unwrap();
        std::fs::write(dir.join("b.txt"), "4\n5").unwrap();
        let ctx = Context {
            connector: "fs".into(),
            index: 0,
            count: 1,
        };
        let config = || Config {
            path: dir.display().to_string(),
            tail: false,
            rate: 0,
        };

        let mut src = FileSource::open(config(), &ctx, None).unwrap();
        let mut out = BatchWriter::new();
        let first = src.poll(&mut out, 2).unwrap();
        assert_eq!(out.len(), 2);
        let pos = first.position.unwrap();

        // A new instance resumes after the second line.
        let mut src = FileSource::open(config(), &ctx, Some(&pos)).unwrap();
        let mut lines = Vec::new();
        loop {
            let mut out = BatchWriter::new();
            let poll = src.poll(&mut out, 100).unwrap();
            let bytes = out.finish();
            let batch = sluice_sdk::Batch::parse(&bytes).unwrap();
            lines.extend(
                batch
                    .iter()
                    .map(|r| String::from_utf8(r.value.to_vec()).unwrap()),
            );
            if poll.end_of_stream {
                break;
            }
        }
        assert_eq!(lines, ["3", "4", "5"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
