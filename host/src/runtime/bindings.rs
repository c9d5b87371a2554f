//! Generated bindings of the WIT worlds in `wit/` (kept alone in this module
//! so that edits elsewhere do not re-run `bindgen!`).
//!
//! The current package, `weir:plugin@0.2.0`, is bound at the top; the
//! frozen `weir:plugin@0.1.0` (in `wit/v0.1/`) in [`v0_1`], so that
//! components built against it still load. Both share one set of Rust types:
//! the two packages' `types` differ only in `plugin-info` (0.2 added
//! `state-version`), so the 0.1 bindings take every type from the 0.2 ones
//! but that one ([`v0_1::types`]), and the host's batch code is the same for
//! both.

#![allow(missing_docs)]

/// The `transform-plugin` world: map, flat-map, filter, filter-map, map-partitions.
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform-plugin",
    });
}

/// The `packed-transform-plugin` world: a transform whose batches cross
/// packed into byte lists (the Python and JavaScript SDKs'), sharing the types and `log`
/// bindings of [`transform`].
pub mod packed_transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "packed-transform-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

/// The `reducer-plugin` world, sharing the types and `log` bindings of
/// [`transform`].
pub mod reducer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "reducer-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

/// The `state-plugin` world: update-state-by-key and map-with-state.
pub mod state {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "state-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

/// The `migrating-state-plugin` world: a state plugin that also exports
/// `state-migration`.
pub mod migrating_state {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "migrating-state-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

/// The `co-transform-plugin` world: transform-with over two inputs.
pub mod co_transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "co-transform-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

/// The `sink-plugin` world: a sink written as a plugin.
pub mod sink {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "sink-plugin",
        with: {
            "weir:plugin/types": super::transform::weir::plugin::types,
            "weir:plugin/log": super::transform::weir::plugin::log,
        },
    });
}

pub use transform::weir::plugin::log;
pub use transform::weir::plugin::types;

/// The worlds of the frozen `weir:plugin@0.1.0`.
pub mod v0_1 {
    /// The 0.1 `types`: the 0.2 types, but for the 0.1 `plugin-info`.
    pub mod types {
        pub use super::super::types::*;

        /// What a 0.1 plugin says about itself (no `state-version`).
        #[derive(
            wasmtime::component::ComponentType,
            wasmtime::component::Lift,
            wasmtime::component::Lower,
            Clone,
            Debug,
        )]
        #[component(record)]
        pub struct PluginInfo {
            #[component(name = "name")]
            pub name: String,
            #[component(name = "version")]
            pub version: String,
            #[component(name = "kind")]
            pub kind: PluginKind,
            #[component(name = "sdk-version")]
            pub sdk_version: String,
        }
    }

    /// The 0.1 `transform-plugin` world.
    pub mod transform {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "transform-plugin",
            with: {
                "weir:plugin/types": super::types,
            },
        });
    }

    /// The 0.1 `reducer-plugin` world.
    pub mod reducer {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "reducer-plugin",
            with: {
                "weir:plugin/types": super::types,
                "weir:plugin/log": super::transform::weir::plugin::log,
            },
        });
    }

    /// The 0.1 `state-plugin` world.
    pub mod state {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "state-plugin",
            with: {
                "weir:plugin/types": super::types,
                "weir:plugin/log": super::transform::weir::plugin::log,
            },
        });
    }

    /// The 0.1 `co-transform-plugin` world.
    pub mod co_transform {
        wasmtime::component::bindgen!({
            path: "../wit/v0.1",
            world: "co-transform-plugin",
            with: {
                "weir:plugin/types": super::types,
                "weir:plugin/log": super::transform::weir::plugin::log,
            },
        });
    }

    pub use transform::weir::plugin::log;
}
