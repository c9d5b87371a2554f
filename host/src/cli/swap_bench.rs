//! `weir bench --suite swap`: hot-load measured on a running word count,
//! as a user runs it (the library's `Engine`, real plugins, the same checks
//! as `weir swap`).
//!
//! - **Swap latency**: a word count over generated text at a steady rate,
//!   100 ms batches. The plugin is swapped 20 times, alternating between
//!   split-words and a rebuild of it (the same code plus a custom section:
//!   another SHA-256), both compiled once before (the compiled-code cache
//!   makes a known component quick). Measured: the time from the request
//!   to the end of the first batch that the new version processed (the goal
//!   is at most one batch interval + 10 ms), and the time the driver took
//!   to check the candidate (dry run included) and cut over.
//! - **Throughput around swaps**: the same word count unthrottled over a
//!   fixed number of lines, with no swap and with a swap every 100 ms,
//!   alternating runs in one process; lines per second and their ratio.
//! - **State conversion** ([`run_migration`]): a running total over many
//!   distinct keys (read from files) swapped from `running-total` (state: a
//!   number) to `running-total-v2` (state: an object), whose
//!   `migrate-state` converts every key's state before the cut-over: the
//!   states converted, the time the conversion and the whole swap took (the
//!   pipeline waits between two batches meanwhile), and the totals checked.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weir::engine::{Engine, PipelineHandle, SwapRequest};
use weir::pipeline::{PipelineEvent, RollbackRule, Rollout, RunOptions, StopMode};

use super::bench::{TotalSink, wordcount_toml};

/// Batch interval of the latency run.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// What the swap benchmark measured.
#[derive(Debug, Clone)]
pub struct SwapBenchReport {
    /// Swaps made in the latency run.
    pub swaps: usize,
    /// Request → end of the first batch on the new version: p50, p95, max.
    pub to_first_batch: [Duration; 3],
    /// The driver's checks and cut-over: p50, max.
    pub cut_over: [Duration; 2],
    /// Records of the dry runs' samples (median).
    pub sample_records: usize,
    /// Lines per second without swaps and with a swap every 100 ms (best of the rounds).
    pub throughput: [f64; 2],
    /// Swaps made during the throughput runs with swaps.
    pub throughput_swaps: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Starts the word count in `text` with its counts going to a sink that adds them up.
fn start(engine: &Engine, text: &str, available_now: bool) -> anyhow::Result<PipelineHandle> {
    let mut prepared = engine.prepare(text, Path::new("swap-bench.toml"))?;
    prepared.pipeline_mut().set_sinks(vec![(
        "counts".into(),
        Box::new(TotalSink(Arc::new(AtomicU64::new(0)))),
    )])?;
    Ok(engine.start(
        prepared,
        RunOptions {
            available_now,
            ..RunOptions::default()
        },
    )?)
}

fn request(component: &[u8], path: &Path) -> SwapRequest {
    SwapRequest {
        stage: "words".into(),
        plugin: None,
        component: component.to_vec(),
        path: path.to_owned(),
        config: None,
        rule: RollbackRule {
            batches: 0,
            max_failures: 0,
        },
        mode: Rollout::Immediate,
        by: Some("bench".into()),
    }
}

/// Runs the benchmark with `split_words`; `lines` for each throughput run.
pub fn run(
    engine: &Engine,
    split_words: &Path,
    lines: u64,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<SwapBenchReport> {
    let original = std::fs::read(split_words)?;
    // The same code with one more custom section: another SHA-256.
    let mut rebuilt = original.clone();
    rebuilt.extend_from_slice(&[0, 8, 7, b'r', b'e', b'b', b'u', b'i', b'l', b't']);
    let versions = Arc::new([
        (rebuilt, std::path::PathBuf::from("rebuilt.wasm")),
        (original, split_words.to_owned()),
    ]);
    // Compile both once, as a deploy or an upload would have.
    for (bytes, path) in versions.iter() {
        engine.runtime().load_plugin_bytes(path, bytes)?;
    }

    progress("latency: 20 swaps into a word count at 100,000 lines/s, 100 ms batches");
    let source = "type = \"generator\"\nrate = 100000\nwords-per-line = 8";
    let text = wordcount_toml("swap-latency", "100ms", 2, split_words, source);
    let handle = start(engine, &text, false)?;
    let mut events = handle.subscribe();
    std::thread::sleep(Duration::from_secs(1));
    let (mut latencies, mut cut_overs, mut samples) = (Vec::new(), Vec::new(), Vec::new());
    for swap in 0..20 {
        let (bytes, path) = &versions[swap % 2];
        let asked = Instant::now();
        let report = handle.swap(request(bytes, path))?;
        let after = report.after_batch.unwrap_or(0);
        loop {
            match events.blocking_recv() {
                Ok(PipelineEvent::BatchCompleted(batch)) if batch.batch.id > after => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(error) => anyhow::bail!("the pipeline ended during the benchmark: {error}"),
            }
        }
        latencies.push(asked.elapsed());
        cut_overs.push(Duration::from_micros(report.took_us));
        samples.push(report.sample_records);
        // Somewhere else in the next interval.
        std::thread::sleep(INTERVAL + Duration::from_millis(37 * (swap as u64 % 3)));
    }
    handle.stop(StopMode::Graceful);
    handle.wait()?;
    latencies.sort();
    cut_overs.sort();
    samples.sort();

    progress("throughput: unthrottled word counts, without and with a swap every 100 ms");
    let source = format!("type = \"generator\"\nlines = {lines}\nwords-per-line = 8");
    let text = wordcount_toml("swap-throughput", "100ms", 2, split_words, &source);
    let mut best = [0f64; 2];
    let mut throughput_swaps = 0;
    for round in 0..3 {
        for (with_swaps, best) in [false, true].into_iter().zip(best.iter_mut()) {
            let started = Instant::now();
            let handle = start(engine, &text, true)?;
            let stop = Arc::new(AtomicBool::new(false));
            let swapper = with_swaps.then(|| {
                let (handle, stop, versions) = (handle.clone(), stop.clone(), versions.clone());
                std::thread::spawn(move || {
                    let mut made = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(INTERVAL);
                        let (bytes, path) = &versions[made as usize % 2];
                        if handle.swap(request(bytes, path)).is_ok() {
                            made += 1;
                        }
                    }
                    made
                })
            });
            let summary = handle.wait()?;
            stop.store(true, Ordering::Relaxed);
            if let Some(swapper) = swapper {
                throughput_swaps += swapper.join().unwrap_or(0);
            }
            let rate = summary.records_in as f64 / started.elapsed().as_secs_f64();
            progress(&format!(
                "  round {round}: {} {:.2} M lines/s",
                if with_swaps {
                    "with swaps   "
                } else {
                    "without swaps"
                },
                rate / 1e6
            ));
            *best = best.max(rate);
        }
    }
    Ok(SwapBenchReport {
        swaps: latencies.len(),
        to_first_batch: [
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            *latencies.last().unwrap_or(&Duration::ZERO),
        ],
        cut_over: [
            percentile(&cut_overs, 0.5),
            *cut_overs.last().unwrap_or(&Duration::ZERO),
        ],
        sample_records: samples.get(samples.len() / 2).copied().unwrap_or(0),
        throughput: best,
        throughput_swaps,
    })
}

/// What the state-conversion benchmark measured.
#[derive(Debug, Clone)]
pub struct MigrationBenchReport {
    /// Keys with state when the swap was asked (each converted once).
    pub keys: u64,
    /// States the new version converted.
    pub migrated: u64,
    /// The conversion (both passes: a check of every state, then the
    /// conversion kept).
    pub migration: Duration,
    /// The whole swap in the driver: checks, conversion and cut-over.
    pub swap: Duration,
}

/// The components the state-conversion benchmark runs.
#[derive(Debug, Clone)]
pub struct MigrationPlugins {
    /// `split-words`: keys each line's word.
    pub split_words: std::path::PathBuf,
    /// `one`: every value becomes 1.
    pub one: std::path::PathBuf,
    /// `running-total` (state version 1).
    pub running_total: std::path::PathBuf,
    /// `running-total-v2` (state version 2, with `migrate-state`).
    pub running_total_v2: std::path::PathBuf,
}

/// Runs a running total over `keys` distinct keys (one line each, in files
/// under `scratch`), swaps it to the version of the other state format once
/// every key has its state, and measures the conversion.
pub fn run_migration(
    engine: &Engine,
    plugins: &MigrationPlugins,
    keys: u64,
    scratch: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<MigrationBenchReport> {
    let input = scratch.join(format!("weir-migration-bench-{}", std::process::id()));
    std::fs::create_dir_all(&input)?;
    let _cleanup = RemoveOnDrop(input.clone());
    let per_file = 100_000;
    for file in 0..keys.div_ceil(per_file) {
        let lines: String = (file * per_file..((file + 1) * per_file).min(keys))
            .map(|key| format!("key-{key:09}\n"))
            .collect();
        std::fs::write(input.join(format!("keys-{file:05}.txt")), lines)?;
    }
    let text = format!(
        r#"
[pipeline]
name = "migration-bench"
batch-interval = "200ms"
partitions = 2

[plugins]
split-words = {split:?}
one = {one:?}
running-total = {v1:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}

[[stage]]
name = "keyed"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "ones"
input = "keyed"
op = "map"
plugin = "one"

[[stage]]
name = "totals"
input = "ones"
op = "update-state-by-key"
plugin = "running-total"
partitions = 8

[[sink]]
input = "totals"
type = "console"
"#,
        split = plugins.split_words.display().to_string(),
        one = plugins.one.display().to_string(),
        v1 = plugins.running_total.display().to_string(),
        input = input.display().to_string(),
    );
    progress(&format!("state conversion: a running total over {keys} keys"));
    let mut prepared = engine.prepare(&text, Path::new("migration-bench.toml"))?;
    prepared.pipeline_mut().set_sinks(vec![(
        "totals".into(),
        Box::new(TotalSink(Arc::new(AtomicU64::new(0)))),
    )])?;
    let handle = engine.start(prepared, RunOptions::default())?;
    let started = Instant::now();
    while handle.metrics().stages.last().map_or(0, |stage| stage.records_in) < keys {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the running total did not take in {keys} keys in 10 minutes"
        );
        if let Some(error) = handle.status().error {
            anyhow::bail!("the pipeline failed: {error}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let v2 = std::fs::read(&plugins.running_total_v2)?;
    engine
        .runtime()
        .load_plugin_bytes(&plugins.running_total_v2, &v2)?;
    let report = handle.swap(SwapRequest {
        stage: "totals".into(),
        plugin: None,
        component: v2,
        path: plugins.running_total_v2.clone(),
        config: None,
        rule: RollbackRule::default(),
        mode: Rollout::Immediate,
        by: Some("bench".into()),
    })?;
    handle.stop(StopMode::Graceful);
    handle.wait()?;
    anyhow::ensure!(
        report.migrated_states == Some(keys),
        "the swap converted {:?} states, not one per key ({keys})",
        report.migrated_states
    );
    Ok(MigrationBenchReport {
        keys,
        migrated: report.migrated_states.unwrap_or(0),
        migration: Duration::from_micros(report.migration_us),
        swap: Duration::from_micros(report.took_us),
    })
}

/// Removes a directory when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
