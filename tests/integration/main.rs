//! Weir's integration tests: the real `weir` binary, real sockets and
//! files, and real Wasm components built from `plugins/`.

mod bad_input;
mod bounds;
#[cfg(feature = "object-store")]
mod checkpoint_storage;
mod cli;
#[cfg(feature = "kafka")]
mod cluster;
mod elasticsearch_sink;
mod engine;
mod examples;
mod graph;
mod hotload;
mod http_sink;
mod incremental;
#[cfg(feature = "kafka")]
mod kafka;
mod object_storage;
mod plugin_languages;
mod plugin_sink;
mod rate;
mod recovery;
mod redis_sink;
mod redis_stream_source;
mod sandbox;
mod serve;
mod sources;
mod state;
mod ui;
mod windows;
mod zeromq_source;

use std::time::Duration;

use weir_tests::Weir;

/// The binary under test.
fn weir() -> Weir {
    Weir::new(env!("CARGO_BIN_EXE_weir"))
}

/// Held by the tests that load both cores (a browser, several `weir run`
/// processes) and by those that count batches in a fixed time, so that
/// they never run at the same time. (Tests that compare timings run in the
/// `timing` test binary, alone.)
static CPU_HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes [`CPU_HEAVY`] for the rest of the test.
fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    CPU_HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Generous limit for one `weir` run in a test (CI machines are slow and shared).
const LIMIT: Duration = Duration::from_secs(120);

/// Writes `pipeline` to `name` in `dir` and runs it with
/// `--available-now`; it must succeed. Returns its log (stderr).
fn run_ok(dir: &std::path::Path, name: &str, pipeline: &str) -> String {
    let file = weir_tests::write_pipeline(dir, name, pipeline);
    run_file_ok(&file)
}

/// Runs the pipeline file `file` with `--available-now`; it must succeed.
/// Returns its log (stderr).
fn run_file_ok(file: &std::path::Path) -> String {
    let output = weir().run(&["run", "--available-now", file.to_str().unwrap()], LIMIT);
    let log = weir_tests::stderr(&output);
    assert!(output.status.success(), "{log}");
    log
}

/// A word-count pipeline reading `source` (a TOML `[[source]]` body) and
/// writing `word<TAB>count` files to `out`.
fn wordcount_pipeline(source: &str, out: &std::path::Path, partitions: usize) -> String {
    format!(
        r#"
[pipeline]
name = "wordcount"
batch-interval = "100ms"
partitions = {partitions}

[plugins]
split-words = {split:?}

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
type = "files"
path = {out:?}
"#,
        split = weir_tests::plugins::SPLIT_WORDS,
        out = out.display().to_string(),
    )
}
