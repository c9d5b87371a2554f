//! Repartition: spreads records evenly over a number of partitions (the
//! executor moves the data; the operator itself passes records through).

use super::{Operator, OperatorError, PartitionContext, Planning};
use crate::partition::Partitioning;
use crate::record::Partition;

/// Rebalances its input over `partitions` partitions.
#[derive(Debug)]
pub struct Repartition {
    partitions: usize,
}

impl Repartition {
    /// Rebalances over `partitions` partitions.
    pub fn new(partitions: usize) -> Self {
        Self { partitions }
    }
}

impl Operator for Repartition {
    fn process(&self, input: Partition, _ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        Ok(input)
    }

    fn planning(&self) -> Planning {
        Planning::partitioned(Partitioning::RoundRobin(self.partitions))
    }
}
