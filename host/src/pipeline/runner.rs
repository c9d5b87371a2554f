//! The driver of a pipeline run: starts the receivers, cuts a micro-batch
//! every batch interval, runs it through the executor, hands the results to
//! the sinks, and stops gracefully.
//!
//! Stopping: when the [`StopSignal`] is raised, receivers are told to stop and
//! awaited, everything they had queued is processed in final batches, sinks are
//! closed, and the run returns normally. With `available_now`, batches are
//! cut back to back as data arrives (no waiting for the interval) and the run
//! ends once every source is exhausted. A run also ends when every source
//! has finished by itself (a generator's count, stdin's end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::executor::{BatchError, Executor};
use super::plan::{Plan, StreamId};
use super::registry::PluginRegistry;
use super::stop::StopSignal;
use super::workers::WorkerPool;
use crate::batcher::Batcher;
use std::collections::BTreeMap;

use super::durability::{CheckpointStats, Durability};
use crate::checkpoint::CheckpointSettings;
use crate::config::{ClockMode, PipelineSpec, Quarantine};
use crate::error::EngineError;
use crate::record::{Partition, partition_len};
use crate::sink::{self, BatchInfo, Sink};
use crate::source::{self, BatchInput, Delivery, DeterministicClock, SourceContext, SourceError, now_ms};
use crate::state::StateSize;

/// How to run a pipeline.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Process what the sources have, then stop (Structured Streaming's `availableNow`).
    pub available_now: bool,
    /// Raised to stop the run gracefully.
    pub stop: StopSignal,
    /// Worker threads; the pipeline's partition count when `None`.
    pub workers: Option<usize>,
    /// Resume from a checkpoint even though a plugin's component changed.
    pub allow_plugin_change: bool,
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Micro-batches run.
    pub batches: u64,
    /// Records received from all sources.
    pub records_in: u64,
    /// Records handed to sinks (all sinks together).
    pub records_out: u64,
    /// Whether the run ended because it was asked to stop.
    pub stopped: bool,
    /// Batches whose processing (stages and sinks) took longer than the
    /// batch interval: a pipeline that keeps up has none.
    pub slow_batches: u64,
    /// The longest processing time of a batch.
    pub max_batch_time: Duration,
    /// Processing time of all batches together.
    pub total_batch_time: Duration,
    /// Failed calls retried.
    pub retries: u64,
    /// Partition batches dropped by `on-error = "skip-batch"`.
    pub skipped_batches: u64,
    /// Records in those batches.
    pub skipped_records: u64,
    /// Records sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Records behind an event-time watermark (dropped or dead-lettered).
    pub late_records: u64,
    /// Keyed state held at the end of the run, over all stages.
    pub state: StateSize,
    /// Keyed state held at the end of the run by each stage that holds some.
    pub state_by_stage: Vec<(String, StateSize)>,
    /// Checkpoints written, replayed batches, where the run resumed.
    pub checkpoints: CheckpointStats,
}

/// A pipeline ready to run: its plan and its sinks.
pub struct Pipeline {
    plan: Arc<Plan>,
    sinks: Vec<(Box<dyn Sink>, StreamId)>,
    batch_interval: Duration,
    clock: Option<DeterministicClock>,
    queue_chunks: usize,
    chunk_records: usize,
    checkpoint: Option<CheckpointSettings>,
    plugin_hashes: BTreeMap<String, String>,
    definition: String,
}

impl Pipeline {
    /// Plans `spec` with the plugins of `registry` (which must hold every
    /// plugin the spec uses, see [`PluginRegistry::load_declared`]), checks
    /// every plugin against its stage, and creates the sinks. `file` names
    /// the pipeline file in errors.
    pub fn build(spec: &PipelineSpec, registry: &PluginRegistry, file: &str) -> Result<Self, EngineError> {
        let plan = Plan::build(spec, registry, file)?;
        plan.check()?;
        let sinks = plan
            .sinks
            .iter()
            .map(|(sink, stream)| (sink::from_spec(sink, plan.window_lengths[*stream]), *stream))
            .collect();
        Ok(Self {
            plan: Arc::new(plan),
            sinks,
            batch_interval: spec.batch_interval,
            clock: match spec.clock {
                ClockMode::WallClock => None,
                ClockMode::Deterministic { start_ms } => Some(DeterministicClock {
                    start_ms,
                    interval_ms: spec.batch_interval.as_millis() as i64,
                }),
            },
            queue_chunks: spec.queue_chunks,
            chunk_records: spec.chunk_records,
            checkpoint: spec.checkpoint.clone(),
            plugin_hashes: spec
                .plugins
                .keys()
                .filter_map(|name| match registry.get(name) {
                    Some(super::registry::Function::Wasm(plugin)) => {
                        Some((name.clone(), plugin.content_hash().to_owned()))
                    }
                    _ => None,
                })
                .collect(),
            definition: format!("{spec:#?}"),
        })
    }

    /// Replaces the sinks of the pipeline file with `sinks`, each reading the
    /// named stream (for embedding and benchmarks).
    pub fn set_sinks(&mut self, sinks: Vec<(String, Box<dyn Sink>)>) -> Result<(), EngineError> {
        let mut resolved = Vec::new();
        for (stream, sink) in sinks {
            let id = self
                .plan
                .streams
                .iter()
                .position(|s| *s == stream)
                .ok_or_else(|| EngineError::Io(format!("no stream named `{stream}`")))?;
            resolved.push((sink, id));
        }
        self.sinks = resolved;
        Ok(())
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Runs until stopped, or until the sources are exhausted.
    pub fn run(mut self, options: RunOptions) -> Result<RunSummary, EngineError> {
        let pipeline = self.plan.pipeline.clone();
        if options.available_now {
            for (source, _) in &self.plan.sources {
                if let Some(generator) = source.kind.settings::<crate::config::GeneratorSpec>()
                    && generator.lines.is_none()
                {
                    return Err(EngineError::Plan {
                        location: format!("pipeline `{pipeline}`"),
                        message: format!(
                            "source `{}` is a generator without `lines`: it never runs out, so --available-now would never end",
                            source.name
                        ),
                    });
                }
            }
        }
        let io = |e: std::io::Error| EngineError::Io(format!("pipeline `{pipeline}`: {e}"));
        let workers = options.workers.unwrap_or(self.plan.partitions).max(1);
        let pool = Arc::new(WorkerPool::new(workers, &pipeline).map_err(io)?);
        let executor = Executor::new(self.plan.clone(), pool);
        for (sink, _) in &mut self.sinks {
            sink.open().map_err(|error| EngineError::Sink {
                pipeline: pipeline.clone(),
                error,
            })?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{pipeline}-io"))
            .enable_all()
            .build()
            .map_err(io)?;
        let (mut durability, first_batch, mut replays) = match &self.checkpoint {
            Some(settings) => {
                let (durability, first, replays) = Durability::open(
                    settings.clone(),
                    &self.plan,
                    self.plugin_hashes.clone(),
                    self.definition.clone(),
                    options.allow_plugin_change,
                )?;
                (Some(durability), first, replays.into_iter().map(Some).collect())
            }
            None => (None, 0, vec![None; self.plan.sources.len()]),
        };
        let (stop_sources, stop_watch) = watch::channel(false);
        let (errors_tx, errors) = std::sync::mpsc::channel::<SourceError>();
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for ((spec, _), replay) in self.plan.sources.iter().zip(replays.iter_mut()) {
            let (chunks, queue) = mpsc::channel(self.queue_chunks);
            queues.push(queue);
            // A source that keeps no position cannot read a logged batch
            // again: it contributes nothing to replayed batches.
            let untracked = replay.as_ref().map_or(0, |r| {
                if r.batches.iter().all(|b| *b == BatchInput::Untracked) {
                    r.batches.len()
                } else {
                    0
                }
            });
            if untracked > 0 {
                *replay = None;
            }
            let ctx = SourceContext {
                name: spec.name.clone(),
                chunks,
                stop: stop_watch.clone(),
                available_now: options.available_now,
                chunk_records: self.chunk_records,
                clock: self.clock,
                replay: replay.take(),
                wal: self.checkpoint.as_ref().map(|settings| {
                    (
                        crate::checkpoint::wal_dir(&settings.dir, &spec.name),
                        settings.wal_sync,
                    )
                }),
            };
            let receiver = source::from_spec(spec);
            let errors_tx = errors_tx.clone();
            tasks.push(runtime.spawn(async move {
                let name = ctx.name.clone();
                for _ in 0..untracked {
                    if ctx.chunks.send(Delivery::BatchEnd).await.is_err() {
                        return;
                    }
                }
                // The receiver runs in its own task so that a panic in it is
                // reported as a failed source, not mistaken for its end.
                let outcome = match tokio::spawn(receiver.run(ctx)).await {
                    Ok(outcome) => outcome,
                    Err(join) => Err(SourceError {
                        source_name: name,
                        message: format!("the receiver stopped unexpectedly: {join}"),
                    }),
                };
                if let Err(error) = outcome {
                    let _ = errors_tx.send(error);
                }
            }));
        }
        drop(errors_tx);
        let mut batcher = Batcher::new(queues);
        let mut summary = RunSummary::default();
        let mut last_batch: Option<(u64, i64)> = None;
        let never = StopSignal::new();
        let mut source_error = None;
        let mut next_cut = Instant::now() + self.batch_interval;
        let mut stopping = false;
        let mut stop_deadline = Instant::now() + Duration::from_secs(3600 * 24 * 365);
        tracing::info!(pipeline = %pipeline, partitions = self.plan.partitions, workers, "pipeline started");

        let result = loop {
            let replayed = durability.as_mut().and_then(Durability::next_replayed);
            if !stopping && replayed.is_none() {
                if self.clock.is_some() {
                    // Deterministic time: batches follow the sources' units.
                } else if options.available_now {
                    while !options.stop.is_stopped() && !batcher.has_pending() && !batcher.all_finished() {
                        options.stop.wait_timeout(Duration::from_millis(1));
                    }
                } else {
                    let now = Instant::now();
                    if next_cut > now {
                        options.stop.wait_timeout(next_cut - now);
                    }
                }
                if let Ok(error) = errors.try_recv() {
                    source_error = Some(error);
                }
                if options.stop.is_stopped() || source_error.is_some() {
                    stopping = true;
                    summary.stopped = options.stop.is_stopped();
                    stop_deadline = Instant::now() + Duration::from_secs(5);
                    let _ = stop_sources.send(true);
                    // Let receivers hand over what they hold; a receiver
                    // blocked on a full queue gets unblocked by the cuts below.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while tasks.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
                        if batcher.has_pending() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            // Look at the receivers before cutting: whatever a finished
            // receiver sent is then already in the cut.
            let sources_done = tasks.iter().all(|t| t.is_finished());
            let (cuts, finished) = if self.clock.is_some() || replayed.is_some() {
                // A replayed batch is cut whole whatever happens (a stop waits
                // for the end of the replay): it must be the logged batch.
                let stop = if replayed.is_some() { &never } else { &options.stop };
                let (units, whole) = batcher.cut_units(stop);
                if !whole && durability.is_some() {
                    // Stopped in the middle of a deterministic unit: leave it
                    // unlogged; it is read again, whole, after a restart.
                    break Ok(());
                }
                // A unit may be empty (an empty file): only the end of every
                // source ends the run.
                let ended = batcher.all_finished() && units.iter().all(|u| partition_len(&u.chunks) == 0);
                (units, ended && replayed.is_none())
            } else {
                let finished = batcher.all_finished();
                (batcher.cut(), finished)
            };
            let received: usize = cuts.iter().map(|cut| partition_len(&cut.chunks)).sum();
            if received == 0
                && replayed.is_none()
                && !batcher.has_pending()
                && (finished || (stopping && (sources_done || Instant::now() > stop_deadline)))
            {
                break Ok(());
            }
            let batch_id = last_batch.map_or(first_batch, |(batch, _)| batch + 1);
            let time = match (&replayed, self.clock) {
                (Some(logged), _) => logged.time,
                (None, Some(clock)) => clock.time_of(batch_id),
                (None, None) => now_ms(),
            };
            if let Some(durability) = &mut durability
                && let Err(error) = durability.record(batch_id, time, &cuts, replayed.as_ref())
            {
                break Err(error);
            }
            let batches = cuts.into_iter().map(|cut| cut.chunks).collect();
            if let Err(error) = self.run_one(&executor, batch_id, time, batches, &mut summary, &options.stop)
            {
                break Err(error);
            }
            last_batch = Some((batch_id, time));
            if let Some(durability) = &mut durability
                && let Err(error) = durability.after_batch(&self.plan, batch_id, time, false)
            {
                break Err(error);
            }
            summary.records_in += received as u64;
            let now = Instant::now();
            next_cut += self.batch_interval;
            if next_cut < now {
                tracing::debug!(pipeline = %pipeline, "batch took longer than the batch interval");
                next_cut = now;
            }
            if stopping && tasks.iter().any(|t| !t.is_finished()) {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let _ = stop_sources.send(true);
        runtime.shutdown_timeout(Duration::from_millis(200));
        let result = match (result, &mut durability) {
            // A final checkpoint after the last batch of a clean end or a
            // graceful stop: a restart then has nothing to replay. Not after a
            // source failed: its progress may not be what it delivered.
            (Ok(()), Some(durability)) if source_error.is_none() => {
                let last = last_batch.map_or(Ok(()), |(batch, time)| {
                    durability.after_batch(&self.plan, batch, time, true)
                });
                last.and_then(|()| durability.finish())
            }
            (result, Some(durability)) => {
                // Keep what an in-flight checkpoint wrote; the error that
                // stopped the run is the one to report.
                let _ = durability.finish();
                result
            }
            (result, None) => result,
        };
        if let Some(durability) = &durability {
            summary.checkpoints = durability.stats();
        }
        for stage in &self.plan.stages {
            let metrics = &stage.metrics;
            let read =
                |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
            summary.retries += read(&metrics.retries);
            summary.skipped_batches += read(&metrics.skipped_batches);
            summary.skipped_records += read(&metrics.skipped_records);
            summary.dead_lettered += read(&metrics.dead_lettered);
            summary.late_records += read(&metrics.late_records);
            let mut state = StateSize::default();
            for operator in &stage.operators {
                state += operator.state_size();
            }
            if state != StateSize::default() {
                summary.state += state;
                summary.state_by_stage.push((stage.name.clone(), state));
            }
        }
        let mut close_error = None;
        for (sink, _) in &mut self.sinks {
            if let Err(error) = sink.close() {
                close_error.get_or_insert(error);
            }
        }
        result?;
        if let Some(error) = source_error.or_else(|| errors.try_recv().ok()) {
            return Err(EngineError::Source { pipeline, error });
        }
        if let Some(error) = close_error {
            return Err(EngineError::Sink { pipeline, error });
        }
        tracing::info!(
            pipeline = %pipeline, batches = summary.batches, records = summary.records_in,
            "pipeline finished"
        );
        Ok(summary)
    }

    fn run_one(
        &mut self,
        executor: &Executor,
        batch_id: u64,
        time_ms: i64,
        batches: Vec<Partition>,
        summary: &mut RunSummary,
        stop: &StopSignal,
    ) -> Result<(), EngineError> {
        let started = Instant::now();
        let info = BatchInfo {
            id: batch_id,
            time_ms,
        };
        let received: usize = batches.iter().map(|p| partition_len(p)).sum();
        let mut streams = match executor.run_batch(batch_id, info.time_ms, batches) {
            Ok(streams) => streams,
            Err(BatchError::Failed(failure)) => return Err(EngineError::Stage(failure)),
            Err(BatchError::Quarantined {
                stage,
                batches,
                action,
            }) => {
                let pipeline = executor.plan().pipeline.clone();
                let paused = action == Quarantine::Pause;
                if paused {
                    tracing::error!(
                        pipeline = %pipeline, stage = %stage,
                        "stage quarantined after {batches} consecutive batches with failures: the pipeline is paused \
                         (receivers are held back); stop it with Ctrl-C or SIGTERM"
                    );
                    while !stop.wait_timeout(Duration::from_secs(3600)) {}
                }
                return Err(EngineError::Quarantined {
                    pipeline,
                    stage,
                    batches,
                    paused,
                });
            }
        };
        for (sink, stream) in &mut self.sinks {
            let partitions = streams[*stream].get_or_insert_with(Vec::new);
            summary.records_out += partitions.iter().map(|p| partition_len(p) as u64).sum::<u64>();
            sink.write(info, partitions).map_err(|error| EngineError::Sink {
                pipeline: executor.plan().pipeline.clone(),
                error,
            })?;
        }
        summary.batches += 1;
        let elapsed = started.elapsed();
        summary.total_batch_time += elapsed;
        summary.max_batch_time = summary.max_batch_time.max(elapsed);
        if elapsed > self.batch_interval {
            summary.slow_batches += 1;
        }
        tracing::debug!(
            pipeline = %executor.plan().pipeline, batch = batch_id, records = received,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "batch done"
        );
        Ok(())
    }
}
