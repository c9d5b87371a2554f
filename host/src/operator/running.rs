//! The running result of a reducing window: per key, the reduction of the
//! window's values so far and its timestamp. A processing-time window with
//! an inverse ([`super::window::WindowedReduce`]) keeps one, with how many
//! of the window's per-batch partials hold each key (its presence; the key
//! leaves the result when it drops to zero); an event-time window keeps one
//! per open window ([`super::event_window_state`], presence unused).
//!
//! A batch changes only the keys of the partial that enters and of those
//! that leave, so the result is a hash table changed in place: a batch's
//! work follows its own keys, not the window's. The changes are computed
//! aside first ([`RunningChanges`], while reducer calls may still fail) and
//! applied once every call of the batch succeeded. Entries are found by key,
//! or by the key's hash ([`key_hash`]): checkpoint parts track the keys a
//! batch touched by hash alone.

use hashbrown::HashTable;

use super::keyed::{FastMap, KeyView};
use crate::record::Batch;

/// `key_len` of an entry for records without a key.
const NO_KEY: u32 = u32::MAX;
/// Bytes counted per entry besides its key and value: the table slot and
/// the allocator's overhead for the entry's bytes.
const ENTRY_OVERHEAD: usize = size_of::<RunningEntry>() + 1 + 16;

/// The hash a key is stored and tracked by.
pub fn key_hash(key: Option<&[u8]>) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::default().hash_one(KeyView(key))
}

/// One key of the running result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningEntry {
    /// [`key_hash`] of the key.
    hash: u64,
    /// The key's bytes, then the value's.
    bytes: Box<[u8]>,
    /// The key's length, or [`NO_KEY`].
    key_len: u32,
    /// How many of the window's partials hold the key.
    pub presence: u32,
    /// The timestamp of the key's record.
    pub timestamp: i64,
}

impl RunningEntry {
    fn new(hash: u64, key: Option<&[u8]>, value: &[u8], timestamp: i64, presence: u32) -> Self {
        let key_bytes = key.unwrap_or_default();
        let mut bytes = Vec::with_capacity(key_bytes.len() + value.len());
        bytes.extend_from_slice(key_bytes);
        bytes.extend_from_slice(value);
        Self {
            hash,
            bytes: bytes.into_boxed_slice(),
            key_len: key.map_or(NO_KEY, |key| key.len() as u32),
            presence,
            timestamp,
        }
    }

    /// The record key.
    pub fn key(&self) -> Option<&[u8]> {
        (self.key_len != NO_KEY).then(|| &self.bytes[..self.key_len as usize])
    }

    /// The reduced value.
    pub fn value(&self) -> &[u8] {
        &self.bytes[self.key_bytes()..]
    }

    fn key_bytes(&self) -> usize {
        if self.key_len == NO_KEY {
            0
        } else {
            self.key_len as usize
        }
    }

    fn is(&self, hash: u64, key: Option<&[u8]>) -> bool {
        self.hash == hash && self.key() == key
    }
}

/// What a batch changes for one key of the running result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key's new value and timestamp; `None` when unchanged.
    pub value: Option<(Vec<u8>, i64)>,
    /// The key's presence after the batch; zero removes it.
    pub presence: u32,
}

/// A batch's changes to the running result, per key it touched (the keys of
/// the partials entering and leaving, borrowed from them).
pub type RunningChanges<'a> = FastMap<Option<&'a [u8]>, Change>;

/// The running result: one [`RunningEntry`] per key of the window.
#[derive(Debug, Default, Clone)]
pub struct RunningResult {
    table: HashTable<RunningEntry>,
    /// Key and value bytes of every entry.
    data_bytes: usize,
}

impl RunningResult {
    /// Keys in the result.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no key is in the result.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The entry of `key`.
    pub fn get(&self, key: Option<&[u8]>) -> Option<&RunningEntry> {
        let hash = key_hash(key);
        self.table.find(hash, |entry| entry.is(hash, key))
    }

    /// The entries whose key hashes to `hash` (almost always one or none).
    pub fn with_hash(&self, hash: u64) -> impl Iterator<Item = &RunningEntry> {
        self.table.iter_hash(hash).filter(move |entry| entry.hash == hash)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &RunningEntry> {
        self.table.iter()
    }

    /// Sets `key`'s value, timestamp and presence, adding the key when new.
    pub fn set(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: i64, presence: u32) {
        let hash = key_hash(key);
        match self.table.find_mut(hash, |entry| entry.is(hash, key)) {
            // A value of the same length is written over the old one.
            Some(old) if old.value().len() == value.len() => {
                let at = old.key_bytes();
                old.bytes[at..].copy_from_slice(value);
                old.timestamp = timestamp;
                old.presence = presence;
            }
            Some(old) => {
                let entry = RunningEntry::new(hash, key, value, timestamp, presence);
                self.data_bytes = self.data_bytes + entry.bytes.len() - old.bytes.len();
                *old = entry;
            }
            None => {
                let entry = RunningEntry::new(hash, key, value, timestamp, presence);
                self.data_bytes += entry.bytes.len();
                self.table.insert_unique(hash, entry, |entry| entry.hash);
            }
        }
    }

    /// Sets `key`'s presence, when the key is in the result.
    pub fn set_presence(&mut self, key: Option<&[u8]>, presence: u32) {
        let hash = key_hash(key);
        if let Some(entry) = self.table.find_mut(hash, |entry| entry.is(hash, key)) {
            entry.presence = presence;
        }
    }

    /// Removes `key`; false when it was not in the result.
    pub fn remove(&mut self, key: Option<&[u8]>) -> bool {
        let hash = key_hash(key);
        match self.table.find_entry(hash, |entry| entry.is(hash, key)) {
            Ok(found) => {
                let (entry, _) = found.remove();
                self.data_bytes -= entry.bytes.len();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives memory back once the table holds under a quarter of what it
    /// has room for (after a burst of keys that left).
    pub fn shrink_if_sparse(&mut self) {
        if self.table.capacity() > 1024 && self.table.len() < self.table.capacity() / 4 {
            self.table.shrink_to(self.table.len() * 2, |entry| entry.hash);
        }
    }

    /// Applies one key's change.
    pub fn apply(&mut self, key: Option<&[u8]>, change: &Change) {
        match (&change.value, change.presence) {
            (_, 0) => {
                self.remove(key);
            }
            (Some((value, timestamp)), presence) => self.set(key, value, *timestamp, presence),
            (None, presence) => self.set_presence(key, presence),
        }
    }

    /// The result as records, in no particular order, without those whose
    /// value is `neutral`.
    pub fn to_batch(&self, neutral: Option<&[u8]>) -> Batch {
        let mut out = Batch::with_capacity(self.len(), self.data_bytes);
        for entry in self.iter().filter(|entry| Some(entry.value()) != neutral) {
            out.push(entry.key(), entry.value(), entry.timestamp);
        }
        out
    }

    /// Bytes the result takes in memory.
    pub fn memory_bytes(&self) -> usize {
        self.data_bytes + self.table.capacity() * ENTRY_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_set_found_by_key_or_hash_and_removed() {
        let mut running = RunningResult::default();
        running.set(Some(b"a"), b"1", 10, 1);
        running.set(None, b"7", 11, 2);
        running.set(Some(b""), b"8", 12, 3);
        assert_eq!(running.len(), 3);
        let a = running.get(Some(b"a")).unwrap();
        assert_eq!(
            (a.key(), a.value(), a.timestamp, a.presence),
            (Some(&b"a"[..]), &b"1"[..], 10, 1)
        );
        // A record without a key and one with an empty key are different keys.
        assert_eq!(running.get(None).unwrap().value(), b"7");
        assert_eq!(running.get(Some(b"")).unwrap().value(), b"8");
        let by_hash: Vec<_> = running.with_hash(key_hash(None)).collect();
        assert_eq!(by_hash.len(), 1);
        assert_eq!(by_hash[0].key(), None);

        running.apply(
            Some(b"a"),
            &Change {
                value: Some((b"22".to_vec(), 13)),
                presence: 2,
            },
        );
        running.apply(
            None,
            &Change {
                value: None,
                presence: 5,
            },
        );
        assert_eq!(running.get(Some(b"a")).unwrap().value(), b"22");
        assert_eq!(running.get(None).unwrap().presence, 5);
        let bytes = running.memory_bytes();
        running.apply(
            Some(b""),
            &Change {
                value: None,
                presence: 0,
            },
        );
        assert!(running.get(Some(b"")).is_none());
        // The removed entry's one byte (an empty key and the value `8`).
        assert_eq!(running.memory_bytes(), bytes - 1);
        assert!(!running.remove(Some(b"missing")));

        let mut records: Vec<_> = running
            .to_batch(Some(b"7"))
            .iter()
            .map(|r| (r.key.map(<[u8]>::to_vec), r.value.to_vec()))
            .collect();
        records.sort();
        assert_eq!(records, vec![(Some(b"a".to_vec()), b"22".to_vec())]);
    }
}
