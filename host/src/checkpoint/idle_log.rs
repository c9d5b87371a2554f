//! The batch log of batches that take no input, written in place.
//!
//! A pipeline with nothing to read still cuts a batch every interval, and
//! each batch's entry must be durable before it runs: its time decides what
//! windows and state timeouts emit, so a replay needs it. Written as a file
//! of its own, an entry costs a new inode, an fsync and a rename; hundreds of
//! idle pipelines in one server spend most of their CPU, and the disk's
//! patience, on that. So the entries of *idle* batches go into **segments**:
//! files of [`SEGMENT_BYTES`] written full of zeros once (durably), then
//! written in place, one record after another, each made durable by a data
//! sync that changes no metadata (no inode, no journal commit on ext4).
//!
//! A segment is named after the first batch it holds
//! (`offsets/<batch>.idle`). A record is `[length: u32 LE][the first 8 bytes
//! of the SHA-256 of the entry][the entry as JSON]`. Reading stops at the
//! first record that is empty, cut short, fails its checksum or does not
//! follow the one before (batch ids only grow), so a record torn by a crash
//! ends the segment, as a missing entry file ends the log. Records of later
//! segments always have higher batch ids than earlier ones', so a segment is
//! no longer needed once the next segment's first batch is behind the oldest
//! kept checkpoint.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::LoggedBatch;
use super::storage::{CheckpointStorage, InPlaceFile};

/// The size of a segment.
pub const SEGMENT_BYTES: usize = 16 * 1024;

/// The largest entry a segment takes; larger ones get a file of their own.
pub const MAX_RECORD: usize = 4 * 1024;

/// The record header: length and checksum.
const HEADER: usize = 4 + 8;

/// The directory of the batch log.
const DIR: &str = "offsets";

/// The name of the segment whose first record is batch `first`.
pub fn segment_name(first: u64) -> String {
    format!("{DIR}/{first:020}.idle")
}

/// The first batch of the segment file `name` (listed under `offsets`), or
/// `None` when it is not a segment.
pub fn segment_first(name: &str) -> Option<u64> {
    let id = name.strip_suffix(".idle")?;
    if id.len() != 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok()
}

/// The records of a segment's bytes, in order, up to the first unreadable one.
fn read_segment(bytes: &[u8]) -> Vec<LoggedBatch> {
    let mut records: Vec<LoggedBatch> = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let Some(json) = bytes
            .get(at + HEADER..at + HEADER + length)
            .filter(|_| length > 0)
        else {
            break;
        };
        if checksum(json) != header[4..] {
            break;
        }
        let Ok(entry) = serde_json::from_slice::<LoggedBatch>(json) else {
            break;
        };
        if records.last().is_some_and(|last| entry.batch <= last.batch) {
            break;
        }
        records.push(entry);
        at += HEADER + length;
    }
    records
}

fn checksum(json: &[u8]) -> [u8; 8] {
    let digest = Sha256::digest(json);
    digest[..8].try_into().expect("8 bytes")
}

/// `entry` as a record, or `None` when it is larger than [`MAX_RECORD`].
fn encode(entry: &LoggedBatch) -> Option<Vec<u8>> {
    let json = serde_json::to_vec(entry).expect("a batch log entry serializes");
    if json.len() > MAX_RECORD {
        return None;
    }
    let mut record = Vec::with_capacity(HEADER + json.len());
    record.extend_from_slice(&(json.len() as u32).to_le_bytes());
    record.extend_from_slice(&checksum(&json));
    record.extend_from_slice(&json);
    Some(record)
}

/// Rewrites the segment `name` (atomically) without its records of batch
/// `from` and later, or removes it when none is left: recovery found them
/// after a gap in the log, so the batches they describe will be logged
/// again.
fn drop_records_from(storage: &dyn CheckpointStorage, name: &str, from: u64) -> std::io::Result<()> {
    let bytes = storage.get(name)?.unwrap_or_default();
    let kept: Vec<u8> = read_segment(&bytes)
        .iter()
        .take_while(|entry| entry.batch < from)
        .filter_map(encode)
        .flatten()
        .collect();
    if kept.is_empty() {
        return storage.remove(name);
    }
    let mut segment = kept;
    segment.resize(segment.len().max(SEGMENT_BYTES), 0);
    storage.put(name, &segment)
}

/// A segment found at recovery.
#[derive(Debug)]
struct Found {
    /// Its first batch (its name).
    first: u64,
    /// Its name in the storage.
    name: String,
    /// The batch of its last readable record.
    last: Option<u64>,
}

/// The segments of a batch log as recovery found them ([`Segments::read`]).
#[derive(Debug, Default)]
pub struct Segments {
    found: Vec<Found>,
}

impl Segments {
    /// Reads the segments among `names` (the blobs listed under
    /// `offsets`); returns them with their records of batch `from` on,
    /// by batch.
    pub fn read(
        storage: &dyn CheckpointStorage,
        names: &[String],
        from: u64,
    ) -> std::io::Result<(Self, BTreeMap<u64, LoggedBatch>)> {
        let mut segments = Self::default();
        let mut records = BTreeMap::new();
        for listed in names {
            let Some(first) = segment_first(listed) else {
                continue;
            };
            let name = format!("{DIR}/{listed}");
            let read = read_segment(&storage.get(&name)?.unwrap_or_default());
            segments.found.push(Found {
                first,
                name,
                last: read.last().map(|last| last.batch),
            });
            records.extend(
                read.into_iter()
                    .filter(|entry| entry.batch >= from)
                    .map(|e| (e.batch, e)),
            );
        }
        Ok((segments, records))
    }

    /// Brings the segments in line with a replay of batches `first` up to
    /// `next` (not included): those that start at `next` or later hold
    /// nothing replayed (or nothing readable) and go, whatever is in them;
    /// those with records from `next` on are rewritten without them
    /// ([`drop_records_from`]). So the segment the run starts next has the
    /// highest batch ids. The others with replayed records are synced: a
    /// record read at recovery may have been in memory only (written by a
    /// run killed before its data sync), and its batch is about to run
    /// again. Then the log directory is synced.
    pub fn settle(&self, storage: &dyn CheckpointStorage, first: u64, next: u64) -> std::io::Result<()> {
        for segment in &self.found {
            if segment.first >= next {
                storage.remove(&segment.name)?;
            } else if segment.last.is_some_and(|last| last >= next) {
                drop_records_from(storage, &segment.name, next)?;
            } else if segment.last.is_some_and(|last| last >= first) {
                storage.sync(&segment.name)?;
            }
        }
        storage.sync(DIR)
    }
}

/// Removes the segments among `names` (listed under `offsets`) that only
/// hold batches up to `oldest` (the oldest kept checkpoint's): a segment
/// holds batches before the next segment's first, so it goes once that is
/// `oldest + 1` or earlier. The newest, and `open` (the one the pipeline is
/// writing), always stay.
pub fn truncate(
    storage: &dyn CheckpointStorage,
    names: &[String],
    oldest: u64,
    open: Option<u64>,
) -> std::io::Result<()> {
    let firsts: Vec<u64> = names.iter().filter_map(|name| segment_first(name)).collect();
    for pair in firsts.windows(2) {
        if pair[1] <= oldest + 1 && Some(pair[0]) != open {
            storage.remove(&segment_name(pair[0]))?;
        }
    }
    Ok(())
}

/// The segment being written.
struct Open {
    file: Box<dyn InPlaceFile>,
    /// Its first batch (its name).
    first: u64,
    /// Where the next record goes.
    at: usize,
    /// The last batch written into it.
    last: u64,
}

/// Writes idle batches' entries into segments (see the module docs).
#[derive(Default)]
pub struct IdleLog {
    open: Option<Open>,
}

impl std::fmt::Debug for IdleLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleLog")
            .field("at", &self.open.as_ref().map(|open| open.at))
            .finish()
    }
}

impl IdleLog {
    /// The first batch of the segment being written, if one is open: it
    /// must not be removed.
    pub fn open_segment(&self) -> Option<u64> {
        self.open.as_ref().map(|open| open.first)
    }

    /// Writes `entry` durably into the open segment, or into a new one when
    /// it does not fit. Returns false, having written nothing, when the
    /// entry is too large for a segment or the storage cannot write in
    /// place: the caller then writes it as a file of its own.
    pub fn append(&mut self, storage: &dyn CheckpointStorage, entry: &LoggedBatch) -> std::io::Result<bool> {
        let Some(record) = encode(entry) else {
            return Ok(false);
        };
        let fits = self
            .open
            .as_ref()
            .is_some_and(|open| open.at + record.len() <= SEGMENT_BYTES && entry.batch > open.last);
        if !fits {
            self.open = None;
            let Some(file) = storage.open_in_place(&segment_name(entry.batch), SEGMENT_BYTES as u64)? else {
                return Ok(false);
            };
            self.open = Some(Open {
                file,
                first: entry.batch,
                at: 0,
                last: entry.batch,
            });
        }
        let open = self.open.as_mut().expect("opened above");
        if let Err(error) = open.file.write_durably(open.at as u64, &record) {
            // What is on the disk after a failed write is unknown: the next
            // record starts a new segment.
            self.open = None;
            return Err(error);
        }
        open.at += record.len();
        open.last = entry.batch;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LocalStorage;
    use crate::source::BatchInput;
    use std::collections::BTreeMap;

    fn entry(batch: u64) -> LoggedBatch {
        LoggedBatch {
            batch,
            time: batch as i64 * 1000,
            inputs: vec![BatchInput::Generator { start: 7, end: 7 }],
            plugins: BTreeMap::new(),
        }
    }

    #[test]
    fn records_are_read_back_in_order_and_a_full_segment_starts_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path()).unwrap();
        let mut log = IdleLog::default();
        let per_segment = SEGMENT_BYTES / (HEADER + serde_json::to_vec(&entry(1000)).unwrap().len());
        let total = per_segment as u64 + 10;
        for batch in 1000..1000 + total {
            assert!(log.append(&storage, &entry(batch)).unwrap());
        }
        let segments = storage.list(DIR).unwrap();
        assert_eq!(segments.len(), 2, "{segments:?}");
        let mut read = Vec::new();
        for name in &segments {
            let bytes = storage.get(&format!("{DIR}/{name}")).unwrap().unwrap();
            assert_eq!(bytes.len(), SEGMENT_BYTES);
            let records = read_segment(&bytes);
            assert_eq!(records.first().map(|r| r.batch), segment_first(name));
            read.extend(records);
        }
        assert_eq!(read, (1000..1000 + total).map(entry).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_or_stale_record_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(dir.path()).unwrap();
        let mut log = IdleLog::default();
        for batch in 1..=3 {
            log.append(&storage, &entry(batch)).unwrap();
        }
        let name = segment_name(1);
        let bytes = storage.get(&name).unwrap().unwrap();
        let record = HEADER + serde_json::to_vec(&entry(1)).unwrap().len();
        // A byte of the second record flipped: only the first is read.
        let mut torn = bytes.clone();
        torn[record + HEADER + 3] ^= 1;
        assert_eq!(read_segment(&torn), vec![entry(1)]);
        // A record that does not follow the one before (an older run's left
        // behind a shorter rewrite) ends the segment too.
        let mut stale = bytes[..record].to_vec();
        stale.extend_from_slice(&bytes[..record]);
        assert_eq!(read_segment(&stale), vec![entry(1)]);
        // An entry too large for a segment is left to the caller.
        let mut large = entry(9);
        large.inputs = vec![BatchInput::Generator { start: 0, end: 0 }; MAX_RECORD / 8];
        assert!(!log.append(&storage, &large).unwrap());
    }
}
