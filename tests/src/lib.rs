//! Support for Weir's integration tests (`tests/integration/`, compiled as
//! the `weir` package's `integration` test so that it runs the real `weir`
//! binary): the example plugins built once to components ([`plugins`]), and
//! helpers to write pipelines, run the binary with a time limit, feed
//! sockets and read the files sink's output, and a real Kafka-protocol
//! broker per test ([`kafka`]), a real `weir serve` with an HTTP client
//! ([`server`]), a real headless Chromium for the web UI ([`browser`]), a
//! real `redis-server` per test ([`redis`]), an HTTP receiver that
//! accepts, fails or stalls on purpose ([`http`]), and a server of the
//! Elasticsearch API ([`elasticsearch`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod browser;
pub mod elasticsearch;
pub mod http;
pub mod kafka;
pub mod moto;
pub mod redis;
pub mod server;
pub mod zeromq;

/// Paths of the example plugins' components, built by this crate's build script.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// Components built by earlier releases, kept in `tests/fixtures/` as they
/// were built: what users' plugins built with an older SDK look like.
pub mod fixtures {
    /// `running-total` built with the guest SDK of `weir:plugin@0.1.0`.
    pub const SDK_0_1_RUNNING_TOTAL: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sdk-0.1/running_total.wasm");
    /// `split-words` built with the guest SDK of `weir:plugin@0.1.0`.
    pub const SDK_0_1_SPLIT_WORDS: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sdk-0.1/split_words.wasm");
}

/// A directory for one test, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("weir-test-")
        .tempdir()
        .expect("cannot create a temp dir")
}

/// Where compiled components are cached between tests (shared, so each
/// plugin is compiled once per test run). Private (0700), whatever the
/// umask: `weir` refuses a cache that others may write.
pub fn component_cache() -> PathBuf {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/weir-test-cache");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .expect("cannot create the component cache");
    // A cache made by an older run may have had the umask's mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .expect("cannot make the component cache private");
    dir
}

/// The `weir` binary under test.
pub struct Weir {
    binary: PathBuf,
}

impl Weir {
    /// Drives the binary at `binary` (pass `env!("CARGO_BIN_EXE_weir")`).
    pub fn new(binary: &str) -> Self {
        Self {
            binary: PathBuf::from(binary),
        }
    }

    /// A command for `weir ARGS`, with the shared component cache and quiet logs.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("WEIR_CACHE_DIR", component_cache())
            .env("WEIR_LOG", "warn")
            .stdin(Stdio::null());
        command
    }

    /// Runs `weir ARGS` to completion, failing the test after `limit`.
    pub fn run(&self, args: &[&str], limit: Duration) -> Output {
        self.run_logged(args, "warn", limit)
    }

    /// [`Weir::run`] with `WEIR_LOG` set to `log` (a level or filter).
    pub fn run_logged(&self, args: &[&str], log: &str, limit: Duration) -> Output {
        let mut command = self.command(args);
        command.env("WEIR_LOG", log);
        Self::run_command(command, limit)
    }

    /// Runs `command` (from [`Weir::command`], with more set on it) to
    /// completion with piped output, failing the test after `limit`.
    pub fn run_command(mut command: Command, limit: Duration) -> Output {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start weir");
        wait_output(child, limit)
    }

    /// Starts `weir ARGS` in the background with piped output.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start weir")
    }
}

/// Waits for `child` to exit and collects its output; kills it and fails the
/// test after `limit`.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let status = wait_status(&mut child, limit);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Waits for `child` to exit; kills it and fails the test after `limit`.
pub fn wait_status(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for weir") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("weir did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM to `child` (through the `kill` command).
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// Writes a pipeline file `name` into `dir`.
pub fn write_pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("cannot write the pipeline file");
    path
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port()
}

/// Counts of each whitespace-separated word of `text`, computed independently
/// of the engine.
pub fn word_counts(text: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text.split_whitespace() {
        *counts.entry(word.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Every line of every `part-*` file of every batch directory the files
/// sink wrote under `dir`, batch by batch. Tests poll it while a pipeline
/// runs: a batch directory or part that goes away while it reads (the sink
/// removing what a killed run left half written) is skipped.
pub fn sink_lines(dir: &Path) -> Vec<(u64, String)> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    let mut batches: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("batch-"))
        })
        .collect();
    batches.sort();
    for batch in batches {
        let id: u64 = batch.file_name().unwrap().to_str().unwrap()["batch-".len()..]
            .parse()
            .unwrap();
        let gone = |error: &std::io::Error| error.kind() == std::io::ErrorKind::NotFound;
        let mut parts: Vec<PathBuf> = match std::fs::read_dir(&batch) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(error) if gone(&error) => continue,
            Err(error) => panic!("cannot list {}: {error}", batch.display()),
        };
        parts.sort();
        for part in parts {
            let text = match std::fs::read_to_string(&part) {
                Ok(text) => text,
                Err(error) if gone(&error) => continue,
                Err(error) => panic!("cannot read {}: {error}", part.display()),
            };
            lines.extend(text.lines().map(|l| (id, l.to_owned())));
        }
    }
    lines
}

/// Sums `word<TAB>count` lines of a files sink over all batches.
pub fn summed_counts(dir: &Path) -> BTreeMap<String, u64> {
    let mut totals = BTreeMap::new();
    for (_, line) in sink_lines(dir) {
        let (word, count) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("not key<TAB>count: {line:?}"));
        *totals.entry(word.to_owned()).or_insert(0) += count.parse::<u64>().unwrap();
    }
    totals
}

/// Deterministic text: `lines` lines of words from a small vocabulary,
/// produced by a generator written here (not the engine's).
pub fn sample_text(lines: usize, seed: u64) -> String {
    const WORDS: [&str; 12] = [
        "alpha", "beta", "gamma", "delta", "Alpha", "river", "stream", "the", "a", "über", "naïve", "x",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut text = String::new();
    for _ in 0..lines {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let count = 1 + (state >> 60) as usize;
        for i in 0..count {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if i > 0 {
                text.push(' ');
            }
            text.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        }
        text.push('\n');
    }
    text
}

/// A word count named `name`: `source` (the body of its `[[source]]`
/// table, stream `lines`) → Wasm `split-words` → counts by key (stream
/// `counts`) → `sinks` (their `[[sink]]` tables); 100 ms batches, two
/// partitions, `pipeline_extra` added to `[pipeline]`; checkpointed in
/// `dir/checkpoints` (every 3 batches) when `checkpointed`.
pub fn wordcount(
    dir: &Path,
    name: &str,
    checkpointed: bool,
    pipeline_extra: &str,
    source: &str,
    sinks: &str,
) -> String {
    wordcount_with_plugins(dir, name, checkpointed, pipeline_extra, &[], source, sinks)
}

/// A [`wordcount`] whose `[plugins]` also declares `plugins` (name,
/// component), for sinks written as plugins.
pub fn wordcount_with_plugins(
    dir: &Path,
    name: &str,
    checkpointed: bool,
    pipeline_extra: &str,
    plugins: &[(&str, &str)],
    source: &str,
    sinks: &str,
) -> String {
    let more_plugins: String = plugins
        .iter()
        .map(|(name, path)| format!("{name} = {path:?}\n"))
        .collect();
    let checkpoint = if checkpointed {
        format!(
            "checkpoint-dir = {:?}\n\n[checkpoint]\nevery-batches = 3\n",
            dir.join("checkpoints").display().to_string()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[pipeline]
name = "{name}"
batch-interval = "100ms"
partitions = 2
{pipeline_extra}
{checkpoint}
[plugins]
split-words = {split:?}
{more_plugins}
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
{sinks}
"#,
        split = plugins::SPLIT_WORDS,
    )
}

/// A [`wordcount`] of the files in `dir/in` (one file a batch).
pub fn files_wordcount(dir: &Path, name: &str, checkpointed: bool, sinks: &str) -> String {
    let source = format!(
        "type = \"files\"\npath = {:?}\nmax-files-per-batch = 1",
        dir.join("in").display().to_string()
    );
    wordcount(dir, name, checkpointed, "", &source, sinks)
}

/// Writes `files` files of [`sample_text`] (`lines` lines each, seeds from
/// `seed` on) into `dir/in`, one a batch for [`files_wordcount`]; returns
/// all their text.
pub fn write_inputs(dir: &Path, files: usize, lines: usize, seed: u64) -> String {
    std::fs::create_dir_all(dir.join("in")).expect("cannot create the input directory");
    let mut all = String::new();
    for i in 0..files {
        let text = sample_text(lines, seed + i as u64);
        std::fs::write(dir.join("in").join(format!("{i:03}.txt")), &text)
            .expect("cannot write an input file");
        all.push_str(&text);
    }
    all
}

/// Text of `output`'s stderr.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Text of `output`'s stdout.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
