//! Failure policies: what a stage does when its operator fails on a
//! partition (a trap, a limit, an error the plugin returns).
//!
//! [`Guarded`] wraps a stage's operator. A failed call is retried (on a fresh
//! instance: a trap discards the old one) up to `retries` times with
//! exponential backoff; then `on-error` applies: `fail` stops the pipeline,
//! `skip-batch` drops the partition's batch for this stage, `dead-letter`
//! sends the records to the `dead-letters` stream with the error. An error the
//! plugin ties to one record dead-letters only that record; the rest of the
//! batch is processed again without it. Every outcome is counted in the
//! stage's [`StageMetrics`]; the executor quarantines a stage after
//! `quarantine-after` consecutive batches with a failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::binding::Route;
use super::{Operator, OperatorError, PartitionContext, PieceFold, Planning};
use crate::config::{FailurePolicy, OnError};
use crate::record::{Batch, Partition, RecordRef, partition_len};
use crate::runtime::PluginError;

/// Record errors dead-lettered from one partition's batch before the whole
/// batch counts as failed (each one costs a call).
const MAX_RECORD_FAILURES: usize = 1_000;

/// Counters of a stage, shared by the workers running it.
#[derive(Debug, Default)]
pub struct StageMetrics {
    /// Records into the stage.
    pub records_in: AtomicU64,
    /// Records out of the stage.
    pub records_out: AtomicU64,
    /// Traps by kind, indexed by [`crate::pipeline::live::trap_index`].
    pub traps: [AtomicU64; 6],
    /// What the stage's plugin instances use.
    pub usage: std::sync::Arc<crate::runtime::InstanceUsage>,
    /// The stage's state as of the end of the last batch (live metrics read
    /// this rather than wait for a partition a running batch holds).
    pub state: std::sync::Mutex<crate::state::StateSize>,
    /// Calls retried.
    pub retries: AtomicU64,
    /// Partition batches whose failure was handled by `on-error` (or stopped the pipeline).
    pub failed_batches: AtomicU64,
    /// Partition batches dropped by `skip-batch`.
    pub skipped_batches: AtomicU64,
    /// Records in the dropped batches.
    pub skipped_records: AtomicU64,
    /// Records sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Consecutive micro-batches in which the stage had a failure.
    pub consecutive_failed_batches: AtomicU64,
    /// Records behind an event-time watermark.
    pub late_records: AtomicU64,
    /// Records moved between partitions by key before the stage's
    /// operators (a reduce's partial results, a join's inputs).
    pub shuffled_records: AtomicU64,
    /// Bytes of those records (keys and values).
    pub shuffled_bytes: AtomicU64,
    /// Nanoseconds its operators took, summed over partitions (worker time,
    /// not wall time; the waits between retries included).
    pub busy_nanos: AtomicU64,
    /// The last [`LATEST_DEAD_LETTERS`] dead-letter entries, newest last.
    pub latest_dead_letters: std::sync::Mutex<std::collections::VecDeque<String>>,
}

/// Dead-letter entries a stage keeps for its live metrics.
pub const LATEST_DEAD_LETTERS: usize = 10;

/// Bytes of each of those entries kept (the dead-letter stream gets them whole).
pub const LATEST_DEAD_LETTER_BYTES: usize = 2048;

impl StageMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds `elapsed` to the stage's busy time.
    fn busy(&self, elapsed: std::time::Duration) {
        Self::add(
            &self.busy_nanos,
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Counts a dead-lettered record and keeps its `entry` among the latest
    /// (its first [`LATEST_DEAD_LETTER_BYTES`]).
    fn dead_lettered(&self, mut entry: String) {
        Self::add(&self.dead_lettered, 1);
        if entry.len() > LATEST_DEAD_LETTER_BYTES {
            let mut end = LATEST_DEAD_LETTER_BYTES;
            while !entry.is_char_boundary(end) {
                end -= 1;
            }
            entry.truncate(end);
            entry.push('…');
        }
        let mut latest = self.latest_dead_letters.lock().unwrap_or_else(|e| e.into_inner());
        if latest.len() == LATEST_DEAD_LETTERS {
            latest.pop_front();
        }
        latest.push_back(entry);
    }

    /// Counts `error` if it is a trap.
    fn count_trap(&self, error: &OperatorError) {
        if let OperatorError::Plugin {
            error: PluginError::Trap { kind, .. },
            ..
        } = error
        {
            Self::add(&self.traps[crate::pipeline::live::trap_index(*kind)], 1);
        }
    }
}

/// Where an operator stands in its stage: the first counts the stage's
/// input records, the last its output records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StagePosition {
    /// The stage's first operator.
    pub first: bool,
    /// The stage's last operator.
    pub last: bool,
}

/// A stage's operator under its failure policy.
#[derive(Debug)]
pub struct Guarded {
    inner: std::sync::Arc<dyn Operator>,
    policy: FailurePolicy,
    stage: String,
    metrics: std::sync::Arc<StageMetrics>,
    position: StagePosition,
    /// The slots of the plugins `inner` calls (a candidate on probation
    /// falls back on its previous version here).
    slots: Vec<std::sync::Arc<super::BindingSlot>>,
}

impl Guarded {
    /// Runs `inner`, at `position` in `stage`, under `policy`, counting
    /// into `metrics`.
    pub fn new(
        inner: std::sync::Arc<dyn Operator>,
        policy: FailurePolicy,
        stage: String,
        metrics: std::sync::Arc<StageMetrics>,
        position: StagePosition,
    ) -> Self {
        Self {
            slots: inner.plugin_slots(),
            inner,
            policy,
            stage,
            metrics,
            position,
        }
    }

    /// True while a plugin of the operator is a candidate on probation.
    fn on_probation(&self) -> bool {
        self.slots.iter().any(|slot| slot.on_probation())
    }

    /// Runs the operator with a candidate on probation: when the candidate
    /// fails, the failure is counted against it and the same input is
    /// processed again by the previous version, under the stage's policy.
    fn on_trial(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let error = match self.inner.process(input.clone(), ctx) {
            Ok(output) => return Ok(output),
            Err(error) => error,
        };
        self.metrics.count_trap(&error);
        for slot in self.slots.iter().filter(|slot| slot.on_probation()) {
            slot.candidate_failed();
        }
        tracing::warn!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, "the candidate on probation failed; the previous version processes the partition: {}", first_line(&error));
        ctx.instances.route = Route::Fallback;
        let output = self.guarded(input, ctx);
        ctx.instances.route = Route::Current;
        output
    }

    /// The slot of the operator's plugin that runs a canary, if one does.
    fn canary_slot(&self) -> Option<&std::sync::Arc<super::BindingSlot>> {
        self.slots.iter().find(|slot| slot.in_canary())
    }

    /// Runs the operator with a canary in `slot`: the input's records are
    /// split by key between the current version and the canary (each key
    /// always to the same one; see [`super::BindingSlot::canary_owns_record`]),
    /// and each part is processed by its version: the current one's under
    /// the stage's policy, the canary's once, and when that fails, again by
    /// the current version under the policy (a failing canary loses
    /// nothing). An empty part is processed only for a keyed-state stage
    /// (each version offers its own keys that timed out).
    fn canaried(
        &self,
        slot: &super::BindingSlot,
        input: Partition,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<Partition, OperatorError> {
        let (mut live, mut canary) = (Batch::new(), Batch::new());
        for record in input.iter().flat_map(Batch::iter) {
            match slot.canary_owns_record(record) {
                true => canary.push_ref(record),
                false => live.push_ref(record),
            }
        }
        let every_part = slot.stateful();
        let mut output = Vec::new();
        if every_part || !live.is_empty() {
            let (records, failures) = (live.len(), ctx.failures);
            let started = std::time::Instant::now();
            let result = self.guarded(vec![live], ctx);
            let ok = result.is_ok() && ctx.failures == failures;
            slot.canary_call(Route::Current, records, ok, started.elapsed());
            output.extend(result?);
        }
        if every_part || !canary.is_empty() {
            let records = canary.len();
            ctx.instances.route = Route::Canary;
            let started = std::time::Instant::now();
            let first = self.inner.process(vec![canary.clone()], ctx);
            ctx.instances.route = Route::Current;
            slot.canary_call(Route::Canary, records, first.is_ok(), started.elapsed());
            match first {
                Ok(part_output) => output.extend(part_output),
                Err(error) => {
                    self.metrics.count_trap(&error);
                    tracing::warn!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, "the canary failed; the current version processes its records: {}", first_line(&error));
                    output.extend(self.guarded(vec![canary], ctx)?);
                }
            }
        }
        Ok(output)
    }

    /// True while a plugin of the operator has a candidate in shadow.
    fn in_shadow(&self) -> bool {
        self.slots.iter().any(|slot| slot.in_shadow())
    }

    /// Runs the candidate in shadow on `input` and compares its output with
    /// the current version's `live` (which took `live_time`); the
    /// candidate's output goes nowhere.
    fn shadow(
        &self,
        input: Partition,
        live: &Partition,
        live_time: Duration,
        ctx: &mut PartitionContext<'_>,
    ) {
        ctx.instances.route = Route::Shadow;
        let started = std::time::Instant::now();
        let candidate = self.inner.process(input, ctx);
        let candidate_time = started.elapsed();
        ctx.instances.route = Route::Current;
        let diff = match candidate {
            Ok(candidate) => Some(super::binding::OutputDiff::of(live, &candidate)),
            Err(error) => {
                tracing::debug!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, "the candidate in shadow failed: {}", first_line(&error));
                None
            }
        };
        for slot in self.slots.iter().filter(|slot| slot.in_shadow()) {
            slot.shadow_call(diff.clone(), live_time, candidate_time);
        }
    }

    /// Runs the operator under the stage's failure policy.
    fn guarded(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        if self.fails_at_once() {
            // Nothing to recover: no copy of the input is needed.
            return self
                .inner
                .process(input, ctx)
                .inspect_err(|error| self.count_failure(error, ctx));
        }
        let mut pending = input;
        let mut attempt = 0u32;
        let mut record_failures = 0usize;
        loop {
            let error = match self.inner.process(pending.clone(), ctx) {
                Ok(output) => return Ok(output),
                Err(error) => error,
            };
            self.metrics.count_trap(&error);
            if self.policy.on_error == OnError::DeadLetter
                && record_failures < MAX_RECORD_FAILURES
                && let Some(index) = failed_record(&error)
                && let Some(record) = record_at(&pending, index)
            {
                // A record handled on its own does not count towards
                // quarantine: the rest of the batch goes on.
                self.dead_letter(ctx, record, &error);
                pending = without(&pending, index);
                record_failures += 1;
                continue;
            }
            if attempt < self.policy.retries && error.retryable() {
                attempt += 1;
                StageMetrics::add(&self.metrics.retries, 1);
                tracing::warn!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, attempt, "retrying after: {}", first_line(&error));
                std::thread::sleep(Duration::from_millis(10u64 << attempt.min(7)));
                continue;
            }
            StageMetrics::add(&self.metrics.failed_batches, 1);
            ctx.failures += 1;
            match self.policy.on_error {
                OnError::Fail => return Err(error),
                OnError::SkipBatch => {
                    tracing::warn!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, "skipping the batch: {}", first_line(&error));
                    StageMetrics::add(&self.metrics.skipped_batches, 1);
                    StageMetrics::add(&self.metrics.skipped_records, partition_len(&pending) as u64);
                    return Ok(Vec::new());
                }
                OnError::DeadLetter => {
                    tracing::warn!(stage = %self.stage, partition = ctx.partition, batch = ctx.batch_id, "dead-lettering the batch: {}", first_line(&error));
                    for record in pending.iter().flat_map(Batch::iter) {
                        self.dead_letter(ctx, record, &error);
                    }
                    return Ok(Vec::new());
                }
            }
        }
    }

    /// True when a failure fails the pipeline with nothing tried first (no
    /// retries, `on-error = "fail"`): the operator may then run piece by piece.
    fn fails_at_once(&self) -> bool {
        self.policy.retries == 0 && self.policy.on_error == OnError::Fail
    }

    /// Counts a failure that fails the pipeline.
    fn count_failure(&self, error: &OperatorError, ctx: &mut PartitionContext<'_>) {
        self.metrics.count_trap(error);
        StageMetrics::add(&self.metrics.failed_batches, 1);
        ctx.failures += 1;
    }

    /// Runs the operator under the policy, counting the stage's records.
    fn counted(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        if self.position.first {
            StageMetrics::add(&self.metrics.records_in, partition_len(&input) as u64);
        }
        let shadowed = (ctx.instances.route == Route::Current && self.in_shadow()).then(|| input.clone());
        let started = std::time::Instant::now();
        let output = match self.canary_slot() {
            Some(slot) if ctx.instances.route == Route::Current => self.canaried(slot, input, ctx)?,
            _ if ctx.instances.route == Route::Current && self.on_probation() => self.on_trial(input, ctx)?,
            _ => self.guarded(input, ctx)?,
        };
        let elapsed = started.elapsed();
        self.metrics.busy(elapsed);
        if let Some(input) = shadowed {
            self.shadow(input, &output, elapsed, ctx);
        }
        if self.position.last {
            StageMetrics::add(&self.metrics.records_out, partition_len(&output) as u64);
        }
        Ok(output)
    }

    fn dead_letter(&self, ctx: &mut PartitionContext<'_>, record: RecordRef<'_>, error: &OperatorError) {
        let text = |bytes: &[u8]| match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::Value::String(text.to_owned()),
            Err(_) => serde_json::Value::Array(bytes.iter().map(|&b| b.into()).collect()),
        };
        let entry = serde_json::json!({
            "stage": self.stage,
            "batch": ctx.batch_id,
            "partition": ctx.partition,
            "error": capped_text(error),
            "key": record.key.map(text),
            "value": text(record.value),
            "timestamp": record.timestamp,
        });
        let entry = entry.to_string();
        ctx.dead_letters
            .push(record.key, entry.as_bytes(), record.timestamp);
        self.metrics.dead_lettered(entry);
    }
}

/// The fold of a guarded operator (under `on-error = "fail"` without
/// retries): the operator's own, with the stage's records and failures counted.
struct GuardedFold<'a> {
    guard: &'a Guarded,
    inner: Box<dyn PieceFold + 'a>,
}

impl PieceFold for GuardedFold<'_> {
    fn absorb(&mut self, piece: Partition, ctx: &mut PartitionContext<'_>) -> Result<(), OperatorError> {
        if self.guard.position.first {
            StageMetrics::add(&self.guard.metrics.records_in, partition_len(&piece) as u64);
        }
        let started = std::time::Instant::now();
        let absorbed = self
            .inner
            .absorb(piece, ctx)
            .inspect_err(|error| self.guard.count_failure(error, ctx));
        self.guard.metrics.busy(started.elapsed());
        absorbed
    }

    fn finish(self: Box<Self>, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let guard = self.guard;
        let started = std::time::Instant::now();
        let output = self.inner.finish(ctx);
        guard.metrics.busy(started.elapsed());
        let output = output.inspect_err(|error| guard.count_failure(error, ctx))?;
        if guard.position.last {
            StageMetrics::add(&guard.metrics.records_out, partition_len(&output) as u64);
        }
        Ok(output)
    }
}

/// Bytes of an error's text a dead-letter entry keeps: its message and the
/// start of what the plugin printed (a panic message), not the up to 32 KiB
/// of captured output in every record of a failed batch.
const DEAD_LETTER_ERROR_BYTES: usize = 1024;

/// The text of `error`, cut to [`DEAD_LETTER_ERROR_BYTES`] (on a character
/// boundary, marked with `…`).
fn capped_text(error: &OperatorError) -> String {
    let mut text = error.to_string();
    if text.len() > DEAD_LETTER_ERROR_BYTES {
        let mut end = DEAD_LETTER_ERROR_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// The first line of an error (a trap's backtrace follows on later lines).
fn first_line(error: &OperatorError) -> String {
    error.to_string().lines().next().unwrap_or_default().to_owned()
}

/// The index (in the partition) of the record an error names, if any.
fn failed_record(error: &OperatorError) -> Option<usize> {
    match error {
        OperatorError::Plugin {
            error: PluginError::Record { index, .. },
            ..
        } => Some(*index as usize),
        OperatorError::Value {
            index: Some(index), ..
        } => Some(*index as usize),
        _ => None,
    }
}

/// The partition without record `index`; the other chunks stay as they are
/// (so the chunk boundary between the two inputs of a join is kept).
fn without(partition: &[Batch], mut index: usize) -> Partition {
    let mut out = Vec::with_capacity(partition.len());
    for chunk in partition {
        if index < chunk.len() {
            let mut rest = Batch::with_capacity(chunk.len() - 1, chunk.data_bytes());
            for (i, record) in chunk.iter().enumerate() {
                if i != index {
                    rest.push_ref(record);
                }
            }
            out.push(rest);
            index = usize::MAX;
        } else {
            index = index.saturating_sub(chunk.len());
            out.push(chunk.clone());
        }
    }
    out
}

pub(super) fn record_at(partition: &[Batch], mut index: usize) -> Option<RecordRef<'_>> {
    for chunk in partition {
        if index < chunk.len() {
            return Some(chunk.get(index));
        }
        index -= chunk.len();
    }
    None
}

impl Operator for Guarded {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        self.counted(input, ctx)
    }

    fn planning(&self) -> Planning {
        let planning = self.inner.planning();
        Planning {
            // Retries, skips and dead letters act on what one call was
            // given: under those policies a partition stays one call, as
            // configured.
            piecewise: planning.piecewise && self.fails_at_once(),
            ..planning
        }
    }

    fn fold_pieces(&self) -> Option<Box<dyn PieceFold + '_>> {
        // On probation (or in shadow) each piece is processed on its own,
        // so that a candidate's failure can be processed again by the
        // previous version (or its output compared).
        if !self.fails_at_once() || self.on_probation() || self.in_shadow() {
            return None;
        }
        Some(Box::new(GuardedFold {
            guard: self,
            inner: self.inner.fold_pieces()?,
        }))
    }

    fn check(&self) -> Result<(), OperatorError> {
        self.inner.check()
    }

    fn end_batch(&self, batch: super::BatchClock) {
        self.inner.end_batch(batch);
    }

    fn state_size(&self) -> crate::state::StateSize {
        self.inner.state_size()
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>, OperatorError> {
        self.inner.snapshot()
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        self.inner.restore(snapshot)
    }

    fn incremental(&self) -> Option<&dyn super::IncrementalState> {
        self.inner.incremental()
    }

    fn plugin_slots(&self) -> Vec<std::sync::Arc<super::BindingSlot>> {
        self.slots.clone()
    }

    fn migrate_state(
        &self,
        slot: &super::BindingSlot,
        candidate: &super::binding::Binding,
        from_version: u32,
    ) -> Result<Option<super::StateMigration>, super::MigrationError> {
        self.inner.migrate_state(slot, candidate, from_version)
    }
}

#[cfg(test)]
mod tests {
    use super::{DEAD_LETTER_ERROR_BYTES, capped_text};
    use crate::operator::OperatorError;

    #[test]
    fn dead_letter_errors_are_capped_on_a_character_boundary() {
        let short = OperatorError::Native("short".into());
        assert_eq!(capped_text(&short), "short");
        // Two-byte characters, so the cut falls inside one.
        let long = OperatorError::Native(format!("x{}", "é".repeat(4_000)));
        let text = capped_text(&long);
        assert!(text.ends_with('…'), "{text}");
        assert!(text.len() <= DEAD_LETTER_ERROR_BYTES + '…'.len_utf8());
        assert!(text.starts_with("xé"));
    }
}
