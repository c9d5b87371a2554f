//! What the `weir` binary does besides running pipelines: the benchmarks
//! (`state_bench`: keyed state larger than memory).

pub mod bench;
pub mod many;
pub mod state_bench;
