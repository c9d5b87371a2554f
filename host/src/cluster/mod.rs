//! Scale-out: one pipeline on several `weir run` processes, which share its
//! partitions through a Kafka consumer group (as Kafka Streams does), with
//! no cluster manager of Weir's own.
//!
//! A pipeline file with a `[cluster]` table is cut into segments at its
//! keyed stages, joined by repartition topics ([`plan`]); each partition of
//! a segment is a task, an ordinary pipeline with its own checkpoints in
//! the shared store. Each process is a member of the group ([`member`]):
//! the group assigns it partitions, it runs their tasks, and when a
//! partition moves, its state moves through the store. The repartition
//! topics are created by the first member that needs them ([`topics`]).
//!
//! Exactly once: the tasks of a process write their repartition records,
//! their Kafka output and their consumed offsets through one transactional
//! producer of the process, one transaction per process per batch (group
//! commit: [`crate::sink::kafka::ProcessTransactions`]). Each task's
//! marker names the process producer that writes it; the task's next owner
//! fences that producer unless the task was let go cleanly.

pub mod member;
pub mod plan;
pub mod topics;

pub use member::{MemberOptions, MemberSummary, run_member};
pub use plan::{ClusterPlan, Segment};

/// Why a cluster member cannot run or stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The pipeline cannot be cut into segments.
    #[error("pipeline `{pipeline}`: {message}")]
    Plan {
        /// The pipeline.
        pipeline: String,
        /// What is wrong.
        message: String,
    },
    /// The brokers refused or could not be reached.
    #[error("{message}")]
    Kafka {
        /// What failed.
        message: String,
    },
    /// A task could not start, or failed.
    #[error("task `{task}`: {message}")]
    Task {
        /// The task (`<pipeline>.<segment>.<partition>`).
        task: String,
        /// Its error.
        message: String,
    },
}
