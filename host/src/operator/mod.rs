//! Operators: what a stage does to each partition of each batch.
//!
//! An [`Operator`] has one required method, [`Operator::process`], called once
//! per partition per batch (a partition is a list of chunks) on a worker thread, plus hooks with defaults:
//! its [`Planning`] (the input [`Partitioning`] it needs, so that the executor
//! shuffles before calling it, and whether it may be fused with its
//! neighbours), a start-up check, an end-of-batch call and its state. Keeping
//! plugins out of the trait lets the same operators run Wasm plugins or native
//! Rust functions ([`native`]).
//!
//! - [`transform`]: map, flat-map, filter, filter-map, map-partitions over a
//!   [`transform::TransformFn`], Wasm or native.
//! - [`reduce`]: reduce-by-key, as a map-side combine and a post-shuffle merge.
//! - [`builtin`]: the host's own count, sum, min and max.
//! - [`count_table`]: the combine's table of counts by short key.
//! - [`window`]: processing-time windows, with and without an inverse.
//!   Their state: [`window_state`] (per-batch partials, spilled past the
//!   stage's `state-memory`) and [`running`] (the running result of an inverse).
//! - [`keyed_state`]: update-state-by-key and map-with-state over host-owned state.
//! - [`event_window`]: event-time windows with a watermark.
//!   Their state: [`event_window_state`] (open windows, spilled past the
//!   stage's `state-memory`).
//! - [`join`]: joins, cogroup and transform-with over two keyed inputs.
//! - [`keyed`]: per-partition state holders and keyed-batch helpers.
//! - [`instances`]: each worker's warm plugin instances.
//! - [`binding`]: which plugin version a use runs, swapped between batches (hot-load).

pub mod binding;
pub mod builtin;
pub mod count_table;
pub mod event_window;
pub mod event_window_state;
pub mod guard;
pub mod instances;
pub mod join;
pub mod keyed;
pub mod keyed_state;
pub mod native;
pub mod reduce;
pub mod repartition;
pub mod running;
pub mod transform;
pub mod window;
pub mod window_state;

use std::fmt;
use std::io::{Read, Write};

use crate::checkpoint::incremental::{Merge, PartSummary, PartWriter};
pub use binding::BindingSlot;
pub use instances::{InstanceKey, InstanceSlots, PluginUse};

use crate::partition::Partitioning;
use crate::record::{Batch, Partition};
use crate::runtime::PluginError;
use crate::state::StateSize;

/// Which micro-batch is running, and its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchClock {
    /// Id of the micro-batch.
    pub id: u64,
    /// Time of the micro-batch, in milliseconds since the Unix epoch (the
    /// end of its interval under deterministic time).
    pub time: i64,
}

/// Where a partition's call happens: passed to every [`Operator::process`].
pub struct PartitionContext<'a> {
    /// Id of the micro-batch.
    pub batch_id: u64,
    /// Time of the micro-batch (see [`BatchClock::time`]).
    pub batch_time: i64,
    /// For operators over two inputs: how many of the partition's first
    /// chunks come from the first input (the rest from the second).
    pub left_chunks: usize,
    /// Index of the partition.
    pub partition: usize,
    /// The calling worker's plugin instances.
    pub instances: &'a mut InstanceSlots,
    /// Records sent to the dead-letter stream by this call.
    pub dead_letters: Batch,
    /// Failures handled by the stage's policy during this call.
    pub failures: u32,
}

/// Why an operator failed on a partition.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A plugin call failed; `record` describes the failing record when the
    /// plugin named one.
    #[error("{}", plugin_failure(error, record.as_deref()))]
    Plugin {
        /// What the plugin or its trap said.
        error: PluginError,
        /// The failing record, described for the user.
        record: Option<String>,
    },
    /// A value could not be used (for example a non-number given to `sum`).
    #[error("{}{message}", index.map(|i| format!("record {i}: ")).unwrap_or_default())]
    Value {
        /// What is wrong with it.
        message: String,
        /// Index of the record in the partition, when it is an input record.
        index: Option<u32>,
    },
    /// A native function failed.
    #[error("{0}")]
    Native(String),
}

impl OperatorError {
    /// What kind of failure this is.
    pub fn class(&self) -> crate::error::ErrorClass {
        match self {
            Self::Plugin { error, .. } => error.class(),
            Self::Value { .. } => crate::error::ErrorClass::UserInput,
            Self::Native(_) => crate::error::ErrorClass::Internal,
        }
    }

    /// True when the same call may succeed if tried again (see
    /// [`PluginError::retryable`]); a bad value or a native function's
    /// failure comes back the same.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Plugin { error, .. } if error.retryable())
    }
}

fn plugin_failure(error: &PluginError, record: Option<&str>) -> String {
    match (error, record) {
        (PluginError::Record { index, message }, Some(record)) => {
            format!("record {index} ({record}) failed: {message}")
        }
        (error, _) => error.to_string(),
    }
}

impl OperatorError {
    /// True when the error came from a trap (the instance was discarded).
    pub fn is_trap(&self) -> bool {
        matches!(self, Self::Plugin { error, .. } if error.poisons_instance())
    }

    /// The error with the record index it names moved by `offset`: for a
    /// call over part of a partition that starts `offset` records in, so
    /// that indices count from the start of the partition.
    pub fn shifted(self, offset: usize) -> Self {
        let offset = u32::try_from(offset).unwrap_or(u32::MAX);
        match self {
            Self::Plugin {
                error: PluginError::Record { index, message },
                record,
            } => Self::Plugin {
                error: PluginError::Record {
                    index: index.saturating_add(offset),
                    message,
                },
                record,
            },
            Self::Value {
                message,
                index: Some(index),
            } => Self::Value {
                message,
                index: Some(index.saturating_add(offset)),
            },
            other => other,
        }
    }
}

/// What the planner needs to know of an operator, fixed for the run: how
/// its input must be partitioned and whether it may run fused with its
/// neighbours. [`Operator::planning`] returns it; a decorator forwards it in
/// one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planning {
    /// How the input must be partitioned before [`Operator::process`] sees
    /// it (the executor moves the data).
    pub input: Partitioning,
    /// True for operators over two inputs (joins): the executor then
    /// partitions each input separately by key and hands each partition
    /// over as the first input's chunks followed by the second's
    /// ([`PartitionContext::left_chunks`]). False: inputs are unioned.
    pub pairs_inputs: bool,
    /// True when processing a partition piece by piece (each chunk on its
    /// own) and concatenating the outputs means the same as processing it
    /// whole: record-at-a-time transforms, and the partial aggregation
    /// before a shuffle. The executor runs consecutive piecewise operators
    /// that take their input as it comes chunk by chunk in one task per
    /// partition, so each chunk's intermediate output is consumed while it
    /// is still in cache, and no barrier separates them.
    pub piecewise: bool,
}

impl Default for Planning {
    /// Partitions as they come, inputs unioned, one call per partition.
    fn default() -> Self {
        Self {
            input: Partitioning::Pipeline,
            pairs_inputs: false,
            piecewise: false,
        }
    }
}

impl Planning {
    /// An operator over one input, taking its partitions as they come,
    /// that may run piece by piece (see the field `piecewise`).
    pub fn piecewise() -> Self {
        Self {
            piecewise: true,
            ..Self::default()
        }
    }

    /// An operator over one input that needs `input` partitioning.
    pub fn partitioned(input: Partitioning) -> Self {
        Self {
            input,
            ..Self::default()
        }
    }

    /// An operator over two inputs, each partitioned by key into
    /// `partitions` partitions (see [`Planning::pairs_inputs`]).
    pub fn paired(partitions: usize) -> Self {
        Self {
            input: Partitioning::HashByKey(partitions),
            pairs_inputs: true,
            piecewise: false,
        }
    }

    /// True when the operator can join a fused run: piecewise, over one
    /// input, taking its partitions as they come (no data movement before it).
    pub fn fusable(&self) -> bool {
        self.piecewise && !self.pairs_inputs && self.input == Partitioning::Pipeline
    }
}

/// What a stage does to each partition of each batch.
pub trait Operator: Send + Sync + fmt::Debug {
    /// Processes one partition of one batch, given as the chunks the
    /// receivers handed over (or the shuffle produced): record-by-record
    /// operators go chunk by chunk without concatenating them.
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError>;

    /// How the executor plans the operator's work: the input partitioning it
    /// needs, whether it pairs two inputs, whether it may run piece by piece
    /// (see [`Planning`]). Fixed for the run: the plan's schedule is worked
    /// out from it once, when the plan is built. The default
    /// takes one input's partitions as they come, in one call per partition.
    fn planning(&self) -> Planning {
        Planning::default()
    }

    /// Checks, before the pipeline starts, that the operator can run (for
    /// example that its plugin accepts its configuration). Default: nothing to check.
    fn check(&self) -> Result<(), OperatorError> {
        Ok(())
    }

    /// A fold over the pieces of one partition, for a piecewise operator
    /// whose output is smaller when it sees the whole partition (a map-side
    /// combine): the executor then hands it each piece as it comes (still
    /// in cache) and takes the partition's output once, after the last
    /// piece, instead of calling [`Operator::process`] per piece. Default:
    /// `None`, one call per piece.
    fn fold_pieces(&self) -> Option<Box<dyn PieceFold + '_>> {
        None
    }

    /// Called once per batch after every partition of it was processed (for
    /// example to move a watermark on). Default: nothing to do.
    fn end_batch(&self, _batch: BatchClock) {}

    /// The keyed state the operator holds, over all partitions. Default: none.
    fn state_size(&self) -> StateSize {
        StateSize::default()
    }

    /// The operator's state for a checkpoint, taken between batches; `None`
    /// for operators that keep none (the default).
    fn snapshot(&self) -> Result<Option<Vec<u8>>, OperatorError> {
        Ok(None)
    }

    /// Replaces the operator's state with a [`Operator::snapshot`] of it,
    /// before the first batch of a resumed run. Default: nothing to restore.
    fn restore(&self, _snapshot: &[u8]) -> Result<(), OperatorError> {
        Ok(())
    }

    /// The operator's state when it is checkpointed incrementally (then
    /// checkpoints use it instead of [`Operator::snapshot`]); `None`, the
    /// default, for state written whole.
    fn incremental(&self) -> Option<&dyn IncrementalState> {
        None
    }

    /// The slots of the Wasm plugins the operator calls, which a hot-load
    /// swaps ([`binding`]). Default: none (built-in and native operators).
    fn plugin_slots(&self) -> Vec<std::sync::Arc<BindingSlot>> {
        Vec::new()
    }

    /// Converts the per-key state its plugin `slot` keeps, written by the
    /// plugin's state version `from_version`, with `candidate`'s
    /// `migrate-state` (a hot-load to a version of another state version),
    /// between batches. Returns the states converted, or `None` when the
    /// operator keeps no state of that slot's plugin (the default).
    ///
    /// Every state is converted once without being kept (so that a state
    /// the candidate cannot convert refuses the swap with nothing changed),
    /// then again and written back. An error in the second pass leaves the
    /// state half converted: the run must then fail (its last checkpoint is
    /// from before the swap).
    fn migrate_state(
        &self,
        _slot: &BindingSlot,
        _candidate: &binding::Binding,
        _from_version: u32,
    ) -> Result<Option<StateMigration>, MigrationError> {
        Ok(None)
    }
}

/// What a state migration did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateMigration {
    /// States converted.
    pub states: u64,
    /// Plugin calls it took (per pass).
    pub calls: u64,
}

/// Why a state migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A state could not be converted; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// The state was half converted when it failed.
    #[error("the state was half converted when it failed: {0}")]
    HalfDone(String),
}

/// State checkpointed incrementally ([`crate::checkpoint::incremental`]):
/// per partition a map from keys to values, of which each checkpoint writes
/// what changed since the previous one.
pub trait IncrementalState: Send + Sync {
    /// Writes a part on `out`, between batches: per partition the entries
    /// put and the keys removed since the last call (or the last
    /// [`IncrementalState::restore_chain`]), or every entry (a complete
    /// section) where the changes are not known. After it, changes are
    /// counted from now. On an error the next part lists every entry.
    fn write_part(&self, out: &mut dyn Write) -> Result<PartSummary, OperatorError>;

    /// Replaces the state with the merge of a checkpoint's chain of parts,
    /// read as a stream, before the first batch of a resumed run.
    fn restore_chain(&self, merge: &mut Merge<Box<dyn Read + Send>>) -> Result<(), OperatorError>;
}

/// One partition's fold of a piecewise operator (see
/// [`Operator::fold_pieces`]): every piece of the partition in order, then
/// its output.
pub trait PieceFold: Send {
    /// Takes the next piece of the partition. Record indices in an error
    /// count from the start of `piece`.
    fn absorb(&mut self, piece: Partition, ctx: &mut PartitionContext<'_>) -> Result<(), OperatorError>;

    /// The partition's output, after its last piece: what
    /// [`Operator::process`] would have returned, possibly as fewer records.
    fn finish(self: Box<Self>, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError>;
}

/// State that cannot be read or written (a spill file, a store) fails the
/// operator's call like any internal error.
impl From<crate::state::StateError> for OperatorError {
    fn from(error: crate::state::StateError) -> Self {
        OperatorError::Native(error.to_string())
    }
}

/// Writes a checkpoint part of `partitions` sections on `out`, section `p`
/// by `section(p, part)`. On a failure `forget` runs (the partitions written
/// before it counted their changes from a part that will not be used: the
/// next part must list them whole) and the error names `what`.
pub fn write_part_sections(
    out: &mut dyn Write,
    partitions: usize,
    what: &str,
    mut section: impl FnMut(usize, &mut PartWriter<&mut dyn Write>) -> Result<(), String>,
    forget: impl FnOnce(),
) -> Result<PartSummary, OperatorError> {
    let result = (|| {
        let mut part = PartWriter::new(out, partitions).map_err(|e| e.to_string())?;
        for partition in 0..partitions {
            section(partition, &mut part)?;
        }
        part.finish()
            .map(|(_, summary)| summary)
            .map_err(|e| e.to_string())
    })();
    result.map_err(|error| {
        forget();
        OperatorError::Native(format!("cannot write the {what}'s checkpoint part: {error}"))
    })
}

/// The error for a state snapshot that cannot be restored.
pub fn restore_error(error: impl std::fmt::Display) -> OperatorError {
    OperatorError::Native(format!("cannot restore the checkpointed state: {error}"))
}

/// Checks that a snapshot of `what` state (for example "keyed") holds as
/// many partitions as the stage now has; a snapshot with none fits any.
pub fn check_restored_partitions(found: usize, expected: usize, what: &str) -> Result<(), OperatorError> {
    if found == 0 || found == expected {
        return Ok(());
    }
    Err(restore_error(format!(
        "the checkpoint has {found} partitions of {what} state, the stage now {expected}"
    )))
}
