//! `weir bench --suite many`: many small pipelines on one engine.
//!
//! - **Start time**: 50 word counts prepared and started one after the
//!   other; every one after the first finds its plugin compiled in the
//!   catalog.
//! - **Memory per idle pipeline**: resident memory with the 50 running and
//!   idle (their sources have nothing to read) over resident memory before.
//! - **Isolation with 20 pipelines**: a healthy word count's mean batch
//!   time among 18 light pipelines, alone, next to a neighbour that loops
//!   to its deadline on every batch, and next to one whose plugin
//!   legitimately spends 40 ms per record on 4 partitions: the healthy and
//!   light pipelines run throughout while the neighbour comes and goes;
//!   after a warm-up round, each condition three times, alternating.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use weir::engine::{Engine, PipelineHandle};
use weir::pipeline::{RunOptions, RunSummary, StopMode};

use weir::sink::Sink;

use super::bench::{
    DiscardSink, TotalSink, batch_times_over, looping_neighbour_toml, neighbour_toml, wordcount_toml,
};
use super::process::{peak_rss, resident_bytes, threads};

/// What the many-pipelines benchmark measured.
#[derive(Debug, Clone)]
pub struct ManyReport {
    /// Pipelines started.
    pub pipelines: usize,
    /// Prepare + start of the first pipeline (compiles its plugin).
    pub first_start: Duration,
    /// Median prepare + start of the others (plugin from the catalog).
    pub median_start: Duration,
    /// Slowest of the others.
    pub max_start: Duration,
    /// Compiles and catalog hits over the starts.
    pub compiles: u64,
    /// Catalog hits over the starts.
    pub hits: u64,
    /// Resident bytes per idle pipeline.
    pub bytes_per_idle_pipeline: f64,
    /// Worker threads of the engine.
    pub workers: usize,
    /// Threads of the process with every pipeline running.
    pub threads: usize,
    /// Healthy mean batch time among 20 pipelines: alone, next to a
    /// looping neighbour, next to a heavy one.
    pub isolation: [Duration; 3],
    /// Peak resident memory of the process.
    pub peak_rss: u64,
}

/// Starts the word count in `text`, its counts going to a sink that adds them up.
fn start(engine: &Engine, text: &str) -> anyhow::Result<PipelineHandle> {
    start_into(
        engine,
        text,
        "counts",
        Box::new(TotalSink(Arc::new(AtomicU64::new(0)))),
    )
}

/// Starts the pipeline in `text`, its sinks replaced by `sink` on `stream`.
fn start_into(
    engine: &Engine,
    text: &str,
    stream: &str,
    sink: Box<dyn Sink>,
) -> anyhow::Result<PipelineHandle> {
    let mut prepared = engine.prepare(text, Path::new("many.toml"))?;
    prepared
        .pipeline_mut()
        .set_sinks(vec![(stream.to_owned(), sink)])?;
    Ok(engine.start(prepared, RunOptions::default())?)
}

fn stop_all(handles: Vec<PipelineHandle>) -> anyhow::Result<Vec<RunSummary>> {
    for handle in &handles {
        handle.stop(StopMode::Graceful);
    }
    handles.iter().map(|handle| Ok(handle.wait()?)).collect()
}

/// Runs the benchmark with `split_words`, the `loop-forever` plugin and the
/// `busy` plugin; `progress` gets a line per step.
pub fn many(
    engine: &Engine,
    split_words: &Path,
    looping: &Path,
    busy: &Path,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<ManyReport> {
    const PIPELINES: usize = 50;
    let empty = tempfile::tempdir()?;
    let idle_source = format!(
        "type = \"files\"\npath = {:?}",
        empty.path().display().to_string()
    );
    let before = resident_bytes();
    let catalog = engine.catalog();
    let mut starts = Vec::new();
    let mut handles = Vec::new();
    for i in 0..PIPELINES {
        let text = wordcount_toml(&format!("idle-{i}"), "1s", 2, split_words, &idle_source);
        let started = Instant::now();
        handles.push(start(engine, &text)?);
        starts.push(started.elapsed());
    }
    std::thread::sleep(Duration::from_secs(2));
    let bytes_per_idle_pipeline = resident_bytes().saturating_sub(before) as f64 / PIPELINES as f64;
    let threads = threads();
    let after = engine.catalog();
    progress(&format!("{PIPELINES} idle pipelines started; {threads} threads"));
    stop_all(handles)?;
    let first_start = starts[0];
    let mut others = starts[1..].to_vec();
    others.sort();

    // Isolation: 18 light word counts, the measured one, and a neighbour.
    let light = |i: usize| {
        wordcount_toml(
            &format!("light-{i}"),
            "100ms",
            2,
            split_words,
            "type = \"generator\"\nrate = 1000",
        )
    };
    let healthy = wordcount_toml(
        "healthy",
        "100ms",
        2,
        split_words,
        "type = \"generator\"\nrate = 50000",
    );
    let looping_text = looping_neighbour_toml(looping);
    // The 18 light pipelines and the measured one run throughout; only the
    // neighbour comes and goes. A warm-up round (instances everywhere),
    // then each condition three times, alternating, so that a change of
    // machine load falls on all three; each condition's figure is its mean
    // batch time over its rounds. A round measures the batches that start
    // after its neighbour has run for half a second.
    let conditions = [
        None,
        Some(("looping", looping_text)),
        Some(("heavy", String::new())),
    ];
    let mut handles: Vec<PipelineHandle> = (0..18)
        .map(|i| start(engine, &light(i)))
        .collect::<Result<_, _>>()?;
    let measured = start(engine, &healthy)?;
    let rounds = std::iter::once(None).chain((0..3).flat_map(|_| (0..3).map(Some)));
    let mut totals = [(Duration::ZERO, 0u64); 3];
    for (round, condition) in rounds.enumerate() {
        let extra = condition.and_then(|c| conditions[c].clone());
        let neighbour_handle = match extra {
            None => None,
            Some(("heavy", _)) => {
                // 40 ms per record, 4 partitions: a heavy but legitimate plugin
                // (a map over the value "40", which `busy` spins for).
                // 400 records: ~8 s of work for 2 workers, past the round.
                let dir = tempfile::tempdir()?;
                std::fs::write(dir.path().join("records.txt"), "40\n".repeat(400))?;
                let source = format!("type = \"files\"\npath = {:?}", dir.path().display().to_string());
                let text = neighbour_toml("heavy", busy, 4, &source, "", "timeout = \"10s\"");
                Some((
                    start_into(engine, &text, "out", Box::new(DiscardSink))?,
                    Some(dir),
                ))
            }
            Some((_, text)) => Some((start_into(engine, &text, "out", Box::new(DiscardSink))?, None)),
        };
        std::thread::sleep(Duration::from_millis(500));
        let mut times = batch_times_over(&measured, Duration::from_secs(4));
        if let Some((handle, _dir)) = neighbour_handle {
            handle.stop(StopMode::Now);
            handle.wait()?;
        }
        let total: Duration = times.iter().sum();
        if let Some(condition) = condition {
            totals[condition].0 += total;
            totals[condition].1 += times.len() as u64;
        }
        times.sort();
        let percentile = |p: usize| times.get((times.len() * p / 100).min(times.len().saturating_sub(1)));
        let ms = |time: Option<&Duration>| time.map_or(0.0, |time| time.as_secs_f64() * 1e3);
        progress(&format!(
            "isolation round {round} ({}): healthy mean batch {:.2} ms over {} batches (p50 {:.2} / p99 {:.2} / max {:.2} ms)",
            condition.map_or("warm-up", |c| ["alone", "looping", "heavy"][c]),
            total.as_secs_f64() * 1e3 / times.len().max(1) as f64,
            times.len(),
            ms(percentile(50)),
            ms(percentile(99)),
            ms(times.last()),
        ));
    }
    handles.push(measured);
    stop_all(handles)?;
    anyhow::ensure!(
        totals.iter().all(|(_, batches)| *batches > 0),
        "the healthy pipeline completed no batch in a condition's rounds"
    );
    let isolation = totals.map(|(time, batches)| time / batches.max(1) as u32);
    Ok(ManyReport {
        pipelines: PIPELINES,
        first_start,
        median_start: others[others.len() / 2],
        max_start: others[others.len() - 1],
        compiles: after.compiles - catalog.compiles,
        hits: after.hits - catalog.hits,
        bytes_per_idle_pipeline,
        workers: engine.worker_threads(),
        threads,
        isolation,
        peak_rss: peak_rss(),
    })
}
