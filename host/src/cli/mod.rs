//! What the `weir` binary does besides running pipelines: the benchmarks
//! (`state_bench`: keyed state larger than memory).

pub mod bench;
pub mod corpus;
pub mod end_to_end;
pub mod ingest;
pub mod many;
pub mod process;
pub mod state_bench;
