//! Runs one micro-batch through the plan: every stage in order, each
//! operator over all partitions in parallel on the worker pool, with the data
//! movement (shuffle by key, rebalance) an operator's input partitioning asks for.

use std::sync::Arc;

use super::plan::Plan;
use super::workers::{Task, TaskPanicked, WorkerPool};
use crate::error::StageFailure;
use crate::operator::{Operator, OperatorError, PartitionContext};
use crate::partition::{self, Partitioning};
use crate::record::Batch;

/// Every stream's partitions after a batch, by stream id (`None` once the
/// last reader took them).
pub type StreamData = Vec<Option<Vec<Batch>>>;

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

    /// Runs batch `batch_id` with one batch per source (in source order).
    /// Returns the partitions of every stream a sink reads.
    pub fn run_batch(
        &self,
        batch_id: u64,
        source_batches: Vec<Batch>,
    ) -> Result<StreamData, Box<StageFailure>> {
        let plan = &self.plan;
        let mut streams: StreamData = (0..plan.streams.len()).map(|_| None).collect();
        let mut remaining_readers = plan.readers.clone();
        for ((_, stream), batch) in plan.sources.iter().zip(source_batches) {
            streams[*stream] = Some(batch.split_even(plan.partitions));
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
        partitions: Vec<Batch>,
        batch_id: u64,
    ) -> Result<Vec<Batch>, (usize, OperatorError)> {
        let partitions = match operator.input_partitioning() {
            Partitioning::Pipeline => partitions,
            Partitioning::HashByKey(n) => self.shuffle_by_key(partitions, n),
            Partitioning::RoundRobin(n) => partition::rebalance(&partitions, n),
        };
        let tasks: Vec<Task<Result<Batch, OperatorError>>> = partitions
            .into_iter()
            .enumerate()
            .map(|(index, batch)| -> Task<Result<Batch, OperatorError>> {
                let operator = operator.clone();
                Box::new(move |instances| {
                    let mut ctx = PartitionContext {
                        batch_id,
                        partition: index,
                        instances,
                    };
                    operator.process(batch, &mut ctx)
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

    /// Hash-partitions every input partition by key in parallel, then
    /// concatenates the pieces of each target partition.
    fn shuffle_by_key(&self, partitions: Vec<Batch>, targets: usize) -> Vec<Batch> {
        let tasks: Vec<Task<Vec<Batch>>> = partitions
            .into_iter()
            .map(|batch| -> Task<Vec<Batch>> { Box::new(move |_| partition::split_by_key(&batch, targets)) })
            .collect();
        let mut pieces: Vec<Vec<Batch>> = (0..targets).map(|_| Vec::new()).collect();
        for split in self.pool.run(tasks) {
            let split = split.expect("splitting a batch by key does not panic");
            for (target, piece) in split.into_iter().enumerate() {
                pieces[target].push(piece);
            }
        }
        pieces.iter().map(Batch::concat).collect()
    }
}

fn take_or_clone(streams: &mut StreamData, id: usize, last_reader: bool) -> Vec<Batch> {
    if last_reader {
        streams[id].take().unwrap_or_default()
    } else {
        streams[id].clone().unwrap_or_default()
    }
}

/// The union of several streams: partition `i` of the result concatenates
/// partition `i` of every input that has one.
fn union(mut inputs: Vec<Vec<Batch>>) -> Vec<Batch> {
    if inputs.len() == 1 {
        return inputs.pop().expect("one input");
    }
    let count = inputs.iter().map(Vec::len).max().unwrap_or(0);
    (0..count)
        .map(|i| Batch::concat(inputs.iter().filter_map(|input| input.get(i))))
        .collect()
}
