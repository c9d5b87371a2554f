//! Reduce-by-key: a map-side combine in every partition, a hash shuffle by
//! key, and a merge of the partial results in every target partition.
//!
//! The host groups records by key (keys never enter the plugin); the combine
//! function only sees values. Built-in reducers fold values straight into a
//! hash map of accumulators; plugin and native reducers ([`GroupReduceFn`])
//! get each partition's values grouped by key in one flat call.

use std::fmt;
use std::sync::Arc;

use hashbrown::HashMap;

use super::builtin::{self, Accumulator};
use super::{Operator, OperatorError, PartitionContext};
use crate::config::BuiltinReducer;
use crate::partition::Partitioning;
use crate::record::{Batch, Partition};
use crate::runtime::PluginError;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A key borrowed from a batch, compared without a `memcmp` call for short
/// keys (most keys of a word count are a few bytes: the call dominated the
/// comparison).
#[derive(Clone, Copy, Hash)]
struct KeyRef<'a>(&'a [u8]);

impl PartialEq for KeyRef<'_> {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.0, other.0);
        let len = a.len();
        if len != b.len() {
            return false;
        }
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8 bytes"));
        let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4 bytes"));
        match len {
            0 => true,
            1..=3 => a[0] == b[0] && a[len / 2] == b[len / 2] && a[len - 1] == b[len - 1],
            4..=7 => half(a, 0) == half(b, 0) && half(a, len - 4) == half(b, len - 4),
            8..=16 => word(a, 0) == word(b, 0) && word(a, len - 8) == word(b, len - 8),
            _ => a == b,
        }
    }
}

impl Eq for KeyRef<'_> {}

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
}

/// The combine function of a reduce-by-key.
#[derive(Debug, Clone)]
pub enum Reducer {
    /// One of the host's own: count, sum, min, max.
    Builtin(BuiltinReducer),
    /// A plugin or native function over groups of values.
    Groups(Arc<dyn GroupReduceFn>),
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
}

impl ReduceByKey {
    /// The `phase` half of a reduce-by-key into `partitions` partitions.
    pub fn new(reducer: Reducer, phase: Phase, partitions: usize) -> Self {
        Self {
            reducer,
            phase,
            partitions,
        }
    }

    fn reduce_builtin(&self, reducer: BuiltinReducer, chunks: &[Batch]) -> Result<Batch, OperatorError> {
        let merging = self.phase == Phase::Merge;
        let mut keyed: FastMap<KeyRef<'_>, (Accumulator, i64)> =
            FastMap::with_capacity_and_hasher(1024, Default::default());
        let mut keyless: Option<(Accumulator, i64)> = None;
        // Nested loops rather than `flat_map().enumerate()`: the adapter's
        // state went through the stack on every record (a third of the time).
        let mut index = 0usize;
        for chunk in chunks {
            for record in chunk {
                let slot = match record.key {
                    Some(key) => keyed.get_mut(&KeyRef(key)),
                    None => keyless.as_mut(),
                };
                match slot {
                    Some((accumulator, timestamp)) => {
                        builtin::fold(reducer, accumulator, record.value, merging)
                            .map_err(|error| value_error(reducer, record, error, merging, index))?;
                        *timestamp = (*timestamp).max(record.timestamp);
                    }
                    None => {
                        let started = (
                            builtin::start(reducer, record.value, merging)
                                .map_err(|error| value_error(reducer, record, error, merging, index))?,
                            record.timestamp,
                        );
                        match record.key {
                            Some(key) => {
                                keyed.insert(KeyRef(key), started);
                            }
                            None => keyless = Some(started),
                        }
                    }
                }
                index += 1;
            }
        }
        let groups = keyed.len() + usize::from(keyless.is_some());
        let mut output = Batch::with_capacity(groups, groups * 16);
        let mut text = String::new();
        let keyless = keyless.map(|state| (None, state));
        for (key, (accumulator, timestamp)) in keyed.into_iter().map(|(k, v)| (Some(k.0), v)).chain(keyless) {
            use std::fmt::Write;
            text.clear();
            write!(text, "{accumulator}").expect("writing to a String cannot fail");
            output.push(key, text.as_bytes(), timestamp);
        }
        Ok(output)
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

/// The error for a value a built-in reducer cannot use; `index` is the
/// record's position in the partition (not given after the shuffle, where
/// values are partial results rather than input records).
#[cold]
fn value_error(
    reducer: BuiltinReducer,
    record: crate::record::RecordRef<'_>,
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

    fn input_partitioning(&self) -> Partitioning {
        match self.phase {
            Phase::Combine => Partitioning::Pipeline,
            Phase::Merge => Partitioning::HashByKey(self.partitions),
        }
    }
}

/// A reducer implemented by a Wasm plugin.
#[derive(Debug)]
pub struct WasmReducer {
    plugin: super::PluginUse,
}

impl WasmReducer {
    /// Calls the plugin of `plugin` (its configuration and sandbox included).
    pub fn new(plugin: super::PluginUse) -> Self {
        Self { plugin }
    }
}

impl GroupReduceFn for WasmReducer {
    fn check(&self) -> Result<(), OperatorError> {
        self.plugin
            .check()
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    fn reduce(
        &self,
        groups: GroupedValues,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Vec<u8>, Vec<u32>), OperatorError> {
        self.plugin
            .call(ctx.instances, |instance| {
                instance.reduce(groups.data, groups.ends, &groups.group_ends)
            })
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }
}

#[cfg(test)]
mod tests {
    use super::KeyRef;

    #[test]
    fn short_key_equality_matches_slice_equality() {
        let words: Vec<Vec<u8>> = (0..=20)
            .flat_map(|len| {
                let base: Vec<u8> = (0..len as u8).map(|i| b'a' + i).collect();
                let mut variants = vec![base.clone()];
                for at in 0..len {
                    let mut changed = base.clone();
                    changed[at] = b'Z';
                    variants.push(changed);
                }
                variants
            })
            .collect();
        for a in &words {
            for b in &words {
                assert_eq!(KeyRef(a) == KeyRef(b), a == b, "{a:?} vs {b:?}");
            }
        }
    }
}
