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

pub use transform::weir::plugin::log;
pub use transform::weir::plugin::types;
