//! Write [Weir](https://example.invalid/weir) stream transforms in Rust.
//!
//! A Weir plugin is a WebAssembly component that the Weir host calls once per
//! partition of each micro-batch. This SDK hides the component plumbing: you
//! write a plain function over one record (or one group of values), put an
//! attribute on it, and the SDK generates the batch loop and the exports of
//! the `weir:plugin` worlds around it.
//!
//! | attribute | your function | operator |
//! |---|---|---|
//! | [`#[map]`](macro@map) | `fn(Record<'_>) -> Result<impl IntoOutput, Error>` | one output per input |
//! | [`#[filter]`](macro@filter) | `fn(Record<'_>) -> Result<bool, Error>` | keeps or drops inputs |
//! | [`#[filter_map]`](macro@filter_map) | `fn(Record<'_>) -> Result<Option<impl IntoOutput>, Error>` | zero or one output per input |
//! | [`#[flat_map]`](macro@flat_map) | `fn(Record<'_>, &mut Emitter) -> Result<(), Error>` | any number of outputs per input |
//! | [`#[map_partitions]`](macro@map_partitions) | `fn(&Batch<'_>, &mut Emitter) -> Result<(), Error>` | a whole batch at once |
//! | [`#[reduce]`](macro@reduce) | `fn(Values<'_>) -> Result<impl IntoValue, Error>` | combines the values of a key |
//!
//! A plugin crate holds exactly one of these functions.
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
//! # Testing plugin functions
//!
//! Plugin functions are plain Rust functions: call them in native unit tests
//! with [`Record::new`], [`Emitter::new`] and [`Values::from_storage`].
//! Only [`log`] needs the host.

extern crate self as weir_guest;

#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;
mod config;
mod emit;
mod error;
pub mod json;
pub mod log;
mod record;
mod reduce;

pub use config::{Config, config, split_list};
pub use emit::{Emitter, IntoOutput, Output};
pub use error::Error;
pub use record::{Batch, Record, Records};
pub use reduce::{IntoValue, Values};

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
