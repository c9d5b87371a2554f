//! Event-time windows with a watermark (Structured Streaming's
//! `withWatermark` + `window`).
//!
//! Windows follow record timestamps: they start at every multiple of the
//! slide and last `length`, so a record belongs to `length / slide` windows
//! (one when tumbling). The **watermark** trails the largest timestamp seen
//! by `allowed-lateness`; it is computed at the end of each batch over all
//! partitions and applies from the next batch on (as in Spark), which keeps
//! results a pure function of the batches. A record older than the
//! watermark is late: it is dropped (or dead-lettered) and counted. A
//! window whose end the watermark has passed can no longer change, and its
//! state is freed: in `append` mode it is emitted then, once; in `update`
//! mode every batch emits the keys of the windows it changed.
//!
//! Per key and window the values are reduced with the stage's reducer: each
//! batch's records of a window are combined, then merged into the window's
//! result so far, for the keys of the batch only. Output records carry the
//! window's last millisecond as their timestamp (`end - 1`); a closed
//! window's records come in no particular order.
//!
//! Open windows past the stage's `state-memory` spill to disk, and
//! checkpoints write what changed ([`super::event_window_state`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::builtin;
use super::event_window_state::{EventClock, EventWindows, Restorer, from_whole};
use super::guard::StageMetrics;
use super::keyed::{PartitionStates, lock};
use super::reduce::{Phase, ReduceByKey, Reducer, value_error};
use super::running::RunningResult;
use super::window_state::SpillPlace;
use super::write_part_sections;
use super::{
    BatchClock, IncrementalState, Operator, OperatorError, PartitionContext, Planning,
    check_restored_partitions, restore_error,
};
use crate::checkpoint::codec::Decoder;
use crate::checkpoint::incremental::{Merge, PartSummary};
use crate::config::{BuiltinReducer, LateRecords, OutputMode};
use crate::partition::Partitioning;
use crate::record::{Batch, Partition, RecordRef};
use crate::state::{MIN_CHANGED_KEYS, StateSize};

/// The settings of an event-time window stage.
#[derive(Debug, Clone)]
pub struct EventWindowSettings {
    /// Window length, in milliseconds.
    pub length_ms: i64,
    /// Distance between window starts, in milliseconds.
    pub slide_ms: i64,
    /// How far the watermark trails the largest timestamp seen.
    pub lateness_ms: i64,
    /// When windows are emitted.
    pub output: OutputMode,
    /// What happens to late records.
    pub late: LateRecords,
    /// Output partitions.
    pub partitions: usize,
    /// The stage's name, for dead letters and warnings.
    pub stage: String,
    /// Memory for open windows before they spill; split evenly over partitions.
    pub memory_bytes: usize,
    /// Directory of the stage's spill files.
    pub spill_dir: PathBuf,
}

/// Per key, the reduction of each event-time window's values.
#[derive(Debug)]
pub struct EventTimeWindow {
    settings: EventWindowSettings,
    combine: ReduceByKey,
    merge: ReduceByKey,
    /// The reducer when it is one of the host's: merged without a batch of
    /// the previous values.
    builtin: Option<BuiltinReducer>,
    metrics: Arc<StageMetrics>,
    /// Largest timestamp seen so far, over all partitions.
    max_seen: AtomicI64,
    /// Records older than this are late (set at the end of each batch).
    watermark: AtomicI64,
    /// Per partition: the open windows.
    windows: PartitionStates<EventWindows>,
}

impl EventTimeWindow {
    /// Reduces each window's values with `reducer`, counting late records in `metrics`.
    pub fn new(settings: EventWindowSettings, reducer: Reducer, metrics: Arc<StageMetrics>) -> Self {
        let partitions = settings.partitions;
        let builtin = match &reducer {
            Reducer::Builtin(builtin) => Some(*builtin),
            Reducer::Groups(_) => None,
        };
        Self {
            builtin,
            settings,
            combine: ReduceByKey::new(reducer.clone(), Phase::Combine, partitions),
            merge: ReduceByKey::new(reducer, Phase::Merge, partitions),
            metrics,
            max_seen: AtomicI64::new(i64::MIN),
            watermark: AtomicI64::new(i64::MIN),
            windows: PartitionStates::default(),
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

    /// Memory for what is tracked between two checkpoint parts (past it,
    /// the next part lists the partition whole): an eighth of a partition's
    /// share, at least [`MIN_CHANGED_KEYS`] as for keyed state.
    fn touch_limit(&self) -> usize {
        (self.place(0).budget / 8).max(MIN_CHANGED_KEYS)
    }

    fn clock(&self) -> EventClock {
        EventClock {
            max_seen: self.max_seen.load(Ordering::Acquire),
            watermark: self.watermark.load(Ordering::Acquire),
        }
    }

    /// Starts of the windows that hold `timestamp`, latest first.
    fn windows_of(&self, timestamp: i64) -> impl Iterator<Item = i64> + use<> {
        let (length, slide) = (self.settings.length_ms, self.settings.slide_ms);
        let last = timestamp.div_euclid(slide) * slide;
        (0..length / slide)
            .map(move |i| last - i * slide)
            .filter(move |start| *start + length > timestamp)
    }

    fn late(&self, record: crate::record::RecordRef<'_>, watermark: i64, ctx: &mut PartitionContext<'_>) {
        StageMetrics::add(&self.metrics.late_records, 1);
        if self.settings.late == LateRecords::DeadLetter {
            let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
            let entry = serde_json::json!({
                "stage": self.settings.stage,
                "batch": ctx.batch_id,
                "partition": ctx.partition,
                "error": format!("late record: timestamp {} is behind the watermark {watermark}", record.timestamp),
                "key": record.key.map(text),
                "value": text(record.value),
                "timestamp": record.timestamp,
            });
            ctx.dead_letters
                .push(record.key, entry.to_string().as_bytes(), record.timestamp);
            StageMetrics::add(&self.metrics.dead_lettered, 1);
        }
    }
}

/// A batch's `partial` results (binary, from a built-in combine) merged
/// with their keys' values in `window`, as the merge of the two would give
/// them: decimal text, the later timestamp.
fn merge_builtin(
    reducer: BuiltinReducer,
    partial: &Batch,
    window: Option<&RunningResult>,
) -> Result<Batch, OperatorError> {
    use std::fmt::Write as _;
    let mut out = Batch::with_capacity(partial.len(), partial.len() * 8);
    let mut text = String::new();
    for record in partial {
        let mut accumulator = builtin::start(reducer, record.value, true)
            .map_err(|e| value_error(reducer, record, e, true, 0))?;
        let mut timestamp = record.timestamp;
        if let Some(entry) = window.and_then(|window| window.get(record.key)) {
            let previous = RecordRef {
                key: entry.key(),
                value: entry.value(),
                timestamp: entry.timestamp,
            };
            builtin::fold(reducer, &mut accumulator, previous.value, true)
                .map_err(|e| value_error(reducer, previous, e, true, 0))?;
            timestamp = timestamp.max(entry.timestamp);
        }
        text.clear();
        write!(text, "{accumulator}").expect("writing to a String cannot fail");
        out.push(record.key, text.as_bytes(), timestamp);
    }
    Ok(out)
}

impl Operator for EventTimeWindow {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let watermark = self.watermark.load(Ordering::Acquire);
        // The batch's on-time records, by window.
        let mut by_window: BTreeMap<i64, Batch> = BTreeMap::new();
        let mut latest = i64::MIN;
        let mut late = Vec::new();
        for record in input.iter().flat_map(Batch::iter) {
            if record.timestamp < watermark {
                late.push(record);
                continue;
            }
            latest = latest.max(record.timestamp);
            for start in self.windows_of(record.timestamp) {
                by_window.entry(start).or_default().push_ref(record);
            }
        }
        let state = self.windows.get(ctx.partition);
        let mut windows = lock(&state);
        let length = self.settings.length_ms;
        let closing: Vec<i64> = windows
            .starts()
            .take_while(|start| *start + length <= watermark)
            .collect();
        // The windows the batch reads come back from disk first: those it
        // touches, and in append mode those it closes (to emit them).
        let emit_closed = self.settings.output == OutputMode::Append;
        for start in by_window.keys().chain(closing.iter().filter(|_| emit_closed)) {
            windows.load(*start).map_err(OperatorError::from)?;
        }
        // New results of the keys this batch touches, computed aside.
        let mut changed: Vec<(i64, Batch)> = Vec::with_capacity(by_window.len());
        for (start, records) in by_window {
            // A reduce-by-key returns its partition as one batch.
            let partial = self
                .combine
                .process(vec![records], ctx)?
                .pop()
                .unwrap_or_default();
            let merged = match self.builtin {
                Some(reducer) => merge_builtin(reducer, &partial, windows.window(start))?,
                None => {
                    let mut previous = Batch::new();
                    if let Some(window) = windows.window(start) {
                        for record in &partial {
                            if let Some(entry) = window.get(record.key) {
                                previous.push(record.key, entry.value(), entry.timestamp);
                            }
                        }
                    }
                    self.merge
                        .process(vec![partial, previous], ctx)?
                        .pop()
                        .unwrap_or_default()
                }
            };
            changed.push((start, merged));
        }
        // Every call succeeded: commit (with the windows loaded, nothing
        // below reads the disk), then emit and free.
        let touch_limit = self.touch_limit();
        let mut output = Vec::new();
        for (start, merged) in changed {
            windows
                .apply(start, &merged, touch_limit)
                .map_err(OperatorError::from)?;
            if self.settings.output == OutputMode::Update {
                output.push(merged.retimed(start + length - 1));
            }
        }
        for start in closing {
            let window = windows
                .close(start, emit_closed, touch_limit)
                .map_err(OperatorError::from)?;
            if let Some(window) = window {
                output.push(window.to_batch(None).retimed(start + length - 1));
            }
        }
        for record in late {
            self.late(record, watermark, ctx);
        }
        self.max_seen.fetch_max(latest, Ordering::AcqRel);
        windows.spill_over(self.place(ctx.partition), &self.settings.stage);
        Ok(output)
    }

    fn planning(&self) -> Planning {
        Planning::partitioned(Partitioning::HashByKey(self.settings.partitions))
    }

    fn end_batch(&self, _batch: BatchClock) {
        let max_seen = self.max_seen.load(Ordering::Acquire);
        if max_seen != i64::MIN {
            self.watermark.fetch_max(
                max_seen.saturating_sub(self.settings.lateness_ms),
                Ordering::AcqRel,
            );
        }
    }

    fn state_size(&self) -> StateSize {
        let mut size = StateSize::default();
        self.windows.for_each(|_, windows| {
            let (keys, spilled) = windows.keys();
            size.keys += keys as u64;
            size.spilled_keys += spilled as u64;
            size.memory_bytes += windows.memory_bytes() as u64;
        });
        size
    }

    fn check(&self) -> Result<(), OperatorError> {
        self.combine.check()
    }

    fn plugin_slots(&self) -> Vec<Arc<super::BindingSlot>> {
        self.combine.plugin_slots()
    }

    fn incremental(&self) -> Option<&dyn IncrementalState> {
        Some(self)
    }

    /// Restores a snapshot written whole (checkpoints before incremental
    /// event-time window state): the largest timestamp seen, the watermark,
    /// then per partition each window's start and records.
    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        let mut input = Decoder::new(snapshot);
        let max_seen = input.i64().map_err(restore_error)?;
        let watermark = input.i64().map_err(restore_error)?;
        let mut partitions = Vec::new();
        for partition in 0..input.count(8).map_err(restore_error)? {
            let mut windows = BTreeMap::new();
            for _ in 0..input.count(16).map_err(restore_error)? {
                let start = input.i64().map_err(restore_error)?;
                windows.insert(start, input.batch().map_err(restore_error)?);
            }
            partitions.push(from_whole(windows, self.place(partition), &self.settings.stage));
        }
        check_restored_partitions(partitions.len(), self.settings.partitions, "window")?;
        self.max_seen.store(max_seen, Ordering::Release);
        self.watermark.store(watermark, Ordering::Release);
        self.windows.replace(partitions);
        Ok(())
    }
}

impl IncrementalState for EventTimeWindow {
    fn write_part(&self, out: &mut dyn Write) -> Result<PartSummary, OperatorError> {
        let clock = self.clock();
        write_part_sections(
            out,
            self.settings.partitions,
            "event-time window",
            |partition, part| {
                let state = self.windows.get(partition);
                lock(&state).write_section(part, clock).map_err(|e| e.to_string())
            },
            || self.windows.for_each(|_, state| state.forget_changes()),
        )
    }

    fn restore_chain(&self, merge: &mut Merge<Box<dyn Read + Send>>) -> Result<(), OperatorError> {
        check_restored_partitions(merge.partitions(), self.settings.partitions, "window")?;
        let mut states = Vec::with_capacity(merge.partitions());
        let mut clock: Option<EventClock> = None;
        while let Some(partition) = merge.next_partition().map_err(restore_error)? {
            let mut restorer = Restorer::new(self.place(partition), &self.settings.stage);
            while let Some((key, value)) = merge.next_entry().map_err(restore_error)? {
                restorer.entry(&key, &value).map_err(restore_error)?;
            }
            let (windows, seen) = restorer.finish();
            states.push(windows);
            clock = clock.or(seen);
        }
        let clock = clock.unwrap_or(EventClock {
            max_seen: i64::MIN,
            watermark: i64::MIN,
        });
        self.max_seen.store(clock.max_seen, Ordering::Release);
        self.watermark.store(clock.watermark, Ordering::Release);
        self.windows.replace(states);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BuiltinReducer;

    fn settings() -> EventWindowSettings {
        EventWindowSettings {
            length_ms: 10,
            slide_ms: 10,
            lateness_ms: 5,
            output: OutputMode::Append,
            late: LateRecords::Drop,
            partitions: 1,
            stage: "s".into(),
            memory_bytes: 1 << 20,
            spill_dir: std::env::temp_dir(),
        }
    }

    /// A copy of `window` through a checkpoint chain of `parts` written
    /// from it (the last one now), into a window with `settings`.
    fn restored_from(
        window: &EventTimeWindow,
        parts: &mut Vec<Vec<u8>>,
        settings: EventWindowSettings,
    ) -> EventTimeWindow {
        let mut part = Vec::new();
        window.write_part(&mut part).unwrap();
        parts.push(part);
        let readers = parts
            .iter()
            .map(|part| {
                let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(part.clone()));
                crate::checkpoint::incremental::PartReader::new(reader).unwrap()
            })
            .collect();
        let mut merge = Merge::new(readers).unwrap();
        let restored =
            EventTimeWindow::new(settings, Reducer::Builtin(BuiltinReducer::Count), Arc::default());
        restored.restore_chain(&mut merge).unwrap();
        restored
    }

    fn run(window: &EventTimeWindow, batch_id: u64, events: &[(&str, i64)]) -> Vec<(String, String, i64)> {
        let mut batch = Batch::new();
        for (key, time) in events {
            batch.push(Some(key.as_bytes()), b"x", *time);
        }
        let mut instances = crate::operator::InstanceSlots::new();
        let mut ctx = PartitionContext {
            batch_id,
            batch_time: 0,
            left_chunks: 1,
            partition: 0,
            instances: &mut instances,
            dead_letters: Batch::new(),
            failures: 0,
        };
        let out = window.process(vec![batch], &mut ctx).unwrap();
        window.end_batch(BatchClock {
            id: batch_id,
            time: 0,
        });
        let mut records: Vec<(String, String, i64)> = out
            .iter()
            .flat_map(Batch::iter)
            .map(|r| {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                (text(r.key.unwrap_or_default()), text(r.value), r.timestamp)
            })
            .collect();
        records.sort();
        records
    }

    #[test]
    fn a_restored_chain_goes_on_exactly_like_the_original_spilled_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let count = || Reducer::Builtin(BuiltinReducer::Count);
        for memory_bytes in [1 << 20, 0] {
            let settings = || EventWindowSettings {
                memory_bytes,
                spill_dir: dir.path().to_path_buf(),
                ..settings()
            };
            let original = EventTimeWindow::new(settings(), count(), Arc::default());
            let mut parts = Vec::new();
            run(&original, 0, &[("a", 1), ("b", 3), ("a", 12)]);
            let mut first = Vec::new();
            original.write_part(&mut first).unwrap();
            parts.push(first);
            run(&original, 1, &[("b", 14)]);
            let restored = restored_from(&original, &mut parts, settings());
            assert_eq!(restored.state_size(), original.state_size());
            assert_eq!(original.state_size().spilled_keys > 0, memory_bytes == 0);
            // The watermark (14 - 5) came along: 2 is late, [0, 10) closes at 21 - 5.
            let next = [("a", 2), ("b", 21)];
            let expected = run(&original, 2, &next);
            assert_eq!(run(&restored, 2, &next), expected);
            let last = [("c", 30)];
            let closed = run(&original, 3, &last);
            assert_eq!(run(&restored, 3, &last), closed);
            assert_eq!(
                closed,
                vec![("a".into(), "1".into(), 9), ("b".into(), "1".into(), 9)]
            );
        }
    }

    #[test]
    fn a_snapshot_written_whole_by_the_previous_format_restores() {
        let count = || Reducer::Builtin(BuiltinReducer::Count);
        // Max seen 12, watermark 7; one partition, window 0 with a: 2, b: 1.
        let mut out = crate::checkpoint::codec::Encoder::new();
        out.i64(12);
        out.i64(7);
        out.u64(1);
        out.u64(1);
        out.i64(0);
        let mut window = Batch::new();
        window.push(Some(b"a"), b"2", 1);
        window.push(Some(b"b"), b"1", 3);
        out.batch(&window);
        let restored = EventTimeWindow::new(settings(), count(), Arc::default());
        restored.restore(&out.finish()).unwrap();
        assert_eq!(restored.state_size().keys, 2);
        // [0, 10) closes once the watermark passes 10: after a batch that
        // moves it to 21 - 5.
        assert_eq!(run(&restored, 0, &[("c", 21)]), vec![]);
        assert_eq!(
            run(&restored, 1, &[("c", 22)]),
            vec![("a".into(), "2".into(), 9), ("b".into(), "1".into(), 9)]
        );
        assert!(restored.restore(b"truncated").is_err());
    }

    #[test]
    fn a_timestamp_belongs_to_length_over_slide_windows() {
        let window = EventTimeWindow::new(
            EventWindowSettings {
                length_ms: 30,
                slide_ms: 10,
                lateness_ms: 0,
                ..settings()
            },
            Reducer::Builtin(BuiltinReducer::Count),
            Arc::default(),
        );
        assert_eq!(window.windows_of(25).collect::<Vec<_>>(), vec![20, 10, 0]);
        assert_eq!(window.windows_of(30).collect::<Vec<_>>(), vec![30, 20, 10]);
        assert_eq!(window.windows_of(-1).collect::<Vec<_>>(), vec![-10, -20, -30]);
    }
}
