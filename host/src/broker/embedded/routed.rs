//! Routed appends on the embedded log: a source batch split over several
//! partitions, stored as one through the producer's journal (see
//! [`super::journal`]), and finished when the log opens after a crash.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use super::journal::{self, Journal, PartRef};
use super::partition::Partition;
use super::space::space;
use super::{EmbeddedLog, LogConfig, Topic, sync_dir};
use crate::broker::{BrokerError, RoutedPart};
use crate::manifest::FsyncPolicy;

/// Opens every producer's journal under `dir` and finishes its newest
/// routed batch: a part whose partition ends at or before the part's offset
/// was never written (its partitions were locked from the journal write on,
/// so nothing else appended there) and is appended now. Each such
/// producer's position is the journal's.
pub(super) fn roll_forward(
    dir: &Path,
    config: &LogConfig,
    topics: &mut HashMap<String, Arc<Topic>>,
    positions: &mut HashMap<String, Vec<u8>>,
) -> Result<HashMap<String, Arc<Mutex<Journal>>>, BrokerError> {
    let journal_dir = dir.join("journal");
    let mut journals = HashMap::new();
    for producer in journal::producers(&journal_dir)? {
        let (j, newest) = Journal::open(&journal_dir, &producer)?;
        if let Some(record) = newest {
            for part in &record.parts {
                if !topics.contains_key(&part.topic) {
                    let t = Topic::open(
                        &dir.join("topics").join(&part.topic),
                        config.policy(&part.topic),
                        positions,
                    )?;
                    topics.insert(part.topic.clone(), Arc::new(t));
                }
                let t = &topics[&part.topic];
                let mut p = EmbeddedLog::partition(t, &part.topic, part.partition)?
                    .lock()
                    .expect("partition lock");
                if p.next_offset > part.base_offset {
                    continue;
                }
                if p.next_offset < part.base_offset {
                    tracing::warn!(
                        topic = %part.topic, partition = part.partition,
                        end = p.next_offset, expected = part.base_offset,
                        "the partition lost records a power loss never wrote; the journaled batch \
                         goes in at its end"
                    );
                }
                let base = p.append(&part.batch, part.records, None, config)?;
                tracing::info!(
                    producer = %producer, topic = %part.topic, partition = part.partition,
                    records = part.records, offset = base,
                    "finished a routed batch a crash broke off"
                );
            }
            if let Some(position) = record.position {
                positions.insert(producer.clone(), position);
            }
        }
        journals.insert(producer, Arc::new(Mutex::new(j)));
    }
    Ok(journals)
}

impl EmbeddedLog {
    /// The journal of `producer`, if it has routed a batch.
    pub(super) fn journal_if_any(&self, producer: &str) -> Option<Arc<Mutex<Journal>>> {
        self.inner
            .journals
            .lock()
            .expect("journals lock")
            .get(producer)
            .cloned()
    }

    /// The journal of `producer`, created on its first routed batch.
    pub(super) fn journal(&self, producer: &str) -> Result<Arc<Mutex<Journal>>, BrokerError> {
        let mut journals = self.inner.journals.lock().expect("journals lock");
        if let Some(j) = journals.get(producer) {
            return Ok(j.clone());
        }
        let dir = self.inner.dir.join("journal");
        let (j, _) = Journal::open(&dir, producer)?;
        // The slot files, their connector's folder and the journal folder
        // must survive a power loss as much as the records in them.
        if let Some((connector, _)) = producer.split_once('/') {
            sync_dir(&dir.join(connector));
        }
        sync_dir(&dir);
        sync_dir(&self.inner.dir);
        let j = Arc::new(Mutex::new(j));
        journals.insert(producer.to_owned(), j.clone());
        Ok(j)
    }

    /// Stores a batch split over `parts` as one, through the producer's
    /// journal (see [`journal`]): the parts' partitions are locked (in
    /// order, so two producers cannot deadlock), the journal record written
    /// with the offset each part gets, then every part appended. If a part
    /// fails, the parts already in are cut off and the record taken back.
    /// Without a `position`, the record carries the producer's last one, so
    /// the newest record always holds it.
    ///
    /// If a record that was not applied cannot be made invalid, the journal
    /// is poisoned, and the partitions it names refuse appends until the
    /// log is reopened: their offsets stay as the record says, so the open
    /// rolls it forward correctly (and the source, restarted there, resumes
    /// after it).
    pub(super) fn append_journaled(
        &self,
        journal: &Mutex<Journal>,
        parts: &[RoutedPart<'_>],
        producer: &str,
        position: Option<&[u8]>,
    ) -> Result<Vec<u64>, BrokerError> {
        let mut journal = journal.lock().expect("journal lock");
        let carried = match position {
            Some(p) => Some(p.to_vec()),
            None => self
                .inner
                .positions
                .lock()
                .expect("positions lock")
                .get(producer)
                .cloned(),
        };
        let topics = parts
            .iter()
            .map(|p| self.topic(p.topic))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..parts.len()).collect();
        order.sort_by_key(|&i| (parts[i].topic, parts[i].partition));
        debug_assert!(
            order
                .windows(2)
                .all(|w| (parts[w[0]].topic, parts[w[0]].partition)
                    != (parts[w[1]].topic, parts[w[1]].partition)),
            "a partition appears twice in one routed batch"
        );
        let mut locked = Vec::with_capacity(parts.len());
        for &i in &order {
            let p = Self::partition(&topics[i], parts[i].topic, parts[i].partition)?
                .lock()
                .expect("partition lock");
            locked.push((i, p));
        }
        locked.sort_by_key(|(i, _)| *i);
        let refs: Vec<PartRef<'_>> = parts
            .iter()
            .zip(&locked)
            .map(|(p, (_, guard))| PartRef {
                topic: p.topic,
                partition: p.partition,
                base_offset: guard.next_offset,
                records: p.records,
                batch: p.batch,
            })
            .collect();
        let record = journal::encode(journal.next_seq(), carried.as_deref(), &refs);
        let config = &self.inner.config;
        let always = config.fsync == FsyncPolicy::Always;
        let was_poisoned = journal.poisoned().is_some();
        let written = journal.write(&record, always);
        let record_len = record.len() as u64;
        drop(record);
        let poison = |locked: &mut [(usize, MutexGuard<'_, Partition>)], why: &str| {
            for (_, guard) in locked {
                guard.failed = Some(why.to_owned());
            }
            tracing::error!(
                producer,
                error = why,
                "a routed batch failed and its journal record could not be taken back: its \
                 partitions refuse appends until the log is reopened, which stores the batch"
            );
        };
        if let Err(e) = written {
            if let Some(why) = journal.poisoned().filter(|_| !was_poisoned) {
                poison(&mut locked, why);
            }
            return space(&self.inner, record_len, Err(e));
        }
        let mut bases = Vec::with_capacity(parts.len());
        for (part, (_, guard)) in parts.iter().zip(locked.iter_mut()) {
            match guard.append(part.batch, part.records, None, config) {
                Ok(base) => bases.push(base),
                Err(e) => {
                    for ((_, guard), base) in locked.iter_mut().zip(&bases) {
                        guard.undo_append(*base, always);
                    }
                    if journal.discard_newest().is_err() {
                        let why = journal.poisoned().unwrap_or("unknown").to_owned();
                        poison(&mut locked, &why);
                    }
                    return space(&self.inner, record_len, Err(e));
                }
            }
        }
        drop(locked);
        if let Some(position) = carried {
            self.inner
                .positions
                .lock()
                .expect("positions lock")
                .insert(producer.to_owned(), position);
        }
        let _ = space(&self.inner, record_len, Ok(()));
        for t in &topics {
            t.appended.send_modify(|v| *v += 1);
        }
        Ok(bases)
    }
}
