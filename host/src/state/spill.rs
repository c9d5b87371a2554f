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
//!
//! Two tables: `entries` (key → `last_seen` little-endian ++ state) and
//! `by-time` (`last_seen` as an order-preserving big-endian ++ key → nothing),
//! kept in step in every write transaction, so that the keys idle since a
//! time are a range scan of `by-time` ([`SpillFile::idle_since`]) instead of
//! a read of every entry.

use std::path::{Path, PathBuf};

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::{KeyedEntry, StateEntry, StateError};

const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
const BY_TIME: TableDefinition<&[u8], ()> = TableDefinition::new("by-time");

/// Spilled state entries: key → `last_seen` (8 bytes, little-endian) + state,
/// indexed by `last_seen`.
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
    entry.encode_into(&mut bytes);
    bytes
}

/// The `last_seen` of an encoded entry.
fn last_seen_of(bytes: &[u8]) -> i64 {
    let time = &bytes[..8.min(bytes.len())];
    let mut last_seen = [0u8; 8];
    last_seen[..time.len()].copy_from_slice(time);
    i64::from_le_bytes(last_seen)
}

fn decode(bytes: &[u8]) -> StateEntry {
    StateEntry {
        state: bytes[8.min(bytes.len())..].to_vec(),
        last_seen: last_seen_of(bytes),
    }
}

/// `time` as 8 bytes that sort as the times do (sign bit flipped, big-endian).
fn time_prefix(time: i64) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// The `by-time` key of `key` last seen at `time`.
fn index_key(time: i64, key: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + key.len());
    bytes.extend_from_slice(&time_prefix(time));
    bytes.extend_from_slice(key);
    bytes
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

    /// Spilled entries whose `last_seen` is at or before `before`: a range
    /// scan of the `by-time` index, then a lookup of each key found.
    pub fn idle_since(&self, before: i64) -> Result<Vec<KeyedEntry>, StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot read", &self.path, e);
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let (index, entries) = match (txn.open_table(BY_TIME), txn.open_table(ENTRIES)) {
            (Ok(index), Ok(entries)) => (index, entries),
            (Err(redb::TableError::TableDoesNotExist(_)), _)
            | (_, Err(redb::TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
            (Err(e), _) | (_, Err(e)) => return Err(fail(&e)),
        };
        let end = before.checked_add(1).map(time_prefix);
        let range = match &end {
            Some(end) => index.range::<&[u8]>(..&end[..]),
            None => index.range::<&[u8]>(..),
        };
        let mut idle = Vec::new();
        for item in range.map_err(|e| fail(&e))? {
            let (indexed, _) = item.map_err(|e| fail(&e))?;
            let key = &indexed.value()[8..];
            let value = entries.get(key).map_err(|e| fail(&e))?.ok_or_else(|| {
                fail(&format!(
                    "the time index names a key that is not stored ({} bytes)",
                    key.len()
                ))
            })?;
            idle.push((Box::from(key), decode(value.value())));
        }
        Ok(idle)
    }

    /// The spilled keys whose `last_seen` is `after` or later (a range of
    /// the `by-time` index); `None` once their `footprint`s add up to more
    /// than `limit`.
    pub fn keys_seen_since(
        &self,
        after: i64,
        limit: usize,
        footprint: impl Fn(usize) -> usize,
    ) -> Result<Option<Vec<Box<[u8]>>>, StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot read", &self.path, e);
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let index = match txn.open_table(BY_TIME) {
            Ok(index) => index,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Some(Vec::new())),
            Err(e) => return Err(fail(&e)),
        };
        let start = time_prefix(after);
        let mut keys = Vec::new();
        let mut bytes = 0;
        for item in index.range::<&[u8]>(&start[..]..).map_err(|e| fail(&e))? {
            let (indexed, _) = item.map_err(|e| fail(&e))?;
            let key = &indexed.value()[8..];
            bytes += footprint(key.len());
            if bytes > limit {
                return Ok(None);
            }
            keys.push(Box::from(key));
        }
        Ok(Some(keys))
    }

    /// Calls `visit` with every spilled key and its entry encoded as
    /// `last_seen` (8 bytes, little-endian) ++ state, in key order, from one
    /// read transaction: for streaming the whole state out.
    pub fn for_each_encoded(
        &self,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot read", &self.path, e);
        let txn = self.db.begin_read().map_err(|e| fail(&e))?;
        let table = match txn.open_table(ENTRIES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(fail(&e)),
        };
        for item in table.iter().map_err(|e| fail(&e))? {
            let (key, value) = item.map_err(|e| fail(&e))?;
            visit(key.value(), value.value())?;
        }
        Ok(())
    }

    /// Writes `entries` in one transaction (replacing those of the same keys).
    pub fn put<'e>(
        &mut self,
        entries: impl IntoIterator<Item = (&'e [u8], &'e StateEntry)>,
    ) -> Result<(), StateError> {
        self.write(|table, index| {
            let mut added = 0isize;
            for (key, entry) in entries {
                let old = table
                    .insert(key, &encode(entry)[..])?
                    .map(|old| last_seen_of(old.value()));
                match old {
                    None => added += 1,
                    Some(old) if old == entry.last_seen => continue,
                    Some(old) => {
                        index.remove(&index_key(old, key)[..])?;
                    }
                }
                index.insert(&index_key(entry.last_seen, key)[..], ())?;
            }
            Ok(added)
        })
    }

    /// Removes `keys` (absent ones are ignored) in one transaction.
    pub fn remove(&mut self, keys: &[Box<[u8]>]) -> Result<(), StateError> {
        self.write(|table, index| {
            let mut removed = 0isize;
            for key in keys {
                let old = table.remove(&key[..])?.map(|old| last_seen_of(old.value()));
                if let Some(old) = old {
                    index.remove(&index_key(old, key)[..])?;
                    removed -= 1;
                }
            }
            Ok(removed)
        })
    }

    /// Runs `change` on both tables in one write transaction without fsync;
    /// it returns the change in the number of entries.
    fn write(
        &mut self,
        change: impl FnOnce(
            &mut redb::Table<'_, &[u8], &[u8]>,
            &mut redb::Table<'_, &[u8], ()>,
        ) -> Result<isize, redb::StorageError>,
    ) -> Result<(), StateError> {
        let fail = |e: &dyn std::fmt::Display| error("cannot write", &self.path, e);
        let mut txn = self.db.begin_write().map_err(|e| fail(&e))?;
        txn.set_durability(Durability::None).map_err(|e| fail(&e))?;
        let delta = {
            let mut table = txn.open_table(ENTRIES).map_err(|e| fail(&e))?;
            let mut index = txn.open_table(BY_TIME).map_err(|e| fail(&e))?;
            let delta = change(&mut table, &mut index).map_err(|e| fail(&e))?;
            debug_assert_eq!(table.len().ok(), index.len().ok());
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
