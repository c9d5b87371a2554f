//! The four WIT worlds a plugin can export, as types.
//!
//! Each world is a marker type implementing [`World`]: it names the
//! pre-instance and exports of that world and how to call its lifecycle
//! functions. A world is bound once per contract version a component may be
//! built against (`weir:plugin@0.2.0`, and the frozen `0.1.0`; a state
//! plugin of 0.2 may also export `state-migration`), so its pre-instance and
//! exports are enums with one variant per binding, and the calls of a world
//! (`process`, `reduce`, ...) are methods of its exports enum that take the
//! same Rust types whichever version answers. An
//! [`Instance<W>`](super::instance::Instance) holds the exports of exactly
//! one world, checked once when it is created, so the calls of that world
//! exist only on the matching instance type.

use wasmtime::Store;

use super::bindings::{
    co_transform, migrating_state, packed_transform, reducer, sink, state, transform, types, v0_1,
};
use super::plugin::{FromWit as _, Plugin, PluginInfo, PluginKind, Pre};
use super::state::PluginState;

/// One WIT world a plugin exports. Sealed: the four worlds below are all.
pub trait World: sealed::Bindings + Sized + 'static {
    /// What a plugin of this world is, for errors ("a transform").
    const WHAT: &'static str;
}

pub(super) mod sealed {
    use super::{Plugin, PluginInfo, PluginState, Store};

    /// The `bindgen!` glue of one world (kept out of [`super::World`]'s
    /// public face: it names crate-private types).
    pub trait Bindings {
        /// The world's pre-instantiated component.
        type Pre;
        /// The world's exports, once instantiated.
        type Exports;

        /// `plugin`'s pre-instantiated component as this world, if it exports it.
        fn pre(plugin: &Plugin) -> Option<&Self::Pre>;

        /// Instantiates `pre` in `store`.
        fn instantiate(pre: &Self::Pre, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Exports>;

        /// Calls `describe` (the lifecycle's, or a sink's own).
        fn describe(exports: &Self::Exports, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo>;

        /// Calls `init` (the lifecycle's, or a sink's own) with `config`.
        fn init(
            exports: &Self::Exports,
            store: &mut Store<PluginState>,
            config: &[(String, String)],
        ) -> wasmtime::Result<Result<(), String>>;
    }
}

/// What a `describe` of some contract version returns, as the host's
/// [`PluginInfo`] (the contract it was built against and whether it
/// migrates state are filled in by the loader, which knows its binding).
trait Described {
    fn into_current(self) -> PluginInfo;
}

impl Described for types::PluginInfo {
    fn into_current(self) -> PluginInfo {
        PluginInfo {
            name: self.name,
            version: self.version,
            kind: PluginKind::from_wit(self.kind),
            sdk_version: self.sdk_version,
            state_version: self.state_version,
            contract: super::plugin::CONTRACT_VERSION,
            migrates_state: false,
        }
    }
}

impl Described for v0_1::types::PluginInfo {
    /// A 0.1 plugin has state version 1.
    fn into_current(self) -> PluginInfo {
        types::PluginInfo {
            name: self.name,
            version: self.version,
            kind: self.kind,
            sdk_version: self.sdk_version,
            state_version: 1,
        }
        .into_current()
    }
}

impl Described for sink::exports::weir::plugin::sink::SinkInfo {
    /// A sink keeps no state: state version 1.
    fn into_current(self) -> PluginInfo {
        PluginInfo {
            name: self.name,
            version: self.version,
            kind: PluginKind::Sink,
            sdk_version: self.sdk_version,
            state_version: 1,
            contract: super::plugin::CONTRACT_VERSION,
            migrates_state: false,
        }
    }
}

/// Declares the world marker types, their pre-instance and exports enums
/// (one variant per binding), and their bindings glue.
macro_rules! worlds {
    ($(
        $(#[$doc:meta])*
        $world:ident = $kind:ident, $what:literal, $pre_enum:ident => $exports_enum:ident {
            $($(#[$vdoc:meta])* $variant:ident($pre:ty => $exports:ty),)+
        }
    )*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub enum $world {}

        impl World for $world {
            const WHAT: &'static str = $what;
        }

        #[doc = concat!("The pre-instantiated component of ", $what, ", by the binding it matched.")]
        pub enum $pre_enum {
            $($(#[$vdoc])* $variant($pre),)+
        }

        #[doc = concat!("The exports of an instance of ", $what, ", by binding.")]
        pub enum $exports_enum {
            $($(#[$vdoc])* $variant($exports),)+
        }

        impl sealed::Bindings for $world {
            type Pre = $pre_enum;
            type Exports = $exports_enum;

            fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
                match &plugin.compiled().pre {
                    Pre::$kind(pre) => Some(pre),
                    _ => None,
                }
            }

            fn instantiate(
                pre: &Self::Pre,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<Self::Exports> {
                Ok(match pre {
                    $($pre_enum::$variant(pre) => $exports_enum::$variant(pre.instantiate(store)?),)+
                })
            }

            fn describe(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
            ) -> wasmtime::Result<PluginInfo> {
                match exports {
                    $($exports_enum::$variant(exports) => exports
                        .weir_plugin_lifecycle()
                        .call_describe(store)
                        .map(Described::into_current),)+
                }
            }

            fn init(
                exports: &Self::Exports,
                store: &mut Store<PluginState>,
                config: &[(String, String)],
            ) -> wasmtime::Result<Result<(), String>> {
                // The bindings take the WIT `config` list as a `Vec`.
                let config = config.to_vec();
                match exports {
                    $($exports_enum::$variant(exports) => {
                        exports.weir_plugin_lifecycle().call_init(&mut *store, &config)
                    })+
                }
            }
        }
    )*};
}

worlds! {
    /// The `transform-plugin` world: map, flat-map, filter, filter-map and
    /// map-partitions.
    TransformWorld = Transform, "a transform", TransformPre => TransformExports {
        /// `weir:plugin@0.2.0`.
        Current(transform::TransformPluginPre<PluginState> => transform::TransformPlugin),
        /// `weir:plugin@0.2.0`, batches packed into byte lists.
        Packed(
            packed_transform::PackedTransformPluginPre<PluginState> => packed_transform::PackedTransformPlugin
        ),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::transform::TransformPluginPre<PluginState> => v0_1::transform::TransformPlugin),
    }
    /// The `reducer-plugin` world: combines the values of a key.
    ReducerWorld = Reducer, "a reducer", ReducerPre => ReducerExports {
        /// `weir:plugin@0.2.0`.
        Current(reducer::ReducerPluginPre<PluginState> => reducer::ReducerPlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::reducer::ReducerPluginPre<PluginState> => v0_1::reducer::ReducerPlugin),
    }
    /// The `state-plugin` world: update-state-by-key and map-with-state.
    StateWorld = State, "a stateful function", StatePre => StateExports {
        /// `weir:plugin@0.2.0`, with `state-migration`.
        Migrating(
            migrating_state::MigratingStatePluginPre<PluginState> => migrating_state::MigratingStatePlugin
        ),
        /// `weir:plugin@0.2.0`.
        Current(state::StatePluginPre<PluginState> => state::StatePlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(v0_1::state::StatePluginPre<PluginState> => v0_1::state::StatePlugin),
    }
    /// The `co-transform-plugin` world: transform-with over two inputs.
    CoTransformWorld = CoTransform, "a transform-with", CoTransformPre => CoTransformExports {
        /// `weir:plugin@0.2.0`.
        Current(co_transform::CoTransformPluginPre<PluginState> => co_transform::CoTransformPlugin),
        /// `weir:plugin@0.1.0`.
        V0_1(
            v0_1::co_transform::CoTransformPluginPre<PluginState> => v0_1::co_transform::CoTransformPlugin
        ),
    }
}

/// The `sink-plugin` world: a sink written as a plugin. It has one binding
/// (sinks arrived with `weir:plugin@0.2.0`) and describes and initialises
/// itself through its own `sink` interface rather than `lifecycle`.
#[derive(Debug, Clone, Copy)]
pub enum SinkWorld {}

impl World for SinkWorld {
    const WHAT: &'static str = "a sink";
}

impl sealed::Bindings for SinkWorld {
    type Pre = sink::SinkPluginPre<PluginState>;
    type Exports = sink::SinkPlugin;

    fn pre(plugin: &Plugin) -> Option<&Self::Pre> {
        match &plugin.compiled().pre {
            Pre::Sink(pre) => Some(pre),
            _ => None,
        }
    }

    fn instantiate(pre: &Self::Pre, store: &mut Store<PluginState>) -> wasmtime::Result<Self::Exports> {
        pre.instantiate(store)
    }

    fn describe(exports: &Self::Exports, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo> {
        exports
            .weir_plugin_sink()
            .call_describe(store)
            .map(Described::into_current)
    }

    fn init(
        exports: &Self::Exports,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        exports.weir_plugin_sink().call_init(store, &config.to_vec())
    }
}

/// The result of a batch call: a trap, or the plugin's own answer.
type CallResult<T> = wasmtime::Result<Result<T, types::ProcessError>>;

/// The most records and data bytes a call's output may have (the stage's
/// output limits for the call's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct OutputCeiling {
    /// Most records.
    pub records: u64,
    /// Most data bytes (keys and values).
    pub bytes: u64,
}

impl TransformExports {
    /// `transform.process` (or `packed-transform.process`, which borrows
    /// `input`'s bytes for the call and hands them back: hence `&mut`).
    /// Split records over `ceiling` are refused before the host lays them
    /// out (a byte of them can be a record): the error is a
    /// [`PluginError::OutputLimit`] inside the `wasmtime::Error`.
    pub(super) fn process(
        &self,
        store: &mut Store<PluginState>,
        input: &mut types::Batch,
        ceiling: OutputCeiling,
    ) -> CallResult<types::TransformOutput> {
        match self {
            Self::Current(exports) => exports.weir_plugin_transform().call_process(store, input),
            Self::Packed(exports) => {
                let packed = packing::pack(input);
                let result = exports
                    .weir_plugin_packed_transform()
                    .call_process(store, &packed);
                packing::restore(input, packed);
                match result? {
                    Ok(output) => packing::unpack_output(output, ceiling).map_err(wasmtime::Error::new),
                    Err(error) => Ok(Err(error)),
                }
            }
            Self::V0_1(exports) => exports.weir_plugin_transform().call_process(store, input),
        }
    }
}

/// The `packed-transform` encoding: a batch's numbers as little-endian bytes.
mod packing {
    use super::packed_transform::exports::weir::plugin::packed_transform::{
        PackedBatch, PackedOutput, SplitRecords,
    };
    use super::{OutputCeiling, types};
    use crate::runtime::PluginError;

    /// `batch` packed, its `data` and `flags` moved (not copied) into it.
    pub fn pack(batch: &mut types::Batch) -> PackedBatch {
        PackedBatch {
            data: std::mem::take(&mut batch.data),
            ends: batch.ends.iter().flat_map(|end| end.to_le_bytes()).collect(),
            timestamps: batch.timestamps.iter().flat_map(|t| t.to_le_bytes()).collect(),
            flags: std::mem::take(&mut batch.flags),
        }
    }

    /// Moves the bytes [`pack`] borrowed back into `batch`.
    pub fn restore(batch: &mut types::Batch, packed: PackedBatch) {
        batch.data = packed.data;
        batch.flags = packed.flags;
    }

    /// A packed result in the `transform` form; numbers whose bytes do not
    /// divide into whole numbers fail the batch. Split records over
    /// `ceiling` are an output-limit error, found before they are laid out.
    pub fn unpack_output(
        output: PackedOutput,
        ceiling: OutputCeiling,
    ) -> Result<Result<types::TransformOutput, types::ProcessError>, PluginError> {
        Ok(match output {
            PackedOutput::Records(batch) => unpack_batch(batch).map(types::TransformOutput::Records),
            PackedOutput::Split(split) => split_within(split, ceiling)?.map(types::TransformOutput::Records),
            PackedOutput::Keep(indices) => {
                unpack(&indices, "keep", u32::from_le_bytes).map(types::TransformOutput::Keep)
            }
        })
    }

    /// A packed batch with its numbers unpacked.
    fn unpack_batch(batch: PackedBatch) -> Result<types::Batch, types::ProcessError> {
        Ok(types::Batch {
            ends: unpack(&batch.ends, "ends", u32::from_le_bytes)?,
            timestamps: unpack(&batch.timestamps, "timestamps", i64::from_le_bytes)?,
            data: batch.data,
            flags: batch.flags,
        })
    }

    /// [`unsplit`], unless the records `split` describes are more than
    /// `ceiling` allows: then the output-limit error, without laying them out.
    fn split_within(
        split: SplitRecords,
        ceiling: OutputCeiling,
    ) -> Result<Result<types::Batch, types::ProcessError>, PluginError> {
        let count = memchr::memchr_iter(split.delimiter, &split.data).count();
        let values = split.data.len() - count;
        let size = if split.keyed { 2 * values } else { values };
        let (records, bytes) = (count as u64, size as u64);
        if records > ceiling.records || bytes > ceiling.bytes {
            return Err(PluginError::OutputLimit {
                records,
                bytes,
                max_records: ceiling.records,
                max_bytes: ceiling.bytes,
            });
        }
        Ok(unsplit(split, count, size))
    }

    /// The batch `split` describes (`count` records with `size` bytes of
    /// keys and values, as [`split_within`] counted them): one record per
    /// piece of its data, keyed by its value or without a key, stamped with
    /// its run's timestamp. A description that does not hold together fails
    /// the batch.
    fn unsplit(split: SplitRecords, count: usize, size: usize) -> Result<types::Batch, types::ProcessError> {
        let malformed = |what: String| {
            types::ProcessError::Batch(format!("the plugin returned malformed split records: {what}"))
        };
        let SplitRecords {
            data,
            delimiter,
            keyed,
            run_ends,
            run_timestamps,
        } = split;
        let run_ends = unpack(&run_ends, "run-ends", u32::from_le_bytes)?;
        let run_timestamps = unpack(&run_timestamps, "run-timestamps", i64::from_le_bytes)?;
        if run_ends.len() != run_timestamps.len() {
            return Err(malformed(format!(
                "{} run ends but {} run timestamps",
                run_ends.len(),
                run_timestamps.len()
            )));
        }
        if data.last().is_some_and(|&last| last != delimiter) {
            return Err(malformed(format!(
                "the data does not end with the delimiter {delimiter:#04x}"
            )));
        }
        let mut previous = 0;
        for &end in &run_ends {
            let end = end as usize;
            if end < previous || end > data.len() || (end > 0 && data[end - 1] != delimiter) {
                return Err(malformed(format!(
                    "run end {end} is not a delimiter's end after {previous} within the {} bytes of data",
                    data.len()
                )));
            }
            previous = end;
        }
        if previous != data.len() {
            return Err(malformed(format!(
                "the runs end at {previous}, not at the data's end ({})",
                data.len()
            )));
        }
        if u32::try_from(size).is_err() {
            return Err(malformed(format!("{size} bytes of records do not fit a batch")));
        }
        let mut batch = types::Batch {
            data: Vec::with_capacity(size),
            ends: Vec::with_capacity(2 * count),
            timestamps: Vec::with_capacity(count),
            flags: vec![u8::from(keyed); count],
        };
        let mut runs = run_ends.iter().zip(&run_timestamps);
        let mut run = runs.next();
        let mut start = 0;
        for end in memchr::memchr_iter(delimiter, &data) {
            // The first run that ends after this delimiter holds the record.
            while let Some((&run_end, _)) = run
                && (run_end as usize) <= end
            {
                run = runs.next();
            }
            let (_, &timestamp) = run.expect("the last run ends at the data's end, after every delimiter");
            let value = &data[start..end];
            if keyed {
                batch.data.extend_from_slice(value);
            }
            batch.ends.push(batch.data.len() as u32);
            batch.data.extend_from_slice(value);
            batch.ends.push(batch.data.len() as u32);
            batch.timestamps.push(timestamp);
            start = end + 1;
        }
        Ok(batch)
    }

    /// Little-endian numbers of `N` bytes each.
    fn unpack<T, const N: usize>(
        bytes: &[u8],
        what: &str,
        from_le: fn([u8; N]) -> T,
    ) -> Result<Vec<T>, types::ProcessError> {
        let (numbers, rest) = bytes.as_chunks::<N>();
        if !rest.is_empty() {
            return Err(types::ProcessError::Batch(format!(
                "the plugin returned a malformed packed batch: `{what}` has {} bytes, not a multiple of {N}",
                bytes.len()
            )));
        }
        Ok(numbers.iter().map(|&number| from_le(number)).collect())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// No ceiling a test reaches.
        const UNBOUNDED: OutputCeiling = OutputCeiling {
            records: u64::MAX,
            bytes: u64::MAX,
        };

        /// `output` unpacked under no ceiling.
        fn unpacked(output: PackedOutput) -> Result<types::TransformOutput, types::ProcessError> {
            unpack_output(output, UNBOUNDED).expect("no ceiling")
        }

        #[test]
        fn a_packed_batch_unpacks_to_the_batch_it_came_from() {
            let mut batch = types::Batch {
                data: b"kv".to_vec(),
                ends: vec![1, 2, 2, 2],
                timestamps: vec![-5, i64::MAX],
                flags: vec![1, 0],
            };
            let fields = |b: &types::Batch| {
                (
                    b.data.clone(),
                    b.ends.clone(),
                    b.timestamps.clone(),
                    b.flags.clone(),
                )
            };
            let original = fields(&batch);
            let packed = pack(&mut batch);
            assert_eq!(packed.ends.len(), 16);
            assert_eq!(packed.timestamps.len(), 16);
            let output = unpacked(PackedOutput::Records(packed.clone())).unwrap();
            restore(&mut batch, packed);
            assert_eq!(fields(&batch), original);
            match output {
                types::TransformOutput::Records(unpacked) => assert_eq!(fields(&unpacked), original),
                other => panic!("unexpected {other:?}"),
            }
        }

        fn split(data: &[u8], keyed: bool, runs: &[(u32, i64)]) -> PackedOutput {
            PackedOutput::Split(SplitRecords {
                data: data.to_vec(),
                delimiter: b' ',
                keyed,
                run_ends: runs.iter().flat_map(|(end, _)| end.to_le_bytes()).collect(),
                run_timestamps: runs.iter().flat_map(|(_, time)| time.to_le_bytes()).collect(),
            })
        }

        fn records(output: PackedOutput) -> Result<types::Batch, types::ProcessError> {
            unpacked(output).map(|output| match output {
                types::TransformOutput::Records(batch) => batch,
                other => panic!("unexpected {other:?}"),
            })
        }

        #[test]
        fn split_records_become_one_record_per_piece_with_their_runs_timestamps() {
            // Runs: "ab " at time 7, nothing at 8, " c " at 9 (an empty piece included).
            let keyed = records(split(b"ab  c ", true, &[(3, 7), (3, 8), (6, 9)])).unwrap();
            assert_eq!(keyed.data, b"ababcc");
            assert_eq!(keyed.ends, [2, 4, 4, 4, 5, 6]);
            assert_eq!(keyed.timestamps, [7, 9, 9]);
            assert_eq!(keyed.flags, [1, 1, 1]);

            let unkeyed = records(split(b"ab  c ", false, &[(6, -1)])).unwrap();
            assert_eq!(unkeyed.data, b"abc");
            assert_eq!(unkeyed.ends, [0, 2, 2, 2, 2, 3]);
            assert_eq!(unkeyed.timestamps, [-1, -1, -1]);
            assert_eq!(unkeyed.flags, [0, 0, 0]);

            let none = records(split(b"", true, &[])).unwrap();
            assert!(none.ends.is_empty() && none.data.is_empty());
        }

        #[test]
        fn split_records_that_do_not_hold_together_fail_the_batch() {
            // Data, runs (end, timestamp), what the error says.
            type Case = (&'static [u8], &'static [(u32, i64)], &'static str);
            let cases: [Case; 5] = [
                (b"ab c", &[(4, 0)], "does not end with the delimiter"),
                (b"ab c ", &[(2, 0), (5, 0)], "run end 2 is not a delimiter's end"),
                (
                    b"ab c ",
                    &[(5, 0), (3, 0)],
                    "run end 3 is not a delimiter's end after 5",
                ),
                (
                    b"ab c ",
                    &[(3, 0)],
                    "the runs end at 3, not at the data's end (5)",
                ),
                (b"ab c ", &[(9, 0)], "run end 9"),
            ];
            for (data, runs, expected) in cases {
                match records(split(data, true, runs)) {
                    Err(types::ProcessError::Batch(message)) => {
                        assert!(message.contains(expected), "{message} (expected {expected})")
                    }
                    other => panic!("unexpected {other:?} for {data:?} {runs:?}"),
                }
            }
            let mut uneven = split(b"a ", false, &[(2, 0)]);
            if let PackedOutput::Split(split) = &mut uneven {
                split.run_timestamps.extend(0i64.to_le_bytes());
            }
            let Err(types::ProcessError::Batch(message)) = records(uneven) else {
                panic!("uneven runs accepted")
            };
            assert!(message.contains("1 run ends but 2 run timestamps"), "{message}");
        }

        #[test]
        fn split_records_over_the_ceiling_are_an_output_limit_before_they_are_laid_out() {
            // A byte a record: 1,000 empty records, keyed ones doubling the bytes.
            let spaces = vec![b' '; 1000];
            let ceiling = OutputCeiling {
                records: 999,
                bytes: u64::MAX,
            };
            match unpack_output(split(&spaces, true, &[(1000, 0)]), ceiling) {
                Err(PluginError::OutputLimit {
                    records: 1000,
                    bytes: 0,
                    max_records: 999,
                    ..
                }) => {}
                other => panic!("unexpected {other:?}"),
            }
            let ceiling = OutputCeiling {
                records: 10,
                bytes: 5,
            };
            match unpack_output(split(b"abc ", true, &[(4, 0)]), ceiling) {
                Err(PluginError::OutputLimit {
                    records: 1,
                    bytes: 6,
                    max_bytes: 5,
                    ..
                }) => {}
                other => panic!("unexpected {other:?}"),
            }
            let ceiling = OutputCeiling { records: 1, bytes: 6 };
            assert!(matches!(
                unpack_output(split(b"abc ", true, &[(4, 0)]), ceiling),
                Ok(Ok(types::TransformOutput::Records(batch))) if batch.data == b"abcabc"
            ));
        }

        #[test]
        fn numbers_that_do_not_divide_into_whole_ones_fail_the_batch() {
            let error = unpacked(PackedOutput::Keep(vec![1, 0, 0, 0, 2])).unwrap_err();
            match error {
                types::ProcessError::Batch(message) => {
                    assert!(message.contains("`keep` has 5 bytes"), "{message}")
                }
                other => panic!("unexpected {other:?}"),
            }
            assert!(matches!(
                unpacked(PackedOutput::Keep(vec![7, 0, 0, 0, 9, 0, 0, 0])),
                Ok(types::TransformOutput::Keep(indices)) if indices == [7, 9]
            ));
        }
    }
}

impl ReducerExports {
    /// `reducer.reduce`.
    pub(super) fn reduce(
        &self,
        store: &mut Store<PluginState>,
        values: &types::Values,
        group_ends: &[u32],
    ) -> CallResult<types::Values> {
        match self {
            Self::Current(exports) => exports
                .weir_plugin_reducer()
                .call_reduce(store, values, group_ends),
            Self::V0_1(exports) => exports
                .weir_plugin_reducer()
                .call_reduce(store, values, group_ends),
        }
    }
}

impl StateExports {
    /// `keyed-state.update`.
    pub(super) fn update(
        &self,
        store: &mut Store<PluginState>,
        groups: &types::KeyGroups,
    ) -> CallResult<types::StateUpdate> {
        match self {
            Self::Migrating(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
            Self::Current(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
            Self::V0_1(exports) => exports.weir_plugin_keyed_state().call_update(store, groups),
        }
    }

    /// `state-migration.migrate-state`; `None` when the plugin does not export it.
    pub(super) fn migrate_state(
        &self,
        store: &mut Store<PluginState>,
        from_version: u32,
        states: &types::Values,
    ) -> Option<CallResult<types::Values>> {
        match self {
            Self::Migrating(exports) => Some(exports.weir_plugin_state_migration().call_migrate_state(
                store,
                from_version,
                states,
            )),
            Self::Current(_) | Self::V0_1(_) => None,
        }
    }
}

impl CoTransformExports {
    /// `co-transform.process-pair`.
    pub(super) fn process_pair(
        &self,
        store: &mut Store<PluginState>,
        left: &types::Batch,
        right: &types::Batch,
    ) -> CallResult<types::Batch> {
        match self {
            Self::Current(exports) => exports
                .weir_plugin_co_transform()
                .call_process_pair(store, left, right),
            Self::V0_1(exports) => exports
                .weir_plugin_co_transform()
                .call_process_pair(store, left, right),
        }
    }
}
