//! The pipeline file as written: serde structs that mirror the TOML.
//!
//! Every table rejects unknown keys. Fields that only some operators or
//! source types accept are optional here and checked in [`super::spec`], which
//! turns this raw form into a validated [`super::PipelineSpec`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

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
}

/// `[pipeline]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PipelineTable {
    /// Name of the pipeline, used in logs, errors and metrics.
    pub name: String,
    /// Micro-batch interval, e.g. `"1s"` or `"50ms"` (at least 1 ms). Default `"1s"`.
    pub batch_interval: Option<Spanned<String>>,
    /// Default number of partitions of every stream. Default: the number of cores.
    pub partitions: Option<Spanned<i64>>,
    /// Chunks (of up to `chunk-records` records) a source may queue before it
    /// is slowed down. Default 64.
    pub queue_chunks: Option<Spanned<i64>>,
    /// Records per chunk handed from a receiver to the batcher. Default 8192.
    pub chunk_records: Option<Spanned<i64>>,
}

/// `[[source]]`: every key any source type accepts.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SourceTable {
    /// Name of the stream this source produces.
    pub name: Spanned<String>,
    /// `socket`, `files`, `generator` or `stdin`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// socket: `host:port`.
    pub address: Option<Spanned<String>>,
    /// socket: `connect` (default) or `listen`.
    pub mode: Option<Spanned<String>>,
    /// socket: longest wait between reconnection attempts. Default `"5s"`.
    pub max_backoff: Option<Spanned<String>>,
    /// files: the directory to watch.
    pub path: Option<Spanned<String>>,
    /// files: which file names to read. Default `"*"`.
    pub glob: Option<Spanned<String>>,
    /// files: how often to look for new files. Default `"100ms"`.
    pub poll_interval: Option<Spanned<String>>,
    /// generator: lines to produce; unlimited when absent.
    pub lines: Option<Spanned<i64>>,
    /// generator: lines per second; as fast as the pipeline takes them when absent.
    pub rate: Option<Spanned<i64>>,
    /// generator: words per line. Default 8.
    pub words_per_line: Option<Spanned<i64>>,
    /// generator: seed of the deterministic word sequence. Default 0.
    pub seed: Option<Spanned<i64>>,
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

/// `[[sink]]`: every key any sink type accepts.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SinkTable {
    /// Optional name, for logs. Default: `<type>-<input>`.
    pub name: Option<Spanned<String>>,
    /// The stream to write.
    pub input: Spanned<String>,
    /// `console` or `files`.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// console: records shown per batch. Default 10.
    pub max_records: Option<Spanned<i64>>,
    /// files: the output directory.
    pub path: Option<Spanned<String>>,
    /// files: `text` (default, `key<TAB>value`) or `jsonl`.
    pub format: Option<Spanned<String>>,
}
