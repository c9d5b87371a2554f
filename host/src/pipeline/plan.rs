//! The physical plan: a validated pipeline spec turned into streams and
//! operators, with every plugin name resolved through the registry and
//! every plugin checked against the operator that uses it, and each stage's
//! [`schedule`] (which operators run fused) worked out once.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::PluginRegistry;
use super::stage_ops::StageBuilder;
use crate::config::{DEAD_LETTERS, FailurePolicy, PipelineSpec, SinkSpec, SourceSpec};
use crate::error::EngineError;
use crate::operator::guard::{Guarded, StageMetrics, StagePosition};
use crate::operator::{Operator, OperatorError};

pub mod schedule;
#[cfg(test)]
pub(super) mod tests;

pub use schedule::{Segment, StageSchedule};

/// Index of a stream in [`Plan::streams`].
pub type StreamId = usize;

/// A stage ready to run: its inputs, its output stream and its operators,
/// applied in order (a reduce-by-key is a combine and a merge), each under
/// the stage's failure policy.
#[derive(Debug)]
pub struct StagePlan {
    /// What happens when a call fails.
    pub policy: FailurePolicy,
    /// Failure counters.
    pub metrics: Arc<StageMetrics>,
    /// The stage's name (= its output stream's name).
    pub name: String,
    /// The operator and plugin, for messages: `flat-map split-words`.
    pub describe: String,
    /// Input streams (several: their partitions are concatenated).
    pub inputs: Vec<StreamId>,
    /// The output stream.
    pub output: StreamId,
    /// Operators applied in order.
    pub operators: Vec<Arc<dyn Operator>>,
    /// How the executor runs the operators: which run fused, chunk by
    /// chunk, and which on their own.
    pub schedule: StageSchedule,
}

impl StagePlan {
    /// Measures the stage's state (between batches: its partitions are then
    /// free) for [`StagePlan::snapshot`].
    pub fn refresh_state(&self) {
        let mut state = crate::state::StateSize::default();
        for operator in &self.operators {
            state += operator.state_size();
        }
        *self.metrics.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// The stage's live figures (its state as of the last
    /// [`StagePlan::refresh_state`]).
    pub fn snapshot(&self) -> super::live::StageMetricsSnapshot {
        let metrics = &self.metrics;
        let read =
            |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
        let state = *metrics.state.lock().unwrap_or_else(|e| e.into_inner());
        super::live::StageMetricsSnapshot {
            stage: self.name.clone(),
            op: self.describe.clone(),
            records_in: read(&metrics.records_in),
            records_out: read(&metrics.records_out),
            retries: read(&metrics.retries),
            failed_batches: read(&metrics.failed_batches),
            skipped_batches: read(&metrics.skipped_batches),
            skipped_records: read(&metrics.skipped_records),
            dead_lettered: read(&metrics.dead_lettered),
            late_records: read(&metrics.late_records),
            shuffled_records: read(&metrics.shuffled_records),
            shuffled_bytes: read(&metrics.shuffled_bytes),
            traps: super::live::TrapCounts::read(&metrics.traps),
            instances: read(&metrics.usage.instances),
            wasm_memory_bytes: read(&metrics.usage.memory_bytes),
            instances_replaced: read(&metrics.usage.instances_replaced),
            fuel_used: read(&metrics.usage.fuel_used),
            log_messages_dropped: metrics.usage.logs.dropped(),
            state,
            busy: std::time::Duration::from_nanos(read(&metrics.busy_nanos)),
            latest_dead_letters: metrics
                .latest_dead_letters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect(),
        }
    }
}

/// A runnable pipeline.
#[derive(Debug)]
pub struct Plan {
    /// The pipeline's name.
    pub pipeline: String,
    /// Partitions each source's batch is split into.
    pub partitions: usize,
    /// Stream names by id.
    pub streams: Vec<String>,
    /// Sources and the streams they feed.
    pub sources: Vec<(SourceSpec, StreamId)>,
    /// Stages in execution order.
    pub stages: Vec<StagePlan>,
    /// Sinks and the streams they read.
    pub sinks: Vec<(SinkSpec, StreamId)>,
    /// Number of readers (stages and sinks) of each stream.
    pub readers: Vec<usize>,
    /// The dead-letter stream, when a sink reads it.
    pub dead_letters: Option<StreamId>,
    /// Per stream: the window length in milliseconds when a reducing window
    /// stage produces it (its records carry their window's last millisecond).
    pub window_lengths: Vec<Option<i64>>,
    /// Set when the run ends: every worker then drops the plan's plugin
    /// instances (see [`Plan::retire`]).
    retired: Arc<std::sync::atomic::AtomicBool>,
}

impl Plan {
    /// Builds the plan of `spec`, resolving plugins through `registry`.
    /// `file` names the pipeline file in errors; stateful stages spill under
    /// `state_dir` (a directory of this pipeline's own).
    pub fn build(
        spec: &PipelineSpec,
        registry: &PluginRegistry,
        file: &str,
        state_dir: &std::path::Path,
    ) -> Result<Self, EngineError> {
        let mut ids: HashMap<&str, StreamId> = HashMap::new();
        let mut streams = Vec::new();
        let reads_dead_letters = spec.sinks.iter().any(|sink| sink.input == DEAD_LETTERS);
        for name in spec
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(spec.stages.iter().map(|s| s.name.as_str()))
            .chain(reads_dead_letters.then_some(DEAD_LETTERS))
        {
            ids.insert(name, streams.len());
            streams.push(name.to_owned());
        }
        let retired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut stages = Vec::new();
        for stage in &spec.stages {
            let metrics = Arc::new(StageMetrics::default());
            let (describe, operators) = StageBuilder {
                registry,
                spec,
                stage,
                file,
                metrics: &metrics,
                state_dir,
                retired: &retired,
            }
            .build()?;
            let count = operators.len();
            let operators: Vec<Arc<dyn Operator>> = operators
                .into_iter()
                .enumerate()
                .map(|(index, operator)| -> Arc<dyn Operator> {
                    Arc::new(Guarded::new(
                        operator,
                        stage.policy.clone(),
                        stage.name.clone(),
                        metrics.clone(),
                        StagePosition {
                            first: index == 0,
                            last: index + 1 == count,
                        },
                    ))
                })
                .collect();
            stages.push(StagePlan {
                policy: stage.policy.clone(),
                metrics,
                name: stage.name.clone(),
                describe,
                inputs: stage.inputs.iter().map(|input| ids[input.as_str()]).collect(),
                output: ids[stage.name.as_str()],
                operators,
                schedule: StageSchedule::default(),
            });
        }
        let sources = spec
            .sources
            .iter()
            .map(|source| (source.clone(), ids[source.name.as_str()]))
            .collect();
        let sinks: Vec<(SinkSpec, StreamId)> = spec
            .sinks
            .iter()
            .map(|sink| (sink.clone(), ids[sink.input.as_str()]))
            .collect();
        let mut readers = vec![0; streams.len()];
        for stage in &stages {
            for &input in &stage.inputs {
                readers[input] += 1;
            }
        }
        for (_, input) in &sinks {
            readers[*input] += 1;
        }
        let schedules = schedule::schedule(&stages, &readers);
        for (stage, schedule) in stages.iter_mut().zip(schedules) {
            stage.schedule = schedule;
        }
        let mut window_lengths = vec![None; streams.len()];
        for stage in &spec.stages {
            if let crate::config::OperatorSpec::Window(window) = &stage.op
                && !matches!(window.op, crate::config::WindowOp::Raw)
            {
                window_lengths[ids[stage.name.as_str()]] = Some(window.length.as_millis() as i64);
            }
        }
        Ok(Self {
            retired,
            window_lengths,
            pipeline: spec.name.clone(),
            partitions: spec.partitions,
            dead_letters: reads_dead_letters.then(|| ids[DEAD_LETTERS]),
            streams,
            sources,
            stages,
            sinks,
            readers,
        })
    }

    /// Marks the plan's run as over: workers drop its plugin instances at
    /// their next sweep.
    pub fn retire(&self) {
        self.retired.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Runs every operator's start-up check (plugins instantiate and accept
    /// their configuration).
    pub fn check(&self) -> Result<(), EngineError> {
        for stage in &self.stages {
            for operator in &stage.operators {
                operator
                    .check()
                    .map_err(|error: OperatorError| EngineError::Plan {
                        location: format!("pipeline `{}`", self.pipeline),
                        message: format!("stage `{}` ({}): {error}", stage.name, stage.describe),
                    })?;
            }
        }
        Ok(())
    }
}
