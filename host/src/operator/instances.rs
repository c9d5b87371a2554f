//! Each worker thread's warm plugin instances.
//!
//! Instances are created on first use from the plugin's pre-instantiated
//! component (tens of microseconds) and reused for every later batch the worker
//! runs for that stage. An instance whose call trapped is dropped, so the next
//! call gets a fresh one. When a pipeline ends its plugin uses are retired,
//! and every worker drops their instances at its next sweep
//! ([`InstanceSlots::sweep`]).
//!
//! A [`PluginUse<W>`] is typed by the world `W` its operator calls: its
//! instances are [`Instance<W>`]s, checked to export that world when they
//! are created (and by [`PluginUse::check`] before the pipeline starts), and
//! kept in that world's own map of the worker's slots, so a call finds its
//! typed instance without checking the world again.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::runtime::instance::Instance;
use crate::runtime::{
    CoTransformWorld, InstanceLabel, Plugin, PluginError, ReducerWorld, Sandbox, StateWorld, TransformWorld,
    World,
};

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

/// One stage's use of a Wasm plugin exporting the world `W`: the plugin, the
/// stage's configuration and sandbox, and the key of its instances in every
/// worker's slots.
#[derive(Debug)]
pub struct PluginUse<W> {
    plugin: Arc<Plugin>,
    config: Vec<(String, String)>,
    label: InstanceLabel,
    sandbox: Arc<Sandbox>,
    key: InstanceKey,
    retired: Arc<AtomicBool>,
    world: PhantomData<fn() -> W>,
}

impl<W: SlotWorld> PluginUse<W> {
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
            world: PhantomData,
        }
    }

    /// Ties this use to a run: once `retired` is set (the run ended),
    /// workers drop its instances at their next [`InstanceSlots::sweep`].
    pub fn retired_by(mut self, retired: Arc<AtomicBool>) -> Self {
        self.retired = retired;
        self
    }

    /// Starts a throw-away instance: the plugin exports the world `W`,
    /// instantiates in its sandbox and accepts its configuration.
    pub fn check(&self) -> Result<(), PluginError> {
        self.start().map(drop)
    }

    fn start(&self) -> Result<Instance<W>, PluginError> {
        Instance::start(&self.plugin, &self.config, self.label.clone(), &self.sandbox)
    }

    /// Runs `call` on this worker's instance of this use, starting one
    /// (instantiate + `init(config)`) if the worker has none. An instance
    /// whose call trapped is discarded.
    pub fn call<T>(
        &self,
        slots: &mut InstanceSlots,
        call: impl FnOnce(&mut Instance<W>) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let slots = &mut W::slots(slots).0;
        let (_, instance) = match slots.entry(self.key) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert((self.retired.clone(), self.start()?))
            }
        };
        let result = call(instance);
        if let Err(error) = &result
            && error.poisons_instance()
        {
            slots.remove(&self.key);
        }
        result
    }
}

/// A worker's instances of one world, by [`InstanceKey`], each with its
/// use's retired flag.
pub struct WorldSlots<W: World>(HashMap<InstanceKey, (Arc<AtomicBool>, Instance<W>)>);

impl<W: World> Default for WorldSlots<W> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<W: World> WorldSlots<W> {
    fn sweep(&mut self) {
        self.0.retain(|_, (retired, _)| !retired.load(Ordering::Relaxed));
    }
}

/// A world whose instances [`InstanceSlots`] keeps, in a map of its own.
pub trait SlotWorld: World {
    /// This world's map in `slots`.
    fn slots(slots: &mut InstanceSlots) -> &mut WorldSlots<Self>;
}

macro_rules! slot_worlds {
    ($($world:ty => $field:ident),* $(,)?) => {
        /// A worker's instances, one map per world.
        #[derive(Default)]
        pub struct InstanceSlots {
            $($field: WorldSlots<$world>,)*
        }

        $(impl SlotWorld for $world {
            fn slots(slots: &mut InstanceSlots) -> &mut WorldSlots<Self> {
                &mut slots.$field
            }
        })*

        impl InstanceSlots {
            /// Drops the instances of retired uses.
            pub fn sweep(&mut self) {
                $(self.$field.sweep();)*
            }

            /// True when the worker holds no instance.
            pub fn is_empty(&self) -> bool {
                true $(&& self.$field.0.is_empty())*
            }
        }
    };
}

slot_worlds! {
    TransformWorld => transform,
    ReducerWorld => reducer,
    StateWorld => state,
    CoTransformWorld => co_transform,
}

impl InstanceSlots {
    /// Empty slots.
    pub fn new() -> Self {
        Self::default()
    }
}
