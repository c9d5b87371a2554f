//! The machinery behind the attribute macros: the generated bindings and the
//! batch loops. Not a public API: the macros' expansions are its only users.

pub use wit_bindgen;

// The worlds `weir:plugin/transform-plugin`, `reducer-plugin`, `state-plugin`
// and `co-transform-plugin` all export `lifecycle`; generating them here would
// define wit-bindgen's `#[macro_export]`ed lifecycle export macro several times
// in this crate. So the SDK generates partial worlds instead, each exporting a
// distinct interface: a plugin crate invokes the lifecycle export macro plus
// the transform, reducer, keyed-state or co-transform one, and the component's
// world is their union, which is exactly one of the four plugin worlds (the
// host only sees interface names). Only these partial worlds live in this
// inline package; the interfaces and types come from `wit` (a link to the
// repository's WIT package, packaged with the crate), and every world
// but the first reuses the first one's `types` and `log` bindings (`with:`),
// so a `wit::Batch` is one Rust type whichever export it crosses.

/// Bindings of `weir:plugin/types` and `weir:plugin/log` (shared by all the
/// partial worlds), and of the `weir:plugin/transform` export.
pub mod transform_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world transform-exports {
                import weir:plugin/log@0.2.0;
                export weir:plugin/transform@0.2.0;
            }
        ",
        world: "transform-exports",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_transform",
        default_bindings_module: "weir_guest::__private::transform_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/reducer` export.
pub mod reducer_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world reducer-exports {
                import weir:plugin/log@0.2.0;
                export weir:plugin/reducer@0.2.0;
            }
        ",
        world: "reducer-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
            "weir:plugin/log@0.2.0": super::transform_bindings::weir::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "__export_reducer",
        default_bindings_module: "weir_guest::__private::reducer_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/keyed-state` export (update-state and map-with-state).
pub mod state_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world state-exports {
                import weir:plugin/log@0.2.0;
                export weir:plugin/keyed-state@0.2.0;
            }
        ",
        world: "state-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
            "weir:plugin/log@0.2.0": super::transform_bindings::weir::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "__export_state",
        default_bindings_module: "weir_guest::__private::state_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/state-migration` export (a stateful plugin
/// with `migrate = ...`).
pub mod state_migration_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world state-migration-exports {
                export weir:plugin/state-migration@0.2.0;
            }
        ",
        world: "state-migration-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_state_migration",
        default_bindings_module: "weir_guest::__private::state_migration_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/co-transform` export (transform-with).
pub mod co_transform_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world co-transform-exports {
                import weir:plugin/log@0.2.0;
                export weir:plugin/co-transform@0.2.0;
            }
        ",
        world: "co-transform-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
            "weir:plugin/log@0.2.0": super::transform_bindings::weir::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "__export_co_transform",
        default_bindings_module: "weir_guest::__private::co_transform_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/lifecycle` export.
pub mod lifecycle_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world lifecycle-exports {
                export weir:plugin/lifecycle@0.2.0;
            }
        ",
        world: "lifecycle-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
        },
        pub_export_macro: true,
        export_macro_name: "__export_lifecycle",
        default_bindings_module: "weir_guest::__private::lifecycle_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings of the `weir:plugin/sink` export (a whole world of its own: a
/// sink exports only `sink`, which has its own `describe` and `init`).
pub mod sink_bindings {
    wit_bindgen::generate!({
        path: "wit",
        inline: "
            package weir:guest-sdk;
            world sink-exports {
                import weir:plugin/log@0.2.0;
                export weir:plugin/sink@0.2.0;
            }
        ",
        world: "sink-exports",
        with: {
            "weir:plugin/types@0.2.0": super::transform_bindings::weir::plugin::types,
            "weir:plugin/log@0.2.0": super::transform_bindings::weir::plugin::log,
        },
        pub_export_macro: true,
        export_macro_name: "__export_sink",
        default_bindings_module: "weir_guest::__private::sink_bindings",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

pub use sink_bindings::exports::weir::plugin::sink::{
    BatchInfo as WitBatchInfo, Guest as SinkGuest, SinkInfo, WriteError,
};

pub use co_transform_bindings::exports::weir::plugin::co_transform::Guest as CoTransformGuest;
pub use lifecycle_bindings::exports::weir::plugin::lifecycle::Guest as LifecycleGuest;
pub use reducer_bindings::exports::weir::plugin::reducer::Guest as ReducerGuest;
pub use state_bindings::exports::weir::plugin::keyed_state::Guest as StateGuest;
pub use state_migration_bindings::exports::weir::plugin::state_migration::Guest as StateMigrationGuest;
pub use transform_bindings::exports::weir::plugin::transform::Guest as TransformGuest;
pub use transform_bindings::weir::plugin::types as wit;

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeOwned;
pub use weir_abi::Kind;
use weir_abi::{GROUP_HAS_STATE, GROUP_TIMED_OUT, STATE_KEEP};

use crate::state::{self, GroupContext, State, StateEvent};
use crate::{Batch, Config, Emitter, Error, Record, Values};

/// The signature of an `init = ...` function.
pub type InitFn = fn(&Config) -> Result<(), Error>;

/// The version of this SDK, reported by `describe`.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// `lifecycle.describe`.
pub fn describe(name: &str, version: &str, kind: Kind, state_version: u32) -> wit::PluginInfo {
    wit::PluginInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        kind: wit_kind(kind),
        sdk_version: SDK_VERSION.to_owned(),
        state_version,
    }
}

/// `state-migration.migrate-state`: decodes each state as the `Old` that
/// `migrate` takes (JSON, as the SDK stores states), calls it with
/// `from_version`, and encodes what it returns as the new state. An error
/// (the user's, or a state that is not an `Old`) names the state's index.
pub fn run_migrate_state<Old, S, E>(
    from_version: u32,
    states: wit::Values,
    migrate: impl Fn(u32, Old) -> Result<S, E>,
) -> Result<wit::Values, wit::ProcessError>
where
    Old: DeserializeOwned,
    S: Serialize,
    E: Into<Error>,
{
    let mut out = wit::Values {
        data: Vec::with_capacity(states.data.len() + 16 * states.ends.len()),
        ends: Vec::with_capacity(states.ends.len()),
    };
    let mut start = 0usize;
    for (index, &end) in states.ends.iter().enumerate() {
        let bytes = states
            .data
            .get(start..end as usize)
            .ok_or_else(|| wit::ProcessError::Batch("malformed states".into()))?;
        start = end as usize;
        let migrated = state::decode::<Old>(bytes)
            .and_then(|old| migrate(from_version, old).map_err(Into::into))
            .and_then(|new| state::encode(&new, &mut out.data));
        if let Err(error) = migrated {
            return Err(wit::ProcessError::Record(wit::RecordFailure {
                index: index as u32,
                message: format!("cannot migrate the state from state version {from_version}: {error}"),
            }));
        }
        out.ends.push(out.data.len() as u32);
    }
    Ok(out)
}

/// The WIT `plugin-kind` of `kind` (here, where the bindings are).
fn wit_kind(kind: Kind) -> wit::PluginKind {
    match kind {
        Kind::Map => wit::PluginKind::Map,
        Kind::FlatMap => wit::PluginKind::FlatMap,
        Kind::Filter => wit::PluginKind::Filter,
        Kind::FilterMap => wit::PluginKind::FilterMap,
        Kind::MapPartitions => wit::PluginKind::MapPartitions,
        Kind::Reducer => wit::PluginKind::Reducer,
        Kind::UpdateState => wit::PluginKind::UpdateState,
        Kind::MapWithState => wit::PluginKind::MapWithState,
        Kind::TransformWith => wit::PluginKind::TransformWith,
        Kind::Sink => unreachable!("a sink describes itself through `sink.describe`"),
    }
}

/// `sink.describe`.
pub fn describe_sink(name: &str, version: &str) -> SinkInfo {
    SinkInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        sdk_version: SDK_VERSION.to_owned(),
    }
}

/// Converts a sink function's error.
#[inline(always)]
pub fn lift_sink<E: Into<crate::SinkError>>(result: Result<(), E>) -> Result<(), crate::SinkError> {
    result.map_err(Into::into)
}

/// `sink.write`: calls `f` once with the batch's description and records.
pub fn run_sink(
    info: WitBatchInfo,
    records: wit::Batch,
    f: impl FnOnce(&crate::BatchInfo, &Batch<'_>) -> Result<(), crate::SinkError>,
) -> Result<(), WriteError> {
    let batch = Batch::new(&records.data, &records.ends, &records.timestamps, &records.flags)
        .map_err(|e| WriteError::Permanent(format!("malformed batch: {e}")))?;
    let info = crate::BatchInfo::from_wit(info);
    f(&info, &batch).map_err(crate::SinkError::into_wit)
}

/// `lifecycle.init`: stores the configuration, then runs the plugin's init function.
pub fn init(config: wit::Config, init: Option<InitFn>) -> Result<(), String> {
    let config = crate::config::store(Config::new(config)).map_err(|e| e.to_string())?;
    match init {
        Some(init) => init(config).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Ends a call through `Result` for user functions without a `Result` return type.
#[inline(always)]
pub fn ok<T>(value: T) -> Result<T, Error> {
    Ok(value)
}

/// Converts a user function's error (an [`Error`] or a standard error).
#[inline(always)]
pub fn lift<T, E: Into<Error>>(result: Result<T, E>) -> Result<T, Error> {
    result.map_err(Into::into)
}

/// How much output a per-record transform is expected to produce.
#[derive(Clone, Copy, Debug)]
pub enum Expect {
    /// At most one output record per input record, about the same size.
    OneToOne,
    /// Any number of records per input record (reserves more data).
    Many,
}

fn view(input: &wit::Batch) -> Result<Batch<'_>, wit::ProcessError> {
    Batch::new(&input.data, &input.ends, &input.timestamps, &input.flags)
        .map_err(|e| wit::ProcessError::Batch(e.to_string()))
}

fn record_failure(error: Error, index: usize) -> wit::ProcessError {
    let index = error.record_index().unwrap_or(index);
    wit::ProcessError::Record(wit::RecordFailure {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        message: error.to_string(),
    })
}

fn into_batch(out: Emitter) -> wit::Batch {
    let (data, ends, timestamps, flags) = out.into_parts();
    wit::Batch {
        data,
        ends,
        timestamps,
        flags,
    }
}

fn into_wit(out: Emitter) -> wit::TransformOutput {
    wit::TransformOutput::Records(into_batch(out))
}

/// The loop of `map`, `filter_map` and `flat_map`: calls `f` once per input
/// record with the output emitter, whose default timestamp is the record's.
#[inline]
pub fn run_per_record(
    input: wit::Batch,
    expect: Expect,
    mut f: impl FnMut(Record<'_>, &mut Emitter) -> Result<(), Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut out = match expect {
        Expect::OneToOne => Emitter::with_capacity(batch.len(), batch.data_len()),
        Expect::Many => Emitter::with_capacity(batch.len().max(batch.data_len() / 4), 2 * batch.data_len()),
    };
    for record in batch.iter() {
        out.set_default_timestamp(record.timestamp());
        if let Err(error) = f(record, &mut out) {
            return Err(record_failure(error, record.index()));
        }
    }
    Ok(into_wit(out))
}

/// The loop of `filter`: the indices of the records `f` keeps.
#[inline]
pub fn run_filter(
    input: wit::Batch,
    mut f: impl FnMut(Record<'_>) -> Result<bool, Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut keep = Vec::with_capacity(batch.len());
    for record in batch.iter() {
        match f(record) {
            Ok(true) => keep.push(record.index() as u32),
            Ok(false) => {}
            Err(error) => return Err(record_failure(error, record.index())),
        }
    }
    Ok(wit::TransformOutput::Keep(keep))
}

/// Room reserved up front for the output of a call over a whole partition
/// (map-partitions, transform-with), at most: such an input can be as large
/// as the plugin's memory allows, and an output as large as the input
/// reserved before the function runs would halve what fits. Past it the
/// emitter grows as the function emits.
const WHOLE_PARTITION_RESERVE: usize = 1 << 20;

/// The emitter of a call over a whole partition of `records` records with
/// `data_bytes` bytes of keys and values.
fn whole_partition_emitter(records: usize, data_bytes: usize) -> Emitter {
    Emitter::with_capacity(
        records.min(WHOLE_PARTITION_RESERVE / 16),
        data_bytes.min(WHOLE_PARTITION_RESERVE),
    )
}

/// `map_partitions`: one call with the whole batch. The emitter's default
/// timestamp is the batch's largest timestamp.
pub fn run_map_partitions(
    input: wit::Batch,
    f: impl FnOnce(&Batch<'_>, &mut Emitter) -> Result<(), Error>,
) -> Result<wit::TransformOutput, wit::ProcessError> {
    let batch = view(&input)?;
    let mut out = whole_partition_emitter(batch.len(), batch.data_len());
    out.set_default_timestamp(input.timestamps.iter().copied().max().unwrap_or(0));
    match f(&batch, &mut out) {
        Ok(()) => Ok(into_wit(out)),
        Err(error) => match error.record_index() {
            Some(index) => Err(record_failure(error, index)),
            None => Err(wit::ProcessError::Batch(error.to_string())),
        },
    }
}

/// Checks end offsets over `len` items with the ABI's rule (non-decreasing,
/// the last one at `len`); `what` names them in the error.
fn check_ends(ends: &[u32], len: usize, what: &str) -> Result<(), wit::ProcessError> {
    weir_abi::check_ends(ends, len)
        .map_err(|e| wit::ProcessError::Batch(format!("malformed values: {what}: {e}")))
}

/// The loop of `reduce`: calls `f` once per group; `f` appends the group's
/// combined value to the output buffer.
#[inline]
pub fn run_reduce(
    values: wit::Values,
    group_ends: Vec<u32>,
    mut f: impl FnMut(Values<'_>, &mut Vec<u8>) -> Result<(), Error>,
) -> Result<wit::Values, wit::ProcessError> {
    check_ends(&values.ends, values.data.len(), "value end offsets")?;
    check_ends(&group_ends, values.ends.len(), "group ends")?;
    let mut data = Vec::with_capacity(values.data.len().min(16 * group_ends.len()));
    let mut ends = Vec::with_capacity(group_ends.len());
    let last_taken = Cell::new(0);
    let mut first = 0usize;
    for &group_end in &group_ends {
        let group_end = group_end as usize;
        let start = if first == 0 { 0 } else { values.ends[first - 1] };
        last_taken.set(first);
        let group = Values::new(
            &values.data,
            &values.ends[first..group_end],
            start,
            first,
            Some(&last_taken),
        );
        if let Err(error) = f(group, &mut data) {
            return Err(record_failure(error, last_taken.get()));
        }
        ends.push(u32::try_from(data.len()).expect("reduce output over 4 GiB"));
        first = group_end;
    }
    Ok(wit::Values { data, ends })
}

/// `transform_with`: one call with both inputs. The emitter's default
/// timestamp is the largest timestamp of both.
pub fn run_transform_with(
    left: wit::Batch,
    right: wit::Batch,
    f: impl FnOnce(&Batch<'_>, &Batch<'_>, &mut Emitter) -> Result<(), Error>,
) -> Result<wit::Batch, wit::ProcessError> {
    fn side<'a>(input: &'a wit::Batch, name: &str) -> Result<Batch<'a>, wit::ProcessError> {
        Batch::new(&input.data, &input.ends, &input.timestamps, &input.flags)
            .map_err(|e| wit::ProcessError::Batch(format!("{name} input: {e}")))
    }
    let (left_view, right_view) = (side(&left, "left")?, side(&right, "right")?);
    let mut out = whole_partition_emitter(
        left_view.len() + right_view.len(),
        left_view.data_len() + right_view.data_len(),
    );
    let latest = left.timestamps.iter().chain(&right.timestamps).copied().max();
    out.set_default_timestamp(latest.unwrap_or(0));
    match f(&left_view, &right_view, &mut out) {
        Ok(()) => Ok(into_batch(out)),
        Err(error) => match (error.record_index(), error.right_record_index()) {
            (Some(index), _) => Err(record_failure(error, index)),
            (None, Some(index)) => Err(record_failure(error, left_view.len() + index)),
            (None, None) => Err(wit::ProcessError::Batch(error.to_string())),
        },
    }
}

fn malformed_groups(what: String) -> wit::ProcessError {
    wit::ProcessError::Batch(format!("malformed key groups: {what}"))
}

/// Checks that a `key-groups` is consistent: one key, one state, one flag
/// and one group end per group, one timestamp per value, offsets in order
/// and within their buffers.
fn check_groups(groups: &wit::KeyGroups) -> Result<(), wit::ProcessError> {
    let count = groups.group_ends.len();
    for (what, len) in [
        ("keys", groups.keys.ends.len()),
        ("states", groups.states.ends.len()),
        ("group flags", groups.group_flags.len()),
    ] {
        if len != count {
            return Err(malformed_groups(format!("{len} {what} for {count} groups")));
        }
    }
    if groups.timestamps.len() != groups.values.ends.len() {
        return Err(malformed_groups(format!(
            "{} timestamps for {} values",
            groups.timestamps.len(),
            groups.values.ends.len()
        )));
    }
    check_ends(&groups.keys.ends, groups.keys.data.len(), "key end offsets")?;
    check_ends(&groups.values.ends, groups.values.data.len(), "value end offsets")?;
    check_ends(&groups.states.ends, groups.states.data.len(), "state end offsets")?;
    check_ends(&groups.group_ends, groups.values.ends.len(), "group ends")
}

/// Item `index` of a checked `values`.
fn item(values: &wit::Values, index: usize) -> &[u8] {
    let start = if index == 0 {
        0
    } else {
        values.ends[index - 1] as usize
    };
    &values.data[start..values.ends[index] as usize]
}

/// One group (one key) of a checked `key-groups`.
struct Group<'a> {
    key: &'a [u8],
    /// The index of the group's first value in `groups.values`.
    first: usize,
    /// The index after the group's last value.
    end: usize,
    /// The key's state before this batch, if it has one.
    state: Option<&'a [u8]>,
    context: GroupContext<'a>,
    values: &'a wit::Values,
}

impl<'a> Group<'a> {
    /// Group `index` of `groups`, whose values start at `first`.
    fn new(groups: &'a wit::KeyGroups, index: usize, first: usize) -> Self {
        let end = groups.group_ends[index] as usize;
        let flags = groups.group_flags[index];
        let state = (flags & GROUP_HAS_STATE != 0).then(|| item(&groups.states, index));
        Group {
            key: item(&groups.keys, index),
            first,
            end,
            state,
            context: GroupContext::with(
                &groups.timestamps[first..end],
                groups.batch_time,
                flags & GROUP_TIMED_OUT != 0,
            ),
            values: &groups.values,
        }
    }

    /// The group's values.
    fn values(&self) -> Values<'a> {
        let start = if self.first == 0 {
            0
        } else {
            self.values.ends[self.first - 1]
        };
        Values::new(
            &self.values.data,
            &self.values.ends[self.first..self.end],
            start,
            self.first,
            None,
        )
    }

    /// The key's state before this batch, decoded.
    fn decode_state<S: DeserializeOwned>(&self) -> Result<Option<S>, Error> {
        self.state.map(state::decode).transpose()
    }

    /// A failure of this group: of its value at `position` (among its own
    /// values) when the error names one, else of its first value; of the
    /// whole call when it has no value (a timed-out key), naming the key.
    fn failure(&self, error: Error) -> wit::ProcessError {
        let position = error.record_index().filter(|&p| p < self.end - self.first);
        if self.first < self.end {
            let index = self.first + position.unwrap_or(0);
            wit::ProcessError::Record(wit::RecordFailure {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                message: error.to_string(),
            })
        } else {
            self.key_failure(error)
        }
    }

    /// A failure of the whole call, naming the key.
    fn key_failure(&self, error: Error) -> wit::ProcessError {
        let timed_out = if self.context.timed_out() {
            " (timed out)"
        } else {
            ""
        };
        wit::ProcessError::Batch(format!(
            "key {:?}{timed_out}: {error}",
            String::from_utf8_lossy(self.key)
        ))
    }
}

/// The `states` and `state-flags` of a `state-update`, built group by group.
struct NewStates {
    data: Vec<u8>,
    ends: Vec<u32>,
    flags: Vec<u8>,
}

impl NewStates {
    fn with_capacity(groups: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(groups),
            flags: Vec::with_capacity(groups),
        }
    }

    fn end(&mut self, flag: u8) {
        self.ends
            .push(u32::try_from(self.data.len()).expect("states over 4 GiB"));
        self.flags.push(flag);
    }

    /// Keeps these encoded bytes as the key's state.
    fn keep_bytes(&mut self, bytes: &[u8]) {
        state::make_room(&mut self.data, bytes.len());
        self.data.extend_from_slice(bytes);
        self.end(STATE_KEEP);
    }

    /// Keeps `state` as the key's state, encoded.
    fn keep<S: Serialize>(&mut self, state: &S) -> Result<(), Error> {
        state::encode(state, &mut self.data)?;
        self.end(STATE_KEEP);
        Ok(())
    }

    /// Removes the key's state.
    fn remove(&mut self) {
        self.end(0);
    }

    fn into_update(self, out: Emitter) -> wit::StateUpdate {
        wit::StateUpdate {
            states: wit::Values {
                data: self.data,
                ends: self.ends,
            },
            state_flags: self.flags,
            output: into_batch(out),
        }
    }
}

/// Loops over the groups of a checked `key-groups`.
fn for_each_group<'a>(
    groups: &'a wit::KeyGroups,
    mut f: impl FnMut(Group<'a>) -> Result<(), wit::ProcessError>,
) -> Result<(), wit::ProcessError> {
    let mut first = 0;
    for index in 0..groups.group_ends.len() {
        let group = Group::new(groups, index, first);
        first = group.end;
        f(group)?;
    }
    Ok(())
}

/// The loop of `update_state`: calls `f` once per group with the key, its
/// new values, its decoded state and the group's context; `f` returns the
/// key's new state (`None` removes it). The emitter's default timestamp is
/// the group's latest value timestamp (the batch time for a timed-out key).
/// A timed-out key's state is removed whatever `f` returns.
pub fn run_update_state<S, F>(groups: wit::KeyGroups, mut f: F) -> Result<wit::StateUpdate, wit::ProcessError>
where
    S: Serialize + DeserializeOwned,
    F: FnMut(&[u8], Values<'_>, Option<S>, &mut Emitter, &GroupContext<'_>) -> Result<Option<S>, Error>,
{
    check_groups(&groups)?;
    let count = groups.group_ends.len();
    let mut out = Emitter::with_capacity(count, groups.keys.data.len() + 16 * count);
    let mut states = NewStates::with_capacity(count, groups.states.data.len() + 16 * count);
    for_each_group(&groups, |group| {
        let context = &group.context;
        out.set_default_timestamp(context.latest_timestamp().unwrap_or(context.batch_time()));
        let result = group
            .decode_state()
            .and_then(|state| f(group.key, group.values(), state, &mut out, context))
            .and_then(|new| match new {
                Some(new) if !context.timed_out() => states.keep(&new),
                _ => {
                    states.remove();
                    Ok(())
                }
            });
        result.map_err(|error| group.failure(error))
    })?;
    Ok(states.into_update(out))
}

/// The loop of `map_with_state`: per group, decodes the key's state, calls
/// `f` once per value of the group in order (a [`StateEvent::Record`] whose
/// index is the value's index in `groups.values`), then once more with
/// [`StateEvent::Timeout`] when the key timed out, and encodes the state
/// back (handing back the original bytes when `f` touched nothing; removing
/// it after a timeout). The emitter's default timestamp is the record's, or
/// the batch time for a timeout.
pub fn run_map_with_state<S, F>(
    groups: wit::KeyGroups,
    mut f: F,
) -> Result<wit::StateUpdate, wit::ProcessError>
where
    S: Serialize + DeserializeOwned,
    F: FnMut(StateEvent<'_>, &mut State<S>, &mut Emitter, &GroupContext<'_>) -> Result<(), Error>,
{
    check_groups(&groups)?;
    let count = groups.group_ends.len();
    let mut out = Emitter::with_capacity(groups.values.ends.len(), groups.values.data.len());
    let mut states = NewStates::with_capacity(count, groups.states.data.len() + 16 * count);
    for_each_group(&groups, |group| {
        let context = &group.context;
        let mut state = State::new(group.decode_state().map_err(|error| group.failure(error))?);
        let timestamps = context.timestamps().iter().copied();
        for ((value, timestamp), index) in group.values().zip(timestamps).zip(group.first..) {
            out.set_default_timestamp(timestamp);
            let record = Record::at(Some(group.key), value, timestamp, index);
            f(StateEvent::Record(record), &mut state, &mut out, context)
                .map_err(|error| record_failure(error, index))?;
        }
        if context.timed_out() {
            out.set_default_timestamp(context.batch_time());
            let event = StateEvent::Timeout { key: group.key };
            if let Err(error) = f(event, &mut state, &mut out, context) {
                return Err(match error.record_index() {
                    Some(index) => record_failure(error, index),
                    None => group.key_failure(error),
                });
            }
            states.remove();
        } else if !state.changed() {
            match group.state {
                Some(bytes) => states.keep_bytes(bytes),
                None => states.remove(),
            }
        } else {
            match state.get() {
                Some(value) => states.keep(value).map_err(|error| group.failure(error))?,
                None => states.remove(),
            }
        }
        Ok(())
    })?;
    Ok(states.into_update(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntoOutput;

    fn input(records: &[(Option<&str>, &str, i64)]) -> wit::Batch {
        let mut out = Emitter::new();
        for (key, value, ts) in records {
            out.emit_record(key.map(str::as_bytes), value, *ts);
        }
        let (data, ends, timestamps, flags) = out.into_parts();
        wit::Batch {
            data,
            ends,
            timestamps,
            flags,
        }
    }

    fn records(output: wit::TransformOutput) -> Vec<(Option<String>, String, i64)> {
        let wit::TransformOutput::Records(b) = output else {
            panic!("expected records");
        };
        Batch::new(&b.data, &b.ends, &b.timestamps, &b.flags)
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.key_str().unwrap().map(str::to_owned),
                    r.value_str().unwrap().to_owned(),
                    r.timestamp(),
                )
            })
            .collect()
    }

    #[test]
    fn per_record_loop() {
        let batch = input(&[(Some("k"), "a b", 1), (None, "c", 2)]);
        let output = run_per_record(batch, Expect::Many, |record, out| {
            for word in record.value_str()?.split(' ') {
                out.emit_keyed(word, word.to_uppercase());
            }
            record.value_str()?.emit_into(&record, out);
            Ok(())
        })
        .unwrap();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            records(output),
            [
                (Some(s("a")), s("A"), 1),
                (Some(s("b")), s("B"), 1),
                (Some(s("k")), s("a b"), 1),
                (Some(s("c")), s("C"), 2),
                (None, s("c"), 2),
            ]
        );
    }

    #[test]
    fn record_errors_name_the_record() {
        let batch = input(&[(None, "ok", 1), (None, "bad", 2)]);
        let error = run_per_record(batch, Expect::OneToOne, |record, out| {
            if record.value() == b"bad" {
                return Err(Error::msg("refused"));
            }
            out.emit(record.value());
            Ok(())
        })
        .unwrap_err();
        match error {
            wit::ProcessError::Record(failure) => {
                assert_eq!(failure.index, 1);
                assert_eq!(failure.message, "refused");
            }
            wit::ProcessError::Batch(message) => panic!("batch error {message}"),
        }
    }

    #[test]
    fn malformed_batches_are_batch_errors() {
        let mut batch = input(&[(None, "x", 1)]);
        batch.ends.pop();
        assert!(matches!(
            run_filter(batch, |_| Ok(true)),
            Err(wit::ProcessError::Batch(_))
        ));
    }

    #[test]
    fn filter_keeps_indices() {
        let batch = input(&[(None, "a", 1), (None, "bb", 2), (None, "c", 3)]);
        let output = run_filter(batch, |r| Ok(r.value().len() == 1)).unwrap();
        assert!(matches!(output, wit::TransformOutput::Keep(keep) if keep == [0, 2]));
    }

    #[test]
    fn map_partitions_sees_the_batch() {
        let batch = input(&[(None, "a", 5), (None, "b", 3)]);
        let output = run_map_partitions(batch, |batch, out| {
            out.emit(batch.len().to_string());
            Ok(())
        })
        .unwrap();
        assert_eq!(records(output), [(None, "2".to_owned(), 5)]);

        let batch = input(&[(None, "a", 5)]);
        let error = run_map_partitions(batch, |_, _| Err(Error::msg("whole"))).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Batch(m) if m == "whole"));
    }

    #[test]
    fn reduce_groups() {
        let (data, ends) = Values::storage(&[b"1", b"2", b"3", b"x", b"5"]);
        let sum = |values: Values<'_>, out: &mut Vec<u8>| {
            let mut total = 0i64;
            for value in values {
                total += std::str::from_utf8(value)
                    .unwrap()
                    .parse::<i64>()
                    .map_err(|_| Error::msg("nan"))?;
            }
            crate::IntoValue::append_to(total, out);
            Ok(())
        };
        let (first_three, first_three_ends) = Values::storage(&[b"1", b"2", b"3"]);
        let output = run_reduce(
            wit::Values {
                data: first_three,
                ends: first_three_ends,
            },
            vec![2, 3],
            sum,
        )
        .unwrap();
        assert_eq!(output.data, b"33");
        assert_eq!(output.ends, [1, 2]);

        let error = run_reduce(wit::Values { data, ends }, vec![2, 5], sum).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Record(f) if f.index == 3 && f.message == "nan"));
    }

    #[test]
    fn reduce_rejects_bad_groups() {
        let (data, ends) = Values::storage(&[b"1"]);
        let error = run_reduce(wit::Values { data, ends }, vec![2], |_, _| Ok(())).unwrap_err();
        assert!(matches!(error, wit::ProcessError::Batch(_)));
    }

    fn batch(records: &[(Option<&str>, &str, i64)]) -> wit::Batch {
        input(records)
    }

    /// One group: key, values with timestamps, state, timed out.
    type GroupSpec<'a> = (&'a str, &'a [(&'a str, i64)], Option<&'a str>, bool);

    fn key_groups(groups: &[GroupSpec<'_>], batch_time: i64) -> wit::KeyGroups {
        let keys: Vec<&[u8]> = groups.iter().map(|g| g.0.as_bytes()).collect();
        let values: Vec<&[u8]> = groups.iter().flat_map(|g| g.1).map(|v| v.0.as_bytes()).collect();
        let states: Vec<&[u8]> = groups.iter().map(|g| g.2.unwrap_or("").as_bytes()).collect();
        let (keys_data, keys_ends) = Values::storage(&keys);
        let (values_data, values_ends) = Values::storage(&values);
        let (states_data, states_ends) = Values::storage(&states);
        let mut group_ends = Vec::new();
        let mut end = 0;
        for group in groups {
            end += group.1.len() as u32;
            group_ends.push(end);
        }
        wit::KeyGroups {
            keys: wit::Values {
                data: keys_data,
                ends: keys_ends,
            },
            values: wit::Values {
                data: values_data,
                ends: values_ends,
            },
            timestamps: groups.iter().flat_map(|g| g.1).map(|v| v.1).collect(),
            group_ends,
            states: wit::Values {
                data: states_data,
                ends: states_ends,
            },
            group_flags: groups
                .iter()
                .map(|g| u8::from(g.2.is_some()) | (u8::from(g.3) << 1))
                .collect(),
            batch_time,
        }
    }

    /// The new states (`None`: removed) and the output records of an update.
    type Update = (Vec<Option<String>>, Vec<(Option<String>, String, i64)>);

    fn update(update: wit::StateUpdate) -> Update {
        let wit::StateUpdate {
            states,
            state_flags,
            output,
        } = update;
        assert_eq!(states.ends.len(), state_flags.len());
        let new_states = (0..state_flags.len())
            .map(|g| {
                let state = String::from_utf8(item(&states, g).to_vec()).unwrap();
                match state_flags[g] {
                    STATE_KEEP => Some(state),
                    0 => {
                        assert_eq!(state, "", "a removed state has no bytes");
                        None
                    }
                    flags => panic!("reserved state flags {flags}"),
                }
            })
            .collect();
        (new_states, records(wit::TransformOutput::Records(output)))
    }

    fn record_error(error: wit::ProcessError) -> (u32, String) {
        match error {
            wit::ProcessError::Record(failure) => (failure.index, failure.message),
            wit::ProcessError::Batch(message) => panic!("batch error {message}"),
        }
    }

    fn batch_error(error: wit::ProcessError) -> String {
        match error {
            wit::ProcessError::Batch(message) => message,
            wit::ProcessError::Record(failure) => panic!("record error {failure:?}"),
        }
    }

    fn s(text: &str) -> String {
        text.to_owned()
    }

    /// A running sum, emitting the new total per key.
    fn running_sum(
        key: &[u8],
        values: Values<'_>,
        state: Option<i64>,
        out: &mut Emitter,
        group: &GroupContext<'_>,
    ) -> Result<Option<i64>, Error> {
        let mut total = state.unwrap_or(0);
        for (i, value) in values.enumerate() {
            let text = std::str::from_utf8(value)?;
            total += text.parse::<i64>().map_err(|e| Error::from(e).at_record(i))?;
        }
        if group.timed_out() {
            out.emit_keyed(key, format!("timeout {total}"));
        } else if total == 0 {
            return Ok(None);
        } else {
            out.emit_keyed(key, total.to_string());
        }
        Ok(Some(total))
    }

    #[test]
    fn update_state_loop() {
        let groups = key_groups(
            &[
                ("a", &[("1", 10), ("2", 30), ("3", 20)], None, false),
                ("b", &[("5", 40)], Some("10"), false),
                ("c", &[], Some("7"), true),
                ("d", &[("-4", 50)], Some("4"), false),
            ],
            100,
        );
        let output = run_update_state(groups, running_sum).unwrap();
        assert_eq!(
            update(output),
            (
                vec![Some(s("6")), Some(s("15")), None, None],
                vec![
                    // The latest timestamp of the group, not the last one.
                    (Some(s("a")), s("6"), 30),
                    (Some(s("b")), s("15"), 40),
                    // A timed-out key: the batch time, and its state is removed.
                    (Some(s("c")), s("timeout 7"), 100),
                ]
            )
        );
    }

    #[test]
    fn update_state_sees_timeouts_and_the_batch_time() {
        let groups = key_groups(&[("a", &[("x", 1)], None, false), ("b", &[], None, true)], 77);
        let mut seen = Vec::new();
        run_update_state(groups, |key, values, state: Option<u8>, _, group| {
            seen.push((
                key.to_vec(),
                values.len(),
                state,
                group.timed_out(),
                group.batch_time(),
                group.timestamps().to_vec(),
            ));
            Ok(Some(1))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                (b"a".to_vec(), 1, None, false, 77, vec![1]),
                (b"b".to_vec(), 0, None, true, 77, vec![]),
            ]
        );
    }

    #[test]
    fn update_state_errors_name_the_value() {
        // The group's first value by default...
        let groups = key_groups(
            &[
                ("a", &[("1", 1)], None, false),
                ("b", &[("2", 1), ("3", 1)], None, false),
            ],
            0,
        );
        let error = run_update_state(groups, |key, _, _: Option<u8>, _, _| {
            if key == b"b" {
                weir_guest::bail!("refused");
            }
            Ok(None)
        })
        .unwrap_err();
        assert_eq!(record_error(error), (1, s("refused")));

        // ... or the value the function names, by its position in the group.
        let groups = key_groups(
            &[
                ("a", &[("1", 1)], None, false),
                ("b", &[("2", 1), ("x", 1)], None, false),
            ],
            0,
        );
        let (index, message) = record_error(run_update_state(groups, running_sum).unwrap_err());
        assert_eq!(index, 2);
        assert!(message.contains("invalid digit"), "{message}");

        // A timed-out key has no value to name: the call fails, naming the key.
        let groups = key_groups(&[("a", &[("1", 1)], None, false), ("gone", &[], None, true)], 0);
        let error = run_update_state(groups, |_, values, _: Option<u8>, _, _| {
            weir_guest::ensure!(values.len() > 0, "no values");
            Ok(None)
        })
        .unwrap_err();
        assert_eq!(batch_error(error), r#"key "gone" (timed out): no values"#);
    }

    #[test]
    fn update_state_reports_unreadable_and_unwritable_states() {
        let groups = key_groups(
            &[
                ("a", &[("1", 1)], None, false),
                ("b", &[("2", 1)], Some("{"), false),
            ],
            0,
        );
        let (index, message) =
            record_error(run_update_state(groups, |_, _, state: Option<i64>, _, _| Ok(state)).unwrap_err());
        assert_eq!(index, 1);
        assert!(message.starts_with("cannot read the key's state"), "{message}");

        let groups = key_groups(&[("a", &[("1", 1)], None, false)], 0);
        let error = run_update_state(
            groups,
            |_, _, _: Option<std::collections::HashMap<(u8, u8), u8>>, _, _| Ok(Some([((1, 2), 3)].into())),
        )
        .unwrap_err();
        let (index, message) = record_error(error);
        assert_eq!(index, 0);
        assert!(message.starts_with("cannot write the key's state"), "{message}");
    }

    #[test]
    fn malformed_key_groups_are_batch_errors() {
        let good = || key_groups(&[("a", &[("1", 1), ("2", 2)], Some("1"), false)], 0);
        let mut cases = Vec::new();
        let mut groups = good();
        groups.timestamps.pop();
        cases.push(groups);
        let mut groups = good();
        groups.group_flags.push(0);
        cases.push(groups);
        let mut groups = good();
        groups.group_ends[0] = 3;
        cases.push(groups);
        let mut groups = good();
        groups.states.ends[0] = 9;
        cases.push(groups);
        let mut groups = good();
        groups.keys.ends.clear();
        cases.push(groups);
        let mut groups = good();
        groups.values.ends = vec![1, 0];
        cases.push(groups);
        for groups in cases {
            let error = run_update_state(groups.clone(), |_, _, s: Option<i64>, _, _| Ok(s)).unwrap_err();
            assert!(batch_error(error).starts_with("malformed"));
            let error = run_map_with_state(groups, |_, _: &mut State<i64>, _, _| Ok(())).unwrap_err();
            assert!(batch_error(error).starts_with("malformed"));
        }
        assert!(run_update_state(good(), |_, _, s: Option<i64>, _, _| Ok(s)).is_ok());
    }

    #[test]
    fn map_with_state_loop() {
        let groups = key_groups(
            &[
                ("u1", &[("a", 5), ("b", 3)], Some("[1]"), false),
                ("u2", &[("c", 7)], None, false),
                // Untouched: handed back as it came (not re-encoded).
                ("u3", &[("keep", 8)], Some("[ 9 ]"), false),
                ("u4", &[], Some("[4,4]"), true),
                ("u5", &[("drop", 9)], Some("[5]"), false),
            ],
            1000,
        );
        let mut calls = Vec::new();
        let output = run_map_with_state(groups, |event, state: &mut State<Vec<i64>>, out, group| {
            calls.push((
                event.key().to_vec(),
                event.record().map(|r| r.index()),
                group.batch_time(),
            ));
            match event {
                StateEvent::Record(record) if record.value() == b"keep" => {}
                StateEvent::Record(record) if record.value() == b"drop" => {
                    state.remove();
                }
                StateEvent::Record(record) => {
                    assert_eq!(record.key(), Some(event.key()));
                    state.get_or_insert_with(Vec::new).push(record.timestamp());
                    out.emit(record.value());
                }
                StateEvent::Timeout { key } => {
                    let sum: i64 = state.get().unwrap().iter().sum();
                    out.emit_keyed(key, sum.to_string());
                    state.set(vec![0]);
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(
            calls,
            [
                (b"u1".to_vec(), Some(0), 1000),
                (b"u1".to_vec(), Some(1), 1000),
                (b"u2".to_vec(), Some(2), 1000),
                (b"u3".to_vec(), Some(3), 1000),
                (b"u4".to_vec(), None, 1000),
                (b"u5".to_vec(), Some(4), 1000),
            ]
        );
        assert_eq!(
            update(output),
            (
                vec![Some(s("[1,5,3]")), Some(s("[7]")), Some(s("[ 9 ]")), None, None],
                vec![
                    (None, s("a"), 5),
                    (None, s("b"), 3),
                    (None, s("c"), 7),
                    (Some(s("u4")), s("8"), 1000),
                ]
            )
        );
    }

    #[test]
    fn map_with_state_errors_name_the_record() {
        let groups = key_groups(
            &[
                ("a", &[("1", 1)], None, false),
                ("b", &[("2", 1), ("bad", 1)], None, false),
            ],
            0,
        );
        let error = run_map_with_state(groups, |event, _: &mut State<u8>, _, _| {
            weir_guest::ensure!(event.record().unwrap().value() != b"bad", "bad record");
            Ok(())
        })
        .unwrap_err();
        assert_eq!(record_error(error), (2, s("bad record")));

        let groups = key_groups(&[("a", &[("1", 1)], Some("x"), false)], 0);
        let (index, message) =
            record_error(run_map_with_state(groups, |_, _: &mut State<u8>, _, _| Ok(())).unwrap_err());
        assert_eq!(index, 0);
        assert!(message.starts_with("cannot read the key's state"), "{message}");

        let groups = key_groups(&[("t", &[], Some("1"), true)], 0);
        let error =
            run_map_with_state(groups, |_, _: &mut State<u8>, _, _| Err(Error::msg("late"))).unwrap_err();
        assert_eq!(batch_error(error), r#"key "t" (timed out): late"#);
    }

    #[test]
    fn transform_with_sees_both_inputs() {
        let left = batch(&[(Some("k"), "l0", 5), (None, "l1", 2)]);
        let right = batch(&[(Some("k"), "r0", 9)]);
        let output = run_transform_with(left, right, |left, right, out| {
            for record in left.iter().chain(right) {
                out.emit_record(record.key(), record.value(), record.timestamp());
            }
            out.emit(format!("{}+{}", left.len(), right.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            records(wit::TransformOutput::Records(output)),
            [
                (Some(s("k")), s("l0"), 5),
                (None, s("l1"), 2),
                (Some(s("k")), s("r0"), 9),
                (None, s("2+1"), 9),
            ]
        );
    }

    #[test]
    fn transform_with_errors() {
        let left = || batch(&[(None, "a", 1), (None, "b", 1)]);
        let right = || batch(&[(None, "c", 1), (None, "d", 1)]);
        let error = run_transform_with(left(), right(), |_, _, _| Err(Error::msg("l").at_record(1)));
        assert_eq!(record_error(error.unwrap_err()), (1, s("l")));
        let error = run_transform_with(left(), right(), |_, _, _| Err(Error::msg("r").at_right_record(1)));
        assert_eq!(record_error(error.unwrap_err()), (3, s("r")));
        let error = run_transform_with(left(), right(), |_, _, _| Err(Error::msg("all")));
        assert_eq!(batch_error(error.unwrap_err()), "all");

        let mut bad = right();
        bad.flags.pop();
        let error = run_transform_with(left(), bad, |_, _, _| Ok(()));
        assert!(batch_error(error.unwrap_err()).starts_with("right input: malformed batch"));
    }

    #[test]
    fn every_kind_is_the_wit_case_of_the_same_name() {
        for kind in Kind::ALL {
            assert_eq!(format!("{:?}", wit_kind(kind)), format!("PluginKind::{kind:?}"));
        }
    }

    #[test]
    fn migrate_state_converts_each_state_and_names_one_it_cannot_read() {
        let states = |text: &[&str]| {
            let mut values = wit::Values {
                data: Vec::new(),
                ends: Vec::new(),
            };
            for state in text {
                values.data.extend_from_slice(state.as_bytes());
                values.ends.push(values.data.len() as u32);
            }
            values
        };
        let pair = |from: u32, old: i64| Ok::<_, Error>((old, from));
        let migrated = run_migrate_state(3, states(&["1", "-20"]), pair).unwrap();
        assert_eq!(migrated.data, b"[1,3][-20,3]");
        assert_eq!(migrated.ends, [5, 12]);
        match run_migrate_state(3, states(&["1", "\"x\""]), pair) {
            Err(wit::ProcessError::Record(failure)) => {
                assert_eq!(failure.index, 1);
                assert!(failure.message.contains("state version 3"), "{}", failure.message);
            }
            other => panic!("expected the second state to fail: {other:?}"),
        }
        let refuse = |_: u32, _: i64| Err::<i64, _>(Error::msg("no"));
        assert!(matches!(
            run_migrate_state(1, states(&["1"]), refuse),
            Err(wit::ProcessError::Record(wit::RecordFailure { index: 0, .. }))
        ));
    }

    #[test]
    fn describe_reports_the_sdk_version() {
        let info = describe("p", "1.2.3", Kind::Filter, 1);
        assert_eq!(info.sdk_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(info.name, "p");
    }
}
