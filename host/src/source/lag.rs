//! How far a source's partitions are behind their ends: what a Kafka
//! operator calls consumer lag, published by the receiver and read by the
//! live metrics, the web UI and `/metrics`.
//!
//! A receiver that reads partitioned logs (Kafka) publishes, every few
//! seconds, each partition's next offset to read and the partition's end as
//! its client last heard it; the rest of the engine only reads the latest
//! publication. Sources without partitions publish nothing.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// One partition's place against its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionLag {
    /// The partition, as `topic/partition`.
    pub partition: String,
    /// The next offset the source reads.
    pub position: i64,
    /// The partition's end as last heard from the broker (the last stable
    /// offset under `read_committed`).
    pub end: i64,
}

impl PartitionLag {
    /// Records in the partition the source has not read yet.
    pub fn lag(&self) -> u64 {
        u64::try_from(self.end - self.position).unwrap_or(0)
    }
}

/// Where one source publishes its partitions' lag; cheap to clone (all
/// clones share the publication).
#[derive(Debug, Clone, Default)]
pub struct LagBoard(Arc<Mutex<Vec<PartitionLag>>>);

impl LagBoard {
    /// Replaces the publication with `partitions`.
    pub fn publish(&self, partitions: Vec<PartitionLag>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = partitions;
    }

    /// The latest publication (empty before the first, and for sources
    /// without partitions).
    pub fn read(&self) -> Vec<PartitionLag> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_what_is_left_to_read_and_never_negative() {
        let board = LagBoard::default();
        assert!(board.read().is_empty());
        let at = |position, end| PartitionLag {
            partition: "words/0".into(),
            position,
            end,
        };
        board.clone().publish(vec![at(40, 100), at(120, 100)]);
        let lags: Vec<u64> = board.read().iter().map(PartitionLag::lag).collect();
        assert_eq!(lags, [60, 0]);
    }
}
