//! How a pipeline is asked to run ([`RunOptions`]), and what a run did
//! ([`RunSummary`], printed by `weir run` when a pipeline ends).

use std::time::Duration;

use super::backpressure::RateReport;
use super::durability::CheckpointStats;
use crate::state::StateSize;

/// How to run a pipeline.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Process what the sources have, then stop (Structured Streaming's `availableNow`).
    pub available_now: bool,
    /// Resume from a checkpoint even though a plugin's component changed.
    pub allow_plugin_change: bool,
    /// The pipeline's share of the worker pool: up to this many of its tasks
    /// run in a row before another pipeline's (0 counts as 1).
    pub weight: u32,
}

/// What a finished run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    /// The pipeline's name.
    pub pipeline: String,
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
    /// Plugin log messages dropped by the stages' log budgets.
    pub log_messages_dropped: u64,
    /// Plugin log messages dropped, per stage that dropped some.
    pub log_drops_by_stage: Vec<(String, u64)>,
    /// Plugin instances replaced because their linear memory had outgrown
    /// them, per stage that replaced some.
    pub replaced_instances_by_stage: Vec<(String, u64)>,
    /// Records shuffled by key between partitions, over all stages (a
    /// reduce-by-key's partial results, a join's inputs).
    pub shuffled_records: u64,
    /// Keyed state held at the end of the run, over all stages.
    pub state: StateSize,
    /// Keyed state held at the end of the run by each stage that holds some.
    pub state_by_stage: Vec<(String, StateSize)>,
    /// Checkpoints written, replayed batches, where the run resumed.
    pub checkpoints: CheckpointStats,
    /// The pacing of each paced source (`max-rate`, backpressure), by name.
    pub rates: Vec<(String, RateReport)>,
}

impl std::fmt::Display for RunSummary {
    /// The summary `weir run` prints when a pipeline ends.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pipeline `{}`: {} batches, {} records in, {} records out, {} retries, \
             {} batches ({} records) skipped, {} records dead-lettered, {} late records dropped, \
             {} log messages dropped, {} records shuffled, state: {} keys ({} on disk){}",
            self.pipeline,
            self.batches,
            self.records_in,
            self.records_out,
            self.retries,
            self.skipped_batches,
            self.skipped_records,
            self.dead_lettered,
            self.late_records,
            self.log_messages_dropped,
            self.shuffled_records,
            self.state.keys,
            self.state.spilled_keys,
            if self.stopped { ", stopped gracefully" } else { "" }
        )?;
        let checkpoints = &self.checkpoints;
        let ms = |duration: std::time::Duration| duration.as_secs_f64() * 1e3;
        if let Some(batch) = checkpoints.resumed_after {
            write!(
                f,
                "\n  resumed after the checkpoint of batch {batch}; {} logged batches replayed; recovery took {:.1} ms",
                checkpoints.replayed_batches,
                ms(checkpoints.recovery_time)
            )?;
        }
        if checkpoints.written > 0 {
            write!(
                f,
                "\n  {} checkpoints written, the last {} bytes, the longest {:.1} ms (pause between batches at most {:.1} ms)",
                checkpoints.written,
                checkpoints.last_bytes,
                ms(checkpoints.max_duration),
                ms(checkpoints.max_snapshot)
            )?;
            if checkpoints.chain_bytes > 0 || checkpoints.compactions > 0 {
                write!(
                    f,
                    "; incremental state: the newest lists {} bytes of parts, {} compactions wrote {} bytes",
                    checkpoints.chain_bytes, checkpoints.compactions, checkpoints.compacted_bytes
                )?;
            }
        }
        for (source, report) in &self.rates {
            let rate =
                |rate: Option<f64>| rate.map_or("unlimited".to_owned(), |r| format!("{r:.0} records/s"));
            write!(f, "\n  source `{source}`: rate {} at the end", rate(report.rate))?;
            if let Some(max) = report.max_rate {
                write!(f, " (max-rate {max:.0})")?;
            }
            if report.updates > 0 {
                write!(
                    f,
                    "; backpressure set it {} times, the lowest {}",
                    report.updates,
                    rate(report.lowest)
                )?;
            }
        }
        for (stage, dropped) in &self.log_drops_by_stage {
            write!(
                f,
                "\n  stage `{stage}`: {dropped} log messages dropped (over its log-messages-per-second / log-bytes-per-second)"
            )?;
        }
        for (stage, replaced) in &self.replaced_instances_by_stage {
            write!(
                f,
                "\n  stage `{stage}`: {replaced} plugin instances replaced (their linear memory had grown past half of the room their memory limit left them)"
            )?;
        }
        for (stage, state) in &self.state_by_stage {
            write!(
                f,
                "\n  stage `{stage}`: {} state entries, {} bytes in memory, {} on disk",
                state.keys, state.memory_bytes, state.spilled_keys
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::RunSummary;
    use crate::pipeline::durability::CheckpointStats;

    #[test]
    fn the_summary_shows_recovery_pauses_and_incremental_state() {
        let summary = RunSummary {
            pipeline: "p".into(),
            checkpoints: CheckpointStats {
                written: 3,
                last_bytes: 10,
                max_duration: Duration::from_millis(40),
                max_snapshot: Duration::from_millis(5),
                chain_bytes: 1234,
                compactions: 2,
                compacted_bytes: 999,
                resumed_after: Some(7),
                replayed_batches: 1,
                recovery_time: Duration::from_millis(250),
                ..CheckpointStats::default()
            },
            ..RunSummary::default()
        };
        let text = summary.to_string();
        for part in [
            "resumed after the checkpoint of batch 7; 1 logged batches replayed; recovery took 250.0 ms",
            "3 checkpoints written, the last 10 bytes, the longest 40.0 ms (pause between batches at most 5.0 ms)",
            "incremental state: the newest lists 1234 bytes of parts, 2 compactions wrote 999 bytes",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        let plain = RunSummary {
            checkpoints: CheckpointStats {
                written: 1,
                ..CheckpointStats::default()
            },
            ..RunSummary::default()
        };
        assert!(!plain.to_string().contains("incremental state"));
    }

    #[test]
    fn the_summary_shows_each_paced_sources_rate() {
        use crate::pipeline::RateReport;
        let summary = RunSummary {
            rates: vec![
                (
                    "lines".into(),
                    RateReport {
                        max_rate: Some(5000.0),
                        rate: Some(1234.4),
                        lowest: Some(800.0),
                        updates: 12,
                    },
                ),
                (
                    "other".into(),
                    RateReport {
                        max_rate: None,
                        rate: None,
                        lowest: None,
                        updates: 0,
                    },
                ),
            ],
            ..RunSummary::default()
        };
        let text = summary.to_string();
        for part in [
            "source `lines`: rate 1234 records/s at the end (max-rate 5000); backpressure set it 12 times, the lowest 800 records/s",
            "source `other`: rate unlimited at the end\n",
        ] {
            assert!(format!("{text}\n").contains(part), "{part:?} missing in {text}");
        }
    }
}
