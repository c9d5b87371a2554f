//! # Weir
//!
//! A micro-batch stream processing engine whose user transforms are
//! sandboxed WebAssembly components.
//!
//! Receivers ([`source`]) pull records from sockets, directories, stdin, a
//! generator, Kafka, Redis streams or ZeroMQ; the [`batcher`] cuts the stream into micro-batches on a batch
//! interval; each batch is split into partitions ([`record::Batch`]) and the
//! pipeline's stream graph ([`pipeline`]) runs its [`operator`]s on every
//! partition in parallel, calling plugins through the Wasm [`runtime`];
//! results go to [`sink`]s (console, files on disk or S3, Kafka, Redis,
//! HTTP, Elasticsearch). The pipeline itself is described by a TOML file
//! ([`config`]). The [`engine`] runs many pipelines at once on one Wasm
//! runtime and one worker pool, each reachable through a handle while it
//! runs.
//!
//! The library reads no environment variables: the `weir` CLI reads them
//! and passes what they say in ([`engine::EngineOptions`],
//! [`failpoint::arm`]).

pub mod batcher;
pub mod calendar;
pub mod checkpoint;
#[cfg(feature = "kafka")]
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod failpoint;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "object-store")]
pub mod objects;
pub mod operator;
pub mod partition;
pub mod pipeline;
pub mod record;
pub mod redis_client;
pub mod runtime;
pub mod server;
pub mod sink;
pub mod source;
pub mod state;
pub mod tools;
pub mod ui;
