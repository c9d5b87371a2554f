//! Loaded plugins and their instances.
//!
//! A [`Plugin`] is a compiled, linked and pre-instantiated component whose
//! exports were checked against the Weir contract; it is shared by every
//! worker. A [`PluginInstance`] is one warm instance of it with its own store,
//! limits and captured stderr, owned by one worker at a time.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Component, Linker};

use super::bindings::co_transform::{CoTransformPlugin, CoTransformPluginPre};
use super::bindings::reducer::{ReducerPlugin, ReducerPluginPre};
use super::bindings::state::{StatePlugin, StatePluginPre};
use super::bindings::transform::{TransformPlugin, TransformPluginPre};
use super::bindings::types;
use super::error::{PluginError, TrapKind};
use super::limits::Sandbox;
use super::state::{InstanceLabel, PluginState};
use super::stderr::StderrCapture;
use crate::record::Batch;

/// The operator a plugin implements, as it declares it: the kind shared with
/// the guest SDK (`PluginKind::Map`, `.name()`, `.interface()`).
pub use weir_abi::Kind as PluginKind;

/// The conversion from the WIT `plugin-kind` (here, where the bindings are).
trait FromWit {
    fn from_wit(kind: types::PluginKind) -> Self;
}

impl FromWit for PluginKind {
    fn from_wit(kind: types::PluginKind) -> Self {
        match kind {
            types::PluginKind::Map => Self::Map,
            types::PluginKind::FlatMap => Self::FlatMap,
            types::PluginKind::Filter => Self::Filter,
            types::PluginKind::FilterMap => Self::FilterMap,
            types::PluginKind::MapPartitions => Self::MapPartitions,
            types::PluginKind::Reducer => Self::Reducer,
            types::PluginKind::UpdateState => Self::UpdateState,
            types::PluginKind::MapWithState => Self::MapWithState,
            types::PluginKind::TransformWith => Self::TransformWith,
        }
    }
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// The operator it implements.
    pub kind: PluginKind,
    /// The guest SDK version it was built with.
    pub sdk_version: String,
}

enum Pre {
    Transform(TransformPluginPre<PluginState>),
    Reducer(ReducerPluginPre<PluginState>),
    State(StatePluginPre<PluginState>),
    CoTransform(CoTransformPluginPre<PluginState>),
}

impl Pre {
    /// The first world whose exports `instance_pre` has.
    fn of(instance_pre: wasmtime::component::InstancePre<PluginState>) -> Result<Self, wasmtime::Error> {
        let transform_error = match TransformPluginPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Self::Transform(pre)),
            Err(error) => error,
        };
        if let Ok(pre) = ReducerPluginPre::new(instance_pre.clone()) {
            return Ok(Self::Reducer(pre));
        }
        if let Ok(pre) = StatePluginPre::new(instance_pre.clone()) {
            return Ok(Self::State(pre));
        }
        if let Ok(pre) = CoTransformPluginPre::new(instance_pre) {
            return Ok(Self::CoTransform(pre));
        }
        Err(transform_error)
    }

    /// The interface this world exports (besides lifecycle).
    fn interface(&self) -> &'static str {
        match self {
            Self::Transform(_) => "transform",
            Self::Reducer(_) => "reducer",
            Self::State(_) => "keyed-state",
            Self::CoTransform(_) => "co-transform",
        }
    }
}

/// A compiled, linked and checked component: what the engine's plugin
/// catalog shares between every pipeline that loads the same bytes.
pub struct CompiledPlugin {
    content_hash: String,
    component: Component,
    pre: Pre,
    info: PluginInfo,
    engine: wasmtime::Engine,
}

impl CompiledPlugin {
    /// Links `component` and checks it against the contract by instantiating
    /// it once and calling `describe`. `path` names it in errors.
    pub(crate) fn new(
        path: &Path,
        content_hash: String,
        component: Component,
        linker: &Linker<PluginState>,
    ) -> Result<Self, PluginError> {
        let contract = |message: String| PluginError::Contract {
            path: path.to_owned(),
            message,
        };
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            contract(format!(
                "it needs an import Weir does not provide (plugins get only weir:plugin/log and an empty WASI): {e:#}"
            ))
        })?;
        let pre = Pre::of(instance_pre).map_err(|error| {
            contract(format!(
                "it exports none of weir:plugin/transform, reducer, keyed-state or co-transform ({error:#}); build it with the weir-guest SDK"
            ))
        })?;
        let engine = component.engine().clone();
        let probe = Arc::new(Plugin {
            path: path.to_owned(),
            compiled: Arc::new(Self {
                content_hash,
                component,
                pre,
                info: PluginInfo {
                    name: String::new(),
                    version: String::new(),
                    kind: PluginKind::Map,
                    sdk_version: String::new(),
                },
                engine,
            }),
        });
        let probe_sandbox = Arc::new(Sandbox::default());
        let info =
            PluginInstance::instantiate(&probe, InstanceLabel::default(), &probe_sandbox)?.describe()?;
        let probe = Arc::into_inner(probe).expect("the probe instance is gone");
        let mut compiled = Arc::into_inner(probe.compiled).expect("only the probe held it");
        compiled.info = info;
        if compiled.pre.interface() != compiled.info.kind.interface() {
            return Err(contract(format!(
                "it says it is a {} but exports the {} interface",
                compiled.info.kind.name(),
                compiled.pre.interface()
            )));
        }
        Ok(compiled)
    }

    /// Hex SHA-256 of the component's bytes.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }
}

/// A plugin as one pipeline loaded it: the shared compiled form and the
/// path it was loaded from (which names it in that pipeline's errors).
pub struct Plugin {
    path: PathBuf,
    compiled: Arc<CompiledPlugin>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.path)
            .field("info", &self.compiled.info)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// `compiled`, as loaded from `path`.
    pub(crate) fn new(path: &Path, compiled: Arc<CompiledPlugin>) -> Self {
        Self {
            path: path.to_owned(),
            compiled,
        }
    }

    /// The component file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex SHA-256 of the component file.
    pub fn content_hash(&self) -> &str {
        &self.compiled.content_hash
    }

    /// What the plugin says about itself.
    pub fn info(&self) -> &PluginInfo {
        &self.compiled.info
    }

    /// The compiled component.
    pub fn component(&self) -> &Component {
        &self.compiled.component
    }

    /// The shared compiled form.
    pub fn compiled(&self) -> &Arc<CompiledPlugin> {
        &self.compiled
    }
}

enum Exports {
    Transform(TransformPlugin),
    Reducer(ReducerPlugin),
    State(StatePlugin),
    CoTransform(CoTransformPlugin),
}

/// Calls a lifecycle function on whichever world `exports` is (each world's
/// bindings have their own lifecycle type).
macro_rules! call_lifecycle {
    ($exports:expr, |$lifecycle:ident| $call:expr) => {
        match $exports {
            Exports::Transform(e) => {
                let $lifecycle = e.weir_plugin_lifecycle();
                $call
            }
            Exports::Reducer(e) => {
                let $lifecycle = e.weir_plugin_lifecycle();
                $call
            }
            Exports::State(e) => {
                let $lifecycle = e.weir_plugin_lifecycle();
                $call
            }
            Exports::CoTransform(e) => {
                let $lifecycle = e.weir_plugin_lifecycle();
                $call
            }
        }
    };
}

/// What a stateful plugin returned for a [`KeyGroups`] call.
#[derive(Debug, Default)]
pub struct StateUpdate {
    /// New state bytes per group, flat (`state_ends[g]` ends group `g`'s).
    pub states: Vec<u8>,
    /// End offsets into `states`, one per group.
    pub state_ends: Vec<u32>,
    /// Per group: keep the state (`true`) or remove the key (`false`).
    pub keep: Vec<bool>,
    /// Records emitted.
    pub output: Batch,
}

/// The keys of one partition with their new values and states, in the flat
/// form of the `key-groups` WIT record.
pub type KeyGroups = types::KeyGroups;

/// The result of a transform call.
#[derive(Debug)]
pub enum TransformOutput {
    /// New records.
    Records(Batch),
    /// Indices of the input records to keep.
    Keep(Vec<u32>),
}

/// One warm instance of a plugin.
pub struct PluginInstance {
    plugin: Arc<Plugin>,
    sandbox: Arc<Sandbox>,
    store: Store<PluginState>,
    exports: Exports,
    stderr: StderrCapture,
}

impl PluginInstance {
    /// Instantiates `plugin` in `sandbox` (without calling `init`).
    pub fn instantiate(
        plugin: &Arc<Plugin>,
        label: InstanceLabel,
        sandbox: &Arc<Sandbox>,
    ) -> Result<Self, PluginError> {
        let stderr = StderrCapture::new();
        let state = PluginState::new(sandbox, stderr.clone(), label).map_err(PluginError::Init)?;
        let mut store = Store::new(&plugin.compiled.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut store| super::slicing::on_tick(&mut store.data_mut().call));
        // Start functions run during instantiation: they get the call deadline too.
        store.set_epoch_deadline(1);
        store.data_mut().call = super::slicing::CallClock::start(sandbox.limits.call_deadline);
        if store.get_fuel().is_ok() {
            // A fresh store has no fuel: instantiation itself needs some.
            let _ = store.set_fuel(sandbox.limits.fuel.unwrap_or(u64::MAX));
        }
        let exports = match &plugin.compiled.pre {
            Pre::Transform(pre) => pre.instantiate(&mut store).map(Exports::Transform),
            Pre::Reducer(pre) => pre.instantiate(&mut store).map(Exports::Reducer),
            Pre::State(pre) => pre.instantiate(&mut store).map(Exports::State),
            Pre::CoTransform(pre) => pre.instantiate(&mut store).map(Exports::CoTransform),
        }
        .map_err(|e| trap(&e, &stderr))?;
        Ok(Self {
            plugin: plugin.clone(),
            sandbox: sandbox.clone(),
            store,
            exports,
            stderr,
        })
    }

    /// Instantiates `plugin` in `sandbox` and calls its `init` with `config`.
    pub fn start(
        plugin: &Arc<Plugin>,
        config: &[(String, String)],
        label: InstanceLabel,
        sandbox: &Arc<Sandbox>,
    ) -> Result<Self, PluginError> {
        let mut instance = Self::instantiate(plugin, label, sandbox)?;
        instance.init(config)?;
        Ok(instance)
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Arc<Plugin> {
        &self.plugin
    }

    fn arm_deadline(&mut self) {
        self.stderr.clear();
        arm(&mut self.store, &self.sandbox);
    }

    fn finish<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, PluginError> {
        self.store.set_epoch_deadline(u64::MAX / 2);
        if let Some(budget) = self.sandbox.limits.fuel
            && let Ok(left) = self.store.get_fuel()
        {
            let usage = &self.store.data().label().usage;
            usage
                .fuel_used
                .fetch_add(budget.saturating_sub(left), std::sync::atomic::Ordering::Relaxed);
        }
        result.map_err(|e| trap(&e, &self.stderr))
    }

    /// Calls `describe`.
    pub fn describe(&mut self) -> Result<PluginInfo, PluginError> {
        self.arm_deadline();
        let result = call_lifecycle!(&self.exports, |l| l.call_describe(&mut self.store));
        let info = self.finish(result)?;
        Ok(PluginInfo {
            name: info.name,
            version: info.version,
            kind: PluginKind::from_wit(info.kind),
            sdk_version: info.sdk_version,
        })
    }

    /// Calls `init` with the stage's configuration.
    pub fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginError> {
        let config: Vec<(String, String)> = config.to_vec();
        self.arm_deadline();
        let result = call_lifecycle!(&self.exports, |l| l.call_init(&mut self.store, &config));
        self.finish(result)?.map_err(PluginError::Init)
    }

    /// Runs the transform over one batch. The input batch is always handed
    /// back (filters keep records from it; errors describe records of it).
    pub fn transform(&mut self, input: Batch) -> (Batch, Result<TransformOutput, PluginError>) {
        let Exports::Transform(exports) = &self.exports else {
            let error = PluginError::Batch(format!(
                "this plugin is a {}, not a transform",
                self.plugin.info().kind.name()
            ));
            return (input, Err(error));
        };
        let (data, ends, timestamps, flags) = input.into_parts();
        let wit_batch = types::Batch {
            data,
            ends,
            timestamps,
            flags,
        };
        self.stderr.clear();
        arm(&mut self.store, &self.sandbox);
        let result = exports
            .weir_plugin_transform()
            .call_process(&mut self.store, &wit_batch);
        let result = self.finish(result);
        let types::Batch {
            data,
            ends,
            timestamps,
            flags,
        } = wit_batch;
        let input = Batch::from_parts_unchecked(data, ends, timestamps, flags);
        let output = match result {
            Ok(Ok(types::TransformOutput::Records(batch))) => {
                let limits = &self.sandbox.limits;
                let (records, bytes) = (batch.timestamps.len() as u64, batch.data.len() as u64);
                if records > limits.max_output_records(input.len())
                    || bytes > limits.max_output_bytes(input.data_bytes())
                {
                    return (input, Err(PluginError::OutputLimit { records, bytes }));
                }
                Batch::from_parts(batch.data, batch.ends, batch.timestamps, batch.flags)
                    .map(TransformOutput::Records)
                    .map_err(PluginError::from)
            }
            Ok(Ok(types::TransformOutput::Keep(indices))) => Ok(TransformOutput::Keep(indices)),
            Ok(Err(error)) => Err(process_error(error)),
            Err(error) => Err(error),
        };
        (input, output)
    }

    /// Runs the reducer over groups of values: `values` in flat form, group
    /// `g` ending at `group_ends[g]`. Returns one value per group.
    pub fn reduce(
        &mut self,
        data: Vec<u8>,
        ends: Vec<u32>,
        group_ends: &[u32],
    ) -> Result<(Vec<u8>, Vec<u32>), PluginError> {
        let Exports::Reducer(exports) = &self.exports else {
            return Err(PluginError::Batch(format!(
                "this plugin is a {}, not a reducer",
                self.plugin.info().kind.name()
            )));
        };
        let values = types::Values { data, ends };
        self.stderr.clear();
        arm(&mut self.store, &self.sandbox);
        let result = exports
            .weir_plugin_reducer()
            .call_reduce(&mut self.store, &values, group_ends);
        let output = self.finish(result)?.map_err(process_error)?;
        if output.ends.len() != group_ends.len() {
            return Err(PluginError::Batch(format!(
                "the reducer returned {} values for {} keys",
                output.ends.len(),
                group_ends.len()
            )));
        }
        if output.ends.windows(2).any(|w| w[0] > w[1])
            || output
                .ends
                .last()
                .is_some_and(|&end| end as usize != output.data.len())
        {
            return Err(crate::record::MalformedBatch("reducer returned malformed values".into()).into());
        }
        Ok((output.data, output.ends))
    }
}

impl PluginInstance {
    /// Runs a stateful function over the key groups of one partition.
    /// Returns one state entry and flag per group, and the emitted records.
    pub fn update_state(&mut self, groups: &KeyGroups) -> Result<StateUpdate, PluginError> {
        let Exports::State(exports) = &self.exports else {
            return Err(PluginError::Batch(format!(
                "this plugin is a {}, not a stateful function",
                self.plugin.info().kind.name()
            )));
        };
        self.stderr.clear();
        arm(&mut self.store, &self.sandbox);
        let result = exports
            .weir_plugin_keyed_state()
            .call_update(&mut self.store, groups);
        let update = self.finish(result)?.map_err(process_error)?;
        let count = groups.group_ends.len();
        if update.states.ends.len() != count || update.state_flags.len() != count {
            return Err(PluginError::Batch(format!(
                "the plugin returned {} states and {} flags for {count} keys",
                update.states.ends.len(),
                update.state_flags.len()
            )));
        }
        check_values(&update.states, "states")?;
        let input_bytes = groups.keys.data.len() + groups.values.data.len() + groups.states.data.len();
        let output = self.checked_output(update.output, groups.values.ends.len().max(count), input_bytes)?;
        Ok(StateUpdate {
            states: update.states.data,
            state_ends: update.states.ends,
            keep: update.state_flags.iter().map(|flags| flags & 1 == 1).collect(),
            output,
        })
    }

    /// Runs a transform-with over one partition of its two inputs. Both
    /// inputs are handed back.
    pub fn process_pair(&mut self, left: Batch, right: Batch) -> (Batch, Batch, Result<Batch, PluginError>) {
        let Exports::CoTransform(exports) = &self.exports else {
            let error = PluginError::Batch(format!(
                "this plugin is a {}, not a transform-with",
                self.plugin.info().kind.name()
            ));
            return (left, right, Err(error));
        };
        let to_wit = |batch: Batch| {
            let (data, ends, timestamps, flags) = batch.into_parts();
            types::Batch {
                data,
                ends,
                timestamps,
                flags,
            }
        };
        let from_wit = |batch: types::Batch| {
            Batch::from_parts_unchecked(batch.data, batch.ends, batch.timestamps, batch.flags)
        };
        let (wit_left, wit_right) = (to_wit(left), to_wit(right));
        self.stderr.clear();
        arm(&mut self.store, &self.sandbox);
        let result =
            exports
                .weir_plugin_co_transform()
                .call_process_pair(&mut self.store, &wit_left, &wit_right);
        let result = self.finish(result);
        let (left, right) = (from_wit(wit_left), from_wit(wit_right));
        let output = match result {
            Ok(Ok(batch)) => self.checked_output(
                batch,
                left.len() + right.len(),
                left.data_bytes() + right.data_bytes(),
            ),
            Ok(Err(error)) => Err(process_error(error)),
            Err(error) => Err(error),
        };
        (left, right, output)
    }

    /// Checks a returned batch against the output limits and the batch layout.
    fn checked_output(
        &self,
        batch: types::Batch,
        input_records: usize,
        input_bytes: usize,
    ) -> Result<Batch, PluginError> {
        let limits = &self.sandbox.limits;
        let (records, bytes) = (batch.timestamps.len() as u64, batch.data.len() as u64);
        if records > limits.max_output_records(input_records) || bytes > limits.max_output_bytes(input_bytes)
        {
            return Err(PluginError::OutputLimit { records, bytes });
        }
        Ok(Batch::from_parts(
            batch.data,
            batch.ends,
            batch.timestamps,
            batch.flags,
        )?)
    }
}

/// Checks that flat values have non-decreasing ends that cover the data.
fn check_values(values: &types::Values, what: &str) -> Result<(), PluginError> {
    if values.ends.windows(2).any(|w| w[0] > w[1])
        || values.ends.last().map_or(0, |&end| end as usize) != values.data.len()
    {
        return Err(crate::record::MalformedBatch(format!("the plugin returned malformed {what}")).into());
    }
    Ok(())
}

/// Sets the deadline (and, on a metered engine, the fuel budget) of the next call.
fn arm(store: &mut Store<PluginState>, sandbox: &Sandbox) {
    store.set_epoch_deadline(1);
    store.data_mut().call = super::slicing::CallClock::start(sandbox.limits.call_deadline);
    if let Some(fuel) = sandbox.limits.fuel
        && store.get_fuel().is_ok()
    {
        let _ = store.set_fuel(fuel);
    }
}

fn process_error(error: types::ProcessError) -> PluginError {
    match error {
        types::ProcessError::Record(failure) => PluginError::Record {
            index: failure.index,
            message: failure.message,
        },
        types::ProcessError::Batch(message) => PluginError::Batch(message),
    }
}

fn trap(error: &wasmtime::Error, stderr: &StderrCapture) -> PluginError {
    PluginError::Trap {
        kind: TrapKind::of(error),
        message: super::error::describe(error),
        stderr: stderr.text(),
    }
}
