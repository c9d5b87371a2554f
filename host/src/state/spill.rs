//! The on-disk half of a [`super::KeyedStore`]: an embedded redb database
//! holding the entries that did not fit in memory. It is scratch space, not
//! a checkpoint: commits skip fsync, and the file is deleted with the store.
//!
//! redb caches pages it reads and writes, 1 GiB per database unless told
//! otherwise: what moved to disk came back into memory as cache, and with
//! a spill file per partition a stage's resident memory grew with its
//! partitions (measured: 1.66 GB peak RSS for 1.5 GB of state spilled from a
//! 32 MiB `state-memory`). Each spill file gets a cache of its own size
//! instead ([`SpillFile::create`]), carved out of its partition's share of
//! `state-memory` ([`super::spill_cache_bytes`]).

use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::{KeyedEntry, StateEntry, StateError};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");

/// Spilled state entries: key → `last_seen` (8 bytes, little-endian) + state.
pub struct SpillFile {
    path: PathBuf,
    db: Database,
    len: usize,
}

fn error(context: &str, path: &Path, e: impl std::fmt::Display) -> StateError {
    StateError(format!("{context} {}: {e}", path.display()))
}

fn encode(entry: &StateEntry) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + entry.state.len());
    bytes.extend_from_slice(&entry.last_seen.to_le_bytes());
    bytes.extend_from_slice(&entry.state);
    bytes
}

fn decode(bytes: &[u8]) -> StateEntry {
    let (time, state) = bytes.split_at(8.min(bytes.len()));
    let mut last_seen = [0u8; 8];
    last_seen[..time.len()].copy_from_slice(time);
    StateEntry {
        state: state.to_vec(),
        last_seen: i64::from_le_bytes(last_seen),
    }
}

impl SpillFile {
    /// Creates (or truncates) the file at `path`, caching at most
    /// `cache_bytes` of its pages in memory (reads and writes together).
    pub fn create(path: &Path, cache_bytes: usize) -> Result<Self, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| error("cannot create", dir, e))?;
        }
        let _ = std::fs::remove_file(path);
        let db = Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| error("cannot create the spill file", path, e))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            len: 0,
        })
    }

    /// Entries on disk.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is on disk.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries of `keys` (those spilled), in order, in one read transaction.
    pub fn get_many<'k>(
        &self,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<Vec<Option<StateEntry>>, StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot read", &self.path, e);
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = match txn.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(keys.map(|_| None).collect()),
            Err(e) => return Err(fail(&e)),
        };
        keys.map(|key| {
            let value = table.get(key).map_err(|e| fail(&e))?;
            Ok(value.map(|v| decode(v.value())))
        })
        .collect()
    }

    /// Spilled entries whose `last_seen` is at or before `before`.
    pub fn idle_since(&self, before: i64) -> Result<Vec<KeyedEntry>, StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot read", &self.path, e);
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = match txn.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(fail(&e)),
        };
        let mut idle = Vec::new();
        for item in table.iter().map_err(|e| fail(&e))? {
            let (key, value) = item.map_err(|e| fail(&e))?;
            let entry = decode(value.value());
            if entry.last_seen <= before {
                idle.push((Box::from(key.value()), entry));
            }
        }
        Ok(idle)
    }

    /// Writes `entries` in one transaction.
    pub fn put(&mut self, entries: &[KeyedEntry]) -> Result<(), StateError> {
        self.write(|table| {
            let mut added = 0isize;
            for (key, entry) in entries {
                if table.insert(&key[..], &encode(entry)[..])?.is_none() {
                    added += 1;
                }
            }
            Ok(added)
        })
    }

    /// Removes `keys` (absent ones are ignored) in one transaction.
    pub fn remove(&mut self, keys: &[Box<[u8]>]) -> Result<(), StateError> {
        self.write(|table| {
            let mut removed = 0isize;
            for key in keys {
                if table.remove(&key[..])?.is_some() {
                    removed -= 1;
                }
            }
            Ok(removed)
        })
    }

    /// Runs `change` in a write transaction without fsync; it returns the
    /// change in the number of entries.
    fn write(
        &mut self,
        change: impl FnOnce(&mut redb::Table<'_, &[u8], &[u8]>) -> Result<isize, redb::StorageError>,
    ) -> Result<(), StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot write", &self.path, e);
        let mut txn = self.db.begin_write().map_err(|e| fail(&e))?;
        txn.set_durability(Durability::None).map_err(|e| fail(&e))?;
        let delta = {
            let mut table = txn.open_table(ENTRIES).map_err(|e| fail(&e))?;
            let delta = change(&mut table).map_err(|e| fail(&e))?;
            debug_assert!(table.len().is_ok());
            delta
        };
        txn.commit().map_err(|e| fail(&e))?;
        self.len = (self.len as isize + delta).max(0) as usize;
        Ok(())
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
