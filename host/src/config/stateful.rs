//! The stateful operators of a pipeline file: windows, keyed state and
//! joins — their validated form and the checks of their keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::file::StageTable;
use super::stage::{keys_of, reducer_spec};
use super::values::{byte_size, config_pairs, duration, only_keys, plugin_known, positive, required};
use super::{BuiltinReducer, OperatorSpec, ReducerSpec, SpecError};

/// A window stage.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// What the window computes.
    pub op: WindowOp,
    /// How long a window is.
    pub length: Duration,
    /// How often a window is emitted (and, in event time, how far apart windows start).
    pub slide: Duration,
    /// Which clock windows follow.
    pub time: WindowTime,
    /// Output partitions of a reducing window; the pipeline default when `None`.
    pub partitions: Option<usize>,
    /// Memory for a reducing window's state before it spills to disk
    /// (`state-memory`: a processing-time window's partials, an event-time
    /// window's oldest open windows); the default when `None`.
    pub memory: Option<usize>,
}

/// What a window computes.
#[derive(Debug, Clone)]
pub enum WindowOp {
    /// Every record of the window (`window`).
    Raw,
    /// Per key, the reduction of the window's values.
    Reduce {
        /// How keys are rewritten first (`count-by-window`, `reduce-by-window`:
        /// dropped; `count-by-value-and-window`: the value).
        rekey: Option<KeyRewrite>,
        /// The combine function.
        reducer: ReducerSpec,
        /// Its inverse: windows are then updated incrementally.
        inverse: Option<InverseSpec>,
        /// Keys whose window value equals this are dropped.
        neutral: Option<String>,
    },
}

/// How a window rewrites keys before reducing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRewrite {
    /// All records form one group.
    Drop,
    /// Records are keyed by their value.
    ByValue,
}

/// The inverse of a window's reducer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InverseSpec {
    /// The host's own inverse of `count` or `sum`.
    Builtin(BuiltinReducer),
    /// A reducer plugin returning its first value minus the others; it gets
    /// the stage's config.
    Plugin(String),
}

/// Which clock a window follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowTime {
    /// Batch time: a window is a run of batches.
    Processing,
    /// Record timestamps, with a watermark.
    Event {
        /// How far behind the latest timestamp seen the watermark trails.
        allowed_lateness: Duration,
        /// When windows are emitted.
        output: OutputMode,
        /// What happens to records behind the watermark.
        late: LateRecords,
    },
}

/// When event-time windows are emitted (Structured Streaming's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Once, when the watermark passes the window's end.
    Append,
    /// Every batch in which the window changed.
    Update,
}

/// What happens to records behind the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LateRecords {
    /// Dropped and counted.
    Drop,
    /// Counted and sent to the `dead-letters` stream.
    DeadLetter,
}

/// A keyed-state stage.
#[derive(Debug, Clone)]
pub struct KeyedStateSpec {
    /// Which operator.
    pub kind: StateKind,
    /// The plugin.
    pub plugin: String,
    /// The stage's configuration.
    pub config: Vec<(String, String)>,
    /// Keys without a value for this long are offered once as timed out, then removed.
    pub timeout: Option<Duration>,
    /// Output partitions; the pipeline default when `None`.
    pub partitions: Option<usize>,
    /// State kept in memory per stage before it spills to disk.
    pub memory: Option<usize>,
}

/// The keyed-state operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// All new values of a key per batch (Spark's `updateStateByKey`).
    UpdateStateByKey,
    /// One record at a time (Spark's `mapWithState`).
    MapWithState,
}

/// Joins of two keyed streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Keys on both sides.
    Inner,
    /// Every left record; the right side may be missing.
    LeftOuter,
    /// Every right record; the left side may be missing.
    RightOuter,
    /// Every record of either side.
    FullOuter,
    /// Per key, all values of both sides.
    Cogroup,
}

impl JoinKind {
    /// The operator's name in pipeline files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Inner => "join",
            Self::LeftOuter => "left-outer-join",
            Self::RightOuter => "right-outer-join",
            Self::FullOuter => "full-outer-join",
            Self::Cogroup => "cogroup",
        }
    }
}

/// What a stateful stage needs from the pipeline.
pub(super) struct StatefulContext<'a> {
    pub plugins: &'a BTreeMap<String, PathBuf>,
    pub batch_interval: Duration,
    pub offset: usize,
    pub input_at: usize,
    pub inputs: usize,
    pub present: &'a [(&'a str, Option<usize>)],
}

/// The operator of a stateful stage; `None` when `op` is not one.
pub(super) fn operator(
    op: &str,
    table: &StageTable,
    cx: &StatefulContext<'_>,
) -> Option<Result<OperatorSpec, SpecError>> {
    let context = format!("op `{op}`");
    let allowed = keys_of(op);
    let result = match op {
        "window" => (|| {
            only_keys(cx.present, &allowed, &context)?;
            one_input(op, cx.inputs, cx.input_at)?;
            window(table, cx, WindowOp::Raw, &context)
        })(),
        "count-by-window" | "count-by-value-and-window" | "reduce-by-window" | "reduce-by-key-and-window" => {
            (|| {
                let counts = op.starts_with("count");
                only_keys(cx.present, &allowed, &context)?;
                one_input(op, cx.inputs, cx.input_at)?;
                let reducer = if counts {
                    ReducerSpec::Builtin(BuiltinReducer::Count)
                } else {
                    reducer_spec(table, cx.plugins, cx.offset, &context)?
                };
                let rekey = match op {
                    "count-by-window" | "reduce-by-window" => Some(KeyRewrite::Drop),
                    "count-by-value-and-window" => Some(KeyRewrite::ByValue),
                    _ => None,
                };
                let inverse = inverse(table, &reducer, cx)?;
                let neutral = table.neutral.as_ref().map(|n| n.get_ref().clone());
                let spec = window(
                    table,
                    cx,
                    WindowOp::Reduce {
                        rekey,
                        reducer,
                        inverse,
                        neutral,
                    },
                    &context,
                )?;
                if let (OperatorSpec::Window(w), Some(at)) =
                    (&spec, table.inverse.as_ref().map(|i| i.span().start))
                    && matches!(w.time, WindowTime::Event { .. })
                {
                    return Err((
                        at,
                        "`inverse` applies to processing-time windows; event-time windows are aggregated one window at a time".into(),
                    ));
                }
                Ok(spec)
            })()
        }
        "update-state-by-key" | "map-with-state" => (|| {
            only_keys(cx.present, &allowed, &context)?;
            one_input(op, cx.inputs, cx.input_at)?;
            let plugin = required(table.plugin.as_ref(), "plugin", cx.offset, &context)?;
            plugin_known(
                cx.plugins,
                plugin,
                table.plugin.as_ref().map_or(cx.offset, |p| p.span().start),
            )?;
            Ok(OperatorSpec::KeyedState(KeyedStateSpec {
                kind: if op == "map-with-state" {
                    StateKind::MapWithState
                } else {
                    StateKind::UpdateStateByKey
                },
                plugin: plugin.to_owned(),
                config: config_pairs(table.config.as_ref())?,
                timeout: table.timeout.as_ref().map(duration).transpose()?,
                partitions: positive(table.partitions.as_ref(), "partitions", 1024)?,
                memory: table.state_memory.as_ref().map(byte_size).transpose()?,
            }))
        })(),
        "join" | "left-outer-join" | "right-outer-join" | "full-outer-join" | "cogroup" => (|| {
            only_keys(cx.present, &allowed, &context)?;
            two_inputs(op, cx)?;
            let kind = match op {
                "join" => JoinKind::Inner,
                "left-outer-join" => JoinKind::LeftOuter,
                "right-outer-join" => JoinKind::RightOuter,
                "full-outer-join" => JoinKind::FullOuter,
                _ => JoinKind::Cogroup,
            };
            Ok(OperatorSpec::Join {
                kind,
                partitions: positive(table.partitions.as_ref(), "partitions", 1024)?,
            })
        })(),
        "transform-with" => (|| {
            only_keys(cx.present, &allowed, &context)?;
            two_inputs(op, cx)?;
            let plugin = required(table.plugin.as_ref(), "plugin", cx.offset, &context)?;
            plugin_known(
                cx.plugins,
                plugin,
                table.plugin.as_ref().map_or(cx.offset, |p| p.span().start),
            )?;
            Ok(OperatorSpec::TransformWith {
                plugin: plugin.to_owned(),
                config: config_pairs(table.config.as_ref())?,
                partitions: positive(table.partitions.as_ref(), "partitions", 1024)?,
            })
        })(),
        _ => return None,
    };
    Some(result)
}

/// `op` must have one input stream (`inputs`, named at `input_at`).
pub(super) fn one_input(op: &str, inputs: usize, input_at: usize) -> Result<(), SpecError> {
    if inputs == 1 {
        Ok(())
    } else {
        Err((
            input_at,
            format!("op `{op}` takes one input stream; use a `union` stage to merge streams first"),
        ))
    }
}

fn two_inputs(op: &str, cx: &StatefulContext<'_>) -> Result<(), SpecError> {
    if cx.inputs == 2 {
        Ok(())
    } else {
        Err((
            cx.input_at,
            format!(
                "op `{op}` takes exactly two input streams, `input = [\"left\", \"right\"]`, not {}",
                cx.inputs
            ),
        ))
    }
}

/// The window keys of `table`, checked against the batch interval.
fn window(
    table: &StageTable,
    cx: &StatefulContext<'_>,
    op: WindowOp,
    context: &str,
) -> Result<OperatorSpec, SpecError> {
    let length_text = table.length.as_ref().ok_or_else(|| {
        (
            cx.offset,
            format!("{context} needs `length` (e.g. length = \"30s\")"),
        )
    })?;
    let length = duration(length_text)?;
    let event_time = table.time.as_ref().is_some_and(|t| t.get_ref() == "event");
    // Default slide: one batch for processing-time windows (Spark's default),
    // the whole length (tumbling) for event-time windows.
    let slide = match &table.slide {
        Some(text) => duration(text)?,
        None if event_time => length,
        None => cx.batch_interval,
    };
    let slide_at = table.slide.as_ref().map_or(cx.offset, |s| s.span().start);
    let time = match table
        .time
        .as_ref()
        .map(|t| (t.get_ref().as_str(), t.span().start))
    {
        None | Some(("processing", _)) => WindowTime::Processing,
        Some(("event", _)) => {
            if matches!(op, WindowOp::Raw) {
                return Err((
                    cx.offset,
                    "`window` follows processing time; use a reducing window for event time".into(),
                ));
            }
            let output = match table
                .output_mode
                .as_ref()
                .map(|m| (m.get_ref().as_str(), m.span().start))
            {
                None | Some(("append", _)) => OutputMode::Append,
                Some(("update", _)) => OutputMode::Update,
                Some((other, at)) => {
                    return Err((
                        at,
                        format!("unknown output-mode `{other}` (expected append or update)"),
                    ));
                }
            };
            let late = match table
                .late_records
                .as_ref()
                .map(|m| (m.get_ref().as_str(), m.span().start))
            {
                None | Some(("drop", _)) => LateRecords::Drop,
                Some(("dead-letter", _)) => LateRecords::DeadLetter,
                Some((other, at)) => {
                    return Err((
                        at,
                        format!("unknown late-records `{other}` (expected drop or dead-letter)"),
                    ));
                }
            };
            WindowTime::Event {
                allowed_lateness: match &table.allowed_lateness {
                    Some(text) => humantime::parse_duration(text.get_ref()).map_err(|e| {
                        (
                            text.span().start,
                            format!("invalid duration {:?}: {e}", text.get_ref()),
                        )
                    })?,
                    None => Duration::ZERO,
                },
                output,
                late,
            }
        }
        Some((other, at)) => {
            return Err((
                at,
                format!("unknown time `{other}` (expected processing or event)"),
            ));
        }
    };
    if slide > length {
        return Err((
            slide_at,
            format!("slide {slide:?} is longer than the window length {length:?}"),
        ));
    }
    match time {
        WindowTime::Processing => {
            for (name, value, at) in [
                ("length", length, length_text.span().start),
                ("slide", slide, slide_at),
            ] {
                if value.as_nanos() % cx.batch_interval.as_nanos() != 0 {
                    return Err((
                        at,
                        format!(
                            "window {name} {value:?} is not a multiple of the batch interval {:?}",
                            cx.batch_interval
                        ),
                    ));
                }
            }
        }
        WindowTime::Event { .. } => {
            if length.as_millis() == 0 || length.as_nanos() % slide.as_nanos() != 0 || slide.as_millis() == 0
            {
                return Err((
                    length_text.span().start,
                    format!(
                        "an event-time window length ({length:?}) must be a whole number of slides ({slide:?}), in milliseconds"
                    ),
                ));
            }
        }
    }
    if !matches!(time, WindowTime::Event { .. }) {
        for (key, at) in [
            (
                "allowed-lateness",
                table.allowed_lateness.as_ref().map(|v| v.span().start),
            ),
            ("output-mode", table.output_mode.as_ref().map(|v| v.span().start)),
            (
                "late-records",
                table.late_records.as_ref().map(|v| v.span().start),
            ),
        ] {
            if let Some(at) = at {
                return Err((
                    at,
                    format!("`{key}` applies to event-time windows (time = \"event\")"),
                ));
            }
        }
    }
    Ok(OperatorSpec::Window(WindowSpec {
        op,
        length,
        slide,
        time,
        partitions: positive(table.partitions.as_ref(), "partitions", 1024)?,
        memory: table.state_memory.as_ref().map(byte_size).transpose()?,
    }))
}

/// The `inverse` of a reducing window: `true` for the built-in inverse of
/// `count`/`sum`, or the name of a reducer plugin.
fn inverse(
    table: &StageTable,
    reducer: &ReducerSpec,
    cx: &StatefulContext<'_>,
) -> Result<Option<InverseSpec>, SpecError> {
    let Some(value) = &table.inverse else {
        return Ok(None);
    };
    let at = value.span().start;
    match (value.get_ref(), reducer) {
        (toml::Value::Boolean(false), _) => Ok(None),
        (toml::Value::Boolean(true), ReducerSpec::Builtin(builtin @ (BuiltinReducer::Count | BuiltinReducer::Sum))) => {
            Ok(Some(InverseSpec::Builtin(*builtin)))
        }
        (toml::Value::Boolean(true), ReducerSpec::Builtin(_)) => Err((
            at,
            "min and max have no inverse: drop `inverse` (windows are then merged from per-batch partial results)"
                .into(),
        )),
        (toml::Value::Boolean(true), ReducerSpec::Plugin { .. }) => Err((
            at,
            "a reducer plugin needs an inverse plugin: inverse = \"<reducer plugin returning its first value minus the others>\"".into(),
        )),
        (toml::Value::String(plugin), ReducerSpec::Plugin { .. }) => {
            plugin_known(cx.plugins, plugin, at)?;
            Ok(Some(InverseSpec::Plugin(plugin.clone())))
        }
        (toml::Value::String(_), ReducerSpec::Builtin(_)) => Err((
            at,
            "a built-in reducer has a built-in inverse: write inverse = true".into(),
        )),
        _ => Err((at, "`inverse` is true, false or the name of a reducer plugin".into())),
    }
}
