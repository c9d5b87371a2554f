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

pub mod spill;

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
    /// Memory an entry of a `key_len`-byte key is counted for.
    fn footprint(&self, key_len: usize) -> usize {
        key_len + self.state.len() + 48
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

    /// Keys whose `last_seen` is at or before `before`, with their entries.
    pub fn idle_since(&self, before: i64) -> Result<Vec<KeyedEntry>, StateError> {
        let mut idle: Vec<KeyedEntry> = self
            .memory
            .iter()
            .filter(|(_, entry)| entry.last_seen <= before)
            .map(|(key, entry)| (key.clone(), entry.clone()))
            .collect();
        if let Some(spill) = &self.spill {
            idle.extend(spill.idle_since(before)?);
        }
        Ok(idle)
    }

    /// Every entry, in memory and on disk (for a checkpoint).
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
            if let Some(entry) = self.memory.remove(&key) {
                self.memory_bytes -= entry.footprint(key.len());
            }
        }
        for (key, entry) in changes.put {
            let key_len = key.len();
            self.memory_bytes += entry.footprint(key_len);
            if let Some(old) = self.memory.insert(key, entry) {
                self.memory_bytes -= old.footprint(key_len);
            }
        }
        if self.memory_bytes > self.budget
            && let Err(error) = self.spill_oldest()
        {
            tracing::warn!("state stays in memory, over its budget: {error}");
        }
        Ok(())
    }

    /// Moves the least recently seen entries to disk until memory holds half
    /// the budget: written to disk first, dropped from memory after.
    fn spill_oldest(&mut self) -> Result<(), StateError> {
        let mut by_age: Vec<(i64, &Box<[u8]>)> = self
            .memory
            .iter()
            .map(|(key, entry)| (entry.last_seen, key))
            .collect();
        by_age.sort_unstable();
        let target = self.budget / 2;
        let mut remaining = self.memory_bytes;
        let mut moved: Vec<KeyedEntry> = Vec::new();
        for (_, key) in by_age {
            if remaining <= target {
                break;
            }
            let entry = &self.memory[key];
            remaining -= entry.footprint(key.len());
            moved.push((key.clone(), entry.clone()));
        }
        if self.spill.is_none() {
            self.spill = Some(SpillFile::create(&self.spill_path, self.cache_bytes)?);
        }
        let spill = self.spill.as_mut().expect("created above");
        spill.put(&moved)?;
        tracing::debug!(keys = moved.len(), file = %self.spill_path.display(), "state spilled to disk");
        for (key, _) in moved {
            if let Some(entry) = self.memory.remove(&key) {
                self.memory_bytes -= entry.footprint(key.len());
            }
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

    #[test]
    fn the_spill_cache_is_an_eighth_of_the_budget_at_most_8_mib() {
        assert_eq!(spill_cache_bytes(2_000), 250);
        assert_eq!(spill_cache_bytes(16 << 20), 2 << 20);
        assert_eq!(spill_cache_bytes(1 << 30), MAX_SPILL_CACHE);
    }
}
