//! The pipeline file: parsing, validation and the validated model.
//!
//! [`load`] reads a TOML pipeline file ([`file`] mirrors its tables), checks
//! every reference and value (one module per table: `pipeline`, `source`,
//! `stage` with `stateful`, `sink`; value parsers in `values`), orders the
//! stream graph (`graph`), and returns a [`PipelineSpec`] (from `model`) the
//! engine can run. Every error names the file and the line.
//!
//! Each source and sink kind owns its keys, its parser and the construction
//! of its receiver or sink, in its own file under `source/` or `sink/`
//! (see [`SourceType`] and [`SinkType`]).

mod cluster;
mod file;
mod graph;
mod model;
mod paths;
mod pipeline;
mod settings;
mod sink;
mod source;
mod stage;
mod stateful;
mod values;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub(crate) use file::LimitsTable;
pub use model::{
    BuiltinReducer, ClockMode, ClusterSpec, DEAD_LETTERS, FailurePolicy, OnError, OperatorSpec, PipelineSpec,
    Quarantine, ReducerSpec, SinkSpec, SourceSpec, StageSpec, TransformKind,
};
pub use paths::{DirPath, Paths, check_name};
pub use pipeline::DEFAULT_MAX_BATCH_MEMORY;
pub use settings::{Key, KindContext, Reach, Settings, ValueType};
pub use sink::{SinkConfig, SinkEntry, SinkKind, SinkPlugin, SinkType};
pub use source::{SourceConfig, SourceEntry, SourceKind, SourceType};
pub(crate) use stage::stage_limits;
pub(crate) use values::{duration, non_negative, one_or_many, positive, required};

pub use crate::sink::files::FileFormat;
pub use crate::source::files::FilesSpec;
pub use crate::source::generator::GeneratorSpec;
pub use crate::source::socket::SocketMode;

/// An error at a byte offset of the pipeline file, with its message.
pub type SpecError = (usize, String);
pub use stateful::{
    InverseSpec, JoinKind, KeyRewrite, KeyedStateSpec, LateRecords, OutputMode, StateKind, WindowOp,
    WindowSpec, WindowTime,
};

/// A pipeline file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read pipeline file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key or value has the wrong shape.
    #[error("{}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the line and column.
        message: String,
    },
    /// A value or reference is wrong.
    #[error("{}:{line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending table or key.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Reads and validates a pipeline file.
pub fn load(path: &Path) -> Result<PipelineSpec, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// What the names in a pipeline file lead to: its paths, and the plugins
/// `[plugins]` may name.
#[derive(Debug, Clone)]
pub struct Scope {
    /// How paths resolve.
    pub paths: Paths,
    /// Uploaded plugins (name → component), when `[plugins]` names uploads
    /// instead of paths (a tenant's pipeline in a server); every upload is
    /// usable under its own name without a `[plugins]` entry.
    pub catalog: Option<BTreeMap<String, PathBuf>>,
    /// Where a pipeline without `checkpoint-dir` checkpoints (in a
    /// directory named after it below this one); `None`: it does not.
    pub checkpoints: Option<PathBuf>,
    /// What the names a pipeline gives itself in shared external systems
    /// (Kafka consumer groups and transactional ids) start with: a tenant's
    /// prefix, so that no tenant's ids collide with, or take over, another's.
    pub ids_prefix: Option<String>,
}

impl Scope {
    /// `weir run`'s scope for the file at `path`: relative paths start at
    /// its directory, `[plugins]` values are paths.
    pub fn of_file(path: &Path) -> Self {
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            paths: Paths::relative_to(base_dir),
            catalog: None,
            checkpoints: None,
            ids_prefix: None,
        }
    }
}

/// Validates pipeline file contents; `path` names the file in errors and
/// anchors relative paths (plugins, directories) at its directory.
pub fn parse(text: &str, path: &Path) -> Result<PipelineSpec, ConfigError> {
    parse_in(text, path, &Scope::of_file(path))
}

/// Validates pipeline file contents with names resolved in `scope`; `path`
/// names the file in errors.
pub fn parse_in(text: &str, path: &Path, scope: &Scope) -> Result<PipelineSpec, ConfigError> {
    let raw: file::PipelineFile = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })?;
    let lines = LineIndex::new(text);
    let mut spec = pipeline::build(raw, scope, &lines).map_err(|(offset, message)| ConfigError::Invalid {
        path: path.to_owned(),
        line: lines.line_of(offset),
        message,
    })?;
    if scope.catalog.is_some() {
        // Load only the uploads the stages and sinks use, not the whole catalog.
        let used: std::collections::BTreeSet<String> = spec
            .stages
            .iter()
            .flat_map(|stage| stage.op.plugins())
            .chain(
                spec.sinks
                    .iter()
                    .filter_map(|sink| Some(sink.kind.plugin()?.name.to_owned())),
            )
            .collect();
        spec.plugins.retain(|name, _| used.contains(name));
    }
    Ok(spec)
}

/// Maps byte offsets of the file to 1-based line numbers.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1))
            .collect();
        Self { starts }
    }

    /// The 1-based line holding byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

#[cfg(test)]
mod tests;
