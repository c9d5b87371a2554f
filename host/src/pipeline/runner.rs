//! The driver of a pipeline run: starts the receivers, cuts micro-batches
//! as its [`Trigger`] says, runs them through the executor, hands the
//! results to the sinks, applies control requests between batches, and
//! stops gracefully.
//!
//! The driver waits on one [`Signal`], raised by every source delivery,
//! control request and stop, never on a sleep or a poll. Stopping: when a
//! stop is asked for, receivers are told to stop and awaited, everything
//! they had queued is processed in final batches (unless the stop is
//! [`StopMode::Now`]), sinks are closed, and the run returns normally. A run
//! also ends when every source has finished by itself (a generator's count,
//! stdin's end, the end of an `--available-now` run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::backpressure::SourceRates;
use super::control::{ControlError, ControlMessage, ControlReply, ControlRequest};
use super::durability::Durability;
use super::executor::{BatchError, Executor, Quarantined};
use super::live::{BatchMark, BatchReport, Live, PipelineEvent, PipelineState};
use super::ready::Pipeline;
use super::run::{RunOptions, RunSummary};
use super::signal::{Signal, StopMode};
use super::swap::{RollbackRule, Rollout, SwapOrder, SwapRefused, Swaps};
use super::trigger::{Decision, Trigger};
use crate::batcher::{Batcher, SourceCut};
use crate::checkpoint::LoggedBatch;
use crate::engine::pool::PoolClient;
use crate::error::EngineError;
use crate::record::{Partition, partition_len};
use crate::sink::{BatchInfo, SourceAfter};
use crate::source::{self, BatchInput, ChunkQueue, SourceContext, SourceError, SourcePosition, now_ms};
use crate::state::StateSize;

/// How long a stopping pipeline waits for its receivers to hand over what
/// they hold.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a driver needs from the engine that runs it.
pub(crate) struct Drive {
    /// The pipeline's access to the shared worker pool.
    pub pool: PoolClient,
    /// The runtime its receivers run on.
    pub io: tokio::runtime::Handle,
    /// Where it publishes status, metrics and events.
    pub live: Arc<Live>,
    /// What wakes it.
    pub signal: Signal,
    /// Its control requests.
    pub control: crossbeam_channel::Receiver<ControlMessage>,
    /// How to run.
    pub options: RunOptions,
    /// What kept plugin versions are loaded through (replays, rollbacks).
    pub runtime: Arc<crate::runtime::Runtime>,
}

impl Pipeline {
    /// Runs until stopped, or until the sources are exhausted, publishing
    /// what it does through `drive.live`.
    pub(crate) fn drive(mut self, drive: Drive) -> Result<RunSummary, EngineError> {
        let Drive {
            pool,
            io,
            live,
            signal,
            control,
            options,
            runtime,
        } = drive;
        self.check_options(&options)?;
        let pipeline = self.plan.pipeline.clone();
        let _span = tracing::info_span!("pipeline", pipeline = %pipeline).entered();
        for (sink, _) in &mut self.sinks {
            sink.open().map_err(|error| EngineError::Sink {
                pipeline: pipeline.clone(),
                error,
            })?;
        }
        let (durability, first_batch, mut replays) = match &self.checkpoint {
            Some(settings) => {
                let (durability, first, replays) = Durability::open(
                    settings.clone(),
                    &self.plan,
                    self.plugin_hashes.clone(),
                    options.allow_plugin_change,
                )?;
                (Some(durability), first, replays.into_iter().map(Some).collect())
            }
            None => (None, 0, vec![None; self.plan.sources.len()]),
        };
        let mut swaps = Swaps::new(&self.plan, runtime, live.clone());
        let mut durability = durability;
        if let Some(durability) = &mut durability {
            swaps.keep_components(durability)?;
            let restored = durability.restored_versions().clone();
            if options.allow_plugin_change {
                swaps.check_state_versions(&restored)?;
            } else {
                // Resume on the versions the checkpoint was taken with; the
                // pipeline file's are swapped in after the replay.
                swaps.align(&restored, durability, None)?;
            }
            durability.set_versions(swaps.versions());
            // Components no checkpoint, batch to replay or stage needs.
            durability.prune_plugins(&swaps.configured_versions())?;
        }
        if durability.is_some() {
            // The first batch id the batch log does not hold.
            let logged_end = replays
                .iter()
                .flatten()
                .map(|replay: &source::Replay| replay.next_batch)
                .max()
                .unwrap_or(first_batch);
            for (sink, _) in &mut self.sinks {
                sink.recovered(logged_end).map_err(|error| EngineError::Sink {
                    pipeline: pipeline.clone(),
                    error,
                })?;
            }
        }
        let (stop_sources, stop_watch) = watch::channel(false);
        // Backpressure needs batches on the wall clock's interval.
        let interval = (self.clock.is_none() && !options.available_now).then_some(self.batch_interval);
        let rate_specs: Vec<_> = self.plan.sources.iter().map(|(spec, _)| spec.rate).collect();
        let rates = SourceRates::new(&rate_specs, interval, replays.iter().any(Option::is_some));
        let (errors_tx, errors) = std::sync::mpsc::channel::<SourceError>();
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        let mut committed = Vec::new();
        for (index, ((spec, _), replay)) in self.plan.sources.iter().zip(replays.iter_mut()).enumerate() {
            let (chunks, queue) = mpsc::channel(self.queue_chunks);
            queues.push(queue);
            let mut chunks = ChunkQueue::new(chunks, signal.clone());
            if let Some(limiter) = rates.limiter(index) {
                chunks = chunks.paced(limiter, stop_watch.clone());
            }
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
            let (committed_tx, committed_rx) = watch::channel(None);
            committed.push(committed_tx);
            let ctx = SourceContext {
                pipeline: pipeline.clone(),
                committed: committed_rx,
                lag: live.lag_board(index),
                name: spec.name.clone(),
                chunks,
                stop: stop_watch.clone(),
                available_now: options.available_now,
                chunk_records: self.chunk_records,
                clock: self.clock,
                replay: replay.take(),
                // Pipelines that checkpoint to object storage have no
                // sources that keep one (refused with the file).
                wal: self.checkpoint.as_ref().and_then(|settings| {
                    let location = source::wal::WalLocation {
                        checkpoint_dir: settings.location.directory()?.to_owned(),
                        confined_to: settings.confined_to.clone(),
                        source: spec.name.clone(),
                    };
                    Some((location, settings.wal_sync))
                }),
            };
            let receiver = source::from_spec(spec);
            let errors_tx = errors_tx.clone();
            let signal = signal.clone();
            tasks.push(io.spawn(async move {
                let name = ctx.name.clone();
                for _ in 0..untracked {
                    if ctx.chunks.send(source::Delivery::BatchEnd).await.is_err() {
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
                signal.notify();
            }));
        }
        drop(errors_tx);
        let trigger = if self.clock.is_some() {
            Trigger::Deterministic
        } else if options.available_now {
            Trigger::AvailableNow { since: None }
        } else {
            Trigger::processing_time(self.batch_interval)
        };
        let executor = Executor::new(self.plan.clone(), pool);
        let mut driver = Driver {
            executor,
            swaps,
            configured_checked: false,
            live,
            signal,
            control,
            durability,
            batcher: Batcher::new(queues),
            rates,
            max_batch_memory: self.max_batch_memory,
            trigger,
            summary: RunSummary {
                pipeline: pipeline.clone(),
                ..RunSummary::default()
            },
            last_batch: None,
            first_batch,
            last_cut: Instant::now(),
            paused: None,
            source_error: None,
            errors,
            tasks,
            committed,
            stop_sources,
            stop_deadline: None,
        };
        driver.live.set_rate_limits(driver.rates.rates());
        tracing::info!(partitions = self.plan.partitions, "pipeline started");
        driver.live.set_state(PipelineState::Running, None);
        let result = driver.run(&mut self);
        driver.end(&mut self, result)
    }
}

/// Why a pipeline is paused.
#[derive(Debug, Clone)]
enum Pause {
    /// Somebody asked for it.
    Requested,
    /// A stage with `quarantine = "pause"` failed too often.
    Quarantined(Quarantined),
}

/// The state of one run, driven batch by batch.
struct Driver {
    executor: Executor,
    /// Hot-load: the plan's plugin slots and their versions.
    swaps: Swaps,
    /// Set once the pipeline file's plugin versions were swapped back in
    /// after a replay that ran on others.
    configured_checked: bool,
    live: Arc<Live>,
    signal: Signal,
    control: crossbeam_channel::Receiver<ControlMessage>,
    durability: Option<Durability>,
    batcher: Batcher,
    /// The pacing of the sources, and their backpressure.
    rates: SourceRates,
    /// Bytes a processing-time batch may gather from one source while it waits.
    max_batch_memory: usize,
    trigger: Trigger,
    summary: RunSummary,
    last_batch: Option<(u64, i64)>,
    first_batch: u64,
    last_cut: Instant,
    paused: Option<Pause>,
    source_error: Option<SourceError>,
    errors: std::sync::mpsc::Receiver<SourceError>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Per source: its position after the last batch whose sinks committed.
    committed: Vec<watch::Sender<Option<SourcePosition>>>,
    stop_sources: watch::Sender<bool>,
    /// Set once stopping: how long receivers get to hand over what they hold.
    stop_deadline: Option<Instant>,
}

/// What the loop does next.
enum Step {
    /// Run this batch.
    Run(Vec<SourceCut>, Option<LoggedBatch>, Instant),
    /// Look again (after a wait).
    Again,
    /// The run is over.
    End,
}

impl Driver {
    fn pipeline(&self) -> &str {
        &self.executor.plan().pipeline
    }

    /// True once every receiver has ended: its queue is closed (before it
    /// wakes the driver a last time) or its task is over.
    fn sources_done(&self) -> bool {
        self.batcher.all_closed() || self.tasks.iter().all(|task| task.is_finished())
    }

    /// The batch loop; returns when the run ends (its error, if any).
    fn run(&mut self, pipeline: &mut Pipeline) -> Result<(), EngineError> {
        let mut replay: Option<LoggedBatch> = None;
        loop {
            self.apply_control(pipeline)?;
            if self.source_error.is_none()
                && let Ok(error) = self.errors.try_recv()
            {
                self.source_error = Some(error);
            }
            if replay.is_none() {
                replay = self.durability.as_mut().and_then(Durability::next_replayed);
                // The replay is over (or there was none): pace sources.
                if replay.is_none() && self.rates.start() {
                    self.live.set_rate_limits(self.rates.rates());
                }
                if let (Some(logged), Some(durability)) = (&replay, &mut self.durability)
                    && self
                        .swaps
                        .align(&logged.plugins, durability, Some(&pipeline.plan))?
                {
                    durability.set_versions(self.swaps.versions());
                    self.executor.sweep();
                }
                if replay.is_none() && !self.configured_checked {
                    self.configured_checked = true;
                    self.swap_in_configured(pipeline)?;
                }
            }
            if replay.is_some() && self.paused.is_some() {
                // Logged batches wait for a resume like any other; a stop
                // lets them all run first (it must not end the run with
                // batches logged after its final checkpoint), except after
                // a quarantine, which ends the run with its error.
                if !self.signal.is_stopped() {
                    self.signal.wait_until(None);
                    continue;
                }
                if let Some(error) = self.quarantine_error() {
                    return Err(error);
                }
                self.paused = None;
            }
            let step = match replay.take() {
                // A replayed batch is cut whole whatever happens (a stop waits
                // for the end of the replay): it must be the logged batch.
                Some(logged) => {
                    let (units, _) = self.batcher.cut_units(&self.signal, false);
                    Step::Run(units, Some(logged), Instant::now())
                }
                None => self.next_step()?,
            };
            match step {
                Step::Again => continue,
                Step::End => return Ok(()),
                Step::Run(cuts, replayed, due) => self.run_batch(pipeline, cuts, replayed, due)?,
            }
        }
    }

    /// Decides, or waits for, the next step when nothing is replayed.
    fn next_step(&mut self) -> Result<Step, EngineError> {
        let stop = self.signal.stop_mode();
        if stop.is_some() || self.source_error.is_some() {
            return self.stopping_step(stop);
        }
        if self.paused.is_some() {
            self.signal.wait_until(None);
            return Ok(Step::Again);
        }
        let now = Instant::now();
        match self.trigger.decide(&mut self.batcher, now) {
            Decision::Wait(deadline) => {
                if matches!(self.trigger, Trigger::ProcessingTime { .. }) {
                    // The batch gathers its interval's input as it comes, so
                    // that a receiver's queue holds only what arrives between
                    // two wake-ups, not a whole interval's worth.
                    self.batcher.stage(self.max_batch_memory);
                }
                self.live.set_queued_chunks(self.batcher.queued());
                self.signal.wait_until(deadline);
                Ok(Step::Again)
            }
            Decision::End => Ok(Step::End),
            Decision::Cut => {
                let due = self.trigger.due(now);
                self.trigger.cut(now);
                let cuts = if self.trigger == Trigger::Deterministic {
                    let (units, whole) = self.batcher.cut_units(&self.signal, true);
                    if !whole {
                        // A stop came in the middle of a unit: look again.
                        return self.partial_unit(units, due);
                    }
                    // A unit may be empty (an empty file): only the end of
                    // every source ends the run. A unit that names a
                    // position (an empty file read) is a batch even when the
                    // source ended right after it.
                    if self.batcher.all_finished()
                        && units
                            .iter()
                            .all(|u| partition_len(&u.chunks) == 0 && u.positions.is_empty())
                    {
                        return Ok(Step::End);
                    }
                    units
                } else {
                    self.batcher.cut()
                };
                Ok(Step::Run(cuts, None, due))
            }
        }
    }

    /// A stop cut a deterministic unit short: with durability it is left
    /// unlogged and read again, whole, after a restart; without, it runs.
    fn partial_unit(&mut self, units: Vec<SourceCut>, due: Instant) -> Result<Step, EngineError> {
        if self.durability.is_some() {
            return Ok(Step::End);
        }
        Ok(Step::Run(units, None, due))
    }

    /// The error a run stopped while quarantined ends with.
    fn quarantine_error(&self) -> Option<EngineError> {
        let Some(Pause::Quarantined(quarantined)) = &self.paused else {
            return None;
        };
        Some(EngineError::Quarantined {
            pipeline: self.pipeline().to_owned(),
            stage: quarantined.stage.clone(),
            batches: quarantined.batches,
            paused: true,
        })
    }

    /// The steps of a stopping pipeline: receivers are stopped, what they
    /// queued runs in final batches (not after [`StopMode::Now`]), then the
    /// run ends.
    fn stopping_step(&mut self, stop: Option<StopMode>) -> Result<Step, EngineError> {
        if let Some(error) = self.quarantine_error() {
            return Err(error);
        }
        let now = Instant::now();
        let deadline = *self.stop_deadline.get_or_insert_with(|| {
            self.summary.stopped = stop.is_some();
            let _ = self.stop_sources.send(true);
            now + STOP_GRACE
        });
        self.live.set_state(PipelineState::Stopping, None);
        if stop == Some(StopMode::Now) {
            return Ok(Step::End);
        }
        let sources_done = self.sources_done();
        if !self.batcher.has_pending() && !sources_done && now < deadline {
            // Let receivers hand over what they hold; each delivery, and
            // each receiver's end, wakes the driver.
            self.signal.wait_until(Some(deadline));
            return Ok(Step::Again);
        }
        let cuts = if self.trigger == Trigger::Deterministic {
            let (units, whole) = self.batcher.cut_units(&self.signal, true);
            if !whole {
                return self.partial_unit(units, now);
            }
            units
        } else {
            self.batcher.cut()
        };
        let received: usize = cuts.iter().map(|cut| partition_len(&cut.chunks)).sum();
        if received == 0 && !self.batcher.has_pending() && (sources_done || now > deadline) {
            return Ok(Step::End);
        }
        Ok(Step::Run(cuts, None, now))
    }

    /// After a replay that ran on plugin versions other than the pipeline
    /// file's (a crash soon after a hot-load, or a plugin file changed
    /// between runs): swaps the file's versions back in, with the checks of
    /// any hot-load. A version that fails them stops the run.
    fn swap_in_configured(&mut self, pipeline: &Pipeline) -> Result<(), EngineError> {
        for (stage, plugin, configured) in self.swaps.off_configured() {
            let order = SwapOrder {
                stage: stage.clone(),
                plugin: Some(plugin),
                // Kept in the checkpoint directory: the batches it
                // processes name it.
                bytes: std::fs::read(configured.plugin.path())
                    .ok()
                    .filter(|bytes| crate::runtime::content_hash(bytes) == configured.plugin.content_hash())
                    .map_or_else(|| Arc::from(Vec::new()), Arc::from),
                candidate: configured.plugin.clone(),
                config: Some(configured.config.clone()),
                rule: RollbackRule {
                    batches: 0,
                    max_failures: 0,
                },
                mode: Rollout::Immediate,
                by: Some("the pipeline file".into()),
            };
            let last = self.last_batch.map(|(batch, _)| batch);
            match self.swaps.swap(
                &order,
                last,
                self.summary.batches,
                self.durability.as_mut(),
                &pipeline.plan,
            ) {
                Ok(report) => {
                    tracing::warn!(stage = %stage, "the pipeline file's plugin version {} differs from the checkpoint's ({}) and is swapped in after the replay", report.to, report.from);
                    self.live.publish(PipelineEvent::PluginSwapped(report));
                }
                Err(refused) => {
                    return Err(EngineError::Plan {
                        location: format!("pipeline `{}`", self.pipeline()),
                        message: format!(
                            "stage `{stage}`: its plugin changed since the checkpoint, and the new version cannot be swapped in: {refused}; point the pipeline file at the checkpoint's version (kept under plugins/ in the checkpoint directory), or pass --allow-plugin-change to resume on the new version without its checks (refused when it keeps another state version)"
                        ),
                    });
                }
            }
        }
        if let Some(durability) = &mut self.durability {
            durability.set_versions(self.swaps.versions());
        }
        self.executor.sweep();
        Ok(())
    }

    /// The answer to a swap or promotion (`what`) that `result` says, after
    /// the workers were asked to drop replaced instances; `Err` with the
    /// message when the checkpoint at the cut-over failed (the run then
    /// ends, as on any checkpoint failure: [`Driver::hot_load_failed`]).
    fn swapped(
        &mut self,
        result: Result<super::SwapReport, SwapRefused>,
        what: &str,
    ) -> Result<Result<ControlReply, ControlError>, String> {
        self.executor.sweep();
        let refused = |message: String| ControlError::Refused {
            pipeline: self.pipeline().to_owned(),
            message,
        };
        match result {
            Ok(report) => {
                self.live.publish(PipelineEvent::PluginSwapped(report.clone()));
                Ok(Ok(ControlReply::Swapped(report)))
            }
            Err(SwapRefused::Failed(message)) => Err(message),
            Err(refusal) => Ok(Err(refused(format!("{what} refused: {refusal}")))),
        }
    }

    /// The run's error when the checkpoint at a cut-over failed.
    fn hot_load_failed(&self, message: &str) -> EngineError {
        EngineError::Io(format!(
            "pipeline `{}`: the checkpoint at a hot-load failed: {message}",
            self.pipeline()
        ))
    }

    /// Applies every waiting control request.
    fn apply_control(&mut self, pipeline: &Pipeline) -> Result<(), EngineError> {
        while let Ok(ControlMessage { request, reply }) = self.control.try_recv() {
            let refused = |message: &str| ControlError::Refused {
                pipeline: pipeline.plan.pipeline.clone(),
                message: message.to_owned(),
            };
            let answer = match request {
                ControlRequest::Pause => {
                    if self.paused.is_none() {
                        self.paused = Some(Pause::Requested);
                        self.live
                            .set_state(PipelineState::Paused, Some("paused on request".into()));
                        tracing::info!("paused");
                    }
                    Ok(ControlReply::Paused {
                        after_batch: self.last_batch.map(|(batch, _)| batch),
                    })
                }
                ControlRequest::Resume => match self.paused.take() {
                    Some(pause) => {
                        if let Pause::Quarantined(quarantined) = pause {
                            for stage in &pipeline.plan.stages {
                                if stage.name == quarantined.stage {
                                    stage
                                        .metrics
                                        .consecutive_failed_batches
                                        .store(0, std::sync::atomic::Ordering::Relaxed);
                                }
                            }
                        }
                        self.trigger.resumed(Instant::now());
                        self.live.set_state(PipelineState::Running, None);
                        tracing::info!("resumed");
                        Ok(ControlReply::Resumed)
                    }
                    None => Err(refused("it is not paused")),
                },
                ControlRequest::Checkpoint => match (&mut self.durability, self.last_batch) {
                    (None, _) => Err(refused("it has no [checkpoint] directory")),
                    (Some(_), None) => Err(refused("it has not completed a batch yet")),
                    (Some(durability), Some((batch, time))) => {
                        if let Err(error) = durability.after_batch(&pipeline.plan, batch, time, true) {
                            let _ = reply.send(Err(refused(&format!("the checkpoint failed: {error}"))));
                            return Err(error);
                        }
                        self.live.set_checkpoints(durability);
                        Ok(ControlReply::Checkpointing { batch })
                    }
                },
                ControlRequest::Swap(_)
                | ControlRequest::Promote { .. }
                | ControlRequest::RollBack { .. }
                    if !self.configured_checked =>
                {
                    Err(refused(
                        "it is still recovering (replaying its logged batches on the plugin versions that processed them): ask again once it runs",
                    ))
                }
                ControlRequest::Swap(order) => {
                    let last = self.last_batch.map(|(batch, _)| batch);
                    let swapped = self.swaps.swap(
                        &order,
                        last,
                        self.summary.batches,
                        self.durability.as_mut(),
                        &pipeline.plan,
                    );
                    match self.swapped(swapped, "swap") {
                        Ok(answer) => answer,
                        Err(message) => {
                            let _ = reply.send(Err(refused(&message)));
                            return Err(self.hot_load_failed(&message));
                        }
                    }
                }
                ControlRequest::Promote { stage, plugin, by } => {
                    let last = self.last_batch.map(|(batch, _)| batch);
                    let promoted = self.swaps.promote(
                        &stage,
                        plugin.as_deref(),
                        by,
                        last,
                        self.summary.batches,
                        self.durability.as_mut(),
                        &pipeline.plan,
                    );
                    match self.swapped(promoted, "promotion") {
                        Ok(answer) => answer,
                        Err(message) => {
                            let _ = reply.send(Err(refused(&message)));
                            return Err(self.hot_load_failed(&message));
                        }
                    }
                }
                ControlRequest::RollBack { stage, plugin, by } => {
                    match self
                        .swaps
                        .roll_back(&stage, plugin.as_deref(), by, "rolled back on request")
                    {
                        Ok((from, to)) => {
                            if let Some(durability) = &mut self.durability {
                                durability.set_versions(self.swaps.versions());
                            }
                            self.executor.sweep();
                            Ok(ControlReply::RolledBack { from, to })
                        }
                        Err(refusal) => Err(refused(&format!("rollback refused: {refusal}"))),
                    }
                }
            };
            let _ = reply.send(answer);
        }
        Ok(())
    }

    /// After a batch: probations that ended, automatic rollbacks, and
    /// candidates in shadow that their rule promotes.
    /// Fails when an automatic promotion cut over but its checkpoint (or
    /// state conversion) failed: the run stops there, as on a request's.
    fn end_probations(&mut self, pipeline: &Pipeline, batch: u64) -> Result<(), EngineError> {
        let (ended, rolled_back, promotions) = self.swaps.after_batch();
        let promoted = !promotions.is_empty();
        for (stage, plugin) in promotions {
            let promoted = self.swaps.promote(
                &stage,
                Some(&plugin),
                Some("its promotion rule".into()),
                Some(batch),
                self.summary.batches,
                self.durability.as_mut(),
                &pipeline.plan,
            );
            match promoted {
                Ok(report) => self.live.publish(PipelineEvent::PluginSwapped(report)),
                Err(SwapRefused::Failed(message)) => return Err(self.hot_load_failed(&message)),
                Err(refusal) => {
                    tracing::warn!(%stage, %plugin, "the candidate in shadow was not promoted: {refusal}")
                }
            }
        }
        for (key, from, to, reason) in &rolled_back {
            let (stage, plugin) = key.split_once('/').unwrap_or((key, ""));
            self.live.publish(PipelineEvent::PluginRolledBack {
                stage: stage.to_owned(),
                plugin: plugin.to_owned(),
                from: from.clone(),
                to: to.clone(),
                reason: reason.clone(),
            });
        }
        if ended || !rolled_back.is_empty() || promoted {
            if let Some(durability) = &mut self.durability {
                durability.set_versions(self.swaps.versions());
            }
            self.executor.sweep();
        }
        Ok(())
    }

    /// Logs, runs and checkpoints one batch.
    fn run_batch(
        &mut self,
        pipeline: &mut Pipeline,
        cuts: Vec<SourceCut>,
        replayed: Option<LoggedBatch>,
        due: Instant,
    ) -> Result<(), EngineError> {
        let batch_id = self.last_batch.map_or(self.first_batch, |(batch, _)| batch + 1);
        let time = match (&replayed, pipeline.clock) {
            (Some(logged), _) => logged.time,
            (None, Some(clock)) => clock.time_of(batch_id),
            (None, None) => now_ms(),
        };
        let _span = tracing::debug_span!("batch", batch = batch_id).entered();
        if let Some(durability) = &mut self.durability {
            durability.record(batch_id, time, &cuts, replayed.as_ref())?;
        }
        let per_source: Vec<usize> = cuts.iter().map(|cut| partition_len(&cut.chunks)).collect();
        let received: usize = per_source.iter().sum();
        let now = Instant::now();
        self.live.received(&per_source, now - self.last_cut);
        self.last_cut = now;
        self.live.set_queued_chunks(self.batcher.queued());
        let started = Instant::now();
        let positions: Vec<Option<SourcePosition>> =
            cuts.iter().map(|cut| cut.positions.last().cloned()).collect();
        let batches = cuts.into_iter().map(|cut| cut.chunks).collect();
        let records_out = self.run_one(pipeline, batch_id, time, batches, &positions)?;
        let processing_time = started.elapsed();
        self.end_probations(pipeline, batch_id)?;
        for stage in &pipeline.plan.stages {
            stage.refresh_state();
        }
        self.last_batch = Some((batch_id, time));
        if let Some(durability) = &mut self.durability {
            durability.after_batch(&pipeline.plan, batch_id, time, false)?;
            self.live.set_checkpoints(durability);
        }
        for (sender, position) in self.committed.iter().zip(positions) {
            if position.is_some() {
                sender.send_replace(position);
            }
        }
        let summary = &mut self.summary;
        summary.records_in += received as u64;
        summary.records_out += records_out;
        summary.batches += 1;
        summary.total_batch_time += processing_time;
        summary.max_batch_time = summary.max_batch_time.max(processing_time);
        let slow = processing_time > pipeline.batch_interval;
        if slow {
            summary.slow_batches += 1;
        }
        let scheduling_delay = started.saturating_duration_since(due);
        if self
            .rates
            .batch_completed(time, &per_source, processing_time, scheduling_delay)
        {
            let rates = self.rates.rates();
            tracing::debug!(?rates, "backpressure set the sources' rates");
            self.live.set_rate_limits(rates);
        }
        self.live.batch_completed(
            BatchReport {
                batch: BatchMark {
                    id: batch_id,
                    time_ms: time,
                },
                records_in: received as u64,
                records_out,
                scheduling_delay,
                processing_time,
                total_delay: scheduling_delay + processing_time,
            },
            slow,
        );
        tracing::debug!(
            records = received,
            elapsed_ms = processing_time.as_secs_f64() * 1e3,
            "batch done"
        );
        Ok(())
    }

    /// Runs one batch's stages and sinks; returns the records handed to sinks.
    fn run_one(
        &mut self,
        pipeline: &mut Pipeline,
        batch_id: u64,
        time_ms: i64,
        batches: Vec<Partition>,
        positions: &[Option<SourcePosition>],
    ) -> Result<u64, EngineError> {
        let info = BatchInfo {
            id: batch_id,
            time_ms,
        };
        let plan = &pipeline.plan;
        let mut output = match self.executor.run_batch(batch_id, info.time_ms, batches) {
            Ok(output) => output,
            Err(BatchError::Failed(failure)) => {
                self.live.stage_failed(&failure.stage, failure.to_string());
                return Err(EngineError::Stage(failure));
            }
            Err(BatchError::Quarantined(quarantined)) => {
                let error = EngineError::Quarantined {
                    pipeline: plan.pipeline.clone(),
                    stage: quarantined.stage.clone(),
                    batches: quarantined.batches,
                    paused: false,
                };
                self.live.stage_failed(&quarantined.stage, error.to_string());
                return Err(error);
            }
        };
        let mut records_out = 0;
        let sources: Vec<SourceAfter<'_>> = plan
            .sources
            .iter()
            .zip(positions)
            .map(|((spec, _), position)| SourceAfter {
                spec,
                position: position.as_ref(),
            })
            .collect();
        // Only the last sink to write may commit the sources' positions with
        // its output: one before it would move them past a batch that the
        // sinks after it have not written (lost to them after a crash, in a
        // run that starts from the sources' committed positions).
        let last = pipeline.sinks.len().saturating_sub(1);
        for (index, (sink, stream)) in pipeline.sinks.iter_mut().enumerate() {
            sink.sources_after(if index == last { &sources } else { &[] });
            let partitions = output.streams[*stream].get_or_insert_with(Vec::new);
            records_out += partitions.iter().map(|p| partition_len(p) as u64).sum::<u64>();
            sink.write(info, partitions).map_err(|error| EngineError::Sink {
                pipeline: plan.pipeline.clone(),
                error,
            })?;
        }
        if let Some(quarantined) = output.pause_for {
            tracing::error!(
                stage = %quarantined.stage,
                "stage quarantined after {} consecutive batches with failures: the pipeline is paused \
                 (receivers are held back); resume it, or stop it with Ctrl-C or SIGTERM",
                quarantined.batches
            );
            let reason = format!(
                "stage `{}` quarantined after {} consecutive batches with failures",
                quarantined.stage, quarantined.batches
            );
            self.live.stage_failed(&quarantined.stage, reason.clone());
            self.live.set_state(PipelineState::Paused, Some(reason));
            self.paused = Some(Pause::Quarantined(quarantined));
        }
        Ok(records_out)
    }

    /// Ends the run whatever `result` is: final checkpoint (after a clean
    /// end or a stop), receivers ended, state figures, sinks closed.
    fn end(
        mut self,
        pipeline: &mut Pipeline,
        result: Result<(), EngineError>,
    ) -> Result<RunSummary, EngineError> {
        let _ = self.stop_sources.send(true);
        // A receiver that returned has closed its queue, and its task is
        // about to report how it ended: let it, or a failed source's error
        // would be lost and the run would look finished.
        let grace = Instant::now() + Duration::from_secs(2);
        while self.batcher.all_closed()
            && self.tasks.iter().any(|task| !task.is_finished())
            && Instant::now() < grace
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.source_error.is_none()
            && let Ok(error) = self.errors.try_recv()
        {
            self.source_error = Some(error);
        }
        for task in &self.tasks {
            task.abort();
        }
        let result = match (result, &mut self.durability) {
            // A final checkpoint after the last batch of a clean end or a
            // graceful stop: a restart then has nothing to replay. Not after a
            // source failed: its progress may not be what it delivered.
            (Ok(()), Some(durability)) if self.source_error.is_none() => {
                let last = self.last_batch.map_or(Ok(()), |(batch, time)| {
                    durability.after_batch(&pipeline.plan, batch, time, true)
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
        let summary = &mut self.summary;
        summary.rates = (pipeline.plan.sources.iter())
            .zip(self.rates.reports())
            .filter_map(|((spec, _), report)| Some((spec.name.clone(), report?)))
            .collect();
        if let Some(durability) = &self.durability {
            summary.checkpoints = durability.stats();
            self.live.set_checkpoints(durability);
        }
        for stage in &pipeline.plan.stages {
            stage.refresh_state();
            let metrics = stage.snapshot();
            summary.retries += metrics.retries;
            summary.skipped_batches += metrics.skipped_batches;
            summary.skipped_records += metrics.skipped_records;
            summary.dead_lettered += metrics.dead_lettered;
            summary.late_records += metrics.late_records;
            if metrics.log_messages_dropped > 0 {
                summary.log_messages_dropped += metrics.log_messages_dropped;
                summary
                    .log_drops_by_stage
                    .push((stage.name.clone(), metrics.log_messages_dropped));
            }
            if metrics.instances_replaced > 0 {
                summary
                    .replaced_instances_by_stage
                    .push((stage.name.clone(), metrics.instances_replaced));
            }
            summary.shuffled_records += metrics.shuffled_records;
            if metrics.state != StateSize::default() {
                summary.state += metrics.state;
                summary.state_by_stage.push((stage.name.clone(), metrics.state));
            }
        }
        let mut close_error = None;
        for (sink, _) in &mut pipeline.sinks {
            if let Err(error) = sink.close() {
                close_error.get_or_insert(error);
            }
        }
        let name = pipeline.plan.pipeline.clone();
        if let Err(error) = result {
            // A source that failed while its logged batches were read again
            // ended its input early: the replayed batch that came out short
            // follows from it, so its error is the one to report.
            let short_replay = matches!(
                &error,
                EngineError::Checkpoint {
                    error: crate::checkpoint::CheckpointError::Unusable { .. },
                    ..
                }
            );
            return match self.source_error.take() {
                Some(source_error) if !short_replay => {
                    tracing::error!(error = %source_error, "a source failed too");
                    Err(error)
                }
                Some(source_error) => {
                    tracing::error!(%error, "after the source failed");
                    Err(EngineError::Source {
                        pipeline: name,
                        error: source_error,
                    })
                }
                None => Err(error),
            };
        }
        if let Some(error) = self.source_error.take().or_else(|| self.errors.try_recv().ok()) {
            return Err(EngineError::Source {
                pipeline: name,
                error,
            });
        }
        if let Some(error) = close_error {
            return Err(EngineError::Sink {
                pipeline: name,
                error,
            });
        }
        tracing::info!(
            batches = self.summary.batches,
            records = self.summary.records_in,
            "pipeline finished"
        );
        Ok(self.summary)
    }
}
