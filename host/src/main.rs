//! The `weir` command line: run and check pipelines, build, inspect and
//! scaffold plugins, run the demo and the benchmark.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use weir::config::{self, PipelineSpec};
use weir::error::EngineError;
use weir::pipeline::{Pipeline, PluginRegistry, RunOptions, StopSignal};
use weir::runtime::Runtime;
use weir::tools::{self, build, inspect, scaffold};

/// Weir: a micro-batch stream processing engine whose transforms are
/// sandboxed WebAssembly components.
#[derive(Parser)]
#[command(name = "weir", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more pipelines until stopped (Ctrl-C / SIGTERM), or until
    /// their sources are exhausted.
    Run {
        /// Pipeline files (TOML), or directories of them.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// Process what the sources have now (files present, a socket until
        /// EOF, a generator's count), then stop.
        #[arg(long)]
        available_now: bool,
        /// Worker threads per pipeline (default: its partition count).
        #[arg(long)]
        workers: Option<usize>,
        /// Resume from a checkpoint even though a plugin's component changed
        /// since it was taken (its state may not fit the new version).
        #[arg(long)]
        allow_plugin_change: bool,
    },
    /// Validate pipeline files and every plugin they use, without running.
    Check {
        /// Pipeline files (TOML), or directories of them.
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
    },
    /// Build, inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Create new things.
    New {
        #[command(subcommand)]
        command: NewCommand,
    },
    /// Run the demo: generated text → split-words (Wasm) → count → console.
    Demo {
        /// Lines to generate (at 10,000 lines per second).
        #[arg(long, default_value_t = 30_000)]
        lines: u64,
    },
    /// Measure word-count throughput, Wasm against native, in one run.
    Bench {
        /// Lines of generated text (8 words each).
        #[arg(long, default_value_t = 2_000_000)]
        lines: u64,
        /// Partitions and worker threads (default: the number of cores).
        #[arg(long)]
        partitions: Option<usize>,
        /// Runs of each variant; the best is kept.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// The split-words component (default: build plugins/split-words).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Run only one variant (for profiling): wasm or native.
        #[arg(long, value_parser = ["wasm", "native"])]
        only: Option<String>,
        /// Which benchmarks: `wordcount` (throughput, latency, isolation),
        /// `throughput` (the word count's throughput alone, for profiling),
        /// `window` (windowed word count, deterministic time), `checkpoint`
        /// (the windowed word count with and without checkpoints) or `all`.
        #[arg(long, default_value = "all", value_parser = ["all", "wordcount", "throughput", "window", "checkpoint"])]
        suite: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Compile plugin crates to wasm32-wasip2 components (release mode).
    Build {
        /// The plugin crates' directories (e.g. `plugins/*`).
        #[arg(required = true, value_name = "CRATE_DIR")]
        crate_dirs: Vec<PathBuf>,
        /// Build in debug mode.
        #[arg(long)]
        debug: bool,
    },
    /// Show what a component is: Weir kind, exports and imports.
    Inspect {
        /// The component file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum NewCommand {
    /// Scaffold a plugin crate that builds as it is.
    Plugin {
        /// Crate name.
        name: String,
        /// map, flat-map, filter, filter-map, map-partitions or reduce.
        #[arg(long, default_value = "map")]
        kind: String,
        /// Directory to create (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The weir-guest SDK crate (default: the one this binary was built with).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
}

/// mimalloc keeps freed memory for reuse instead of returning every large
/// batch buffer to the kernel (measured: page faults were ~10% of a word
/// count's time with the system allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for errors in the user's input.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            pipelines,
            available_now,
            workers,
            allow_plugin_change,
        } => run(&pipelines, available_now, workers, allow_plugin_change),
        Command::Check { pipelines } => check(&pipelines),
        Command::Plugin {
            command: PluginCommand::Build { crate_dirs, debug },
        } => {
            for crate_dir in &crate_dirs {
                for component in build::build_plugin(crate_dir, !debug)? {
                    println!("{}", component.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command: PluginCommand::Inspect { file },
        } => {
            let runtime = Runtime::with_default_cache()?;
            match inspect::inspect(&runtime, &file) {
                Ok(report) => {
                    print!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    Ok(ExitCode::from(USAGE))
                }
            }
        }
        Command::New {
            command: NewCommand::Plugin { name, kind, dir, sdk },
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk = match sdk {
                Some(sdk) => sdk,
                None => tools::source_root()
                    .map(|root| root.join("guest-sdk"))
                    .ok_or_else(|| anyhow!("cannot find the weir-guest SDK: pass --sdk PATH"))?,
            };
            let files = scaffold::new_plugin(&name, &kind, &dir, &sdk)?;
            for file in files {
                println!("created {}", file.display());
            }
            println!("build it with: weir plugin build {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { lines } => demo(lines),
        Command::Bench {
            lines,
            partitions,
            rounds,
            plugin,
            only,
            suite,
        } => bench(lines, partitions, rounds, plugin, only, &suite),
    }
}

/// Expands directories into the `*.toml` files they hold, sorted.
fn pipeline_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(anyhow!("{} holds no .toml pipeline file", path.display()));
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Loads, plans and checks one pipeline file.
fn prepare(runtime: &Arc<Runtime>, file: &Path) -> Result<(PipelineSpec, Pipeline), EngineError> {
    let spec = config::load(file)?;
    let mut registry = PluginRegistry::new(runtime.clone());
    registry.load_declared(&spec)?;
    let pipeline = Pipeline::build(&spec, &registry, &file.display().to_string())?;
    Ok((spec, pipeline))
}

fn report(error: &EngineError) -> u8 {
    eprintln!("error: {error}");
    if error.is_usage_error() { USAGE } else { 1 }
}

fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::with_default_cache()?;
    let mut status = 0;
    for file in pipeline_files(paths)? {
        match prepare(&runtime, &file) {
            Ok((spec, pipeline)) => println!(
                "{}: ok — pipeline `{}`, {} source(s), {} stage(s), {} sink(s), {} plugin(s), {} partition(s)",
                file.display(),
                spec.name,
                spec.sources.len(),
                spec.stages.len(),
                spec.sinks.len(),
                spec.plugins.len(),
                pipeline.plan().partitions
            ),
            Err(error) => status = status.max(report(&error)),
        }
    }
    Ok(ExitCode::from(status))
}

/// Raises `stop` on the first Ctrl-C or SIGTERM; exits at once on the second.
fn install_signal_handlers(stop: StopSignal) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal handler")?;
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut terminate), Ok(mut interrupt)) =
                    (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
                else {
                    tracing::error!("cannot install signal handlers");
                    return;
                };
                for count in 0.. {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                    if count == 0 {
                        tracing::info!(
                            "stopping: finishing the batch in flight (signal again to exit at once)"
                        );
                        stop.stop();
                    } else {
                        eprintln!("second signal: exiting now");
                        std::process::exit(130);
                    }
                }
            });
        })
        .context("cannot start the signal handler")?;
    Ok(())
}

fn run(
    paths: &[PathBuf],
    available_now: bool,
    workers: Option<usize>,
    allow_plugin_change: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = Runtime::with_default_cache()?;
    let files = pipeline_files(paths)?;
    let mut prepared = Vec::new();
    let mut status = 0;
    for file in &files {
        match prepare(&runtime, file) {
            Ok((_, pipeline)) => prepared.push(pipeline),
            Err(error) => status = status.max(report(&error)),
        }
    }
    if status != 0 {
        return Ok(ExitCode::from(status));
    }
    let stop = StopSignal::new();
    install_signal_handlers(stop.clone())?;
    let handles: Vec<_> = prepared
        .into_iter()
        .map(|pipeline| {
            let options = RunOptions {
                available_now,
                stop: stop.clone(),
                workers,
                allow_plugin_change,
            };
            let name = pipeline.plan().pipeline.clone();
            std::thread::Builder::new()
                .name(format!("pipeline-{name}"))
                .spawn(move || (name, pipeline.run(options)))
        })
        .collect::<Result<_, _>>()
        .context("cannot start a pipeline thread")?;
    for handle in handles {
        match handle.join() {
            Ok((name, Ok(summary))) => {
                eprintln!(
                    "pipeline `{name}`: {} batches, {} records in, {} records out, {} retries, \
                 {} batches ({} records) skipped, {} records dead-lettered, {} late records dropped, \
                 state: {} keys ({} on disk){}",
                    summary.batches,
                    summary.records_in,
                    summary.records_out,
                    summary.retries,
                    summary.skipped_batches,
                    summary.skipped_records,
                    summary.dead_lettered,
                    summary.late_records,
                    summary.state.keys,
                    summary.state.spilled_keys,
                    if summary.stopped {
                        ", stopped gracefully"
                    } else {
                        ""
                    }
                );
                let checkpoints = &summary.checkpoints;
                if let Some(batch) = checkpoints.resumed_after {
                    eprintln!(
                        "  resumed after the checkpoint of batch {batch}; {} logged batches replayed",
                        checkpoints.replayed_batches
                    );
                }
                if checkpoints.written > 0 {
                    eprintln!(
                        "  {} checkpoints written, the last {} bytes, the longest {:.1} ms",
                        checkpoints.written,
                        checkpoints.last_bytes,
                        checkpoints.max_duration.as_secs_f64() * 1e3
                    );
                }
                for (stage, state) in &summary.state_by_stage {
                    eprintln!(
                        "  stage `{stage}`: {} state entries, {} bytes in memory, {} on disk",
                        state.keys, state.memory_bytes, state.spilled_keys
                    );
                }
            }
            Ok((_, Err(error))) => status = status.max(report(&error)),
            Err(_) => {
                eprintln!("error: a pipeline thread panicked");
                status = 1;
            }
        }
    }
    Ok(ExitCode::from(status))
}

/// Builds `plugins/NAME` of the source tree and returns its component.
fn example_plugin(name: &str) -> anyhow::Result<PathBuf> {
    let root = tools::source_root().ok_or_else(|| {
        anyhow!("cannot find the Weir source tree to build plugins/{name}; pass the component's path instead")
    })?;
    let components = build::build_plugin(&root.join("plugins").join(name), true)?;
    components
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("building plugins/{name} produced no component"))
}

fn demo(lines: u64) -> anyhow::Result<ExitCode> {
    eprintln!("building the split-words plugin...");
    let plugin = example_plugin("split-words")?;
    let source = format!("type = \"generator\"\nlines = {lines}\nrate = 10000");
    let text = weir::bench::wordcount_toml("demo-wordcount", "1s", 2, &plugin, &source);
    let runtime = Runtime::with_default_cache()?;
    let spec = config::parse(&text, Path::new("demo.toml"))?;
    let mut registry = PluginRegistry::new(runtime);
    registry.load_declared(&spec)?;
    let pipeline = Pipeline::build(&spec, &registry, "demo.toml")?;
    let stop = StopSignal::new();
    install_signal_handlers(stop.clone())?;
    eprintln!("running: generator ({lines} lines at 10,000/s) → split-words (Wasm) → count → console");
    let summary = pipeline.run(RunOptions {
        stop,
        ..RunOptions::default()
    })?;
    eprintln!(
        "demo done: {} batches, {} lines",
        summary.batches, summary.records_in
    );
    Ok(ExitCode::SUCCESS)
}

fn bench(
    lines: u64,
    partitions: Option<usize>,
    rounds: usize,
    plugin: Option<PathBuf>,
    only: Option<String>,
    suite: &str,
) -> anyhow::Result<ExitCode> {
    let plugin = match plugin {
        Some(plugin) => plugin,
        None => example_plugin("split-words")?,
    };
    let partitions =
        partitions.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    if suite == "all" || suite == "checkpoint" {
        let report =
            weir::bench::checkpoints(&plugin, lines, partitions, rounds, |line| eprintln!("{line}"))?;
        let rate = |time: std::time::Duration| report.words as f64 / time.as_secs_f64() / 1e6;
        println!(
            "checkpoints: windowed word count over {} words in {} batches, best of {rounds}:",
            report.words, report.batches
        );
        println!(
            "  no checkpoints          {:>8.2} M words/s",
            rate(report.without)
        );
        println!(
            "  checkpoint every 10     {:>8.2} M words/s  ({} checkpoints, last {} bytes, longest {:.1} ms)",
            rate(report.with),
            report.stats.written,
            report.stats.last_bytes,
            report.stats.max_duration.as_secs_f64() * 1e3
        );
        println!("  with / without = {:.2}", report.ratio());
        if suite == "checkpoint" {
            return Ok(ExitCode::SUCCESS);
        }
    }
    if suite == "all" || suite == "window" {
        let report = weir::bench::window(&plugin, lines, partitions, rounds, |line| eprintln!("{line}"))?;
        let rate = |time: std::time::Duration| report.words as f64 / time.as_secs_f64() / 1e6;
        println!(
            "windowed word count (30 s window sliding 10 s, 1 s batches, deterministic time) over {} lines \
             ({} words, {} batches), {partitions} partitions, best of {rounds}:",
            report.lines, report.words, report.batches
        );
        println!("  wasm    {:>8.2} M words/s", rate(report.wasm));
        println!("  native  {:>8.2} M words/s", rate(report.native));
        println!(
            "  wasm / native = {:.2}",
            report.native.as_secs_f64() / report.wasm.as_secs_f64()
        );
        println!(
            "  state after {} batches: {} entries, {} bytes; after {} batches: {} entries, {} bytes",
            report.batches,
            report.state_full.keys,
            report.state_full.memory_bytes,
            report.fewer_batches,
            report.state_fewer.keys,
            report.state_fewer.memory_bytes
        );
        if suite == "window" {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let settings = weir::bench::BenchSettings {
        lines,
        words_per_line: 8,
        partitions,
        rounds,
        plugin,
        only,
    };
    let report = weir::bench::run(&settings, |line| eprintln!("{line}"))?;
    println!(
        "word count over {} lines ({} words), {partitions} partitions, best of {rounds}:",
        lines, report.words
    );
    println!(
        "  wasm    {:>8.2} M words/s",
        report.wasm_words_per_second() / 1e6
    );
    println!(
        "  native  {:>8.2} M words/s",
        report.native_words_per_second() / 1e6
    );
    println!(
        "  wasm / native = {:.2} (best times); {:.2} (median of the rounds' ratios)",
        report.ratio(),
        report.median_round_ratio()
    );
    if suite == "throughput" {
        return Ok(ExitCode::SUCCESS);
    }
    let latency = weir::bench::latency(
        &settings.plugin,
        std::time::Duration::from_millis(10),
        20_000,
        std::time::Duration::from_secs(3),
    )?;
    let looping = example_plugin("loop-forever")?;
    let isolation = weir::bench::isolation(&settings.plugin, &looping, std::time::Duration::from_secs(4))?;
    let summary = &latency.summary;
    println!(
        "latency: {} lines/s, batch interval {:?}, {:?}: {} batches, {} over the interval, \
         mean {:.2} ms, max {:.2} ms per batch",
        latency.rate,
        latency.interval,
        latency.duration,
        summary.batches,
        summary.slow_batches,
        summary.total_batch_time.as_secs_f64() * 1e3 / summary.batches.max(1) as f64,
        summary.max_batch_time.as_secs_f64() * 1e3,
    );
    let mean_ms =
        |s: &weir::pipeline::RunSummary| s.total_batch_time.as_secs_f64() * 1e3 / s.batches.max(1) as f64;
    println!(
        "isolation: healthy word count (50,000 lines/s, 100 ms batches) mean batch time {:.2} ms alone, \
         {:.2} ms next to a pipeline looping to its 20 ms deadline every batch ({} of its batches skipped): {:.2}x",
        mean_ms(&isolation.alone),
        mean_ms(&isolation.with_neighbour),
        isolation.neighbour.skipped_batches,
        isolation.slowdown(),
    );
    Ok(ExitCode::SUCCESS)
}
