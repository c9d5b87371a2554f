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
//! result so far. Output records carry the window's last millisecond as
//! their timestamp (`end - 1`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use super::guard::StageMetrics;
use super::keyed::{FastMap, PartitionStates, lock};
use super::reduce::{Phase, ReduceByKey, Reducer};
use super::{
    BatchClock, Operator, OperatorError, PartitionContext, Planning, check_restored_partitions, restore_error,
};
use crate::checkpoint::codec::{Decoder, Encoder};
use crate::config::{LateRecords, OutputMode};
use crate::partition::Partitioning;
use crate::record::{Batch, Partition};
use crate::state::StateSize;

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
    /// The stage's name, for dead letters.
    pub stage: String,
}

/// Per key, the reduction of each event-time window's values.
#[derive(Debug)]
pub struct EventTimeWindow {
    settings: EventWindowSettings,
    combine: ReduceByKey,
    merge: ReduceByKey,
    metrics: Arc<StageMetrics>,
    /// Largest timestamp seen so far, over all partitions.
    max_seen: AtomicI64,
    /// Records older than this are late (set at the end of each batch).
    watermark: AtomicI64,
    /// Per partition: window start → one record per key.
    windows: PartitionStates<BTreeMap<i64, Batch>>,
}

impl EventTimeWindow {
    /// Reduces each window's values with `reducer`, counting late records in `metrics`.
    pub fn new(settings: EventWindowSettings, reducer: Reducer, metrics: Arc<StageMetrics>) -> Self {
        let partitions = settings.partitions;
        Self {
            settings,
            combine: ReduceByKey::new(reducer.clone(), Phase::Combine, partitions),
            merge: ReduceByKey::new(reducer, Phase::Merge, partitions),
            metrics,
            max_seen: AtomicI64::new(i64::MIN),
            watermark: AtomicI64::new(i64::MIN),
            windows: PartitionStates::default(),
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
        // New results of the windows this batch touches, computed aside.
        let mut changed: Vec<(i64, Batch, Batch)> = Vec::with_capacity(by_window.len());
        for (start, records) in by_window {
            // A reduce-by-key returns its partition as one batch.
            let partial = self
                .combine
                .process(vec![records], ctx)?
                .pop()
                .unwrap_or_default();
            let mut parts = vec![partial.clone()];
            if let Some(previous) = windows.get(&start) {
                parts.push(previous.clone());
            }
            let merged = self.merge.process(parts, ctx)?.pop().unwrap_or_default();
            changed.push((start, partial, merged));
        }
        // Every call succeeded: commit, then emit and free.
        for record in late {
            self.late(record, watermark, ctx);
        }
        self.max_seen.fetch_max(latest, Ordering::AcqRel);
        let length = self.settings.length_ms;
        let mut output = Vec::new();
        for (start, partial, merged) in changed {
            if self.settings.output == OutputMode::Update {
                let touched: FastMap<Option<&[u8]>, ()> = partial.iter().map(|r| (r.key, ())).collect();
                let mut updated = Batch::with_capacity(partial.len(), partial.data_bytes());
                for record in merged.iter().filter(|r| touched.contains_key(&r.key)) {
                    updated.push_ref(record);
                }
                output.push(updated.retimed(start + length - 1));
            }
            windows.insert(start, merged);
        }
        let closed: Vec<i64> = windows
            .range(..)
            .take_while(|(start, _)| **start + length <= watermark)
            .map(|(start, _)| *start)
            .collect();
        for start in closed {
            let window = windows.remove(&start).expect("listed above");
            if self.settings.output == OutputMode::Append {
                output.push(window.retimed(start + length - 1));
            }
        }
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
            for window in windows.values() {
                size.keys += window.len() as u64;
                size.memory_bytes += window.size_bytes() as u64;
            }
        });
        size
    }

    fn check(&self) -> Result<(), OperatorError> {
        self.combine.check()
    }

    fn plugin_slots(&self) -> Vec<Arc<super::BindingSlot>> {
        self.combine.plugin_slots()
    }

    fn snapshot(&self) -> Result<Option<Vec<u8>>, OperatorError> {
        let mut out = Encoder::new();
        out.i64(self.max_seen.load(Ordering::Acquire));
        out.i64(self.watermark.load(Ordering::Acquire));
        let mut partitions = Vec::new();
        self.windows
            .for_each(|_, windows| partitions.push(windows.clone()));
        out.u64(partitions.len() as u64);
        for windows in partitions {
            out.u64(windows.len() as u64);
            for (start, window) in windows {
                out.i64(start);
                out.batch(&window);
            }
        }
        Ok(Some(out.finish()))
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        let mut input = Decoder::new(snapshot);
        let max_seen = input.i64().map_err(restore_error)?;
        let watermark = input.i64().map_err(restore_error)?;
        let mut partitions = Vec::new();
        for _ in 0..input.count(8).map_err(restore_error)? {
            let mut windows = BTreeMap::new();
            for _ in 0..input.count(16).map_err(restore_error)? {
                let start = input.i64().map_err(restore_error)?;
                windows.insert(start, input.batch().map_err(restore_error)?);
            }
            partitions.push(windows);
        }
        check_restored_partitions(partitions.len(), self.settings.partitions, "window")?;
        self.max_seen.store(max_seen, Ordering::Release);
        self.watermark.store(watermark, Ordering::Release);
        self.windows.replace(partitions);
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
        }
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
    fn a_restored_snapshot_goes_on_exactly_like_the_original() {
        let count = || Reducer::Builtin(BuiltinReducer::Count);
        let original = EventTimeWindow::new(settings(), count(), Arc::default());
        run(&original, 0, &[("a", 1), ("b", 3), ("a", 12)]);
        let restored = EventTimeWindow::new(settings(), count(), Arc::default());
        restored.restore(&original.snapshot().unwrap().unwrap()).unwrap();
        assert_eq!(restored.state_size(), original.state_size());
        // The watermark (12 - 5) came along: 2 is late, [0, 10) closes at 21 - 5.
        let next = [("a", 2), ("b", 21)];
        let expected = run(&original, 1, &next);
        assert_eq!(run(&restored, 1, &next), expected);
        let last = [("c", 30)];
        let closed = run(&original, 2, &last);
        assert_eq!(run(&restored, 2, &last), closed);
        assert_eq!(
            closed,
            vec![("a".into(), "1".into(), 9), ("b".into(), "1".into(), 9)]
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
                output: OutputMode::Append,
                late: LateRecords::Drop,
                partitions: 1,
                stage: "s".into(),
            },
            Reducer::Builtin(BuiltinReducer::Count),
            Arc::default(),
        );
        assert_eq!(window.windows_of(25).collect::<Vec<_>>(), vec![20, 10, 0]);
        assert_eq!(window.windows_of(30).collect::<Vec<_>>(), vec![30, 20, 10]);
        assert_eq!(window.windows_of(-1).collect::<Vec<_>>(), vec![-10, -20, -30]);
    }
}
