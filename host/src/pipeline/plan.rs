//! The physical plan: a validated pipeline spec turned into streams and
//! operators, with every plugin name resolved through the registry and
//! every plugin checked against the operator that uses it.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::{Function, PluginRegistry};
use crate::config::{
    DEAD_LETTERS, FailurePolicy, OperatorSpec, PipelineSpec, ReducerSpec, SinkSpec, SourceSpec, TransformKind,
};
use crate::error::EngineError;
use crate::operator::guard::{Guarded, StageMetrics};
use crate::operator::reduce::{Phase, ReduceByKey, Reducer, WasmReducer};
use crate::operator::repartition::Repartition;
use crate::operator::transform::{TransformOperator, WasmTransform};
use crate::operator::{Operator, OperatorError, PluginUse};
use crate::runtime::{InstanceLabel, PluginKind};

/// Index of a stream in [`Plan::streams`].
pub type StreamId = usize;

/// A stage ready to run: its inputs, its output stream and its operators,
/// applied in order (a reduce-by-key is a combine and a merge), each under
/// the stage's failure policy.
#[derive(Debug)]
pub struct StagePlan {
    /// What happens when a call fails.
    pub policy: FailurePolicy,
    /// Failure counters.
    pub metrics: Arc<StageMetrics>,
    /// The stage's name (= its output stream's name).
    pub name: String,
    /// The operator and plugin, for messages: `flat-map split-words`.
    pub describe: String,
    /// Input streams (several: their partitions are concatenated).
    pub inputs: Vec<StreamId>,
    /// The output stream.
    pub output: StreamId,
    /// Operators applied in order.
    pub operators: Vec<Arc<dyn Operator>>,
}

/// A runnable pipeline.
#[derive(Debug)]
pub struct Plan {
    /// The pipeline's name.
    pub pipeline: String,
    /// Partitions each source's batch is split into.
    pub partitions: usize,
    /// Stream names by id.
    pub streams: Vec<String>,
    /// Sources and the streams they feed.
    pub sources: Vec<(SourceSpec, StreamId)>,
    /// Stages in execution order.
    pub stages: Vec<StagePlan>,
    /// Sinks and the streams they read.
    pub sinks: Vec<(SinkSpec, StreamId)>,
    /// Number of readers (stages and sinks) of each stream.
    pub readers: Vec<usize>,
    /// The dead-letter stream, when a sink reads it.
    pub dead_letters: Option<StreamId>,
}

impl Plan {
    /// Builds the plan of `spec`, resolving plugins through `registry`.
    /// `file` names the pipeline file in errors.
    pub fn build(spec: &PipelineSpec, registry: &PluginRegistry, file: &str) -> Result<Self, EngineError> {
        let mut ids: HashMap<&str, StreamId> = HashMap::new();
        let mut streams = Vec::new();
        let reads_dead_letters = spec.sinks.iter().any(|sink| sink.input == DEAD_LETTERS);
        for name in spec
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .chain(spec.stages.iter().map(|s| s.name.as_str()))
            .chain(reads_dead_letters.then_some(DEAD_LETTERS))
        {
            ids.insert(name, streams.len());
            streams.push(name.to_owned());
        }
        let plan_error = |line: usize, message: String| EngineError::Plan {
            location: format!("{file}:{line}"),
            message,
        };
        let mut stages = Vec::new();
        for stage in &spec.stages {
            let label = |plugin: &str| InstanceLabel {
                pipeline: spec.name.as_str().into(),
                stage: stage.name.as_str().into(),
                plugin: plugin.into(),
            };
            let partitions_or_default = |p: Option<usize>| p.unwrap_or(spec.partitions);
            let (describe, operators): (String, Vec<Arc<dyn Operator>>) = match &stage.op {
                OperatorSpec::Transform { kind, plugin, config } => {
                    let function: Box<dyn crate::operator::transform::TransformFn> = match registry
                        .get(plugin)
                    {
                        Some(Function::Wasm(loaded)) => {
                            check_kind(*kind, loaded.info().kind).map_err(|m| {
                                plan_error(
                                    stage.line,
                                    format!("stage `{}`: plugin `{plugin}` {m}", stage.name),
                                )
                            })?;
                            let loaded = metered(registry, plugin, stage).unwrap_or(loaded);
                            Box::new(WasmTransform::new(PluginUse::new(
                                loaded.clone(),
                                config.clone(),
                                label(plugin),
                                stage.sandbox.clone(),
                            )))
                        }
                        Some(Function::NativeTransform(native)) => Box::new(native.clone()),
                        Some(Function::NativeReducer(_)) => {
                            return Err(plan_error(
                                stage.line,
                                format!("stage `{}`: `{plugin}` is a reducer, not a transform", stage.name),
                            ));
                        }
                        None => {
                            return Err(plan_error(stage.line, format!("unknown plugin `{plugin}`")));
                        }
                    };
                    (
                        format!("{} {plugin}", kind.name()),
                        vec![Arc::new(TransformOperator::new(*kind, function))],
                    )
                }
                OperatorSpec::ReduceByKey { reducer, partitions } => {
                    let partitions = partitions_or_default(*partitions);
                    let (name, reducer) = match reducer {
                        ReducerSpec::Builtin(builtin) => {
                            (format!("{builtin:?}").to_lowercase(), Reducer::Builtin(*builtin))
                        }
                        ReducerSpec::Plugin { plugin, config } => {
                            let function = match registry.get(plugin) {
                                Some(Function::Wasm(loaded)) => {
                                    if loaded.info().kind != PluginKind::Reducer {
                                        return Err(plan_error(
                                            stage.line,
                                            format!(
                                                "stage `{}`: plugin `{plugin}` is a {}, but reduce-by-key needs a reducer plugin",
                                                stage.name,
                                                loaded.info().kind.name()
                                            ),
                                        ));
                                    }
                                    let loaded = metered(registry, plugin, stage).unwrap_or(loaded);
                                    Reducer::Groups(Arc::new(WasmReducer::new(PluginUse::new(
                                        loaded.clone(),
                                        config.clone(),
                                        label(plugin),
                                        stage.sandbox.clone(),
                                    ))))
                                }
                                Some(Function::NativeReducer(native)) => {
                                    Reducer::Groups(Arc::new(native.clone()))
                                }
                                _ => {
                                    return Err(plan_error(
                                        stage.line,
                                        format!("stage `{}`: `{plugin}` is not a reducer", stage.name),
                                    ));
                                }
                            };
                            (plugin.clone(), function)
                        }
                    };
                    (
                        format!("reduce-by-key {name}"),
                        vec![
                            Arc::new(ReduceByKey::new(reducer.clone(), Phase::Combine, partitions)),
                            Arc::new(ReduceByKey::new(reducer, Phase::Merge, partitions)),
                        ],
                    )
                }
                OperatorSpec::Union => ("union".to_owned(), Vec::new()),
                OperatorSpec::Repartition { partitions } => (
                    "repartition".to_owned(),
                    vec![Arc::new(Repartition::new(partitions_or_default(*partitions)))],
                ),
            };
            let metrics = Arc::new(StageMetrics::default());
            let operators: Vec<Arc<dyn Operator>> = operators
                .into_iter()
                .map(|operator| -> Arc<dyn Operator> {
                    Arc::new(Guarded::new(
                        operator,
                        stage.policy.clone(),
                        stage.name.clone(),
                        metrics.clone(),
                    ))
                })
                .collect();
            stages.push(StagePlan {
                policy: stage.policy.clone(),
                metrics,
                name: stage.name.clone(),
                describe,
                inputs: stage.inputs.iter().map(|input| ids[input.as_str()]).collect(),
                output: ids[stage.name.as_str()],
                operators,
            });
        }
        let sources = spec
            .sources
            .iter()
            .map(|source| (source.clone(), ids[source.name.as_str()]))
            .collect();
        let sinks: Vec<(SinkSpec, StreamId)> = spec
            .sinks
            .iter()
            .map(|sink| (sink.clone(), ids[sink.input.as_str()]))
            .collect();
        let mut readers = vec![0; streams.len()];
        for stage in &stages {
            for &input in &stage.inputs {
                readers[input] += 1;
            }
        }
        for (_, input) in &sinks {
            readers[*input] += 1;
        }
        Ok(Self {
            pipeline: spec.name.clone(),
            partitions: spec.partitions,
            dead_letters: reads_dead_letters.then(|| ids[DEAD_LETTERS]),
            streams,
            sources,
            stages,
            sinks,
            readers,
        })
    }

    /// Runs every operator's start-up check (plugins instantiate and accept
    /// their configuration).
    pub fn check(&self) -> Result<(), EngineError> {
        for stage in &self.stages {
            for operator in &stage.operators {
                operator
                    .check()
                    .map_err(|error: OperatorError| EngineError::Plan {
                        location: format!("pipeline `{}`", self.pipeline),
                        message: format!("stage `{}` ({}): {error}", stage.name, stage.describe),
                    })?;
            }
        }
        Ok(())
    }
}

/// The fuel-metered build of `plugin` when `stage` has a fuel budget.
fn metered<'a>(
    registry: &'a PluginRegistry,
    plugin: &str,
    stage: &crate::config::StageSpec,
) -> Option<&'a Arc<crate::runtime::Plugin>> {
    stage.sandbox.limits.fuel.and(registry.metered(plugin))
}

fn check_kind(op: TransformKind, plugin: PluginKind) -> Result<(), String> {
    let matches = matches!(
        (op, plugin),
        (TransformKind::Map, PluginKind::Map)
            | (TransformKind::FlatMap, PluginKind::FlatMap)
            | (TransformKind::Filter, PluginKind::Filter)
            | (TransformKind::FilterMap, PluginKind::FilterMap)
            | (TransformKind::MapPartitions, PluginKind::MapPartitions)
    );
    if matches {
        Ok(())
    } else if plugin == PluginKind::Reducer {
        Err(format!(
            "is a reducer plugin: use it in a reduce-by-key stage (reducer = \"<its name>\"), not with op `{}`",
            op.name()
        ))
    } else {
        Err(format!(
            "is a {} plugin, but the stage's op is `{}`: use op = \"{}\" or a {} plugin",
            plugin.name(),
            op.name(),
            plugin.name(),
            op.name()
        ))
    }
}
