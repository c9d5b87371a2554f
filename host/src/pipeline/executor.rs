//! Runs one micro-batch through the plan: every stage in order, each
//! operator over all partitions in parallel on the worker pool, with the data
//! movement (shuffle by key, rebalance) an operator's input partitioning asks for.
//!
//! The executor follows each stage's [`StageSchedule`](super::plan::StageSchedule),
//! worked out once with the plan: a fused [`Segment`] (consecutive per-record
//! transforms, the combine of a reduce-by-key) runs as one task per partition
//! that takes each chunk through all of its operators before the next, also
//! across a stage boundary when the schedule says so: a flat-map's output is
//! folded by the combine while it is still in cache, and no barrier waits for
//! the slowest partition in between.
//!
//! Each stage's work runs in a `stage` span on the driver thread; each
//! partition task enters, on its worker, a `partition` span carrying the
//! pipeline, stage, partition and batch id (a fused segment's task is named
//! after the stage it starts in).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::plan::{Plan, Segment, StagePlan};
use crate::config::Quarantine;
use crate::engine::pool::{PoolClient, Task, TaskPanicked};
use crate::error::StageFailure;
use crate::operator::{BatchClock, Operator, OperatorError, PartitionContext};
use crate::partition::{self, Partitioning};
use crate::record::{Batch, Partition};

/// Every stream's partitions after a batch, by stream id (`None` once the
/// last reader took them).
pub type StreamData = Vec<Option<Vec<Partition>>>;

/// Why a batch did not complete.
#[derive(Debug)]
pub enum BatchError {
    /// A stage failed (its policy is `fail`).
    Failed(Box<StageFailure>),
    /// A stage failed in too many consecutive batches and its quarantine
    /// action is `stop`: the batch was abandoned.
    Quarantined(Quarantined),
}

/// A stage that failed in too many consecutive batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The stage.
    pub stage: String,
    /// Consecutive batches with a failure.
    pub batches: u64,
}

/// A completed batch: every stream a sink reads, and the stage quarantined
/// with action `pause` during it, if one was (the batch itself completed:
/// its failures were handled by the stage's `on-error`).
#[derive(Debug)]
pub struct BatchOutput {
    /// The streams' partitions.
    pub streams: StreamData,
    /// The stage to pause the pipeline for.
    pub pause_for: Option<Quarantined>,
}

/// What a task produced for one partition: its output (or why it failed),
/// the records it dead-lettered and the failures its policy handled.
type Outcome<E> = (Result<Partition, E>, Batch, u32);

/// What one stage's operator produced over all partitions of a batch.
struct Applied {
    partitions: Vec<Partition>,
    dead_letters: Vec<Batch>,
    failures: u32,
}

/// Runs batches of one plan.
pub struct Executor {
    plan: Arc<Plan>,
    pool: PoolClient,
}

impl Executor {
    /// Runs `plan` on the shared pool through `pool`.
    pub fn new(plan: Arc<Plan>, pool: PoolClient) -> Self {
        Self { plan, pool }
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Has every worker (and this thread) drop the instances of plugin
    /// bindings a hot-load replaced.
    pub fn sweep(&self) {
        self.pool.sweep();
        crate::engine::pool::sweep_caller_instances();
    }

    /// Runs batch `batch_id` with the chunks each source delivered (in
    /// source order). Returns the partitions of every stream a sink reads.
    pub fn run_batch(
        &self,
        batch_id: u64,
        batch_time: i64,
        source_chunks: Vec<Partition>,
    ) -> Result<BatchOutput, BatchError> {
        let clock = BatchClock {
            id: batch_id,
            time: batch_time,
        };
        let plan = &self.plan;
        let mut streams: StreamData = (0..plan.streams.len()).map(|_| None).collect();
        let mut remaining_readers = plan.readers.clone();
        let mut dead_letters: Vec<Batch> = Vec::new();
        let mut pause_for = None;
        for ((_, stream), chunks) in plan.sources.iter().zip(source_chunks) {
            streams[*stream] = Some(partition::distribute(chunks, plan.partitions));
        }
        // The output of a fused segment that went on into the next stage's
        // leading operators.
        let mut carried: Option<Vec<Partition>> = None;
        for (index, stage) in plan.stages.iter().enumerate() {
            let _span = tracing::info_span!("stage", stage = %stage.name).entered();
            let schedule = &stage.schedule;
            debug_assert_eq!(carried.is_some(), schedule.carried_in > 0);
            let (mut partitions, mut left_chunks) = match carried.take() {
                Some(partitions) => {
                    for &input in &stage.inputs {
                        remaining_readers[input] -= 1;
                    }
                    (partitions, None)
                }
                None => {
                    let mut inputs = Vec::with_capacity(stage.inputs.len());
                    for &input in &stage.inputs {
                        remaining_readers[input] -= 1;
                        inputs.push(take_or_clone(&mut streams, input, remaining_readers[input] == 0));
                    }
                    if schedule.paired {
                        let (partitions, left_chunks) = self.pair(index, &stage.operators[0], inputs);
                        (partitions, Some(left_chunks))
                    } else {
                        (union(inputs), None)
                    }
                }
            };
            let failed = |failed: &StagePlan, partition, error| {
                BatchError::Failed(Box::new(StageFailure {
                    pipeline: plan.pipeline.clone(),
                    stage: failed.name.clone(),
                    op: failed.describe.clone(),
                    partition,
                    batch_id,
                    error,
                }))
            };
            let mut failures = 0;
            for segment in &schedule.segments {
                let applied = match segment {
                    Segment::Alone(position) => {
                        let operator = &stage.operators[*position];
                        let applied = self
                            .apply(index, operator, partitions, clock, left_chunks.take())
                            .map_err(|(partition, error)| failed(stage, partition, error))?;
                        operator.end_batch(clock);
                        applied
                    }
                    Segment::Fused {
                        operators: range,
                        onward,
                    } => {
                        let mut operators = stage.operators[range.clone()].to_vec();
                        if *onward > 0 {
                            operators.extend(plan.stages[index + 1].operators[..*onward].iter().cloned());
                        }
                        let applied = self.apply_fused(index, &operators, partitions, clock).map_err(
                            |(partition, position, error)| {
                                let stage = if position < range.len() {
                                    stage
                                } else {
                                    &plan.stages[index + 1]
                                };
                                failed(stage, partition, error)
                            },
                        )?;
                        for operator in &operators {
                            operator.end_batch(clock);
                        }
                        applied
                    }
                };
                partitions = applied.partitions;
                failures += applied.failures;
                dead_letters.extend(applied.dead_letters);
            }
            let consecutive = &stage.metrics.consecutive_failed_batches;
            if failures == 0 {
                consecutive.store(0, Ordering::Relaxed);
            } else {
                let batches = consecutive.fetch_add(1, Ordering::Relaxed) + 1;
                if batches >= u64::from(stage.policy.quarantine_after) {
                    let quarantined = Quarantined {
                        stage: stage.name.clone(),
                        batches,
                    };
                    match stage.policy.quarantine {
                        Quarantine::Stop => return Err(BatchError::Quarantined(quarantined)),
                        Quarantine::Pause => {
                            pause_for.get_or_insert(quarantined);
                        }
                    }
                }
            }
            if schedule.carries_on() {
                // This stage's output goes straight on into the next stage.
                carried = Some(partitions);
            } else {
                streams[stage.output] = Some(partitions);
            }
        }
        if let Some(stream) = plan.dead_letters {
            streams[stream] = Some(vec![dead_letters]);
        }
        Ok(BatchOutput { streams, pause_for })
    }

    /// Partitions both inputs of a two-input operator by key; partition `i`
    /// is the first input's chunks of it followed by the second's. Returns
    /// the partitions and how many chunks of each come from the first input.
    fn pair(
        &self,
        stage: usize,
        operator: &Arc<dyn Operator>,
        mut inputs: Vec<Vec<Partition>>,
    ) -> (Vec<Partition>, Vec<usize>) {
        let targets = match operator.planning().input {
            Partitioning::HashByKey(n) | Partitioning::RoundRobin(n) => n,
            Partitioning::Pipeline => self.plan.partitions,
        };
        let right = self.shuffle_by_key(stage, inputs.pop().expect("two inputs"), targets);
        let left = self.shuffle_by_key(stage, inputs.pop().expect("two inputs"), targets);
        left.into_iter()
            .zip(right)
            .map(|(mut left, right)| {
                let left_chunks = left.len();
                left.extend(right);
                (left, left_chunks)
            })
            .unzip()
    }

    /// Moves data as `operator` (of stage `stage`) needs (unless
    /// `left_chunks` says the partitions were already paired), then runs it
    /// over every partition.
    fn apply(
        &self,
        stage: usize,
        operator: &Arc<dyn Operator>,
        partitions: Vec<Partition>,
        clock: BatchClock,
        left_chunks: Option<Vec<usize>>,
    ) -> Result<Applied, (usize, OperatorError)> {
        let partitions = match (operator.planning().input, &left_chunks) {
            (_, Some(_)) | (Partitioning::Pipeline, None) => partitions,
            (Partitioning::HashByKey(n), None) => self.shuffle_by_key(stage, partitions, n),
            (Partitioning::RoundRobin(n), None) => partition::rebalance(&partitions, n),
        };
        let tasks: Vec<Task<Outcome<OperatorError>>> = partitions
            .into_iter()
            .enumerate()
            .map(|(index, partition)| -> Task<Outcome<OperatorError>> {
                let operator = operator.clone();
                let left_chunks = left_chunks
                    .as_ref()
                    .map_or(partition.len(), |chunks| chunks[index]);
                let plan = self.plan.clone();
                Box::new(move |instances| {
                    let _span = task_span(&plan, stage, index, clock.id).entered();
                    let mut ctx = PartitionContext {
                        batch_id: clock.id,
                        batch_time: clock.time,
                        left_chunks,
                        partition: index,
                        instances,
                        dead_letters: Batch::new(),
                        failures: 0,
                    };
                    let result = operator.process(partition, &mut ctx);
                    (result, ctx.dead_letters, ctx.failures)
                })
            })
            .collect();
        self.collect(task_kind(operator), tasks, |error| error)
    }

    /// Runs `operators` (a fused segment of stage `stage`: all piecewise,
    /// taking their input as it comes) over every partition: one task per
    /// partition passes each chunk through all of them before the next
    /// chunk. Record indices in errors count from the start of each
    /// operator's input in the partition.
    fn apply_fused(
        &self,
        stage: usize,
        operators: &[Arc<dyn Operator>],
        partitions: Vec<Partition>,
        clock: BatchClock,
    ) -> Result<Applied, (usize, usize, OperatorError)> {
        let tasks: Vec<Task<Outcome<(usize, OperatorError)>>> = partitions
            .into_iter()
            .enumerate()
            .map(|(index, partition)| -> Task<Outcome<(usize, OperatorError)>> {
                let operators = operators.to_vec();
                let plan = self.plan.clone();
                Box::new(move |instances| {
                    let _span = task_span(&plan, stage, index, clock.id).entered();
                    let mut ctx = PartitionContext {
                        batch_id: clock.id,
                        batch_time: clock.time,
                        left_chunks: 1,
                        partition: index,
                        instances,
                        dead_letters: Batch::new(),
                        failures: 0,
                    };
                    let result = run_pieces(&operators, partition, &mut ctx);
                    (result, ctx.dead_letters, ctx.failures)
                })
            })
            .collect();
        self.collect(task_kind(&operators[0]), tasks, |error| (0, error))
            .map_err(|(partition, (position, error))| (partition, position, error))
    }

    /// Waits for one task per partition and gathers their outputs; a task
    /// that panicked fails with `panicked` of an internal error.
    fn collect<E: Send + 'static>(
        &self,
        kind: u64,
        tasks: Vec<Task<Outcome<E>>>,
        panicked: impl Fn(OperatorError) -> E,
    ) -> Result<Applied, (usize, E)> {
        let mut applied = Applied {
            partitions: Vec::new(),
            dead_letters: Vec::new(),
            failures: 0,
        };
        for (index, outcome) in self.pool.run(kind, tasks).into_iter().enumerate() {
            let (result, dead_letters, failures) = outcome.unwrap_or_else(|TaskPanicked(message)| {
                let error = OperatorError::Native(format!("internal error: {message}"));
                (Err(panicked(error)), Batch::new(), 1)
            });
            applied.partitions.push(result.map_err(|error| (index, error))?);
            if !dead_letters.is_empty() {
                applied.dead_letters.push(dead_letters);
            }
            applied.failures += failures;
        }
        Ok(applied)
    }

    /// Hash-partitions every input partition by key in parallel; each target
    /// partition gets the pieces as chunks. Counts what moved in the
    /// metrics of stage `stage`.
    fn shuffle_by_key(&self, stage: usize, partitions: Vec<Partition>, targets: usize) -> Vec<Partition> {
        let metrics = &self.plan.stages[stage].metrics;
        let chunks = || partitions.iter().flatten();
        let records = chunks().map(Batch::len).sum::<usize>();
        let bytes = chunks().map(Batch::data_bytes).sum::<usize>();
        metrics
            .shuffled_records
            .fetch_add(records as u64, Ordering::Relaxed);
        metrics.shuffled_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
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
        for split in self.pool.run(SHUFFLE_TASKS, tasks) {
            let split = split.expect("splitting a batch by key does not panic");
            for (target, pieces) in split.into_iter().enumerate() {
                out[target].extend(pieces);
            }
        }
        out
    }
}

/// The pool's kind of the shuffle tasks (timed apart from the operators'):
/// no operator lives at address 0.
const SHUFFLE_TASKS: u64 = 0;

/// The pool's kind of the tasks that run `operator` (or a fused segment
/// starting with it): its address, the same for every batch.
fn task_kind(operator: &Arc<dyn Operator>) -> u64 {
    Arc::as_ptr(operator).cast::<()>() as usize as u64
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

/// The span a partition task runs in on a pool worker: a root (the task's
/// own context, whatever the worker was doing), one per task.
fn task_span(plan: &Plan, stage: usize, partition: usize, batch: u64) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "partition",
        pipeline = %plan.pipeline,
        stage = %plan.stages[stage].name,
        partition,
        batch,
    )
}

/// Passes each chunk of `partition` through every operator in turn;
/// the outputs of all chunks, in order, are the partition's output. The
/// first chunk that fails stops the partition: an error of a later operator
/// on an earlier chunk is the one reported. An operator that folds the
/// partition's pieces ([`Operator::fold_pieces`]: a map-side combine) takes
/// every chunk's output of the operators before it as it comes, and the
/// operators after it run on what it emits once the last chunk is in.
fn run_pieces(
    operators: &[Arc<dyn Operator>],
    partition: Partition,
    ctx: &mut PartitionContext<'_>,
) -> Result<Partition, (usize, OperatorError)> {
    let folding = operators
        .iter()
        .enumerate()
        .find_map(|(position, operator)| operator.fold_pieces().map(|fold| (position, fold)));
    let Some((position, mut fold)) = folding else {
        let mut output = Vec::with_capacity(partition.len());
        run_chunks(operators, partition, ctx, |piece, _| {
            output.extend(piece);
            Ok(())
        })?;
        return Ok(output);
    };
    // Records the fold has been given so far.
    let mut folded = 0usize;
    run_chunks(&operators[..position], partition, ctx, |piece, ctx| {
        let records = piece.iter().map(Batch::len).sum::<usize>();
        guarded(|| fold.absorb(piece, ctx)).map_err(|error| (position, error.shifted(folded)))?;
        folded += records;
        Ok(())
    })?;
    let output = guarded(|| fold.finish(ctx)).map_err(|error| (position, error))?;
    let after = position + 1;
    run_pieces(&operators[after..], output, ctx).map_err(|(later, error)| (after + later, error))
}

/// Passes each chunk of `partition` through `operators` in turn and hands
/// each chunk's output to `consume`.
fn run_chunks(
    operators: &[Arc<dyn Operator>],
    partition: Partition,
    ctx: &mut PartitionContext<'_>,
    mut consume: impl FnMut(Partition, &mut PartitionContext<'_>) -> Result<(), (usize, OperatorError)>,
) -> Result<(), (usize, OperatorError)> {
    // Records each operator has been given so far in this partition.
    let mut offsets = vec![0usize; operators.len()];
    for chunk in partition {
        let mut piece = vec![chunk];
        for (position, (operator, offset)) in operators.iter().zip(offsets.iter_mut()).enumerate() {
            let records = piece.iter().map(Batch::len).sum::<usize>();
            piece = guarded(|| operator.process(piece, ctx))
                .map_err(|error| (position, error.shifted(*offset)))?;
            *offset += records;
        }
        consume(piece, ctx)?;
    }
    Ok(())
}

/// Runs one call of an operator, catching a panic (a native function's)
/// here rather than in the worker, so that it names the operator's own
/// stage.
fn guarded<T>(call: impl FnOnce() -> Result<T, OperatorError>) -> Result<T, OperatorError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        Err(OperatorError::Native(format!(
            "internal error: {}",
            crate::engine::pool::panic_message(&*panic)
        )))
    })
}

#[cfg(test)]
mod tests;
