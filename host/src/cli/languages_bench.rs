//! `weir bench --suite languages`: the word count with `split-words`
//! written in each plugin language Weir builds — Rust, Python and
//! JavaScript with the batch API (`plugins/python/split-words`,
//! `plugins/js/split-words`), and Python and JavaScript per record (the same
//! function through `@weir.flat_map` and `weir.flatMap`, written here) — in
//! one run, on the same Zipf text.
//!
//! For each: the end-to-end run (the real `weir run --available-now`
//! binary as a child, files → split-words → count → a `jsonl` files sink;
//! words/s, CPU time and peak RSS as the OS reports them; the output must
//! add up to the text's words), and the plugin's instances in this process:
//! the component's size, the first load (compiled, or read from the
//! compiled-code cache), the mean time to create and `init` one more
//! instance (what a worker pays for each, from the plugin's
//! pre-instantiated component, in the pooling allocator), and the linear
//! memory each instance holds once started.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::corpus::{Corpus, CorpusKind, CorpusStats};
use super::end_to_end::{EndToEndRun, wordcount};
use weir::runtime::{Grants, InstanceLabel, Limits, Runtime, Sandbox, TransformInstance};

/// Instances started for the per-instance figures.
const INSTANCES: usize = 8;

/// The per-record Python split-words: one call of the function per record.
pub const PYTHON_PER_RECORD: &str = r#""""split-words through the per-record API (`weir bench --suite languages`)."""

import weir


@weir.flat_map(name="split-words-per-record")
def split_words(record, out):
    for word in record.value.split():
        out.emit_keyed(word, word)
"#;

/// The per-record JavaScript split-words: one call of the function per
/// record.
pub const JAVASCRIPT_PER_RECORD: &str = r#"// split-words through the per-record API (`weir bench --suite languages`).

import * as weir from "weir";

weir.flatMap(
  (record, out) => {
    for (const word of record.text.split(/\s+/)) {
      if (word !== "") out.emitKeyed(word, word);
    }
  },
  { name: "split-words-per-record" },
);
"#;

/// One language's split-words component.
#[derive(Debug, Clone)]
pub struct Variant {
    /// What it is, e.g. `python (batch API)`.
    pub name: &'static str,
    /// The component, or why there is none.
    pub component: Result<PathBuf, String>,
}

/// What starting a plugin's instances measured.
#[derive(Debug, Clone, Copy)]
pub struct InstanceFigures {
    /// The component's size in bytes.
    pub component_bytes: u64,
    /// Loading the component (compiling it, or reading the compiled-code cache).
    pub load: Duration,
    /// Mean time to create one instance and call its `init`.
    pub start: Duration,
    /// Linear memory of one started instance, in bytes.
    pub memory_per_instance: u64,
}

/// One language's figures.
#[derive(Debug, Clone)]
pub struct LanguageRun {
    /// The variant.
    pub name: &'static str,
    /// Its end-to-end run and instance figures, or why it could not run.
    pub outcome: Result<(EndToEndRun, InstanceFigures), String>,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub struct LanguagesReport {
    /// The text.
    pub corpus: CorpusStats,
    /// Partitions and workers.
    pub partitions: usize,
    /// Each variant's figures, in the order given.
    pub runs: Vec<LanguageRun>,
}

/// Starts [`INSTANCES`] instances of the transform at `component`.
fn instance_figures(runtime: &Runtime, component: &Path) -> anyhow::Result<InstanceFigures> {
    let component_bytes = std::fs::metadata(component)
        .with_context(|| format!("cannot read {}", component.display()))?
        .len();
    let loaded = Instant::now();
    let plugin = runtime
        .load_plugin(component)
        .with_context(|| format!("cannot load {}", component.display()))?;
    let load = loaded.elapsed();
    let sandbox = Arc::new(Sandbox {
        limits: Limits::default(),
        grants: Grants::default(),
    });
    let label = InstanceLabel::default();
    let started = Instant::now();
    let instances = (0..INSTANCES)
        .map(|_| TransformInstance::start(&plugin, &[], label.clone(), &sandbox))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("cannot start {}", component.display()))?;
    let start = started.elapsed() / INSTANCES as u32;
    let memory_per_instance = label.usage.memory_bytes.load(Ordering::Relaxed) / instances.len() as u64;
    Ok(InstanceFigures {
        component_bytes,
        load,
        start,
        memory_per_instance,
    })
}

/// Runs every variant over `lines` lines of Zipf text with the `weir`
/// binary at `weir`, on `partitions` partitions; the instances are started
/// on `runtime`. `progress` gets a line per step.
pub fn run(
    weir: &Path,
    runtime: &Runtime,
    variants: &[Variant],
    lines: u64,
    partitions: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<LanguagesReport> {
    let work = tempfile::Builder::new()
        .prefix("weir-bench-languages-")
        .tempdir()
        .context("cannot create a scratch directory")?;
    let input = work.path().join("in");
    let corpus = Corpus::new(CorpusKind::Zipf, 1);
    progress(&format!("writing {lines} lines of text ({})", corpus.describe()));
    let stats = corpus.write_files(&input, lines, 250_000, partitions)?;
    let mut runs = Vec::new();
    for variant in variants {
        let outcome = match &variant.component {
            Err(why) => Err(why.clone()),
            Ok(component) => {
                progress(&format!("{}: {}", variant.name, component.display()));
                let measured = (|| {
                    let figures = instance_figures(runtime, component)?;
                    let dir = work.path().join("run");
                    let run = wordcount(weir, &input, component, partitions, &dir)?;
                    anyhow::ensure!(
                        run.counted == stats.words,
                        "{} counted {} words of {}",
                        variant.name,
                        run.counted,
                        stats.words
                    );
                    Ok((run, figures))
                })();
                measured.map_err(|error: anyhow::Error| format!("{error:#}"))
            }
        };
        runs.push(LanguageRun {
            name: variant.name,
            outcome,
        });
    }
    Ok(LanguagesReport {
        corpus: stats,
        partitions,
        runs,
    })
}
