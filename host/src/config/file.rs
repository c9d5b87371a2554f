//! The pipeline file as written: serde structs that mirror the TOML.
//!
//! Every table rejects unknown keys. Fields that only some operators accept
//! are optional here and checked in [`super::stage`]; the keys of each source
//! and sink kind are declared by the kind and read through
//! [`super::settings`]. [`super::pipeline`] turns this raw form into a
//! validated [`super::PipelineSpec`].

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use super::settings::Settings;

/// The whole pipeline file.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineFile {
    /// `[pipeline]`: name, batch interval, partitions.
    pub pipeline: PipelineTable,
    /// `[plugins]`: plugin name → path of its `.wasm` component.
    #[serde(default)]
    pub plugins: BTreeMap<String, Spanned<String>>,
    /// `[[source]]` tables.
    #[serde(default, rename = "source")]
    pub sources: Vec<Spanned<SourceTable>>,
    /// `[[stage]]` tables.
    #[serde(default, rename = "stage")]
    pub stages: Vec<Spanned<StageTable>>,
    /// `[[sink]]` tables.
    #[serde(default, rename = "sink")]
    pub sinks: Vec<Spanned<SinkTable>>,
    /// `[limits]`: defaults for every plugin stage's limits.
    pub limits: Option<Spanned<LimitsTable>>,
    /// `[checkpoint]`: how often to checkpoint (with `checkpoint-dir`).
    pub checkpoint: Option<Spanned<CheckpointTable>>,
    /// `[cluster]`: the pipeline runs on every `weir run` process started
    /// with this file, which share its partitions through a consumer group.
    pub cluster: Option<Spanned<ClusterTable>>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterTable {
    /// The Kafka consumer group the processes join.
    pub group_id: Option<Spanned<String>>,
    /// Partitions of the repartition topics (default: the input topic's).
    pub partitions: Option<Spanned<i64>>,
    /// How long a member may stay silent before its partitions move, e.g.
    /// `"10s"`.
    pub session_timeout: Option<Spanned<String>>,
}

/// `[checkpoint]`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CheckpointTable {
    /// Checkpoint after every this many batches. Default 10.
    pub every_batches: Option<Spanned<i64>>,
    /// Also checkpoint when this much time passed since the last one, e.g. `"30s"`.
    pub every: Option<Spanned<String>>,
    /// Checkpoints kept. Default 3.
    pub keep: Option<Spanned<i64>>,
    /// Incremental state (keyed state) is compacted into a full snapshot
    /// once its chain of parts is longer than this: a full snapshot every
    /// this many checkpoints at most. Default 50 (a chain is also compacted
    /// once its changes outweigh its full snapshot, which bounds recovery
    /// to reading about twice the state; this bounds the number of files).
    pub full_every: Option<Spanned<i64>>,
    /// When the write-ahead log of socket and stdin sources is synced:
    /// `"block"` (default: every block, before it is acknowledged) or an
    /// interval such as `"100ms"`.
    pub wal_sync: Option<Spanned<String>>,
    /// With an `s3://` checkpoint-dir: a custom endpoint (MinIO, another
    /// S3-compatible store).
    pub endpoint: Option<Spanned<String>>,
    /// With an `s3://` checkpoint-dir: the region (default: the
    /// environment's `AWS_REGION` with its credentials, else `us-east-1`).
    pub region: Option<Spanned<String>>,
    /// With an `s3://` checkpoint-dir: the access key id.
    pub access_key_id: Option<Spanned<String>>,
    /// With an `s3://` checkpoint-dir: the secret access key.
    pub secret_access_key: Option<Spanned<String>>,
    /// With an `s3://` checkpoint-dir and no access keys: `"environment"`
    /// (the default: the AWS credentials of the environment) or
    /// `"anonymous"` (unsigned requests).
    pub credentials: Option<Spanned<String>>,
}

/// Resource limits of plugin instances: `[limits]`, or a stage's `limits`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsTable {
    /// Linear memory cap per instance, e.g. `"64MiB"`.
    pub memory: Option<Spanned<String>>,
    /// Longest a call may run, e.g. `"500ms"`.
    pub timeout: Option<Spanned<String>>,
    /// Most output records per input record of a call.
    pub output_records_ratio: Option<Spanned<i64>>,
    /// Most output bytes per input byte of a call.
    pub output_bytes_ratio: Option<Spanned<i64>>,
    /// Fuel budget per call (deterministic accounting; off by default).
    pub fuel: Option<Spanned<i64>>,
    /// Log messages the stage's plugin may write per second (default 100; 0: none).
    pub log_messages_per_second: Option<Spanned<i64>>,
    /// Bytes of log messages the stage's plugin may write per second, e.g. `"64KiB"` (the default).
    pub log_bytes_per_second: Option<Spanned<String>>,
}

/// `[pipeline]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineTable {
    /// Name of the pipeline, used in logs, errors and metrics.
    pub name: String,
    /// Micro-batch interval, e.g. `"1s"` or `"50ms"` (at least 1 ms). Default `"1s"`.
    pub batch_interval: Option<Spanned<String>>,
    /// `wall` (default): batches every interval of the wall clock.
    /// `deterministic`: batch `k` is at `start-time + (k + 1) * interval` and
    /// holds one unit of each source, for tests and replays.
    pub clock: Option<Spanned<String>>,
    /// Deterministic clock: milliseconds since the Unix epoch where batch 0
    /// starts. Default 0.
    pub start_time: Option<Spanned<i64>>,
    /// Directory of checkpoints and the batch log; none: no fault tolerance.
    pub checkpoint_dir: Option<Spanned<String>>,
    /// Default number of partitions of every stream. Default: the number of cores.
    pub partitions: Option<Spanned<i64>>,
    /// Chunks (of up to `chunk-records` records) a source may queue before it
    /// is slowed down. Default 16.
    pub queue_chunks: Option<Spanned<i64>>,
    /// Input a batch may gather from one source during its interval (wall
    /// clock), e.g. `"256MiB"`; beyond it the source is slowed down. Default 256 MiB.
    pub max_batch_memory: Option<Spanned<String>>,
    /// Records per chunk handed from a receiver to the batcher. Default 8192.
    pub chunk_records: Option<Spanned<i64>>,
}

/// `[[source]]`: its name and type; the keys of its type are declared by
/// the type (see [`super::source`]).
#[derive(Debug)]
pub struct SourceTable {
    /// Name of the stream this source produces.
    pub name: Spanned<String>,
    /// The kind of source (`type`): `socket`, `files`, `generator`, `stdin`.
    pub kind: Spanned<String>,
    /// Records per second the source never exceeds (any kind).
    pub max_rate: Option<Spanned<i64>>,
    /// Let the pipeline's processing set the source's rate (any kind).
    pub backpressure: Option<Spanned<bool>>,
    /// The lowest rate backpressure sets, records per second. Default 100.
    pub backpressure_min_rate: Option<Spanned<i64>>,
    /// The rate until backpressure sets the first one. Default: `max-rate`.
    pub backpressure_initial_rate: Option<Spanned<i64>>,
    /// The keys of its kind.
    pub settings: Settings,
}

impl<'de> Deserialize<'de> for SourceTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut settings = super::source::schema().read(deserializer)?;
        Ok(Self {
            name: settings.take_text("name").expect("a required key"),
            kind: settings.take_text("type").expect("a required key"),
            max_rate: settings.take_integer("max-rate"),
            backpressure: settings.take_boolean("backpressure"),
            backpressure_min_rate: settings.take_integer("backpressure-min-rate"),
            backpressure_initial_rate: settings.take_integer("backpressure-initial-rate"),
            settings,
        })
    }
}

/// `[[stage]]`: every key any operator accepts.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StageTable {
    /// Name of the stream this stage produces.
    pub name: Spanned<String>,
    /// The input stream, or a list of them (`union`).
    pub input: Spanned<Inputs>,
    /// The operator.
    pub op: Spanned<String>,
    /// map / flat-map / filter / filter-map / map-partitions: the plugin.
    pub plugin: Option<Spanned<String>>,
    /// reduce-by-key: `count`, `sum`, `min`, `max`, or a reducer plugin's name.
    pub reducer: Option<Spanned<String>>,
    /// Partitions of the output (shuffling stages and `repartition`).
    pub partitions: Option<Spanned<i64>>,
    /// Configuration passed to the plugin's `init`, as string key/values.
    pub config: Option<Spanned<BTreeMap<String, toml::Value>>>,
    /// Limits of this stage's plugin instances (override `[limits]`).
    pub limits: Option<Spanned<LimitsTable>>,
    /// A directory the plugin may read (mounted read-only at `/data`).
    pub read_dir: Option<Spanned<String>>,
    /// Environment variables the plugin sees.
    pub env: Option<Spanned<BTreeMap<String, String>>>,
    /// What a failed call does: `fail`, `skip-batch` or `dead-letter`.
    pub on_error: Option<Spanned<String>>,
    /// Retries of a failed call before `on-error` applies.
    pub retries: Option<Spanned<i64>>,
    /// Consecutive failed batches after which the stage is quarantined.
    pub quarantine_after: Option<Spanned<i64>>,
    /// What quarantine does: `stop` the pipeline or `pause` it.
    pub quarantine: Option<Spanned<String>>,
    /// Windows: how long a window is, e.g. `"30s"`.
    pub length: Option<Spanned<String>>,
    /// Windows: how often one is emitted (processing time; default: every
    /// batch) or how far apart windows start (event time; default: the
    /// length, i.e. tumbling windows).
    pub slide: Option<Spanned<String>>,
    /// Reducing windows: `true` for the built-in inverse of count/sum, or an
    /// inverse reducer plugin: windows are then updated incrementally.
    pub inverse: Option<Spanned<toml::Value>>,
    /// Reducing windows: drop keys whose window value is this text.
    pub neutral: Option<Spanned<String>>,
    /// Windows: `processing` (default) or `event` time.
    pub time: Option<Spanned<String>>,
    /// Event-time windows: how far the watermark trails the latest timestamp. Default 0.
    pub allowed_lateness: Option<Spanned<String>>,
    /// Event-time windows: `append` (default) or `update`.
    pub output_mode: Option<Spanned<String>>,
    /// Event-time windows: `drop` (default) or `dead-letter` records behind the watermark.
    pub late_records: Option<Spanned<String>>,
    /// Keyed state: how long a key may go without a value before it times out.
    pub timeout: Option<Spanned<String>>,
    /// Keyed state: memory for state before it spills to disk, e.g. `"256MiB"`.
    pub state_memory: Option<Spanned<String>>,
}

/// One input stream or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Inputs {
    /// `input = "lines"`.
    One(String),
    /// `input = ["a", "b"]`.
    Many(Vec<String>),
}

/// `[[sink]]`: its name, input and type; the keys of its type are declared
/// by the type (see [`super::sink`]).
#[derive(Debug)]
pub struct SinkTable {
    /// Optional name, for logs. Default: `<type>-<input>`.
    pub name: Option<Spanned<String>>,
    /// The stream to write.
    pub input: Spanned<String>,
    /// The kind of sink (`type`): `console` or `files`.
    pub kind: Spanned<String>,
    /// The keys of its kind.
    pub settings: Settings,
}

impl<'de> Deserialize<'de> for SinkTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut settings = super::sink::schema().read(deserializer)?;
        Ok(Self {
            name: settings.take_text("name"),
            input: settings.take_text("input").expect("a required key"),
            kind: settings.take_text("type").expect("a required key"),
            settings,
        })
    }
}
