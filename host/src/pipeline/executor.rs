//! Runs one micro-batch through the plan: every stage in order, each
//! operator over all partitions in parallel on the worker pool, with the data
//! movement (shuffle by key, rebalance) an operator's input partitioning asks for.

use std::sync::Arc;

use super::plan::Plan;
use super::workers::{Task, TaskPanicked, WorkerPool};
use crate::error::StageFailure;
use crate::operator::{Operator, OperatorError, PartitionContext};
use crate::partition::{self, Partitioning};
use crate::record::Partition;

/// Every stream's partitions after a batch, by stream id (`None` once the
/// last reader took them).
pub type StreamData = Vec<Option<Vec<Partition>>>;

/// Runs batches of one plan.
pub struct Executor {
    plan: Arc<Plan>,
    pool: Arc<WorkerPool>,
}

impl Executor {
    /// Runs `plan` on `pool`.
    pub fn new(plan: Arc<Plan>, pool: Arc<WorkerPool>) -> Self {
        Self { plan, pool }
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Runs batch `batch_id` with the chunks each source delivered (in
    /// source order). Returns the partitions of every stream a sink reads.
    pub fn run_batch(
        &self,
        batch_id: u64,
        source_chunks: Vec<Partition>,
    ) -> Result<StreamData, Box<StageFailure>> {
        let plan = &self.plan;
        let mut streams: StreamData = (0..plan.streams.len()).map(|_| None).collect();
        let mut remaining_readers = plan.readers.clone();
        for ((_, stream), chunks) in plan.sources.iter().zip(source_chunks) {
            streams[*stream] = Some(partition::distribute(chunks, plan.partitions));
        }
        for stage in &plan.stages {
            let mut inputs = Vec::with_capacity(stage.inputs.len());
            for &input in &stage.inputs {
                remaining_readers[input] -= 1;
                inputs.push(take_or_clone(&mut streams, input, remaining_readers[input] == 0));
            }
            let mut partitions = union(inputs);
            for operator in &stage.operators {
                partitions = self
                    .apply(operator, partitions, batch_id)
                    .map_err(|(partition, error)| {
                        Box::new(StageFailure {
                            pipeline: plan.pipeline.clone(),
                            stage: stage.name.clone(),
                            op: stage.describe.clone(),
                            partition,
                            batch_id,
                            error,
                        })
                    })?;
            }
            streams[stage.output] = Some(partitions);
        }
        Ok(streams)
    }

    /// Moves data as `operator` needs, then runs it over every partition.
    fn apply(
        &self,
        operator: &Arc<dyn Operator>,
        partitions: Vec<Partition>,
        batch_id: u64,
    ) -> Result<Vec<Partition>, (usize, OperatorError)> {
        let partitions = match operator.input_partitioning() {
            Partitioning::Pipeline => partitions,
            Partitioning::HashByKey(n) => self.shuffle_by_key(partitions, n),
            Partitioning::RoundRobin(n) => partition::rebalance(&partitions, n),
        };
        let tasks: Vec<Task<Result<Partition, OperatorError>>> = partitions
            .into_iter()
            .enumerate()
            .map(|(index, partition)| -> Task<Result<Partition, OperatorError>> {
                let operator = operator.clone();
                Box::new(move |instances| {
                    let mut ctx = PartitionContext {
                        batch_id,
                        partition: index,
                        instances,
                    };
                    operator.process_partition(partition, &mut ctx)
                })
            })
            .collect();
        self.pool
            .run(tasks)
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                result
                    .unwrap_or_else(|TaskPanicked(message)| {
                        Err(OperatorError::Native(format!("internal error: {message}")))
                    })
                    .map_err(|error| (index, error))
            })
            .collect()
    }

    /// Hash-partitions every input partition by key in parallel; each target
    /// partition gets the pieces as chunks.
    fn shuffle_by_key(&self, partitions: Vec<Partition>, targets: usize) -> Vec<Partition> {
        let tasks: Vec<Task<Vec<Partition>>> = partitions
            .into_iter()
            .map(|partition| -> Task<Vec<Partition>> {
                Box::new(move |_| {
                    let mut pieces: Vec<Partition> = (0..targets).map(|_| Vec::new()).collect();
                    for chunk in &partition {
                        for (target, piece) in partition::split_by_key(chunk, targets).into_iter().enumerate()
                        {
                            if !piece.is_empty() {
                                pieces[target].push(piece);
                            }
                        }
                    }
                    pieces
                })
            })
            .collect();
        let mut out: Vec<Partition> = (0..targets).map(|_| Vec::new()).collect();
        for split in self.pool.run(tasks) {
            let split = split.expect("splitting a batch by key does not panic");
            for (target, pieces) in split.into_iter().enumerate() {
                out[target].extend(pieces);
            }
        }
        out
    }
}

fn take_or_clone(streams: &mut StreamData, id: usize, last_reader: bool) -> Vec<Partition> {
    if last_reader {
        streams[id].take().unwrap_or_default()
    } else {
        streams[id].clone().unwrap_or_default()
    }
}

/// The union of several streams: partition `i` of the result holds the
/// chunks of partition `i` of every input that has one.
fn union(mut inputs: Vec<Vec<Partition>>) -> Vec<Partition> {
    if inputs.len() == 1 {
        return inputs.pop().expect("one input");
    }
    let count = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let mut out: Vec<Partition> = (0..count).map(|_| Vec::new()).collect();
    for input in inputs {
        for (index, partition) in input.into_iter().enumerate() {
            out[index].extend(partition);
        }
    }
    out
}
