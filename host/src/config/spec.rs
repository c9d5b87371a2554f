//! The validated pipeline: what the engine runs.
//!
//! [`build`] checks a parsed [`PipelineFile`] key by key (values in range,
//! keys that belong to the chosen operator or type, references to plugins and
//! streams) and resolves relative paths against the pipeline file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::LineIndex;
use super::file::{Inputs, LimitsTable, PipelineFile, SinkTable, SourceTable, StageTable};
use super::graph::{Node, topological_order};
use super::stateful::{self, JoinKind, KeyedStateSpec, LateRecords, StatefulContext, WindowSpec, WindowTime};
use crate::runtime::{Grants, Limits, Sandbox};

/// An error at a byte offset of the file.
type SpecError = (usize, String);

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
}

/// A receiver and the stream it produces.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// Name of the produced stream.
    pub name: String,
    /// What it reads.
    pub kind: SourceKind,
    /// Line of its table in the pipeline file.
    pub line: usize,
}

/// The kinds of receivers.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// Lines from a TCP socket.
    Socket {
        /// `host:port`.
        address: String,
        /// Connect to a server, or listen for producers.
        mode: SocketMode,
        /// Longest wait between reconnection attempts.
        max_backoff: Duration,
        /// Acknowledge logged lines to the producer (`ack <lines>`), with checkpoints.
        ack: bool,
    },
    /// Lines of every file that appears in a directory.
    Files(FilesSpec),
    /// Deterministic words text.
    Generator(GeneratorSpec),
    /// Lines from standard input.
    Stdin,
}

/// Settings of the files source.
#[derive(Debug, Clone)]
pub struct FilesSpec {
    /// The directory.
    pub dir: PathBuf,
    /// Which file names to read.
    pub glob: glob::Pattern,
    /// How often to look for new files.
    pub poll_interval: Duration,
    /// At most this many files per batch (Spark's `maxFilesPerTrigger`);
    /// under deterministic time, exactly this many (fewer only at the end).
    pub max_files_per_batch: Option<u64>,
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

/// How a socket source gets its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketMode {
    /// Connect to `address` (like Spark's `socketTextStream`), reconnecting with backoff.
    Connect,
    /// Listen on `address` and accept any number of producers.
    Listen,
}

/// Settings of the generator source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratorSpec {
    /// Lines to produce; unlimited when `None`.
    pub lines: Option<u64>,
    /// Lines per second; unthrottled when `None`.
    pub rate: Option<u64>,
    /// Words per line.
    pub words_per_line: usize,
    /// Seed of the word sequence.
    pub seed: u64,
    /// Lines per batch: each batch gets exactly this many (fewer only at the end).
    pub records_per_batch: Option<u64>,
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
    /// The operator's name in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Map => "map",
            Self::FlatMap => "flat-map",
            Self::Filter => "filter",
            Self::FilterMap => "filter-map",
            Self::MapPartitions => "map-partitions",
        }
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
    fn parse(name: &str) -> Option<Self> {
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

/// The kinds of sinks.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// Print a header and the first records of each batch.
    Console {
        /// Records shown per batch.
        max_records: usize,
    },
    /// One directory per batch, made visible atomically.
    Files {
        /// The output directory.
        dir: PathBuf,
        /// Record format.
        format: FileFormat,
    },
}

/// Record formats of the files sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// `key<TAB>value` per line (just `value` without a key).
    Text,
    /// One JSON object per line: key, value, timestamp.
    Jsonl,
}

/// Validates `raw`; errors carry the byte offset they refer to.
pub(super) fn build(
    raw: PipelineFile,
    base_dir: &Path,
    lines: &LineIndex,
) -> Result<PipelineSpec, SpecError> {
    let table = raw.pipeline;
    let batch_interval = match &table.batch_interval {
        Some(text) => duration(text)?,
        None => Duration::from_secs(1),
    };
    let clock = match &table.clock {
        None => ClockMode::WallClock,
        Some(mode) if mode.get_ref() == "wall" => ClockMode::WallClock,
        Some(mode) if mode.get_ref() == "deterministic" => ClockMode::Deterministic {
            start_ms: table.start_time.as_ref().map_or(0, |t| *t.get_ref()),
        },
        Some(mode) => {
            return Err((
                mode.span().start,
                format!(
                    "unknown clock `{}` (expected wall or deterministic)",
                    mode.get_ref()
                ),
            ));
        }
    };
    if let (ClockMode::WallClock, Some(start)) = (clock, &table.start_time) {
        return Err((
            start.span().start,
            "`start-time` needs clock = \"deterministic\"".into(),
        ));
    }
    let checkpoint =
        match (&table.checkpoint_dir, &raw.checkpoint) {
            (None, Some(tuning)) => {
                return Err((
                    tuning.span().start,
                    "[checkpoint] needs `checkpoint-dir` in [pipeline]".into(),
                ));
            }
            (None, None) => None,
            (Some(dir), tuning) => {
                let tuning = tuning.as_ref().map(|t| t.get_ref());
                Some(crate::checkpoint::CheckpointSettings {
                dir: base_dir.join(dir.get_ref()),
                every_batches: positive(
                    tuning.and_then(|t| t.every_batches.as_ref()),
                    "every-batches",
                    1 << 30,
                )?
                .unwrap_or(10) as u64,
                every: tuning.and_then(|t| t.every.as_ref()).map(duration).transpose()?,
                keep: positive(tuning.and_then(|t| t.keep.as_ref()), "keep", 1000)?.unwrap_or(3),
                wal_sync: match tuning.and_then(|t| t.wal_sync.as_ref()) {
                    None => crate::source::wal::WalSync::Block,
                    Some(text) if text.get_ref() == "block" => crate::source::wal::WalSync::Block,
                    Some(text) => crate::source::wal::WalSync::Interval(duration(text).map_err(|(at, _)| {
                        (
                            at,
                            format!(
                                "wal-sync must be \"block\" or an interval such as \"100ms\", not {:?}",
                                text.get_ref()
                            ),
                        )
                    })?),
                },
            })
            }
        };
    let default_partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let partitions = positive(table.partitions.as_ref(), "partitions", 1024)?.unwrap_or(default_partitions);
    let queue_chunks = positive(table.queue_chunks.as_ref(), "queue-chunks", 1 << 20)?.unwrap_or(64);
    let chunk_records = positive(table.chunk_records.as_ref(), "chunk-records", 1 << 24)?.unwrap_or(8192);

    let plugins: BTreeMap<String, PathBuf> = raw
        .plugins
        .into_iter()
        .map(|(name, path)| (name, base_dir.join(path.into_inner())))
        .collect();

    let sources = raw
        .sources
        .into_iter()
        .map(|source| source_spec(source, base_dir, lines))
        .collect::<Result<Vec<_>, _>>()?;
    if checkpoint.is_none()
        && let Some((offset, _)) = sources
            .iter()
            .find(|(_, source)| matches!(source.kind, SourceKind::Socket { ack: true, .. }))
    {
        return Err((
            *offset,
            "`ack` needs `checkpoint-dir` in [pipeline]: lines are acknowledged once they are in the write-ahead log kept there".into(),
        ));
    }
    if matches!(clock, ClockMode::Deterministic { .. }) {
        for (offset, source) in &sources {
            let fixed = match &source.kind {
                SourceKind::Files(files) => files.max_files_per_batch.is_some(),
                SourceKind::Generator(generator) => {
                    generator.records_per_batch.is_some() && generator.rate.is_none()
                }
                _ => false,
            };
            if !fixed {
                return Err((
                    *offset,
                    format!(
                        "source `{}` cannot run under clock = \"deterministic\": each batch must hold a fixed part of every source; use a files source with `max-files-per-batch` or a generator with `records-per-batch` (and no `rate`)",
                        source.name
                    ),
                ));
            }
        }
    }
    let default_limits = limits(
        raw.limits.as_ref(),
        Limits {
            call_deadline: Limits::deadline_for_interval(batch_interval),
            ..Limits::default()
        },
    )?;
    let defaults = StageDefaults {
        plugins: &plugins,
        batch_interval,
        limits: &default_limits,
        base_dir,
    };
    let stages = raw
        .stages
        .into_iter()
        .map(|stage| stage_spec(stage, &defaults, lines))
        .collect::<Result<Vec<_>, _>>()?;
    let input_offsets: Vec<usize> = stages.iter().map(|(_, input_at, _)| *input_at).collect();
    let stages: Vec<(usize, StageSpec)> = stages
        .into_iter()
        .map(|(offset, _, stage)| (offset, stage))
        .collect();
    let sinks = raw
        .sinks
        .into_iter()
        .map(|sink| sink_spec(sink, base_dir, lines))
        .collect::<Result<Vec<_>, _>>()?;

    for (offset, name) in sources
        .iter()
        .map(|(o, s)| (*o, &s.name))
        .chain(stages.iter().map(|(o, s)| (*o, &s.name)))
    {
        if name == DEAD_LETTERS {
            return Err((
                offset,
                format!("`{DEAD_LETTERS}` is reserved for the dead-letter stream"),
            ));
        }
    }
    let dead_letters = stages.iter().any(|(_, stage)| stage.dead_letters());
    if dead_letters && !sinks.iter().any(|(_, sink)| sink.input == DEAD_LETTERS) {
        let (offset, stage) = stages
            .iter()
            .find(|(_, stage)| stage.dead_letters())
            .expect("a dead-letter stage exists");
        return Err((
            *offset,
            format!(
                "stage `{}` sends records to the dead-letter stream (on-error or late-records = \"dead-letter\") but no sink reads `{DEAD_LETTERS}`: add a [[sink]] with input = \"{DEAD_LETTERS}\" so those records are kept",
                stage.name
            ),
        ));
    }
    let order = order_stages(&sources, &stages, &input_offsets, &sinks, dead_letters)?;
    let mut slots: Vec<Option<(usize, StageSpec)>> = stages.into_iter().map(Some).collect();
    let stages = order
        .into_iter()
        .map(|index| slots[index].take().expect("each stage ordered once").1)
        .collect();

    Ok(PipelineSpec {
        name: table.name,
        batch_interval,
        clock,
        checkpoint,
        partitions,
        queue_chunks,
        chunk_records,
        plugins,
        sources: sources.into_iter().map(|(_, source)| source).collect(),
        stages,
        sinks: sinks.into_iter().map(|(_, sink)| sink).collect(),
    })
}

/// Orders stages after their inputs and checks that sinks read known streams.
fn order_stages(
    sources: &[(usize, SourceSpec)],
    stages: &[(usize, StageSpec)],
    input_offsets: &[usize],
    sinks: &[(usize, SinkSpec)],
    dead_letters: bool,
) -> Result<Vec<usize>, SpecError> {
    if sources.is_empty() {
        return Err((0, "the pipeline has no [[source]]".into()));
    }
    if sinks.is_empty() {
        return Err((
            0,
            "the pipeline has no [[sink]]: add one (for example type = \"console\") so results go somewhere"
                .into(),
        ));
    }
    let source_nodes: Vec<(&str, usize)> = sources
        .iter()
        .map(|(offset, source)| (source.name.as_str(), *offset))
        .collect();
    let stage_nodes: Vec<Node<'_>> = stages
        .iter()
        .zip(input_offsets)
        .map(|((offset, stage), input_at)| Node {
            name: &stage.name,
            inputs: stage
                .inputs
                .iter()
                .map(|input| (input.as_str(), *input_at))
                .collect(),
            offset: *offset,
        })
        .collect();
    let order = topological_order(&source_nodes, &stage_nodes)?;
    for (offset, sink) in sinks {
        if sink.input == DEAD_LETTERS && !dead_letters {
            return Err((
                *offset,
                format!(
                    "sink `{}` reads `{DEAD_LETTERS}`, but no stage has on-error = \"dead-letter\"",
                    sink.name
                ),
            ));
        }
        let known = sink.input == DEAD_LETTERS
            || source_nodes.iter().any(|(name, _)| *name == sink.input)
            || stage_nodes.iter().any(|node| node.name == sink.input);
        if !known {
            return Err((
                *offset,
                format!("sink `{}` reads the unknown stream `{}`", sink.name, sink.input),
            ));
        }
    }
    Ok(order)
}

fn source_spec(
    table: Spanned<SourceTable>,
    base_dir: &Path,
    lines: &LineIndex,
) -> Result<(usize, SourceSpec), SpecError> {
    let offset = table.span().start;
    let table = table.into_inner();
    let name = stream_name(&table.name)?;
    let kind_name = table.kind.get_ref().as_str();
    let allowed: &[&str] = match kind_name {
        "socket" => &["address", "mode", "max-backoff", "ack"],
        "files" => &["path", "glob", "poll-interval", "max-files-per-batch"],
        "generator" => &["lines", "rate", "words-per-line", "seed", "records-per-batch"],
        "stdin" => &[],
        other => {
            return Err((
                table.kind.span().start,
                format!("unknown source type `{other}` (expected socket, files, generator or stdin)"),
            ));
        }
    };
    let present: [(&str, Option<usize>); 13] = [
        ("ack", table.ack.as_ref().map(|v| v.span().start)),
        (
            "max-files-per-batch",
            table.max_files_per_batch.as_ref().map(|v| v.span().start),
        ),
        (
            "records-per-batch",
            table.records_per_batch.as_ref().map(|v| v.span().start),
        ),
        ("address", table.address.as_ref().map(|v| v.span().start)),
        ("mode", table.mode.as_ref().map(|v| v.span().start)),
        ("max-backoff", table.max_backoff.as_ref().map(|v| v.span().start)),
        ("path", table.path.as_ref().map(|v| v.span().start)),
        ("glob", table.glob.as_ref().map(|v| v.span().start)),
        (
            "poll-interval",
            table.poll_interval.as_ref().map(|v| v.span().start),
        ),
        ("lines", table.lines.as_ref().map(|v| v.span().start)),
        ("rate", table.rate.as_ref().map(|v| v.span().start)),
        (
            "words-per-line",
            table.words_per_line.as_ref().map(|v| v.span().start),
        ),
        ("seed", table.seed.as_ref().map(|v| v.span().start)),
    ];
    only_keys(&present, allowed, &format!("a `{kind_name}` source"))?;
    let kind = match kind_name {
        "socket" => {
            let address = required(&table.address, "address", offset, "a socket source")?;
            let mode = match table
                .mode
                .as_ref()
                .map(|m| (m.get_ref().as_str(), m.span().start))
            {
                None | Some(("connect", _)) => SocketMode::Connect,
                Some(("listen", _)) => SocketMode::Listen,
                Some((other, at)) => {
                    return Err((
                        at,
                        format!("unknown socket mode `{other}` (expected connect or listen)"),
                    ));
                }
            };
            let max_backoff = match &table.max_backoff {
                Some(text) => duration(text)?,
                None => Duration::from_secs(5),
            };
            SourceKind::Socket {
                address: address.to_owned(),
                mode,
                max_backoff,
                ack: table.ack.as_ref().is_some_and(|a| *a.get_ref()),
            }
        }
        "files" => {
            let dir = required(&table.path, "path", offset, "a files source")?;
            let glob = match &table.glob {
                Some(pattern) => glob::Pattern::new(pattern.get_ref()).map_err(|e| {
                    (
                        pattern.span().start,
                        format!("invalid glob `{}`: {e}", pattern.get_ref()),
                    )
                })?,
                None => glob::Pattern::new("*").expect("valid pattern"),
            };
            let poll_interval = match &table.poll_interval {
                Some(text) => duration(text)?,
                None => Duration::from_millis(100),
            };
            SourceKind::Files(FilesSpec {
                dir: base_dir.join(dir),
                glob,
                poll_interval,
                max_files_per_batch: positive(
                    table.max_files_per_batch.as_ref(),
                    "max-files-per-batch",
                    1 << 30,
                )?
                .map(|n| n as u64),
            })
        }
        "generator" => SourceKind::Generator(GeneratorSpec {
            lines: non_negative(table.lines.as_ref(), "lines")?,
            rate: positive(table.rate.as_ref(), "rate", usize::MAX)?.map(|r| r as u64),
            words_per_line: positive(table.words_per_line.as_ref(), "words-per-line", 10_000)?.unwrap_or(8),
            seed: non_negative(table.seed.as_ref(), "seed")?.unwrap_or(0),
            records_per_batch: positive(table.records_per_batch.as_ref(), "records-per-batch", 1 << 40)?
                .map(|n| n as u64),
        }),
        _ => SourceKind::Stdin,
    };
    Ok((
        offset,
        SourceSpec {
            name,
            kind,
            line: lines.line_of(offset),
        },
    ))
}

/// Keys every plugin stage accepts besides its operator's own.
pub(super) const PLUGIN_KEYS: &[&str] = &[
    "limits",
    "read-dir",
    "env",
    "on-error",
    "retries",
    "quarantine-after",
    "quarantine",
];

/// The stage context that `stage_spec` needs from the pipeline.
struct StageDefaults<'a> {
    plugins: &'a BTreeMap<String, PathBuf>,
    batch_interval: Duration,
    limits: &'a Limits,
    base_dir: &'a Path,
}

fn stage_spec(
    table: Spanned<StageTable>,
    defaults: &StageDefaults<'_>,
    lines: &LineIndex,
) -> Result<(usize, usize, StageSpec), SpecError> {
    let plugins = defaults.plugins;
    let offset = table.span().start;
    let table = table.into_inner();
    let name = stream_name(&table.name)?;
    let inputs = match table.input.get_ref() {
        Inputs::One(input) => vec![input.clone()],
        Inputs::Many(inputs) => inputs.clone(),
    };
    let input_at = table.input.span().start;
    if inputs.is_empty() {
        return Err((input_at, format!("stage `{name}` has an empty input list")));
    }
    let op_name = table.op.get_ref().as_str();
    let present = [
        ("plugin", table.plugin.as_ref().map(|v| v.span().start)),
        ("reducer", table.reducer.as_ref().map(|v| v.span().start)),
        ("partitions", table.partitions.as_ref().map(|v| v.span().start)),
        ("config", table.config.as_ref().map(|v| v.span().start)),
        ("limits", table.limits.as_ref().map(|v| v.span().start)),
        ("read-dir", table.read_dir.as_ref().map(|v| v.span().start)),
        ("env", table.env.as_ref().map(|v| v.span().start)),
        ("on-error", table.on_error.as_ref().map(|v| v.span().start)),
        ("retries", table.retries.as_ref().map(|v| v.span().start)),
        (
            "quarantine-after",
            table.quarantine_after.as_ref().map(|v| v.span().start),
        ),
        ("quarantine", table.quarantine.as_ref().map(|v| v.span().start)),
        ("length", table.length.as_ref().map(|v| v.span().start)),
        ("slide", table.slide.as_ref().map(|v| v.span().start)),
        ("inverse", table.inverse.as_ref().map(|v| v.span().start)),
        ("neutral", table.neutral.as_ref().map(|v| v.span().start)),
        ("time", table.time.as_ref().map(|v| v.span().start)),
        (
            "allowed-lateness",
            table.allowed_lateness.as_ref().map(|v| v.span().start),
        ),
        ("output-mode", table.output_mode.as_ref().map(|v| v.span().start)),
        (
            "late-records",
            table.late_records.as_ref().map(|v| v.span().start),
        ),
        ("timeout", table.timeout.as_ref().map(|v| v.span().start)),
        (
            "state-memory",
            table.state_memory.as_ref().map(|v| v.span().start),
        ),
    ];
    let context = format!("op `{op_name}`");
    let single_input = |op: &str| stateful::one_input(op, inputs.len(), input_at);
    let partitions = positive(table.partitions.as_ref(), "partitions", 1024)?;
    let transform = match op_name {
        "map" => Some(TransformKind::Map),
        "flat-map" => Some(TransformKind::FlatMap),
        "filter" => Some(TransformKind::Filter),
        "filter-map" => Some(TransformKind::FilterMap),
        "map-partitions" => Some(TransformKind::MapPartitions),
        _ => None,
    };
    let op = if let Some(kind) = transform {
        only_keys(&present, &[&["plugin", "config"], PLUGIN_KEYS].concat(), &context)?;
        single_input(op_name)?;
        let plugin = required(&table.plugin, "plugin", offset, &context)?;
        plugin_known(
            plugins,
            plugin,
            table.plugin.as_ref().map_or(offset, |p| p.span().start),
        )?;
        OperatorSpec::Transform {
            kind,
            plugin: plugin.to_owned(),
            config: config_pairs(table.config.as_ref())?,
        }
    } else {
        match op_name {
            "reduce-by-key" => {
                only_keys(
                    &present,
                    &[&["reducer", "partitions", "config"], PLUGIN_KEYS].concat(),
                    &context,
                )?;
                single_input(op_name)?;
                let reducer = reducer_spec(&table, plugins, offset, &context)?;
                OperatorSpec::ReduceByKey { reducer, partitions }
            }
            "union" => {
                only_keys(&present, &[], &context)?;
                OperatorSpec::Union
            }
            "repartition" => {
                only_keys(&present, &["partitions"], &context)?;
                single_input(op_name)?;
                OperatorSpec::Repartition { partitions }
            }
            other => {
                let cx = StatefulContext {
                    plugins,
                    batch_interval: defaults.batch_interval,
                    offset,
                    input_at,
                    inputs: inputs.len(),
                    present: &present,
                };
                match stateful::operator(other, &table, &cx) {
                    Some(op) => op?,
                    None => {
                        return Err((
                            table.op.span().start,
                            format!(
                                "unknown op `{other}` (expected map, flat-map, filter, filter-map, map-partitions, reduce-by-key, union, repartition, window, count-by-window, reduce-by-window, reduce-by-key-and-window, count-by-value-and-window, update-state-by-key, map-with-state, join, left-outer-join, right-outer-join, full-outer-join, cogroup or transform-with)"
                            ),
                        ));
                    }
                }
            }
        }
    };
    let limits = match &table.limits {
        Some(overrides) => limits(Some(overrides), defaults.limits.clone())?,
        None => defaults.limits.clone(),
    };
    let grants = Grants {
        read_dir: table
            .read_dir
            .as_ref()
            .map(|dir| defaults.base_dir.join(dir.get_ref())),
        env: table
            .env
            .as_ref()
            .map(|env| {
                env.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let policy = failure_policy(&table)?;
    Ok((
        offset,
        input_at,
        StageSpec {
            name,
            inputs,
            op,
            sandbox: Sandbox { limits, grants },
            policy,
            line: lines.line_of(offset),
        },
    ))
}

/// The `reducer` of a stage: a built-in or a reducer plugin with the stage's config.
pub(super) fn reducer_spec(
    table: &StageTable,
    plugins: &BTreeMap<String, PathBuf>,
    offset: usize,
    context: &str,
) -> Result<ReducerSpec, SpecError> {
    let reducer_name = required(&table.reducer, "reducer", offset, context)?;
    let reducer = match BuiltinReducer::parse(reducer_name) {
        Some(builtin) => {
            if table.config.is_some() {
                return Err((
                    offset,
                    format!("the built-in reducer `{reducer_name}` takes no config"),
                ));
            }
            ReducerSpec::Builtin(builtin)
        }
        None => {
            let at = table.reducer.as_ref().map_or(offset, |r| r.span().start);
            if !plugins.contains_key(reducer_name) {
                return Err((
                    at,
                    format!(
                        "unknown reducer `{reducer_name}`: use count, sum, min, max, or the name of a reducer plugin declared in [plugins]"
                    ),
                ));
            }
            ReducerSpec::Plugin {
                plugin: reducer_name.to_owned(),
                config: config_pairs(table.config.as_ref())?,
            }
        }
    };
    Ok(reducer)
}

fn failure_policy(table: &StageTable) -> Result<FailurePolicy, SpecError> {
    let mut policy = FailurePolicy::default();
    if let Some(on_error) = &table.on_error {
        policy.on_error = match on_error.get_ref().as_str() {
            "fail" => OnError::Fail,
            "skip-batch" => OnError::SkipBatch,
            "dead-letter" => OnError::DeadLetter,
            other => {
                return Err((
                    on_error.span().start,
                    format!("unknown on-error `{other}` (expected fail, skip-batch or dead-letter)"),
                ));
            }
        };
    }
    if let Some(retries) = non_negative(table.retries.as_ref(), "retries")? {
        policy.retries = retries.min(100) as u32;
    }
    if let Some(after) = positive(table.quarantine_after.as_ref(), "quarantine-after", 1_000_000)? {
        policy.quarantine_after = after as u32;
    }
    if let Some(quarantine) = &table.quarantine {
        policy.quarantine = match quarantine.get_ref().as_str() {
            "stop" => Quarantine::Stop,
            "pause" => Quarantine::Pause,
            other => {
                return Err((
                    quarantine.span().start,
                    format!("unknown quarantine `{other}` (expected stop or pause)"),
                ));
            }
        };
    }
    Ok(policy)
}

/// `defaults` with the keys of `table` applied.
fn limits(table: Option<&Spanned<LimitsTable>>, mut defaults: Limits) -> Result<Limits, SpecError> {
    let Some(table) = table else {
        return Ok(defaults);
    };
    let table = table.get_ref();
    if let Some(memory) = &table.memory {
        defaults.memory_bytes = byte_size(memory)?;
    }
    if let Some(timeout) = &table.timeout {
        defaults.call_deadline = duration(timeout)?;
    }
    if let Some(ratio) = positive(
        table.output_records_ratio.as_ref(),
        "output-records-ratio",
        1 << 30,
    )? {
        defaults.output_records_ratio = ratio as u64;
    }
    if let Some(ratio) = positive(table.output_bytes_ratio.as_ref(), "output-bytes-ratio", 1 << 30)? {
        defaults.output_bytes_ratio = ratio as u64;
    }
    if let Some(fuel) = positive(table.fuel.as_ref(), "fuel", usize::MAX)? {
        defaults.fuel = Some(fuel as u64);
    }
    Ok(defaults)
}

/// Reads `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100MB"` or a plain number of bytes.
pub(super) fn byte_size(text: &Spanned<String>) -> Result<usize, SpecError> {
    let raw = text.get_ref().trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => u64::MAX,
    };
    match number.parse::<u64>() {
        Ok(n) if multiplier != u64::MAX && n > 0 => Ok(n.saturating_mul(multiplier).min(4 << 30) as usize),
        _ => Err((
            text.span().start,
            format!("invalid size {raw:?} (write e.g. \"64MiB\", \"512KiB\", \"1GiB\")"),
        )),
    }
}

fn sink_spec(
    table: Spanned<SinkTable>,
    base_dir: &Path,
    lines: &LineIndex,
) -> Result<(usize, SinkSpec), SpecError> {
    let offset = table.span().start;
    let table = table.into_inner();
    let kind_name = table.kind.get_ref().as_str();
    let present = [
        ("max-records", table.max_records.as_ref().map(|v| v.span().start)),
        ("path", table.path.as_ref().map(|v| v.span().start)),
        ("format", table.format.as_ref().map(|v| v.span().start)),
    ];
    let context = format!("a `{kind_name}` sink");
    let kind = match kind_name {
        "console" => {
            only_keys(&present, &["max-records"], &context)?;
            SinkKind::Console {
                max_records: non_negative(table.max_records.as_ref(), "max-records")?
                    .map_or(10, |n| n as usize),
            }
        }
        "files" => {
            only_keys(&present, &["path", "format"], &context)?;
            let dir = required(&table.path, "path", offset, &context)?;
            let format = match table
                .format
                .as_ref()
                .map(|f| (f.get_ref().as_str(), f.span().start))
            {
                None | Some(("text", _)) => FileFormat::Text,
                Some(("jsonl", _)) => FileFormat::Jsonl,
                Some((other, at)) => {
                    return Err((at, format!("unknown format `{other}` (expected text or jsonl)")));
                }
            };
            SinkKind::Files {
                dir: base_dir.join(dir),
                format,
            }
        }
        other => {
            return Err((
                table.kind.span().start,
                format!("unknown sink type `{other}` (expected console or files)"),
            ));
        }
    };
    let input = table.input.get_ref().clone();
    let name = match &table.name {
        Some(name) => name.get_ref().clone(),
        None => format!("{kind_name}-{input}"),
    };
    Ok((
        offset,
        SinkSpec {
            name,
            input,
            kind,
            line: lines.line_of(offset),
        },
    ))
}

fn stream_name(name: &Spanned<String>) -> Result<String, SpecError> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(text.clone())
    } else {
        Err((
            name.span().start,
            format!("invalid stream name {text:?}: use letters, digits, '-', '_' and '.'"),
        ))
    }
}

pub(super) fn only_keys(
    present: &[(&str, Option<usize>)],
    allowed: &[&str],
    context: &str,
) -> Result<(), SpecError> {
    for (key, at) in present {
        if let Some(at) = at
            && !allowed.contains(key)
        {
            let hint = if allowed.is_empty() {
                "it takes no other keys".to_owned()
            } else {
                format!("it accepts {}", allowed.join(", "))
            };
            return Err((*at, format!("`{key}` is not a setting of {context} ({hint})")));
        }
    }
    Ok(())
}

pub(super) fn required<'a>(
    value: &'a Option<Spanned<String>>,
    key: &str,
    offset: usize,
    context: &str,
) -> Result<&'a str, SpecError> {
    value
        .as_ref()
        .map(|v| v.get_ref().as_str())
        .ok_or_else(|| (offset, format!("{context} needs `{key}`")))
}

pub(super) fn plugin_known(
    plugins: &BTreeMap<String, PathBuf>,
    name: &str,
    at: usize,
) -> Result<(), SpecError> {
    if plugins.contains_key(name) {
        Ok(())
    } else {
        let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
        Err((
            at,
            format!(
                "unknown plugin `{name}`: declare it in [plugins] as {name} = \"path/to/plugin.wasm\" (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }
}

/// Reads a duration between 1 ms and one day.
pub(super) fn duration(text: &Spanned<String>) -> Result<Duration, SpecError> {
    let value = humantime::parse_duration(text.get_ref()).map_err(|e| {
        (
            text.span().start,
            format!(
                "invalid duration {:?}: {e} (write e.g. \"1s\", \"50ms\")",
                text.get_ref()
            ),
        )
    })?;
    if value < Duration::from_millis(1) || value > Duration::from_secs(24 * 3600) {
        return Err((
            text.span().start,
            format!("duration {:?} must be between 1ms and 1 day", text.get_ref()),
        ));
    }
    Ok(value)
}

pub(super) fn positive(
    value: Option<&Spanned<i64>>,
    key: &str,
    max: usize,
) -> Result<Option<usize>, SpecError> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() >= 1 && (*v.get_ref() as u64) <= max as u64 => {
            Ok(Some(*v.get_ref() as usize))
        }
        Some(v) => Err((
            v.span().start,
            format!("{key} must be between 1 and {max}, not {}", v.get_ref()),
        )),
    }
}

pub(super) fn non_negative(value: Option<&Spanned<i64>>, key: &str) -> Result<Option<u64>, SpecError> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() >= 0 => Ok(Some(*v.get_ref() as u64)),
        Some(v) => Err((
            v.span().start,
            format!("{key} must not be negative, not {}", v.get_ref()),
        )),
    }
}

pub(super) fn config_pairs(
    config: Option<&Spanned<BTreeMap<String, toml::Value>>>,
) -> Result<Vec<(String, String)>, SpecError> {
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    config
        .get_ref()
        .iter()
        .map(|(key, value)| {
            scalar_text(value).map(|text| (key.clone(), text)).ok_or_else(|| {
                (
                    config.span().start,
                    format!("config `{key}` must be a string, number, boolean or a list of them"),
                )
            })
        })
        .collect()
}

/// Config values reach plugins as text: scalars as written, lists joined by commas.
fn scalar_text(value: &toml::Value) -> Option<String> {
    Some(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => None,
                other => scalar_text(other),
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        toml::Value::Table(_) => return None,
    })
}
