//! The control channel of a running pipeline: typed requests, each applied
//! by the pipeline's driver at the next batch boundary (never inside a
//! batch), each answered with a typed reply.
//!
//! Stopping is not a request: it is raised on the pipeline's
//! [`super::Signal`], so that it also interrupts a wait for a source's
//! unit. Replacing a stage's plugin (hot-load, [`super::swap`]) and
//! returning it to its previous version are requests here.

use serde::Serialize;

/// What a pipeline can be asked to do while it runs.
#[derive(Debug, Clone)]
pub enum ControlRequest {
    /// Stop cutting batches; receivers are held back by their bounded
    /// queues (nothing is dropped).
    Pause,
    /// Cut batches again after a pause (a quarantined stage gets a fresh
    /// count of failed batches).
    Resume,
    /// Write a checkpoint after the last completed batch now.
    Checkpoint,
    /// Swap a stage's plugin for a new version at the next batch boundary,
    /// after checking it (see [`super::swap`]).
    Swap(Box<super::SwapOrder>),
    /// Swap in a stage plugin's candidate in shadow.
    Promote {
        /// The stage.
        stage: String,
        /// The plugin within the stage, when it has several.
        plugin: Option<String>,
        /// Who asked, for the history.
        by: Option<String>,
    },
    /// Return a stage's plugin on probation to the version before it, or
    /// give up its candidate in shadow.
    RollBack {
        /// The stage.
        stage: String,
        /// The plugin within the stage, when it has several.
        plugin: Option<String>,
        /// Who asked, for the history.
        by: Option<String>,
    },
}

/// What a request did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum ControlReply {
    /// Paused after this batch (none: before the first).
    Paused {
        /// The last batch completed before the pause.
        after_batch: Option<u64>,
    },
    /// Running again.
    Resumed,
    /// A checkpoint of this batch was started (it is written in the
    /// background; its figures appear in the metrics).
    Checkpointing {
        /// The batch the checkpoint is of.
        batch: u64,
    },
    /// The new version runs from the next batch on.
    Swapped(super::SwapReport),
    /// The previous version runs again from the next batch on.
    RolledBack {
        /// Hex SHA-256 of the version given up.
        from: String,
        /// Hex SHA-256 of the version running again.
        to: String,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The pipeline has ended (or ends before applying the request).
    #[error("pipeline `{0}` is not running any more")]
    Ended(String),
    /// The request does not apply to the pipeline as it is.
    #[error("pipeline `{pipeline}`: {message}")]
    Refused {
        /// The pipeline.
        pipeline: String,
        /// Why.
        message: String,
    },
}

/// A request on its way to the driver, with where its reply goes.
#[derive(Debug)]
pub struct ControlMessage {
    /// The request.
    pub request: ControlRequest,
    /// The reply's way back.
    pub reply: crossbeam_channel::Sender<Result<ControlReply, ControlError>>,
}
