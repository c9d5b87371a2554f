//! Errors of a pipeline run, with where they happened and what kind of
//! failure they are.

use crate::config::ConfigError;
use crate::operator::OperatorError;
use crate::runtime::{PluginError, RuntimeError};
use crate::sink::SinkError;
use crate::source::SourceError;

/// What kind of failure an error is: who can fix it, and whether trying
/// again can help ([`EngineError::retryable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// The pipeline file, a plugin choice or a setting is wrong: the user
    /// must change something.
    UserInput,
    /// A plugin returned an error (for a record or a batch), or output that
    /// breaks its contract or limits.
    Plugin,
    /// A plugin call trapped.
    Trap(crate::runtime::TrapKind),
    /// Reading or writing outside the engine failed (a file, a socket, a
    /// full disk).
    Io,
    /// A bug in Weir.
    Internal,
}

/// Where a batch failed: the pipeline, stage, partition and batch id.
#[derive(Debug, thiserror::Error)]
#[error("pipeline `{pipeline}`, stage `{stage}` ({op}), partition {partition}, batch {batch_id}: {error}")]
pub struct StageFailure {
    /// The pipeline.
    pub pipeline: String,
    /// The stage.
    pub stage: String,
    /// The stage's operator and plugin, e.g. `flat-map split-words`.
    pub op: String,
    /// The partition.
    pub partition: usize,
    /// The micro-batch.
    pub batch_id: u64,
    /// What failed.
    pub error: OperatorError,
}

/// A pipeline could not start or stopped on an error.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The pipeline file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The pipeline is valid TOML but cannot be built (for example a stage
    /// whose plugin is of the wrong kind).
    #[error("{location}: {message}")]
    Plan {
        /// `file:line` or the pipeline name.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin cannot be loaded or initialised.
    #[error("pipeline `{pipeline}`, plugin `{plugin}`: {error}")]
    Plugin {
        /// The pipeline.
        pipeline: String,
        /// The plugin's name in the pipeline file.
        plugin: String,
        /// What failed.
        error: Box<PluginError>,
    },
    /// A batch failed.
    #[error(transparent)]
    Stage(#[from] Box<StageFailure>),
    /// A receiver failed.
    #[error("pipeline `{pipeline}`: {error}")]
    Source {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        error: SourceError,
    },
    /// A sink failed.
    #[error("pipeline `{pipeline}`: {error}")]
    Sink {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        error: SinkError,
    },
    /// A stage failed in too many consecutive batches and was quarantined.
    #[error(
        "pipeline `{pipeline}`: stage `{stage}` quarantined after {batches} consecutive batches with failures{}",
        if *paused { " (the pipeline was paused, then stopped)" } else { "" }
    )]
    Quarantined {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
        /// Consecutive batches with a failure.
        batches: u64,
        /// Whether the pipeline was paused before it stopped.
        paused: bool,
    },
    /// Checkpointing or recovery failed (a full disk, a changed plugin, an
    /// unusable checkpoint directory).
    #[error("pipeline `{pipeline}`: {error}")]
    Checkpoint {
        /// The pipeline.
        pipeline: String,
        /// What failed.
        error: crate::checkpoint::CheckpointError,
    },
    /// The Wasm runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Any other I/O failure of the engine itself.
    #[error("{0}")]
    Io(String),
}

impl EngineError {
    /// What kind of failure this is.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Config(_) | Self::Plan { .. } => ErrorClass::UserInput,
            Self::Plugin { error, .. } => error.class(),
            Self::Stage(failure) => failure.error.class(),
            Self::Quarantined { .. } => ErrorClass::Plugin,
            Self::Checkpoint { error, .. } => match error {
                crate::checkpoint::CheckpointError::PluginChanged { .. } => ErrorClass::UserInput,
                _ => ErrorClass::Io,
            },
            Self::Source { .. } | Self::Sink { .. } | Self::Io(_) => ErrorClass::Io,
            Self::Runtime(_) => ErrorClass::Internal,
        }
    }

    /// True when running the pipeline again (from its checkpoint) may get
    /// past this error without a change: an I/O fault, a transient plugin
    /// failure; not a wrong input.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Stage(failure) => failure.error.retryable(),
            Self::Plugin { error, .. } => error.retryable(),
            _ => self.class() == ErrorClass::Io,
        }
    }

    /// True when another run of the pipeline took its work over while this
    /// one ran: a newer producer of a sink's transactional id fenced this
    /// one, or another process wrote its checkpoint. Fencing kept the
    /// output exact; this run must stop and not start again while the
    /// other runs.
    pub fn superseded(&self) -> bool {
        match self {
            Self::Sink { error, .. } => error.superseded,
            Self::Checkpoint { error, .. } => {
                matches!(error, crate::checkpoint::CheckpointError::Superseded { .. })
            }
            _ => false,
        }
    }

    /// True when the user's input (pipeline file, plugin choice) is at fault:
    /// the CLI exits with status 2 for these and 1 for failures at run time.
    pub fn is_usage_error(&self) -> bool {
        matches!(self, Self::Config(_) | Self::Plan { .. })
            || matches!(
                self,
                Self::Checkpoint {
                    error: crate::checkpoint::CheckpointError::PluginChanged { .. },
                    ..
                }
            )
            || matches!(
                self,
                Self::Plugin { error, .. } if matches!(
                    **error,
                    PluginError::Read { .. }
                        | PluginError::Compile { .. }
                        | PluginError::Contract { .. }
                        | PluginError::Init(_)
                )
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::CheckpointError;
    use crate::sink::SinkError;

    #[test]
    fn a_fenced_sink_and_a_checkpoint_written_by_another_process_mean_superseded() {
        let sink = |superseded| EngineError::Sink {
            pipeline: "wc.counts.3".into(),
            error: SinkError {
                sink: "out".into(),
                message: "batch 94: 3 record(s) not delivered".into(),
                superseded,
            },
        };
        assert!(sink(true).superseded());
        assert!(!sink(false).superseded());
        let checkpoint = |error| EngineError::Checkpoint {
            pipeline: "wc.counts.3".into(),
            error,
        };
        let written = checkpoint(CheckpointError::Superseded {
            dir: "/shared/wc/counts/partitions/3".into(),
            batch: 7,
        });
        assert!(written.superseded());
        assert!(
            written
                .to_string()
                .contains("two pipelines share this checkpoint directory")
        );
        let unusable = checkpoint(CheckpointError::Unusable {
            dir: "/shared".into(),
            message: "no manifest".into(),
        });
        assert!(!unusable.superseded());
        assert!(!EngineError::Io("disk full".into()).superseded());
    }
}
