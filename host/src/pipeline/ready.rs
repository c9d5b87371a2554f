//! A pipeline ready to run: a validated pipeline file planned with its
//! plugins, checked, with its sinks created ([`Pipeline::build`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::live::StagePlugin;
use super::plan::{Plan, StreamId};
use super::registry::{Function, PluginRegistry};
use super::run::RunOptions;
use crate::checkpoint::CheckpointSettings;
use crate::config::{ClockMode, PipelineSpec};
use crate::error::EngineError;
use crate::sink::{self, Sink};
use crate::source::DeterministicClock;

/// A pipeline ready to run: its plan and its sinks.
pub struct Pipeline {
    pub(super) plan: Arc<Plan>,
    pub(super) sinks: Vec<(Box<dyn Sink>, StreamId)>,
    pub(super) batch_interval: Duration,
    pub(super) clock: Option<DeterministicClock>,
    pub(super) queue_chunks: usize,
    pub(super) max_batch_memory: usize,
    pub(super) chunk_records: usize,
    pub(super) checkpoint: Option<CheckpointSettings>,
    pub(super) plugin_hashes: BTreeMap<String, String>,
    stage_plugins: Vec<StagePlugin>,
}

impl Pipeline {
    /// Plans `spec` with the plugins of `registry` (which must hold every
    /// plugin the spec uses, see [`PluginRegistry::load_declared`]), checks
    /// every plugin against its stage, and creates the sinks. `file` names
    /// the pipeline file in errors; stateful stages spill under `state_dir`.
    pub fn build(
        spec: &PipelineSpec,
        registry: &PluginRegistry,
        file: &str,
        state_dir: &std::path::Path,
    ) -> Result<Self, EngineError> {
        let plan = Plan::build(spec, registry, file, state_dir)?;
        plan.check()?;
        let loaded = |name: &str| match registry.get(name) {
            Some(Function::Wasm(plugin)) => Some(plugin.clone()),
            _ => None,
        };
        // Sinks written as plugins see each batch after the others (a
        // stable order otherwise: the file's).
        let mut ordered: Vec<_> = plan.sinks.iter().collect();
        ordered.sort_by_key(|(sink, _)| sink.kind.after_other_sinks());
        let sinks = ordered
            .into_iter()
            .map(|(sink, stream)| {
                let cx = sink::SinkContext {
                    pipeline: &plan.pipeline,
                    window_ms: plan.window_lengths[*stream],
                    checkpointed: spec.checkpoint.is_some(),
                    plugins: Some(sink::LoadedPlugins(&loaded)),
                };
                (sink::from_spec(sink, &cx), *stream)
            })
            .collect();
        let hash_of = |name: &str| match registry.get(name) {
            Some(Function::Wasm(plugin)) => Some(plugin.content_hash().to_owned()),
            _ => None,
        };
        let stage_plugins = spec
            .stages
            .iter()
            .flat_map(|stage| {
                stage.op.plugins().into_iter().map(|plugin| StagePlugin {
                    stage: stage.name.clone(),
                    sha256: hash_of(&plugin).unwrap_or_else(|| "native".to_owned()),
                    version: String::new(),
                    probation_left: 0,
                    state_version: 0,
                    contract: String::new(),
                    plugin,
                })
            })
            .collect();
        Ok(Self {
            plan: Arc::new(plan),
            sinks,
            batch_interval: spec.batch_interval,
            clock: match spec.clock {
                ClockMode::WallClock => None,
                ClockMode::Deterministic { start_ms } => Some(DeterministicClock {
                    start_ms,
                    interval_ms: spec.batch_interval.as_millis() as i64,
                }),
            },
            queue_chunks: spec.queue_chunks,
            max_batch_memory: spec.batch_memory(),
            chunk_records: spec.chunk_records,
            checkpoint: spec.checkpoint.clone(),
            plugin_hashes: spec
                .plugins
                .keys()
                .filter_map(|name| Some((name.clone(), hash_of(name)?)))
                .collect(),
            stage_plugins,
        })
    }

    /// Replaces the sinks of the pipeline file with `sinks`, each reading the
    /// named stream (for embedding and benchmarks).
    pub fn set_sinks(&mut self, sinks: Vec<(String, Box<dyn Sink>)>) -> Result<(), EngineError> {
        let mut resolved = Vec::new();
        for (stream, sink) in sinks {
            let id = self
                .plan
                .streams
                .iter()
                .position(|s| *s == stream)
                .ok_or_else(|| EngineError::Io(format!("no stream named `{stream}`")))?;
            resolved.push((sink, id));
        }
        self.sinks = resolved;
        Ok(())
    }

    /// The plan.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.plan.pipeline
    }

    /// How often it cuts a batch.
    pub fn batch_interval(&self) -> Duration {
        self.batch_interval
    }

    /// The plugin (name, SHA-256) of every stage that runs one.
    pub fn stage_plugins(&self) -> &[StagePlugin] {
        &self.stage_plugins
    }

    /// Where the pipeline checkpoints, when it does.
    pub fn checkpoint_location(&self) -> Option<&crate::checkpoint::CheckpointLocation> {
        self.checkpoint.as_ref().map(|settings| &settings.location)
    }

    /// Refuses what cannot run with `options`.
    pub fn check_options(&self, options: &RunOptions) -> Result<(), EngineError> {
        if options.available_now {
            for (source, _) in &self.plan.sources {
                if let Some(why) = source.kind.endless() {
                    return Err(EngineError::Plan {
                        location: format!("pipeline `{}`", self.plan.pipeline),
                        message: format!(
                            "source `{}` {why}: it never runs out, so --available-now would never end",
                            source.name
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
