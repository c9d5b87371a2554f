//! `weir bench`: word count over a directory of generated text, with the
//! `split-words` Wasm plugin and with its native twin, in one run, so the
//! ratio between them is measured under the same machine load.
//!
//! The pipeline is `files → flat-map split-words → reduce-by-key count`, run
//! `--available-now` into a sink that only counts. Each variant runs
//! `rounds` times, alternating, and the best time of each is kept.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use weir::engine::{Engine, Prepared};
use weir::operator::native::library;
use weir::pipeline::{RunOptions, RunSummary, StopMode};
use weir::record::Partition;
use weir::sink::{BatchInfo, Sink, SinkError};
use weir::source::generator;

/// Words per generated line in the windowed and checkpoint benchmarks.
const WORDS_PER_LINE: u64 = 8;

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Lines of generated text.
    pub lines: u64,
    /// Words per line.
    pub words_per_line: usize,
    /// Partitions (and worker threads).
    pub partitions: usize,
    /// Runs of each variant.
    pub rounds: usize,
    /// The `split-words` component.
    pub plugin: PathBuf,
    /// Run only this variant (`wasm`, `native` or `wasm-10ms`); all when `None`.
    pub only: Option<String>,
}

/// The measured figures.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Words processed per run.
    pub words: u64,
    /// Best wall time of the Wasm pipeline.
    pub wasm: Duration,
    /// Best wall time of the native pipeline.
    pub native: Duration,
    /// Best wall time of the Wasm pipeline on an engine ticking every
    /// 10 ms (the tick before time-slicing) instead of every 1 ms.
    pub wasm_coarse_tick: Duration,
    /// Native time over Wasm time of each round (the two runs of a round
    /// follow each other, so a change in machine load between rounds
    /// cancels out of each ratio).
    pub round_ratios: Vec<f64>,
}

impl BenchReport {
    /// Words per second of the Wasm pipeline.
    pub fn wasm_words_per_second(&self) -> f64 {
        self.words as f64 / self.wasm.as_secs_f64()
    }

    /// Words per second of the native pipeline.
    pub fn native_words_per_second(&self) -> f64 {
        self.words as f64 / self.native.as_secs_f64()
    }

    /// The median of [`BenchReport::round_ratios`]; `NaN` without rounds of both.
    pub fn median_round_ratio(&self) -> f64 {
        let mut ratios = self.round_ratios.clone();
        ratios.sort_by(f64::total_cmp);
        match ratios.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        }
    }

    /// Wasm throughput as a fraction of native throughput (best times).
    pub fn ratio(&self) -> f64 {
        if self.wasm == Duration::MAX || self.native == Duration::MAX {
            return f64::NAN;
        }
        self.native.as_secs_f64() / self.wasm.as_secs_f64()
    }
}

/// Adds up the counts of the word-count output; keeps nothing. The total
/// must equal the number of words generated.
pub struct TotalSink(pub Arc<AtomicU64>);

impl Sink for TotalSink {
    fn write(&mut self, _: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let mut total = 0;
        for record in partitions.iter().flatten().flat_map(|chunk| chunk.iter()) {
            let count = std::str::from_utf8(record.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            total += count.ok_or_else(|| SinkError {
                sink: "bench".into(),
                message: format!("not a count: {:?}", String::from_utf8_lossy(record.value)),
            })?;
        }
        self.0.fetch_add(total, Ordering::Relaxed);
        Ok(())
    }
}

/// Writes `lines` generated lines into files of `per_file` lines under
/// `dir`, named `part-00000.txt`, `part-00001.txt`, …
pub fn generate_input(dir: &Path, lines: u64, words_per_line: usize, per_file: u64) -> anyhow::Result<()> {
    write_input(dir, lines, words_per_line, per_file).context("cannot write the benchmark input")
}

fn write_input(dir: &Path, lines: u64, words_per_line: usize, per_file: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let per_file = per_file.max(1);
    let mut line = Vec::new();
    let mut index = 0;
    let mut file_number = 0;
    while index < lines {
        let path = dir.join(format!("part-{file_number:05}.txt"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        for _ in 0..per_file.min(lines - index) {
            generator::line(0, index, words_per_line, &mut line);
            out.write_all(&line)?;
            out.write_all(b"\n")?;
            index += 1;
        }
        out.flush()?;
        file_number += 1;
    }
    Ok(())
}

/// The word-count pipeline of the demo and the benchmarks as a pipeline
/// file: `source` (the body of a `[[source]]` table) → flat-map
/// `split-words` (the component at `plugin`) → reduce-by-key count → a
/// console sink showing `max_records` records per batch.
pub fn wordcount_toml(name: &str, interval: &str, partitions: usize, plugin: &Path, source: &str) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "{interval}"
partitions = {partitions}

[plugins]
split-words = {plugin:?}

[[source]]
name = "lines"
{source}

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key"
reducer = "count"

[[sink]]
input = "counts"
type = "console"
max-records = 8
"#,
        plugin = plugin.display().to_string(),
    )
}

/// Prepares the pipeline in `text` on `engine` (with the native twin of
/// `split-words` when `native`), its sinks replaced by `sink` on `stream`.
fn prepare(
    engine: &Engine,
    text: &str,
    native: bool,
    stream: &str,
    sink: Box<dyn Sink>,
) -> anyhow::Result<Prepared> {
    let mut prepared = engine.prepare_with(text, Path::new("bench.toml"), |registry| {
        if native {
            registry.register_transform("split-words", library::split_words());
        }
    })?;
    prepared
        .pipeline_mut()
        .set_sinks(vec![(stream.to_owned(), sink)])?;
    Ok(prepared)
}

/// Runs `prepared` to the end of its input; returns its wall time and summary.
fn run_available(engine: &Engine, prepared: Prepared) -> anyhow::Result<(Duration, RunSummary)> {
    let started = Instant::now();
    let handle = engine.start(
        prepared,
        RunOptions {
            available_now: true,
            ..RunOptions::default()
        },
    )?;
    let summary = handle.wait()?;
    Ok((started.elapsed(), summary))
}

fn run_once(engine: &Engine, text: &str, native: bool) -> anyhow::Result<(Duration, u64)> {
    let counted = Arc::new(AtomicU64::new(0));
    let prepared = prepare(
        engine,
        text,
        native,
        "counts",
        Box::new(TotalSink(counted.clone())),
    )?;
    let (elapsed, _) = run_available(engine, prepared)?;
    Ok((elapsed, counted.load(Ordering::Relaxed)))
}

/// Runs the benchmark; `progress` receives a line per run.
pub fn run(
    engine: &Engine,
    coarse_tick: &Engine,
    settings: &BenchSettings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<BenchReport> {
    let scratch = tempdir()?;
    let input = scratch.join("input");
    progress(&format!(
        "generating {} lines of {} words...",
        settings.lines, settings.words_per_line
    ));
    generate_input(&input, settings.lines, settings.words_per_line, 100_000)?;
    let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
    let text = wordcount_toml(
        "bench-wordcount",
        "1s",
        settings.partitions,
        &settings.plugin,
        &source,
    );

    let words = settings.lines * settings.words_per_line as u64;
    let (mut best_wasm, mut best_native, mut best_coarse) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut round_ratios = Vec::new();
    for round in 1..=settings.rounds.max(1) {
        let (mut wasm_time, mut native_time, mut coarse_time) = (None, None, None);
        let mut variants = [
            ("wasm", engine, false, &mut best_wasm, &mut wasm_time),
            ("native", engine, true, &mut best_native, &mut native_time),
            (
                "wasm-10ms",
                coarse_tick,
                false,
                &mut best_coarse,
                &mut coarse_time,
            ),
        ];
        // Each variant takes each place in the order in turn: a run right
        // after another can be slower or faster for reasons of its own.
        variants.rotate_left((round - 1) % 3);
        for (name, on, native, best, time) in variants {
            if settings.only.as_deref().is_some_and(|only| only != name) {
                continue;
            }
            let (elapsed, counted) = run_once(on, &text, native)?;
            if counted != words {
                return Err(anyhow!(
                    "the {name} run counted {counted} words instead of {words}"
                ));
            }
            progress(&format!(
                "round {round} {name:>9}: {:>8.3} s  {:>6.2} M words/s",
                elapsed.as_secs_f64(),
                words as f64 / elapsed.as_secs_f64() / 1e6
            ));
            *best = (*best).min(elapsed);
            *time = Some(elapsed);
        }
        if let (Some(wasm), Some(native)) = (wasm_time, native_time) {
            round_ratios.push(native.as_secs_f64() / wasm.as_secs_f64());
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(BenchReport {
        words,
        wasm: best_wasm,
        native: best_native,
        wasm_coarse_tick: best_coarse,
        round_ratios,
    })
}

/// What the latency benchmark measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// The batch interval.
    pub interval: Duration,
    /// Lines per second the generator produced.
    pub rate: u64,
    /// How long the pipeline ran.
    pub duration: Duration,
    /// The run's figures (batches, slow batches, processing times).
    pub summary: RunSummary,
}

/// Runs generator → split-words (Wasm) → count at `rate` lines per second
/// with a `interval` batch interval for `duration`, and reports whether
/// every batch finished within its interval.
pub fn latency(
    engine: &Engine,
    plugin: &Path,
    interval: Duration,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<LatencyReport> {
    let text = wordcount_toml(
        "bench-latency",
        &humantime::format_duration(interval).to_string(),
        2,
        plugin,
        &format!("type = \"generator\"\nrate = {rate}"),
    );
    let counted = Arc::new(AtomicU64::new(0));
    let prepared = prepare(engine, &text, false, "counts", Box::new(TotalSink(counted)))?;
    let handle = engine.start(prepared, RunOptions::default())?;
    std::thread::sleep(duration);
    handle.stop(StopMode::Graceful);
    let summary = handle.wait()?;
    Ok(LatencyReport {
        interval,
        rate,
        duration,
        summary,
    })
}

/// Healthy pipeline's figures alone and next to a looping neighbour.
#[derive(Debug, Clone)]
pub struct IsolationReport {
    /// The healthy word count alone.
    pub alone: RunSummary,
    /// The healthy word count with a neighbour whose plugin loops to its
    /// deadline on every batch, in the same process.
    pub with_neighbour: RunSummary,
    /// The neighbour's own figures (skipped batches).
    pub neighbour: RunSummary,
}

impl IsolationReport {
    /// Mean batch processing time with the neighbour over alone.
    pub fn slowdown(&self) -> f64 {
        let mean = |s: &RunSummary| s.total_batch_time.as_secs_f64() / s.batches.max(1) as f64;
        mean(&self.with_neighbour) / mean(&self.alone)
    }
}

/// Discards everything.
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn write(&mut self, _: BatchInfo, _: &[Partition]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Runs a healthy word count (generator at 50,000 lines/s, 100 ms batches)
/// for `duration` alone, then again next to a pipeline whose plugin loops
/// until its 20 ms deadline on every batch (`on-error = "skip-batch"`).
pub fn isolation(
    engine: &Engine,
    split_words: &Path,
    looping: &Path,
    duration: Duration,
) -> anyhow::Result<IsolationReport> {
    let healthy = wordcount_toml(
        "healthy",
        "100ms",
        2,
        split_words,
        "type = \"generator\"\nrate = 50000",
    );
    let neighbour = format!(
        r#"
[pipeline]
name = "looping"
batch-interval = "100ms"
partitions = 2
[plugins]
loop = {looping:?}
[[source]]
name = "words"
type = "generator"
rate = 2000
words-per-line = 1
[[stage]]
name = "out"
input = "words"
op = "map"
plugin = "loop"
config = {{ trigger = "the" }}
limits = {{ timeout = "20ms" }}
on-error = "skip-batch"
quarantine-after = 1000000
[[sink]]
input = "out"
type = "console"
"#,
        looping = looping.display().to_string()
    );
    let start = |text: &str, stream: &str, sink: Box<dyn Sink>| -> anyhow::Result<_> {
        let prepared = prepare(engine, text, false, stream, sink)?;
        Ok(engine.start(prepared, RunOptions::default())?)
    };
    let finish = |handle: weir::engine::PipelineHandle| -> anyhow::Result<RunSummary> {
        handle.stop(StopMode::Graceful);
        Ok(handle.wait()?)
    };
    let counts = || -> Box<dyn Sink> { Box::new(TotalSink(Arc::new(AtomicU64::new(0)))) };
    let alone = start(&healthy, "counts", counts())?;
    std::thread::sleep(duration);
    let alone = finish(alone)?;
    let with = start(&healthy, "counts", counts())?;
    let looping = start(&neighbour, "out", Box::new(DiscardSink))?;
    std::thread::sleep(duration);
    let with_neighbour = finish(with)?;
    let neighbour = finish(looping)?;
    Ok(IsolationReport {
        alone,
        with_neighbour,
        neighbour,
    })
}

/// The windowed word count of the window and checkpoint benchmarks: files
/// matching `glob` in `input`, one per one-second batch under the
/// deterministic clock → `split-words` → counts over a 30 s window sliding
/// every 10 s (with the built-in inverse) → console; checkpointed every 10
/// batches into `checkpoint` when given.
fn windowed_wordcount_toml(
    name: &str,
    partitions: usize,
    plugin: &Path,
    input: &Path,
    glob: &str,
    checkpoint: Option<&Path>,
) -> String {
    let checkpoint = checkpoint
        .map(|dir| {
            format!(
                "checkpoint-dir = {:?}\n[checkpoint]\nevery-batches = 10\n",
                dir.display().to_string()
            )
        })
        .unwrap_or_default();
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "1s"
partitions = {partitions}
clock = "deterministic"
chunk-records = 2048
{checkpoint}
[plugins]
split-words = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
glob = "{glob}"
max-files-per-batch = 1

[[stage]]
name = "words"
input = "lines"
op = "flat-map"
plugin = "split-words"

[[stage]]
name = "counts"
input = "words"
op = "reduce-by-key-and-window"
reducer = "count"
length = "30s"
slide = "10s"
inverse = true

[[sink]]
input = "counts"
type = "console"
"#,
        plugin = plugin.display().to_string(),
        input = input.display().to_string(),
    )
}

/// What the windowed word-count benchmark measured.
#[derive(Debug, Clone)]
pub struct WindowReport {
    /// Lines generated.
    pub lines: u64,
    /// Words counted.
    pub words: u64,
    /// Micro-batches run (one second of deterministic time each).
    pub batches: u64,
    /// Best wall time with the Wasm `split-words`.
    pub wasm: Duration,
    /// Best wall time with its native twin.
    pub native: Duration,
    /// State held at the end of the full run.
    pub state_full: weir::state::StateSize,
    /// State held at the end of a run over the first 40 batches: equal to
    /// `state_full` when state does not grow with the number of batches.
    pub state_fewer: weir::state::StateSize,
    /// Batches of that run.
    pub fewer_batches: u64,
}

/// Checks every emitted window of the windowed word count: its counts add
/// up to the words of the batches it covers.
struct WindowCheckSink {
    words_per_batch: u64,
    total_words: u64,
    length: u64,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    windows: Arc<AtomicU64>,
}

impl Sink for WindowCheckSink {
    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let mut total = 0u64;
        for record in partitions.iter().flatten().flat_map(|chunk| chunk.iter()) {
            total += std::str::from_utf8(record.value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX / 4);
        }
        if total == 0 {
            return Ok(());
        }
        self.windows.fetch_add(1, Ordering::Relaxed);
        let first = (batch.id + 1).saturating_sub(self.length);
        let expected = ((batch.id + 1) * self.words_per_batch).min(self.total_words)
            - (first * self.words_per_batch).min(self.total_words);
        if total != expected {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "the window ending at batch {} counted {total} words instead of {expected}",
                batch.id
            ));
        }
        Ok(())
    }
}

/// Runs the windowed word count: `lines` generated lines in 50 files, one
/// per one-second batch (deterministic time) → split-words → a 30 s window
/// sliding every 10 s (incremental, with the built-in inverse of count),
/// Wasm then native, `rounds` times each; then once over the first 40
/// files, to compare state (both runs are past the window's length).
pub fn window(
    engine: &Engine,
    plugin: &Path,
    lines: u64,
    partitions: usize,
    rounds: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<WindowReport> {
    const BATCHES: u64 = 50;
    let per_batch = lines.div_ceil(BATCHES).max(1);
    let scratch = tempdir()?;
    let input = scratch.join("window-input");
    progress(&format!("generating {lines} lines in {BATCHES} files..."));
    generate_input(&input, lines, WORDS_PER_LINE as usize, per_batch)?;
    // The first 40 files: part-00000 … part-00039.
    let text = |glob: &str| windowed_wordcount_toml("bench-window", partitions, plugin, &input, glob, None);
    let run_once = |glob: &str, native: bool| -> anyhow::Result<(Duration, RunSummary)> {
        let failure = Arc::new(std::sync::Mutex::new(None));
        let windows = Arc::new(AtomicU64::new(0));
        let sink = WindowCheckSink {
            words_per_batch: per_batch * WORDS_PER_LINE,
            total_words: lines * WORDS_PER_LINE,
            length: 30,
            failure: failure.clone(),
            windows: windows.clone(),
        };
        let prepared = prepare(engine, &text(glob), native, "counts", Box::new(sink))?;
        let (elapsed, summary) = run_available(engine, prepared)?;
        if let Some(failure) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(anyhow!("windowed word count: {failure}"));
        }
        if windows.load(Ordering::Relaxed) == 0 {
            return Err(anyhow!("windowed word count: no window was emitted"));
        }
        Ok((elapsed, summary))
    };
    let words = lines * WORDS_PER_LINE;
    let (mut wasm, mut native) = (Duration::MAX, Duration::MAX);
    let mut full = None;
    for round in 1..=rounds.max(1) {
        for (name, native_twin, best) in [("wasm", false, &mut wasm), ("native", true, &mut native)] {
            let (elapsed, summary) = run_once("part-*", native_twin)?;
            progress(&format!(
                "window round {round} {name:>6}: {:>8.3} s  {:>6.2} M words/s",
                elapsed.as_secs_f64(),
                words as f64 / elapsed.as_secs_f64() / 1e6
            ));
            *best = (*best).min(elapsed);
            full.get_or_insert(summary);
        }
    }
    let full = full.expect("at least one round");
    let (_, fewer) = run_once("part-000[0-3]*", false)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(WindowReport {
        lines,
        words,
        batches: full.batches,
        wasm,
        native,
        state_full: full.state,
        state_fewer: fewer.state,
        fewer_batches: fewer.batches,
    })
}

/// What the checkpoint benchmark measured.
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    /// Words counted per run.
    pub words: u64,
    /// Batches per run.
    pub batches: u64,
    /// Best wall time without checkpoints.
    pub without: Duration,
    /// Best wall time with a checkpoint every 10 batches.
    pub with: Duration,
    /// Checkpoint figures of the last checkpointed run.
    pub stats: weir::pipeline::durability::CheckpointStats,
}

impl CheckpointReport {
    /// Throughput with checkpoints over throughput without.
    pub fn ratio(&self) -> f64 {
        self.without.as_secs_f64() / self.with.as_secs_f64()
    }
}

/// Word count over a sliding window (100 one-second batches, one generated
/// file each, deterministic time, Wasm `split-words`), without checkpoints
/// and with a checkpoint every 10 batches (batch log, window state, sources'
/// positions), alternating, `rounds` times each, in one run.
pub fn checkpoints(
    engine: &Engine,
    plugin: &Path,
    lines: u64,
    partitions: usize,
    rounds: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<CheckpointReport> {
    const BATCHES: u64 = 100;
    let scratch = tempdir()?;
    let input = scratch.join("checkpoint-input");
    progress(&format!("generating {lines} lines in {BATCHES} files..."));
    generate_input(
        &input,
        lines,
        WORDS_PER_LINE as usize,
        lines.div_ceil(BATCHES).max(1),
    )?;
    let text = |checkpoint: Option<&Path>| {
        windowed_wordcount_toml("bench-checkpoints", partitions, plugin, &input, "*", checkpoint)
    };
    let run_once = |checkpoint: Option<&Path>| -> anyhow::Result<(Duration, RunSummary)> {
        let prepared = prepare(engine, &text(checkpoint), false, "counts", Box::new(DiscardSink))?;
        run_available(engine, prepared)
    };
    let (mut without, mut with) = (Duration::MAX, Duration::MAX);
    let mut stats = Default::default();
    let mut batches = 0;
    for round in 1..=rounds.max(1) {
        let (elapsed, summary) = run_once(None)?;
        batches = summary.batches;
        progress(&format!(
            "checkpoints round {round}   none: {:>8.3} s",
            elapsed.as_secs_f64()
        ));
        without = without.min(elapsed);
        let dir = scratch.join(format!("checkpoints-{round}"));
        let (elapsed, summary) = run_once(Some(&dir))?;
        progress(&format!(
            "checkpoints round {round} every 10: {:>8.3} s ({} checkpoints)",
            elapsed.as_secs_f64(),
            summary.checkpoints.written
        ));
        with = with.min(elapsed);
        stats = summary.checkpoints;
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(CheckpointReport {
        words: lines * WORDS_PER_LINE,
        batches,
        without,
        with,
        stats,
    })
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weir-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
