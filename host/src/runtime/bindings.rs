//! Generated bindings of the WIT worlds in `wit/` (kept alone in this module
//! so that edits elsewhere do not re-run `bindgen!`).

#![allow(missing_docs)]

/// The `transform-plugin` world: map, flat-map, filter, filter-map, map-partitions.
pub mod transform {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "transform-plugin",
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

pub use transform::weir::plugin::log;
pub use transform::weir::plugin::types;
