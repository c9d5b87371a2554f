//! What the `weir` binary does besides running pipelines: the benchmarks.

pub mod bench;
pub mod many;
