//! Fault tolerance: the batch log, checkpoints and recovery.
//!
//! Structured Streaming's design, on a [`CheckpointStorage`]:
//!
//! - **Batch log** (`offsets/<batch>`): before a batch runs, what each source
//!   contributes to it ([`BatchInput`]: generator lines, file segments,
//!   write-ahead log bytes) and the batch's time are written durably. A batch
//!   re-run after a crash therefore has the same id, time and contents.
//!   Batches that take no input are logged in place, in segments
//!   ([`idle_log`]), so that an idle pipeline costs no new file per batch.
//! - **Checkpoints** (`checkpoints/<batch>/`): every `every-batches` batches
//!   (or `every` seconds), at a batch boundary, every stateful operator's
//!   state is snapshotted on the driver thread, then written in the
//!   background with a manifest: the pipeline's name, each plugin's
//!   content hash, each source's progress, the last batch id and what the
//!   sinks have committed, with a checksum of every state file. The manifest
//!   is written last and `LATEST` is switched atomically after it, so a crash
//!   in the middle leaves the previous checkpoint whole. The last `keep`
//!   checkpoints are kept; the batch log is truncated behind the oldest.
//! - **Incremental state** ([`incremental`], [`chain`]): an operator that
//!   supports it (keyed state) writes, per checkpoint, only what changed
//!   since the previous one, as a *part* under `incremental/`; its entry in
//!   the manifest lists the *chain* of parts its state is made of, a full
//!   part first. Every `full-every` checkpoints (default 50), or once the parts of
//!   changes outweigh the full part, the background writer merges the chain
//!   into a new full part (compaction), reading files, never the live
//!   state. A part stays while a kept checkpoint lists it; the others are
//!   removed after each checkpoint. So checkpoint time and size follow the
//!   change rate, and the disk holds at most the kept chains (with `keep =
//!   2`, around two full parts and the changes since).
//! - **Recovery** ([`Checkpointer::open`]): the newest readable checkpoint is
//!   restored (a corrupt or truncated one is reported and the previous one
//!   used), then the logged batches after it are replayed with their ids,
//!   times and inputs, and the pipeline goes on.

mod at_once;
pub mod chain;
pub mod codec;
pub mod idle_log;
pub mod incremental;
#[cfg(feature = "object-store")]
pub mod object_storage;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::runtime::content_hash;
use serde::{Deserialize, Serialize};

use crate::source::{BatchInput, SourceProgress};
pub use chain::{NewPart, OperatorState, StatePart};
pub use storage::{BlobWriter, CheckpointStorage, InPlaceFile, LocalStorage};

/// How often and where to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointSettings {
    /// Where checkpoints and the batch log are kept.
    pub location: CheckpointLocation,
    /// Checkpoint after every this many batches.
    pub every_batches: u64,
    /// Also checkpoint when this much time passed since the last one.
    pub every: Option<Duration>,
    /// Checkpoints kept.
    pub keep: usize,
    /// Incremental state is compacted into a full part once its chain holds
    /// more than this many parts (so a full part every this many checkpoints).
    pub full_every: u64,
    /// When write-ahead logs are synced.
    pub wal_sync: crate::source::wal::WalSync,
    /// The tenant's root the directory lies in, when it is confined to one
    /// (a server's tenant): the directory is opened from it, through
    /// cap-std, so no link can lead out of it.
    pub confined_to: Option<PathBuf>,
}

/// Where a pipeline's checkpoints and batch log are kept
/// (`checkpoint-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointLocation {
    /// A local directory.
    Directory(PathBuf),
    /// A bucket's prefix on S3-compatible object storage (`s3://`).
    #[cfg(feature = "object-store")]
    Objects(crate::objects::ObjectTarget),
}

impl CheckpointLocation {
    /// The local directory, when it is one.
    pub fn directory(&self) -> Option<&Path> {
        match self {
            Self::Directory(dir) => Some(dir),
            #[cfg(feature = "object-store")]
            Self::Objects(_) => None,
        }
    }

    /// The location `relative` (a `/`-separated path) below this one.
    pub fn child(&self, relative: &str) -> Self {
        match self {
            Self::Directory(dir) => Self::Directory(dir.join(relative)),
            #[cfg(feature = "object-store")]
            Self::Objects(target) => Self::Objects(target.child(relative)),
        }
    }
}

impl std::fmt::Display for CheckpointLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Directory(dir) => write!(f, "{}", dir.display()),
            #[cfg(feature = "object-store")]
            Self::Objects(target) => f.write_str(&target.url()),
        }
    }
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
    /// Another process wrote a checkpoint here while this one ran: two runs
    /// of the pipeline share the directory (in a cluster: the partition
    /// moved to another process while this one still ran it).
    #[error(
        "checkpoint directory {dir}: the checkpoint of batch {batch} was written by another process while this one ran: two pipelines share this checkpoint directory"
    )]
    Superseded {
        /// The directory.
        dir: String,
        /// The batch whose checkpoint the other process wrote.
        batch: u64,
    },
}

/// Where a kept plugin component lies in the checkpoint directory.
fn plugin_blob_name(sha256: &str) -> String {
    // Only hex digits reach a file name.
    let sha: String = sha256.chars().filter(char::is_ascii_hexdigit).collect();
    format!("plugins/{sha}.wasm")
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
    /// The plugin version each stage's plugin (`stage/plugin`) ran this
    /// batch with, so that a replay runs it with the same one. Empty in
    /// logs written before hot-load.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, LoggedVersion>,
}

/// The plugin version a stage ran a batch with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedVersion {
    /// Hex SHA-256 of the component (kept under `plugins/` in the checkpoint directory).
    pub sha256: String,
    /// The configuration its instances got, when a swap changed it from
    /// the pipeline file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Vec<(String, String)>>,
    /// The version a failed call fell back on: set while this one was on
    /// probation after a swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Box<LoggedVersion>>,
    /// Batches of its probation left, with `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation_left: Option<u64>,
    /// Failed calls its probation tolerates, with `fallback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u64>,
    /// The canary beside it: the version the keys hashed to it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Box<LoggedCanary>>,
    /// The version of the format of the state it keeps, when not 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u32>,
}

/// A canary as the batch log names it: its version, its share of the keys
/// and its rule (so that a restart goes on with the same canary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedCanary {
    /// The canary's version.
    pub version: LoggedVersion,
    /// The ten-thousandths of the key range hashed to it.
    pub share: u64,
    /// Promoted after this many clean batches in a row (`None`: by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_after: Option<u64>,
    /// Given up past this many failed calls.
    #[serde(default)]
    pub max_failures: u64,
}

/// An operator's state in a checkpoint: a file of the checkpoint's own,
/// or a chain of incremental parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The operator it belongs to (`<stage>#<index>`).
    pub operator: String,
    /// File name in the checkpoint (state written whole); empty for
    /// incremental state.
    #[serde(default)]
    pub file: String,
    /// Size in bytes (for incremental state, of all its parts).
    pub bytes: u64,
    /// Hex SHA-256 of the contents (state written whole).
    #[serde(default)]
    pub sha256: String,
    /// Incremental state: its parts, oldest (a full one) first, each
    /// applied on top of the ones before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<StatePart>,
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
    /// The plugin version each stage's plugin (`stage/plugin`) had when the
    /// checkpoint was taken (after hot-loads, not necessarily the pipeline
    /// file's). Empty in checkpoints written before hot-load.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stage_plugins: BTreeMap<String, LoggedVersion>,
}

/// An operator's state in a checkpoint read back.
#[derive(Debug)]
pub enum RestoredState {
    /// A snapshot written whole.
    Whole(Vec<u8>),
    /// A chain of incremental parts (checked), read as a stream on restore
    /// ([`Checkpointer::open_chain`]).
    Parts(Vec<StatePart>),
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Restored {
    /// Its manifest.
    pub manifest: Manifest,
    /// Operator key → its state.
    pub states: HashMap<String, RestoredState>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Its last batch.
    pub batch: u64,
    /// Bytes written (state files, incremental parts and manifest), not
    /// counting compaction.
    pub bytes: u64,
    /// Bytes of full parts written by compaction.
    pub compacted_bytes: u64,
    /// Chains compacted.
    pub compactions: u64,
    /// The snapshot on the driver thread (the pause between two batches).
    pub snapshot: Duration,
    /// Snapshot plus background write (compaction included).
    pub duration: Duration,
    /// Each incrementally checkpointed operator's chain in this checkpoint.
    pub chains: Vec<(String, Vec<StatePart>)>,
}

const LATEST: &str = "LATEST";
/// The manifest format written: 2 added incremental parts; 3, segments of
/// idle batches in the batch log ([`idle_log`]), which a reader of format 2
/// would take for gaps (so it must refuse the directory, not replay it).
pub(crate) const FORMAT: u32 = 3;
/// The oldest manifest format still read: 1 (every state written whole).
const OLDEST_FORMAT: u32 = 1;

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
    /// No batch since the last checkpoint took input.
    only_idle: bool,
    idle_log: idle_log::IdleLog,
}

/// How many times less often a stretch of batches that take no input is
/// checkpointed: its batches replay cheaply from the batch log, and an idle
/// pipeline should not keep the disk busy with checkpoints of nothing new.
pub const IDLE_STRETCH: u32 = 10;

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
        let dir = settings.location.to_string();
        let storage: std::io::Result<Arc<dyn CheckpointStorage>> =
            match (&settings.location, &settings.confined_to) {
                (CheckpointLocation::Directory(path), Some(root)) => {
                    LocalStorage::confined(root, path).map(|s| Arc::new(s) as _)
                }
                (CheckpointLocation::Directory(path), None) => {
                    LocalStorage::new(path).map(|s| Arc::new(s) as _)
                }
                #[cfg(feature = "object-store")]
                (CheckpointLocation::Objects(target), _) => {
                    object_storage::ObjectStorage::new(target.clone()).map(|s| Arc::new(s) as _)
                }
            };
        let storage = storage.map_err(|error| CheckpointError::Io {
            dir: dir.clone(),
            action: "create it".into(),
            error,
        })?;
        let checkpointer = Self {
            storage,
            settings,
            writer: None,
            last_checkpoint: Instant::now(),
            batches_since: 0,
            only_idle: true,
            idle_log: idle_log::IdleLog::default(),
        };
        let recovery = checkpointer.recover(plugins, allow_plugin_change)?;
        Ok((checkpointer, recovery))
    }

    fn io(&self, action: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
        let action = action.into();
        move |error| CheckpointError::Io {
            dir: self.settings.location.to_string(),
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
            match self
                .load(batch)
                .map_err(self.io(format!("read the checkpoint of batch {batch}")))?
            {
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
        // A checkpoint that names each stage's version is checked by the
        // pipeline instead: it resumes on those versions (kept in the
        // directory) and swaps to the pipeline file's after the replay.
        if let Some(checkpoint) = &restored
            && !allow_plugin_change
            && checkpoint.manifest.stage_plugins.is_empty()
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
        let names = self
            .storage
            .list("offsets")
            .map_err(self.io("list the batch log"))?;
        // Idle batches' entries, from their segments: batch → entry.
        let (segments, mut in_segments) = idle_log::Segments::read(self.storage.as_ref(), &names, first)
            .map_err(self.io("read the batch log's segments"))?;
        let in_files: std::collections::BTreeSet<u64> = names
            .iter()
            .filter_map(|name| name.strip_suffix(".json")?.parse().ok())
            .filter(|&batch| batch >= first)
            .collect();
        let mut logged_ids: Vec<u64> = in_files
            .iter()
            .copied()
            .chain(in_segments.keys().copied())
            .collect();
        logged_ids.sort_unstable();
        logged_ids.dedup();
        if restored.is_none() && logged_ids.first().is_some_and(|&batch| batch > 0) {
            return Err(CheckpointError::Unusable {
                dir: self.settings.location.to_string(),
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
            let entry = match in_segments.remove(&batch) {
                Some(entry) => Some(entry),
                None => self
                    .storage
                    .get(&offsets_name(batch))
                    .map_err(self.io("read the batch log"))?
                    .and_then(|bytes| serde_json::from_slice::<LoggedBatch>(&bytes).ok()),
            };
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
        for batch in stale.into_iter().filter(|batch| in_files.contains(batch)) {
            self.storage
                .remove(&offsets_name(batch))
                .map_err(self.io(format!("remove the stale batch log entry {batch}")))?;
        }
        // Checkpoints after the restored one (cut short, unusable, or
        // finished after LATEST was last switched) are taken again by the
        // replay, whose manifests are written create-only.
        for name in self
            .storage
            .list("checkpoints")
            .map_err(self.io("list checkpoints"))?
        {
            if let Ok(batch) = name.parse::<u64>()
                && batch >= first
            {
                tracing::info!(
                    checkpoint = batch,
                    "removing the checkpoint of batch {batch}: the replay takes it again"
                );
                self.storage
                    .remove(&checkpoint_dir(batch))
                    .map_err(self.io(format!("remove the checkpoint of batch {batch}")))?;
            }
        }
        segments
            .settle(self.storage.as_ref(), first, first + logged.len() as u64)
            .map_err(self.io("bring the batch log's segments in line with the replay"))?;
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

    /// Reads and checks the checkpoint of `batch`: the checkpoint, or why it
    /// cannot be used; an error when the storage cannot be read (so that
    /// recovery neither falls back nor removes what it could not read over a
    /// passing failure).
    fn load(&self, batch: u64) -> std::io::Result<Result<Restored, String>> {
        let dir = checkpoint_dir(batch);
        let Some(manifest) = self.storage.get(&format!("{dir}/manifest.json"))? else {
            return Ok(Err("no manifest (the checkpoint was not finished)".into()));
        };
        let manifest: Manifest = match serde_json::from_slice(&manifest) {
            Ok(manifest) => manifest,
            Err(e) => return Ok(Err(format!("unreadable manifest: {e}"))),
        };
        if !(OLDEST_FORMAT..=FORMAT).contains(&manifest.version) || manifest.batch != batch {
            return Ok(Err(format!(
                "manifest of version {} for batch {}",
                manifest.version, manifest.batch
            )));
        }
        let mut states = HashMap::new();
        for state in &manifest.states {
            if !state.parts.is_empty() {
                for part in &state.parts {
                    if let Err(reason) = chain::verify(self.storage.as_ref(), part) {
                        return Ok(Err(reason));
                    }
                }
                states.insert(state.operator.clone(), RestoredState::Parts(state.parts.clone()));
                continue;
            }
            let Some(bytes) = self.storage.get(&format!("{dir}/{}", state.file))? else {
                return Ok(Err(format!("{} is missing", state.file)));
            };
            if bytes.len() as u64 != state.bytes || content_hash(&bytes) != state.sha256 {
                return Ok(Err(format!(
                    "{} is truncated or corrupt (checksum mismatch)",
                    state.file
                )));
            }
            states.insert(state.operator.clone(), RestoredState::Whole(bytes));
        }
        Ok(Ok(Restored { manifest, states }))
    }

    /// Opens the parts of a restored chain for reading, oldest first.
    pub fn open_chain(
        &self,
        chain: &[StatePart],
    ) -> Result<Vec<incremental::PartReader<Box<dyn std::io::Read + Send>>>, CheckpointError> {
        chain
            .iter()
            .map(|part| {
                let input = self
                    .storage
                    .open(&part.file)
                    .map_err(self.io(format!("read {}", part.file)))?
                    .ok_or_else(|| CheckpointError::Unusable {
                        dir: self.settings.location.to_string(),
                        message: format!("{} is missing", part.file),
                    })?;
                incremental::PartReader::new(input).map_err(self.io(format!("read {}", part.file)))
            })
            .collect()
    }

    /// Starts writing the incremental part `name` (see [`chain::part_name`])
    /// as a stream; [`Checkpointer::start`] commits it with its checkpoint.
    pub fn create_part(&self, name: &str) -> Result<Box<dyn BlobWriter>, CheckpointError> {
        self.storage
            .create(name)
            .map_err(self.io(format!("write {name}")))
    }

    /// Writes `batch` to the batch log, durably, before it runs. The entry
    /// of an `idle` batch (one that takes no input) goes into a segment
    /// written in place ([`idle_log`]); the others get a file each.
    pub fn log_batch(&mut self, batch: &LoggedBatch, idle: bool) -> Result<(), CheckpointError> {
        let action = || format!("write the batch log entry of batch {}", batch.batch);
        let in_segment = idle
            && self
                .idle_log
                .append(self.storage.as_ref(), batch)
                .map_err(self.io(action()))?;
        if !in_segment {
            let bytes = serde_json::to_vec(batch).expect("a batch log entry serializes");
            self.storage
                .put(&offsets_name(batch.batch), &bytes)
                .map_err(self.io(action()))?;
        }
        crate::failpoint::crash_point("batch-logged");
        Ok(())
    }

    /// Keeps the component `bytes` (hex SHA-256 `sha256`) under `plugins/`,
    /// unless it is there already: a replay of a batch it processed loads it
    /// from there.
    pub fn store_plugin(&self, sha256: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
        let name = plugin_blob_name(sha256);
        let present = self
            .storage
            .list("plugins")
            .map_err(self.io("list the kept plugins"))?
            .iter()
            .any(|kept| *kept == name["plugins/".len()..]);
        if !present {
            self.storage
                .put(&name, bytes)
                .map_err(self.io(format!("keep plugin component {sha256}")))?;
        }
        Ok(())
    }

    /// The component with hex SHA-256 `sha256` kept by [`Checkpointer::store_plugin`].
    pub fn load_plugin(&self, sha256: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        let bytes = self
            .storage
            .get(&plugin_blob_name(sha256))
            .map_err(self.io(format!("read kept plugin component {sha256}")))?;
        // A blob whose bytes are not what its name says is not used.
        Ok(bytes.filter(|bytes| crate::runtime::content_hash(bytes) == sha256))
    }

    /// Removes the kept components not in `keep` (hex SHA-256s).
    pub fn prune_plugins(&self, keep: &std::collections::BTreeSet<String>) -> Result<(), CheckpointError> {
        for name in self
            .storage
            .list("plugins")
            .map_err(self.io("list the kept plugins"))?
        {
            let sha = name.strip_suffix(".wasm").unwrap_or(&name);
            if !keep.contains(sha) {
                self.storage
                    .remove(&format!("plugins/{name}"))
                    .map_err(self.io(format!("remove kept plugin {name}")))?;
            }
        }
        Ok(())
    }

    /// Notes that the batch now running takes input: the next checkpoint
    /// comes on the usual schedule, not the idle one ([`IDLE_STRETCH`]).
    pub fn took_input(&mut self) {
        self.only_idle = false;
    }

    /// Counts a finished batch; true when a checkpoint is due after it:
    /// every `every-batches` batches or `every`, [`IDLE_STRETCH`] times
    /// those while no batch since the last checkpoint took input.
    pub fn batch_done(&mut self) -> bool {
        self.batches_since += 1;
        let stretch = if self.only_idle { IDLE_STRETCH } else { 1 };
        self.batches_since >= self.settings.every_batches.saturating_mul(stretch.into())
            || self
                .settings
                .every
                .is_some_and(|every| self.last_checkpoint.elapsed() >= every.saturating_mul(stretch))
    }

    /// Starts writing a checkpoint in the background: `states` are operator
    /// snapshots taken at the batch boundary. Returns false (and writes
    /// nothing) while the previous checkpoint has not been collected
    /// ([`Checkpointer::collect_finished`], [`Checkpointer::collect`]).
    pub fn start(
        &mut self,
        manifest: Manifest,
        states: Vec<(String, OperatorState)>,
        snapshot_time: Duration,
    ) -> Result<bool, CheckpointError> {
        if self.writer.is_some() {
            // Still being written (or not yet collected): try again later.
            return Ok(false);
        }
        let storage = self.storage.clone();
        let dir = self.settings.location.to_string();
        let keep = self.settings.keep.max(1);
        let full_every = self.settings.full_every.max(1);
        let started = Instant::now();
        let open_segment = self.idle_log.open_segment();
        self.writer = Some(std::thread::spawn(move || {
            let mut report = write_checkpoint(
                storage.as_ref(),
                &dir,
                manifest,
                states,
                keep,
                full_every,
                open_segment,
            )?;
            report.snapshot = snapshot_time;
            report.duration = snapshot_time + started.elapsed();
            Ok(report)
        }));
        self.batches_since = 0;
        self.only_idle = true;
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
                dir: self.settings.location.to_string(),
                message: "the checkpoint writer panicked".into(),
            })
        })?;
        tracing::info!(
            checkpoint = report.batch,
            bytes = report.bytes,
            compacted_bytes = report.compacted_bytes,
            snapshot_ms = report.snapshot.as_secs_f64() * 1e3,
            ms = report.duration.as_secs_f64() * 1e3,
            "checkpoint written"
        );
        Ok(Some(report))
    }
}

/// Most compactions of one checkpoint run at once (on a storage with
/// [`CheckpointStorage::parallel_writes`] above 1). A compaction reads
/// every part of its chain at once and holds up to a part-sized buffer
/// (8 MiB on object storage) for each, and one for the part it writes: up
/// to (parts + 1) × 8 MiB, for chains of up to `full-every` parts.
const COMPACTIONS_AT_ONCE: usize = 4;

/// An operator's state as written by [`write_checkpoint`]: a whole file,
/// or the chain its committed incremental part ends.
enum Written {
    Whole(StateFile),
    Chain(usize, String, Vec<chain::StatePart>),
}

/// Writes the state files (and commits the incremental parts, compacting
/// the chains that are due), then the manifest, then `LATEST`; then prunes.
fn write_checkpoint(
    storage: &dyn CheckpointStorage,
    dir: &str,
    mut manifest: Manifest,
    states: Vec<(String, OperatorState)>,
    keep: usize,
    full_every: u64,
    open_segment: Option<u64>,
) -> Result<CheckpointReport, CheckpointError> {
    let io = |action: String| {
        move |error| CheckpointError::Io {
            dir: dir.to_owned(),
            action,
            error,
        }
    };
    let batch = manifest.batch;
    let prefix = checkpoint_dir(batch);
    let mut report = CheckpointReport {
        batch,
        bytes: 0,
        compacted_bytes: 0,
        compactions: 0,
        snapshot: Duration::ZERO,
        duration: Duration::ZERO,
        chains: Vec::new(),
    };
    manifest.states.clear();
    // The operators' blobs are independent of each other: written several
    // at once where the storage waits on the network.
    let written = at_once::try_each_at_once(
        states.into_iter().enumerate().collect(),
        storage.parallel_writes(),
        |(index, (operator, state))| match state {
            OperatorState::Whole(bytes) => {
                let file = format!("state-{index:04}.bin");
                storage
                    .put(&format!("{prefix}/{file}"), &bytes)
                    .map_err(io(format!("write {prefix}/{file}")))?;
                Ok(Written::Whole(StateFile {
                    operator,
                    file,
                    bytes: bytes.len() as u64,
                    sha256: content_hash(&bytes),
                    parts: Vec::new(),
                }))
            }
            OperatorState::Part(part) => {
                let chain = part.chain();
                part.blob
                    .commit()
                    .map_err(io(format!("write {}", part.part.file)))?;
                Ok(Written::Chain(index, operator, chain))
            }
        },
    );
    let mut chains = Vec::new();
    for written in written? {
        match written {
            Written::Whole(file) => {
                report.bytes += file.bytes;
                manifest.states.push(file);
            }
            Written::Chain(index, operator, chain) => {
                report.bytes += chain.last().map_or(0, |part| part.bytes);
                chains.push((index, operator, chain));
            }
        }
    }
    crate::failpoint::crash_point("checkpoint-state");
    // Compactions read and write whole states: a few at once where the
    // storage waits on the network (each holds a buffer per part it reads).
    let compacted = at_once::try_each_at_once(
        chains,
        storage.parallel_writes().min(COMPACTIONS_AT_ONCE),
        |(index, operator, chain)| {
            if !chain::compaction_due(&chain, full_every) {
                return Ok((operator, chain, false));
            }
            let full =
                chain::compact(storage, &chain, &chain::full_name(batch, index)).map_err(|message| {
                    CheckpointError::Unusable {
                        dir: dir.to_owned(),
                        message: format!("compacting the state of `{operator}`: {message}"),
                    }
                })?;
            crate::failpoint::crash_point("checkpoint-compacted");
            Ok((operator, vec![full], true))
        },
    );
    for (operator, chain, compacted) in compacted? {
        if compacted {
            report.compactions += 1;
            report.compacted_bytes += chain.iter().map(|part| part.bytes).sum::<u64>();
        }
        manifest.states.push(StateFile {
            operator: operator.clone(),
            file: String::new(),
            bytes: chain.iter().map(|part| part.bytes).sum(),
            sha256: String::new(),
            parts: chain.clone(),
        });
        report.chains.push((operator, chain));
    }
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    report.bytes += manifest_bytes.len() as u64;
    // Create-only: a manifest already there was written by another
    // process since this one recovered (recovery removes those after the
    // checkpoint it restores).
    let name = format!("{prefix}/manifest.json");
    let created = storage
        .put_new(&name, &manifest_bytes)
        .map_err(io(format!("write {name}")))?;
    // The same bytes there: this write's own, landed by an attempt the
    // client retried.
    if !created
        && storage.get(&name).map_err(io(format!("read {name}")))?.as_deref() != Some(&manifest_bytes[..])
    {
        return Err(CheckpointError::Superseded {
            dir: dir.to_owned(),
            batch,
        });
    }
    crate::failpoint::crash_point("checkpoint-manifest");
    storage
        .put(LATEST, format!("{batch}\n").as_bytes())
        .map_err(io("switch LATEST".into()))?;
    crate::failpoint::crash_point("checkpoint-done");
    // Keep the newest `keep` finished checkpoints, and the batch log after
    // the oldest. Directories without a readable manifest (a checkpoint cut
    // short by a crash or a full disk), and any numbered above this one
    // (left by a run that crashed before finishing them), never count.
    let mut kept: Vec<(u64, Manifest)> = Vec::new();
    let ids: Vec<u64> = storage
        .list("checkpoints")
        .map_err(io("list checkpoints".into()))?
        .iter()
        .filter_map(|name| name.parse().ok())
        .collect();
    let manifests = at_once::try_each_at_once(ids, storage.parallel_writes(), |id| {
        // A manifest that cannot be read now (the store out of reach) fails
        // the checkpoint: taken for unfinished, a good checkpoint would go.
        let finished = if id <= batch {
            storage
                .get(&format!("{}/manifest.json", checkpoint_dir(id)))
                .map_err(io(format!("read the manifest of the checkpoint of batch {id}")))?
                .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        } else {
            None
        };
        Ok::<_, CheckpointError>((id, finished))
    })?;
    for (id, finished) in manifests {
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
    // Incremental parts: those a kept checkpoint lists stay.
    let referenced = kept
        .iter()
        .take(keep)
        .flat_map(|(_, kept)| kept.states.iter().flat_map(|state| &state.parts));
    chain::collect_garbage(storage, referenced).map_err(io("remove unused incremental parts".into()))?;
    let oldest = kept.get(keep.saturating_sub(1).min(kept.len().saturating_sub(1)));
    if let Some((oldest, oldest_manifest)) = oldest {
        let oldest = *oldest;
        // Write-ahead logs: what is behind the oldest kept checkpoint is
        // never read again.
        for (name, progress) in oldest_manifest.source_names.iter().zip(&oldest_manifest.sources) {
            if let Some(crate::source::SourcePosition::Wal { offset }) = progress.position {
                crate::source::wal::Wal::truncate_before(storage, name, offset)
                    .map_err(io(format!("truncate the write-ahead log of `{name}`")))?;
            }
        }
        let names = storage.list("offsets").map_err(io("list the batch log".into()))?;
        let behind: Vec<String> = names
            .iter()
            .filter(|name| {
                name.strip_suffix(".json")
                    .and_then(|id| id.parse::<u64>().ok())
                    .is_some_and(|id| id <= oldest)
            })
            .map(|name| format!("offsets/{name}"))
            .collect();
        storage
            .remove_blobs(&behind)
            .map_err(io(format!("truncate the batch log before batch {oldest}")))?;
        idle_log::truncate(storage, &names, oldest, open_segment)
            .map_err(io("truncate the batch log's segments".into()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, keep: usize) -> CheckpointSettings {
        CheckpointSettings {
            location: CheckpointLocation::Directory(dir.to_owned()),
            every_batches: 1,
            every: None,
            keep,
            full_every: 3,
            wal_sync: crate::source::wal::WalSync::Block,
            confined_to: None,
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
            stage_plugins: BTreeMap::new(),
        }
    }

    #[test]
    fn a_checkpoint_written_by_another_process_since_recovery_stops_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = BTreeMap::from([("split".to_owned(), "aa".to_owned())]);
        let storage = LocalStorage::new(dir.path()).unwrap();
        let state = || vec![("s#0".to_owned(), OperatorState::Whole(vec![7; 10]))];
        let (mut checkpointer, _) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert!(checkpointer.start(manifest(1), state(), Duration::ZERO).unwrap());
        checkpointer.collect().unwrap();
        // A checkpoint finished after LATEST last moved: recovery restores
        // LATEST's and removes the later one, which the replay takes again.
        let later = serde_json::to_vec(&manifest(3)).unwrap();
        storage
            .put(&format!("{}/manifest.json", checkpoint_dir(3)), &later)
            .unwrap();
        let (mut checkpointer, recovery) =
            Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert_eq!(recovery.restored.unwrap().manifest.batch, 1);
        assert_eq!(storage.list("checkpoints").unwrap(), [format!("{:020}", 1)]);
        // Another process writes checkpoint 3 meanwhile: this one stops
        // rather than replace it.
        storage
            .put(&format!("{}/manifest.json", checkpoint_dir(3)), &later)
            .unwrap();
        assert!(checkpointer.start(manifest(3), state(), Duration::ZERO).unwrap());
        let error = checkpointer.collect().unwrap_err().to_string();
        assert!(
            error.contains("two pipelines share this checkpoint directory"),
            "{error}"
        );
        assert_eq!(
            storage
                .get(&format!("{}/manifest.json", checkpoint_dir(3)))
                .unwrap(),
            Some(later)
        );
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
                .log_batch(
                    &LoggedBatch {
                        batch,
                        time: 0,
                        inputs: vec![BatchInput::Generator {
                            start: batch * 10,
                            end: batch * 10 + 10,
                        }],
                        plugins: BTreeMap::new(),
                    },
                    false,
                )
                .unwrap();
            if batch % 2 == 1 {
                let state = vec![("s#0".to_owned(), OperatorState::Whole(vec![batch as u8; 100]))];
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
        assert!(matches!(&restored.states["s#0"], RestoredState::Whole(bytes) if *bytes == vec![1u8; 100]));
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

    /// The state a restored chain holds: one map per partition.
    fn read_chain(checkpointer: &Checkpointer, chain: &[StatePart]) -> Vec<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut merge = incremental::Merge::new(checkpointer.open_chain(chain).unwrap()).unwrap();
        let mut state = Vec::new();
        while merge.next_partition().unwrap().is_some() {
            let mut entries = BTreeMap::new();
            while let Some((key, value)) = merge.next_entry().unwrap() {
                entries.insert(key, value);
            }
            state.push(entries);
        }
        merge.finish().unwrap();
        state
    }

    #[test]
    fn incremental_parts_chain_compact_and_stay_while_a_kept_checkpoint_lists_them() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = BTreeMap::from([("split".to_owned(), "aa".to_owned())]);
        let (mut checkpointer, _) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        // One partition: checkpoint 0 writes keys k00 to k19 (a full part),
        // each later checkpoint `b` sets `k{b % 20}` to `b` and removes
        // `k{(b + 10) % 20}`.
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut chain: Vec<StatePart> = Vec::new();
        let mut lengths = Vec::new();
        for batch in 0..9u64 {
            let mut changes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            if batch == 0 {
                for k in 0..20 {
                    changes.insert(format!("k{k:02}").into_bytes(), Some(vec![0]));
                }
            } else {
                changes.insert(
                    format!("k{:02}", batch % 20).into_bytes(),
                    Some(batch.to_le_bytes().to_vec()),
                );
                changes.insert(format!("k{:02}", (batch + 10) % 20).into_bytes(), None);
            }
            for (key, value) in &changes {
                match value {
                    Some(value) => model.insert(key.clone(), value.clone()),
                    None => model.remove(key),
                };
            }
            let name = chain::part_name(batch, 0);
            let blob = checkpointer.create_part(&name).unwrap();
            let mut writer = incremental::PartWriter::new(incremental::HashingWriter::new(blob), 1).unwrap();
            writer.begin(batch == 0).unwrap();
            for (key, value) in &changes {
                match value {
                    Some(value) => writer.put(key, value).unwrap(),
                    None => writer.remove(key).unwrap(),
                }
            }
            let (hashing, summary) = writer.finish().unwrap();
            let (blob, bytes, sha256) = hashing.finish();
            let part = NewPart {
                part: StatePart {
                    file: name,
                    bytes,
                    sha256,
                    full: summary.is_full(),
                },
                blob,
                base: chain.clone(),
            };
            assert!(
                checkpointer
                    .start(
                        manifest(batch),
                        vec![("s#0".to_owned(), OperatorState::Part(part))],
                        Duration::ZERO
                    )
                    .unwrap()
            );
            let report = checkpointer.collect().unwrap().unwrap();
            chain = report.chains[0].1.clone();
            lengths.push(chain.len());
            assert_eq!(
                read_chain(&checkpointer, &chain),
                vec![model.clone()],
                "after batch {batch}"
            );
        }
        // At most `full_every` (3) parts; compaction starts a new chain.
        assert_eq!(lengths, vec![1, 2, 3, 1, 2, 3, 1, 2, 3]);
        // Only the parts the two kept checkpoints (7 and 8) list are left:
        // the full part compacted at 6 and the changes of 7 and 8.
        let storage = LocalStorage::new(dir.path()).unwrap();
        assert_eq!(
            storage.list(chain::DIR).unwrap(),
            vec![
                format!("{:020}-0000.full", 6),
                format!("{:020}-0000.part", 7),
                format!("{:020}-0000.part", 8)
            ]
        );
        // Recovery reads the chain back; a damaged part makes it fall back to
        // the previous checkpoint, whose chain does not hold that part.
        let (checkpointer, recovery) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        let restored = recovery.restored.unwrap();
        assert_eq!(restored.manifest.batch, 8);
        let RestoredState::Parts(parts) = &restored.states["s#0"] else {
            panic!("a chain")
        };
        assert_eq!(read_chain(&checkpointer, parts), vec![model]);
        storage.put(&chain::part_name(8, 0), b"WEIRINC1 damaged").unwrap();
        let (_, recovery) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert_eq!(recovery.restored.unwrap().manifest.batch, 7);
    }

    fn entry(batch: u64) -> LoggedBatch {
        LoggedBatch {
            batch,
            time: batch as i64 * 1000,
            inputs: vec![BatchInput::Generator {
                start: batch,
                end: batch + batch % 2,
            }],
            plugins: BTreeMap::new(),
        }
    }

    /// The storage of `dir` and a checkpointer opened on it, keeping `keep`.
    fn opened(dir: &std::path::Path, keep: usize) -> (LocalStorage, Checkpointer) {
        let (checkpointer, _) = Checkpointer::open(settings(dir, keep), &BTreeMap::new(), false).unwrap();
        (LocalStorage::new(dir).unwrap(), checkpointer)
    }

    fn replayed(dir: &std::path::Path) -> Vec<u64> {
        let plugins = BTreeMap::new();
        let (_, recovery) = Checkpointer::open(settings(dir, 2), &plugins, false).unwrap();
        recovery.logged.iter().map(|entry| entry.batch).collect()
    }

    #[test]
    fn idle_batches_are_logged_in_segments_and_replayed_with_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, mut checkpointer) = opened(dir.path(), 2);
        let plugins = BTreeMap::new();
        // Odd batches take input (a file each), even ones are idle (one segment).
        for batch in 0..7 {
            checkpointer.log_batch(&entry(batch), batch % 2 == 0).unwrap();
        }
        assert_eq!(
            storage.list("offsets").unwrap(),
            [
                "00000000000000000000.idle",
                "00000000000000000001.json",
                "00000000000000000003.json",
                "00000000000000000005.json"
            ]
        );
        let (_, recovery) = Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert_eq!(recovery.logged, (0..7).map(entry).collect::<Vec<_>>());

        // A gap at batch 3: batches 4 to 6 are stale, in the segment and in
        // files alike, and go; the next run logs batch 3 anew, in a new segment.
        storage.remove(&offsets_name(3)).unwrap();
        let (mut checkpointer, recovery) =
            Checkpointer::open(settings(dir.path(), 2), &plugins, false).unwrap();
        assert_eq!(recovery.logged, (0..3).map(entry).collect::<Vec<_>>());
        assert_eq!(storage.get(&offsets_name(5)).unwrap(), None);
        assert_eq!(replayed(dir.path()), [0, 1, 2]);
        checkpointer.log_batch(&entry(3), true).unwrap();
        checkpointer.log_batch(&entry(4), true).unwrap();
        assert_eq!(replayed(dir.path()), [0, 1, 2, 3, 4]);
        assert!(storage.get(&idle_log::segment_name(3)).unwrap().is_some());
    }

    #[test]
    fn a_segment_goes_once_the_next_one_starts_behind_the_oldest_kept_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, mut checkpointer) = opened(dir.path(), 1);
        let plugins = BTreeMap::new();
        for batch in 0..3 {
            checkpointer.log_batch(&entry(batch), true).unwrap();
        }
        // A restart: the next idle batches start a segment of their own.
        drop(checkpointer);
        let (mut checkpointer, recovery) =
            Checkpointer::open(settings(dir.path(), 1), &plugins, false).unwrap();
        assert_eq!(recovery.logged.len(), 3);
        for batch in 3..6 {
            checkpointer.log_batch(&entry(batch), true).unwrap();
        }
        let segments = || storage.list("offsets").unwrap();
        assert_eq!(segments().len(), 2);
        // A checkpoint of batch 1 keeps both: batch 2 is in the first.
        assert!(
            checkpointer
                .start(manifest(1), Vec::new(), Duration::ZERO)
                .unwrap()
        );
        checkpointer.collect().unwrap();
        assert_eq!(segments().len(), 2);
        assert_eq!(replayed(dir.path()), [2, 3, 4, 5]);
        // A checkpoint of batch 5: the first segment goes; the newest stays,
        // and nothing after the checkpoint is replayed.
        assert!(
            checkpointer
                .start(manifest(5), Vec::new(), Duration::ZERO)
                .unwrap()
        );
        checkpointer.collect().unwrap();
        assert_eq!(segments(), ["00000000000000000003.idle"]);
        assert_eq!(replayed(dir.path()), Vec::<u64>::new());
        checkpointer.log_batch(&entry(6), true).unwrap();
        assert_eq!(replayed(dir.path()), [6]);
    }

    #[test]
    fn idle_stretches_are_checkpointed_less_often() {
        let dir = tempfile::tempdir().unwrap();
        let (mut checkpointer, _) =
            Checkpointer::open(settings(dir.path(), 2), &BTreeMap::new(), false).unwrap();
        // every-batches = 1: an idle stretch checkpoints every IDLE_STRETCH batches.
        let idle_due: Vec<bool> = (0..IDLE_STRETCH).map(|_| checkpointer.batch_done()).collect();
        assert_eq!(idle_due.iter().filter(|due| **due).count(), 1);
        assert!(idle_due.last().unwrap());
        assert!(
            checkpointer
                .start(manifest(9), Vec::new(), Duration::ZERO)
                .unwrap()
        );
        checkpointer.collect().unwrap();
        // A batch that takes input brings the usual schedule back.
        checkpointer.took_input();
        assert!(checkpointer.batch_done());
    }

    #[test]
    fn recovery_removes_segments_past_the_replay_and_truncation_spares_the_open_one() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, mut checkpointer) = opened(dir.path(), 1);
        let plugins = BTreeMap::new();
        for batch in 0..3 {
            checkpointer.log_batch(&entry(batch), batch > 0).unwrap();
        }
        drop(checkpointer);
        // A crashed run's leftovers past the log: a segment whose first
        // record was torn, and an entry after a gap.
        storage.put(&idle_log::segment_name(7), &[0xAB; 64]).unwrap();
        storage.put(&offsets_name(5), b"{}").unwrap();
        let (mut checkpointer, recovery) =
            Checkpointer::open(settings(dir.path(), 1), &plugins, false).unwrap();
        assert_eq!(recovery.logged, (0..3).map(entry).collect::<Vec<_>>());
        assert_eq!(
            storage.list("offsets").unwrap(),
            ["00000000000000000000.json", "00000000000000000001.idle"]
        );
        // The next idle batch opens segment 3. A segment planted after it
        // (none can be, after recovery) does not get it removed while open.
        checkpointer.log_batch(&entry(3), true).unwrap();
        storage.put(&idle_log::segment_name(9), &[0; 64]).unwrap();
        assert!(
            checkpointer
                .start(manifest(8), Vec::new(), Duration::ZERO)
                .unwrap()
        );
        checkpointer.collect().unwrap();
        assert_eq!(
            storage.list("offsets").unwrap(),
            ["00000000000000000003.idle", "00000000000000000009.idle"]
        );
    }
}
