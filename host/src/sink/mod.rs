//! Sinks: where each batch's results go.
//!
//! A [`Sink`] has one required method, [`Sink::write`], called once per batch
//! (empty batches included) with every partition of its input stream, and
//! hooks with defaults to open and close it.
//!
//! Delivery guarantees: `console` is at-least-once (a batch re-run after a
//! failure prints again). `files` writes each batch to its own directory,
//! named by batch id and made visible atomically: a re-run replaces the same
//! directory, so its visible output is exactly-once.
//!
//! - [`console`]: a header per batch, then the first records (Spark's `print()`).
//! - [`files`]: one directory per batch, `text` or `jsonl`; on S3-compatible
//!   object storage (`object_files`, the `object-store` cargo feature, on
//!   by default) committed by a create-only manifest per batch.
//! - `kafka`: records to a topic, at least once or exactly once through
//!   one transaction per batch (the `kafka` cargo feature, on by default).
//! - [`redis`]: a command per record, a batch in one `MULTI`/`EXEC` with a
//!   marker of the last batch applied: exactly once with a checkpoint.
//! - [`http`]: JSON lines POSTed in parts, each with an idempotency key;
//!   at least once, retried with backoff.
//! - [`elasticsearch`]: the `_bulk` API, a document id per record:
//!   idempotent; refused documents to a dead-letter index.
//! - [`plugin`]: a sink written as a sandboxed plugin (`foreachRDD`), called
//!   after the batch's other sinks with the batch id.
//!
//! Each of those files also owns its kind's keys, its parser and the
//! construction of its sink ([`crate::config::SinkType`],
//! [`crate::config::SinkConfig`]); [`TYPES`] registers them.

pub mod console;
pub mod elasticsearch;
pub mod files;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "object-store")]
pub mod object_files;
pub mod plugin;
pub mod redis;
mod retrying;
pub mod template;

use crate::config::{SinkEntry, SinkSpec};
use crate::record::Partition;

/// Identifies a micro-batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    /// Batch id: 0 for the first batch, then one more per batch.
    pub id: u64,
    /// Batch time: milliseconds since the Unix epoch at which it was cut.
    pub time_ms: i64,
}

/// One source's position after a batch.
#[derive(Debug, Clone, Copy)]
pub struct SourceAfter<'a> {
    /// The source.
    pub spec: &'a crate::config::SourceSpec,
    /// Its position after the batch (`None`: it keeps none, or has none yet).
    pub position: Option<&'a crate::source::SourcePosition>,
}

/// A sink failed.
#[derive(Debug, thiserror::Error)]
#[error("sink `{sink}`: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: String,
    /// What went wrong.
    pub message: String,
    /// Another run of the pipeline took the sink's output over (a newer
    /// producer of its transactional id fenced this one): this run must
    /// stop, and must not run again while the other does.
    pub superseded: bool,
}

/// Where a stream's results go.
pub trait Sink: Send {
    /// Writes one batch: every partition (as chunks) of the sink's input stream.
    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError>;

    /// Learns where every source of the pipeline stands after the batch
    /// about to be written (called just before [`Sink::write`]), for sinks
    /// that commit source positions with their output. Only the pipeline's
    /// last sink in write order is told; the others get none, since a
    /// position committed before a later sink wrote the batch would skip
    /// the batch for that sink after a crash. Default: ignored.
    fn sources_after(&mut self, _sources: &[SourceAfter<'_>]) {}

    /// Called once, after `open` and before the first write, in a pipeline
    /// that checkpoints: `logged_end` is the first batch id its batch log
    /// does not hold (0 for a new log). A sink that remembers which batches
    /// it committed checks that memory against it. Default: nothing to do.
    fn recovered(&mut self, _logged_end: u64) -> Result<(), SinkError> {
        Ok(())
    }

    /// Prepares the sink before the first batch. Default: nothing to do.
    fn open(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// Flushes and releases the sink after the last batch. Default: nothing to do.
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Every kind of sink, in the order errors list them. A new kind is a
/// module here and one line in this list.
pub const TYPES: &[SinkEntry] = &[
    SinkEntry::of::<console::ConsoleSpec>(),
    SinkEntry::of::<files::FilesSinkSpec>(),
    #[cfg(feature = "kafka")]
    SinkEntry::of::<kafka::KafkaSinkSpec>(),
    SinkEntry::of::<redis::RedisSinkSpec>(),
    SinkEntry::of::<http::HttpSinkSpec>(),
    SinkEntry::of::<elasticsearch::ElasticsearchSpec>(),
    SinkEntry::of::<plugin::PluginSinkSpec>(),
];

/// Where a sink is built: its pipeline, and its stream's window.
#[derive(Debug, Clone, Copy)]
pub struct SinkContext<'a> {
    /// The pipeline's name (part of names the sink derives, such as a
    /// Kafka transactional id).
    pub pipeline: &'a str,
    /// The window length when the sink's stream comes from a window stage
    /// (records are then tagged with their window).
    pub window_ms: Option<i64>,
    /// True when the pipeline checkpoints: batch ids then go on across
    /// restarts (a restarted run without checkpoints starts again at 0).
    pub checkpointed: bool,
    /// The pipeline's loaded plugins by name, for a sink written as a
    /// plugin (none where plugins are not loaded).
    pub plugins: Option<LoadedPlugins<'a>>,
}

/// A pipeline's loaded plugins, by name.
#[derive(Clone, Copy)]
pub struct LoadedPlugins<'a>(pub &'a dyn Fn(&str) -> Option<std::sync::Arc<crate::runtime::Plugin>>);

impl std::fmt::Debug for LoadedPlugins<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadedPlugins")
    }
}

/// The sink for a sink spec.
pub fn from_spec(spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
    spec.kind.build(spec, cx)
}
