//! Each worker thread's warm plugin instances.
//!
//! Instances are created on first use from the plugin's pre-instantiated
//! component (tens of microseconds) and reused for every later batch the worker
//! runs for that stage. An instance whose call trapped is dropped, so the next
//! call gets a fresh one. When a pipeline ends its plugin uses are retired,
//! and every worker drops their instances at its next sweep
//! ([`InstanceSlots::sweep`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::runtime::{InstanceLabel, Plugin, PluginError, PluginInstance, Sandbox};

/// Identifies one use of a plugin (one stage of one pipeline, one role): the
/// key of an instance slot. Unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceKey(u64);

impl InstanceKey {
    /// A key never handed out before.
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One stage's use of a Wasm plugin: the plugin, the stage's configuration
/// and sandbox, and the key of its instances in every worker's slots.
#[derive(Debug)]
pub struct PluginUse {
    plugin: Arc<Plugin>,
    config: Vec<(String, String)>,
    label: InstanceLabel,
    sandbox: Arc<Sandbox>,
    key: InstanceKey,
    retired: Arc<AtomicBool>,
}

impl PluginUse {
    /// `plugin` in `sandbox`, initialised with `config`; `label` tags its logs.
    pub fn new(
        plugin: Arc<Plugin>,
        config: Vec<(String, String)>,
        label: InstanceLabel,
        sandbox: Sandbox,
    ) -> Self {
        Self {
            plugin,
            config,
            label,
            sandbox: Arc::new(sandbox),
            key: InstanceKey::unique(),
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ties this use to a run: once `retired` is set (the run ended),
    /// workers drop its instances at their next [`InstanceSlots::sweep`].
    pub fn retired_by(mut self, retired: Arc<AtomicBool>) -> Self {
        self.retired = retired;
        self
    }

    /// Starts a throw-away instance: the plugin instantiates in its sandbox
    /// and accepts its configuration.
    pub fn check(&self) -> Result<(), PluginError> {
        PluginInstance::start(&self.plugin, &self.config, self.label.clone(), &self.sandbox).map(drop)
    }

    /// Runs `call` on this worker's instance of this use, starting one
    /// (instantiate + `init(config)`) if the worker has none. An instance
    /// whose call trapped is discarded.
    pub fn call<T>(
        &self,
        slots: &mut InstanceSlots,
        call: impl FnOnce(&mut PluginInstance) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let (_, instance) = match slots.slots.entry(self.key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert((
                self.retired.clone(),
                PluginInstance::start(&self.plugin, &self.config, self.label.clone(), &self.sandbox)?,
            )),
        };
        let result = call(instance);
        if let Err(error) = &result
            && error.poisons_instance()
        {
            slots.slots.remove(&self.key);
        }
        result
    }
}

/// A worker's instances, by [`InstanceKey`], each with its use's retired flag.
#[derive(Default)]
pub struct InstanceSlots {
    slots: HashMap<InstanceKey, (Arc<AtomicBool>, PluginInstance)>,
}

impl InstanceSlots {
    /// Empty slots.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops the instances of retired uses.
    pub fn sweep(&mut self) {
        self.slots
            .retain(|_, (retired, _)| !retired.load(Ordering::Relaxed));
    }

    /// True when the worker holds no instance.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
