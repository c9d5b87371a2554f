//! Pipelines: the stream graph planned into operators ([`plan`]), plugin
//! names resolved through a [`registry`], batches run on the engine's shared
//! worker pool by the [`executor`], cut as the run's [`trigger`] says, and the
//! whole run driven by the [`runner`], which publishes its status, metrics and
//! events ([`live`]), sets the sources' rates from each batch
//! ([`backpressure`]) and takes [`control`] requests between batches,
//! hot-loads of new plugin versions among them ([`swap`]).

pub mod backpressure;
pub mod control;
pub mod durability;
pub mod executor;
pub mod live;
pub mod plan;
mod ready;
pub mod registry;
mod run;
pub mod runner;
pub mod signal;
pub(crate) mod stage_ops;
pub mod swap;
pub mod trigger;

pub use backpressure::{PidRateEstimator, RateReport};
pub use control::{ControlError, ControlReply, ControlRequest};
pub use durability::CheckpointRecord;
pub use live::{BatchDetail, PipelineEvent, PipelineMetrics, PipelineState, PipelineStatus, StageBatch};
pub use plan::Plan;
pub use ready::Pipeline;
pub use registry::{Function, PluginRegistry};
pub use run::{RunOptions, RunSummary};
pub use signal::{Signal, StopMode};
pub use swap::{
    CanaryReport, CanaryRule, RollbackRule, Rollout, ShadowReport, ShadowRule, SwapOrder, SwapReport,
    VersionOutcome, VersionRecord,
};
