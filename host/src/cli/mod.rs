//! The parts of the `weir` command line that are more than argument
//! handling: the benchmarks, their inputs, the client of `weir serve`, and
//! `weir run --watch-plugins`.

pub mod bench;
pub mod client;
#[cfg(feature = "kafka")]
pub mod cluster_bench;
pub mod corpus;
pub mod end_to_end;
pub mod ingest;
#[cfg(feature = "kafka")]
pub mod kafka_bench;
pub mod languages_bench;
pub mod many;
pub mod process;
pub mod serve_bench;
pub mod sinks_bench;
pub mod state_bench;
pub mod swap_bench;
pub mod watch;
