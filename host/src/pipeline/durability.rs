//! The runner's side of fault tolerance: restores the checkpointed state into
//! the plan, tells each source what to read again, logs every new batch's
//! input before it runs, and checkpoints at batch boundaries (see
//! [`crate::checkpoint`] for the format and the guarantees).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::plan::Plan;
use crate::batcher::SourceCut;
use crate::checkpoint::incremental::{HashingWriter, Merge};
use crate::checkpoint::{
    CheckpointError, CheckpointReport, CheckpointSettings, Checkpointer, LoggedBatch, LoggedVersion,
    Manifest, NewPart, OperatorState, RestoredState, StatePart, chain,
};
use crate::error::EngineError;
use crate::source::{BatchInput, Replay, SourceProgress};

/// Checkpoints kept in [`Durability::recent_checkpoints`].
pub const RECENT_CHECKPOINTS: usize = 20;

/// A checkpoint written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRecord {
    /// The last batch it holds.
    pub batch: u64,
    /// When its write finished, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What it wrote, in bytes (compaction aside).
    pub bytes: u64,
    /// How long it took (snapshot plus write).
    pub duration: Duration,
}

/// Checkpoint figures of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointStats {
    /// Checkpoints written.
    pub written: u64,
    /// Size of the last one, in bytes (what it wrote, compaction aside).
    pub last_bytes: u64,
    /// The largest one, in bytes.
    pub max_bytes: u64,
    /// Bytes all of them wrote, compaction aside.
    pub total_bytes: u64,
    /// The longest one (snapshot plus write).
    pub max_duration: Duration,
    /// All of them (snapshot plus write).
    pub total_duration: Duration,
    /// The longest snapshot: the pause between two batches.
    pub max_snapshot: Duration,
    /// All the snapshots.
    pub total_snapshot: Duration,
    /// Chains of incremental state compacted into a full part.
    pub compactions: u64,
    /// Bytes the compactions wrote.
    pub compacted_bytes: u64,
    /// Bytes of incremental state the last checkpoint lists (every part of
    /// its chains: what recovery reads).
    pub chain_bytes: u64,
    /// Batches replayed from the batch log at start.
    pub replayed_batches: u64,
    /// The batch the run resumed after, if it resumed from a checkpoint.
    pub resumed_after: Option<u64>,
    /// Time taken to recover at start: read and check the newest
    /// checkpoint (every state file and part) and restore the operators'
    /// state from it.
    pub recovery_time: Duration,
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
    /// Operator key → its chain of incremental parts in the last checkpoint.
    chains: HashMap<String, Vec<StatePart>>,
    stats: CheckpointStats,
    /// The last checkpoints written, oldest first.
    recent: VecDeque<CheckpointRecord>,
    /// The plugin version of every stage's plugin now (`stage/plugin`):
    /// logged with each new batch and written in each checkpoint.
    versions: BTreeMap<String, LoggedVersion>,
    /// The versions the restored checkpoint was taken with (empty: none,
    /// or a checkpoint from before hot-load).
    restored_versions: BTreeMap<String, LoggedVersion>,
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
        let settings_dir = settings.location.to_string();
        let recovery_started = Instant::now();
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
        let mut chains = HashMap::new();
        let (first_batch, progress) = match &recovery.restored {
            Some(restored) => {
                for stage in &plan.stages {
                    for (index, operator) in stage.operators.iter().enumerate() {
                        let key = operator_key(&stage.name, index);
                        let failed = |error: String| EngineError::Plan {
                            location: format!("pipeline `{pipeline}`"),
                            message: format!("stage `{}`: {error}", stage.name),
                        };
                        match restored.states.get(&key) {
                            None => {}
                            Some(RestoredState::Whole(snapshot)) => {
                                operator.restore(snapshot).map_err(|e| failed(e.to_string()))?;
                            }
                            Some(RestoredState::Parts(parts)) => {
                                let incremental = operator.incremental().ok_or_else(|| {
                                    failed(
                                        "the checkpoint holds incremental state, the stage keeps none".into(),
                                    )
                                })?;
                                let readers = checkpointer
                                    .open_chain(parts)
                                    .map_err(|e| checkpoint_error(&pipeline, e))?;
                                let mut merge = Merge::new(readers)
                                    .map_err(|e| failed(format!("cannot restore its state: {e}")))?;
                                incremental
                                    .restore_chain(&mut merge)
                                    .map_err(|e| failed(e.to_string()))?;
                                merge
                                    .finish()
                                    .map_err(|e| failed(format!("cannot restore its state: {e}")))?;
                                chains.insert(key, parts.clone());
                            }
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
            recovery_time: recovery_started.elapsed(),
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
            chains,
            stats,
            recent: VecDeque::new(),
            versions: BTreeMap::new(),
            restored_versions: recovery
                .restored
                .as_ref()
                .map(|r| r.manifest.stage_plugins.clone())
                .unwrap_or_default(),
        };
        Ok((durability, first_batch, replays))
    }

    /// The plugin versions the restored checkpoint was taken with, by
    /// `stage/plugin` (empty when there is none, or it predates hot-load).
    pub fn restored_versions(&self) -> &BTreeMap<String, LoggedVersion> {
        &self.restored_versions
    }

    /// Sets the plugin versions logged with each new batch and written in
    /// each checkpoint from now on.
    pub fn set_versions(&mut self, versions: BTreeMap<String, LoggedVersion>) {
        self.versions = versions;
    }

    /// Keeps a plugin component in the checkpoint directory (see
    /// [`Checkpointer::store_plugin`]).
    pub fn store_plugin(&self, sha256: &str, bytes: &[u8]) -> Result<(), EngineError> {
        self.checkpointer
            .store_plugin(sha256, bytes)
            .map_err(|e| checkpoint_error(&self.pipeline, e))
    }

    /// A plugin component kept in the checkpoint directory.
    pub fn load_plugin(&self, sha256: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.checkpointer
            .load_plugin(sha256)
            .map_err(|e| checkpoint_error(&self.pipeline, e))
    }

    /// Removes the kept components that neither the versions now, nor the
    /// restored checkpoint's, nor a batch left to replay, nor `also` (the
    /// pipeline file's, swapped in after the replay) name.
    pub fn prune_plugins(&self, also: &[String]) -> Result<(), EngineError> {
        let mut keep: std::collections::BTreeSet<String> = also.iter().cloned().collect();
        // A version, the one it falls back on, and its canary, each with theirs.
        fn add(keep: &mut std::collections::BTreeSet<String>, version: &LoggedVersion) {
            keep.insert(version.sha256.clone());
            if let Some(fallback) = &version.fallback {
                add(keep, fallback);
            }
            if let Some(canary) = &version.canary {
                add(keep, &canary.version);
            }
        }
        let mut add = |version: &LoggedVersion| add(&mut keep, version);
        self.versions.values().for_each(&mut add);
        self.restored_versions.values().for_each(&mut add);
        self.replay
            .iter()
            .flat_map(|b| b.plugins.values())
            .for_each(&mut add);
        self.checkpointer
            .prune_plugins(&keep)
            .map_err(|e| checkpoint_error(&self.pipeline, e))
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
        let idle = cuts
            .iter()
            .all(|cut| cut.chunks.is_empty() && cut.positions.is_empty());
        if !idle {
            self.checkpointer.took_input();
        }
        if replayed.is_none() {
            let entry = LoggedBatch {
                batch,
                time,
                inputs,
                plugins: self.versions.clone(),
            };
            self.checkpointer
                .log_batch(&entry, idle)
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
                let failed = |error: String| EngineError::Plan {
                    location: format!("pipeline `{}`", self.pipeline),
                    message: format!("stage `{}`: cannot snapshot its state: {error}", stage.name),
                };
                let key = operator_key(&stage.name, index);
                if let Some(incremental) = operator.incremental() {
                    let file = chain::part_name(batch, states.len());
                    let blob = self
                        .checkpointer
                        .create_part(&file)
                        .map_err(|e| checkpoint_error(&self.pipeline, e))?;
                    let mut out = HashingWriter::new(blob);
                    let summary = incremental
                        .write_part(&mut out)
                        .map_err(|e| failed(e.to_string()))?;
                    let (blob, bytes, sha256) = out.finish();
                    let base = self.chains.get(&key).cloned().unwrap_or_default();
                    if !summary.is_full() && base.is_empty() {
                        return Err(failed(
                            "its state wrote changes, but the last checkpoint holds none to apply them to"
                                .into(),
                        ));
                    }
                    let part = NewPart {
                        part: StatePart {
                            file,
                            bytes,
                            sha256,
                            full: summary.is_full(),
                        },
                        blob,
                        base,
                    };
                    states.push((key, OperatorState::Part(part)));
                } else if let Some(snapshot) = operator.snapshot().map_err(|e| failed(e.to_string()))? {
                    states.push((key, OperatorState::Whole(snapshot)));
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
            stage_plugins: self.versions.clone(),
        };
        let snapshot_time = started.elapsed();
        let started = self
            .checkpointer
            .start(manifest, states, snapshot_time)
            .map_err(|e| checkpoint_error(&self.pipeline, e))?;
        // Checked above: no checkpoint is being written, so none refuses
        // this one (whose incremental parts counted changes from now).
        debug_assert!(started);
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
        if self.recent.len() == RECENT_CHECKPOINTS {
            self.recent.pop_front();
        }
        self.recent.push_back(CheckpointRecord {
            batch: report.batch,
            time_ms: crate::source::now_ms(),
            bytes: report.bytes,
            duration: report.duration,
        });
        let stats = &mut self.stats;
        stats.written += 1;
        stats.last_bytes = report.bytes;
        stats.max_bytes = stats.max_bytes.max(report.bytes);
        stats.total_bytes += report.bytes;
        stats.max_duration = stats.max_duration.max(report.duration);
        stats.total_duration += report.duration;
        stats.max_snapshot = stats.max_snapshot.max(report.snapshot);
        stats.total_snapshot += report.snapshot;
        stats.compactions += report.compactions;
        stats.compacted_bytes += report.compacted_bytes;
        stats.chain_bytes = report
            .chains
            .iter()
            .flat_map(|(_, chain)| chain)
            .map(|part| part.bytes)
            .sum();
        self.chains = report.chains.into_iter().collect();
    }

    /// The run's checkpoint figures.
    pub fn stats(&self) -> CheckpointStats {
        self.stats
    }

    /// The last [`RECENT_CHECKPOINTS`] checkpoints written, oldest first.
    pub fn recent_checkpoints(&self) -> Vec<CheckpointRecord> {
        self.recent.iter().copied().collect()
    }
}
