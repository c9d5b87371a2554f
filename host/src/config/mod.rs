//! The pipeline file: parsing, validation and the validated model.
//!
//! [`load`] reads a TOML pipeline file ([`file`] mirrors its tables), checks
//! every reference and value ([`spec`]), orders the stream graph ([`graph`]),
//! and returns a [`PipelineSpec`] the engine can run. Every error names the
//! file and the line.

mod file;
mod graph;
mod spec;
mod stateful;

use std::path::{Path, PathBuf};

pub use spec::{
    BuiltinReducer, ClockMode, DEAD_LETTERS, FailurePolicy, FileFormat, FilesSpec, GeneratorSpec, OnError,
    OperatorSpec, PipelineSpec, Quarantine, ReducerSpec, SinkKind, SinkSpec, SocketMode, SourceKind,
    SourceSpec, StageSpec, TransformKind,
};
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

/// Validates pipeline file contents; `path` names the file in errors and
/// anchors relative paths (plugins, directories) at its directory.
pub fn parse(text: &str, path: &Path) -> Result<PipelineSpec, ConfigError> {
    let raw: file::PipelineFile = toml::from_str(text).map_err(|error| ConfigError::Syntax {
        path: path.to_owned(),
        message: error.to_string().trim_end().to_owned(),
    })?;
    let base_dir = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let lines = LineIndex::new(text);
    spec::build(raw, &base_dir, &lines).map_err(|(offset, message)| ConfigError::Invalid {
        path: path.to_owned(),
        line: lines.line_of(offset),
        message,
    })
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
