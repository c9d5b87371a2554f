//! What a running pipeline publishes while it runs: its status, live
//! metrics and events. The driver writes them at batch boundaries; any
//! number of readers (a handle, an API, a UI) read them at any time.
//!
//! Delays follow Spark's streaming UI: a batch's **scheduling delay** is the
//! time from when it was due (its batch boundary) to when its processing
//! started, its **processing time** is how long its stages and sinks took,
//! and its **total delay** is the two together.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::broadcast;

use super::durability::{CheckpointRecord, CheckpointStats};
use super::plan::Plan;
use crate::runtime::TrapKind;
use crate::state::StateSize;

/// Batches kept for the percentiles of [`PipelineMetrics`].
pub const RECENT_BATCHES: usize = 1_000;

/// Events buffered per subscriber before the slowest one starts missing some.
const EVENT_BUFFER: usize = 1_024;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PipelineState {
    /// Restoring state, opening sinks, starting receivers.
    Starting,
    /// Cutting and running batches.
    Running,
    /// No batches are cut; receivers are held back by their bounded queues.
    Paused,
    /// Draining what the receivers queued before it stops.
    Stopping,
    /// Ended without error.
    Stopped,
    /// Ended with an error.
    Failed,
}

impl PipelineState {
    /// True once the pipeline has ended (stopped or failed).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Stopped | Self::Failed)
    }
}

/// A batch's id and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchMark {
    /// The batch id (consecutive from 0 over the pipeline's life, restarts included).
    pub id: u64,
    /// The batch time, in milliseconds since the Unix epoch.
    pub time_ms: i64,
}

/// The plugin a stage runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagePlugin {
    /// The stage.
    pub stage: String,
    /// The plugin's name in the pipeline file.
    pub plugin: String,
    /// Hex SHA-256 of its component (the version running now, after any hot-load).
    pub sha256: String,
    /// The version the plugin declares (empty for a native function).
    pub version: String,
    /// Batches left of its probation after a hot-load (0: none).
    pub probation_left: u64,
    /// The version of the format of the state it keeps (0 for a native function).
    pub state_version: u32,
    /// The `weir:plugin` contract it was built against (empty for a native function).
    pub contract: String,
}

/// A pipeline's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineStatus {
    /// The state.
    pub state: PipelineState,
    /// Its batch interval.
    pub batch_interval: Duration,
    /// Why it is paused (a user's request, or a quarantined stage).
    pub paused_because: Option<String>,
    /// The error it failed with.
    pub error: Option<String>,
    /// The last batch it completed.
    pub last_batch: Option<BatchMark>,
    /// The plugin of every stage that runs one.
    pub plugins: Vec<StagePlugin>,
    /// The candidates running in shadow, and how they compare so far.
    pub shadows: Vec<super::swap::ShadowReport>,
    /// The canaries, and how their calls compare with the current versions' so far.
    pub canaries: Vec<super::swap::CanaryReport>,
}

/// Something that happened to a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum PipelineEvent {
    /// A batch went through every stage and sink.
    BatchCompleted(BatchReport),
    /// A stage failed a batch for good (its policy stopped or quarantined it).
    StageFailed {
        /// The stage.
        stage: String,
        /// What failed.
        error: String,
    },
    /// The pipeline's state changed.
    StatusChanged {
        /// The new state.
        state: PipelineState,
    },
    /// A stage's plugin was hot-loaded.
    PluginSwapped(super::swap::SwapReport),
    /// A stage's plugin returned to its previous version.
    PluginRolledBack {
        /// The stage.
        stage: String,
        /// The plugin's name in the pipeline file.
        plugin: String,
        /// Hex SHA-256 of the version given up.
        from: String,
        /// Hex SHA-256 of the version running again.
        to: String,
        /// Why.
        reason: String,
    },
}

/// One completed batch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BatchReport {
    /// Its id and time.
    pub batch: BatchMark,
    /// Records received from all sources.
    pub records_in: u64,
    /// Records handed to sinks.
    pub records_out: u64,
    /// From when it was due to when its processing started.
    pub scheduling_delay: Duration,
    /// Its stages and sinks.
    pub processing_time: Duration,
    /// Scheduling delay plus processing time.
    pub total_delay: Duration,
}

/// One of the recent batches, with what each stage did in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchDetail {
    /// The batch's totals and delays.
    #[serde(flatten)]
    pub report: BatchReport,
    /// Records per second received for it (over the time since the batch
    /// before was cut), as Spark's streaming UI shows the input rate.
    pub input_rate: f64,
    /// Whether its processing took longer than the batch interval.
    pub slow: bool,
    /// Per stage, in execution order.
    pub stages: Vec<StageBatch>,
}

/// What one stage did in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageBatch {
    /// The stage.
    pub stage: String,
    /// Records into it.
    pub records_in: u64,
    /// Records out of it.
    pub records_out: u64,
    /// Time its operators took, summed over partitions (worker time; the
    /// waits between retries included).
    pub busy: Duration,
    /// Calls retried.
    pub retries: u64,
    /// Partition batches that failed (after retries).
    pub failed_batches: u64,
    /// Records dropped by `skip-batch`.
    pub skipped_records: u64,
    /// Records sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Traps, all kinds together.
    pub traps: u64,
}

impl StageBatch {
    /// What the stage did between two snapshots of its counters.
    fn between(before: Option<&StageMetricsSnapshot>, after: &StageMetricsSnapshot) -> Self {
        let zero = StageMetricsSnapshot::default();
        let before = before.unwrap_or(&zero);
        Self {
            stage: after.stage.clone(),
            records_in: after.records_in.saturating_sub(before.records_in),
            records_out: after.records_out.saturating_sub(before.records_out),
            busy: after.busy.saturating_sub(before.busy),
            retries: after.retries.saturating_sub(before.retries),
            failed_batches: after.failed_batches.saturating_sub(before.failed_batches),
            skipped_records: after.skipped_records.saturating_sub(before.skipped_records),
            dead_lettered: after.dead_lettered.saturating_sub(before.dead_lettered),
            traps: after.traps.total().saturating_sub(before.traps.total()),
        }
    }
}

/// Percentiles of a duration over the recent batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
}

impl Percentiles {
    fn of(mut values: Vec<Duration>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// One source's live figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceMetrics {
    /// The source's stream name.
    pub name: String,
    /// Records received so far.
    pub records: u64,
    /// Records per second in the last batch (received over the time since
    /// the batch before).
    pub rate: f64,
    /// Records per second its receivers are held to now: its `max-rate`,
    /// or the rate backpressure set (bounded by `max-rate`); `None`:
    /// unlimited.
    pub rate_limit: Option<f64>,
    /// Records its partitions hold that it has not read yet (Kafka's
    /// consumer lag), summed; `None` for sources without partitions, and
    /// before the first report.
    pub lag: Option<u64>,
    /// Per partition, as last reported (empty for sources without
    /// partitions).
    pub partitions: Vec<crate::source::lag::PartitionLag>,
}

/// Trap counts by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrapCounts {
    /// Deadlines exceeded.
    pub deadline: u64,
    /// Fuel budgets exhausted.
    pub fuel: u64,
    /// Memory or table limits hit.
    pub memory: u64,
    /// Stack overflows.
    pub stack_overflow: u64,
    /// Panics and `unreachable`.
    pub panic: u64,
    /// Any other trap.
    pub other: u64,
}

impl TrapCounts {
    /// Traps of every kind together.
    pub fn total(&self) -> u64 {
        self.deadline + self.fuel + self.memory + self.stack_overflow + self.panic + self.other
    }

    /// Counts of the kinds in `counters`, indexed by [`trap_index`].
    pub fn read(counters: &[AtomicU64; 6]) -> Self {
        let read = |kind: TrapKind| counters[trap_index(kind)].load(Ordering::Relaxed);
        Self {
            deadline: read(TrapKind::Deadline),
            fuel: read(TrapKind::Fuel),
            memory: read(TrapKind::Memory),
            stack_overflow: read(TrapKind::StackOverflow),
            panic: read(TrapKind::Panic),
            other: read(TrapKind::Other),
        }
    }
}

/// The slot of `kind` in a stage's trap counters.
pub fn trap_index(kind: TrapKind) -> usize {
    match kind {
        TrapKind::Deadline => 0,
        TrapKind::Fuel => 1,
        TrapKind::Memory => 2,
        TrapKind::StackOverflow => 3,
        TrapKind::Panic => 4,
        TrapKind::Other => 5,
    }
}

/// One stage's live figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageMetricsSnapshot {
    /// The stage.
    pub stage: String,
    /// Its operator and plugin, e.g. `flat-map split-words`.
    pub op: String,
    /// Records into the stage.
    pub records_in: u64,
    /// Records out of the stage.
    pub records_out: u64,
    /// Calls retried.
    pub retries: u64,
    /// Partition batches that failed (after retries).
    pub failed_batches: u64,
    /// Partition batches dropped by `skip-batch`.
    pub skipped_batches: u64,
    /// Records in those batches.
    pub skipped_records: u64,
    /// Records sent to the dead-letter stream.
    pub dead_lettered: u64,
    /// Records behind an event-time watermark.
    pub late_records: u64,
    /// Records shuffled by key into the stage (a reduce-by-key's partial
    /// results, a join's inputs).
    pub shuffled_records: u64,
    /// Bytes of those records.
    pub shuffled_bytes: u64,
    /// Traps by kind.
    pub traps: TrapCounts,
    /// Plugin instances alive in the worker pool.
    pub instances: u64,
    /// Linear memory of those instances, in bytes.
    pub wasm_memory_bytes: u64,
    /// Instances replaced between calls because their memory had outgrown
    /// them (a plugin whose heap grows from call to call).
    pub instances_replaced: u64,
    /// Fuel burnt by its calls (stages with a fuel budget).
    pub fuel_used: u64,
    /// Log messages of its plugin dropped by the stage's log budget
    /// (`log-messages-per-second`, `log-bytes-per-second`).
    pub log_messages_dropped: u64,
    /// Keyed state it holds.
    pub state: StateSize,
    /// Time its operators took, summed over partitions (worker time; the
    /// waits between retries included).
    pub busy: Duration,
    /// Its last dead-letter entries (JSON), newest last.
    pub latest_dead_letters: Vec<String>,
}

/// A pipeline's live figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineMetrics {
    /// Batches completed.
    pub batches: u64,
    /// Records received from all sources.
    pub records_in: u64,
    /// Records handed to sinks.
    pub records_out: u64,
    /// Batches whose processing took longer than the batch interval.
    pub slow_batches: u64,
    /// Processing time over the recent batches.
    pub processing_time: Percentiles,
    /// Scheduling delay over the recent batches.
    pub scheduling_delay: Percentiles,
    /// Total delay over the recent batches.
    pub total_delay: Percentiles,
    /// Per source.
    pub sources: Vec<SourceMetrics>,
    /// Chunks waiting in the sources' queues.
    pub queued_chunks: u64,
    /// Per stage.
    pub stages: Vec<StageMetricsSnapshot>,
    /// Checkpoints.
    pub checkpoints: CheckpointStats,
}

#[derive(Debug)]
struct StatusCell {
    state: PipelineState,
    paused_because: Option<String>,
    error: Option<String>,
    last_batch: Option<BatchMark>,
}

#[derive(Debug, Default)]
struct Recent {
    batches: VecDeque<BatchDetail>,
    /// The input rate of the batch being run.
    input_rate: f64,
    /// The stages' counters after the last batch.
    stage_totals: Vec<StageMetricsSnapshot>,
    source_rates: Vec<f64>,
    rate_limits: Vec<Option<f64>>,
    checkpoints: CheckpointStats,
    checkpoint_history: Vec<CheckpointRecord>,
}

/// The shared, live side of a running pipeline.
#[derive(Debug)]
pub struct Live {
    plan: Arc<Plan>,
    batch_interval: Duration,
    plugins: Vec<StagePlugin>,
    /// The plan's plugin slots, for the versions running now.
    slots: Vec<Arc<crate::operator::BindingSlot>>,
    /// Each stage plugin's versions (`stage/plugin`), oldest first.
    history: Mutex<std::collections::BTreeMap<String, VecDeque<super::swap::VersionRecord>>>,
    status: Mutex<StatusCell>,
    recent: Mutex<Recent>,
    batches: AtomicU64,
    records_in: AtomicU64,
    records_out: AtomicU64,
    slow_batches: AtomicU64,
    source_records: Vec<AtomicU64>,
    /// Per source: where it publishes its partitions' lag.
    lag_boards: Vec<crate::source::lag::LagBoard>,
    queued_chunks: AtomicUsize,
    events: broadcast::Sender<PipelineEvent>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Live {
    /// The live side of a pipeline planned as `plan`, cutting a batch
    /// every `batch_interval`, whose stages run `plugins`.
    pub fn new(plan: Arc<Plan>, batch_interval: Duration, plugins: Vec<StagePlugin>) -> Self {
        let sources = plan.sources.len();
        Self {
            batch_interval,
            plugins,
            slots: super::swap::plan_slots(&plan),
            history: Mutex::default(),
            status: Mutex::new(StatusCell {
                state: PipelineState::Starting,
                paused_because: None,
                error: None,
                last_batch: None,
            }),
            recent: Mutex::new(Recent {
                source_rates: vec![0.0; sources],
                rate_limits: vec![None; sources],
                ..Recent::default()
            }),
            batches: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            slow_batches: AtomicU64::new(0),
            source_records: (0..sources).map(|_| AtomicU64::new(0)).collect(),
            lag_boards: vec![crate::source::lag::LagBoard::default(); sources],
            queued_chunks: AtomicUsize::new(0),
            events: broadcast::channel(EVENT_BUFFER).0,
            plan,
        }
    }

    /// The status now.
    pub fn status(&self) -> PipelineStatus {
        let status = lock(&self.status);
        PipelineStatus {
            state: status.state,
            batch_interval: self.batch_interval,
            paused_because: status.paused_because.clone(),
            error: status.error.clone(),
            last_batch: status.last_batch,
            plugins: self
                .plugins
                .iter()
                .map(|plugin| {
                    let slot = self
                        .slots
                        .iter()
                        .find(|slot| slot.stage() == plugin.stage && slot.name() == plugin.plugin);
                    match slot {
                        Some(slot) => {
                            let current = slot.current();
                            StagePlugin {
                                sha256: current.plugin.content_hash().to_owned(),
                                version: current.plugin.info().version.clone(),
                                probation_left: slot.probation_left(),
                                state_version: current.plugin.info().state_version,
                                contract: current.plugin.info().contract.to_owned(),
                                ..plugin.clone()
                            }
                        }
                        None => plugin.clone(),
                    }
                })
                .collect(),
            shadows: self
                .slots
                .iter()
                .filter_map(|slot| {
                    let (candidate, stats) = slot.shadow_stats()?;
                    Some(super::swap::ShadowReport {
                        stage: slot.stage().to_owned(),
                        plugin: slot.name().to_owned(),
                        candidate,
                        stats,
                    })
                })
                .collect(),
            canaries: self
                .slots
                .iter()
                .filter_map(|slot| {
                    let (canary, stats) = slot.canary_stats()?;
                    Some(super::swap::CanaryReport {
                        stage: slot.stage().to_owned(),
                        plugin: slot.name().to_owned(),
                        candidate: canary.plugin.content_hash().to_owned(),
                        stats,
                    })
                })
                .collect(),
        }
    }

    /// Each stage plugin's last versions (`stage/plugin` → oldest first),
    /// refused requests included.
    pub fn plugin_history(&self) -> std::collections::BTreeMap<String, Vec<super::swap::VersionRecord>> {
        lock(&self.history)
            .iter()
            .map(|(key, records)| (key.clone(), records.iter().cloned().collect()))
            .collect()
    }

    /// Starts the histories with `history` (earlier runs' versions).
    pub(crate) fn seed_history(
        &self,
        history: std::collections::BTreeMap<String, Vec<super::swap::VersionRecord>>,
    ) {
        *lock(&self.history) = history
            .into_iter()
            .map(|(key, records)| (key, records.into()))
            .collect();
    }

    /// Records that `key` starts the run on `record`'s version: the last
    /// version of the history when it is the same (a probation does not
    /// outlast a run: it is running), a new entry otherwise.
    pub(crate) fn start_version(&self, key: &str, record: super::swap::VersionRecord) {
        {
            let mut history = lock(&self.history);
            if let Some(last) = history.get_mut(key).and_then(|records| {
                records
                    .iter_mut()
                    .rev()
                    .find(|r| !matches!(r.outcome, super::swap::VersionOutcome::Refused { .. }))
            }) && last.sha256 == record.sha256
                && last.config == record.config
            {
                last.outcome = super::swap::VersionOutcome::Running;
                return;
            }
        }
        self.record_version(key, record);
    }

    /// Adds `record` to the history of `key` (`stage/plugin`), keeping the
    /// last [`super::swap::HISTORY`].
    pub(crate) fn record_version(&self, key: &str, record: super::swap::VersionRecord) {
        let mut history = lock(&self.history);
        let records = history.entry(key.to_owned()).or_default();
        records.push_back(record);
        while records.len() > super::swap::HISTORY {
            records.pop_front();
        }
    }

    /// Sets how the latest record of version `sha256` in `key`'s history stands.
    pub(crate) fn set_outcome(&self, key: &str, sha256: &str, outcome: super::swap::VersionOutcome) {
        let mut history = lock(&self.history);
        let refused = |record: &super::swap::VersionRecord| {
            matches!(record.outcome, super::swap::VersionOutcome::Refused { .. })
        };
        if let Some(record) = history.get_mut(key).and_then(|records| {
            records
                .iter_mut()
                .rev()
                .find(|r| r.sha256 == sha256 && !refused(r))
        }) {
            record.outcome = outcome;
        }
    }

    /// Whether `stage` runs its plugins under a fuel budget; `None` when it
    /// runs no Wasm plugin.
    pub fn stage_metered(&self, stage: &str) -> Option<bool> {
        let mut slots = self.slots.iter().filter(|slot| slot.stage() == stage).peekable();
        slots.peek()?;
        Some(slots.any(|slot| slot.metered()))
    }

    /// Publishes `event` to the subscribers.
    pub(crate) fn publish(&self, event: PipelineEvent) {
        self.emit(event);
    }

    /// The state now.
    pub fn state(&self) -> PipelineState {
        lock(&self.status).state
    }

    /// A receiver of the events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PipelineEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: PipelineEvent) {
        // No subscriber is not an error.
        let _ = self.events.send(event);
    }

    /// Moves to `state` (`paused_because` says why when pausing).
    pub(crate) fn set_state(&self, state: PipelineState, paused_because: Option<String>) {
        {
            let mut status = lock(&self.status);
            if status.state == state && status.paused_because == paused_because {
                return;
            }
            status.state = state;
            status.paused_because = paused_because;
        }
        self.emit(PipelineEvent::StatusChanged { state });
    }

    /// Ends the pipeline: stopped, or failed with `error`.
    pub(crate) fn finish(&self, error: Option<String>) {
        let state = if error.is_some() {
            PipelineState::Failed
        } else {
            PipelineState::Stopped
        };
        {
            // One update: no reader sees the error with a running state.
            let mut status = lock(&self.status);
            status.error = error;
            status.state = state;
            status.paused_because = None;
        }
        self.emit(PipelineEvent::StatusChanged { state });
    }

    /// Reports a stage that failed a batch for good.
    pub(crate) fn stage_failed(&self, stage: &str, error: String) {
        self.emit(PipelineEvent::StageFailed {
            stage: stage.to_owned(),
            error,
        });
    }

    /// Counts what each source delivered for a batch, `since_last` after the
    /// batch before.
    pub(crate) fn received(&self, per_source: &[usize], since_last: Duration) {
        let seconds = since_last.as_secs_f64().max(1e-3);
        let mut recent = lock(&self.recent);
        recent.input_rate = per_source.iter().sum::<usize>() as f64 / seconds;
        for ((counter, rate), &records) in self
            .source_records
            .iter()
            .zip(recent.source_rates.iter_mut())
            .zip(per_source)
        {
            counter.fetch_add(records as u64, Ordering::Relaxed);
            *rate = records as f64 / seconds;
        }
    }

    /// Records a completed batch (`slow`: it took longer than the interval).
    pub(crate) fn batch_completed(&self, report: BatchReport, slow: bool) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.records_in.fetch_add(report.records_in, Ordering::Relaxed);
        self.records_out.fetch_add(report.records_out, Ordering::Relaxed);
        if slow {
            self.slow_batches.fetch_add(1, Ordering::Relaxed);
        }
        let totals: Vec<StageMetricsSnapshot> =
            self.plan.stages.iter().map(|stage| stage.snapshot()).collect();
        {
            let mut recent = lock(&self.recent);
            let stages = totals
                .iter()
                .enumerate()
                .map(|(i, after)| StageBatch::between(recent.stage_totals.get(i), after))
                .collect();
            let detail = BatchDetail {
                report,
                input_rate: recent.input_rate,
                slow,
                stages,
            };
            if recent.batches.len() == RECENT_BATCHES {
                recent.batches.pop_front();
            }
            recent.batches.push_back(detail);
            recent.stage_totals = totals;
        }
        lock(&self.status).last_batch = Some(report.batch);
        self.emit(PipelineEvent::BatchCompleted(report));
    }

    /// Sets the number of chunks waiting in the sources' queues.
    pub(crate) fn set_queued_chunks(&self, chunks: usize) {
        self.queued_chunks.store(chunks, Ordering::Relaxed);
    }

    /// Sets the rate each source is held to (`None`: unlimited).
    pub(crate) fn set_rate_limits(&self, limits: Vec<Option<f64>>) {
        lock(&self.recent).rate_limits = limits;
    }

    /// Sets the checkpoint figures and the last checkpoints written.
    pub(crate) fn set_checkpoints(&self, durability: &super::durability::Durability) {
        let mut recent = lock(&self.recent);
        recent.checkpoints = durability.stats();
        recent.checkpoint_history = durability.recent_checkpoints();
    }

    /// The last `limit` of the recent batches (at most [`RECENT_BATCHES`]), oldest first.
    pub fn recent_batches(&self, limit: usize) -> Vec<BatchDetail> {
        let recent = lock(&self.recent);
        let skip = recent.batches.len().saturating_sub(limit);
        recent.batches.iter().skip(skip).cloned().collect()
    }

    /// Recent batch `id`, if it is still kept.
    pub fn batch(&self, id: u64) -> Option<BatchDetail> {
        let recent = lock(&self.recent);
        // Ids are consecutive within a run: look where it should be first.
        let first = recent.batches.front()?.report.batch.id;
        let at = usize::try_from(id.checked_sub(first)?).ok()?;
        match recent.batches.get(at) {
            Some(detail) if detail.report.batch.id == id => Some(detail.clone()),
            _ => recent.batches.iter().find(|b| b.report.batch.id == id).cloned(),
        }
    }

    /// The last checkpoints written this run (up to
    /// [`super::durability::RECENT_CHECKPOINTS`]), oldest first.
    pub fn checkpoint_history(&self) -> Vec<CheckpointRecord> {
        lock(&self.recent).checkpoint_history.clone()
    }

    /// Where source `index` publishes its partitions' lag.
    pub(crate) fn lag_board(&self, index: usize) -> crate::source::lag::LagBoard {
        self.lag_boards[index].clone()
    }

    /// The live figures now.
    pub fn metrics(&self) -> PipelineMetrics {
        let (processing, scheduling, total, rates, limits, checkpoints) = {
            let recent = lock(&self.recent);
            let of = |f: fn(&BatchReport) -> Duration| {
                recent
                    .batches
                    .iter()
                    .map(|detail| f(&detail.report))
                    .collect::<Vec<_>>()
            };
            (
                of(|b| b.processing_time),
                of(|b| b.scheduling_delay),
                of(|b| b.total_delay),
                recent.source_rates.clone(),
                recent.rate_limits.clone(),
                recent.checkpoints,
            )
        };
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PipelineMetrics {
            batches: read(&self.batches),
            records_in: read(&self.records_in),
            records_out: read(&self.records_out),
            slow_batches: read(&self.slow_batches),
            processing_time: Percentiles::of(processing),
            scheduling_delay: Percentiles::of(scheduling),
            total_delay: Percentiles::of(total),
            sources: self
                .plan
                .sources
                .iter()
                .zip(&self.source_records)
                .zip(rates)
                .zip(limits)
                .zip(&self.lag_boards)
                .map(|(((((source, _), records), rate), rate_limit), board)| {
                    let partitions = board.read();
                    SourceMetrics {
                        name: source.name.clone(),
                        records: read(records),
                        rate,
                        rate_limit,
                        lag: (!partitions.is_empty())
                            .then(|| partitions.iter().map(crate::source::lag::PartitionLag::lag).sum()),
                        partitions,
                    }
                })
                .collect(),
            queued_chunks: self.queued_chunks.load(Ordering::Relaxed) as u64,
            stages: self.plan.stages.iter().map(|stage| stage.snapshot()).collect(),
            checkpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks_of_the_sorted_values() {
        let values = (1..=100).rev().map(Duration::from_millis).collect();
        let p = Percentiles::of(values);
        assert_eq!(p.p50, Duration::from_millis(51));
        assert_eq!(p.p95, Duration::from_millis(95));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
        assert_eq!(Percentiles::of(Vec::new()), Percentiles::default());
    }
}
