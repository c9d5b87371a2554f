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
