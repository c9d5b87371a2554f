//! Fault tolerance: the batch log, checkpoints and recovery.
//!
//! Structured Streaming's design, on a [`CheckpointStorage`]:
//!
//! - **Batch log** (`offsets/<batch>`): before a batch runs, what each source
//!   contributes to it ([`BatchInput`]: generator lines, file segments,
//!   write-ahead log bytes) and the batch's time are written durably. A batch
//!   re-run after a crash therefore has the same id, time and contents.
//! - **Checkpoints** (`checkpoints/<batch>/`): every `every-batches` batches
//!   (or `every` seconds), at a batch boundary, every stateful operator's
//!   state is snapshotted on the driver thread, then written in the
//!   background with a manifest: the pipeline's name, each plugin's
//!   content hash, each source's progress, the last batch id and what the
//!   sinks have committed, with a checksum of every state file. The manifest
//!   is written last and `LATEST` is switched atomically after it, so a crash
//!   in the middle leaves the previous checkpoint whole. The last `keep`
//!   checkpoints are kept; the batch log is truncated behind the oldest.
//! - **Recovery** ([`Checkpointer::open`]): the newest readable checkpoint is
//!   restored (a corrupt or truncated one is reported and the previous one
//!   used), then the logged batches after it are replayed with their ids,
//!   times and inputs, and the pipeline goes on.

pub mod codec;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::runtime::content_hash;
use serde::{Deserialize, Serialize};

use crate::source::{BatchInput, SourceProgress};
pub use storage::{CheckpointStorage, LocalStorage};

/// How often and where to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// Checkpoint after every this many batches.
    pub every_batches: u64,
    /// Also checkpoint when this much time passed since the last one.
    pub every: Option<Duration>,
    /// Checkpoints kept.
    pub keep: usize,
    /// When write-ahead logs are synced.
    pub wal_sync: crate::source::wal::WalSync,
}

/// Checkpointing or recovery failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing the checkpoint directory failed (a full disk, say).
    #[error("checkpoint directory {dir}: cannot {action}: {error}")]
    Io {
        /// The directory.
        dir: String,
        /// What was being done.
        action: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A plugin's component differs from the one the checkpoint was taken with.
    #[error(
        "plugin `{plugin}` changed since the checkpoint of batch {batch} (content hash {old} then, {new} now); \
         its state may not fit the new version: restore the old component, or pass --allow-plugin-change to resume anyway"
    )]
    PluginChanged {
        /// The plugin's name.
        plugin: String,
        /// The checkpoint's last batch.
        batch: u64,
        /// Hash in the checkpoint.
        old: String,
        /// Hash now.
        new: String,
    },
    /// The checkpoint directory cannot be resumed from.
    #[error("checkpoint directory {dir}: {message}")]
    Unusable {
        /// The directory.
        dir: String,
        /// Why.
        message: String,
    },
}

/// One batch as written to the batch log before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedBatch {
    /// The batch id.
    pub batch: u64,
    /// The batch time, in milliseconds since the Unix epoch.
    pub time: i64,
    /// What each source contributes, in source order.
    pub inputs: Vec<BatchInput>,
}

/// A state file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The operator it belongs to (`<stage>#<index>`).
    pub operator: String,
    /// File name in the checkpoint.
    pub file: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the contents.
    pub sha256: String,
}

/// What a checkpoint holds besides operator state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// The pipeline's name.
    pub pipeline: String,
    /// Plugin name → hex SHA-256 of its component.
    pub plugins: BTreeMap<String, String>,
    /// The last batch the checkpoint includes.
    pub batch: u64,
    /// That batch's time.
    pub time: i64,
    /// Each source's progress after that batch, in source order.
    pub sources: Vec<SourceProgress>,
    /// The sources' names, in source order.
    #[serde(default)]
    pub source_names: Vec<String>,
    /// Sink name → the last batch it committed.
    pub sinks: BTreeMap<String, u64>,
    /// The operator state files.
    pub states: Vec<StateFile>,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Restored {
    /// Its manifest.
    pub manifest: Manifest,
    /// Operator key → its state snapshot.
    pub states: HashMap<String, Vec<u8>>,
}

/// What recovery found in the checkpoint directory.
#[derive(Debug, Default)]
pub struct Recovery {
    /// The checkpoint to restore, if any.
    pub restored: Option<Restored>,
    /// Batches logged after it, in order: to replay.
    pub logged: Vec<LoggedBatch>,
}

/// What one written checkpoint cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Its last batch.
    pub batch: u64,
    /// Bytes written (state files and manifest).
    pub bytes: u64,
    /// Snapshot (on the driver thread) plus background write.
    pub duration: Duration,
}

const LATEST: &str = "LATEST";
pub(crate) const FORMAT: u32 = 1;

/// The write-ahead log directory of source `source` under checkpoint directory `dir`.
pub fn wal_dir(dir: &std::path::Path, source: &str) -> PathBuf {
    dir.join("wal").join(source)
}

fn offsets_name(batch: u64) -> String {
    format!("offsets/{batch:020}.json")
}

fn checkpoint_dir(batch: u64) -> String {
    format!("checkpoints/{batch:020}")
}

/// Writes the batch log and checkpoints of one pipeline.
pub struct Checkpointer {
    storage: Arc<dyn CheckpointStorage>,
    settings: CheckpointSettings,
    writer: Option<JoinHandle<Result<CheckpointReport, CheckpointError>>>,
    last_checkpoint: Instant,
    batches_since: u64,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Opens the checkpoint directory of `settings` and reads what there is to
    /// recover. `plugins` are the content hashes of the plugins now; a
    /// checkpoint taken with other ones is refused unless `allow_plugin_change`.
    pub fn open(
        settings: CheckpointSettings,
        plugins: &BTreeMap<String, String>,
        allow_plugin_change: bool,
    ) -> Result<(Self, Recovery), CheckpointError> {
        let dir = settings.dir.display().to_string();
        let storage = LocalStorage::new(&settings.dir).map_err(|error| CheckpointError::Io {
            dir: dir.clone(),
            action: "create it".into(),
            error,
        })?;
        let checkpointer = Self {
            storage: Arc::new(storage),
            settings,
            writer: None,
            last_checkpoint: Instant::now(),
            batches_since: 0,
        };
        let recovery = checkpointer.recover(plugins, allow_plugin_change)?;
        Ok((checkpointer, recovery))
    }

    fn io(&self, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        let action = action.into();
        move |error| CheckpointError::Io {
            dir: self.settings.dir.display().to_string(),
            action,
            error,
        }
    }

    /// The newest readable checkpoint and the batches logged after it.
    fn recover(
        &self,
        plugins: &BTreeMap<String, String>,
        allow_plugin_change: bool,
    ) -> Result<Recovery, CheckpointError> {
        let mut candidates: Vec<u64> = self
            .storage
            .list("checkpoints")
            .map_err(self.io("list checkpoints"))?
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(latest) = self
            .storage
            .get(LATEST)
            .map_err(self.io("read LATEST"))?
            .and_then(|bytes| String::from_utf8(bytes).ok()?.trim().parse::<u64>().ok())
            && let Some(at) = candidates.iter().position(|&c| c == latest)
        {
            candidates[..=at].rotate_right(1);
        }
        let mut restored = None;
        for batch in candidates {
            match self.load(batch) {
                Ok(checkpoint) => {
                    restored = Some(checkpoint);
                    break;
                }
                Err(reason) => tracing::warn!(
                    checkpoint = batch,
                    "checkpoint of batch {batch} is unusable ({reason}); falling back to the previous one"
                ),
            }
        }
        if let Some(checkpoint) = &restored
            && !allow_plugin_change
        {
            for (plugin, old) in &checkpoint.manifest.plugins {
                if let Some(new) = plugins.get(plugin)
                    && new != old
                {
                    return Err(CheckpointError::PluginChanged {
                        plugin: plugin.clone(),
                        batch: checkpoint.manifest.batch,
                        old: old.clone(),
                        new: new.clone(),
                    });
                }
            }
        }
        let first = restored.as_ref().map_or(0, |r| r.manifest.batch + 1);
        let mut logged_ids: Vec<u64> = self
            .storage
            .list("offsets")
            .map_err(self.io("list the batch log"))?
            .iter()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .filter(|&batch| batch >= first)
            .collect();
        logged_ids.sort_unstable();
        if restored.is_none() && logged_ids.first().is_some_and(|&batch| batch > 0) {
            return Err(CheckpointError::Unusable {
                dir: self.settings.dir.display().to_string(),
                message: format!(
                    "no checkpoint can be read, and the batch log starts at batch {} (earlier batches were truncated after a checkpoint): move the directory away to start over",
                    logged_ids[0]
                ),
            });
        }
        let mut logged = Vec::new();
        let mut stale = Vec::new();
        for (expected, batch) in (first..).zip(logged_ids) {
            if batch != expected || !stale.is_empty() {
                stale.push(batch);
                continue;
            }
            let entry = self
                .storage
                .get(&offsets_name(batch))
                .map_err(self.io("read the batch log"))?
                .and_then(|bytes| serde_json::from_slice::<LoggedBatch>(&bytes).ok());
            match entry {
                Some(entry) if entry.batch == batch => logged.push(entry),
                _ => {
                    tracing::warn!(
                        batch,
                        "batch log entry {batch} is unreadable: replay stops before it"
                    );
                    stale.push(batch);
                }
            }
        }
        // Entries after a gap or an unreadable one do not follow from what is
        // replayed: the batches they describe will be logged again.
        for batch in stale {
            self.storage
                .remove(&offsets_name(batch))
                .map_err(self.io(format!("remove the stale batch log entry {batch}")))?;
        }
        if let Some(checkpoint) = &restored {
            tracing::info!(
                checkpoint = checkpoint.manifest.batch,
                replay = logged.len(),
                "resuming from the checkpoint of batch {}; replaying {} logged batches",
                checkpoint.manifest.batch,
                logged.len()
            );
        } else if !logged.is_empty() {
            tracing::info!(
                replay = logged.len(),
                "no checkpoint yet; replaying {} logged batches",
                logged.len()
            );
        }
        Ok(Recovery { restored, logged })
    }

    /// Reads and checks the checkpoint of `batch`.
    fn load(&self, batch: u64) -> Result<Restored, String> {
        let dir = checkpoint_dir(batch);
        let manifest = self
            .storage
            .get(&format!("{dir}/manifest.json"))
            .map_err(|e| e.to_string())?
            .ok_or("no manifest (the checkpoint was not finished)")?;
        let manifest: Manifest =
            serde_json::from_slice(&manifest).map_err(|e| format!("unreadable manifest: {e}"))?;
        if manifest.version != FORMAT || manifest.batch != batch {
            return Err(format!(
                "manifest of version {} for batch {}",
                manifest.version, manifest.batch
            ));
        }
        let mut states = HashMap::new();
        for state in &manifest.states {
            let bytes = self
                .storage
                .get(&format!("{dir}/{}", state.file))
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{} is missing", state.file))?;
            if bytes.len() as u64 != state.bytes || content_hash(&bytes) != state.sha256 {
                return Err(format!(
                    "{} is truncated or corrupt (checksum mismatch)",
                    state.file
                ));
            }
            states.insert(state.operator.clone(), bytes);
        }
        Ok(Restored { manifest, states })
    }

    /// Writes `batch` to the batch log, durably, before it runs.
    pub fn log_batch(&self, batch: &LoggedBatch) -> Result<(), CheckpointError> {
        let bytes = serde_json::to_vec(batch).expect("a batch log entry serializes");
        self.storage
            .put(&offsets_name(batch.batch), &bytes)
            .map_err(self.io(format!("write the batch log entry of batch {}", batch.batch)))?;
        crate::failpoint::crash_point("batch-logged");
        Ok(())
    }

    /// Counts a finished batch; true when a checkpoint is due after it.
    pub fn batch_done(&mut self) -> bool {
        self.batches_since += 1;
        self.batches_since >= self.settings.every_batches
            || self
                .settings
                .every
                .is_some_and(|every| self.last_checkpoint.elapsed() >= every)
    }

    /// Starts writing a checkpoint in the background: `states` are operator
    /// snapshots taken at the batch boundary. Returns false (and writes
    /// nothing) while the previous checkpoint has not been collected
    /// ([`Checkpointer::collect_finished`], [`Checkpointer::collect`]).
    pub fn start(
        &mut self,
        manifest: Manifest,
        states: Vec<(String, Vec<u8>)>,
        snapshot_time: Duration,
    ) -> Result<bool, CheckpointError> {
        if self.writer.is_some() {
            // Still being written (or not yet collected): try again later.
            return Ok(false);
        }
        let storage = self.storage.clone();
        let dir = self.settings.dir.display().to_string();
        let keep = self.settings.keep.max(1);
        let started = Instant::now();
        self.writer = Some(std::thread::spawn(move || {
            write_checkpoint(storage.as_ref(), &dir, manifest, states, keep).map(|(batch, bytes)| {
                CheckpointReport {
                    batch,
                    bytes,
                    duration: snapshot_time + started.elapsed(),
                }
            })
        }));
        self.batches_since = 0;
        self.last_checkpoint = Instant::now();
        Ok(true)
    }

    /// True while a checkpoint is being written in the background.
    pub fn busy(&self) -> bool {
        self.writer.is_some()
    }

    /// The report of the checkpoint written in the background if it has
    /// finished (its failure as an error); `None` while it is still running.
    pub fn collect_finished(&mut self) -> Result<Option<CheckpointReport>, CheckpointError> {
        if self.writer.as_ref().is_some_and(|w| w.is_finished()) {
            self.collect()
        } else {
            Ok(None)
        }
    }

    /// Waits for the checkpoint being written, if any, and returns its report.
    pub fn collect(&mut self) -> Result<Option<CheckpointReport>, CheckpointError> {
        let Some(writer) = self.writer.take() else {
            return Ok(None);
        };
        let report = writer.join().unwrap_or_else(|_| {
            Err(CheckpointError::Unusable {
                dir: self.settings.dir.display().to_string(),
                message: "the checkpoint writer panicked".into(),
            })
        })?;
        tracing::info!(
            checkpoint = report.batch,
            bytes = report.bytes,
            ms = report.duration.as_secs_f64() * 1e3,
            "checkpoint written"
        );
        Ok(Some(report))
    }
}

/// Writes the state files, then the manifest, then `LATEST`; then prunes.
fn write_checkpoint(
    storage: &dyn CheckpointStorage,
    dir: &str,
    mut manifest: Manifest,
    states: Vec<(String, Vec<u8>)>,
    keep: usize,
) -> Result<(u64, u64), CheckpointError> {
    let io = |action: String| {
        move |error| CheckpointError::Io {
            dir: dir.to_owned(),
            action,
            error,
        }
    };
    let batch = manifest.batch;
    let prefix = checkpoint_dir(batch);
    let mut total = 0u64;
    manifest.states.clear();
    for (index, (operator, bytes)) in states.into_iter().enumerate() {
        let file = format!("state-{index:04}.bin");
        storage
            .put(&format!("{prefix}/{file}"), &bytes)
            .map_err(io(format!("write {prefix}/{file}")))?;
        total += bytes.len() as u64;
        manifest.states.push(StateFile {
            operator,
            file,
            bytes: bytes.len() as u64,
            sha256: content_hash(&bytes),
        });
    }
    crate::failpoint::crash_point("checkpoint-state");
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    total += manifest_bytes.len() as u64;
    storage
        .put(&format!("{prefix}/manifest.json"), &manifest_bytes)
        .map_err(io(format!("write {prefix}/manifest.json")))?;
    storage
        .put(LATEST, format!("{batch}\n").as_bytes())
        .map_err(io("switch LATEST".into()))?;
    crate::failpoint::crash_point("checkpoint-done");
    // Keep the newest `keep` finished checkpoints, and the batch log after
    // the oldest. Directories without a readable manifest (a checkpoint cut
    // short by a crash or a full disk), and any numbered above this one
    // (left by a run that crashed before finishing them), never count.
    let mut kept: Vec<(u64, Manifest)> = Vec::new();
    for name in storage
        .list("checkpoints")
        .map_err(io("list checkpoints".into()))?
    {
        let Ok(id) = name.parse::<u64>() else { continue };
        let finished = (id <= batch)
            .then(|| {
                storage
                    .get(&format!("{}/manifest.json", checkpoint_dir(id)))
                    .ok()
                    .flatten()
            })
            .flatten()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok());
        match finished {
            Some(finished) => kept.push((id, finished)),
            None => storage
                .remove(&checkpoint_dir(id))
                .map_err(io(format!("remove the unfinished checkpoint of batch {id}")))?,
        }
    }
    kept.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
    for (old, _) in kept.iter().skip(keep) {
        storage
            .remove(&checkpoint_dir(*old))
            .map_err(io(format!("remove the checkpoint of batch {old}")))?;
    }
    let oldest = kept.get(keep.saturating_sub(1).min(kept.len().saturating_sub(1)));
    if let Some((oldest, oldest_manifest)) = oldest {
        let oldest = *oldest;
        // Write-ahead logs: what is behind the oldest kept checkpoint is
        // never read again.
        for (name, progress) in oldest_manifest.source_names.iter().zip(&oldest_manifest.sources) {
            if let Some(crate::source::SourcePosition::Wal { offset }) = progress.position {
                let wal = wal_dir(std::path::Path::new(dir), name);
                crate::source::wal::Wal::truncate_before(&wal, offset)
                    .map_err(io(format!("truncate the write-ahead log of `{name}`")))?;
            }
        }
        for name in storage.list("offsets").map_err(io("list the batch log".into()))? {
            if name
                .strip_suffix(".json")
                .and_then(|id| id.parse::<u64>().ok())
                .is_some_and(|id| id <= oldest)
            {
                storage
                    .remove(&format!("offsets/{name}"))
                    .map_err(io(format!("truncate the batch log at {name}")))?;
            }
        }
    }
    Ok((batch, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, keep: usize) -> CheckpointSettings {
        CheckpointSettings {
            dir: dir.to_owned(),
            every_batches: 1,
            every: None,
            keep,
            wal_sync: crate::source::wal::WalSync::Block,
        }
    }

    fn manifest(batch: u64) -> Manifest {
        Manifest {
            version: FORMAT,
            pipeline: "p".into(),
            plugins: BTreeMap::from([("split".into(), "aa".into())]),
            batch,
            time: batch as i64 * 1000,
            sources: vec![SourceProgress::default()],
            source_names: vec!["lines".into()],
            sinks: BTreeMap::new(),
            states: Vec::new(),
        }
    }

    #[test]
    fn a_corrupt_latest_checkpoint_falls_back_and_old_ones_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = BTreeMap::from([("split".to_owned(), "aa".to_owned())]);
        let (mut checkpointer, recovery) =
            Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert!(recovery.restored.is_none());
        for batch in 0..4u64 {
            checkpointer
                .log_batch(&LoggedBatch {
                    batch,
                    time: 0,
                    inputs: vec![BatchInput::Generator {
                        start: batch * 10,
                        end: batch * 10 + 10,
                    }],
                })
                .unwrap();
            if batch % 2 == 1 {
                let state = vec![("s#0".to_owned(), vec![batch as u8; 100])];
                assert!(
                    checkpointer
                        .start(manifest(batch), state, Duration::ZERO)
                        .unwrap()
                );
                checkpointer.collect().unwrap();
            }
        }
        // Batches 0 and 1 are behind the oldest kept checkpoint... of two: 1 and 3.
        let storage = LocalStorage::new(dir.path()).unwrap();
        assert_eq!(storage.list("checkpoints").unwrap().len(), 2);
        assert!(storage.get(&offsets_name(0)).unwrap().is_none());
        assert!(storage.get(&offsets_name(2)).unwrap().is_some());
        // Corrupt the newest state file: recovery uses the checkpoint of batch 1
        // and replays batches 2 and 3.
        storage
            .put(&format!("{}/state-0000.bin", checkpoint_dir(3)), b"garbage")
            .unwrap();
        let (_, recovery) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        let restored = recovery.restored.unwrap();
        assert_eq!(restored.manifest.batch, 1);
        assert_eq!(restored.states["s#0"], vec![1u8; 100]);
        assert_eq!(
            recovery.logged.iter().map(|b| b.batch).collect::<Vec<_>>(),
            vec![2, 3]
        );
        // A changed plugin is refused unless allowed.
        let changed = BTreeMap::from([("split".to_owned(), "bb".to_owned())]);
        let error = Checkpointer::open(settings(dir.path(), 2), &changed, false).unwrap_err();
        assert!(error.to_string().contains("--allow-plugin-change"), "{error}");
        assert!(Checkpointer::open(settings(dir.path(), 2), &changed, true).is_ok());
    }
}
