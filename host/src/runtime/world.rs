//! The four WIT worlds a plugin can export, as types.
//!
//! Each world is a marker type implementing [`World`]: it names the
//! pre-instance and exports of that world and how to call its lifecycle
//! functions. A world is bound once per contract version a component may be
//! built against (`weir:plugin@0.2.0`, and the frozen `0.1.0`; a state
//! plugin of 0.2 may also export `state-migration`), so its pre-instance and
//! exports are enums with one variant per binding, and the calls of a world
//! (`process`, `reduce`, ...) are methods of its exports enum that take the
//! same Rust types whichever version answers. An
//! [`Instance<W>`](super::instance::Instance) holds the exports of exactly
//! one world, checked once when it is created, so the calls of that world
//! exist only on the matching instance type.

use wasmtime::Store;

use super::bindings::{co_transform, migrating_state, reducer, sink, state, transform, types, v0_1};
use super::plugin::{FromWit as _, Plugin, PluginInfo, PluginKind, Pre};
use super::state::PluginState;

/// One WIT world a plugin exports. Sealed: the four worlds below are all.
pub trait World: sealed::Bindings + Sized + 'static {
    /// What a plugin of this world is, for errors ("a transform").
    const WHAT: &'static str;
}

pub(super) mod sealed {
    use super::{Plugin, PluginInfo, PluginState, Store};

    /// The `bindgen!` glue of one world (kept out of [`super::World`]'s
    /// public face: it names crate-private types).
    pub trait Bindings {
        /// The world's pre-instantiated component.
        type Pre;
        /// The world's exports, once instantiated.
        type Exports;

        /// `plugin`'s pre-instantiated component as this world, if it exports it.
        fn pre(plugin: &Plugin) -> Option<&Self::Pre>;

        /// Instantiates `pre` in `store`.
        fn instantiate(pre: &Self::Pre, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Exports>;

        /// Calls `describe` (the lifecycle's, or a sink's own).
        fn describe(exports: &Self::Exports, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo>;

        /// Calls `init` (the lifecycle's, or a sink's own) with `config`.
        fn init(
            exports: &Self::Exports,
            store: &mut Store<PluginState>,
            config: &[(String, String)],
        ) -> wasmtime::Result<Result<(), String>>;
    }
}

/// What a `describe` of some contract version returns, as the host's
/// [`PluginInfo`] (the contract it was built against and whether it
/// migrates state are filled in by the loader, which knows its binding).
trait Described {
    fn into_current(self) -> PluginInfo;
}

impl Described for types::PluginInfo {
    fn into_current(self) -> PluginInfo {
        PluginInfo {
            name: self.name,
            version: self.version,
            kind: PluginKind::from_wit(self.kind),
            sdk_version: self.sdk_version,
            state_version: self.state_version,
            contract: super::plugin::CONTRACT_VERSION,
            migrates_state: false,
        }
    }
}

impl Described for v0_1::types::PluginInfo {
    /// A 0.1 plugin has state version 1.
    fn into_current(self) -> PluginInfo {
        types::PluginInfo {
            name: self.name,
            version: self.version,
            kind: self.kind,
            sdk_version: self.sdk_version,
            state_version: 1,
        }
        .into_current()
    }
}

impl Described for sink::exports::weir::plugin::sink::SinkInfo {
    /// A sink keeps no state: state version 1.
    fn into_current(self) -> PluginInfo {
        PluginInfo {
            name: self.name,
            version: self.version,
            kind: PluginKind::Sink,
            sdk_version: self.sdk_version,
            state_version: 1,
            contract: super::plugin::CONTRACT_VERSION,
            migrates_state: false,
        }
    }
}

/// Declares the world marker types, their pre-instance and exports enums
/// (one variant per binding), and their bindings glue.
macro_rules! worlds {
    ($(
        $(#[$doc:meta])*
        $world:ident = $kind:ident, $what:literal, $pre_enum:ident => $exports_enum:ident {
            $($(#[$vdoc:meta])* $variant:ident($pre:ty => $exports:ty),)+
        }
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub enum $world {}

        impl World for $world {
            const WHAT: &'static str = $what;
        }

        #[doc = concat!("The pre-instantiated component of ", $what, ", by the binding it matched.")]
        pub enum $pre_enum {
            $($(#[$vdoc])* $variant($pre),)+
        }

        #[doc = concat!("The exports of an instance of ", $what, ", by binding.")]
        pub enum $exports_enum {
            $($(#[$vdoc])* $variant($exports),)+
        }

        impl sealed::Bindings for $world {
            type Pre = $pre_enum;
            type Exports = $exports_enum;

            fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
                match &plugin.compiled().pre {
                    Pre::$kind(pre) => Some(pre),
                    _ => None,
                }
            }

            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<Self::Exports> {
                Ok(match pre {
                    $($pre_enum::$variant(pre) => $exports_enum::$variant(pre.instantiate(store)?),)+
                })
            }

            fn describe(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<PluginInfo> {
                match exports {
                    $($exports_enum::$variant(exports) => exports
                        .weir_plugin_lifecycle()
                        .call_describe(store)
                        .map(Described::into_current),)+
                }
            }

            fn init(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
                config: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                // The bindings take the WIT `config` list as a `Vec`.
                let config = config.to_vec();
                match exports {
                    $($exports_enum::$variant(exports) => {
                        exports.weir_plugin_lifecycle().call_init(&mut *store, &config)
                    })+
                }
            }
        }
    )*};
}

worlds! {
    /// The `transform-plugin` world: map, flat-map, filter, filter-map and
    /// map-partitions.
    TransformWorld = Transform, "a transform", TransformPre => TransformExports {
        /// `weir:plugin@0.2.0`.
        Current(transform::TransformPluginPre<PluginState> => transform::TransformPlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::transform::TransformPluginPre<PluginState> => v0_1::transform::TransformPlugin),
    }
    /// The `reducer-plugin` world: combines the values of a key.
    ReducerWorld = Reducer, "a reducer", ReducerPre => ReducerExports {
        /// `weir:plugin@0.2.0`.
        Current(reducer::ReducerPluginPre<PluginState> => reducer::ReducerPlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::reducer::ReducerPluginPre<PluginState> => v0_1::reducer::ReducerPlugin),
    }
    /// The `state-plugin` world: update-state-by-key and map-with-state.
    StateWorld = State, "a stateful function", StatePre => StateExports {
        /// `weir:plugin@0.2.0`, with `state-migration`.
        Migrating(
            migrating_state::MigratingStatePluginPre<PluginState> => migrating_state::MigratingStatePlugin
        ),
        /// `weir:plugin@0.2.0`.
        Current(state::StatePluginPre<PluginState> => state::StatePlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::state::StatePluginPre<PluginState> => v0_1::state::StatePlugin),
    }
    /// The `co-transform-plugin` world: transform-with over two inputs.
    CoTransformWorld = CoTransform, "a transform-with", CoTransformPre => CoTransformExports {
        /// `weir:plugin@0.2.0`.
        Current(co_transform::CoTransformPluginPre<PluginState> => co_transform::CoTransformPlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(
            v0_1::co_transform::CoTransformPluginPre<PluginState> => v0_1::co_transform::CoTransformPlugin
        ),
    }
}

/// The `sink-plugin` world: a sink written as a plugin. It has one binding
/// (sinks arrived with `weir:plugin@0.2.0`) and describes and initialises
/// itself through its own `sink` interface rather than `lifecycle`.
#[derive(Debug, Clone, Copy)]
pub enum SinkWorld {}

impl World for SinkWorld {
    const WHAT: &'static str = "a sink";
}

impl sealed::Bindings for SinkWorld {
    type Pre = sink::SinkPluginPre<PluginState>;
    type Exports = sink::SinkPlugin;

    fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
        match &plugin.compiled().pre {
            Pre::Sink(pre) => Some(pre),
            _ => None,
        }
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Exports> {
        pre.instantiate(store)
    }

    fn describe(exports: &Self::Exports, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo> {
        exports
            .weir_plugin_sink()
            .call_describe(store)
            .map(Described::into_current)
    }

    fn init(
        exports: &Self::Exports,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        exports.weir_plugin_sink().call_init(store, &config.to_vec())
    }
}

/// The result of a batch call: a trap, or the plugin's own answer.
type CallResult<T> = wasmtime::Result<Result<T, types::ProcessError>>;

impl TransformExports {
    /// `transform.process`.
    pub(super) fn process(
        &self,
        store: &mut Store<PluginState>,
        input: &types::Batch,
    ) -> CallResult<types::TransformOutput> {
        match self {
            Self::Current(exports) => exports.weir_plugin_transform().call_process(store, input),
            Self::V0_1(exports) => exports.weir_plugin_transform().call_process(store, input),
        }
    }
}

impl ReducerExports {
    /// `reducer.reduce`.
    pub(super) fn reduce(
        &self,
        store: &mut Store<PluginState>,
        values: &types::Values,
        group_ends: &[u32],
    ) -> CallResult<types::Values> {
        match self {
            Self::Current(exports) => exports
                .weir_plugin_reducer()
                .call_reduce(store, values, group_ends),
            Self::V0_1(exports) => exports
                .weir_plugin_reducer()
                .call_reduce(store, values, group_ends),
        }
    }
}

impl StateExports {
    /// `keyed-state.update`.
    pub(super) fn update(
        &self,
        store: &mut Store<PluginState>,
        groups: &types::KeyGroups,
    ) -> CallResult<types::StateUpdate> {
        match self {
            Self::Migrating(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
            Self::Current(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
            Self::V0_1(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
        }
    }

    /// `state-migration.migrate-state`; `None` when the plugin does not export it.
    pub(super) fn migrate_state(
        &self,
        store: &mut Store<PluginState>,
        from_version: u32,
        states: &types::Values,
    ) -> Option<CallResult<types::Values>> {
        match self {
            Self::Migrating(exports) => Some(exports.weir_plugin_state_migration().call_migrate_state(
                store,
                from_version,
                states,
            )),
            Self::Current(_) | Self::V0_1(_) => None,
        }
    }
}

impl CoTransformExports {
    /// `co-transform.process-pair`.
    pub(super) fn process_pair(
        &self,
        store: &mut Store<PluginState>,
        left: &types::Batch,
        right: &types::Batch,
    ) -> CallResult<types::Batch> {
        match self {
            Self::Current(exports) => exports
                .weir_plugin_co_transform()
                .call_process_pair(store, left, right),
            Self::V0_1(exports) => exports
                .weir_plugin_co_transform()
                .call_process_pair(store, left, right),
        }
    }
}
