//! `weir bench`: word count over a directory of generated text, with the
//! `split-words` Wasm plugin and with its native twin, in one run, so the
//! ratio between them is measured under the same machine load; and the same
//! word count end to end, as the `weir run --available-now` binary in a
//! process of its own (start and sink included).
//!
//! The pipeline is `files → flat-map split-words → reduce-by-key count`:
//! in-process `--available-now` into a sink that only counts, and end to
//! end into a `jsonl` files sink whose output is read back and added up.
//! The text is one of the [`corpus`](super::corpus) kinds; every run's
//! counts must add up to the words generated. Each variant runs `rounds`
//! times, in a rotating order, and the best time of each is kept; each
//! run's peak resident memory is measured too (this process's, reset before
//! each in-process run; the child's, from `wait4`, end to end).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use weir::engine::PipelineHandle;
use weir::engine::{Engine, Prepared};
use weir::operator::native::library;
use weir::pipeline::live::BatchReport;
use weir::pipeline::{PipelineEvent, PipelineMetrics, RunOptions, RunSummary, StopMode};
use weir::record::Partition;
use weir::sink::{BatchInfo, Sink, SinkError};
use weir::source::generator;

use super::corpus::{Corpus, CorpusKind, CorpusStats};
use super::end_to_end;
use super::process::{peak_rss, reset_peak_rss};

/// Words per generated line in the windowed and checkpoint benchmarks.
const WORDS_PER_LINE: u64 = 8;

/// Settings of a benchmark run.
#[derive(Debug, Clone)]
pub struct BenchSettings {
    /// Lines of generated text.
    pub lines: u64,
    /// Which text.
    pub corpus: CorpusKind,
    /// Partitions (and worker threads).
    pub partitions: usize,
    /// Runs of each variant.
    pub rounds: usize,
    /// The `split-words` component.
    pub plugin: PathBuf,
    /// The `weir` binary the end-to-end variant runs.
    pub weir: PathBuf,
    /// Run only this variant (see [`Variant::name`]); all when `None`.
    pub only: Option<String>,
}

/// One way of running the word count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// In process, the Wasm `split-words`.
    Wasm,
    /// In process, its native twin.
    Native,
    /// In process, Wasm on an engine whose epoch ticks every 10 ms (the
    /// tick before time-slicing) instead of every 1 ms.
    WasmCoarseTick,
    /// The `weir run --available-now` binary in a child process, Wasm,
    /// into a `jsonl` files sink.
    EndToEnd,
}

impl Variant {
    /// Every variant, in the order of the first round.
    pub const ALL: [Variant; 4] = [Self::Wasm, Self::Native, Self::WasmCoarseTick, Self::EndToEnd];

    /// Its name in progress lines and for `--only`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Native => "native",
            Self::WasmCoarseTick => "wasm-10ms",
            Self::EndToEnd => "e2e",
        }
    }
}

/// What one variant measured over its rounds.
#[derive(Debug, Clone, Copy)]
pub struct VariantFigures {
    /// Its best wall time.
    pub best: Duration,
    /// The highest peak resident memory of its runs.
    pub peak_rss: u64,
    /// CPU time of its best run (end to end only: the child's).
    pub cpu: Option<Duration>,
}

/// The measured figures.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The text, described.
    pub corpus: String,
    /// What was generated.
    pub input: CorpusStats,
    /// Wall time of generating it.
    pub generation: Duration,
    /// Per variant (in [`Variant::ALL`] order), when it ran.
    pub figures: [Option<VariantFigures>; 4],
    /// Native time over Wasm time of each round (the two runs of a round
    /// follow each other, so a change in machine load between rounds
    /// cancels out of each ratio).
    pub round_ratios: Vec<f64>,
}

impl BenchReport {
    /// The figures of `variant`, when it ran.
    pub fn figures(&self, variant: Variant) -> Option<VariantFigures> {
        let index = Variant::ALL.iter().position(|&v| v == variant)?;
        self.figures[index]
    }

    /// Words per second of `variant`'s best run.
    pub fn words_per_second(&self, variant: Variant) -> Option<f64> {
        self.figures(variant)
            .map(|figures| self.input.words as f64 / figures.best.as_secs_f64())
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

    /// Wasm throughput as a fraction of native throughput (best times);
    /// `NaN` unless both ran.
    pub fn ratio(&self) -> f64 {
        match (self.figures(Variant::Wasm), self.figures(Variant::Native)) {
            (Some(wasm), Some(native)) => native.best.as_secs_f64() / wasm.best.as_secs_f64(),
            _ => f64::NAN,
        }
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
                superseded: false,
            })?;
        }
        self.0.fetch_add(total, Ordering::Relaxed);
        Ok(())
    }
}

/// Writes `lines` lines of the generator's 8-word text into files of
/// `per_file` lines under `dir`, named `part-00000.txt`, `part-00001.txt`, …
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
    wordcount_toml_into(
        name,
        interval,
        partitions,
        plugin,
        source,
        "type = \"console\"\nmax-records = 8",
    )
}

/// [`wordcount_toml`] with `sink` as the body of its `[[sink]]` table.
pub fn wordcount_toml_into(
    name: &str,
    interval: &str,
    partitions: usize,
    plugin: &Path,
    source: &str,
    sink: &str,
) -> String {
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
{sink}
"#,
        plugin = plugin.display().to_string(),
    )
}

/// Prepares the pipeline in `text` on `engine` (with the native twin of
/// `split-words` when `native`), its sinks replaced by `sink` on `stream`.
pub fn prepare(
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

/// Files the word-count input is written in.
const INPUT_FILES: u64 = 100;

/// Runs the benchmark on `settings.corpus`; `progress` receives a line per run.
pub fn run(
    engine: &Engine,
    coarse_tick: &Engine,
    settings: &BenchSettings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<BenchReport> {
    let scratch_dir = tempdir()?;
    let scratch = scratch_dir.path();
    let input = scratch.join("input");
    let corpus = Corpus::new(settings.corpus, 0);
    progress(&format!(
        "generating {} lines of {} in {INPUT_FILES} files...",
        settings.lines,
        corpus.describe()
    ));
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stats = corpus
        .write_files(
            &input,
            settings.lines,
            settings.lines.div_ceil(INPUT_FILES),
            threads,
        )
        .context("cannot write the benchmark input")?;
    let generation = started.elapsed();
    progress(&format!(
        "generated {} words, {:.1} MB in {:.2} s",
        stats.words,
        stats.bytes as f64 / 1e6,
        generation.as_secs_f64()
    ));
    let source = format!("type = \"files\"\npath = {:?}", input.display().to_string());
    let text = wordcount_toml(
        "bench-wordcount",
        "1s",
        settings.partitions,
        &settings.plugin,
        &source,
    );

    let words = stats.words;
    let mut figures: [Option<VariantFigures>; 4] = [None; 4];
    let mut round_ratios = Vec::new();
    for round in 1..=settings.rounds.max(1) {
        let mut times: [Option<Duration>; 4] = [None; 4];
        // Each variant takes each place in the order in turn: a run right
        // after another can be slower or faster for reasons of its own.
        let mut order: Vec<usize> = (0..Variant::ALL.len()).collect();
        order.rotate_left((round - 1) % Variant::ALL.len());
        for index in order {
            let variant = Variant::ALL[index];
            let name = variant.name();
            if settings.only.as_deref().is_some_and(|only| only != name) {
                continue;
            }
            let (elapsed, counted, peak, cpu) = match variant {
                Variant::EndToEnd => {
                    let run = end_to_end::wordcount(
                        &settings.weir,
                        &input,
                        &settings.plugin,
                        settings.partitions,
                        &scratch.join("e2e"),
                    )?;
                    progress(&format!(
                        "end to end: {} output records in {} batches",
                        run.records, run.batches
                    ));
                    (
                        run.usage.elapsed,
                        run.counted,
                        run.usage.peak_rss,
                        Some(run.usage.cpu),
                    )
                }
                _ => {
                    let on = if variant == Variant::WasmCoarseTick {
                        coarse_tick
                    } else {
                        engine
                    };
                    reset_peak_rss();
                    let (elapsed, counted) = run_once(on, &text, variant == Variant::Native)?;
                    (elapsed, counted, peak_rss(), None)
                }
            };
            if counted != words {
                return Err(anyhow!(
                    "the {name} run counted {counted} words instead of {words}"
                ));
            }
            progress(&format!(
                "round {round} {name:>9}: {:>8.3} s  {:>6.2} M words/s  peak RSS {:>6.1} MB{}",
                elapsed.as_secs_f64(),
                words as f64 / elapsed.as_secs_f64() / 1e6,
                peak as f64 / 1e6,
                cpu.map(|cpu| format!("  CPU {:.2} s", cpu.as_secs_f64()))
                    .unwrap_or_default()
            ));
            let slot = &mut figures[index];
            let best = slot.map_or(Duration::MAX, |f| f.best);
            *slot = Some(VariantFigures {
                best: best.min(elapsed),
                peak_rss: slot.map_or(0, |f| f.peak_rss).max(peak),
                cpu: if elapsed < best {
                    cpu
                } else {
                    slot.and_then(|f| f.cpu)
                },
            });
            times[index] = Some(elapsed);
        }
        if let (Some(wasm), Some(native)) = (times[0], times[1]) {
            round_ratios.push(native.as_secs_f64() / wasm.as_secs_f64());
        }
    }
    Ok(BenchReport {
        corpus: corpus.describe(),
        input: stats,
        generation,
        figures,
        round_ratios,
    })
}

/// Collects a pipeline's completed batches from its events, on a thread of
/// its own, until the pipeline ends.
pub struct BatchCollector {
    thread: std::thread::JoinHandle<(Vec<BatchReport>, u64)>,
}

impl BatchCollector {
    /// Starts collecting the batches `handle` completes from now on.
    pub fn start(handle: &PipelineHandle) -> Self {
        let mut events = handle.subscribe();
        let thread = std::thread::spawn(move || {
            use tokio::sync::broadcast::error::RecvError;
            let (mut batches, mut lost) = (Vec::new(), 0);
            loop {
                match events.blocking_recv() {
                    Ok(PipelineEvent::BatchCompleted(report)) => batches.push(report),
                    Ok(PipelineEvent::StatusChanged { state }) if state.is_final() => break,
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => lost += missed,
                    Err(RecvError::Closed) => break,
                }
            }
            (batches, lost)
        });
        Self { thread }
    }

    /// The batches completed (in order), and how many events were missed;
    /// call once the pipeline has ended.
    pub fn finish(self) -> (Vec<BatchReport>, u64) {
        self.thread.join().unwrap_or_default()
    }
}

/// Median, 99th percentile and maximum of some values (durations unless
/// said otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread<T = Duration> {
    /// Median.
    pub p50: T,
    /// 99th percentile (the value at rank round(0.99 × (n − 1)), as the
    /// engine's live metrics compute it).
    pub p99: T,
    /// Maximum.
    pub max: T,
}

impl<T: Ord + Copy + Default> Spread<T> {
    /// The spread of `values`; defaults (zeros) when empty.
    pub fn of(mut values: Vec<T>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// What the latency benchmark measured.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// The batch interval.
    pub interval: Duration,
    /// Lines per second the generator produced.
    pub rate: u64,
    /// How long the pipeline ran after its warm-up.
    pub duration: Duration,
    /// Batches measured (those completed after the warm-up).
    pub batches: usize,
    /// Of those, batches whose processing took longer than the interval.
    pub over_interval: usize,
    /// Lines in each of those batches.
    pub lines_per_batch: Spread<u64>,
    /// Processing time (stages and sinks) of those batches.
    pub processing: Spread,
    /// Scheduling delay (from when a batch was due to when its
    /// processing started) of those batches.
    pub scheduling: Spread,
    /// Total delay (scheduling delay plus processing) of those batches.
    pub total: Spread,
    /// Events the collector missed (it must keep up: 0).
    pub lost_events: u64,
    /// The engine's live metrics just before the stop (over the last 1,000
    /// batches, the warm-up included).
    pub live: PipelineMetrics,
    /// The whole run's figures.
    pub summary: RunSummary,
    /// Peak resident memory of this process during the run.
    pub peak_rss: u64,
}

/// Runs generator → split-words (Wasm) → count at `rate` lines per second
/// with an `interval` batch interval for `warm_up` then `duration`, and
/// reports the batch times of the batches after the warm-up (the first
/// batches also instantiate the plugin on every worker).
pub fn latency(
    engine: &Engine,
    plugin: &Path,
    interval: Duration,
    rate: u64,
    warm_up: Duration,
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
    reset_peak_rss();
    let handle = engine.start(prepared, RunOptions::default())?;
    let collector = BatchCollector::start(&handle);
    std::thread::sleep(warm_up);
    let measured_from = handle.status().last_batch.map_or(0, |mark| mark.id + 1);
    std::thread::sleep(duration);
    let measured_to = handle.status().last_batch.map_or(0, |mark| mark.id);
    let live = handle.metrics();
    handle.stop(StopMode::Graceful);
    let summary = handle.wait()?;
    let peak_rss = peak_rss();
    let (batches, lost_events) = collector.finish();
    let measured: Vec<&BatchReport> = batches
        .iter()
        .filter(|report| (measured_from..=measured_to).contains(&report.batch.id))
        .collect();
    let spread = |of: fn(&BatchReport) -> Duration| Spread::of(measured.iter().map(|r| of(r)).collect());
    Ok(LatencyReport {
        interval,
        rate,
        duration,
        batches: measured.len(),
        over_interval: measured.iter().filter(|r| r.processing_time > interval).count(),
        lines_per_batch: Spread::of(measured.iter().map(|r| r.records_in).collect()),
        processing: spread(|r| r.processing_time),
        scheduling: spread(|r| r.scheduling_delay),
        total: spread(|r| r.total_delay),
        lost_events,
        live,
        summary,
        peak_rss,
    })
}

/// Healthy pipeline's figures alone and next to a looping neighbour.
#[derive(Debug, Clone)]
pub struct IsolationReport {
    /// The healthy word count's batch processing times alone.
    pub alone: Vec<Duration>,
    /// Its batch processing times with a neighbour whose plugin loops to
    /// its deadline on every batch, in the same process.
    pub with_neighbour: Vec<Duration>,
    /// The neighbour's batches skipped, over its runs.
    pub neighbour_skipped_batches: u64,
}

impl IsolationReport {
    /// Mean batch processing time with the neighbour over alone.
    pub fn slowdown(&self) -> f64 {
        mean(&self.with_neighbour).as_secs_f64() / mean(&self.alone).as_secs_f64().max(1e-9)
    }
}

/// The mean of `times` (zero for none).
pub fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len().max(1) as u32
}

/// The processing times of the batches `handle` completes over the next
/// `window` (those that start in it: a batch in progress when it opens is
/// left out).
pub fn batch_times_over(handle: &weir::engine::PipelineHandle, window: Duration) -> Vec<Duration> {
    let last_before = handle
        .recent_batches(1)
        .last()
        .map(|detail| detail.report.batch.id);
    std::thread::sleep(window);
    handle
        .recent_batches(weir::pipeline::live::RECENT_BATCHES)
        .into_iter()
        .filter(|detail| last_before.is_none_or(|last| detail.report.batch.id > last + 1))
        .map(|detail| detail.report.processing_time)
        .collect()
}

/// Discards everything.
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn write(&mut self, _: BatchInfo, _: &[Partition]) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A neighbour for the isolation benchmarks: `source` (its stream named
/// `words`) → a `map` stage `out` with `plugin`, its `config` line and
/// `limits`, skipping a failed batch and never quarantined → console.
pub fn neighbour_toml(
    name: &str,
    plugin: &Path,
    partitions: usize,
    source: &str,
    config: &str,
    limits: &str,
) -> String {
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "100ms"
partitions = {partitions}
[plugins]
p = {plugin:?}
[[source]]
name = "words"
{source}
[[stage]]
name = "out"
input = "words"
op = "map"
plugin = "p"
{config}
limits = {{ {limits} }}
on-error = "skip-batch"
quarantine-after = 1000000
[[sink]]
input = "out"
type = "console"
"#,
        plugin = plugin.display().to_string()
    )
}

/// The looping neighbour: `loop-forever` (`looping`) loops until its 20 ms
/// deadline on every batch, on 2 partitions.
pub fn looping_neighbour_toml(looping: &Path) -> String {
    neighbour_toml(
        "looping",
        looping,
        2,
        "type = \"generator\"\nrate = 2000\nwords-per-line = 1",
        "config = { trigger = \"the\" }",
        "timeout = \"20ms\"",
    )
}

/// Runs a healthy word count (generator at 50,000 lines/s, 100 ms batches)
/// and measures its batches over `window` alone, then over `window` next to
/// a pipeline whose plugin loops until its 20 ms deadline on every batch
/// (`on-error = "skip-batch"`), twice, alternating. The healthy pipeline
/// runs throughout (its start is not measured); the neighbour comes and
/// goes, and each of its runs gets half a second before its window opens.
pub fn isolation(
    engine: &Engine,
    split_words: &Path,
    looping: &Path,
    window: Duration,
) -> anyhow::Result<IsolationReport> {
    let healthy = wordcount_toml(
        "healthy",
        "100ms",
        2,
        split_words,
        "type = \"generator\"\nrate = 50000",
    );
    let neighbour = looping_neighbour_toml(looping);
    let start = |text: &str, stream: &str, sink: Box<dyn Sink>| -> anyhow::Result<_> {
        let prepared = prepare(engine, text, false, stream, sink)?;
        Ok(engine.start(prepared, RunOptions::default())?)
    };
    let finish = |handle: weir::engine::PipelineHandle, mode: StopMode| -> anyhow::Result<RunSummary> {
        handle.stop(mode);
        Ok(handle.wait()?)
    };
    let measured = start(
        &healthy,
        "counts",
        Box::new(TotalSink(Arc::new(AtomicU64::new(0)))),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut report = IsolationReport {
        alone: Vec::new(),
        with_neighbour: Vec::new(),
        neighbour_skipped_batches: 0,
    };
    for _ in 0..2 {
        report.alone.extend(batch_times_over(&measured, window / 2));
        let looping = start(&neighbour, "out", Box::new(DiscardSink))?;
        std::thread::sleep(Duration::from_millis(500));
        report
            .with_neighbour
            .extend(batch_times_over(&measured, window / 2));
        report.neighbour_skipped_batches += finish(looping, StopMode::Now)?.skipped_batches;
    }
    finish(measured, StopMode::Graceful)?;
    anyhow::ensure!(
        !report.alone.is_empty() && !report.with_neighbour.is_empty(),
        "the healthy pipeline completed no batch in a measuring window"
    );
    Ok(report)
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
    /// The text it ran on.
    pub corpus: String,
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
    /// Words of batches `0..=k`, for each batch `k` of input.
    words_through: Arc<Vec<u64>>,
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
        // Words of batches `..k`: none before the first, all after the last.
        let before = |k: u64| match k.checked_sub(1) {
            None => 0,
            Some(last) => {
                let through = &self.words_through;
                through[(last as usize).min(through.len() - 1)]
            }
        };
        let first = (batch.id + 1).saturating_sub(self.length);
        let expected = before(batch.id + 1) - before(first);
        if total != expected {
            *self.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                "the window ending at batch {} counted {total} words instead of {expected}",
                batch.id
            ));
        }
        Ok(())
    }
}

/// Runs the windowed word count: `lines` lines of `corpus` in 50 files,
/// one per one-second batch (deterministic time) → split-words → a 30 s
/// window sliding every 10 s (incremental, with the built-in inverse of
/// count), Wasm then native, `rounds` times each; then once over the first
/// 40 files, to compare state (both runs are past the window's length).
pub fn window(
    engine: &Engine,
    plugin: &Path,
    lines: u64,
    partitions: usize,
    rounds: usize,
    corpus: CorpusKind,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<WindowReport> {
    const BATCHES: u64 = 50;
    let per_batch = lines.div_ceil(BATCHES).max(1);
    let scratch_dir = tempdir()?;
    let scratch = scratch_dir.path();
    let input = scratch.join("window-input");
    let corpus = Corpus::new(corpus, 0);
    progress(&format!(
        "generating {lines} lines in {BATCHES} files ({})...",
        corpus.describe()
    ));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stats = corpus
        .write_files(&input, lines, per_batch, threads)
        .context("cannot write the benchmark input")?;
    // Each file is one batch: the words of the batches up to each.
    let mut words_through = Vec::new();
    let mut total = 0;
    let mut scratch_line = Vec::new();
    for batch in 0..lines.div_ceil(per_batch) {
        let from = batch * per_batch;
        for index in from..(from + per_batch).min(lines) {
            total += corpus.line(index, &mut scratch_line);
        }
        words_through.push(total);
    }
    anyhow::ensure!(
        total == stats.words,
        "the corpus counted {total} words, its files {}",
        stats.words
    );
    let words_through = Arc::new(words_through);
    // The first 40 files: part-00000 … part-00039.
    let text = |glob: &str| windowed_wordcount_toml("bench-window", partitions, plugin, &input, glob, None);
    let run_once = |glob: &str, native: bool| -> anyhow::Result<(Duration, RunSummary)> {
        let failure = Arc::new(std::sync::Mutex::new(None));
        let windows = Arc::new(AtomicU64::new(0));
        let sink = WindowCheckSink {
            words_through: words_through.clone(),
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
    let words = stats.words;
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
    Ok(WindowReport {
        corpus: corpus.describe(),
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
    let scratch_dir = tempdir()?;
    let scratch = scratch_dir.path();
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
    Ok(CheckpointReport {
        words: lines * WORDS_PER_LINE,
        batches,
        without,
        with,
        stats,
    })
}

/// A scratch directory under the system's temporary directory, removed
/// when dropped (also when a benchmark fails half-way).
fn tempdir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("weir-bench-")
        .tempdir()
        .context("cannot create a scratch directory")
}
