//! The plugin registry: resolves the plugin names of a pipeline file to
//! functions, so operators never know where their function comes from.
//!
//! Names declared in `[plugins]` load Wasm components; an embedder (or the
//! benchmark) can register native Rust functions under a name first, and
//! those take precedence. A later hot-loading or multi-tenant registry slots in
//! here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{OperatorSpec, PipelineSpec, ReducerSpec};
use crate::error::EngineError;
use crate::operator::native::{NativeReducer, NativeTransform};
use crate::runtime::{Plugin, Runtime};

/// What a plugin name resolves to.
#[derive(Debug, Clone)]
pub enum Function {
    /// A Wasm component.
    Wasm(Arc<Plugin>),
    /// A native transform.
    NativeTransform(NativeTransform),
    /// A native reducer.
    NativeReducer(NativeReducer),
}

/// Plugin names → functions, for one pipeline.
pub struct PluginRegistry {
    runtime: Arc<Runtime>,
    functions: HashMap<String, Function>,
    /// Plugins compiled for the fuel-metering engine, for stages with a fuel budget.
    metered: HashMap<String, Arc<Plugin>>,
}

impl PluginRegistry {
    /// An empty registry loading Wasm plugins through `runtime`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self {
            runtime,
            functions: HashMap::new(),
            metered: HashMap::new(),
        }
    }

    /// Registers a native transform under `name` (takes precedence over `[plugins]`).
    pub fn register_transform(&mut self, name: &str, function: NativeTransform) {
        self.functions
            .insert(name.to_owned(), Function::NativeTransform(function));
    }

    /// Registers a native reducer under `name` (takes precedence over `[plugins]`).
    pub fn register_reducer(&mut self, name: &str, function: NativeReducer) {
        self.functions
            .insert(name.to_owned(), Function::NativeReducer(function));
    }

    /// Loads every plugin declared in the pipeline's `[plugins]` that is not
    /// registered yet.
    pub fn load_declared(&mut self, spec: &PipelineSpec) -> Result<(), EngineError> {
        for (name, path) in &spec.plugins {
            if self.functions.contains_key(name) {
                continue;
            }
            let plugin = self
                .runtime
                .load_plugin(path)
                .map_err(|error| EngineError::Plugin {
                    pipeline: spec.name.clone(),
                    plugin: name.clone(),
                    error: Box::new(error),
                })?;
            tracing::debug!(plugin = %name, path = %path.display(), info = ?plugin.info(), "loaded plugin");
            self.functions.insert(name.clone(), Function::Wasm(plugin));
        }
        self.load_metered(spec)
    }

    /// Loads, for the fuel-metering engine, every Wasm plugin that a stage
    /// with a fuel budget uses.
    pub fn load_metered(&mut self, spec: &PipelineSpec) -> Result<(), EngineError> {
        for stage in &spec.stages {
            if stage.sandbox.limits.fuel.is_none() {
                continue;
            }
            let name = match &stage.op {
                OperatorSpec::Transform { plugin, .. } => plugin,
                OperatorSpec::ReduceByKey {
                    reducer: ReducerSpec::Plugin { plugin, .. },
                    ..
                } => plugin,
                _ => continue,
            };
            if self.metered.contains_key(name) || !matches!(self.functions.get(name), Some(Function::Wasm(_)))
            {
                continue;
            }
            let path = &spec.plugins[name];
            let plugin = self
                .runtime
                .load_metered_plugin(path)
                .map_err(|error| EngineError::Plugin {
                    pipeline: spec.name.clone(),
                    plugin: name.clone(),
                    error: Box::new(error),
                })?;
            self.metered.insert(name.clone(), plugin);
        }
        Ok(())
    }

    /// The metered build of plugin `name`, if [`PluginRegistry::load_metered`] loaded one.
    pub fn metered(&self, name: &str) -> Option<&Arc<Plugin>> {
        self.metered.get(name)
    }

    /// The function registered or loaded under `name`.
    pub fn get(&self, name: &str) -> Option<&Function> {
        self.functions.get(name)
    }

    /// The runtime plugins are loaded through.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}
