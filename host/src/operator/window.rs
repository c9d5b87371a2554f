//! Processing-time windows over micro-batches (Spark Streaming's `window`,
//! `reduceByKeyAndWindow` and friends).
//!
//! A window covers the last `length` batches and is emitted every `slide`
//! batches (both counted in batch intervals): at batch `k` when
//! `(k + 1) % slide == 0`, covering batches `k - length + 1 ..= k`. Output
//! records carry the window's last millisecond as their timestamp
//! (`end - 1`, where `end` is the batch time); sinks show `[end - length, end)`.
//!
//! - [`RawWindow`]: every record of the window (`window`).
//! - [`WindowedReduce`]: per key, the reduction of the window's values
//!   (`reduce-by-key-and-window`, and through key rewriting `count-by-window`,
//!   `reduce-by-window`, `count-by-value-and-window`). It keeps one partial
//!   result per batch — never raw records. Without an inverse, the window is
//!   merged from those partials when it is emitted; with one, a running
//!   result is updated incrementally (add the batch entering, subtract the
//!   batch leaving), as Spark's `reduceByKeyAndWindow(func, invFunc)` does,
//!   in place and only for the keys of those two batches
//!   ([`super::running`]). Either way a key without records in the window
//!   is dropped, so both give the same results (with an inverse, in no
//!   particular order). Partials past the stage's `state-memory` spill
//!   to disk and checkpoints write only what changed
//!   ([`super::window_state`]).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::Arc;

use super::builtin;
use super::keyed::{FastMap, KeyView, PartitionStates, lock, without_value};
use super::keyed_state::StateSettings;
use super::reduce::{GroupReduceFn, GroupedValues, Phase, ReduceByKey, Reducer, value_error};
use super::running::{Change, RunningChanges, RunningResult};
use super::window_state::{ReduceState, Restorer, SpillPlace, decode_whole};
use super::write_part_sections;
use super::{
    IncrementalState, Operator, OperatorError, PartitionContext, Planning, check_restored_partitions,
    restore_error,
};
use crate::checkpoint::codec::{Decoder, Encoder};
use crate::checkpoint::incremental::{Merge, PartSummary};
use crate::config::{BuiltinReducer, KeyRewrite};
use crate::partition::Partitioning;
use crate::record::{Batch, Partition, RecordRef};
use crate::state::{MIN_CHANGED_KEYS, StateSize};

/// The shape of a processing-time window, in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowShape {
    /// Batches a window covers.
    pub length: u64,
    /// Batches between two emitted windows.
    pub slide: u64,
}

impl WindowShape {
    /// True when batch `batch_id` ends a window.
    pub fn emits_at(&self, batch_id: u64) -> bool {
        (batch_id + 1).is_multiple_of(self.slide)
    }

    /// True when batch `old` is outside the window that ends at `batch_id`.
    fn has_left(&self, old: u64, batch_id: u64) -> bool {
        old + self.length <= batch_id
    }
}

/// Every record of the window (`window`).
#[derive(Debug)]
pub struct RawWindow {
    shape: WindowShape,
    states: PartitionStates<VecDeque<(u64, Partition)>>,
}

impl RawWindow {
    /// A window of `shape`.
    pub fn new(shape: WindowShape) -> Self {
        Self {
            shape,
            states: PartitionStates::default(),
        }
    }
}

impl Operator for RawWindow {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let state = self.states.get(ctx.partition);
        let mut batches = lock(&state);
        batches.push_back((ctx.batch_id, input));
        while batches
            .front()
            .is_some_and(|(old, _)| self.shape.has_left(*old, ctx.batch_id))
        {
            batches.pop_front();
        }
        if !self.shape.emits_at(ctx.batch_id) {
            return Ok(Vec::new());
        }
        Ok(batches
            .iter()
            .flat_map(|(_, chunks)| chunks.iter().cloned())
            .collect())
    }

    fn state_size(&self) -> StateSize {
        let mut size = StateSize::default();
        self.states.for_each(|_, batches| {
            for chunk in batches.iter().flat_map(|(_, chunks)| chunks) {
                size.keys += chunk.len() as u64;
                size.memory_bytes += chunk.size_bytes() as u64;
            }
        });
        size
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>, OperatorError> {
        let mut out = Encoder::new();
        let mut partitions = Vec::new();
        self.states
            .for_each(|_, batches| partitions.push(batches.clone()));
        out.u64(partitions.len() as u64);
        for batches in partitions {
            out.u64(batches.len() as u64);
            for (batch_id, chunks) in batches {
                out.u64(batch_id);
                out.batch(&Batch::concat(&chunks));
            }
        }
        Ok(Some(out.finish()))
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        let mut input = Decoder::new(snapshot);
        let mut partitions = Vec::new();
        for _ in 0..input.count(8).map_err(restore_error)? {
            let mut batches = VecDeque::new();
            for _ in 0..input.count(16).map_err(restore_error)? {
                let batch_id = input.u64().map_err(restore_error)?;
                batches.push_back((batch_id, vec![input.batch().map_err(restore_error)?]));
            }
            partitions.push(batches);
        }
        self.states.replace(partitions);
        Ok(())
    }
}

/// The inverse of a window's reducer: `current - leaving`.
#[derive(Debug, Clone)]
pub enum Inverse {
    /// The host's own inverse of `count` or `sum`.
    Builtin(BuiltinReducer),
    /// A reducer plugin (or native function) called with groups of two
    /// values, `[current, leaving]`, that returns `current - leaving`.
    Groups(Arc<dyn GroupReduceFn>),
}

/// Per key, the reduction of the window's values (`reduce-by-key-and-window`).
/// Its input is the map-side combine of each batch; it shuffles by key.
#[derive(Debug)]
pub struct WindowedReduce {
    shape: WindowShape,
    merge: ReduceByKey,
    inverse: Option<Inverse>,
    neutral: Option<Vec<u8>>,
    settings: StateSettings,
    /// The stage's name, in warnings.
    stage: String,
    states: PartitionStates<ReduceState>,
}

impl WindowedReduce {
    /// A windowed reduce of `shape` with `reducer` for stage `stage`, its
    /// state kept as `settings` say (their `timeout` unused). With
    /// `inverse`, windows are updated incrementally. Keys whose window value
    /// equals `neutral` are dropped.
    pub fn new(
        shape: WindowShape,
        reducer: Reducer,
        inverse: Option<Inverse>,
        neutral: Option<Vec<u8>>,
        settings: StateSettings,
        stage: &str,
    ) -> Self {
        Self {
            shape,
            merge: ReduceByKey::new(reducer, Phase::Merge, settings.partitions),
            inverse,
            neutral,
            settings,
            stage: stage.to_owned(),
            states: PartitionStates::default(),
        }
    }

    /// Where `partition` spills, and its share of the state memory.
    fn place(&self, partition: usize) -> SpillPlace<'_> {
        SpillPlace {
            dir: &self.settings.spill_dir,
            partition,
            budget: self.settings.memory_bytes / self.settings.partitions.max(1),
        }
    }

    /// Memory for the running keys tracked between two checkpoint parts
    /// (past it, the next part lists the partition whole): an eighth of a
    /// partition's share, at least [`MIN_CHANGED_KEYS`] as for keyed state.
    fn touch_limit(&self) -> usize {
        (self.place(0).budget / 8).max(MIN_CHANGED_KEYS)
    }

    /// The merge of the partials still in the window (after the first
    /// `leaving`) and `this` batch's, without an inverse. Partials in memory
    /// are merged in one call; spilled ones are read back in batch order and
    /// folded in a few at a time: never more than half a partition's share
    /// of the state memory or the result so far (whichever is larger) is
    /// read back before it is merged.
    fn merge_window(
        &self,
        state: &ReduceState,
        leaving: usize,
        this: &Batch,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<Batch, OperatorError> {
        let budget = self.place(ctx.partition).budget;
        let mut merged: Option<Batch> = None;
        let mut pending: Partition = Vec::new();
        let mut pending_bytes = 0;
        for (_, partial) in state.partials.iter().skip(leaving) {
            let batch = partial.load().map_err(OperatorError::from)?.into_owned();
            pending_bytes += batch.size_bytes();
            pending.push(batch);
            // Folding once the partials read back outweigh what they are
            // folded into keeps the work linear in the partials (each is
            // merged with at most its weight of earlier ones) and the
            // memory within about twice the window's result.
            let merged_bytes = merged.as_ref().map_or(0, Batch::size_bytes);
            if partial.is_spilled() && pending_bytes > (budget / 2).max(merged_bytes) {
                let mut chunk: Partition = merged.take().into_iter().collect();
                chunk.append(&mut pending);
                merged = Some(self.merge(chunk, ctx)?);
                pending_bytes = 0;
            }
        }
        // The merged older partials first: a reducer sees values in batch order.
        let mut rest: Partition = merged.into_iter().collect();
        rest.append(&mut pending);
        rest.push(this.clone());
        self.merge(rest, ctx)
    }

    /// Merges partial results into one per key.
    fn merge(&self, partials: Partition, ctx: &mut PartitionContext<'_>) -> Result<Batch, OperatorError> {
        if partials.iter().all(Batch::is_empty) {
            return Ok(Batch::new());
        }
        let merged = self.merge.process(partials, ctx)?;
        Ok(merged.into_iter().next().unwrap_or_default())
    }

    /// `running` with `leaving`'s values subtracted from its keys.
    fn subtract(
        &self,
        inverse: &Inverse,
        running: &Batch,
        leaving: &Batch,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<Batch, OperatorError> {
        let leaving_values: FastMap<Option<&[u8]>, &[u8]> =
            leaving.iter().map(|record| (record.key, record.value)).collect();
        let mut replaced: FastMap<Option<&[u8]>, Vec<u8>> = FastMap::default();
        match inverse {
            Inverse::Builtin(reducer) => {
                for record in running {
                    if let Some(old) = leaving_values.get(&record.key) {
                        let difference = builtin::subtract(*reducer, record.value, old)
                            .expect("only count and sum are planned with a built-in inverse")
                            .map_err(|error| inverse_error(record.value, old, error))?;
                        replaced.insert(record.key, difference.to_string().into_bytes());
                    }
                }
            }
            Inverse::Groups(function) => {
                let mut groups = GroupedValues::default();
                let mut keys = Vec::new();
                for record in running {
                    if let Some(old) = leaving_values.get(&record.key) {
                        for value in [record.value, old] {
                            groups.data.extend_from_slice(value);
                            groups.ends.push(groups.data.len() as u32);
                        }
                        groups.group_ends.push(groups.ends.len() as u32);
                        keys.push(record.key);
                    }
                }
                if !keys.is_empty() {
                    let (data, ends) = function.reduce(groups, ctx)?;
                    let mut start = 0;
                    for (key, end) in keys.into_iter().zip(ends) {
                        replaced.insert(key, data[start..end as usize].to_vec());
                        start = end as usize;
                    }
                }
            }
        }
        let mut out = Batch::with_capacity(running.len(), running.data_bytes());
        for record in running {
            match replaced.get(&record.key) {
                Some(value) => out.push(record.key, value, record.timestamp),
                None => out.push_ref(record),
            }
        }
        Ok(out)
    }

    /// What `this` batch entering and the `left` partials leaving change
    /// in the `running` result (with an inverse): per key of those batches,
    /// its presence after the batch and, when it stays, its new value (the
    /// entering values merged in, then the leaving ones subtracted, in batch
    /// order). Only those keys are read and the reducers called for them;
    /// nothing changes until the batch commits.
    fn advance_running<'a>(
        &self,
        inverse: &Inverse,
        running: &RunningResult,
        this: &'a Batch,
        left: &'a [Batch],
        ctx: &mut PartitionContext<'_>,
    ) -> Result<RunningChanges<'a>, OperatorError> {
        if let Inverse::Builtin(reducer) = inverse {
            return advance_builtin(*reducer, running, this, left);
        }
        let mut changes = RunningChanges::default();
        for record in this {
            touched(&mut changes, running, record.key).presence += 1;
        }
        for record in left.iter().flat_map(Batch::iter) {
            let change = touched(&mut changes, running, record.key);
            change.presence = change.presence.saturating_sub(1);
        }
        // The current value of a key the batch touched.
        let current = |changes: &RunningChanges<'a>, key: Option<&[u8]>| -> Option<(Vec<u8>, i64)> {
            match changes.get(&KeyView(key)).and_then(|change| change.value.clone()) {
                Some(value) => Some(value),
                None => running
                    .get(key)
                    .map(|entry| (entry.value().to_vec(), entry.timestamp)),
            }
        };
        if !this.is_empty() {
            let mut before = Batch::new();
            for record in this {
                if let Some(entry) = running.get(record.key) {
                    before.push(record.key, entry.value(), entry.timestamp);
                }
            }
            let merged = self.merge(vec![before, this.clone()], ctx)?;
            for record in &merged {
                // The merge's keys are `this` batch's.
                if let Some(change) = changes.get_mut(&KeyView(record.key)) {
                    change.value = Some((record.value.to_vec(), record.timestamp));
                }
            }
        }
        for old in left {
            // Keys that leave the result need no subtraction.
            let mut staying = Batch::new();
            for record in old {
                if changes
                    .get(&KeyView(record.key))
                    .is_some_and(|change| change.presence > 0)
                    && let Some((value, timestamp)) = current(&changes, record.key)
                {
                    staying.push(record.key, &value, timestamp);
                }
            }
            for record in &self.subtract(inverse, &staying, old, ctx)? {
                if let Some(change) = changes.get_mut(&KeyView(record.key)) {
                    change.value = Some((record.value.to_vec(), record.timestamp));
                }
            }
        }
        Ok(changes)
    }
}

/// [`WindowedReduce::advance_running`] for a built-in reducer and its
/// inverse (`count`, `sum`): each key's value merged and subtracted where it
/// is, without the batches and calls of the general path, with the same
/// results (values through the reducer's decimal text, the later timestamp
/// when merged, the current one when subtracted).
fn advance_builtin<'a>(
    reducer: BuiltinReducer,
    running: &RunningResult,
    this: &'a Batch,
    left: &'a [Batch],
) -> Result<RunningChanges<'a>, OperatorError> {
    use std::fmt::Write as _;
    let mut changes = RunningChanges::default();
    let mut text = String::new();
    for record in this {
        let previous = running.get(record.key);
        let value_error = |record, error| value_error(reducer, record, error, true, 0);
        let (mut accumulator, mut timestamp) = match previous {
            Some(entry) => {
                let before = RecordRef {
                    key: entry.key(),
                    value: entry.value(),
                    timestamp: entry.timestamp,
                };
                let accumulator =
                    builtin::start(reducer, before.value, true).map_err(|e| value_error(before, e))?;
                (accumulator, entry.timestamp)
            }
            None => (
                builtin::start(reducer, record.value, true).map_err(|e| value_error(record, e))?,
                record.timestamp,
            ),
        };
        if previous.is_some() {
            builtin::fold(reducer, &mut accumulator, record.value, true)
                .map_err(|e| value_error(record, e))?;
            timestamp = timestamp.max(record.timestamp);
        }
        text.clear();
        write!(text, "{accumulator}").expect("writing to a String cannot fail");
        changes.insert(
            record.key,
            Change {
                value: Some((text.as_bytes().to_vec(), timestamp)),
                presence: previous.map_or(0, |entry| entry.presence) + 1,
            },
        );
    }
    for record in left.iter().flat_map(Batch::iter) {
        let change = touched(&mut changes, running, record.key);
        change.presence = change.presence.saturating_sub(1);
    }
    for record in left.iter().flat_map(Batch::iter) {
        let Some(change) = changes.get_mut(&KeyView(record.key)) else {
            continue;
        };
        // Keys that leave the result need no subtraction.
        if change.presence == 0 {
            continue;
        }
        let (current, timestamp) = match &change.value {
            Some((value, timestamp)) => (value.as_slice(), *timestamp),
            None => match running.get(record.key) {
                Some(entry) => (entry.value(), entry.timestamp),
                None => continue,
            },
        };
        let difference = builtin::subtract(reducer, current, record.value)
            .expect("only count and sum are planned with a built-in inverse")
            .map_err(|error| inverse_error(current, record.value, error))?;
        change.value = Some((difference.to_string().into_bytes(), timestamp));
    }
    Ok(changes)
}

/// The error of a built-in inverse that cannot subtract `leaving` from `current`.
fn inverse_error(current: &[u8], leaving: &[u8], error: builtin::ValueError) -> OperatorError {
    OperatorError::Value {
        message: format!(
            "window inverse: {:?} minus {:?} {error}",
            String::from_utf8_lossy(current),
            String::from_utf8_lossy(leaving)
        ),
        index: None,
    }
}

/// The change of `key` in `changes`, added (unchanged) when new.
fn touched<'m, 'a>(
    changes: &'m mut RunningChanges<'a>,
    running: &RunningResult,
    key: Option<&'a [u8]>,
) -> &'m mut Change {
    changes.entry(key).or_insert_with(|| Change {
        value: None,
        presence: running.get(key).map_or(0, |entry| entry.presence),
    })
}

impl Operator for WindowedReduce {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let this = self.merge(input, ctx)?;
        let state = self.states.get(ctx.partition);
        let mut state = lock(&state);
        let leaving = state
            .partials
            .iter()
            .take_while(|(old, _)| self.shape.has_left(*old, ctx.batch_id))
            .count();
        // With an inverse the leaving partials are subtracted: read back.
        let left: Vec<Batch> = match &self.inverse {
            Some(_) => state
                .partials
                .iter()
                .take(leaving)
                .map(|(_, partial)| partial.load().map(Cow::into_owned))
                .collect::<Result<_, _>>()
                .map_err(OperatorError::from)?,
            None => Vec::new(),
        };
        let emits = self.shape.emits_at(ctx.batch_id);
        let window = match &self.inverse {
            Some(inverse) => {
                let changes = self.advance_running(inverse, &state.running, &this, &left, ctx)?;
                // Every call succeeded: commit.
                state.apply_running(&changes, self.touch_limit());
                emits.then(|| state.running.to_batch(self.neutral.as_deref()))
            }
            None if emits => {
                let merged = self.merge_window(&state, leaving, &this, ctx)?;
                Some(without_value(merged, self.neutral.as_deref()))
            }
            None => None,
        };
        state.commit(ctx.batch_id, this, leaving);
        state.spill_over(self.place(ctx.partition), &self.stage);
        // The window ends at the batch time; its records carry its last millisecond.
        Ok(window
            .map(|window| vec![window.retimed(ctx.batch_time - 1)])
            .unwrap_or_default())
    }

    fn planning(&self) -> Planning {
        Planning::partitioned(Partitioning::HashByKey(self.settings.partitions))
    }

    fn state_size(&self) -> StateSize {
        let mut size = StateSize::default();
        self.states.for_each(|_, state| {
            for (_, partial) in &state.partials {
                size.keys += partial.records() as u64;
                if partial.is_spilled() {
                    size.spilled_keys += partial.records() as u64;
                }
            }
            size.keys += state.running.len() as u64;
            size.memory_bytes += state.memory_bytes() as u64;
        });
        size
    }

    /// Restores a snapshot written whole (checkpoints before incremental
    /// window state): per partition, the partials with their batch ids, the
    /// running result and the presence counts.
    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        let mut input = Decoder::new(snapshot);
        let mut partitions = Vec::new();
        for partition in 0..input.count(8).map_err(restore_error)? {
            partitions
                .push(decode_whole(&mut input, self.place(partition), &self.stage).map_err(restore_error)?);
        }
        check_restored_partitions(partitions.len(), self.settings.partitions, "window")?;
        self.states.replace(partitions);
        Ok(())
    }

    fn incremental(&self) -> Option<&dyn IncrementalState> {
        Some(self)
    }

    fn check(&self) -> Result<(), OperatorError> {
        match &self.inverse {
            Some(Inverse::Groups(function)) => function.check(),
            _ => Ok(()),
        }
    }

    fn plugin_slots(&self) -> Vec<Arc<super::BindingSlot>> {
        let mut slots = self.merge.plugin_slots();
        if let Some(Inverse::Groups(function)) = &self.inverse {
            slots.extend(function.plugin_slot());
        }
        slots
    }
}

impl IncrementalState for WindowedReduce {
    fn write_part(&self, out: &mut dyn Write) -> Result<PartSummary, OperatorError> {
        let with_running = self.inverse.is_some();
        write_part_sections(
            out,
            self.settings.partitions,
            "window",
            |partition, part| {
                let state = self.states.get(partition);
                lock(&state)
                    .write_section(part, with_running)
                    .map_err(|e| e.to_string())
            },
            || self.states.for_each(|_, state| state.forget_changes()),
        )
    }

    fn restore_chain(&self, merge: &mut Merge<Box<dyn Read + Send>>) -> Result<(), OperatorError> {
        check_restored_partitions(merge.partitions(), self.settings.partitions, "window")?;
        let mut states = Vec::with_capacity(merge.partitions());
        while let Some(partition) = merge.next_partition().map_err(restore_error)? {
            let mut restorer = Restorer::new(self.place(partition), &self.stage);
            while let Some((key, value)) = merge.next_entry().map_err(restore_error)? {
                restorer.entry(&key, &value).map_err(restore_error)?;
            }
            states.push(restorer.finish());
        }
        self.states.replace(states);
        Ok(())
    }
}

/// Rewrites keys before a windowed reduce: `count-by-window` and
/// `reduce-by-window` drop them (one group), `count-by-value-and-window` keys
/// each record by its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rekey(pub KeyRewrite);

impl Rekey {
    fn rekey(self, input: &Batch) -> Batch {
        let mut out = Batch::with_capacity(input.len(), input.data_bytes());
        for record in input {
            match self.0 {
                KeyRewrite::Drop => out.push(None, record.value, record.timestamp),
                KeyRewrite::ByValue => out.push(Some(record.value), record.value, record.timestamp),
            }
        }
        out
    }
}

impl Operator for Rekey {
    fn process(&self, input: Partition, _: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        Ok(input.iter().map(|chunk| self.rekey(chunk)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::config::BuiltinReducer;
    use crate::operator::InstanceSlots;
    use crate::operator::native::NativeReducer;

    /// Partition 0 of batch `batch_id`, at 1 s.
    fn context(instances: &mut InstanceSlots, batch_id: u64) -> PartitionContext<'_> {
        PartitionContext {
            batch_id,
            batch_time: 1_000,
            left_chunks: 1,
            partition: 0,
            instances,
            dead_letters: Batch::new(),
            failures: 0,
        }
    }

    /// A count over a window of two batches, sliding by one, whose inverse
    /// (a native subtraction) fails while `failing` is set.
    fn counting_window(failing: Arc<AtomicBool>, dir: &std::path::Path) -> WindowedReduce {
        let subtract = NativeReducer::new("subtract", move |values| {
            if failing.load(Ordering::Relaxed) {
                return Err("the inverse failed".into());
            }
            let mut numbers = values.map(|v| std::str::from_utf8(v).unwrap().parse::<i64>().unwrap());
            let first = numbers.next().unwrap();
            Ok((first - numbers.sum::<i64>()).to_string().into_bytes())
        });
        WindowedReduce::new(
            WindowShape { length: 2, slide: 1 },
            Reducer::Builtin(BuiltinReducer::Count),
            Some(Inverse::Groups(Arc::new(subtract))),
            None,
            StateSettings {
                memory_bytes: 1 << 20,
                spill_dir: dir.to_path_buf(),
                timeout: None,
                partitions: 1,
            },
            "test",
        )
    }

    #[test]
    fn the_built_in_sum_and_its_inverse_give_what_a_recomputed_window_gives() {
        let dir = tempfile::tempdir().unwrap();
        let settings = || StateSettings {
            memory_bytes: 1 << 20,
            spill_dir: dir.path().to_path_buf(),
            timeout: None,
            partitions: 1,
        };
        let shape = WindowShape { length: 3, slide: 1 };
        let sum = || Reducer::Builtin(BuiltinReducer::Sum);
        let incremental = WindowedReduce::new(
            shape,
            sum(),
            Some(Inverse::Builtin(BuiltinReducer::Sum)),
            None,
            settings(),
            "t",
        );
        let recomputed = WindowedReduce::new(shape, sum(), None, None, settings(), "t");
        let mut seed = 11u64;
        for batch_id in 0..30 {
            let mut batch = Batch::new();
            for _ in 0..batch_id % 6 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = format!("k{}", (seed >> 33) % 5);
                let value = ((seed >> 40) % 2001) as i64 - 1000;
                batch.push(
                    Some(key.as_bytes()),
                    value.to_string().as_bytes(),
                    batch_id as i64 * 10,
                );
            }
            let out = |window: &WindowedReduce| {
                let mut instances = InstanceSlots::new();
                let mut ctx = context(&mut instances, batch_id);
                let mut records: Vec<(Vec<u8>, Vec<u8>)> = window
                    .process(vec![batch.clone()], &mut ctx)
                    .unwrap()
                    .iter()
                    .flat_map(Batch::iter)
                    .map(|r| (r.key.unwrap().to_vec(), r.value.to_vec()))
                    .collect();
                records.sort();
                records
            };
            // Keys of the window whose values cancel out stay (sum 0) in both.
            assert_eq!(out(&incremental), out(&recomputed), "batch {batch_id}");
        }
        // An overflow is an error naming both values, on the built-in path too.
        let mut batch = Batch::new();
        batch.push(Some(b"big"), i64::MAX.to_string().as_bytes(), 0);
        let mut instances = InstanceSlots::new();
        let mut ctx = context(&mut instances, 30);
        incremental.process(vec![batch.clone()], &mut ctx).unwrap();
        ctx.batch_id = 31;
        let error = incremental.process(vec![batch], &mut ctx).unwrap_err();
        assert!(error.to_string().contains("overflow"), "{error}");
    }

    #[test]
    fn the_built_in_inverse_gives_what_the_general_path_gives() {
        let dir = tempfile::tempdir().unwrap();
        let general = counting_window(Arc::new(AtomicBool::new(false)), dir.path());
        let built_in = WindowedReduce::new(
            WindowShape { length: 3, slide: 1 },
            Reducer::Builtin(BuiltinReducer::Count),
            Some(Inverse::Builtin(BuiltinReducer::Count)),
            None,
            StateSettings {
                memory_bytes: 1 << 20,
                spill_dir: dir.path().to_path_buf(),
                timeout: None,
                partitions: 1,
            },
            "test",
        );
        let general = WindowedReduce {
            shape: WindowShape { length: 3, slide: 1 },
            ..general
        };
        // Keys that enter, stay, leave and come back, in batches of every size.
        let mut seed = 7u64;
        for batch_id in 0..40 {
            let keys: Vec<String> = (0..batch_id % 7)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    format!("k{}", (seed >> 33) % 9)
                })
                .collect();
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            assert_eq!(
                run(&built_in, batch_id, &keys).unwrap(),
                run(&general, batch_id, &keys).unwrap(),
                "batch {batch_id}"
            );
        }
    }

    /// Runs batch `batch_id` of `keys` (each counted once), the window's records sorted.
    fn run(
        window: &WindowedReduce,
        batch_id: u64,
        keys: &[&str],
    ) -> Result<Vec<(String, String)>, OperatorError> {
        let mut batch = Batch::new();
        for key in keys {
            batch.push(Some(key.as_bytes()), b"1", 0);
        }
        let mut instances = InstanceSlots::new();
        let mut ctx = context(&mut instances, batch_id);
        let out = window.process(vec![batch], &mut ctx)?;
        let mut records: Vec<(String, String)> = out
            .iter()
            .flat_map(Batch::iter)
            .map(|r| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (text(r.key.unwrap_or_default()), text(r.value))
            })
            .collect();
        records.sort();
        Ok(records)
    }

    #[test]
    fn a_batch_whose_inverse_fails_leaves_the_running_result_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let window = counting_window(failing.clone(), dir.path());
        let pairs = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            run(&window, 0, &["a", "b", "a"]).unwrap(),
            pairs(&[("a", "2"), ("b", "1")])
        );
        assert_eq!(
            run(&window, 1, &["a", "c"]).unwrap(),
            pairs(&[("a", "3"), ("b", "1"), ("c", "1")])
        );
        // Batch 0 leaves: `a` stays and is subtracted, which fails.
        failing.store(true, Ordering::Relaxed);
        assert!(run(&window, 2, &["c", "d"]).is_err());
        // Retried, the batch gives what it would have given the first time.
        failing.store(false, Ordering::Relaxed);
        assert_eq!(
            run(&window, 2, &["c", "d"]).unwrap(),
            pairs(&[("a", "1"), ("c", "2"), ("d", "1")])
        );
        assert_eq!(run(&window, 3, &[]).unwrap(), pairs(&[("c", "1"), ("d", "1")]));
        let state = window.states.get(0);
        let state = lock(&state);
        assert_eq!(state.running.len(), 2, "keys without records in the window leave");
        assert_eq!(state.running.get(Some(b"c")).unwrap().presence, 1);
    }
}
