//! The runner's side of fault tolerance: restores the checkpointed state into
//! the plan, tells each source what to read again, logs every new batch's
//! input before it runs, and checkpoints at batch boundaries (see
//! [`crate::checkpoint`] for the format and the guarantees).

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use super::plan::Plan;
use crate::batcher::SourceCut;
use crate::checkpoint::{
    CheckpointError, CheckpointReport, CheckpointSettings, Checkpointer, LoggedBatch, Manifest,
};
use crate::error::EngineError;
use crate::source::{BatchInput, Replay, SourceProgress};

/// Checkpoint figures of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointStats {
    /// Checkpoints written.
    pub written: u64,
    /// Size of the last one, in bytes.
    pub last_bytes: u64,
    /// The longest one (snapshot plus write).
    pub max_duration: std::time::Duration,
    /// Batches replayed from the batch log at start.
    pub replayed_batches: u64,
    /// The batch the run resumed after, if it resumed from a checkpoint.
    pub resumed_after: Option<u64>,
}

/// Batch logging and checkpointing for one run.
pub struct Durability {
    checkpointer: Checkpointer,
    pipeline: String,
    plugins: BTreeMap<String, String>,
    sinks: Vec<String>,
    source_names: Vec<String>,
    progress: Vec<SourceProgress>,
    replay: VecDeque<LoggedBatch>,
    settings_dir: String,
    last_checkpointed: Option<u64>,
    stats: CheckpointStats,
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durability")
            .field("pipeline", &self.pipeline)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The key of a stage's operator in checkpoints.
fn operator_key(stage: &str, index: usize) -> String {
    format!("{stage}#{index}")
}

fn checkpoint_error(pipeline: &str, error: CheckpointError) -> EngineError {
    EngineError::Checkpoint {
        pipeline: pipeline.to_owned(),
        error,
    }
}

impl Durability {
    /// Opens the checkpoint directory, restores the newest usable checkpoint
    /// into `plan`'s operators, and returns the first batch id to run and
    /// what each source must replay.
    pub fn open(
        settings: CheckpointSettings,
        plan: &Plan,
        plugins: BTreeMap<String, String>,
        allow_plugin_change: bool,
    ) -> Result<(Self, u64, Vec<Replay>), EngineError> {
        let pipeline = plan.pipeline.clone();
        let settings_dir = settings.dir.display().to_string();
        let (checkpointer, recovery) = Checkpointer::open(settings, &plugins, allow_plugin_change)
            .map_err(|e| checkpoint_error(&pipeline, e))?;
        let sources = plan.sources.len();
        let names: Vec<String> = plan
            .sources
            .iter()
            .map(|(source, _)| source.name.clone())
            .collect();
        if let Some(restored) = &recovery.restored
            && !restored.manifest.source_names.is_empty()
            && restored.manifest.source_names != names
        {
            return Err(checkpoint_error(
                &pipeline,
                CheckpointError::Unusable {
                    dir: settings_dir,
                    message: format!(
                        "the checkpoint of batch {} has the sources {:?}, the pipeline now {names:?}: their positions cannot be carried over; use another checkpoint directory to start over",
                        restored.manifest.batch, restored.manifest.source_names
                    ),
                },
            ));
        }
        let (first_batch, progress) = match &recovery.restored {
            Some(restored) => {
                for stage in &plan.stages {
                    for (index, operator) in stage.operators.iter().enumerate() {
                        if let Some(snapshot) = restored.states.get(&operator_key(&stage.name, index)) {
                            operator.restore(snapshot).map_err(|error| EngineError::Plan {
                                location: format!("pipeline `{pipeline}`"),
                                message: format!("stage `{}`: {error}", stage.name),
                            })?;
                        }
                    }
                }
                let mut progress = restored.manifest.sources.clone();
                progress.resize(sources, SourceProgress::default());
                (restored.manifest.batch + 1, progress)
            }
            None => (0, vec![SourceProgress::default(); sources]),
        };
        let replays = (0..sources)
            .map(|source| Replay {
                progress: progress[source].clone(),
                batches: recovery
                    .logged
                    .iter()
                    .map(|batch| batch.inputs.get(source).cloned().unwrap_or(BatchInput::Untracked))
                    .collect(),
                next_batch: first_batch + recovery.logged.len() as u64,
            })
            .collect();
        let stats = CheckpointStats {
            replayed_batches: recovery.logged.len() as u64,
            resumed_after: recovery.restored.as_ref().map(|r| r.manifest.batch),
            ..CheckpointStats::default()
        };
        let durability = Self {
            checkpointer,
            pipeline,
            plugins,
            sinks: plan.sinks.iter().map(|(sink, _)| sink.name.clone()).collect(),
            source_names: names,
            progress,
            replay: recovery.logged.into(),
            settings_dir,
            last_checkpointed: recovery.restored.as_ref().map(|r| r.manifest.batch),
            stats,
        };
        Ok((durability, first_batch, replays))
    }

    /// The next batch to replay from the batch log, if any is left.
    pub fn next_replayed(&mut self) -> Option<LoggedBatch> {
        self.replay.pop_front()
    }

    /// Records batch `batch` at `time` with `cuts` before it runs: moves each
    /// source's progress on and, for a new batch, writes it to the batch log.
    pub fn record(
        &mut self,
        batch: u64,
        time: i64,
        cuts: &[SourceCut],
        replayed: Option<&LoggedBatch>,
    ) -> Result<(), EngineError> {
        let inputs: Vec<BatchInput> = self
            .progress
            .iter_mut()
            .zip(cuts)
            .map(|(progress, cut)| progress.advance(&cut.positions))
            .collect();
        if let Some(logged) = replayed {
            for (source, (got, want)) in inputs.iter().zip(&logged.inputs).enumerate() {
                if got != want {
                    return Err(EngineError::Checkpoint {
                        pipeline: self.pipeline.clone(),
                        error: CheckpointError::Unusable {
                            dir: self.settings_dir.clone(),
                            message: format!(
                                "source `{}` delivered {got:?} when replaying batch {batch}, but the batch log says {want:?} (was its input changed or removed?)",
                                self.source_names.get(source).map_or("?", String::as_str)
                            ),
                        },
                    });
                }
            }
        }
        if replayed.is_none() {
            self.checkpointer
                .log_batch(&LoggedBatch { batch, time, inputs })
                .map_err(|e| checkpoint_error(&self.pipeline, e))?;
        }
        Ok(())
    }

    /// After batch `batch` (at `time`) completed: checkpoints when one is due
    /// (or when `force`, for the final checkpoint of a graceful stop).
    pub fn after_batch(
        &mut self,
        plan: &Plan,
        batch: u64,
        time: i64,
        force: bool,
    ) -> Result<(), EngineError> {
        // A background write that failed (a full disk, say) stops the
        // pipeline at this batch boundary.
        if let Some(report) = self
            .checkpointer
            .collect_finished()
            .map_err(|e| checkpoint_error(&self.pipeline, e))?
        {
            self.count(report);
        }
        let due = self.checkpointer.batch_done();
        if !(due || force) || self.last_checkpointed == Some(batch) {
            return Ok(());
        }
        if force {
            self.finish()?;
        }
        if self.checkpointer.busy() {
            // The previous checkpoint is still being written: try after the
            // next batch rather than snapshot state for nothing.
            return Ok(());
        }
        let started = Instant::now();
        let mut states = Vec::new();
        for stage in &plan.stages {
            for (index, operator) in stage.operators.iter().enumerate() {
                let snapshot = operator.snapshot().map_err(|error| EngineError::Plan {
                    location: format!("pipeline `{}`", self.pipeline),
                    message: format!("stage `{}`: cannot snapshot its state: {error}", stage.name),
                })?;
                if let Some(snapshot) = snapshot {
                    states.push((operator_key(&stage.name, index), snapshot));
                }
            }
        }
        let manifest = Manifest {
            version: crate::checkpoint::FORMAT,
            pipeline: self.pipeline.clone(),
            plugins: self.plugins.clone(),
            batch,
            time,
            sources: self.progress.clone(),
            source_names: self.source_names.clone(),
            sinks: self.sinks.iter().map(|sink| (sink.clone(), batch)).collect(),
            states: Vec::new(),
        };
        let snapshot_time = started.elapsed();
        let started = self
            .checkpointer
            .start(manifest, states, snapshot_time)
            .map_err(|e| checkpoint_error(&self.pipeline, e))?;
        if started {
            self.last_checkpointed = Some(batch);
        }
        if force {
            self.finish()?;
        }
        Ok(())
    }

    /// Waits for a checkpoint being written; its failure is reported.
    pub fn finish(&mut self) -> Result<(), EngineError> {
        if let Some(report) = self
            .checkpointer
            .collect()
            .map_err(|e| checkpoint_error(&self.pipeline, e))?
        {
            self.count(report);
        }
        Ok(())
    }

    fn count(&mut self, report: CheckpointReport) {
        self.stats.written += 1;
        self.stats.last_bytes = report.bytes;
        self.stats.max_duration = self.stats.max_duration.max(report.duration);
    }

    /// The run's checkpoint figures.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }
}
