//! One partition's state of a processing-time windowed reduce
//! ([`super::window::WindowedReduce`]): the per-batch partial results still
//! in the window, kept in memory up to the partition's share of the stage's
//! `state-memory` and spilled to disk past it, the running result (with an
//! inverse), and what changed since the last checkpoint part.
//!
//! **Spilling.** A partial result never changes after its batch, so a
//! spilled partial is one file, written once and read back when it is
//! needed: when it leaves the window (with an inverse: it is subtracted) or
//! when a window is emitted (without one: the window is merged from every
//! partial). The oldest partials spill first. The running result
//! ([`RunningResult`]) stays in memory: it holds one entry per key of the
//! window, not one per key and batch.
//!
//! **Checkpoints** are incremental ([`crate::checkpoint::incremental`]): a
//! partition's entries are its partials, keyed `0x00` + batch id (big
//! endian, so in batch order) with the partial encoded as the value (a
//! spilled partial's file is that encoding, copied as it is), and, with an
//! inverse, its running result, keyed `0x01` + the record key, with the
//! key's presence count and timestamp before the value. A part lists the
//! partials that entered and left and the running keys touched since the
//! previous part, so its size follows the batches, not the window.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::keyed::{KeyView, OwnedKey, owned_key};
use super::running::{RunningChanges, RunningEntry, RunningResult, key_hash};
use crate::checkpoint::codec::{DecodeError, Decoder, Encoder};
use crate::checkpoint::incremental::PartWriter;
use crate::record::Batch;
use crate::state::StateError;

/// The first byte of a partial's entry in a checkpoint part.
const PARTIAL_TAG: u8 = 0;
/// The first byte of a running result's entry in a checkpoint part.
const RUNNING_TAG: u8 = 1;
/// Bookkeeping bytes counted per running key touched since the last part
/// (its hash).
const TOUCHED_ENTRY_BYTES: usize = 16;
/// Bookkeeping bytes counted per key gone from the running result since the
/// last part (besides the key).
const GONE_ENTRY_BYTES: usize = 48;

fn write_error(error: std::io::Error) -> StateError {
    StateError(format!("cannot write the window's checkpoint part: {error}"))
}

/// A batch of window state (a partial, an event-time window's result)
/// spilled to a file of its own, removed when dropped.
#[derive(Debug)]
pub struct SpilledBatch {
    path: PathBuf,
    records: usize,
}

impl SpilledBatch {
    /// Writes `batch` to a new file at `path` (see [`spill_path`]).
    pub(super) fn write(path: PathBuf, batch: &Batch) -> Result<Self, StateError> {
        let mut encoded = Encoder::new();
        encoded.batch(batch);
        spill_to(path, &encoded.finish(), batch.len())
    }

    /// The file's bytes: the batch in the encoding of [`Encoder::batch`].
    fn read(&self) -> Result<Vec<u8>, StateError> {
        std::fs::read(&self.path).map_err(|e| {
            StateError(format!(
                "cannot read spilled window state {}: {e}",
                self.path.display()
            ))
        })
    }

    /// The batch, read back.
    pub(super) fn load(&self) -> Result<Batch, StateError> {
        let bytes = self.read()?;
        Decoder::new(&bytes).batch().map_err(|e| {
            StateError(format!(
                "spilled window state {} is corrupt: {e}",
                self.path.display()
            ))
        })
    }

    /// Records in the batch.
    pub(super) fn records(&self) -> usize {
        self.records
    }
}

impl Drop for SpilledBatch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One batch's partial result: one record per key.
#[derive(Debug)]
pub enum Partial {
    /// Held in memory.
    Memory(Batch),
    /// Spilled to disk.
    Disk(SpilledBatch),
}

impl Partial {
    /// The partial's records, read back from disk when spilled.
    pub fn load(&self) -> Result<Cow<'_, Batch>, StateError> {
        match self {
            Partial::Memory(batch) => Ok(Cow::Borrowed(batch)),
            Partial::Disk(spilled) => spilled.load().map(Cow::Owned),
        }
    }

    /// The partial in the encoding of [`Encoder::batch`].
    fn encoded(&self) -> Result<Cow<'_, [u8]>, StateError> {
        match self {
            Partial::Memory(batch) => {
                let mut out = Encoder::new();
                out.batch(batch);
                Ok(Cow::Owned(out.finish()))
            }
            Partial::Disk(spilled) => spilled.read().map(Cow::Owned),
        }
    }

    /// Records (keys) in the partial.
    pub fn records(&self) -> usize {
        match self {
            Partial::Memory(batch) => batch.len(),
            Partial::Disk(spilled) => spilled.records,
        }
    }

    /// Bytes it takes in memory.
    fn memory_bytes(&self) -> usize {
        match self {
            Partial::Memory(batch) => batch.size_bytes(),
            Partial::Disk(_) => 0,
        }
    }

    /// True when spilled.
    pub fn is_spilled(&self) -> bool {
        matches!(self, Partial::Disk(_))
    }
}

/// Writes `encoded` (a partial of `records` records) to a new file at `path`.
fn spill_to(path: PathBuf, encoded: &[u8], records: usize) -> Result<SpilledBatch, StateError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StateError(format!(
                "cannot create the spill directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    // Dropped (and the file removed) if the write fails half way.
    let spilled = SpilledBatch { path, records };
    std::fs::write(&spilled.path, encoded).map_err(|e| {
        StateError(format!(
            "cannot spill window state to {}: {e}",
            spilled.path.display()
        ))
    })?;
    Ok(spilled)
}

/// A new spill file in `dir` for the state that `stem` names. A number
/// unique in the process ends the name, so that a state being replaced
/// (dropped, removing its files) never removes the files of the state
/// replacing it.
pub(super) fn spill_path(dir: &Path, stem: &str) -> PathBuf {
    static SPILLS: AtomicU64 = AtomicU64::new(0);
    let unique = SPILLS.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{stem}-{unique}.spill"))
}

/// What changed in a partition since the last checkpoint part.
#[derive(Debug, Default)]
struct Changes {
    /// Partials that entered since, still in the window.
    entered: Vec<u64>,
    /// Partials of the last part that left since.
    left: Vec<u64>,
    /// Hashes of the running keys touched since (with an inverse): the
    /// keys of the partials that entered and left. A collision only writes
    /// an unchanged entry again.
    touched: hashbrown::HashSet<u64, foldhash::fast::FixedState>,
    /// Keys that left the running result since (no partial holds them any
    /// more); one may have come back since.
    gone: hashbrown::HashSet<OwnedKey, foldhash::fast::FixedState>,
    /// Memory counted for `touched` and `gone`.
    bytes: usize,
}

/// Where a partition spills and how much it keeps in memory.
#[derive(Debug, Clone, Copy)]
pub struct SpillPlace<'a> {
    /// The stage's spill directory.
    pub dir: &'a Path,
    /// The partition's index.
    pub partition: usize,
    /// Bytes the partition keeps in memory before it spills.
    pub budget: usize,
}

/// One partition's window state. Its fields change only through
/// [`ReduceState::commit`] and [`ReduceState::apply_running`] (and
/// restores), which keep the changes for the next checkpoint part.
#[derive(Debug, Default)]
pub struct ReduceState {
    /// One partial result per batch still in the window, oldest first.
    pub(super) partials: std::collections::VecDeque<(u64, Partial)>,
    /// With an inverse: the reduction of every partial in `partials`, and
    /// per key how many of them hold it.
    pub(super) running: RunningResult,
    /// Since the last checkpoint part; `None` when not known (the next part
    /// lists the whole partition).
    changes: Option<Changes>,
    /// Set once a spill failed (warned about once; the partials stay in memory).
    spill_failed: bool,
}

impl ReduceState {
    /// Applies a batch's changes to the running result (with an inverse;
    /// before [`ReduceState::commit`]). `touch_limit` bounds the memory of
    /// the keys tracked for the next checkpoint part (past it, the part
    /// lists the partition whole).
    pub fn apply_running(&mut self, changes: &RunningChanges<'_>, touch_limit: usize) {
        for (key, change) in changes {
            if let Some(tracked) = &mut self.changes {
                if tracked.touched.insert(key_hash(*key)) {
                    tracked.bytes += TOUCHED_ENTRY_BYTES;
                }
                if change.presence == 0 && !tracked.gone.contains(&KeyView(*key)) {
                    tracked.bytes += GONE_ENTRY_BYTES + key.map_or(0, <[u8]>::len);
                    tracked.gone.insert(owned_key(*key));
                }
            }
            self.running.apply(*key, change);
        }
        self.running.shrink_if_sparse();
        if self
            .changes
            .as_ref()
            .is_some_and(|tracked| tracked.bytes > touch_limit)
        {
            self.changes = None;
        }
    }

    /// Commits a batch that succeeded: `this` batch's partial enters and the
    /// first `leaving` partials leave.
    pub fn commit(&mut self, batch_id: u64, this: Batch, leaving: usize) {
        if let Some(changes) = &mut self.changes {
            for (old, _) in self.partials.iter().take(leaving) {
                // Batch ids enter in increasing order.
                match changes.entered.binary_search(old) {
                    Ok(at) => {
                        changes.entered.remove(at);
                    }
                    Err(_) => changes.left.push(*old),
                }
            }
            changes.entered.push(batch_id);
        }
        self.partials.drain(..leaving);
        self.partials.push_back((batch_id, Partial::Memory(this)));
    }

    /// Bytes the partition holds in memory.
    pub fn memory_bytes(&self) -> usize {
        self.partials.iter().map(|(_, p)| p.memory_bytes()).sum::<usize>()
            + self.running.memory_bytes()
            + self.changes.as_ref().map_or(0, |c| c.bytes)
    }

    /// Spills the oldest partials held in memory until the partition fits
    /// `place.budget` (or none is left in memory). A spill that fails leaves
    /// the partial in memory, warned about once: nothing is lost, the
    /// memory bound is not kept.
    pub fn spill_over(&mut self, place: SpillPlace<'_>, stage: &str) {
        let mut held = self.memory_bytes();
        for (batch_id, partial) in self.partials.iter_mut() {
            if held <= place.budget {
                break;
            }
            let Partial::Memory(batch) = partial else {
                continue;
            };
            let stem = format!("window-partition-{:05}-batch-{batch_id:020}", place.partition);
            match SpilledBatch::write(spill_path(place.dir, &stem), batch) {
                Ok(spilled) => {
                    held -= batch.size_bytes();
                    *partial = Partial::Disk(spilled);
                }
                Err(error) => {
                    if !self.spill_failed {
                        tracing::warn!(stage, %error, "window partials stay in memory");
                        self.spill_failed = true;
                    }
                    return;
                }
            }
        }
    }

    /// Writes the partition's section of a checkpoint part: its changes
    /// since the last part when known, otherwise every entry. Changes are
    /// then counted from now.
    pub fn write_section<W: Write>(
        &mut self,
        out: &mut PartWriter<W>,
        with_running: bool,
    ) -> Result<(), StateError> {
        let result = match self.changes.take() {
            Some(changes) => self.write_changes(&changes, out, with_running),
            None => self.write_complete(out, with_running),
        };
        if result.is_ok() {
            self.changes = Some(Changes::default());
        }
        result
    }

    /// Forgets the changes: the next part lists the whole partition.
    pub fn forget_changes(&mut self) {
        self.changes = None;
    }

    /// Counts changes from now (after a restore from a chain of parts).
    pub fn mark_checkpointed(&mut self) {
        self.changes = Some(Changes::default());
    }

    fn write_changes<W: Write>(
        &self,
        changes: &Changes,
        out: &mut PartWriter<W>,
        with_running: bool,
    ) -> Result<(), StateError> {
        out.begin(false).map_err(write_error)?;
        // Partials in batch order: those that left are older than any that entered.
        let mut left = changes.left.clone();
        left.sort_unstable();
        for batch_id in left {
            out.remove(&partial_key(batch_id)).map_err(write_error)?;
        }
        for (batch_id, partial) in &self.partials {
            if changes.entered.binary_search(batch_id).is_ok() {
                out.put(&partial_key(*batch_id), &partial.encoded()?)
                    .map_err(write_error)?;
            }
        }
        if with_running {
            // The touched keys still in the running result are put, those
            // gone and not back are removed; in key order.
            let mut entries: Vec<(Vec<u8>, Option<&RunningEntry>)> = changes
                .touched
                .iter()
                .flat_map(|hash| self.running.with_hash(*hash))
                .map(|entry| (running_key(entry.key()), Some(entry)))
                .collect();
            entries.extend(
                changes
                    .gone
                    .iter()
                    .filter(|key| self.running.get(key.as_deref()).is_none())
                    .map(|key| (running_key(key.as_deref()), None)),
            );
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut value = Vec::new();
            for (key, entry) in entries {
                match entry {
                    Some(entry) => {
                        running_value(entry, &mut value);
                        out.put(&key, &value).map_err(write_error)?;
                    }
                    None => out.remove(&key).map_err(write_error)?,
                }
            }
        }
        Ok(())
    }

    fn write_complete<W: Write>(
        &self,
        out: &mut PartWriter<W>,
        with_running: bool,
    ) -> Result<(), StateError> {
        out.begin(true).map_err(write_error)?;
        for (batch_id, partial) in &self.partials {
            out.put(&partial_key(*batch_id), &partial.encoded()?)
                .map_err(write_error)?;
        }
        if with_running {
            let mut entries: Vec<(Vec<u8>, &RunningEntry)> = self
                .running
                .iter()
                .map(|entry| (running_key(entry.key()), entry))
                .collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let mut value = Vec::new();
            for (key, entry) in entries {
                running_value(entry, &mut value);
                out.put(&key, &value).map_err(write_error)?;
            }
        }
        Ok(())
    }
}

/// The checkpoint value of a running result's entry: presence count,
/// timestamp, value.
fn running_value(entry: &RunningEntry, value: &mut Vec<u8>) {
    value.clear();
    value.extend_from_slice(&entry.presence.to_le_bytes());
    value.extend_from_slice(&entry.timestamp.to_le_bytes());
    value.extend_from_slice(entry.value());
}

fn partial_key(batch_id: u64) -> [u8; 9] {
    let mut key = [PARTIAL_TAG; 9];
    key[1..].copy_from_slice(&batch_id.to_be_bytes());
    key
}

/// `0x01`, then `0x00` for a record without a key or `0x01` and the key.
fn running_key(key: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key.map_or(0, <[u8]>::len));
    out.push(RUNNING_TAG);
    match key {
        None => out.push(0),
        Some(key) => {
            out.push(1);
            out.extend_from_slice(key);
        }
    }
    out
}

/// The record key of a [`running_key`].
fn record_key_of(running_key: &[u8]) -> Option<&[u8]> {
    match running_key.get(1) {
        Some(1) => Some(&running_key[2..]),
        _ => None,
    }
}

/// Builds a partition's state back from its entries in a checkpoint chain,
/// in key order, spilling the oldest partials past the budget as they come.
#[derive(Debug)]
pub struct Restorer<'a> {
    state: ReduceState,
    place: SpillPlace<'a>,
    stage: &'a str,
}

impl<'a> Restorer<'a> {
    /// An empty partition of stage `stage` that spills to `place`.
    pub fn new(place: SpillPlace<'a>, stage: &'a str) -> Self {
        Self {
            state: ReduceState::default(),
            place,
            stage,
        }
    }

    /// Takes the next entry of the chain.
    pub fn entry(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match key.split_first() {
            Some((&PARTIAL_TAG, id)) if id.len() == 8 => {
                let batch_id = u64::from_be_bytes(id.try_into().expect("8 bytes"));
                let batch = Decoder::new(value).batch().map_err(|e| e.to_string())?;
                self.state.partials.push_back((batch_id, Partial::Memory(batch)));
                self.state.spill_over(self.place, self.stage);
            }
            Some((&RUNNING_TAG, _)) if value.len() >= 12 => {
                let presence = u32::from_le_bytes(value[..4].try_into().expect("4 bytes"));
                let timestamp = i64::from_le_bytes(value[4..12].try_into().expect("8 bytes"));
                self.state
                    .running
                    .set(record_key_of(key), &value[12..], timestamp, presence);
            }
            _ => {
                return Err(format!(
                    "a window entry with a key of {} bytes and a value of {} is not one this version writes",
                    key.len(),
                    value.len()
                ));
            }
        }
        Ok(())
    }

    /// The partition's state, counting changes from now.
    pub fn finish(mut self) -> ReduceState {
        self.state.mark_checkpointed();
        self.state.spill_over(self.place, self.stage);
        self.state
    }
}

/// Reads one partition's state as checkpoints wrote it whole before window
/// state was incremental: the partials with their batch ids, the running
/// result, then the presence counts. The next part lists it whole.
pub fn decode_whole(
    input: &mut Decoder<'_>,
    place: SpillPlace<'_>,
    stage: &str,
) -> Result<ReduceState, DecodeError> {
    let mut state = ReduceState::default();
    for _ in 0..input.count(16)? {
        let batch_id = input.u64()?;
        state
            .partials
            .push_back((batch_id, Partial::Memory(input.batch()?)));
        state.spill_over(place, stage);
    }
    for record in input.batch()?.iter() {
        state.running.set(record.key, record.value, record.timestamp, 0);
    }
    for _ in 0..input.count(16)? {
        let key = match input.u64()? {
            0 => None,
            _ => Some(input.bytes()?),
        };
        let count = input.u64()? as u32;
        state.running.set_presence(key, count);
    }
    state.spill_over(place, stage);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::incremental::{Merge, PartReader};
    use crate::operator::running::Change;

    fn partial(keys: &[&str], batch: i64) -> Batch {
        let mut out = Batch::new();
        for key in keys {
            out.push(Some(key.as_bytes()), format!("{batch}").as_bytes(), batch);
        }
        out
    }

    fn part_of(state: &mut ReduceState, with_running: bool) -> Vec<u8> {
        let mut part = PartWriter::new(Vec::new(), 1).unwrap();
        state.write_section(&mut part, with_running).unwrap();
        part.finish().unwrap().0
    }

    fn restored(parts: &[Vec<u8>], place: SpillPlace<'_>) -> ReduceState {
        let readers = parts
            .iter()
            .map(|part| PartReader::new(std::io::Cursor::new(part.clone())).unwrap())
            .collect();
        let mut merge = Merge::new(readers).unwrap();
        let mut restorer = Restorer::new(place, "test");
        assert_eq!(merge.next_partition().unwrap(), Some(0));
        while let Some((key, value)) = merge.next_entry().unwrap() {
            restorer.entry(&key, &value).unwrap();
        }
        restorer.finish()
    }

    /// Key, value, timestamp and presence of a running entry.
    type Running = (Option<Vec<u8>>, Vec<u8>, i64, u32);

    fn running_of(state: &ReduceState) -> Vec<Running> {
        let mut out: Vec<_> = state
            .running
            .iter()
            .map(|r| {
                (
                    r.key().map(<[u8]>::to_vec),
                    r.value().to_vec(),
                    r.timestamp,
                    r.presence,
                )
            })
            .collect();
        out.sort();
        out
    }

    fn partials_of(state: &ReduceState) -> Vec<(u64, Batch)> {
        state
            .partials
            .iter()
            .map(|(id, p)| (*id, p.load().unwrap().into_owned()))
            .collect()
    }

    /// A window of two batches with "last value wins" as its reduction:
    /// each batch's partial enters, the one from two batches before leaves.
    fn advance(state: &mut ReduceState, batch_id: u64, keys: &[&str]) {
        let this = partial(keys, batch_id as i64);
        let leaving = state
            .partials
            .iter()
            .take_while(|(id, _)| id + 2 <= batch_id)
            .count();
        let left: Vec<Batch> = state
            .partials
            .iter()
            .take(leaving)
            .map(|(_, p)| p.load().unwrap().into_owned())
            .collect();
        let kept: Vec<Batch> = state
            .partials
            .iter()
            .skip(leaving)
            .map(|(_, p)| p.load().unwrap().into_owned())
            .collect();
        let mut latest: std::collections::BTreeMap<Option<&[u8]>, (Vec<u8>, i64)> = Default::default();
        let mut presence: std::collections::BTreeMap<Option<&[u8]>, u32> = Default::default();
        for batch in kept.iter().chain(std::iter::once(&this)) {
            for record in batch.iter() {
                latest.insert(record.key, (record.value.to_vec(), record.timestamp));
                *presence.entry(record.key).or_default() += 1;
            }
        }
        let mut changes = RunningChanges::default();
        for record in left.iter().flat_map(Batch::iter).chain(this.iter()) {
            changes.insert(
                record.key,
                Change {
                    value: latest.get(&record.key).cloned(),
                    presence: presence.get(&record.key).copied().unwrap_or(0),
                },
            );
        }
        state.apply_running(&changes, 1 << 20);
        drop(changes);
        state.commit(batch_id, this, leaving);
    }

    #[test]
    fn a_chain_of_parts_restores_the_partials_and_the_running_result_spilled_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let roomy = SpillPlace {
            dir: dir.path(),
            partition: 0,
            budget: 1 << 20,
        };
        let tight = SpillPlace {
            dir: dir.path(),
            partition: 1,
            budget: 0,
        };
        // A part after every batch, or after the first and the last only
        // (then `a` leaves the window and comes back between two parts).
        for (place, every) in [(roomy, 1), (tight, 1), (roomy, 4), (tight, 4)] {
            let mut state = ReduceState::default();
            let mut parts = Vec::new();
            let batches: [&[&str]; 5] = [&["a", "b"], &["b", "c"], &[], &["d"], &["a", "e"]];
            for (batch_id, keys) in batches.iter().enumerate() {
                advance(&mut state, batch_id as u64, keys);
                state.spill_over(place, "test");
                if batch_id % every == 0 {
                    parts.push(part_of(&mut state, true));
                }
            }
            // The first part lists everything; the later ones only what changed.
            let back = restored(&parts, roomy);
            assert_eq!(partials_of(&back), partials_of(&state));
            assert_eq!(running_of(&back), running_of(&state));
            assert_eq!(
                state.partials.iter().all(|(_, p)| p.is_spilled()),
                place.budget == 0,
                "{place:?}"
            );
            // And restored into a tight budget, it spills.
            let spilled = restored(&parts, tight);
            assert!(spilled.partials.iter().all(|(_, p)| p.is_spilled()));
            assert_eq!(partials_of(&spilled), partials_of(&state));
        }
    }

    #[test]
    fn a_part_lists_only_the_partials_and_keys_that_changed() {
        let mut state = ReduceState::default();
        advance(&mut state, 0, &["a", "b"]);
        let full = part_of(&mut state, true);
        let mut reader = PartReader::new(std::io::Cursor::new(full)).unwrap();
        assert!(reader.begin().unwrap(), "the first part is complete");
        advance(&mut state, 1, &["c"]);
        advance(&mut state, 2, &["c"]);
        let changes = part_of(&mut state, true);
        let mut reader = PartReader::new(std::io::Cursor::new(changes)).unwrap();
        assert!(!reader.begin().unwrap());
        let mut seen = Vec::new();
        while let Some(change) = reader.next_change().unwrap() {
            seen.push(format!("{change:?}"));
        }
        // Batch 0 left; batches 1 and 2 entered; a and b went, c changed.
        assert_eq!(seen.len(), 1 + 2 + 3, "{seen:#?}");
    }

    #[test]
    fn state_written_whole_by_the_previous_format_decodes_and_spills_past_the_budget() {
        let mut original = ReduceState::default();
        for (batch_id, keys) in [(0, &["a", "b"][..]), (1, &["b"]), (2, &[])] {
            advance(&mut original, batch_id, keys);
        }
        // As the previous format wrote a partition: partials with their
        // batch ids, the running result, the presence counts.
        let mut out = Encoder::new();
        out.u64(original.partials.len() as u64);
        for (batch_id, partial) in &original.partials {
            out.u64(*batch_id);
            out.batch(&partial.load().unwrap());
        }
        let mut running = Batch::new();
        for entry in original.running.iter() {
            running.push(entry.key(), entry.value(), entry.timestamp);
        }
        out.batch(&running);
        out.u64(original.running.len() as u64);
        for entry in original.running.iter() {
            match entry.key() {
                Some(key) => {
                    out.u64(1);
                    out.bytes(key);
                }
                None => out.u64(0),
            }
            out.u64(u64::from(entry.presence));
        }
        let bytes = out.finish();
        let dir = tempfile::tempdir().unwrap();
        for budget in [1 << 20, 0] {
            let place = SpillPlace {
                dir: dir.path(),
                partition: 0,
                budget,
            };
            let mut decoded = decode_whole(&mut Decoder::new(&bytes), place, "test").unwrap();
            assert_eq!(partials_of(&decoded), partials_of(&original));
            assert_eq!(running_of(&decoded), running_of(&original));
            assert_eq!(decoded.partials.iter().any(|(_, p)| p.is_spilled()), budget == 0);
            // Its next part is complete.
            let part = part_of(&mut decoded, true);
            assert!(
                PartReader::new(std::io::Cursor::new(part))
                    .unwrap()
                    .begin()
                    .unwrap()
            );
        }
        // A truncated snapshot is an error, not a panic.
        let place = SpillPlace {
            dir: dir.path(),
            partition: 0,
            budget: 1 << 20,
        };
        assert!(decode_whole(&mut Decoder::new(&bytes[..bytes.len() - 3]), place, "test").is_err());
    }

    #[test]
    fn spilled_partials_are_removed_when_they_leave_or_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let place = SpillPlace {
            dir: dir.path(),
            partition: 0,
            budget: 0,
        };
        let mut state = ReduceState::default();
        for batch_id in 0..4 {
            advance(&mut state, batch_id, &["x"]);
            state.spill_over(place, "test");
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "a window of two batches"
        );
        drop(state);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
