//! Pipelines: the stream graph planned into operators ([`plan`]), plugin
//! names resolved through a [`registry`], batches run on a [`workers`] pool
//! by the [`executor`], and the whole run driven by the [`runner`].

pub mod durability;
pub mod executor;
pub mod plan;
pub mod registry;
pub mod runner;
mod stage_ops;
pub mod stop;
pub mod workers;

pub use plan::Plan;
pub use registry::{Function, PluginRegistry};
pub use runner::{Pipeline, RunOptions, RunSummary};
pub use stop::StopSignal;
