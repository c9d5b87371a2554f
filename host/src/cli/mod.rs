//! What the `weir` binary does besides running pipelines: the benchmarks.

pub mod bench;
pub mod corpus;
pub mod end_to_end;
pub mod ingest;
pub mod many;
pub mod process;
