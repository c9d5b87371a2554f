//! What the `weir` binary does besides running pipelines: the benchmark.

pub mod bench;
