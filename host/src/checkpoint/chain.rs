//! Chains of incremental state parts across checkpoints: what a checkpoint
//! lists for an incrementally checkpointed operator, when a chain is
//! compacted into one full part, how parts are checked, and which files
//! under `incremental/` may go once no kept checkpoint lists them.
//!
//! A part is written by the driver at a batch boundary (its changes only,
//! so the pause follows the change rate) and committed by the background
//! writer; compaction reads the chain's files, never the live state, so it
//! runs in the background too (see [`super::incremental`] for the format).

use std::collections::HashSet;
use std::io::Read;

use serde::{Deserialize, Serialize};

use super::incremental::{self, HashingReader, HashingWriter, PartReader};
use super::storage::{BlobWriter, CheckpointStorage};

/// Where incremental parts live, under the checkpoint directory.
pub const DIR: &str = "incremental";

/// One part of an operator's incremental state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePart {
    /// Its name under the checkpoint directory (`incremental/…`).
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
    /// True for a full snapshot: every partition's section is complete, so
    /// no part before it is needed.
    pub full: bool,
}

/// The name of the part operator `index` writes at `batch`.
pub fn part_name(batch: u64, index: usize) -> String {
    format!("{DIR}/{batch:020}-{index:04}.part")
}

/// The name of the full part compaction writes for operator `index` at `batch`.
pub fn full_name(batch: u64, index: usize) -> String {
    format!("{DIR}/{batch:020}-{index:04}.full")
}

/// A part written at a batch boundary, not yet committed.
pub struct NewPart {
    /// What the manifest will say of it.
    pub part: StatePart,
    /// The written, uncommitted blob.
    pub blob: Box<dyn BlobWriter>,
    /// The chain it applies on top of: the operator's chain in the previous
    /// checkpoint (ignored when the part is full).
    pub base: Vec<StatePart>,
}

impl std::fmt::Debug for NewPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPart")
            .field("part", &self.part)
            .field("base", &self.base.len())
            .finish_non_exhaustive()
    }
}

impl NewPart {
    /// The chain of the checkpoint this part belongs to.
    pub fn chain(&self) -> Vec<StatePart> {
        if self.part.full {
            return vec![self.part.clone()];
        }
        let mut chain = self.base.clone();
        chain.push(self.part.clone());
        chain
    }
}

/// An operator's state for a checkpoint.
#[derive(Debug)]
pub enum OperatorState {
    /// Written whole into the checkpoint's own directory.
    Whole(Vec<u8>),
    /// An incremental part.
    Part(NewPart),
}

/// True when `chain` should be compacted into one full part: it holds
/// more than `full_every` parts, or its parts of changes together outweigh
/// its full part (or it has none).
pub fn compaction_due(chain: &[StatePart], full_every: u64) -> bool {
    let Some(first) = chain.first() else {
        return false;
    };
    if chain.len() < 2 {
        return !first.full;
    }
    let changes: u64 = chain[1..].iter().map(|part| part.bytes).sum();
    chain.len() as u64 > full_every || !first.full || changes > first.bytes
}

/// A part being read through a hasher.
type HashedPart = PartReader<HashingReader<Box<dyn Read + Send>>>;

/// Opens the parts of `chain` for reading, each through a hasher.
fn open_chain(storage: &dyn CheckpointStorage, chain: &[StatePart]) -> Result<Vec<HashedPart>, String> {
    chain
        .iter()
        .map(|part| {
            let input = storage
                .open(&part.file)
                .map_err(|e| format!("cannot read {}: {e}", part.file))?
                .ok_or_else(|| format!("{} is missing", part.file))?;
            PartReader::new(HashingReader::new(input)).map_err(|e| format!("{}: {e}", part.file))
        })
        .collect()
}

/// Checks that what was read of `part` is all of it, as written.
fn check_read(part: &StatePart, (bytes, sha256): (u64, String)) -> Result<(), String> {
    if bytes != part.bytes || sha256 != part.sha256 {
        return Err(format!(
            "{} is truncated or corrupt (checksum mismatch)",
            part.file
        ));
    }
    Ok(())
}

/// Reads `part` whole and checks its size and checksum.
pub fn verify(storage: &dyn CheckpointStorage, part: &StatePart) -> Result<(), String> {
    let input = storage
        .open(&part.file)
        .map_err(|e| format!("cannot read {}: {e}", part.file))?
        .ok_or_else(|| format!("{} is missing", part.file))?;
    let read = incremental::hash_all(input).map_err(|e| format!("cannot read {}: {e}", part.file))?;
    check_read(part, read)
}

/// Merges `chain` into one full part named `file`, streaming; the parts
/// read are checked against their checksums before the new one is
/// committed.
pub fn compact(
    storage: &dyn CheckpointStorage,
    chain: &[StatePart],
    file: &str,
) -> Result<StatePart, String> {
    let readers = open_chain(storage, chain)?;
    let blob = storage
        .create(file)
        .map_err(|e| format!("cannot write {file}: {e}"))?;
    let (out, inputs, _) = incremental::compact(readers, HashingWriter::new(blob))
        .map_err(|e| format!("cannot compact the state into {file}: {e}"))?;
    for (part, input) in chain.iter().zip(inputs) {
        check_read(part, input.finish())?;
    }
    let (blob, bytes, sha256) = out.finish();
    blob.commit().map_err(|e| format!("cannot write {file}: {e}"))?;
    Ok(StatePart {
        file: file.to_owned(),
        bytes,
        sha256,
        full: true,
    })
}

/// Removes the parts under [`DIR`] that no chain in `referenced` lists,
/// and the leftovers of parts cut short by a crash.
pub fn collect_garbage<'a>(
    storage: &dyn CheckpointStorage,
    referenced: impl IntoIterator<Item = &'a StatePart>,
) -> std::io::Result<()> {
    let keep: HashSet<&str> = referenced.into_iter().map(|part| part.file.as_str()).collect();
    let unused: Vec<String> = storage
        .list(DIR)?
        .into_iter()
        .map(|name| format!("{DIR}/{name}"))
        .filter(|file| !keep.contains(file.as_str()))
        .collect();
    storage.remove_blobs(&unused)?;
    storage.remove_unfinished(DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(bytes: u64, full: bool) -> StatePart {
        StatePart {
            file: String::new(),
            bytes,
            sha256: String::new(),
            full,
        }
    }

    #[test]
    fn compaction_is_due_past_full_every_parts_or_when_changes_outweigh_the_full_part() {
        assert!(!compaction_due(&[], 3));
        assert!(!compaction_due(&[part(100, true)], 3));
        assert!(!compaction_due(
            &[part(100, true), part(10, false), part(10, false)],
            3
        ));
        assert!(compaction_due(
            &[part(100, true), part(10, false), part(10, false), part(10, false)],
            3
        ));
        assert!(compaction_due(
            &[part(100, true), part(60, false), part(50, false)],
            10
        ));
        assert!(compaction_due(&[part(100, false), part(1, false)], 10));
        assert!(compaction_due(&[part(100, true), part(1, false)], 1));
    }
}
