//! The four WIT worlds a plugin can export, as types.
//!
//! Each world is a marker type implementing [`World`]: it names the
//! `bindgen!` pre-instance and exports of that world and how to call its
//! lifecycle functions (every world's bindings have their own lifecycle
//! type). An [`Instance<W>`](super::instance::Instance) holds the exports of
//! exactly one world, checked once when it is created, so the calls of that
//! world (`transform`, `reduce`, ...) exist only on the matching instance type.

use wasmtime::Store;

use super::bindings::{co_transform, reducer, state, transform, types};
use super::plugin::{Plugin, Pre};
use super::state::PluginState;

/// One WIT world a plugin exports. Sealed: the four worlds below are all.
pub trait World: sealed::Bindings + Sized + 'static {
    /// What a plugin of this world is, for errors ("a transform").
    const WHAT: &'static str;
}

pub(super) mod sealed {
    use super::{Plugin, PluginState, Store, types};

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

        /// Calls the lifecycle's `describe`.
        fn describe(
            exports: &Self::Exports,
            store: &mut Store<PluginState>,
        ) -> wasmtime::Result<types::PluginInfo>;

        /// Calls the lifecycle's `init` with `config`.
        fn init(
            exports: &Self::Exports,
            store: &mut Store<PluginState>,
            config: &[(String, String)],
        ) -> wasmtime::Result<Result<(), String>>;
    }
}

/// Declares the world marker types and their bindings glue.
macro_rules! worlds {
    ($(
        $(#[$doc:meta])*
        $world:ident = $variant:ident($pre:ty => $exports:ty), $what:literal;
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub enum $world {}

        impl World for $world {
            const WHAT: &'static str = $what;
        }

        impl sealed::Bindings for $world {
            type Pre = $pre;
            type Exports = $exports;

            fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
                match &plugin.compiled().pre {
                    Pre::$variant(pre) => Some(pre),
                    _ => None,
                }
            }

            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<Self::Exports> {
                pre.instantiate(store)
            }

            fn describe(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<types::PluginInfo> {
                exports.weir_plugin_lifecycle().call_describe(store)
            }

            fn init(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
                config: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                // The bindings take the WIT `config` list as a `Vec`.
                exports.weir_plugin_lifecycle().call_init(store, &config.to_vec())
            }
        }
    )*};
}

worlds! {
    /// The `transform-plugin` world: map, flat-map, filter, filter-map and
    /// map-partitions.
    TransformWorld = Transform(
        transform::TransformPluginPre<PluginState> => transform::TransformPlugin
    ), "a transform";
    /// The `reducer-plugin` world: combines the values of a key.
    ReducerWorld = Reducer(
        reducer::ReducerPluginPre<PluginState> => reducer::ReducerPlugin
    ), "a reducer";
    /// The `state-plugin` world: update-state-by-key and map-with-state.
    StateWorld = State(state::StatePluginPre<PluginState> => state::StatePlugin), "a stateful function";
    /// The `co-transform-plugin` world: transform-with over two inputs.
    CoTransformWorld = CoTransform(
        co_transform::CoTransformPluginPre<PluginState> => co_transform::CoTransformPlugin
    ), "a transform-with";
}
