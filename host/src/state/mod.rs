//! Host-owned keyed state: what `update-state-by-key` and `map-with-state`
//! keep per key across micro-batches.
//!
//! A [`KeyedStore`] holds one partition's state of one stage (state is
//! partitioned by key with the shuffle's hash, so a key always lands in the
//! same store). Entries live in memory up to a byte budget; past it, the
//! least recently updated entries move to an embedded on-disk store
//! ([`spill`], redb) and come back when their key is seen again, so state can
//! outgrow memory without growing it. The store's budget covers the spill
//! file's page cache too ([`spill_cache_bytes`]): entries in memory and
//! cache together stay within it. Reads never change the store: an
//! operator reads what it needs, calls its plugin, and only then commits the
//! new states ([`KeyedStore::commit`]), so a failed call leaves state as it
//! was (and can be retried).
//!
//! Timeouts read an index by last-seen time, not every entry: in memory a
//! sorted set of `(last_seen, key)` kept in step with the entries, on disk a
//! second table of the spill file ([`spill`]). The keys idle since a time
//! are then a range of each, so a batch's timeout work follows the keys that
//! time out, not the keys held; spilling takes the oldest entries from the
//! same set.
//!
//! A store also knows which keys changed since its last checkpoint part
//! ([`KeyedStore::write_part`]), so that a checkpoint writes those entries
//! and not the whole state ([`crate::checkpoint::incremental`]). Every put
//! stamps its entry with the batch's time, so the keys put since the last
//! part are those of the time index after the newest time that part saw —
//! a range of the index, in memory and on disk, found when the part is
//! written. Only what the index cannot tell is kept as keys: removed keys,
//! and the rare put stamped no later than that time (a clock that went
//! back); up to a sixteenth of the budget. Past that, before a store's first
//! part, or when the changed keys found take more than an eighth of the
//! budget (at least [`MIN_CHANGED_KEYS`]) to sort, the part lists every
//! entry of the partition instead (streamed).

pub mod spill;

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::PathBuf;

use crate::checkpoint::incremental::PartWriter;
use crate::operator::keyed::FastMap;
use spill::SpillFile;

/// A state store failed (its spill file could not be used).
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

/// The state of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// The plugin's state bytes.
    pub state: Vec<u8>,
    /// Time of the last batch in which the key had a value (for timeouts).
    pub last_seen: i64,
}

impl StateEntry {
    /// Memory an entry of a `key_len`-byte key is counted for: the key twice
    /// (the map and the time index), the state, and the two structures'
    /// bookkeeping.
    fn footprint(&self, key_len: usize) -> usize {
        2 * key_len + self.state.len() + 96
    }
}

impl StateEntry {
    /// Appends the entry as stored on disk and in checkpoint parts:
    /// `last_seen` (8 bytes, little-endian) then the state.
    pub fn encode_into(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.last_seen.to_le_bytes());
        bytes.extend_from_slice(&self.state);
    }

    /// An entry from its [`StateEntry::encode_into`] bytes; `None` when
    /// they are too short.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (time, state) = bytes.split_first_chunk::<8>()?;
        Some(Self {
            state: state.to_vec(),
            last_seen: i64::from_le_bytes(*time),
        })
    }
}

/// A key (as stored) with its entry.
pub type KeyedEntry = (Box<[u8]>, StateEntry);

/// What a batch does to the store: applied all at once by [`KeyedStore::commit`].
#[derive(Debug, Default)]
pub struct StateChanges {
    /// New entries, by key.
    pub put: Vec<KeyedEntry>,
    /// Keys to remove.
    pub remove: Vec<Box<[u8]>>,
}

/// The changed keys a checkpoint part may sort in memory for one store,
/// at least (an eighth of the store's budget if more): a transient at a
/// batch boundary, one store at a time, so not counted in the budget; past
/// it the store writes every entry instead.
pub const MIN_CHANGED_KEYS: usize = 8 << 20;

/// Most bytes of entries spilled in one write transaction (unless the
/// spill file's cache is larger): see `KeyedStore::spill_oldest`.
pub const SPILL_SLICE: usize = 4 << 20;

/// Largest page cache of one spill file: 8 MiB.
pub const MAX_SPILL_CACHE: usize = 8 << 20;

/// The page cache of a spill file of a store whose budget is `budget`
/// bytes: an eighth of the budget, at most [`MAX_SPILL_CACHE`]. It comes out
/// of the budget: the entries in memory get the rest.
pub fn spill_cache_bytes(budget: usize) -> usize {
    (budget / 8).min(MAX_SPILL_CACHE)
}

/// Memory a key of `key_len` bytes takes in the set of changed keys.
fn changed_footprint(key_len: usize) -> usize {
    key_len + 40
}

/// What changed since the store's last checkpoint part.
#[derive(Debug)]
enum Changes {
    /// Not known (a new store, one restored from a snapshot written whole,
    /// more changes than worth keeping, a failed part): the next part lists
    /// every entry.
    Unknown,
    /// The entries stamped after `mark` (found in the time index), and
    /// `keys`: keys removed or put with a stamp no later than `mark`.
    Since {
        /// The newest stamp the last part saw.
        mark: i64,
        /// Keys the index cannot tell.
        keys: HashSet<Box<[u8]>, foldhash::fast::FixedState>,
        /// Their memory ([`changed_footprint`]).
        bytes: usize,
    },
}

impl Changes {
    fn since(mark: i64) -> Self {
        Self::Since {
            mark,
            keys: HashSet::default(),
            bytes: 0,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Unknown => 0,
            Self::Since { bytes, .. } => *bytes,
        }
    }
}

/// `keys` sorted, each once.
fn sorted_unique(mut keys: Vec<Box<[u8]>>) -> Vec<Box<[u8]>> {
    keys.sort_unstable();
    keys.dedup();
    keys
}

fn write_error(error: std::io::Error) -> StateError {
    StateError(format!("cannot write a checkpoint part: {error}"))
}

/// One partition's keyed state.
pub struct KeyedStore {
    memory: FastMap<Box<[u8]>, StateEntry>,
    /// The keys of `memory` by `last_seen`, oldest first.
    by_time: BTreeSet<(i64, Box<[u8]>)>,
    memory_bytes: usize,
    /// Bytes of entries kept in memory (the store's budget less the spill cache).
    budget: usize,
    /// The spill file's page cache.
    cache_bytes: usize,
    spill_path: PathBuf,
    spill: Option<SpillFile>,
    /// Keys changed since the last checkpoint part.
    changes: Changes,
    /// The most memory `changes` may take before it gives up on keys.
    changes_limit: usize,
    /// The newest `last_seen` ever committed.
    newest: i64,
    /// The most memory the changed keys a part sorts may take.
    changed_keys_limit: usize,
}

impl std::fmt::Debug for KeyedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStore")
            .field("memory_keys", &self.memory.len())
            .field("memory_bytes", &self.memory_bytes)
            .field("spilled_keys", &self.spill.as_ref().map_or(0, SpillFile::len))
            .finish()
    }
}

/// Sizes of a store.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StateSize {
    /// Entries held, in memory and on disk: keys with state (for windows,
    /// one per key of each per-batch partial result and of the running result).
    pub keys: u64,
    /// Bytes of state (keys, states, bookkeeping) in memory.
    pub memory_bytes: u64,
    /// Keys whose state is on disk.
    pub spilled_keys: u64,
}

impl std::ops::AddAssign for StateSize {
    fn add_assign(&mut self, other: Self) {
        self.keys += other.keys;
        self.memory_bytes += other.memory_bytes;
        self.spilled_keys += other.spilled_keys;
    }
}

impl KeyedStore {
    /// A store that keeps up to `budget` bytes in memory and spills the rest
    /// to a file at `spill_path` (created on first spill, removed on drop).
    /// The budget holds entries, the spill file's page cache
    /// ([`spill_cache_bytes`]) and the keys changed since the last
    /// checkpoint part (a sixteenth at most) together.
    pub fn new(budget: usize, spill_path: PathBuf) -> Self {
        let cache_bytes = spill_cache_bytes(budget);
        Self {
            memory: FastMap::default(),
            by_time: BTreeSet::new(),
            memory_bytes: 0,
            budget: budget - cache_bytes,
            cache_bytes,
            spill_path,
            spill: None,
            changes: Changes::Unknown,
            changes_limit: budget / 16,
            newest: i64::MIN,
            changed_keys_limit: (budget / 8).max(MIN_CHANGED_KEYS),
        }
    }

    /// The state of `key`, wherever it is.
    pub fn get(&self, key: &[u8]) -> Result<Option<StateEntry>, StateError> {
        if let Some(entry) = self.memory.get(key) {
            return Ok(Some(entry.clone()));
        }
        match &self.spill {
            Some(spill) => Ok(spill.get_many(std::iter::once(key))?.pop().flatten()),
            None => Ok(None),
        }
    }

    /// The states of `keys`, in order; spilled ones are read in one go.
    pub fn get_many(&self, keys: &[Box<[u8]>]) -> Result<Vec<Option<StateEntry>>, StateError> {
        let mut found: Vec<Option<StateEntry>> =
            keys.iter().map(|key| self.memory.get(key).cloned()).collect();
        if let Some(spill) = &self.spill {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if !missing.is_empty() {
                let from_disk = spill.get_many(missing.iter().map(|&i| &keys[i][..]))?;
                for (index, entry) in missing.into_iter().zip(from_disk) {
                    found[index] = entry;
                }
            }
        }
        Ok(found)
    }

    /// Every key with state, in memory and on disk (in no order).
    pub fn keys(&self) -> Result<Vec<Box<[u8]>>, StateError> {
        let mut keys: Vec<Box<[u8]>> = self.memory.keys().cloned().collect();
        if let Some(spill) = &self.spill {
            spill.for_each_encoded(|key, _| {
                keys.push(key.into());
                Ok(())
            })?;
        }
        Ok(keys)
    }

    /// Keys whose `last_seen` is at or before `before`, with their entries:
    /// a range of the time index in memory and of the spill file's, so the
    /// work follows the keys returned, not the keys held.
    pub fn idle_since(&self, before: i64) -> Result<Vec<KeyedEntry>, StateError> {
        let in_memory = match before.checked_add(1) {
            Some(end) => self.by_time.range(..(end, Box::default())),
            None => self.by_time.range(..),
        };
        let mut idle: Vec<KeyedEntry> = in_memory
            .map(|(_, key)| (key.clone(), self.memory[key].clone()))
            .collect();
        if let Some(spill) = &self.spill {
            idle.extend(spill.idle_since(before)?);
        }
        Ok(idle)
    }

    /// Applies a batch's changes, then spills if memory is over budget.
    /// All or nothing: the only step that can fail (removing spilled
    /// entries from disk) comes before any change in memory, and a failed
    /// spill keeps the entries in memory.
    pub fn commit(&mut self, changes: StateChanges) -> Result<(), StateError> {
        if let Some(spill) = &mut self.spill {
            let on_disk: Vec<Box<[u8]>> = changes
                .remove
                .iter()
                .chain(changes.put.iter().map(|(key, _)| key))
                .filter(|key| !self.memory.contains_key(*key))
                .cloned()
                .collect();
            if !on_disk.is_empty() {
                spill.remove(&on_disk)?;
            }
        }
        self.track(&changes);
        for key in changes.remove {
            self.forget(&key);
        }
        for (key, entry) in changes.put {
            self.forget(&key);
            self.newest = self.newest.max(entry.last_seen);
            self.memory_bytes += entry.footprint(key.len());
            self.by_time.insert((entry.last_seen, key.clone()));
            self.memory.insert(key, entry);
        }
        if self.memory_bytes + self.changes.bytes() > self.budget
            && let Err(error) = self.spill_oldest()
        {
            tracing::warn!("state stays in memory, over its budget: {error}");
        }
        Ok(())
    }

    /// Drops `key`'s entry from memory (and the time index), if there.
    fn forget(&mut self, key: &[u8]) {
        if let Some((key, entry)) = self.memory.remove_entry(key) {
            self.memory_bytes -= entry.footprint(key.len());
            self.by_time.remove(&(entry.last_seen, key));
        }
    }

    /// Moves the least recently seen entries (the front of the time index)
    /// to disk until memory holds half the budget, a slice at a time: each
    /// slice written to disk in one transaction, then dropped from memory.
    /// A write transaction holds its dirty pages in memory until it
    /// commits, so slices of at most [`SPILL_SLICE`] bytes (or the cache's
    /// size, if larger) keep that transient small instead of the size of
    /// half the budget.
    fn spill_oldest(&mut self) -> Result<(), StateError> {
        let target = (self.budget / 2).saturating_sub(self.changes.bytes());
        let slice = self.cache_bytes.max(SPILL_SLICE);
        while self.memory_bytes > target {
            let mut moved: Vec<Box<[u8]>> = Vec::new();
            let mut bytes = 0;
            for (_, key) in &self.by_time {
                if self.memory_bytes - bytes <= target || bytes >= slice {
                    break;
                }
                bytes += self.memory[key].footprint(key.len());
                moved.push(key.clone());
            }
            if moved.is_empty() {
                break;
            }
            if self.spill.is_none() {
                self.spill = Some(SpillFile::create(&self.spill_path, self.cache_bytes)?);
            }
            let spill = self.spill.as_mut().expect("created above");
            spill.put(moved.iter().map(|key| (&key[..], &self.memory[key])))?;
            tracing::debug!(keys = moved.len(), file = %self.spill_path.display(), "state spilled to disk");
            for key in moved {
                self.forget(&key);
            }
        }
        Ok(())
    }

    /// Keys and bytes held.
    pub fn size(&self) -> StateSize {
        let spilled = self.spill.as_ref().map_or(0, SpillFile::len) as u64;
        StateSize {
            keys: self.memory.len() as u64 + spilled,
            memory_bytes: (self.memory_bytes + self.changes.bytes()) as u64,
            spilled_keys: spilled,
        }
    }

    /// Notes what the time index will not tell of `changes`: removed keys,
    /// and puts stamped no later than the mark. Past the limit, forgets
    /// them all (the next part lists every entry).
    fn track(&mut self, changes: &StateChanges) {
        let Changes::Since { mark, keys, bytes } = &mut self.changes else {
            return;
        };
        let untold = changes.remove.iter().chain(
            changes
                .put
                .iter()
                .filter(|(_, entry)| entry.last_seen <= *mark)
                .map(|(key, _)| key),
        );
        for key in untold {
            if !keys.contains(key) {
                *bytes += changed_footprint(key.len());
                keys.insert(key.clone());
            }
            if *bytes > self.changes_limit {
                self.changes = Changes::Unknown;
                return;
            }
        }
    }

    /// Counts changes from now: the state as it is was checkpointed (by
    /// a restore from a chain of parts).
    pub fn mark_checkpointed(&mut self) {
        self.changes = Changes::since(self.newest);
    }

    /// Forgets the changes: the next part lists every entry.
    pub fn forget_changes(&mut self) {
        self.changes = Changes::Unknown;
    }

    /// Writes the store's section of a checkpoint part: the entries put and
    /// the keys removed since the last part, or, when those are not known
    /// (or too many to sort in memory), every entry (memory and disk merged
    /// in key order, streamed: nothing is copied but the in-memory keys'
    /// order). Changes are then counted from now; after an error, they are
    /// not known.
    pub fn write_part<W: Write>(&mut self, out: &mut PartWriter<W>) -> Result<(), StateError> {
        let changed = match &self.changes {
            Changes::Unknown => Ok(None),
            Changes::Since { mark, keys, .. } => self.changed_keys(*mark, keys),
        };
        let result = changed.and_then(|changed| match changed {
            Some(keys) => self.write_changes(&keys, out),
            None => self.write_complete(out),
        });
        self.changes = match &result {
            Ok(()) => Changes::since(self.newest),
            Err(_) => Changes::Unknown,
        };
        result
    }

    /// The keys changed since `mark`, sorted: stamped after it (a range of
    /// the time index in memory and on disk) or in `untold`. `None` when
    /// they take more than an eighth of the budget, or [`MIN_CHANGED_KEYS`]
    /// if more (then every entry is written instead).
    fn changed_keys(
        &self,
        mark: i64,
        untold: &HashSet<Box<[u8]>, foldhash::fast::FixedState>,
    ) -> Result<Option<Vec<Box<[u8]>>>, StateError> {
        let Some(after) = mark.checked_add(1) else {
            return Ok(Some(sorted_unique(untold.iter().cloned().collect())));
        };
        let limit = self.changed_keys_limit;
        let mut bytes = 0;
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        for key in untold
            .iter()
            .chain(self.by_time.range((after, Box::default())..).map(|(_, key)| key))
        {
            bytes += changed_footprint(key.len());
            if bytes > limit {
                return Ok(None);
            }
            keys.push(key.clone());
        }
        if let Some(spill) = &self.spill {
            match spill.keys_seen_since(after, limit - bytes, changed_footprint)? {
                Some(on_disk) => keys.extend(on_disk),
                None => return Ok(None),
            }
        }
        Ok(Some(sorted_unique(keys)))
    }

    fn write_changes<W: Write>(
        &self,
        sorted: &[Box<[u8]>],
        out: &mut PartWriter<W>,
    ) -> Result<(), StateError> {
        out.begin(false).map_err(write_error)?;
        let mut value = Vec::new();
        for chunk in sorted.chunks(4096) {
            // The spilled ones in one read.
            let on_disk: Vec<&[u8]> = chunk
                .iter()
                .filter(|key| !self.memory.contains_key(&key[..]))
                .map(|key| &key[..])
                .collect();
            let mut from_disk = match &self.spill {
                Some(spill) if !on_disk.is_empty() => spill.get_many(on_disk.iter().copied())?,
                _ => vec![None; on_disk.len()],
            }
            .into_iter();
            for key in chunk {
                let found = match self.memory.get(&key[..]) {
                    Some(entry) => Some(entry.clone()),
                    None => from_disk.next().flatten(),
                };
                match found {
                    Some(entry) => {
                        value.clear();
                        entry.encode_into(&mut value);
                        out.put(key, &value).map_err(write_error)?;
                    }
                    None => out.remove(key).map_err(write_error)?,
                }
            }
        }
        Ok(())
    }

    fn write_complete<W: Write>(&self, out: &mut PartWriter<W>) -> Result<(), StateError> {
        out.begin(true).map_err(write_error)?;
        let mut in_memory: Vec<&Box<[u8]>> = self.memory.keys().collect();
        in_memory.sort_unstable();
        let mut next = 0;
        let mut value = Vec::new();
        // Writes the in-memory entries before `until` (all with `None`).
        let mut memory_before = |until: Option<&[u8]>, out: &mut PartWriter<W>| -> Result<(), StateError> {
            while let Some(key) = in_memory.get(next)
                && until.is_none_or(|until| key[..] < *until)
            {
                value.clear();
                self.memory[*key].encode_into(&mut value);
                out.put(key, &value).map_err(write_error)?;
                next += 1;
            }
            Ok(())
        };
        if let Some(spill) = &self.spill {
            spill.for_each_encoded(|key, value| {
                memory_before(Some(key), out)?;
                out.put(key, value).map_err(write_error)
            })?;
        }
        memory_before(None, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: &str, last_seen: i64) -> StateEntry {
        StateEntry {
            state: state.as_bytes().to_vec(),
            last_seen,
        }
    }

    #[test]
    fn state_spills_past_the_budget_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyedStore::new(2_000, dir.path().join("spill.redb"));
        for round in 0..3i64 {
            let put = (0..100)
                .map(|k| {
                    (
                        format!("key-{k}").into_bytes().into(),
                        entry(&format!("{k}-{round}"), round),
                    )
                })
                .collect();
            store
                .commit(StateChanges {
                    put,
                    remove: Vec::new(),
                })
                .unwrap();
        }
        let size = store.size();
        assert_eq!(size.keys, 100);
        assert!(size.spilled_keys > 0, "{size:?}");
        // The spill file's cache comes out of the budget.
        assert!(
            size.memory_bytes <= 2_000 - spill_cache_bytes(2_000) as u64,
            "{size:?}"
        );
        for k in 0..100 {
            let got = store.get(format!("key-{k}").as_bytes()).unwrap().unwrap();
            assert_eq!(got, entry(&format!("{k}-2"), 2));
        }
        store
            .commit(StateChanges {
                put: Vec::new(),
                remove: (0..50).map(|k| format!("key-{k}").into_bytes().into()).collect(),
            })
            .unwrap();
        assert_eq!(store.size().keys, 50);
        assert_eq!(store.idle_since(2).unwrap().len(), 50);
        assert!(store.get(b"key-1").unwrap().is_none());
    }

    /// A tiny xorshift for the model test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The keys `idle_since(before)` returns, sorted, with their entries.
    fn idle(store: &KeyedStore, before: i64) -> Vec<KeyedEntry> {
        let mut idle = store.idle_since(before).unwrap();
        idle.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        idle
    }

    #[test]
    fn idle_since_returns_exactly_the_idle_keys_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        // A budget that holds a few dozen entries: most live on disk, and
        // keys move between memory and disk as they are updated.
        let mut store = KeyedStore::new(6_000, dir.path().join("spill.redb"));
        let mut model: std::collections::BTreeMap<Box<[u8]>, StateEntry> = Default::default();
        let mut rng = Rng(0x1d1e_5eed_u64 | 1);
        for time in 0..60i64 {
            let mut changes = StateChanges::default();
            let mut touched = std::collections::HashSet::new();
            for _ in 0..rng.below(40) {
                let key: Box<[u8]> = format!("key-{}", rng.below(150)).into_bytes().into();
                if !touched.insert(key.clone()) {
                    continue;
                }
                if rng.below(5) == 0 {
                    if model.remove(&key).is_some() {
                        changes.remove.push(key);
                    }
                } else {
                    // Updates move a key's last_seen, sometimes backwards.
                    let seen = time - rng.below(3) as i64;
                    let value = entry(&format!("{}-{time}", rng.below(1000)), seen);
                    model.insert(key.clone(), value.clone());
                    changes.put.push((key, value));
                }
            }
            store.commit(changes).unwrap();
            assert_eq!(store.size().keys, model.len() as u64);
            for before in [-1, time / 2, time - 3, time - 1, time, i64::MAX] {
                let expected: Vec<KeyedEntry> = model
                    .iter()
                    .filter(|(_, e)| e.last_seen <= before)
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect();
                assert_eq!(idle(&store, before), expected, "at {time}, idle since {before}");
            }
        }
        let size = store.size();
        assert!(
            size.spilled_keys > 10 && size.spilled_keys < size.keys,
            "{size:?}"
        );
        // Removing every idle key leaves exactly the others, on both sides.
        let old: Vec<Box<[u8]>> = idle(&store, 40).into_iter().map(|(k, _)| k).collect();
        assert!(!old.is_empty());
        store
            .commit(StateChanges {
                put: Vec::new(),
                remove: old.clone(),
            })
            .unwrap();
        model.retain(|k, _| !old.contains(k));
        assert!(idle(&store, 40).is_empty());
        assert_eq!(idle(&store, i64::MAX).len(), model.len());
        assert_eq!(store.size().keys, model.len() as u64);
    }

    /// Writes `store`'s part (one partition) into memory.
    fn part_of(store: &mut KeyedStore) -> (Vec<u8>, crate::checkpoint::incremental::PartSummary) {
        let mut writer = PartWriter::new(Vec::new(), 1).unwrap();
        store.write_part(&mut writer).unwrap();
        writer.finish().unwrap()
    }

    /// The state a chain of parts (one partition) holds.
    fn merged(parts: &[Vec<u8>]) -> Vec<KeyedEntry> {
        use crate::checkpoint::incremental::{Merge, PartReader};
        let readers = parts.iter().map(|p| PartReader::new(&p[..]).unwrap()).collect();
        let mut merge = Merge::new(readers).unwrap();
        let mut entries = Vec::new();
        while merge.next_partition().unwrap().is_some() {
            while let Some((key, value)) = merge.next_entry().unwrap() {
                entries.push((key.into(), StateEntry::decode(&value).unwrap()));
            }
        }
        merge.finish().unwrap();
        entries
    }

    #[test]
    fn parts_list_what_changed_and_their_chain_is_the_state_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        // Room for about 20 changed keys: more than a part's 15 at most.
        let mut store = KeyedStore::new(16_000, dir.path().join("spill.redb"));
        let mut model: std::collections::BTreeMap<Box<[u8]>, StateEntry> = Default::default();
        let mut rng = Rng(0x0c4a_17ed | 1);
        let mut chain: Vec<Vec<u8>> = Vec::new();
        let mut change_parts = 0;
        for time in 0..40i64 {
            let mut changes = StateChanges::default();
            let mut touched = std::collections::HashSet::new();
            // Many keys at first, then a few per batch.
            for _ in 0..if time == 0 { 120 } else { rng.below(6) } {
                let key: Box<[u8]> = format!("key-{:03}", rng.below(150)).into_bytes().into();
                if !touched.insert(key.clone()) {
                    continue;
                }
                if rng.below(4) == 0 && model.remove(&key).is_some() {
                    changes.remove.push(key);
                } else if !changes.remove.contains(&key) {
                    // Now and then stamped in the past (a clock that went
                    // back): the time index cannot tell those.
                    let stamp = if rng.below(6) == 0 { time - 4 } else { time };
                    let value = entry(&format!("{}-{time}-{:100}", rng.below(1000), ""), stamp);
                    model.insert(key.clone(), value.clone());
                    changes.put.push((key, value));
                }
            }
            store.commit(changes).unwrap();
            if time % 3 == 2 {
                let (part, summary) = part_of(&mut store);
                if summary.is_full() {
                    chain.clear();
                } else {
                    change_parts += 1;
                    // Only the keys touched since the last part.
                    assert!(summary.puts + summary.removes <= 3 * 5, "{summary:?}");
                }
                chain.push(part);
                let expected: Vec<KeyedEntry> = model.iter().map(|(k, e)| (k.clone(), e.clone())).collect();
                assert!(merged(&chain) == expected, "after {time}");
            }
        }
        assert!(store.size().spilled_keys > 0, "{:?}", store.size());
        assert_eq!(change_parts, 12, "every part but the first lists changes");
        // After forgetting its changes, the store writes a full part again.
        store.forget_changes();
        let (part, summary) = part_of(&mut store);
        assert!(summary.is_full());
        assert_eq!(summary.puts, model.len() as u64);
        let expected: Vec<KeyedEntry> = model.into_iter().collect();
        assert!(merged(&[part]) == expected, "the full part holds the state");
    }

    fn puts(keys: std::ops::Range<u32>, stamp: i64) -> StateChanges {
        StateChanges {
            put: keys
                .map(|k| (format!("key-{k:012}").into_bytes().into(), entry("v", stamp)))
                .collect(),
            remove: Vec::new(),
        }
    }

    fn removes(keys: std::ops::Range<u32>) -> StateChanges {
        StateChanges {
            put: Vec::new(),
            remove: keys.map(|k| format!("key-{k:012}").into_bytes().into()).collect(),
        }
    }

    #[test]
    fn puts_are_found_by_their_stamp_and_only_what_the_index_cannot_tell_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyedStore::new(64_000, dir.path().join("spill.redb"));
        store.mark_checkpointed();
        // Puts stamped after the last part: nothing kept, found by the index.
        store.commit(puts(0..60, 1)).unwrap();
        assert_eq!(store.changes.bytes(), 0);
        let summary = part_of(&mut store).1;
        assert!(!summary.is_full());
        assert_eq!((summary.puts, summary.removes), (60, 0));
        // Removed keys, and a put stamped no later than the last part's
        // newest stamp, are kept.
        store.commit(removes(0..10)).unwrap();
        store.commit(puts(20..21, 0)).unwrap();
        assert!(store.changes.bytes() > 0);
        let summary = part_of(&mut store).1;
        assert_eq!((summary.puts, summary.removes), (1, 10));
        assert_eq!(store.changes.bytes(), 0);
        let summary = part_of(&mut store).1;
        assert_eq!((summary.puts, summary.removes, summary.is_full()), (0, 0, false));
    }

    #[test]
    fn too_many_changes_make_the_next_part_full() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyedStore::new(64_000, dir.path().join("spill.redb"));
        store.changed_keys_limit = 8_000;
        store.mark_checkpointed();
        // More changed keys than the part may sort (8,000 bytes here, 56
        // a key): the part lists every entry instead.
        store.commit(puts(0..200, 2)).unwrap();
        let (_, summary) = part_of(&mut store);
        assert!(summary.is_full());
        assert_eq!(summary.puts, 200);
        // More removed keys than a sixteenth of the budget: forgotten (their
        // memory with them), and the next part is full.
        store.commit(removes(0..80)).unwrap();
        assert!(matches!(store.changes, Changes::Unknown));
        assert_eq!(store.changes.bytes(), 0);
        let (_, summary) = part_of(&mut store);
        assert!(summary.is_full());
        assert_eq!(summary.puts, 120);
    }

    #[test]
    fn negative_and_extreme_times_keep_their_order_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyedStore::new(1_000, dir.path().join("spill.redb"));
        let times = [i64::MIN, -5_000, -1, 0, 1, 7_000, i64::MAX];
        let put = times
            .iter()
            .map(|&t| (format!("t{t}").into_bytes().into(), entry(&"x".repeat(200), t)))
            .collect();
        store
            .commit(StateChanges {
                put,
                remove: Vec::new(),
            })
            .unwrap();
        assert!(store.size().spilled_keys >= 4, "{:?}", store.size());
        for (at, &before) in times.iter().enumerate() {
            let found = idle(&store, before).len();
            assert_eq!(found, at + 1, "idle since {before}");
        }
    }

    #[test]
    fn the_spill_cache_is_an_eighth_of_the_budget_at_most_8_mib() {
        assert_eq!(spill_cache_bytes(2_000), 250);
        assert_eq!(spill_cache_bytes(16 << 20), 2 << 20);
        assert_eq!(spill_cache_bytes(1 << 30), MAX_SPILL_CACHE);
    }
}
