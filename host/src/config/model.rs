//! The validated pipeline: the types the engine runs.
//!
//! [`super::load`] builds them from the pipeline file; the parsers of each
//! table live in [`super::pipeline`], [`super::source`], [`super::stage`] and
//! [`super::sink`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::sink::SinkKind;
use super::source::SourceKind;
use super::stateful::{InverseSpec, JoinKind, KeyedStateSpec, LateRecords, WindowOp, WindowSpec, WindowTime};
use crate::runtime::Sandbox;
use weir_abi::Kind;

/// The stream that receives the records of failed calls of stages with
/// `on-error = "dead-letter"`; sinks read it like any stream.
pub const DEAD_LETTERS: &str = "dead-letters";

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    /// Name of the pipeline.
    pub name: String,
    /// Micro-batch interval.
    pub batch_interval: Duration,
    /// How batch times are set.
    pub clock: ClockMode,
    /// Where and how often to checkpoint; `None`: no checkpoints.
    pub checkpoint: Option<crate::checkpoint::CheckpointSettings>,
    /// Default number of partitions of every stream.
    pub partitions: usize,
    /// Chunks a source may queue before it is slowed down.
    pub queue_chunks: usize,
    /// Bytes of input a processing-time batch may gather from one source
    /// during its interval before the source is slowed down; `None`: not
    /// set, [`super::DEFAULT_MAX_BATCH_MEMORY`] (or a server tenant's
    /// ceiling, when lower).
    pub max_batch_memory: Option<usize>,
    /// Records per chunk handed from a receiver to the batcher.
    pub chunk_records: usize,
    /// Plugin name → path of its component.
    pub plugins: BTreeMap<String, PathBuf>,
    /// The sources, in file order.
    pub sources: Vec<SourceSpec>,
    /// The stages, in an order where every stage follows its inputs.
    pub stages: Vec<StageSpec>,
    /// The sinks, in file order.
    pub sinks: Vec<SinkSpec>,
    /// `[cluster]`: run on several processes; `None`: on this one alone.
    pub cluster: Option<ClusterSpec>,
}

impl PipelineSpec {
    /// `max-batch-memory` as it runs: as set, else the default.
    pub fn batch_memory(&self) -> usize {
        self.max_batch_memory.unwrap_or(super::DEFAULT_MAX_BATCH_MEMORY)
    }
}

/// `[cluster]`: every `weir run` process started with the pipeline file
/// joins one Kafka consumer group, which spreads the partitions over them
/// (see [`crate::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The consumer group the processes join.
    pub group_id: String,
    /// Partitions of the repartition topics; `None`: as many as the input
    /// topic has.
    pub partitions: Option<usize>,
    /// How long a member may stay silent (a crash, a pause) before the
    /// group moves its partitions to the others.
    pub session_timeout: Duration,
}

/// A receiver and the stream it produces.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Name of the produced stream.
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
    /// How fast it may deliver (`max-rate`, backpressure).
    pub rate: crate::source::rate::RateSpec,
    /// Line of its table in the pipeline file.
    pub line: usize,
}

/// How batch times are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Batches are cut every interval of the wall clock.
    WallClock,
    /// Batch `k` is at `start + (k + 1) * interval` and holds one unit of
    /// every source (`max-files-per-batch` files, `records-per-batch` lines),
    /// whatever the wall clock says: outputs are a pure function of the input.
    Deterministic {
        /// Milliseconds since the Unix epoch at which batch 0 starts.
        start_ms: i64,
    },
}

/// A stage: an operator and the stream it produces.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Name of the produced stream.
    pub name: String,
    /// Input streams.
    pub inputs: Vec<String>,
    /// The operator.
    pub op: OperatorSpec,
    /// Limits and capabilities of its plugin instances.
    pub sandbox: Sandbox,
    /// What happens when a call fails.
    pub policy: FailurePolicy,
    /// Line of its table in the pipeline file.
    pub line: usize,
}

impl StageSpec {
    /// True when the stage sends records to the dead-letter stream.
    pub fn dead_letters(&self) -> bool {
        let late = matches!(
            &self.op,
            OperatorSpec::Window(WindowSpec {
                time: WindowTime::Event {
                    late: LateRecords::DeadLetter,
                    ..
                },
                ..
            })
        );
        late || self.policy.on_error == OnError::DeadLetter
    }
}

/// What a stage does when a plugin call fails (a trap, a limit, or an error
/// the plugin returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Retries of the failed call (on a fresh instance after a trap), with
    /// backoff, before `on_error` applies.
    pub retries: u32,
    /// What happens to the partition's batch after the retries.
    pub on_error: OnError,
    /// Consecutive batches with a failure after which the stage is quarantined.
    pub quarantine_after: u32,
    /// What quarantine does.
    pub quarantine: Quarantine,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            retries: 0,
            on_error: OnError::Fail,
            quarantine_after: 5,
            quarantine: Quarantine::Stop,
        }
    }
}

/// The fate of a partition's batch whose call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop the pipeline with the error.
    Fail,
    /// Drop the partition's batch for this stage, count it, go on.
    SkipBatch,
    /// Send the failing records (a record the plugin named, else the whole
    /// partition's input) with the error to the `dead-letters` stream.
    DeadLetter,
}

/// What quarantining a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quarantine {
    /// Stop the pipeline with an error that says why.
    Stop,
    /// Stop processing batches (receivers wait, nothing is dropped) until
    /// the pipeline is stopped.
    Pause,
}

/// Operators.
#[derive(Debug, Clone)]
pub enum OperatorSpec {
    /// A per-partition plugin transform.
    Transform {
        /// Which transform.
        kind: TransformKind,
        /// Name of the plugin in `[plugins]`.
        plugin: String,
        /// The stage's configuration, sorted by key.
        config: Vec<(String, String)>,
    },
    /// Reduce the values of each key: map-side combine, shuffle, merge.
    ReduceByKey {
        /// The combine function.
        reducer: ReducerSpec,
        /// Output partitions; the pipeline default when `None`.
        partitions: Option<usize>,
    },
    /// All records of several streams.
    Union,
    /// Spread records evenly over `partitions` partitions.
    Repartition {
        /// Output partitions; the pipeline default when `None`.
        partitions: Option<usize>,
    },
    /// A window over batches or over event time.
    Window(WindowSpec),
    /// Per-key state across batches.
    KeyedState(KeyedStateSpec),
    /// A join or cogroup of two keyed streams.
    Join {
        /// Which join.
        kind: JoinKind,
        /// Output partitions; the pipeline default when `None`.
        partitions: Option<usize>,
    },
    /// A plugin over one partition of two inputs at once.
    TransformWith {
        /// Name of the plugin in `[plugins]`.
        plugin: String,
        /// The stage's configuration, sorted by key.
        config: Vec<(String, String)>,
        /// Output partitions; the pipeline default when `None`.
        partitions: Option<usize>,
    },
}

impl OperatorSpec {
    /// The names (in `[plugins]`) of the plugins this operator calls.
    pub fn plugins(&self) -> Vec<String> {
        let reducer = |reducer: &ReducerSpec| match reducer {
            ReducerSpec::Plugin { plugin, .. } => Some(plugin.clone()),
            _ => None,
        };
        let names = match self {
            Self::Transform { plugin, .. } | Self::TransformWith { plugin, .. } => {
                vec![Some(plugin.clone())]
            }
            Self::ReduceByKey { reducer: r, .. } => vec![reducer(r)],
            Self::KeyedState(state) => vec![Some(state.plugin.clone())],
            Self::Window(window) => match &window.op {
                WindowOp::Raw => Vec::new(),
                WindowOp::Reduce {
                    reducer: r, inverse, ..
                } => vec![
                    reducer(r),
                    match inverse {
                        Some(InverseSpec::Plugin(plugin)) => Some(plugin.clone()),
                        _ => None,
                    },
                ],
            },
            Self::Union | Self::Repartition { .. } | Self::Join { .. } => Vec::new(),
        };
        names.into_iter().flatten().collect()
    }
}

/// The per-partition transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransformKind {
    /// One record out per record in.
    Map,
    /// Any number of records out per record in.
    FlatMap,
    /// Keeps or drops each record.
    Filter,
    /// Zero or one record out per record in.
    FilterMap,
    /// Any function of the whole partition.
    MapPartitions,
}

impl TransformKind {
    /// The kind of plugin that implements this transform.
    pub fn plugin_kind(self) -> Kind {
        match self {
            Self::Map => Kind::Map,
            Self::FlatMap => Kind::FlatMap,
            Self::Filter => Kind::Filter,
            Self::FilterMap => Kind::FilterMap,
            Self::MapPartitions => Kind::MapPartitions,
        }
    }

    /// The transform plugins of `kind` implement, if `kind` is one of them.
    pub fn of(kind: Kind) -> Option<Self> {
        Some(match kind {
            Kind::Map => Self::Map,
            Kind::FlatMap => Self::FlatMap,
            Kind::Filter => Self::Filter,
            Kind::FilterMap => Self::FilterMap,
            Kind::MapPartitions => Self::MapPartitions,
            Kind::Reducer | Kind::UpdateState | Kind::MapWithState | Kind::TransformWith | Kind::Sink => {
                return None;
            }
        })
    }

    /// The operator's name in pipeline files (its plugin kind's name).
    pub fn name(self) -> &'static str {
        self.plugin_kind().name()
    }
}

/// The combine function of a reduce-by-key.
#[derive(Debug, Clone)]
pub enum ReducerSpec {
    /// One of the host's own reducers.
    Builtin(BuiltinReducer),
    /// A reducer plugin.
    Plugin {
        /// Name of the plugin in `[plugins]`.
        plugin: String,
        /// The stage's configuration, sorted by key.
        config: Vec<(String, String)>,
    },
}

/// Reducers built into the host; they read values as decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinReducer {
    /// Number of records per key (values ignored).
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
}

impl BuiltinReducer {
    /// The built-in reducer called `name` in pipeline files.
    pub(super) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "count" => Self::Count,
            "sum" => Self::Sum,
            "min" => Self::Min,
            "max" => Self::Max,
            _ => return None,
        })
    }
}

/// A sink and the stream it writes.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Name for logs.
    pub name: String,
    /// The stream it writes.
    pub input: String,
    /// Where to.
    pub kind: SinkKind,
    /// Line of its table in the pipeline file.
    pub line: usize,
}
