//! `weir bench --suite state`: keyed state larger than memory, checkpointed
//! incrementally.
//!
//! `update-state-by-key` with the `padded-total` plugin (a running total
//! per key whose state is padded to `state-bytes`, 1 KiB by default, and
//! checked on every read) over `keys` keys with `state-memory = "256MiB"`,
//! in two runs of one pipeline on one checkpoint directory:
//!
//! 1. **load**: every key once, `keys-per-batch` keys a batch, a checkpoint
//!    every 20 batches;
//! 2. **update**: resumed from the load's last checkpoint (recovery is
//!    timed), `update-batches` batches that each change 1% of the keys (key
//!    `i` in batch `u` when `i % 100 == u % 100`), a checkpoint after every
//!    batch.
//!
//! The input is generated from a formula into one file per batch (read
//! one file a batch under the deterministic clock) and keyed by a native
//! map; the sink checks every output record against the total the formula
//! gives — computed here, independently of the engine, one key at a time,
//! so the check holds no state — and that each batch holds each of its keys
//! exactly once. Reported: throughput of each run, the checkpoints' size and
//! time (the pause between batches and the whole write), compactions,
//! recovery time, and peak RSS as the OS reports it (`VmHWM`, reset before
//! each run through `/proc/self/clear_refs` where the kernel allows).
//!
//! With `--checkpoint-store s3` the checkpoints go to object storage: a
//! `moto_server` on loopback started here (`tests/moto/install`), so the
//! update run's recovery is what a pipeline moved to another machine
//! restores before its first batch.

use super::process::{peak_rss, reset_peak_rss};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use weir::engine::Engine;
use weir::operator::native::NativeTransform;
use weir::pipeline::{RunOptions, RunSummary};
use weir::record::Partition;
use weir::sink::{BatchInfo, Sink, SinkError};

/// Checkpoint after every this many batches while loading.
const LOAD_CHECKPOINT_EVERY: u64 = 20;

/// States per plugin call the stage's partitions are chosen for: one call
/// per partition per batch holds its keys' states several times over (read
/// back, handed to the plugin, returned, committed) and the plugin must
/// hold them in its memory, so the state stage gets enough partitions for
/// a batch's states to come in slices of about this size.
const STATES_PER_CALL: u64 = 4 << 20;

/// Settings of the state benchmark.
#[derive(Debug, Clone)]
pub struct StateBenchSettings {
    /// Keys of state.
    pub keys: u64,
    /// Bytes of state per key.
    pub state_bytes: usize,
    /// Keys per batch while loading.
    pub keys_per_batch: u64,
    /// Batches of the update run (each changes 1% of the keys).
    pub update_batches: u64,
    /// Partitions (and worker threads).
    pub partitions: usize,
    /// Partitions of the state stage (at least `partitions`): see
    /// [`state_partitions`].
    pub state_partitions: usize,
    /// The stage's `state-memory`.
    pub state_memory: String,
    /// The `padded-total` component.
    pub plugin: PathBuf,
    /// Where to put the input and the checkpoints (a directory of its own
    /// is made and removed under it).
    pub scratch: PathBuf,
    /// Checkpoint to object storage (a `moto_server` started for the run)
    /// instead of a directory under `scratch`.
    pub on_object_storage: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct PhaseReport {
    /// Batches run.
    pub batches: u64,
    /// Input records.
    pub records: u64,
    /// Wall time of the run (recovery included).
    pub elapsed: Duration,
    /// Peak RSS during the run (since the reset before it, if any).
    pub peak_rss: u64,
    /// The run's summary (state sizes, checkpoint figures).
    pub summary: RunSummary,
}

impl PhaseReport {
    /// Input records per second.
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }

    /// Mean bytes a checkpoint wrote (compaction aside).
    pub fn mean_checkpoint_bytes(&self) -> u64 {
        let stats = &self.summary.checkpoints;
        stats.total_bytes / stats.written.max(1)
    }

    /// Mean time of a checkpoint (snapshot plus write).
    pub fn mean_checkpoint_time(&self) -> Duration {
        let stats = &self.summary.checkpoints;
        stats.total_duration / stats.written.max(1) as u32
    }

    /// Mean snapshot: the pause between two batches a checkpoint takes.
    pub fn mean_snapshot_time(&self) -> Duration {
        let stats = &self.summary.checkpoints;
        stats.total_snapshot / stats.written.max(1) as u32
    }
}

/// What the state benchmark measured.
#[derive(Debug, Clone)]
pub struct StateBenchReport {
    /// The settings it ran with.
    pub settings: StateBenchSettings,
    /// The load run.
    pub load: PhaseReport,
    /// The update run.
    pub update: PhaseReport,
    /// Bytes under the checkpoint directory (or prefix) at the end.
    pub checkpoint_dir_bytes: u64,
    /// Where the checkpoints were: a directory, or the store's URL.
    pub checkpoint_location: String,
    /// Whether the peak RSS could be reset before each run (otherwise each
    /// is the process's peak so far).
    pub peak_reset: bool,
    /// Peak RSS of the whole process.
    pub process_peak_rss: u64,
}

/// Partitions for the state stage: enough for each partition's share of a
/// batch's states (the load's `keys_per_batch`, or 1% of `keys`) to be
/// about [`STATES_PER_CALL`], and at least `workers`.
pub fn state_partitions(keys: u64, keys_per_batch: u64, state_bytes: usize, workers: usize) -> usize {
    let batch = keys_per_batch.max(keys.div_ceil(100)) * state_bytes as u64;
    (batch.div_ceil(STATES_PER_CALL) as usize).clamp(workers.max(1), 256)
}

/// The value of key `i` while loading.
fn load_value(i: u64) -> i64 {
    (i.wrapping_mul(7919) % 1000) as i64 + 1
}

/// The value of key `i` in update batch `u`, when it changes there.
fn update_value(i: u64, u: u64) -> i64 {
    ((i + 31 * u) % 1000) as i64 - 400
}

/// Whether key `i` changes in update batch `u`.
fn changes(i: u64, u: u64) -> bool {
    i % 100 == u % 100
}

/// Key `i`'s total after update batch `u` (after loading when `None`).
fn expected_total(i: u64, after: Option<u64>) -> i64 {
    let mut total = load_value(i);
    if let Some(u) = after {
        let mut step = i % 100;
        while step <= u {
            total += update_value(i, step);
            step += 100;
        }
    }
    total
}

fn key(i: u64) -> String {
    format!("k{i:010}")
}

/// Writes the load's files, one per batch; returns how many.
fn generate_load(dir: &Path, settings: &StateBenchSettings) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut line = String::new();
    let mut load_batches = 0;
    let mut start = 0;
    while start < settings.keys {
        let end = (start + settings.keys_per_batch).min(settings.keys);
        let path = dir.join(format!("b{load_batches:08}.txt"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        for i in start..end {
            line.clear();
            let _ = writeln!(line, "{} {}", key(i), load_value(i));
            out.write_all(line.as_bytes())?;
        }
        out.flush()?;
        load_batches += 1;
        start = end;
    }
    Ok(load_batches)
}

/// Writes the updates' files after the load's `load_batches`, one per
/// batch, each under a dot-name first and renamed into place (as files
/// must arrive for the files source).
fn generate_updates(dir: &Path, settings: &StateBenchSettings, load_batches: u64) -> std::io::Result<()> {
    let mut line = String::new();
    for u in 0..settings.update_batches {
        let name = format!("b{:08}.txt", load_batches + u);
        let path = dir.join(format!(".{name}"));
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        let mut i = u % 100;
        while i < settings.keys {
            line.clear();
            let _ = writeln!(line, "{} {}", key(i), update_value(i, u));
            out.write_all(line.as_bytes())?;
            i += 100;
        }
        out.flush()?;
        drop(out);
        std::fs::rename(&path, dir.join(name))?;
    }
    Ok(())
}

/// A bit per key: which keys a batch held.
struct Seen(Vec<u64>);

impl Seen {
    /// Marks `i`; false when it was marked already.
    fn mark(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    fn clear(&mut self) {
        self.0.fill(0);
    }
}

/// What the checking sink found, shared with the benchmark.
#[derive(Debug, Default)]
struct Checked {
    batches: u64,
    records: u64,
    error: Option<String>,
}

/// Checks every output record against [`expected_total`].
struct CheckSink {
    keys: u64,
    keys_per_batch: u64,
    load_batches: u64,
    seen: Seen,
    checked: Arc<Mutex<Checked>>,
}

impl CheckSink {
    fn check(&mut self, batch: u64, partitions: &[Partition]) -> Result<u64, String> {
        self.seen.clear();
        // Load batch `batch`: its keys, once each, with their load value;
        // update batch `u`: the keys that change, with their totals.
        let update = batch.checked_sub(self.load_batches);
        let mut count = 0;
        for record in partitions.iter().flatten().flat_map(|chunk| chunk.iter()) {
            let key = record.key.unwrap_or_default();
            let i = std::str::from_utf8(key)
                .ok()
                .and_then(|k| k.strip_prefix('k')?.parse::<u64>().ok())
                .filter(|&i| i < self.keys)
                .ok_or_else(|| format!("batch {batch}: unknown key {:?}", String::from_utf8_lossy(key)))?;
            let belongs = match update {
                None => i / self.keys_per_batch == batch,
                Some(u) => changes(i, u),
            };
            if !belongs {
                return Err(format!("batch {batch}: key {i} does not belong to it"));
            }
            if !self.seen.mark(i) {
                return Err(format!("batch {batch}: key {i} twice"));
            }
            let want = expected_total(i, update);
            let got = std::str::from_utf8(record.value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok());
            if got != Some(want) {
                return Err(format!(
                    "batch {batch}: key {i} has total {:?}, the reference says {want}",
                    String::from_utf8_lossy(record.value)
                ));
            }
            count += 1;
        }
        let expected = match update {
            None => (self.keys - batch * self.keys_per_batch).min(self.keys_per_batch),
            Some(u) => (self.keys + 99 - u % 100) / 100,
        };
        if count != expected {
            return Err(format!(
                "batch {batch}: {count} records, the reference says {expected}"
            ));
        }
        Ok(count)
    }
}

impl Sink for CheckSink {
    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let result = self.check(batch.id, partitions);
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(count) => {
                checked.batches += 1;
                checked.records += count;
                Ok(())
            }
            Err(message) => {
                checked.error.get_or_insert(message.clone());
                Err(SinkError {
                    sink: "state-bench".into(),
                    message,
                    superseded: false,
                })
            }
        }
    }
}

/// `key value` lines to keyed records.
fn key_by() -> NativeTransform {
    NativeTransform::map("key-by", |record, out| {
        let line = record.value;
        let space = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| format!("not `key value`: {:?}", String::from_utf8_lossy(line)))?;
        out.push(Some(&line[..space]), &line[space + 1..], record.timestamp);
        Ok(())
    })
}

/// Where the benchmark checkpoints: the value of `checkpoint-dir` and more
/// keys of `[checkpoint]`, with the moto server it needs (kept running
/// while this lives).
struct CheckpointsAt {
    dir: String,
    keys: String,
    /// The store and the server behind it, when on object storage.
    #[cfg(feature = "object-store")]
    moto: Option<(weir::objects::ObjectTarget, super::sinks_bench::Server)>,
}

impl CheckpointsAt {
    fn new(settings: &StateBenchSettings, local: &Path) -> anyhow::Result<Self> {
        if !settings.on_object_storage {
            return Ok(Self {
                dir: local.display().to_string(),
                keys: String::new(),
                #[cfg(feature = "object-store")]
                moto: None,
            });
        }
        #[cfg(feature = "object-store")]
        {
            let (server, port) = super::sinks_bench::start_moto()?;
            let target = weir::objects::ObjectTarget {
                bucket: "bench".into(),
                prefix: "state".into(),
                endpoint: Some(format!("http://127.0.0.1:{port}")),
                region: None,
                credentials: weir::objects::ObjectCredentials::Keys {
                    id: "bench".into(),
                    secret: "bench".into(),
                },
            };
            Ok(Self {
                dir: target.url(),
                keys: format!(
                    "endpoint = {:?}\naccess-key-id = \"bench\"\nsecret-access-key = \"bench\"\n",
                    target.endpoint.as_deref().unwrap_or_default()
                ),
                moto: Some((target, server)),
            })
        }
        #[cfg(not(feature = "object-store"))]
        Err(anyhow!("this weir was built without the `object-store` feature"))
    }

    /// Bytes of every checkpoint blob.
    fn bytes(&self) -> anyhow::Result<u64> {
        #[cfg(feature = "object-store")]
        if let Some((target, _)) = &self.moto {
            use futures_util::TryStreamExt;
            let store = target.store()?;
            let prefix = object_store::path::Path::from(target.prefix.as_str());
            let sizes: Vec<u64> = weir::objects::block_on(async move {
                store
                    .list(Some(&prefix))
                    .map_ok(|meta| meta.size)
                    .try_collect()
                    .await
            })?;
            return Ok(sizes.iter().sum());
        }
        Ok(dir_bytes(Path::new(&self.dir)))
    }
}

fn pipeline_toml(
    settings: &StateBenchSettings,
    input: &Path,
    checkpoints: &CheckpointsAt,
    every: u64,
) -> String {
    format!(
        r#"
[pipeline]
name = "bench-state"
batch-interval = "1s"
partitions = {partitions}
clock = "deterministic"
checkpoint-dir = {checkpoints:?}

[checkpoint]
every-batches = {every}
keep = 2
{keys}
[plugins]
key-by = {plugin:?}
padded-total = {plugin:?}

[[source]]
name = "lines"
type = "files"
path = {input:?}
max-files-per-batch = 1

[[stage]]
name = "keyed"
input = "lines"
op = "map"
plugin = "key-by"

[[stage]]
name = "totals"
input = "keyed"
op = "update-state-by-key"
plugin = "padded-total"
config = {{ state-bytes = "{state_bytes}" }}
state-memory = "{memory}"
partitions = {state_partitions}

# Replaced by the checking sink.
[[sink]]
input = "totals"
type = "console"
"#,
        partitions = settings.partitions,
        checkpoints = checkpoints.dir,
        keys = checkpoints.keys,
        plugin = settings.plugin.display().to_string(),
        input = input.display().to_string(),
        state_bytes = settings.state_bytes,
        memory = settings.state_memory,
        state_partitions = settings.state_partitions,
    )
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Runs the benchmark; `progress` receives a line per step.
pub fn run(
    engine: &Engine,
    settings: &StateBenchSettings,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<StateBenchReport> {
    if settings.keys == 0 || settings.keys_per_batch == 0 {
        return Err(anyhow!("the state benchmark needs keys and keys per batch"));
    }
    let scratch = settings
        .scratch
        .join(format!("weir-bench-state-{}", std::process::id()));
    let input = scratch.join("input");
    let checkpoints = CheckpointsAt::new(settings, &scratch.join("checkpoints"))?;
    progress(&format!(
        "generating {} keys in batches of {}, then {} batches changing 1% each, into {}...",
        settings.keys,
        settings.keys_per_batch,
        settings.update_batches,
        scratch.display()
    ));
    let load_batches = generate_load(&input, settings).context("cannot write the benchmark input")?;
    let checked = Arc::new(Mutex::new(Checked::default()));
    let mut peak_reset = true;
    let peak_before = peak_rss();
    let mut run_phase = |name: &str, every: u64, batches: u64| -> anyhow::Result<PhaseReport> {
        let text = pipeline_toml(settings, &input, &checkpoints, every);
        let mut prepared = engine.prepare_with(&text, Path::new("bench-state.toml"), |registry| {
            registry.register_transform("key-by", key_by());
        })?;
        let sink = CheckSink {
            keys: settings.keys,
            keys_per_batch: settings.keys_per_batch,
            load_batches,
            seen: Seen(vec![0; settings.keys.div_ceil(64) as usize]),
            checked: checked.clone(),
        };
        prepared
            .pipeline_mut()
            .set_sinks(vec![("totals".to_owned(), Box::new(sink))])?;
        *checked.lock().unwrap_or_else(|e| e.into_inner()) = Checked::default();
        peak_reset &= reset_peak_rss();
        progress(&format!("{name}: {batches} batches..."));
        let started = Instant::now();
        let handle = engine.start(
            prepared,
            RunOptions {
                available_now: true,
                ..RunOptions::default()
            },
        )?;
        let summary = handle.wait();
        let elapsed = started.elapsed();
        let peak_rss = peak_rss();
        let checked = std::mem::take(&mut *checked.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(error) = checked.error {
            return Err(anyhow!("{name}: the output differs from the reference: {error}"));
        }
        let summary = summary?;
        if checked.batches != batches {
            return Err(anyhow!(
                "{name}: {} batches checked, {batches} expected",
                checked.batches
            ));
        }
        progress(&format!(
            "{name}: {:.1} s, {} records, {} checkpoints, peak RSS {:.0} MB",
            elapsed.as_secs_f64(),
            checked.records,
            summary.checkpoints.written,
            peak_rss as f64 / 1e6
        ));
        Ok(PhaseReport {
            batches,
            records: summary.records_in,
            elapsed,
            peak_rss,
            summary,
        })
    };
    let load = run_phase("load", LOAD_CHECKPOINT_EVERY, load_batches)?;
    // The updates arrive after the load: the update run resumes from the
    // load's last checkpoint and reads only them.
    generate_updates(&input, settings, load_batches).context("cannot write the benchmark input")?;
    let update = run_phase("update", 1, settings.update_batches)?;
    let checkpoint_dir_bytes = checkpoints.bytes()?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(StateBenchReport {
        settings: settings.clone(),
        checkpoint_dir_bytes,
        checkpoint_location: if settings.on_object_storage {
            format!("{} on moto_server (loopback)", checkpoints.dir)
        } else {
            "a local directory".into()
        },
        peak_reset,
        process_peak_rss: peak_before
            .max(load.peak_rss)
            .max(update.peak_rss)
            .max(peak_rss()),
        load,
        update,
    })
}

/// The report as the lines `weir bench` prints.
pub fn describe(report: &StateBenchReport) -> String {
    let s = &report.settings;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let ms = |time: Duration| time.as_secs_f64() * 1e3;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "keyed state: update-state-by-key over {} keys x {} B of state, state-memory {}, {} workers, {} state partitions:",
        s.keys, s.state_bytes, s.state_memory, s.partitions, s.state_partitions
    );
    for (name, phase) in [("load", &report.load), ("update", &report.update)] {
        let stats = &phase.summary.checkpoints;
        let _ = writeln!(
            out,
            "  {name:<6} {} batches, {} records in {:.1} s: {:.0} records/s; state {} keys, {} on disk, {:.1} MB in memory; peak RSS {:.0} MB",
            phase.batches,
            phase.records,
            phase.elapsed.as_secs_f64(),
            phase.records_per_second(),
            phase.summary.state.keys,
            phase.summary.state.spilled_keys,
            mb(phase.summary.state.memory_bytes),
            mb(phase.peak_rss)
        );
        let _ = writeln!(
            out,
            "         {} checkpoints: mean {:.2} MB (max {:.2} MB), mean {:.1} ms (max {:.1} ms), pause between batches mean {:.1} ms (max {:.1} ms); {} compactions writing {:.1} MB; the last checkpoint's chain {:.1} MB",
            stats.written,
            mb(phase.mean_checkpoint_bytes()),
            mb(stats.max_bytes),
            ms(phase.mean_checkpoint_time()),
            ms(stats.max_duration),
            ms(phase.mean_snapshot_time()),
            ms(stats.max_snapshot),
            stats.compactions,
            mb(stats.compacted_bytes),
            mb(stats.chain_bytes)
        );
    }
    let _ = writeln!(
        out,
        "  recovery before the update run (check and restore the load's last checkpoint): {:.1} s",
        report.update.summary.checkpoints.recovery_time.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  checkpoints on {}: {:.1} MB at the end; peak RSS of the process {:.0} MB{}",
        report.checkpoint_location,
        mb(report.checkpoint_dir_bytes),
        mb(report.process_peak_rss),
        if report.peak_reset {
            ""
        } else {
            " (the peak could not be reset between runs)"
        }
    );
    let _ = write!(
        out,
        "  output exact against the reference: every record of every batch checked"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_adds_each_update_once_in_its_batch() {
        // Key 205 changes in update batches 5, 105, 205, …
        assert_eq!(expected_total(205, None), load_value(205));
        assert_eq!(expected_total(205, Some(4)), load_value(205));
        assert_eq!(
            expected_total(205, Some(105)),
            load_value(205) + update_value(205, 5) + update_value(205, 105)
        );
        assert!(changes(205, 105) && !changes(205, 106));
    }
}
