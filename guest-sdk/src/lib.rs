//! Write [Weir](https://example.invalid/weir) stream transforms in Rust.
//!
//! A Weir plugin is a WebAssembly component that the Weir host calls once per
//! partition of each micro-batch. This SDK hides the component plumbing: you
//! write a plain function over one record (or one group of values, or one
//! key with its state), put an attribute on it, and the SDK generates the
//! batch loop and the exports of the `weir:plugin` worlds around it.
//!
//! | attribute | your function | operator |
//! |---|---|---|
//! | [`#[map]`](macro@map) | `fn(Record<'_>) -> Result<impl IntoOutput, Error>` | one output per input |
//! | [`#[filter]`](macro@filter) | `fn(Record<'_>) -> Result<bool, Error>` | keeps or drops inputs |
//! | [`#[filter_map]`](macro@filter_map) | `fn(Record<'_>) -> Result<Option<impl IntoOutput>, Error>` | zero or one output per input |
//! | [`#[flat_map]`](macro@flat_map) | `fn(Record<'_>, &mut Emitter) -> Result<(), Error>` | any number of outputs per input |
//! | [`#[map_partitions]`](macro@map_partitions) | `fn(&Batch<'_>, &mut Emitter) -> Result<(), Error>` | a whole batch at once |
//! | [`#[reduce]`](macro@reduce) | `fn(Values<'_>) -> Result<impl IntoValue, Error>` | combines the values of a key |
//! | [`#[update_state]`](macro@update_state) | `fn(&[u8], Values<'_>, Option<S>, &mut Emitter) -> Result<Option<S>, Error>` | per key: new values and state in, new state out (Spark's `updateStateByKey`) |
//! | [`#[map_with_state]`](macro@map_with_state) | `fn(StateEvent<'_>, &mut State<S>, &mut Emitter) -> Result<(), Error>` | per record, with its key's state; timeouts (Spark's `mapWithState`) |
//! | [`#[transform_with]`](macro@transform_with) | `fn(&Batch<'_>, &Batch<'_>, &mut Emitter) -> Result<(), Error>` | one partition of two streams: joins, enrichments |
//! | [`#[sink]`](macro@sink) | `fn(&BatchInfo, &Batch<'_>) -> Result<(), SinkError>` | writes each batch itself, through its sink's capabilities (Spark's `foreachRDD`) |
//!
//! A plugin crate holds exactly one of these functions.
//!
//! The host keeps the state of the stateful kinds between micro-batches, one
//! byte string per key; the SDK reads and writes it for you as JSON through
//! serde, so a state is any `S: Serialize + DeserializeOwned` (see
//! [`State`] and the [`update_state`](macro@update_state) example).
//!
//! Records cross the host/plugin boundary in flat columnar batches; a
//! [`Record`] borrows its key and value from the input batch and an
//! [`Emitter`] appends output records straight into the flat output buffers,
//! so the batch loop allocates nothing per record. Filters return the indices
//! of the records they keep: kept records are never copied through the plugin.
//!
//! Each attribute also accepts:
//! - `init = path::to::function`: a `fn(&Config) -> Result<(), Error>` called
//!   once per instance, before any batch, with the stage's configuration
//!   (already stored: [`config()`] works there too). Parse your settings
//!   there; an error stops the pipeline before it starts, with its message.
//! - `name = "..."` and `version = "..."`: what the plugin reports to the host
//!   (by default the crate's package name and version).
//! - For the stateful kinds, `state_version = N` and `migrate =
//!   path::to::function`: the version of the format of the state the plugin
//!   keeps (1 by default), and how it converts the states an earlier version
//!   kept, so that the host can hot-load it over a running version of
//!   another state version (see [`update_state`](macro@update_state)).
//!
//! An [`Error`] returned for a record reaches the host as a failure of that
//! record (its index in the batch and your message); a panic traps the
//! instance.
//!
//! # Example: a plugin that splits lines into words
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "split-words"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! weir-guest = { path = "../guest-sdk" }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```rust,standalone_crate
//! //! Flat-map: one record per word of each line, keyed by the word.
//! //! Config: `min-length` (default 1), the length of the shortest word kept.
//! use weir_guest::{Config, Emitter, Error, Record};
//!
//! fn setup(config: &Config) -> Result<(), Error> {
//!     // Check the configuration early: a bad value stops the pipeline at start.
//!     config.parse::<usize>("min-length")?;
//!     Ok(())
//! }
//!
//! #[weir_guest::flat_map(init = setup)]
//! fn split(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
//!     let min = weir_guest::config().parse::<usize>("min-length")?.unwrap_or(1);
//!     for word in record.value_str()?.split_whitespace() {
//!         if word.len() >= min {
//!             out.emit_keyed(word, word);
//!         }
//!     }
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! Build it into a component with
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! # or, from anywhere:
//! weir plugin build path/to/split-words
//! ```
//!
//! which writes `target/wasm32-wasip2/release/split_words.wasm`; point a stage
//! of your pipeline file at it.
//!
//! # Keyed state and two inputs
//!
//! The host keeps per-key state between micro-batches and calls a stateful
//! plugin once per partition with every key that has new records (and every
//! key that timed out); the SDK calls your function once per key
//! ([`update_state`](macro@update_state)) or once per record
//! ([`map_with_state`](macro@map_with_state)) and stores what it leaves as
//! the key's state.
//!
//! A running count per key, emitted with every batch that has new records
//! (the emitter stamps records with the key's latest timestamp):
//!
//! ```rust,standalone_crate
//! use weir_guest::{Emitter, Error, Values};
//!
//! #[weir_guest::update_state]
//! fn running_count(key: &[u8], values: Values<'_>, state: Option<u64>, out: &mut Emitter)
//!     -> Result<Option<u64>, Error>
//! {
//!     let count = state.unwrap_or(0) + values.len() as u64;
//!     out.emit_keyed(key, count.to_string());
//!     Ok(Some(count))
//! }
//! # fn main() {}
//! ```
//!
//! The first value of each key, emitted once, and its key forgotten when it
//! times out (with a stage `timeout`):
//!
//! ```rust,standalone_crate
//! use weir_guest::{Emitter, Error, State, StateEvent};
//!
//! #[weir_guest::map_with_state]
//! fn first_seen(event: StateEvent<'_>, state: &mut State<bool>, out: &mut Emitter) -> Result<(), Error> {
//!     if let StateEvent::Record(record) = event {
//!         if !state.exists() {
//!             out.emit_keyed(event.key(), record.value());
//!             state.set(true);
//!         }
//!     }
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! A [`transform_with`](macro@transform_with) plugin sees the same partition
//! of a stage's two inputs at once, for joins and enrichments:
//!
//! ```rust,standalone_crate
//! use std::collections::HashMap;
//!
//! use weir_guest::{Batch, Emitter, Error};
//!
//! /// Appends the right value of the same key to each left value.
//! #[weir_guest::transform_with]
//! fn join(left: &Batch<'_>, right: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
//!     let names: HashMap<&[u8], &[u8]> =
//!         right.iter().filter_map(|r| Some((r.key()?, r.value()))).collect();
//!     for record in left {
//!         if let Some(name) = record.key().and_then(|key| names.get(key)) {
//!             let value = [record.value(), b" ", name].concat();
//!             out.emit_record(record.key(), value, record.timestamp());
//!         }
//!     }
//!     Ok(())
//! }
//! # fn main() {}
//! ```
//!
//! # Testing plugin functions
//!
//! Plugin functions are plain Rust functions: call them in native unit tests
//! with [`Record::new`], [`Batch::new`], [`Emitter::new`],
//! [`Values::from_storage`], [`State::new`] and [`GroupContext::new`].
//! Only [`log`] needs the host.

extern crate self as weir_guest;

#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;
mod config;
mod emit;
mod error;
pub mod http;
pub mod json;
pub mod log;
mod record;
mod reduce;
mod sink;
mod state;

pub use config::{Config, config, split_list};
pub use emit::{Emitter, IntoOutput, Output};
pub use error::Error;
pub use record::{Batch, Record, Records};
pub use reduce::{IntoValue, Values};
pub use sink::{BatchInfo, SinkError};
pub use state::{GroupContext, State, StateEvent};

/// The `serde` crate, for `#[derive(Deserialize)]` with
/// `#[serde(crate = "weir_guest::serde")]` (see [`json`]).
pub use serde;

/// Makes a function the plugin's **map**: one output record per input record.
///
/// The function takes a [`Record`] and returns `Result<T, E>` (or `T`) where
/// `T:` [`IntoOutput`] and `E` is [`Error`] or any standard error. Returning a
/// value alone keeps the input's key and timestamp; a `(key, value)` tuple
/// sets the key; an [`Output`] sets everything.
///
/// ```rust,standalone_crate
/// use weir_guest::{Error, Record};
///
/// /// Upper-cases the value, keeps the key and timestamp.
/// #[weir_guest::map]
/// fn upper(record: Record<'_>) -> Result<String, Error> {
///     Ok(record.value_str()?.to_uppercase())
/// }
/// # fn main() {
/// #     assert_eq!(upper(weir_guest::Record::new(None, b"a", 0)).unwrap(), "A");
/// # }
/// ```
///
/// The function must be a plain synchronous function, not generic (lifetime
/// parameters are fine), with exactly one parameter:
///
/// ```compile_fail
/// #[weir_guest::map]
/// async fn upper(record: weir_guest::Record<'_>) -> Vec<u8> {
///     record.value().to_ascii_uppercase()
/// }
/// ```
///
/// ```compile_fail
/// #[weir_guest::map]
/// fn upper<T: AsRef<[u8]>>(record: T) -> Vec<u8> {
///     record.as_ref().to_ascii_uppercase()
/// }
/// ```
///
/// ```compile_fail
/// #[weir_guest::map]
/// fn upper(record: weir_guest::Record<'_>, extra: u32) -> Vec<u8> {
///     record.value().to_ascii_uppercase()
/// }
/// ```
///
/// Arguments are `init = path`, `name = "..."` and `version = "..."` (see the
/// [crate documentation](crate)); anything else is an error:
///
/// ```compile_fail
/// #[weir_guest::map(setup = my_setup)]
/// fn upper(record: weir_guest::Record<'_>) -> Vec<u8> {
///     record.value().to_ascii_uppercase()
/// }
/// ```
///
/// and it applies to functions only:
///
/// ```compile_fail
/// #[weir_guest::map]
/// struct Upper;
/// ```
pub use weir_guest_macros::map;

/// Makes a function the plugin's **filter**: keeps the input records for
/// which it returns `true`, unchanged (the host keeps them without copying
/// them through the plugin).
///
/// ```rust,standalone_crate
/// use weir_guest::{Error, Record};
///
/// #[weir_guest::filter]
/// fn non_empty(record: Record<'_>) -> Result<bool, Error> {
///     Ok(!record.value().is_empty())
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::filter]
/// fn non_empty() -> bool {
///     true
/// }
/// ```
pub use weir_guest_macros::filter;

/// Makes a function the plugin's **filter-map**: zero or one output record
/// per input record. Returns `Result<Option<T>, E>` (or `Option<T>`) with
/// `T:` [`IntoOutput`], as for [`map`](macro@map).
///
/// ```rust,standalone_crate
/// use weir_guest::{Error, Record};
///
/// /// Parses integers, drops everything else.
/// #[weir_guest::filter_map]
/// fn integers(record: Record<'_>) -> Result<Option<String>, Error> {
///     let text = record.value_str()?.trim();
///     Ok(text.parse::<i64>().ok().map(|n| n.to_string()))
/// }
/// # fn main() {}
/// ```
pub use weir_guest_macros::filter_map;

/// Makes a function the plugin's **flat-map**: any number of output records
/// per input record, appended with the [`Emitter`]'s `emit*` methods
/// (`emit` and `emit_keyed` give them the input record's timestamp).
///
/// ```rust,standalone_crate
/// use weir_guest::{Emitter, Error, Record};
///
/// #[weir_guest::flat_map]
/// fn lines(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
///     for line in record.value().split(|&b| b == b'\n') {
///         out.emit(line);
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::flat_map]
/// fn lines(record: weir_guest::Record<'_>) -> Result<(), weir_guest::Error> {
///     Ok(())
/// }
/// ```
pub use weir_guest_macros::flat_map;

/// Makes a function the plugin's **map-partitions**: it sees a whole input
/// [`Batch`] (one partition of one micro-batch) and emits any records. The
/// emitter's default timestamp is the batch's largest one.
///
/// An error is reported as a failure of the whole batch, unless tied to a
/// record with [`Error::at_record`].
///
/// ```rust,standalone_crate
/// use weir_guest::{Batch, Emitter, Error};
///
/// /// Emits one record per batch: the number of records in it.
/// #[weir_guest::map_partitions]
/// fn count(input: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
///     out.emit(input.len().to_string());
///     Ok(())
/// }
/// # fn main() {}
/// ```
pub use weir_guest_macros::map_partitions;

/// Makes a function the plugin's **reducer**: combines the values of one key
/// ([`Values`], at least one) into one value ([`IntoValue`]). The host calls
/// it for the map-side combine and again to merge partial results, so the
/// combine must be associative and commutative, and its output must be a
/// valid input.
///
/// An error is reported as a failure of the last value the function took
/// from the iterator.
///
/// ```rust,standalone_crate
/// use weir_guest::{Error, Values};
///
/// /// Keeps the longest value.
/// #[weir_guest::reduce]
/// fn longest(values: Values<'_>) -> Result<Vec<u8>, Error> {
///     Ok(values.max_by_key(|v| v.len()).unwrap_or_default().to_vec())
/// }
/// # fn main() {}
/// ```
pub use weir_guest_macros::reduce;

/// Makes a function the plugin's **update-state** function, Spark's
/// `updateStateByKey`: once per micro-batch for every key with new values, it
/// gets the key, its new [`Values`] (in arrival order) and its previous state,
/// emits any records and returns the key's new state; returning `None`
/// removes the key's state.
///
/// ```text
/// fn(key: &[u8], values: Values<'_>, state: Option<S>, out: &mut Emitter) -> Result<Option<S>, Error>
/// fn(key: &[u8], values: Values<'_>, state: Option<S>, out: &mut Emitter, group: &GroupContext<'_>) -> Result<Option<S>, Error>
/// ```
///
/// - `S` is your state type, any `Serialize + DeserializeOwned` type; the SDK
///   stores it as JSON (see [`State`] for deriving the serde traits).
/// - The emitter's default timestamp is the latest timestamp of the key's
///   new values: `out.emit_keyed(key, ...)` stamps a record with it.
/// - The optional fifth parameter, a [`GroupContext`], gives the batch time,
///   the timestamps of the values and whether the key **timed out**: with a
///   stage `timeout`, a key without values for that long gets one last call
///   with no values, and its state is removed afterwards whatever the
///   function returns (a call with no values is always a timeout).
/// - An error fails the key's first value (the host names it, and a
///   dead-letter policy drops it); [`Error::at_record`]`(i)` names the key's
///   `i`-th value instead. An error for a key that timed out fails the call,
///   naming the key. A state the SDK cannot read back fails the key's first
///   value too.
///
/// ```rust,standalone_crate
/// use weir_guest::serde::{Deserialize, Serialize};
/// use weir_guest::{Emitter, Error, Values};
///
/// /// The number of values and the bytes seen per key, so far.
/// #[derive(Default, Serialize, Deserialize)]
/// #[serde(crate = "weir_guest::serde")]
/// struct Seen {
///     values: u64,
///     bytes: u64,
/// }
///
/// #[weir_guest::update_state]
/// fn seen(key: &[u8], values: Values<'_>, state: Option<Seen>, out: &mut Emitter)
///     -> Result<Option<Seen>, Error>
/// {
///     let mut seen = state.unwrap_or_default();
///     for value in values {
///         seen.values += 1;
///         seen.bytes += value.len() as u64;
///     }
///     out.emit_keyed(key, format!("{} values, {} bytes", seen.values, seen.bytes));
///     Ok(Some(seen))
/// }
/// # fn main() {
/// #     let storage = weir_guest::Values::storage(&[b"ab", b"c"]);
/// #     let mut out = Emitter::new();
/// #     let seen = seen(b"k", Values::from_storage(&storage), None, &mut out).unwrap().unwrap();
/// #     assert_eq!((seen.values, seen.bytes), (2, 3));
/// # }
/// ```
///
/// With the context, to see timeouts:
///
/// ```rust,standalone_crate
/// use weir_guest::{Emitter, Error, GroupContext, Values};
///
/// /// Counts values per key; says goodbye to a key that timed out.
/// #[weir_guest::update_state(name = "counter", version = "1.0.0")]
/// fn count(
///     key: &[u8],
///     values: Values<'_>,
///     state: Option<u64>,
///     out: &mut Emitter,
///     group: &GroupContext<'_>,
/// ) -> Result<Option<u64>, Error> {
///     let count = state.unwrap_or(0) + values.len() as u64;
///     if group.timed_out() {
///         out.emit_keyed(key, format!("final count {count}"));
///         return Ok(None);
///     }
///     Ok(Some(count))
/// }
/// # fn main() {
/// #     let storage = weir_guest::Values::storage(&[]);
/// #     let mut out = Emitter::new();
/// #     let group = GroupContext::timeout(5);
/// #     assert_eq!(count(b"k", Values::from_storage(&storage), Some(3), &mut out, &group).unwrap(), None);
/// #     assert_eq!(out.as_batch().get(0).unwrap().value(), b"final count 3");
/// # }
/// ```
///
/// # Changing the state's format
///
/// The host keeps each key's state while a new version of the plugin is
/// hot-loaded. A version whose state has another format says so with
/// `state_version = N` (the default is 1) and converts the states kept by
/// the running version with `migrate = function`, a
/// `fn(from_version: u32, old: Old) -> Result<S, E>` where `Old` is the
/// state type of that version (any `DeserializeOwned`; an enum or
/// `serde_json::Value`-like type when several versions must be read) and
/// `S` this version's. The host converts every key's state, after a dry run
/// on a sample, before the new version's first batch; a swap between state
/// versions to a plugin without `migrate` is refused.
///
/// A running count kept as a number by version 1, as an object now:
///
/// ```rust,standalone_crate
/// use weir_guest::serde::{Deserialize, Serialize};
/// use weir_guest::{Emitter, Error, Values};
///
/// #[derive(Default, Serialize, Deserialize)]
/// #[serde(crate = "weir_guest::serde")]
/// struct Count {
///     values: u64,
///     batches: u64,
/// }
///
/// /// State version 1 kept the number of values alone.
/// fn upgrade(from_version: u32, values: u64) -> Result<Count, Error> {
///     match from_version {
///         1 => Ok(Count { values, batches: 0 }),
///         other => Err(Error::msg(format!("unknown state version {other}"))),
///     }
/// }
///
/// #[weir_guest::update_state(state_version = 2, migrate = upgrade)]
/// fn count(key: &[u8], values: Values<'_>, state: Option<Count>, out: &mut Emitter)
///     -> Result<Option<Count>, Error>
/// {
///     let mut count = state.unwrap_or_default();
///     count.values += values.len() as u64;
///     count.batches += 1;
///     out.emit_keyed(key, count.values.to_string());
///     Ok(Some(count))
/// }
/// # fn main() {
/// #     assert_eq!(upgrade(1, 7).unwrap().values, 7);
/// # }
/// ```
///
/// The migration must return the plugin's state type:
///
/// ```compile_fail
/// fn upgrade(_: u32, old: u64) -> Result<String, weir_guest::Error> {
///     Ok(old.to_string())
/// }
///
/// #[weir_guest::update_state(state_version = 2, migrate = upgrade)]
/// fn count(
///     key: &[u8],
///     values: weir_guest::Values<'_>,
///     state: Option<u64>,
///     out: &mut weir_guest::Emitter,
/// ) -> Option<u64> {
///     Some(state.unwrap_or(0) + values.len() as u64)
/// }
/// ```
///
/// and a plugin that migrates says which state version it writes:
///
/// ```compile_fail
/// fn upgrade(_: u32, old: u64) -> Result<u64, weir_guest::Error> {
///     Ok(old)
/// }
///
/// #[weir_guest::update_state(migrate = upgrade)]
/// fn count(
///     key: &[u8],
///     values: weir_guest::Values<'_>,
///     state: Option<u64>,
///     out: &mut weir_guest::Emitter,
/// ) -> Option<u64> {
///     Some(state.unwrap_or(0) + values.len() as u64)
/// }
/// ```
///
/// The function must return the new state:
///
/// ```compile_fail
/// #[weir_guest::update_state]
/// fn count(
///     key: &[u8],
///     values: weir_guest::Values<'_>,
///     state: Option<u64>,
///     out: &mut weir_guest::Emitter,
/// ) {
/// }
/// ```
///
/// and take the key, values, state and emitter (plus, optionally, the context):
///
/// ```compile_fail
/// #[weir_guest::update_state]
/// fn count(values: weir_guest::Values<'_>, state: Option<u64>) -> Option<u64> {
///     Some(state.unwrap_or(0) + values.len() as u64)
/// }
/// ```
///
/// ```compile_fail
/// #[weir_guest::update_state]
/// fn count(
///     key: &[u8],
///     values: weir_guest::Values<'_>,
///     state: Option<u64>,
///     out: &mut weir_guest::Emitter,
///     group: &weir_guest::GroupContext<'_>,
///     extra: u8,
/// ) -> Option<u64> {
///     None
/// }
/// ```
///
/// A state type must be serializable:
///
/// ```compile_fail
/// struct Opaque;
///
/// #[weir_guest::update_state]
/// fn keep(
///     key: &[u8],
///     values: weir_guest::Values<'_>,
///     state: Option<Opaque>,
///     out: &mut weir_guest::Emitter,
/// ) -> Option<Opaque> {
///     state
/// }
/// ```
pub use weir_guest_macros::update_state;

/// Makes a function the plugin's **map-with-state** function, Spark's
/// `mapWithState` (with `StateSpec.timeout`): called once per record with the
/// [`State`] of the record's key, and once more for a key that timed out.
///
/// ```text
/// fn(event: StateEvent<'_>, state: &mut State<S>, out: &mut Emitter) -> Result<(), Error>
/// fn(event: StateEvent<'_>, state: &mut State<S>, out: &mut Emitter, group: &GroupContext<'_>) -> Result<(), Error>
/// ```
///
/// - The [`StateEvent`] is a [`StateEvent::Record`] (key, value, timestamp) or
///   a [`StateEvent::Timeout`] of the key: with a stage `timeout`, a key
///   without records for that long gets one last call, after which its state
///   is removed whatever the function sets.
/// - The records of one key come in arrival order; the state the function
///   leaves after one record is the state of the next, and of the key's next
///   micro-batch. `S` is any `Serialize + DeserializeOwned` type, stored as
///   JSON; a state the function does not touch is handed back to the host
///   as it came, without being written again.
/// - The emitter's default timestamp is the record's (the batch time for a
///   timeout). The optional fourth parameter, a [`GroupContext`], gives the
///   batch time and the timestamps of the key's records in this batch.
/// - An error fails the record (the host names it, and a dead-letter policy
///   drops it); an error for a timeout fails the call, naming the key. A
///   state the SDK cannot read back or write fails the key's first record.
/// - `state_version = N` and `migrate = function` change the state's format
///   across a hot-load, as for [`update_state`](macro@update_state).
///
/// ```rust,standalone_crate
/// use weir_guest::{Emitter, Error, State, StateEvent};
///
/// /// Emits each record's value with the number of records its key had so
/// /// far; emits the total when the key times out.
/// #[weir_guest::map_with_state]
/// fn numbered(event: StateEvent<'_>, state: &mut State<u64>, out: &mut Emitter) -> Result<(), Error> {
///     match event {
///         StateEvent::Record(record) => {
///             let seen = state.get_or_insert_with(|| 0);
///             *seen += 1;
///             out.emit_keyed(event.key(), format!("{} #{seen}", record.value_str()?));
///         }
///         StateEvent::Timeout { key } => {
///             out.emit_keyed(key, format!("{} records", state.get().copied().unwrap_or(0)));
///         }
///     }
///     Ok(())
/// }
/// # fn main() {
/// #     let mut state = State::new(Some(4));
/// #     let mut out = Emitter::new();
/// #     let record = weir_guest::Record::new(Some(b"k"), b"v", 1);
/// #     numbered(StateEvent::Record(record), &mut state, &mut out).unwrap();
/// #     assert_eq!(out.as_batch().get(0).unwrap().value(), b"v #5");
/// # }
/// ```
///
/// With the context, for the batch time:
///
/// ```rust,standalone_crate
/// use weir_guest::{Emitter, Error, GroupContext, State, StateEvent};
///
/// /// Emits how long ago (in batch time) each key was seen before.
/// #[weir_guest::map_with_state]
/// fn since(
///     event: StateEvent<'_>,
///     state: &mut State<i64>,
///     out: &mut Emitter,
///     group: &GroupContext<'_>,
/// ) -> Result<(), Error> {
///     if let Some(last) = state.get() {
///         out.emit_keyed(event.key(), (group.batch_time() - last).to_string());
///     }
///     state.set(group.batch_time());
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::map_with_state]
/// fn numbered(event: weir_guest::StateEvent<'_>, out: &mut weir_guest::Emitter) {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::map_with_state(timeout = "1s")]
/// fn numbered(
///     event: weir_guest::StateEvent<'_>,
///     state: &mut weir_guest::State<u64>,
///     out: &mut weir_guest::Emitter,
/// ) {
/// }
/// ```
pub use weir_guest_macros::map_with_state;

/// Makes a function the plugin's **transform-with** function: it sees the
/// same partition of this micro-batch of the stage's two inputs, `left` and
/// `right` (both partitioned by key, so equal keys meet in the same call),
/// and emits any records — for joins and enrichments.
///
/// The emitter's default timestamp is the largest timestamp of both inputs.
/// An error is reported as a failure of the whole call, unless tied to a
/// record with [`Error::at_record`] (a record of `left`, by its index) or
/// [`Error::at_right_record`] (a record of `right`, by its index).
///
/// ```rust,standalone_crate
/// use std::collections::HashSet;
///
/// use weir_guest::{Batch, Emitter, Error};
///
/// /// Keeps the left records whose key appears on the right (a semi-join).
/// #[weir_guest::transform_with]
/// fn semi_join(left: &Batch<'_>, right: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
///     let keys: HashSet<&[u8]> = right.iter().filter_map(|r| r.key()).collect();
///     for record in left {
///         if record.key().is_some_and(|key| keys.contains(key)) {
///             out.emit_record(record.key(), record.value(), record.timestamp());
///         }
///     }
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::transform_with]
/// fn semi_join(left: &weir_guest::Batch<'_>, out: &mut weir_guest::Emitter) {}
/// ```
pub use weir_guest_macros::transform_with;

/// Makes a function `fn(&BatchInfo, &Batch<'_>) -> Result<(), SinkError>`
/// the plugin's sink: Spark's `foreachRDD`, sandboxed.
///
/// The host calls it with each batch of the sink's input stream, once per
/// non-empty partition (or once for the whole batch with `per = "batch"`),
/// after the batch's other sinks have written it. The function writes the
/// records wherever the sink's capabilities let it: HTTP(S) to the hosts
/// of its `allow-http` ([`http`]), files under `/out` when it has a
/// `write-dir` (`std::fs`), TCP to the addresses of its `allow-connect`
/// (`std::net::TcpStream`, by IP address: there is no name lookup).
/// Nothing else is reachable.
///
/// [`BatchInfo`] says which batch and partition the records are; a batch
/// written again after a failure or a crash has the same id and records, so
/// writing idempotently by [`BatchInfo::idempotency_key`] makes the sink
/// exactly once. Return a [`SinkError::transient`] failure for the host to
/// retry the write, a [`SinkError::permanent`] one to skip the retries.
///
/// The attribute takes `init`, `name` and `version` like the others; the
/// function may also return nothing.
///
/// ```rust,standalone_crate
/// use weir_guest::http::Request;
/// use weir_guest::{Batch, BatchInfo, Error, SinkError};
///
/// fn setup(config: &weir_guest::Config) -> Result<(), Error> {
///     config.require("url")?;
///     Ok(())
/// }
///
/// /// POSTs each partition as JSON lines, keyed for idempotence.
/// #[weir_guest::sink(init = setup)]
/// fn post(batch: &BatchInfo, records: &Batch<'_>) -> Result<(), SinkError> {
///     let url = weir_guest::config().require("url")?;
///     let mut body = String::new();
///     for record in records {
///         // `["key","value"]` per line.
///         body.push_str(&weir_guest::json::to_string(&(record.key_str()?, record.value_str()?))?);
///         body.push('\n');
///     }
///     Request::post(url)
///         .header("idempotency-key", batch.idempotency_key())
///         .body(body)
///         .send()?
///         .error_for_status()?;
///     Ok(())
/// }
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// #[weir_guest::sink]
/// fn write(records: &weir_guest::Batch<'_>) {}
/// ```
pub use weir_guest_macros::sink;
