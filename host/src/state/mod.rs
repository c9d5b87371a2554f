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

pub mod spill;

use std::collections::BTreeSet;
use std::path::PathBuf;

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

/// Largest page cache of one spill file: 8 MiB.
pub const MAX_SPILL_CACHE: usize = 8 << 20;

/// The page cache of a spill file of a store whose budget is `budget`
/// bytes: an eighth of the budget, at most [`MAX_SPILL_CACHE`]. It comes out
/// of the budget: the entries in memory get the rest.
pub fn spill_cache_bytes(budget: usize) -> usize {
    (budget / 8).min(MAX_SPILL_CACHE)
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
    /// The budget holds entries and the spill file's page cache
    /// ([`spill_cache_bytes`]) together.
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

    /// Every entry, in memory and on disk.
    pub fn entries(&self) -> Result<Vec<KeyedEntry>, StateError> {
        self.idle_since(i64::MAX)
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
        for key in changes.remove {
            self.forget(&key);
        }
        for (key, entry) in changes.put {
            self.forget(&key);
            self.memory_bytes += entry.footprint(key.len());
            self.by_time.insert((entry.last_seen, key.clone()));
            self.memory.insert(key, entry);
        }
        if self.memory_bytes > self.budget
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
    /// to disk until memory holds half the budget: written to disk first,
    /// dropped from memory after.
    fn spill_oldest(&mut self) -> Result<(), StateError> {
        let target = self.budget / 2;
        let mut remaining = self.memory_bytes;
        let mut moved: Vec<Box<[u8]>> = Vec::new();
        for (_, key) in &self.by_time {
            if remaining <= target {
                break;
            }
            remaining -= self.memory[key].footprint(key.len());
            moved.push(key.clone());
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
        Ok(())
    }

    /// Keys and bytes held.
    pub fn size(&self) -> StateSize {
        let spilled = self.spill.as_ref().map_or(0, SpillFile::len) as u64;
        StateSize {
            keys: self.memory.len() as u64 + spilled,
            memory_bytes: self.memory_bytes as u64,
            spilled_keys: spilled,
        }
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
