//! What the `weir` binary does besides running pipelines: the benchmarks
//! (`state_bench`: keyed state larger than memory; `kafka_bench`: the word
//! count through Kafka next to the same over files).

pub mod bench;
pub mod corpus;
pub mod end_to_end;
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod kafka_bench;
pub mod many;
pub mod process;
pub mod state_bench;
