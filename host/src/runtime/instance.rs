//! Warm plugin instances.
//!
//! An [`Instance<W>`] is one instance of a [`Plugin`] that exports the world
//! `W`, with its own store, limits and captured stderr, owned by one worker
//! at a time. The world is checked once, when the instance is created; every
//! call then goes through one path (`Instance::call`) that clears stderr,
//! arms the deadline and fuel budget, runs the call, disarms it, counts the
//! fuel used and turns a trap into [`PluginError::Trap`]. The world-specific
//! calls are in [`super::calls`].
//!
//! A [`PluginInstance`] is an instance of whichever world a plugin exports:
//! what loading uses to probe a plugin before its world is known.

use std::sync::Arc;

use wasmtime::Store;

use super::error::{PluginError, TrapKind};
use super::limits::{CopyBound, CopyBudget, Sandbox};
use super::plugin::{Plugin, PluginInfo, Pre};
use super::slicing::CallClock;
use super::state::{InstanceLabel, PluginState};
use super::stderr::OutputCapture;
use super::world::{CoTransformWorld, ReducerWorld, SinkWorld, StateWorld, TransformWorld, World};

/// An instance of a transform plugin.
pub type TransformInstance = Instance<TransformWorld>;
/// An instance of a reducer plugin.
pub type ReducerInstance = Instance<ReducerWorld>;
/// An instance of a keyed-state plugin.
pub type StateInstance = Instance<StateWorld>;
/// An instance of a transform-with plugin.
pub type CoTransformInstance = Instance<CoTransformWorld>;
/// An instance of a sink plugin.
pub type SinkInstance = Instance<SinkWorld>;

/// One warm instance of a plugin exporting the world `W`.
pub struct Instance<W: World> {
    plugin: Arc<Plugin>,
    pub(super) sandbox: Arc<Sandbox>,
    store: Store<PluginState>,
    exports: W::Exports,
    stdout: OutputCapture,
    stderr: OutputCapture,
    /// Its linear memory once started (instantiated, and `init` called).
    memory_at_start: usize,
}

impl<W: World> Instance<W> {
    /// Instantiates `plugin` in `sandbox` (without calling `init`). Fails
    /// when the plugin does not export the world `W`.
    pub fn instantiate(
        plugin: &Arc<Plugin>,
        label: InstanceLabel,
        sandbox: &Arc<Sandbox>,
    ) -> Result<Self, PluginError> {
        let Some(pre) = W::pre(plugin) else {
            return Err(PluginError::Contract {
                path: plugin.path().to_owned(),
                message: format!("this plugin is a {}, not {}", plugin.info().kind.name(), W::WHAT),
            });
        };
        let (stdout, stderr) = (OutputCapture::new(), OutputCapture::new());
        let state =
            PluginState::new(sandbox, stdout.clone(), stderr.clone(), label).map_err(PluginError::Init)?;
        let mut store = Store::new(&plugin.compiled().engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut store| super::slicing::on_tick(&mut store.data_mut().call));
        // Start functions run during instantiation: they get the call deadline too.
        store.set_epoch_deadline(1);
        store.data_mut().call = CallClock::start(sandbox.limits.call_deadline);
        if store.get_fuel().is_ok() {
            // A fresh store has no fuel: instantiation itself needs some.
            let _ = store.set_fuel(sandbox.limits.fuel.unwrap_or(u64::MAX));
        }
        let exports = W::instantiate(pre, &mut store).map_err(|e| trap(&e, &stdout, &stderr))?;
        let memory_at_start = store.data().limits.used();
        Ok(Self {
            plugin: plugin.clone(),
            sandbox: sandbox.clone(),
            store,
            exports,
            stdout,
            stderr,
            memory_at_start,
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

    /// Calls `describe`.
    pub fn describe(&mut self) -> Result<PluginInfo, PluginError> {
        self.call(|exports, store| W::describe(exports, store))
    }

    /// Calls `init` with the stage's configuration.
    pub fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginError> {
        self.call(|exports, store| W::init(exports, store, config))?
            .map_err(PluginError::Init)?;
        self.memory_at_start = self.memory_bytes();
        Ok(())
    }

    /// True when the instance's linear memory has grown, since it started,
    /// past half of the room its memory limit left it then.
    ///
    /// Memory a Wasm instance grows is never given back, so a plugin whose
    /// heap creeps up from call to call ends in a memory trap, however small
    /// each call's need. componentize-py's bindings (0.25) are one: they
    /// never free the copy of a `list<u8>` an export returns, so a Python
    /// plugin keeps every output byte it ever returned. Its owner replaces
    /// such an instance between calls ([`crate::operator::instances`]); one
    /// whose calls legitimately need most of its limit is replaced after
    /// each call, which costs a fresh instance (tens of microseconds for a
    /// Rust plugin, a few milliseconds for Python) instead of a trap.
    pub fn outgrown(&self) -> bool {
        let limit = self.store.data().limits.limit();
        let room = limit.saturating_sub(self.memory_at_start);
        self.memory_bytes() > self.memory_at_start + room / 2
    }

    /// Bytes of linear memory the instance holds now.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limits.used()
    }

    /// A call that moves no batch (describe, init): its copy budget is the
    /// memory limit.
    pub(super) fn call<T>(
        &mut self,
        call: impl FnOnce(&W::Exports, &mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let budget = self.sandbox.limits.copy_budget(None);
        self.call_within(budget, call)
    }

    /// A call that moves data: refuses, without calling, an input of
    /// `records` records (or values) taking `bytes` bytes in the plugin's
    /// memory that the memory limit cannot hold; copies the result out
    /// within the budget `ratios` set ([`Limits::copy_budget`]: `Some` with
    /// the input's records and data bytes for outputs the output ratios
    /// bound).
    ///
    /// [`Limits::copy_budget`]: super::Limits::copy_budget
    pub(super) fn call_moving<T>(
        &mut self,
        (records, bytes): (usize, u64),
        ratios: Option<(usize, usize)>,
        call: impl FnOnce(&W::Exports, &mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        let limits = &self.sandbox.limits;
        let memory = limits.memory_bytes as u64;
        if bytes > memory {
            return Err(PluginError::InputTooLarge {
                bytes,
                records: records as u64,
                limit: memory,
            });
        }
        let budget = limits.copy_budget(ratios);
        self.call_within(budget, call)
    }

    /// The one path of every call into the plugin: clears the captured
    /// stdout and stderr, arms the call's deadline (and, on a metered
    /// engine, its fuel budget) and its copy budget, runs `call`, disarms
    /// the deadline, counts the fuel burnt and turns a trap into
    /// [`PluginError::Trap`] (with what the plugin wrote to stdout and
    /// stderr), a result over the copy budget into
    /// [`PluginError::OutputTooLarge`].
    fn call_within<T>(
        &mut self,
        budget: CopyBudget,
        call: impl FnOnce(&W::Exports, &mut Store<PluginState>) -> wasmtime::Result<T>,
    ) -> Result<T, PluginError> {
        self.stdout.clear();
        self.stderr.clear();
        let limits = &self.sandbox.limits;
        self.store.set_epoch_deadline(1);
        self.store.data_mut().call = CallClock::start(limits.call_deadline);
        self.store
            .set_hostcall_fuel(usize::try_from(budget.bytes).unwrap_or(usize::MAX));
        if let Some(fuel) = limits.fuel
            && self.store.get_fuel().is_ok()
        {
            let _ = self.store.set_fuel(fuel);
        }
        let result = call(&self.exports, &mut self.store);
        self.store.set_epoch_deadline(u64::MAX / 2);
        if let Some(budget) = limits.fuel
            && let Ok(left) = self.store.get_fuel()
        {
            let label = self.store.data().label();
            let burnt = budget.saturating_sub(left);
            label
                .usage
                .fuel_used
                .fetch_add(burnt, std::sync::atomic::Ordering::Relaxed);
            if let Some(candidate) = &label.candidate_fuel {
                candidate.fetch_add(burnt, std::sync::atomic::Ordering::Relaxed);
            }
        }
        result.map_err(|e| {
            if over_copy_budget(&e) {
                output_too_large(budget, limits)
            } else {
                // The host's own refusal of a result while taking it over
                // (split records over the output limits) comes as it is: not
                // a trap, the instance is sound.
                e.downcast::<PluginError>()
                    .unwrap_or_else(|e| trap(&e, &self.stdout, &self.stderr))
            }
        })
    }
}

/// True when `error` is wasmtime's refusal to copy more than the store's
/// hostcall fuel out of the plugin (its error type is private: matched by
/// its message, checked by the copy-budget tests).
fn over_copy_budget(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .to_string()
            .contains("too much data is being copied between the host and the guest")
    })
}

/// The output-limit error of a result over `budget`, naming the limit to raise.
fn output_too_large(budget: CopyBudget, limits: &super::Limits) -> PluginError {
    let limit = match budget.bound {
        CopyBound::Ratios { records, bytes } => format!(
            "more than the stage's limits allow for its input of {records} records / {bytes} bytes \
             (output-records-ratio {}, output-bytes-ratio {}): raise `output-bytes-ratio` \
             (or `output-records-ratio`) in the stage's limits",
            limits.output_records_ratio, limits.output_bytes_ratio
        ),
        CopyBound::Memory => format!(
            "more than the stage's memory limit of {} bytes can hold: raise `memory` in the stage's limits",
            limits.memory_bytes
        ),
    };
    PluginError::OutputTooLarge {
        budget: budget.bytes,
        limit,
    }
}

/// An instance of whichever world its plugin exports.
pub enum PluginInstance {
    /// A transform plugin's.
    Transform(TransformInstance),
    /// A reducer plugin's.
    Reducer(ReducerInstance),
    /// A keyed-state plugin's.
    State(StateInstance),
    /// A transform-with plugin's.
    CoTransform(CoTransformInstance),
    /// A sink plugin's.
    Sink(SinkInstance),
}

/// Runs `$body` with `$instance` bound to the typed instance inside `$any`.
macro_rules! with_instance {
    ($any:expr, |$instance:ident| $body:expr) => {
        match $any {
            PluginInstance::Transform($instance) => $body,
            PluginInstance::Reducer($instance) => $body,
            PluginInstance::State($instance) => $body,
            PluginInstance::CoTransform($instance) => $body,
            PluginInstance::Sink($instance) => $body,
        }
    };
}

impl PluginInstance {
    /// Instantiates `plugin` in `sandbox` as the world it exports (without
    /// calling `init`).
    pub fn instantiate(
        plugin: &Arc<Plugin>,
        label: InstanceLabel,
        sandbox: &Arc<Sandbox>,
    ) -> Result<Self, PluginError> {
        Ok(match &plugin.compiled().pre {
            Pre::Transform(_) => Self::Transform(Instance::instantiate(plugin, label, sandbox)?),
            Pre::Reducer(_) => Self::Reducer(Instance::instantiate(plugin, label, sandbox)?),
            Pre::State(_) => Self::State(Instance::instantiate(plugin, label, sandbox)?),
            Pre::CoTransform(_) => Self::CoTransform(Instance::instantiate(plugin, label, sandbox)?),
            Pre::Sink(_) => Self::Sink(Instance::instantiate(plugin, label, sandbox)?),
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
        with_instance!(self, |instance| instance.plugin())
    }

    /// Calls `describe`.
    pub fn describe(&mut self) -> Result<PluginInfo, PluginError> {
        with_instance!(self, |instance| instance.describe())
    }

    /// Calls `init` with the stage's configuration.
    pub fn init(&mut self, config: &[(String, String)]) -> Result<(), PluginError> {
        with_instance!(self, |instance| instance.init(config))
    }
}

fn trap(error: &wasmtime::Error, stdout: &OutputCapture, stderr: &OutputCapture) -> PluginError {
    PluginError::Trap {
        kind: TrapKind::of(error),
        message: super::error::describe(error),
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}
