//! Turns one stage of a validated spec into the operators that run it,
//! resolving its plugins through the registry and checking each plugin's
//! declared kind against the operator that uses it.

use std::sync::Arc;

use super::registry::{Function, PluginRegistry};
use crate::config::{
    InverseSpec, KeyRewrite, OperatorSpec, PipelineSpec, ReducerSpec, StageSpec, StateKind, TransformKind,
    WindowOp, WindowSpec, WindowTime,
};
use crate::error::EngineError;
use crate::operator::event_window::{EventTimeWindow, EventWindowSettings};
use crate::operator::guard::StageMetrics;
use crate::operator::instances::SlotWorld;
use crate::operator::join::{Join, TransformWith};
use crate::operator::keyed_state::{KeyedState, StateSettings};
use crate::operator::reduce::{Phase, ReduceByKey, Reducer, WasmReducer};
use crate::operator::repartition::Repartition;
use crate::operator::transform::{TransformFn, TransformOperator, WasmTransform};
use crate::operator::window::{Inverse, RawWindow, Rekey, WindowShape, WindowedReduce};
use crate::operator::{Operator, PluginUse};
use crate::runtime::{InstanceLabel, Plugin, PluginKind};

/// Memory for a keyed-state stage's state before it spills to disk, when
/// the stage does not say (`state-memory`).
pub const DEFAULT_STATE_MEMORY: usize = 256 << 20;

/// A stage's description for messages (`flat-map split-words`) and its operators, in order.
pub(super) type StageOperators = (String, Vec<Arc<dyn Operator>>);

/// Everything needed to build one stage's operators.
pub(super) struct StageBuilder<'a> {
    /// Resolves plugin names.
    pub registry: &'a PluginRegistry,
    /// The pipeline.
    pub spec: &'a PipelineSpec,
    /// The stage.
    pub stage: &'a StageSpec,
    /// The pipeline file, for messages.
    pub file: &'a str,
    /// The stage's counters.
    pub metrics: &'a Arc<StageMetrics>,
    /// The pipeline's own directory for spilled state.
    pub state_dir: &'a std::path::Path,
    /// Set when the pipeline's run ends: its plugin instances are dropped.
    pub retired: &'a Arc<std::sync::atomic::AtomicBool>,
}

impl StageBuilder<'_> {
    fn error(&self, message: String) -> EngineError {
        EngineError::Plan {
            location: format!("{}:{}", self.file, self.stage.line),
            message: format!("stage `{}`: {message}", self.stage.name),
        }
    }

    fn partitions(&self, partitions: Option<usize>) -> usize {
        partitions.unwrap_or(self.spec.partitions)
    }

    /// The Wasm plugin `name` used with `config`, checked by `expect`.
    fn plugin_use<W: SlotWorld>(
        &self,
        name: &str,
        loaded: &Arc<Plugin>,
        config: &[(String, String)],
        expect: impl FnOnce(PluginKind) -> Result<(), String>,
    ) -> Result<PluginUse<W>, EngineError> {
        expect(loaded.info().kind).map_err(|m| self.error(format!("plugin `{name}` {m}")))?;
        let metered = self.stage.sandbox.limits.fuel.and(self.registry.metered(name));
        let loaded = metered.unwrap_or(loaded);
        Ok(PluginUse::new(
            loaded.clone(),
            config.to_vec(),
            InstanceLabel {
                pipeline: self.spec.name.as_str().into(),
                stage: self.stage.name.as_str().into(),
                plugin: name.into(),
                usage: self.metrics.usage.clone(),
                candidate_fuel: None,
            },
            self.stage.sandbox.clone(),
        )
        .retired_by(self.retired.clone()))
    }

    /// A Wasm plugin of exactly `kind`.
    pub(super) fn plugin_of_kind<W: SlotWorld>(
        &self,
        name: &str,
        config: &[(String, String)],
        kind: PluginKind,
        op: &str,
    ) -> Result<PluginUse<W>, EngineError> {
        match self.registry.get(name) {
            Some(Function::Wasm(loaded)) => self.plugin_use(name, loaded, config, |declared| {
                if declared == kind {
                    Ok(())
                } else {
                    Err(format!(
                        "is a plugin of kind `{}`, but op `{op}` needs one of kind `{}`",
                        declared.name(),
                        kind.name()
                    ))
                }
            }),
            Some(_) => Err(self.error(format!(
                "`{name}` is a native function; op `{op}` needs a Wasm plugin"
            ))),
            None => Err(self.error(format!("unknown plugin `{name}`"))),
        }
    }

    /// A combine function: built-in, plugin or native.
    fn reducer(&self, spec: &ReducerSpec, op: &str) -> Result<(String, Reducer), EngineError> {
        match spec {
            ReducerSpec::Builtin(builtin) => {
                Ok((format!("{builtin:?}").to_lowercase(), Reducer::Builtin(*builtin)))
            }
            ReducerSpec::Plugin { plugin, config } => {
                let function = match self.registry.get(plugin) {
                    Some(Function::Wasm(_)) => Reducer::Groups(Arc::new(WasmReducer::new(
                        self.plugin_of_kind(plugin, config, PluginKind::Reducer, op)?,
                    ))),
                    Some(Function::NativeReducer(native)) => Reducer::Groups(Arc::new(native.clone())),
                    Some(Function::NativeTransform(_)) => {
                        return Err(self.error(format!("`{plugin}` is not a reducer")));
                    }
                    None => return Err(self.error(format!("unknown plugin `{plugin}`"))),
                };
                Ok((plugin.clone(), function))
            }
        }
    }

    /// The stage's operators.
    pub(super) fn build(&self) -> Result<StageOperators, EngineError> {
        Ok(match &self.stage.op {
            OperatorSpec::Transform { kind, plugin, config } => self.transform(*kind, plugin, config)?,
            OperatorSpec::ReduceByKey { reducer, partitions } => {
                let partitions = self.partitions(*partitions);
                let (name, reducer) = self.reducer(reducer, "reduce-by-key")?;
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
                vec![Arc::new(Repartition::new(self.partitions(*partitions)))],
            ),
            OperatorSpec::Window(window) => self.window(window)?,
            OperatorSpec::KeyedState(state) => {
                let (kind, op) = match state.kind {
                    StateKind::UpdateStateByKey => (PluginKind::UpdateState, "update-state-by-key"),
                    StateKind::MapWithState => (PluginKind::MapWithState, "map-with-state"),
                };
                let plugin = self.plugin_of_kind(&state.plugin, &state.config, kind, op)?;
                let partitions = self.partitions(state.partitions);
                let settings = StateSettings {
                    memory_bytes: state.memory.unwrap_or(DEFAULT_STATE_MEMORY),
                    spill_dir: self.state_dir.join(&self.stage.name),
                    timeout: state.timeout,
                    partitions,
                };
                (
                    format!("{op} {}", state.plugin),
                    vec![Arc::new(KeyedState::new(plugin, settings))],
                )
            }
            OperatorSpec::Join { kind, partitions } => (
                kind.name().to_owned(),
                vec![Arc::new(Join::new(*kind, self.partitions(*partitions)))],
            ),
            OperatorSpec::TransformWith {
                plugin,
                config,
                partitions,
            } => {
                let plugin_use =
                    self.plugin_of_kind(plugin, config, PluginKind::TransformWith, "transform-with")?;
                (
                    format!("transform-with {plugin}"),
                    vec![Arc::new(TransformWith::new(
                        plugin_use,
                        self.partitions(*partitions),
                    ))],
                )
            }
        })
    }

    fn transform(
        &self,
        kind: TransformKind,
        plugin: &str,
        config: &[(String, String)],
    ) -> Result<StageOperators, EngineError> {
        let function: Box<dyn TransformFn> = match self.registry.get(plugin) {
            Some(Function::Wasm(loaded)) => Box::new(WasmTransform::new(self.plugin_use(
                plugin,
                loaded,
                config,
                |declared| check_kind(kind, declared),
            )?)),
            Some(Function::NativeTransform(native)) => Box::new(native.clone()),
            Some(Function::NativeReducer(_)) => {
                return Err(self.error(format!("`{plugin}` is a reducer, not a transform")));
            }
            None => return Err(self.error(format!("unknown plugin `{plugin}`"))),
        };
        Ok((
            format!("{} {plugin}", kind.name()),
            vec![Arc::new(TransformOperator::new(kind, function))],
        ))
    }

    fn window(&self, window: &WindowSpec) -> Result<StageOperators, EngineError> {
        let interval = self.spec.batch_interval.as_nanos();
        let shape = WindowShape {
            length: (window.length.as_nanos() / interval) as u64,
            slide: (window.slide.as_nanos() / interval) as u64,
        };
        let describe = |name: &str| {
            format!(
                "{name} over {} sliding {}",
                humantime::format_duration(window.length),
                humantime::format_duration(window.slide)
            )
        };
        match &window.op {
            WindowOp::Raw => Ok((describe("window"), vec![Arc::new(RawWindow::new(shape))])),
            WindowOp::Reduce {
                rekey,
                reducer: reducer_spec,
                inverse,
                neutral,
            } => {
                let op = match rekey {
                    Some(KeyRewrite::Drop) => "reduce-by-window",
                    Some(KeyRewrite::ByValue) => "count-by-value-and-window",
                    None => "reduce-by-key-and-window",
                };
                let (name, reducer) = self.reducer(reducer_spec, op)?;
                let partitions = self.partitions(window.partitions);
                let mut operators: Vec<Arc<dyn Operator>> = Vec::new();
                if let Some(rekey) = rekey {
                    operators.push(Arc::new(Rekey(*rekey)));
                }
                if let WindowTime::Event {
                    allowed_lateness,
                    output,
                    late,
                } = window.time
                {
                    let settings = EventWindowSettings {
                        length_ms: window.length.as_millis() as i64,
                        slide_ms: window.slide.as_millis() as i64,
                        lateness_ms: allowed_lateness.as_millis() as i64,
                        output,
                        late,
                        partitions,
                        stage: self.stage.name.clone(),
                        memory_bytes: window.memory.unwrap_or(DEFAULT_STATE_MEMORY),
                        spill_dir: self.state_dir.join(&self.stage.name),
                    };
                    operators.push(Arc::new(EventTimeWindow::new(
                        settings,
                        reducer,
                        self.metrics.clone(),
                    )));
                    return Ok((describe(&format!("event-time {op} {name}")), operators));
                }
                let inverse = match inverse {
                    None => None,
                    Some(InverseSpec::Builtin(builtin)) => Some(Inverse::Builtin(*builtin)),
                    Some(InverseSpec::Plugin(plugin)) => {
                        // The inverse gets the stage's config, like the reducer.
                        let config = match reducer_spec {
                            ReducerSpec::Plugin { config, .. } => config.as_slice(),
                            ReducerSpec::Builtin(_) => &[],
                        };
                        Some(Inverse::Groups(Arc::new(WasmReducer::new(self.plugin_of_kind(
                            plugin,
                            config,
                            PluginKind::Reducer,
                            "an inverse",
                        )?))))
                    }
                };
                operators.push(Arc::new(ReduceByKey::new(
                    reducer.clone(),
                    Phase::Combine,
                    partitions,
                )));
                let settings = StateSettings {
                    memory_bytes: window.memory.unwrap_or(DEFAULT_STATE_MEMORY),
                    spill_dir: self.state_dir.join(&self.stage.name),
                    timeout: None,
                    partitions,
                };
                operators.push(Arc::new(WindowedReduce::new(
                    shape,
                    reducer,
                    inverse,
                    neutral.as_ref().map(|n| n.clone().into_bytes()),
                    settings,
                    &self.stage.name,
                )));
                Ok((describe(&format!("{op} {name}")), operators))
            }
        }
    }
}

fn check_kind(op: TransformKind, plugin: PluginKind) -> Result<(), String> {
    if op.plugin_kind() == plugin {
        Ok(())
    } else if plugin == PluginKind::Reducer {
        Err(format!(
            "is a reducer plugin: use it in a reduce-by-key stage (reducer = \"<its name>\"), not with op `{}`",
            op.name()
        ))
    } else if plugin == PluginKind::Sink {
        Err(format!(
            "is a sink plugin: use it in a [[sink]] table (type = \"plugin\", plugin = \"<its name>\"), not with op `{}`",
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
