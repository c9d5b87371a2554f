//! Reduce-by-key: a map-side combine in every partition, a hash shuffle by
//! key, and a merge of the partial results in every target partition.
//!
//! The host groups records by key (keys never enter the plugin); the combine
//! function only sees values. Built-in reducers fold values straight into a
//! hash map of accumulators; plugin and native reducers ([`GroupReduceFn`])
//! get each partition's values grouped by key in one flat call.

use std::fmt;
use std::sync::Arc;

use super::builtin::{self, Accumulator};
use super::count_table::{CountTable, PackedKey};
use super::keyed::FastMap;
use super::{Operator, OperatorError, PartitionContext, PieceFold, Planning};
use crate::config::BuiltinReducer;
use crate::partition::Partitioning;
use crate::record::{Batch, Partition, RecordRef};
use crate::runtime::{PluginError, ReducerWorld};

/// Values grouped by key, in flat form: the values of group `g` are
/// `values[group_ends[g-1]..group_ends[g]]`, value `i` is
/// `data[ends[i-1]..ends[i]]`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupedValues {
    /// Bytes of every value.
    pub data: Vec<u8>,
    /// End offset of each value in `data`.
    pub ends: Vec<u32>,
    /// End index of each group in `ends`.
    pub group_ends: Vec<u32>,
}

/// A function that combines each group of values into one value.
pub trait GroupReduceFn: Send + Sync + fmt::Debug {
    /// Returns one value per group, in flat form (`data`, `ends`).
    fn reduce(
        &self,
        groups: GroupedValues,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Vec<u8>, Vec<u32>), OperatorError>;

    /// Checks before the pipeline starts that the function can run. Default:
    /// nothing to check.
    fn check(&self) -> Result<(), OperatorError> {
        Ok(())
    }

    /// The slot of the Wasm plugin it calls, if any. Default: none.
    fn plugin_slot(&self) -> Option<Arc<super::BindingSlot>> {
        None
    }
}

/// The combine function of a reduce-by-key.
#[derive(Debug, Clone)]
pub enum Reducer {
    /// One of the host's own: count, sum, min, max.
    Builtin(BuiltinReducer),
    /// A plugin or native function over groups of values.
    Groups(Arc<dyn GroupReduceFn>),
}

impl Reducer {
    /// The slot of its Wasm plugin, if it calls one.
    pub fn plugin_slots(&self) -> Vec<Arc<super::BindingSlot>> {
        match self {
            Self::Builtin(_) => Vec::new(),
            Self::Groups(function) => function.plugin_slot().into_iter().collect(),
        }
    }
}

/// Which half of a reduce-by-key an operator is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Map-side: combine the records of each input partition.
    Combine,
    /// After the shuffle: merge the partial results of each key.
    Merge,
}

/// One half of a reduce-by-key stage.
#[derive(Debug)]
pub struct ReduceByKey {
    reducer: Reducer,
    phase: Phase,
    partitions: usize,
    /// Keys the last folded partition held: the next fold's tables start
    /// that large instead of growing to it again.
    keys_seen: std::sync::atomic::AtomicUsize,
}

impl ReduceByKey {
    /// The `phase` half of a reduce-by-key into `partitions` partitions.
    pub fn new(reducer: Reducer, phase: Phase, partitions: usize) -> Self {
        Self {
            reducer,
            phase,
            partitions,
            keys_seen: std::sync::atomic::AtomicUsize::new(1024),
        }
    }

    /// Folds every record of `chunk` into `accumulators`. An error names
    /// the record by its index in `chunk`.
    #[inline]
    fn fold_builtin(
        &self,
        reducer: BuiltinReducer,
        accumulators: &mut Accumulators,
        chunk: &Batch,
    ) -> Result<(), (builtin::ValueError, usize)> {
        let merging = self.phase == Phase::Merge;
        // One loop per kind of fold, so the per-record work is known at
        // compile time: counting records (the word count's combine) is an
        // increment, not a dispatch on the reducer and the phase.
        match (reducer, merging) {
            (BuiltinReducer::Count, false) => {
                let Accumulators { counts, keyed } = accumulators;
                counts.count_chunk(chunk, |record| {
                    let counted = keyed.fold_record(
                        record,
                        |_| Ok(Accumulator::Count(1)),
                        |accumulator, _| {
                            if let Accumulator::Count(count) = accumulator {
                                *count += 1;
                            }
                            Ok(())
                        },
                    );
                    debug_assert!(counted.is_ok(), "counting cannot fail");
                });
                Ok(())
            }
            _ => accumulators.fold_chunk(
                chunk,
                |value| builtin::start(reducer, value, merging),
                |accumulator, value| builtin::fold(reducer, accumulator, value, merging),
            ),
        }
    }

    /// The error for record `index` of `chunk`, which starts `offset`
    /// records into the call's input.
    #[cold]
    fn fold_error(
        &self,
        reducer: BuiltinReducer,
        chunk: &Batch,
        (error, index): (builtin::ValueError, usize),
        offset: usize,
    ) -> OperatorError {
        value_error(
            reducer,
            chunk.get(index),
            error,
            self.phase == Phase::Merge,
            offset + index,
        )
    }

    fn reduce_builtin(&self, reducer: BuiltinReducer, chunks: &[Batch]) -> Result<Batch, OperatorError> {
        let records = chunks.iter().map(Batch::len).sum::<usize>();
        let counting = reducer == BuiltinReducer::Count && self.phase == Phase::Combine;
        let mut accumulators = Accumulators::with_capacity(records.min(1024), counting);
        let mut offset = 0;
        for chunk in chunks {
            self.fold_builtin(reducer, &mut accumulators, chunk)
                .map_err(|error| self.fold_error(reducer, chunk, error, offset))?;
            offset += chunk.len();
        }
        Ok(accumulators.into_batch(self.phase))
    }

    fn reduce_groups(
        &self,
        function: &dyn GroupReduceFn,
        input: &Batch,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<Batch, OperatorError> {
        // Pass 1: a group id per record, in order of first appearance.
        let mut ids: FastMap<Option<&[u8]>, u32> = FastMap::default();
        let mut group_of = Vec::with_capacity(input.len());
        let mut group_keys: Vec<Option<&[u8]>> = Vec::new();
        let mut group_sizes: Vec<u32> = Vec::new();
        let mut group_timestamps: Vec<i64> = Vec::new();
        for record in input.iter() {
            let next = group_keys.len() as u32;
            let id = *ids.entry(record.key).or_insert(next);
            if id == next {
                group_keys.push(record.key);
                group_sizes.push(0);
                group_timestamps.push(record.timestamp);
            }
            group_sizes[id as usize] += 1;
            let ts = &mut group_timestamps[id as usize];
            *ts = (*ts).max(record.timestamp);
            group_of.push(id);
        }
        if group_keys.is_empty() {
            return Ok(Batch::new());
        }
        // Pass 2: counting sort of the values into group order.
        let mut group_ends = Vec::with_capacity(group_sizes.len());
        let mut next_slot = Vec::with_capacity(group_sizes.len());
        let mut total = 0u32;
        for &size in &group_sizes {
            next_slot.push(total);
            total += size;
            group_ends.push(total);
        }
        let mut order = vec![0u32; input.len()];
        for (index, &group) in group_of.iter().enumerate() {
            order[next_slot[group as usize] as usize] = index as u32;
            next_slot[group as usize] += 1;
        }
        let mut groups = GroupedValues {
            data: Vec::with_capacity(input.data_bytes()),
            ends: Vec::with_capacity(input.len()),
            group_ends,
        };
        for &index in &order {
            groups.data.extend_from_slice(input.get(index as usize).value);
            groups.ends.push(groups.data.len() as u32);
        }
        let (data, ends) = function.reduce(groups, ctx).map_err(|error| match error {
            // The plugin counts values in grouped order; report the record's
            // position in the partition, as every other operator does.
            OperatorError::Plugin {
                error: PluginError::Record { index, message },
                record: None,
            } if (index as usize) < order.len() => {
                let position = order[index as usize];
                let record = input.get(position as usize);
                OperatorError::Plugin {
                    error: PluginError::Record {
                        index: position,
                        message,
                    },
                    record: Some(format!(
                        "value {:?} of {}",
                        String::from_utf8_lossy(record.value),
                        record.describe()
                    )),
                }
            }
            OperatorError::Plugin {
                error: PluginError::Record { index, .. },
                ..
            } => OperatorError::Plugin {
                error: PluginError::Batch(format!("the reducer named value {index}, which does not exist")),
                record: None,
            },
            other => other,
        })?;
        let mut output = Batch::with_capacity(group_keys.len(), data.len());
        let mut start = 0usize;
        for (group, &end) in ends.iter().enumerate() {
            output.push(
                group_keys[group],
                &data[start..end as usize],
                group_timestamps[group],
            );
            start = end as usize;
        }
        Ok(output)
    }
}

/// The accumulators of one partition's combine or merge, by key. A count's
/// combine counts keys of 1 to 15 bytes (most keys: words, ids, codes) in a
/// [`CountTable`] of its own; everything else goes to [`KeyedAccumulators`].
#[derive(Default)]
struct Accumulators {
    counts: CountTable,
    keyed: KeyedAccumulators,
}

/// Accumulators by key: keys of 1 to 15 bytes are held packed in the table
/// itself ([`PackedKey`]), so finding one hashes two words and compares two words, with no
/// pointer to follow; longer keys are copied once, when first seen.
#[derive(Default)]
struct KeyedAccumulators {
    short: FastMap<PackedKey, (Accumulator, i64)>,
    long: FastMap<Box<[u8]>, (Accumulator, i64)>,
    keyless: Option<(Accumulator, i64)>,
}

impl Accumulators {
    /// Empty, with room for `keys` short keys: in the table of counts
    /// when `counting` (a count's combine), else in the keyed accumulators.
    fn with_capacity(keys: usize, counting: bool) -> Self {
        if counting {
            return Self {
                counts: CountTable::with_capacity(keys),
                keyed: KeyedAccumulators::default(),
            };
        }
        Self {
            counts: CountTable::default(),
            keyed: KeyedAccumulators {
                short: FastMap::with_capacity_and_hasher(keys, Default::default()),
                ..KeyedAccumulators::default()
            },
        }
    }

    /// Keys held.
    fn len(&self) -> usize {
        let keyed = &self.keyed;
        self.counts.len() + keyed.short.len() + keyed.long.len() + usize::from(keyed.keyless.is_some())
    }

    /// Folds every record of `chunk` into the accumulators: `start` makes
    /// the accumulator of a key's first value, `fold` adds each later one.
    /// The timestamp of a key is the largest of its records'. An error
    /// names the record by its index in `chunk`.
    #[inline(always)]
    fn fold_chunk(
        &mut self,
        chunk: &Batch,
        start: impl Fn(&[u8]) -> Result<Accumulator, builtin::ValueError>,
        fold: impl Fn(&mut Accumulator, &[u8]) -> Result<(), builtin::ValueError>,
    ) -> Result<(), (builtin::ValueError, usize)> {
        for (index, record) in chunk.iter().enumerate() {
            self.keyed
                .fold_record(record, &start, &fold)
                .map_err(|error| (error, index))?;
        }
        Ok(())
    }

    /// One record per key: the key, the accumulator, the largest timestamp.
    /// A combine writes accumulators in the binary form of partial results
    /// ([`Accumulator::partial`]); a merge, the final one, as decimal text.
    fn into_batch(self, phase: Phase) -> Batch {
        let groups = self.len();
        let value_bytes = match phase {
            Phase::Combine => builtin::PARTIAL_BYTES,
            Phase::Merge => 8,
        };
        let mut output = Batch::with_capacity(groups, groups * value_bytes);
        let mut text = String::new();
        let mut push = |key: Option<&[u8]>, (accumulator, timestamp): (Accumulator, i64)| match phase {
            Phase::Combine => output.push(key, &accumulator.partial(), timestamp),
            Phase::Merge => {
                use std::fmt::Write;
                text.clear();
                write!(text, "{accumulator}").expect("writing to a String cannot fail");
                output.push(key, text.as_bytes(), timestamp);
            }
        };
        for (key, count, timestamp) in self.counts.drain() {
            let (bytes, len) = key.bytes();
            push(Some(&bytes[..len]), (Accumulator::Count(count), timestamp));
        }
        let keyed = self.keyed;
        for (key, state) in keyed.short {
            let (bytes, len) = key.bytes();
            push(Some(&bytes[..len]), state);
        }
        for (key, state) in keyed.long {
            push(Some(&key), state);
        }
        if let Some(state) = keyed.keyless {
            push(None, state);
        }
        output
    }
}

impl KeyedAccumulators {
    /// Folds one record (see [`Accumulators::fold_chunk`]).
    #[inline(always)]
    fn fold_record(
        &mut self,
        record: RecordRef<'_>,
        start: impl Fn(&[u8]) -> Result<Accumulator, builtin::ValueError>,
        fold: impl Fn(&mut Accumulator, &[u8]) -> Result<(), builtin::ValueError>,
    ) -> Result<(), builtin::ValueError> {
        match record.key {
            Some(key) => match PackedKey::new(key) {
                Some(short) => fold_entry(self.short.entry(short), record, &start, &fold),
                None => match self.long.get_mut(key) {
                    Some((accumulator, timestamp)) => fold(accumulator, record.value).map(|()| {
                        *timestamp = (*timestamp).max(record.timestamp);
                    }),
                    None => start(record.value).map(|accumulator| {
                        self.long.insert(key.into(), (accumulator, record.timestamp));
                    }),
                },
            },
            None => match &mut self.keyless {
                Some((accumulator, timestamp)) => fold(accumulator, record.value).map(|()| {
                    *timestamp = (*timestamp).max(record.timestamp);
                }),
                None => start(record.value).map(|accumulator| {
                    self.keyless = Some((accumulator, record.timestamp));
                }),
            },
        }
    }
}

/// Folds `record` into the accumulator of `entry`, or starts it.
#[inline(always)]
fn fold_entry<K: std::hash::Hash, S: std::hash::BuildHasher>(
    entry: hashbrown::hash_map::Entry<'_, K, (Accumulator, i64), S>,
    record: RecordRef<'_>,
    start: &impl Fn(&[u8]) -> Result<Accumulator, builtin::ValueError>,
    fold: &impl Fn(&mut Accumulator, &[u8]) -> Result<(), builtin::ValueError>,
) -> Result<(), builtin::ValueError> {
    match entry {
        hashbrown::hash_map::Entry::Occupied(mut entry) => {
            let (accumulator, timestamp) = entry.get_mut();
            fold(accumulator, record.value)?;
            *timestamp = (*timestamp).max(record.timestamp);
        }
        hashbrown::hash_map::Entry::Vacant(entry) => {
            entry.insert((start(record.value)?, record.timestamp));
        }
    }
    Ok(())
}

/// Keys a map-side combine holds before it emits what it has as partial
/// results and starts again: with more distinct keys than this in a
/// partition's batch, its memory stays bounded (about 40 bytes a key, plus
/// the bytes of keys over 15 bytes) at the cost of more partials for the merge.
pub const COMBINE_KEYS_MAX: usize = 1 << 18;

/// A built-in combine over every piece of one partition's batch: one table
/// for the whole partition, so each key's partial result is emitted once
/// per batch (and the merge sees one per partition), not once per piece.
struct CombineFold<'a> {
    operator: &'a ReduceByKey,
    reducer: BuiltinReducer,
    accumulators: Accumulators,
    /// Partial results emitted early, each time the table reached
    /// [`COMBINE_KEYS_MAX`] keys.
    emitted: Partition,
}

impl PieceFold for CombineFold<'_> {
    fn absorb(&mut self, piece: Partition, _: &mut PartitionContext<'_>) -> Result<(), OperatorError> {
        let mut offset = 0;
        for chunk in &piece {
            self.operator
                .fold_builtin(self.reducer, &mut self.accumulators, chunk)
                .map_err(|error| self.operator.fold_error(self.reducer, chunk, error, offset))?;
            offset += chunk.len();
            if self.accumulators.len() >= COMBINE_KEYS_MAX {
                let counting = self.reducer == BuiltinReducer::Count;
                let full = std::mem::replace(
                    &mut self.accumulators,
                    Accumulators::with_capacity(1024, counting),
                );
                self.emitted.push(full.into_batch(Phase::Combine));
            }
        }
        Ok(())
    }

    fn finish(self: Box<Self>, _: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let keys = self.accumulators.len().clamp(1024, COMBINE_KEYS_MAX);
        self.operator
            .keys_seen
            .store(keys, std::sync::atomic::Ordering::Relaxed);
        let mut output = self.emitted;
        if self.accumulators.len() > 0 {
            output.push(self.accumulators.into_batch(Phase::Combine));
        }
        Ok(output)
    }
}

/// The error for a value a built-in reducer cannot use; `index` is the
/// record's position in the partition (not given when `merging`, after the
/// shuffle, where values are partial results rather than input records).
#[cold]
pub(super) fn value_error(
    reducer: BuiltinReducer,
    record: RecordRef<'_>,
    error: builtin::ValueError,
    merging: bool,
    index: usize,
) -> OperatorError {
    OperatorError::Value {
        message: format!(
            "reduce-by-key `{}`: the value {:?} of {} {error}",
            reducer_name(reducer),
            String::from_utf8_lossy(record.value),
            record.key.map_or_else(
                || "a record without key".to_owned(),
                |k| format!("key {:?}", String::from_utf8_lossy(k))
            )
        ),
        index: (!merging).then(|| u32::try_from(index).unwrap_or(u32::MAX)),
    }
}

fn reducer_name(reducer: BuiltinReducer) -> &'static str {
    match reducer {
        BuiltinReducer::Count => "count",
        BuiltinReducer::Sum => "sum",
        BuiltinReducer::Min => "min",
        BuiltinReducer::Max => "max",
    }
}

impl Operator for ReduceByKey {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let output = match &self.reducer {
            // One hash map over every chunk: no concatenation.
            Reducer::Builtin(reducer) => self.reduce_builtin(*reducer, &input)?,
            Reducer::Groups(function) => {
                let whole = Batch::concat(&input);
                self.reduce_groups(function.as_ref(), &whole, ctx)?
            }
        };
        Ok(vec![output])
    }

    fn check(&self) -> Result<(), OperatorError> {
        match &self.reducer {
            Reducer::Groups(function) if self.phase == Phase::Combine => function.check(),
            _ => Ok(()),
        }
    }

    fn plugin_slots(&self) -> Vec<Arc<super::BindingSlot>> {
        self.reducer.plugin_slots()
    }

    fn fold_pieces(&self) -> Option<Box<dyn PieceFold + '_>> {
        match (&self.reducer, self.phase) {
            (Reducer::Builtin(reducer), Phase::Combine) => Some(Box::new(CombineFold {
                operator: self,
                reducer: *reducer,
                accumulators: Accumulators::with_capacity(
                    self.keys_seen.load(std::sync::atomic::Ordering::Relaxed),
                    *reducer == BuiltinReducer::Count,
                ),
                emitted: Vec::new(),
            })),
            _ => None,
        }
    }

    fn planning(&self) -> Planning {
        match self.phase {
            // Partial results of pieces are partial results of the
            // partition: the merge after the shuffle combines them all.
            Phase::Combine => Planning::piecewise(),
            Phase::Merge => Planning::partitioned(Partitioning::HashByKey(self.partitions)),
        }
    }
}

/// A reducer implemented by a Wasm plugin.
#[derive(Debug)]
pub struct WasmReducer {
    plugin: super::PluginUse<ReducerWorld>,
}

impl WasmReducer {
    /// Calls the plugin of `plugin` (its configuration and sandbox included).
    pub fn new(plugin: super::PluginUse<ReducerWorld>) -> Self {
        Self { plugin }
    }
}

impl GroupReduceFn for WasmReducer {
    fn check(&self) -> Result<(), OperatorError> {
        self.plugin
            .check()
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    fn plugin_slot(&self) -> Option<Arc<super::BindingSlot>> {
        Some(self.plugin.slot().clone())
    }

    fn reduce(
        &self,
        groups: GroupedValues,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Vec<u8>, Vec<u32>), OperatorError> {
        self.plugin.keep_sample(ctx.batch_id, || {
            super::binding::Sample::of_groups(&groups.data, &groups.ends, &groups.group_ends)
        });
        self.plugin
            .call(ctx.instances, |instance| {
                instance.reduce(groups.data, groups.ends, &groups.group_ends)
            })
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }
}

#[cfg(test)]
mod tests {
    use super::{COMBINE_KEYS_MAX, Phase, ReduceByKey, Reducer};
    use crate::config::BuiltinReducer;
    use crate::operator::builtin::Accumulator;
    use crate::operator::{InstanceSlots, Operator, PartitionContext};
    use crate::record::{Batch, Partition};

    /// Runs `operator` over `input`, whole or (with `fold`) piece by piece
    /// through its fold, as the executor does.
    fn combine(operator: &ReduceByKey, input: Partition, fold: bool) -> Partition {
        let mut instances = InstanceSlots::new();
        let mut ctx = PartitionContext {
            batch_id: 0,
            batch_time: 0,
            left_chunks: 1,
            partition: 0,
            instances: &mut instances,
            dead_letters: Batch::new(),
            failures: 0,
        };
        if !fold {
            return operator.process(input, &mut ctx).unwrap();
        }
        let mut folding = operator.fold_pieces().expect("a built-in combine folds");
        for chunk in input {
            folding.absorb(vec![chunk], &mut ctx).unwrap();
        }
        folding.finish(&mut ctx).unwrap()
    }

    /// Per key, the total of the partials in `output`.
    fn totals(output: &Partition) -> std::collections::BTreeMap<Vec<u8>, u64> {
        let mut totals = std::collections::BTreeMap::new();
        for record in output.iter().flat_map(Batch::iter) {
            let Some(Accumulator::Count(count)) = Accumulator::from_partial(record.value) else {
                panic!("not a binary count: {:?}", record.value);
            };
            *totals.entry(record.key.unwrap_or_default().to_vec()).or_default() += count;
        }
        totals
    }

    #[test]
    fn a_folded_combine_emits_each_key_once_per_partition() {
        let combine_op = ReduceByKey::new(Reducer::Builtin(BuiltinReducer::Count), Phase::Combine, 2);
        // Eight chunks of the same 100 keys, one of them longer than 16 bytes.
        let input: Partition = (0..8)
            .map(|_| {
                let mut chunk = Batch::new();
                for i in 0..1000 {
                    let key = match i % 100 {
                        0 => "a key longer than sixteen bytes".to_owned(),
                        k => format!("w{k}"),
                    };
                    chunk.push(Some(key.as_bytes()), b"", i);
                }
                chunk
            })
            .collect();
        let piecewise: Partition = input
            .iter()
            .flat_map(|chunk| combine(&combine_op, vec![chunk.clone()], false))
            .collect();
        let folded = combine(&combine_op, input, true);
        assert_eq!(piecewise.iter().map(Batch::len).sum::<usize>(), 800);
        assert_eq!(folded.iter().map(Batch::len).sum::<usize>(), 100);
        assert_eq!(totals(&folded), totals(&piecewise));
        assert!(totals(&folded).values().all(|&count| count == 80));
        // The merge turns the binary partials into decimal text.
        let merge_op = ReduceByKey::new(Reducer::Builtin(BuiltinReducer::Count), Phase::Merge, 2);
        let merged = combine(&merge_op, folded, false);
        assert!(merged[0].iter().all(|record| record.value == b"80"));
    }

    #[test]
    fn a_folded_combine_emits_early_when_its_table_is_full() {
        let combine_op = ReduceByKey::new(Reducer::Builtin(BuiltinReducer::Count), Phase::Combine, 2);
        let keys = COMBINE_KEYS_MAX + COMBINE_KEYS_MAX / 2;
        let input: Partition = (0..keys)
            .collect::<Vec<_>>()
            .chunks(8192)
            .map(|keys| {
                let mut chunk = Batch::new();
                for key in keys {
                    chunk.push(Some(&key.to_le_bytes()), b"", 0);
                }
                chunk
            })
            .collect();
        let folded = combine(&combine_op, input, true);
        assert_eq!(folded.len(), 2, "one early emit and the rest");
        assert!(folded[0].len() >= COMBINE_KEYS_MAX);
        let totals = totals(&folded);
        assert_eq!(totals.len(), keys);
        assert!(totals.values().all(|&count| count == 1));
    }
}
