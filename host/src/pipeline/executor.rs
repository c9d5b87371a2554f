//! Runs one micro-batch through the plan: every stage in order, each
//! operator over all partitions in parallel on the worker pool, with the data
//! movement (shuffle by key, rebalance) an operator's input partitioning asks for.
//!
//! Consecutive piecewise operators ([`Operator::piecewise`]: per-record
//! transforms, the combine of a reduce-by-key) run as one task per
//! partition that takes each chunk through all of them before the next,
//! also across a stage boundary when the stage's output feeds only the next
//! stage: a flat-map's output is folded by the combine while it is still in
//! cache, and no barrier waits for the slowest partition in between.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::plan::{Plan, StagePlan};
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
        // The output of a piecewise run that went on into the next stage's
        // leading operators, and how many of them it ran.
        let mut carried: Option<(Vec<Partition>, usize)> = None;
        for (index, stage) in plan.stages.iter().enumerate() {
            let (mut partitions, mut left_chunks, mut next) = match carried.take() {
                Some((partitions, done)) => {
                    for &input in &stage.inputs {
                        remaining_readers[input] -= 1;
                    }
                    (partitions, None, done)
                }
                None => {
                    let mut inputs = Vec::with_capacity(stage.inputs.len());
                    for &input in &stage.inputs {
                        remaining_readers[input] -= 1;
                        inputs.push(take_or_clone(&mut streams, input, remaining_readers[input] == 0));
                    }
                    let pairs =
                        stage.operators.first().is_some_and(|op| op.pairs_inputs()) && inputs.len() == 2;
                    if pairs {
                        let (partitions, left_chunks) = self.pair(&stage.operators[0], inputs);
                        (partitions, Some(left_chunks), 0)
                    } else {
                        (union(inputs), None, 0)
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
            while next < stage.operators.len() {
                // A run of piecewise operators goes chunk by chunk in one
                // task per partition, on into the next stage when this
                // stage's output feeds only that one; any other operator
                // runs on its own over every partition.
                let run = if left_chunks.is_none() {
                    piecewise_run(&stage.operators[next..])
                } else {
                    0
                };
                let onward = if run > 0 && next + run == stage.operators.len() {
                    self.onward_run(index)
                } else {
                    0
                };
                let operators: Vec<Arc<dyn Operator>> = if run + onward > 1 {
                    let mut operators = stage.operators[next..next + run].to_vec();
                    operators.extend(plan.stages[index + 1].operators[..onward].iter().cloned());
                    let applied = self.apply_piecewise(&operators, partitions, clock).map_err(
                        |(partition, position, error)| {
                            let stage = if position < run {
                                stage
                            } else {
                                &plan.stages[index + 1]
                            };
                            failed(stage, partition, error)
                        },
                    )?;
                    partitions = applied.partitions;
                    failures += applied.failures;
                    dead_letters.extend(applied.dead_letters);
                    if onward > 0 {
                        carried = Some((Vec::new(), onward));
                    }
                    next += run;
                    operators
                } else {
                    let operator = stage.operators[next].clone();
                    let applied = self
                        .apply(&operator, partitions, clock, left_chunks.take())
                        .map_err(|(partition, error)| failed(stage, partition, error))?;
                    partitions = applied.partitions;
                    failures += applied.failures;
                    dead_letters.extend(applied.dead_letters);
                    next += 1;
                    vec![operator]
                };
                for operator in &operators {
                    operator.end_batch(clock);
                }
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
            match &mut carried {
                // This stage's output went straight on into the next stage.
                Some((carried, _)) => *carried = partitions,
                None => streams[stage.output] = Some(partitions),
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
        operator: &Arc<dyn Operator>,
        mut inputs: Vec<Vec<Partition>>,
    ) -> (Vec<Partition>, Vec<usize>) {
        let targets = match operator.input_partitioning() {
            Partitioning::HashByKey(n) | Partitioning::RoundRobin(n) => n,
            Partitioning::Pipeline => self.plan.partitions,
        };
        let right = self.shuffle_by_key(inputs.pop().expect("two inputs"), targets);
        let left = self.shuffle_by_key(inputs.pop().expect("two inputs"), targets);
        left.into_iter()
            .zip(right)
            .map(|(mut left, right)| {
                let left_chunks = left.len();
                left.extend(right);
                (left, left_chunks)
            })
            .unzip()
    }

    /// Moves data as `operator` needs (unless `left_chunks` says the
    /// partitions were already paired), then runs it over every partition.
    fn apply(
        &self,
        operator: &Arc<dyn Operator>,
        partitions: Vec<Partition>,
        clock: BatchClock,
        left_chunks: Option<Vec<usize>>,
    ) -> Result<Applied, (usize, OperatorError)> {
        let partitions = match (operator.input_partitioning(), &left_chunks) {
            (_, Some(_)) | (Partitioning::Pipeline, None) => partitions,
            (Partitioning::HashByKey(n), None) => self.shuffle_by_key(partitions, n),
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
                Box::new(move |instances| {
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
        self.collect(tasks, |error| error)
    }

    /// Runs `operators` (all piecewise, taking their input as it comes) over
    /// every partition: one task per partition passes each chunk
    /// through all of them before the next chunk. Record indices in errors
    /// count from the start of each operator's input in the partition.
    fn apply_piecewise(
        &self,
        operators: &[Arc<dyn Operator>],
        partitions: Vec<Partition>,
        clock: BatchClock,
    ) -> Result<Applied, (usize, usize, OperatorError)> {
        let tasks: Vec<Task<Outcome<(usize, OperatorError)>>> = partitions
            .into_iter()
            .enumerate()
            .map(|(index, partition)| -> Task<Outcome<(usize, OperatorError)>> {
                let operators = operators.to_vec();
                Box::new(move |instances| {
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
        self.collect(tasks, |error| (0, error))
            .map_err(|(partition, (position, error))| (partition, position, error))
    }

    /// How many leading operators of the stage after `index` can continue a
    /// piecewise run that ends stage `index`: none unless that stage reads
    /// only this stage's output, and nothing else reads it.
    fn onward_run(&self, index: usize) -> usize {
        let plan = &self.plan;
        let (Some(stage), Some(next)) = (plan.stages.get(index), plan.stages.get(index + 1)) else {
            return 0;
        };
        if next.inputs != [stage.output] || plan.readers[stage.output] != 1 {
            return 0;
        }
        piecewise_run(&next.operators)
    }

    /// Waits for one task per partition and gathers their outputs; a task
    /// that panicked fails with `panicked` of an internal error.
    fn collect<E: Send + 'static>(
        &self,
        tasks: Vec<Task<Outcome<E>>>,
        panicked: impl Fn(OperatorError) -> E,
    ) -> Result<Applied, (usize, E)> {
        let mut applied = Applied {
            partitions: Vec::new(),
            dead_letters: Vec::new(),
            failures: 0,
        };
        for (index, outcome) in self.pool.run(tasks).into_iter().enumerate() {
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

/// How many operators from the start of `operators` form a piecewise run:
/// each piecewise and taking its input as it comes (no data movement
/// between them).
fn piecewise_run(operators: &[Arc<dyn Operator>]) -> usize {
    operators
        .iter()
        .take_while(|operator| {
            operator.piecewise()
                && !operator.pairs_inputs()
                && operator.input_partitioning() == Partitioning::Pipeline
        })
        .count()
}

/// Passes each chunk of `partition` through every operator in turn;
/// the outputs of all chunks, in order, are the partition's output. The
/// first chunk that fails stops the partition: an error of a later operator
/// on an earlier chunk is the one reported.
fn run_pieces(
    operators: &[Arc<dyn Operator>],
    partition: Partition,
    ctx: &mut PartitionContext<'_>,
) -> Result<Partition, (usize, OperatorError)> {
    // Records each operator has been given so far in this partition.
    let mut offsets = vec![0usize; operators.len()];
    let mut output = Vec::with_capacity(partition.len());
    for chunk in partition {
        let mut piece = vec![chunk];
        for (position, (operator, offset)) in operators.iter().zip(offsets.iter_mut()).enumerate() {
            let records = piece.iter().map(Batch::len).sum::<usize>();
            // A panic (a native function's) is caught here rather than by
            // the worker, so that it names the operator's own stage.
            piece = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| operator.process(piece, ctx)))
                .unwrap_or_else(|panic| {
                    Err(OperatorError::Native(format!(
                        "internal error: {}",
                        crate::engine::pool::panic_message(&*panic)
                    )))
                })
                .map_err(|error| (position, error.shifted(*offset)))?;
            *offset += records;
        }
        output.extend(piece);
    }
    Ok(output)
}
