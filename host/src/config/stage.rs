//! `[[stage]]` tables: the operator, its keys, the sandbox of its plugin
//! instances (`limits`, also `[limits]`) and its failure policy.
//!
//! The stateful operators (windows, keyed state, joins) are checked in
//! [`super::stateful`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::file::{Inputs, LimitsTable, StageTable};
use super::stateful::{self, StatefulContext};
use super::values::{
    alternatives, byte_size, config_pairs, duration, non_negative, only_keys, plugin_known, positive,
    required, stream_name,
};
use super::{
    BuiltinReducer, FailurePolicy, LineIndex, OnError, OperatorSpec, Paths, Quarantine, ReducerSpec,
    SpecError, StageSpec, TransformKind,
};
use crate::runtime::{Grants, Limits, Sandbox};

/// Keys every plugin stage accepts besides its operator's own.
const PLUGIN_KEYS: &[&str] = &[
    "limits",
    "read-dir",
    "env",
    "on-error",
    "retries",
    "quarantine-after",
    "quarantine",
];

/// Keys every window stage accepts besides its operator's own.
const WINDOW_KEYS: &[&str] = &[
    "length",
    "slide",
    "partitions",
    "time",
    "allowed-lateness",
    "output-mode",
    "late-records",
    "state-memory",
];

/// An operator of `[[stage]]` and the keys it accepts besides `name`,
/// `input` and `op`: the window keys when `window`, then its own, then the
/// plugin keys when `plugin`.
struct Op {
    name: &'static str,
    window: bool,
    own: &'static [&'static str],
    plugin: bool,
}

const fn op(name: &'static str, window: bool, own: &'static [&'static str], plugin: bool) -> Op {
    Op {
        name,
        window,
        own,
        plugin,
    }
}

/// Every operator, with its keys: the one place they are listed.
const OPS: &[Op] = &[
    op("map", false, &["plugin", "config"], true),
    op("flat-map", false, &["plugin", "config"], true),
    op("filter", false, &["plugin", "config"], true),
    op("filter-map", false, &["plugin", "config"], true),
    op("map-partitions", false, &["plugin", "config"], true),
    op("reduce-by-key", false, &["reducer", "partitions", "config"], true),
    op("union", false, &[], false),
    op("repartition", false, &["partitions"], false),
    op("window", false, &["length", "slide"], false),
    op("count-by-window", true, &["inverse", "neutral"], false),
    op(
        "reduce-by-window",
        true,
        &["inverse", "neutral", "reducer", "config"],
        true,
    ),
    op(
        "reduce-by-key-and-window",
        true,
        &["inverse", "neutral", "reducer", "config"],
        true,
    ),
    op("count-by-value-and-window", true, &["inverse", "neutral"], false),
    op(
        "update-state-by-key",
        false,
        &["plugin", "config", "timeout", "partitions", "state-memory"],
        true,
    ),
    op(
        "map-with-state",
        false,
        &["plugin", "config", "timeout", "partitions", "state-memory"],
        true,
    ),
    op("join", false, &["partitions"], false),
    op("left-outer-join", false, &["partitions"], false),
    op("right-outer-join", false, &["partitions"], false),
    op("full-outer-join", false, &["partitions"], false),
    op("cogroup", false, &["partitions"], false),
    op("transform-with", false, &["plugin", "config", "partitions"], true),
];

/// The keys operator `name` accepts (none for an unknown operator).
pub(super) fn keys_of(name: &str) -> Vec<&'static str> {
    let Some(op) = OPS.iter().find(|op| op.name == name) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    if op.window {
        keys.extend(WINDOW_KEYS);
    }
    keys.extend(op.own);
    if op.plugin {
        keys.extend(PLUGIN_KEYS);
    }
    keys
}

/// The stage context that `stage_spec` needs from the pipeline.
pub(super) struct StageDefaults<'a> {
    pub plugins: &'a BTreeMap<String, PathBuf>,
    pub batch_interval: Duration,
    pub limits: &'a Limits,
    pub paths: &'a Paths,
}

/// Validates one `[[stage]]` table; returns its offset and the offset of
/// its `input` with it.
pub(super) fn stage_spec(
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
    let transform = weir_abi::Kind::from_name(op_name).and_then(TransformKind::of);
    let op = if let Some(kind) = transform {
        only_keys(&present, &keys_of(op_name), &context)?;
        single_input(op_name)?;
        let plugin = required(table.plugin.as_ref(), "plugin", offset, &context)?;
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
                only_keys(&present, &keys_of(op_name), &context)?;
                single_input(op_name)?;
                let reducer = reducer_spec(&table, plugins, offset, &context)?;
                OperatorSpec::ReduceByKey { reducer, partitions }
            }
            "union" => {
                only_keys(&present, &keys_of(op_name), &context)?;
                OperatorSpec::Union
            }
            "repartition" => {
                only_keys(&present, &keys_of(op_name), &context)?;
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
                                "unknown op `{other}` (expected {})",
                                alternatives(&OPS.iter().map(|op| op.name).collect::<Vec<_>>())
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
            .map(|dir| {
                defaults
                    .paths
                    .resolve_dir(dir.get_ref(), "read-dir")
                    .map_err(|message| (dir.span().start, message))
            })
            .transpose()?,
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
        ..Grants::default()
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
    let reducer_name = required(table.reducer.as_ref(), "reducer", offset, context)?;
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

/// The failure policy of a stage: `on-error`, `retries`, `quarantine-after`, `quarantine`.
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
pub(super) fn limits(table: Option<&Spanned<LimitsTable>>, defaults: Limits) -> Result<Limits, SpecError> {
    match table {
        Some(table) => stage_limits(table.get_ref(), defaults),
        None => Ok(defaults),
    }
}

/// `defaults` with the keys of a limits table applied.
pub(crate) fn stage_limits(table: &LimitsTable, mut defaults: Limits) -> Result<Limits, SpecError> {
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
    if let Some(rate) = non_negative(table.log_messages_per_second.as_ref(), "log-messages-per-second")? {
        defaults.log_messages_per_second = rate;
    }
    if let Some(bytes) = &table.log_bytes_per_second {
        defaults.log_bytes_per_second = byte_size(bytes)? as u64;
    }
    Ok(defaults)
}
