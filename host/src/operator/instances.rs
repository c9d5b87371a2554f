//! Each worker thread's warm plugin instances.
//!
//! Instances are created on first use from the plugin's pre-instantiated
//! component (tens of microseconds) and reused for every later batch the worker
//! runs for that stage. An instance whose call trapped is dropped, so the next
//! call gets a fresh one, and so is one whose linear memory has grown past
//! half of the room its limit left it (a heap that creeps up from call to
//! call: [`Instance::outgrown`]). When a pipeline ends its plugin uses are retired,
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

use super::binding::{Binding, BindingSlot, Route, Sample, SlotShared};

use crate::runtime::bindings::types::Values;
use crate::runtime::instance::Instance;
use crate::runtime::{
    CoTransformWorld, InstanceLabel, KeyGroups, Plugin, PluginError, ReducerWorld, Sandbox, StateWorld,
    TransformWorld, World,
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

/// One stage's use of a Wasm plugin exporting the world `W`: its
/// [`BindingSlot`] (the plugin version, configuration and sandbox its calls
/// run, swappable between batches) and the key of its instances in every
/// worker's slots.
#[derive(Debug)]
pub struct PluginUse<W> {
    slot: Arc<BindingSlot>,
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
            slot: Arc::new(BindingSlot::new(
                plugin,
                config,
                label,
                sandbox,
                check_binding::<W>,
            )),
            world: PhantomData,
        }
    }

    /// Ties this use to a run: once `retired` is set (the run ended),
    /// workers drop its instances at their next [`InstanceSlots::sweep`].
    pub fn retired_by(mut self, retired: Arc<AtomicBool>) -> Self {
        Arc::get_mut(&mut self.slot)
            .expect("the use is not shared yet")
            .retired_by(retired);
        self
    }

    /// The use's binding slot (what a swap replaces).
    pub fn slot(&self) -> &Arc<BindingSlot> {
        &self.slot
    }

    /// Starts a throw-away instance: the plugin exports the world `W`,
    /// instantiates in its sandbox and accepts its configuration.
    pub fn check(&self) -> Result<(), PluginError> {
        check_binding::<W>(&self.slot, &self.slot.current(), None, None)
    }

    /// Keeps a sample of batch `batch`'s input for a candidate's dry run
    /// (once per batch; `sample` is called only then).
    pub fn keep_sample(&self, batch: u64, sample: impl FnOnce() -> Sample) {
        self.slot.keep_sample(batch, sample);
    }

    /// Runs `call` on this worker's instance of this use, starting one
    /// (instantiate + `init(config)`) if the worker has none, or only one of
    /// a binding a swap replaced. An instance whose call trapped is
    /// discarded. `slots.route` asks for the previous binding's instance
    /// (during a probation) or the shadow candidate's (during a shadow).
    pub fn call<T>(
        &self,
        slots: &mut InstanceSlots,
        call: impl FnOnce(&mut Instance<W>) -> Result<T, PluginError>,
    ) -> Result<T, PluginError> {
        let slot = &self.slot;
        slot.called();
        let route = if slots.route == Route::Current {
            Route::Current
        } else {
            slot.route(slots.route)
        };
        let key = slot.key_of(route);
        let generation = slot.shared.generation(route);
        let slots = &mut W::slots(slots).0;
        let entry = match slots.entry(key) {
            std::collections::hash_map::Entry::Occupied(entry) => {
                let entry = entry.into_mut();
                if entry.generation != generation {
                    // A swap replaced the binding it was started from.
                    *entry = start(slot, route)?;
                }
                entry
            }
            std::collections::hash_map::Entry::Vacant(entry) => entry.insert(start(slot, route)?),
        };
        let result = call(&mut entry.instance);
        if let Err(error) = &result
            && error.poisons_instance()
        {
            slots.remove(&key);
        } else if entry.instance.outgrown() {
            replace_outgrown(slot, entry.instance.memory_bytes());
            slots.remove(&key);
        }
        result
    }
}

/// Counts and logs an instance of `slot` dropped because its memory had
/// outgrown it (see [`Instance::outgrown`]): the next call starts a fresh one.
fn replace_outgrown(slot: &BindingSlot, memory_bytes: usize) {
    let usage = &slot.label.usage;
    let replaced = usage.instances_replaced.fetch_add(1, Ordering::Relaxed);
    let mib = memory_bytes as f64 / f64::from(1 << 20);
    if replaced == 0 {
        tracing::info!(
            pipeline = %slot.label.pipeline,
            stage = %slot.label.stage,
            plugin = %slot.label.plugin,
            "an instance of the stage's plugin had grown to {mib:.1} MiB of linear memory, past half of \
             the room its memory limit left it: it is replaced by a fresh one between calls (memory a \
             Wasm instance grows is never given back; counted as `instances replaced`)"
        );
    } else {
        tracing::debug!(stage = %slot.label.stage, "instance replaced at {mib:.1} MiB of linear memory");
    }
}

/// A worker's instance of `slot`'s binding on `route`.
fn start<W: World>(slot: &BindingSlot, route: Route) -> Result<Entry<W>, PluginError> {
    let binding = slot.binding_of(route);
    let label = match route {
        Route::Shadow | Route::Canary => InstanceLabel {
            candidate_fuel: Some(slot.candidate_fuel.clone()),
            ..slot.label.clone()
        },
        Route::Current | Route::Fallback => slot.label.clone(),
    };
    let instance = Instance::start(&binding.plugin, &binding.config, label, &slot.sandbox)?;
    Ok(Entry {
        shared: slot.shared.clone(),
        generation: binding.generation,
        route,
        instance,
    })
}

/// The [`super::binding::Checker`] of world `W`: a fresh instance of
/// `binding` in the slot's sandbox, initialised, then the dry run.
fn check_binding<W: SlotWorld>(
    slot: &BindingSlot,
    binding: &Binding,
    sample: Option<&Sample>,
    migrate_from: Option<u32>,
) -> Result<(), PluginError> {
    let mut instance: Instance<W> = Instance::start(
        &binding.plugin,
        &binding.config,
        slot.label.clone(),
        &slot.sandbox,
    )?;
    match sample {
        Some(sample) if !sample.is_empty() => W::dry_run(&mut instance, sample, migrate_from),
        _ => Ok(()),
    }
}

/// One worker's instance of one use, with the binding generation it was
/// started from.
struct Entry<W: World> {
    shared: Arc<SlotShared>,
    generation: u64,
    route: Route,
    instance: Instance<W>,
}

/// A worker's instances of one world, by [`InstanceKey`].
pub struct WorldSlots<W: World>(HashMap<InstanceKey, Entry<W>>);

impl<W: World> Default for WorldSlots<W> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<W: World> WorldSlots<W> {
    fn sweep(&mut self) {
        self.0
            .retain(|_, entry| entry.shared.keeps(entry.generation, entry.route));
    }
}

/// A world whose instances [`InstanceSlots`] keeps, in a map of its own.
pub trait SlotWorld: World {
    /// This world's map in `slots`.
    fn slots(slots: &mut InstanceSlots) -> &mut WorldSlots<Self>;

    /// Runs `instance` on `sample` (a candidate's dry run), its states
    /// converted from `migrate_from` first; a sample of another world's
    /// calls is not run.
    fn dry_run(
        instance: &mut Instance<Self>,
        sample: &Sample,
        migrate_from: Option<u32>,
    ) -> Result<(), PluginError>;
}

macro_rules! slot_worlds {
    ($($world:ty => $field:ident, $dry_run:ident),* $(,)?) => {
        /// A worker's instances, one map per world.
        #[derive(Default)]
        pub struct InstanceSlots {
            $($field: WorldSlots<$world>,)*
            /// Which binding of each use the calls run now: the guard sets
            /// it to run a failed call again on the previous binding of a
            /// use on probation, or to run the shadow candidate.
            pub route: Route,
        }

        $(impl SlotWorld for $world {
            fn slots(slots: &mut InstanceSlots) -> &mut WorldSlots<Self> {
                &mut slots.$field
            }

            fn dry_run(
                instance: &mut Instance<Self>,
                sample: &Sample,
                migrate_from: Option<u32>,
            ) -> Result<(), PluginError> {
                $dry_run(instance, sample, migrate_from)
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
    TransformWorld => transform, dry_run_transform,
    ReducerWorld => reducer, dry_run_reducer,
    StateWorld => state, dry_run_state,
    CoTransformWorld => co_transform, dry_run_pair,
}

fn dry_run_transform(
    instance: &mut Instance<TransformWorld>,
    sample: &Sample,
    _: Option<u32>,
) -> Result<(), PluginError> {
    match sample {
        Sample::Records(batch) => instance.transform(batch.clone()).1.map(drop),
        _ => Ok(()),
    }
}

fn dry_run_reducer(
    instance: &mut Instance<ReducerWorld>,
    sample: &Sample,
    _: Option<u32>,
) -> Result<(), PluginError> {
    match sample {
        Sample::Groups {
            data,
            ends,
            group_ends,
        } => instance.reduce(data.clone(), ends.clone(), group_ends).map(drop),
        _ => Ok(()),
    }
}

fn dry_run_state(
    instance: &mut Instance<StateWorld>,
    sample: &Sample,
    migrate_from: Option<u32>,
) -> Result<(), PluginError> {
    let Sample::Keys(groups) = sample else {
        return Ok(());
    };
    match migrate_from {
        None => instance.update_state(groups).map(drop),
        Some(from_version) => {
            let groups = migrated_sample(instance, groups, from_version)?;
            instance.update_state(&groups).map(drop)
        }
    }
}

/// `groups` with the states of the keys that have one converted from
/// `from_version` by `instance`'s `migrate-state`.
fn migrated_sample(
    instance: &mut Instance<StateWorld>,
    groups: &KeyGroups,
    from_version: u32,
) -> Result<KeyGroups, PluginError> {
    let state = |g: usize| {
        let start = g.checked_sub(1).map_or(0, |p| groups.states.ends[p] as usize);
        &groups.states.data[start..groups.states.ends[g] as usize]
    };
    let has_state = |g: usize| groups.group_flags[g] & weir_abi::GROUP_HAS_STATE != 0;
    let mut old = Values {
        data: Vec::new(),
        ends: Vec::new(),
    };
    for g in (0..groups.group_flags.len()).filter(|&g| has_state(g)) {
        old.data.extend_from_slice(state(g));
        old.ends.push(old.data.len() as u32);
    }
    let new = instance.migrate_states(from_version, &old)?;
    let mut states = Values {
        data: Vec::with_capacity(new.data.len()),
        ends: Vec::with_capacity(groups.group_flags.len()),
    };
    let mut converted = new.ends.iter().scan(0usize, |start, &end| {
        let range = *start..end as usize;
        *start = end as usize;
        Some(range)
    });
    for g in 0..groups.group_flags.len() {
        if has_state(g)
            && let Some(range) = converted.next()
        {
            states.data.extend_from_slice(&new.data[range]);
        }
        states.ends.push(states.data.len() as u32);
    }
    Ok(KeyGroups {
        states,
        ..groups.clone()
    })
}

fn dry_run_pair(
    instance: &mut Instance<CoTransformWorld>,
    sample: &Sample,
    _: Option<u32>,
) -> Result<(), PluginError> {
    match sample {
        Sample::Pair(left, right) => instance.process_pair(left.clone(), right.clone()).2.map(drop),
        _ => Ok(()),
    }
}

impl InstanceSlots {
    /// Empty slots.
    pub fn new() -> Self {
        Self::default()
    }
}
