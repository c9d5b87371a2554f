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
use hashbrown::hash_map::Entry;

use super::builtin::{self, Accumulator};
use super::{InstanceKey, Operator, OperatorError, PartitionContext};
use crate::config::BuiltinReducer;
use crate::partition::Partitioning;
use crate::record::Batch;
use crate::runtime::{InstanceLabel, Plugin, PluginError};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

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

    fn reduce_builtin(&self, reducer: BuiltinReducer, input: &Batch) -> Result<Batch, OperatorError> {
        let merging = self.phase == Phase::Merge;
        let mut accumulators: FastMap<Option<&[u8]>, (Accumulator, i64)> =
            FastMap::with_capacity_and_hasher(1024, Default::default());
        for record in input.iter() {
            let failed = |error: builtin::ValueError| {
                OperatorError::Value(format!(
                    "reduce-by-key `{}`: the value {:?} of {} {error}",
                    reducer_name(reducer),
                    String::from_utf8_lossy(record.value),
                    record.key.map_or_else(
                        || "a record without key".to_owned(),
                        |k| format!("key {:?}", String::from_utf8_lossy(k))
                    )
                ))
            };
            match accumulators.entry(record.key) {
                Entry::Occupied(mut entry) => {
                    let (accumulator, timestamp) = entry.get_mut();
                    builtin::fold(reducer, accumulator, record.value, merging).map_err(failed)?;
                    *timestamp = (*timestamp).max(record.timestamp);
                }
                Entry::Vacant(entry) => {
                    let accumulator = builtin::start(reducer, record.value, merging).map_err(failed)?;
                    entry.insert((accumulator, record.timestamp));
                }
            }
        }
        let mut output = Batch::with_capacity(accumulators.len(), accumulators.len() * 16);
        let mut text = String::new();
        for (key, (accumulator, timestamp)) in accumulators {
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
            OperatorError::Plugin {
                error: PluginError::Record { index, message },
                record: None,
            } if (index as usize) < order.len() => {
                let record = input.get(order[index as usize] as usize);
                OperatorError::Plugin {
                    error: PluginError::Record { index, message },
                    record: Some(format!(
                        "value {:?} of {}",
                        String::from_utf8_lossy(record.value),
                        record.describe()
                    )),
                }
            }
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

fn reducer_name(reducer: BuiltinReducer) -> &'static str {
    match reducer {
        BuiltinReducer::Count => "count",
        BuiltinReducer::Sum => "sum",
        BuiltinReducer::Min => "min",
        BuiltinReducer::Max => "max",
    }
}

impl Operator for ReduceByKey {
    fn process(&self, input: Batch, ctx: &mut PartitionContext<'_>) -> Result<Batch, OperatorError> {
        match &self.reducer {
            Reducer::Builtin(reducer) => self.reduce_builtin(*reducer, &input),
            Reducer::Groups(function) => self.reduce_groups(function.as_ref(), &input, ctx),
        }
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
    plugin: Arc<Plugin>,
    config: Vec<(String, String)>,
    label: InstanceLabel,
    key: InstanceKey,
}

impl WasmReducer {
    /// Calls `plugin`, initialised with `config`; `label` tags its logs.
    pub fn new(plugin: Arc<Plugin>, config: Vec<(String, String)>, label: InstanceLabel) -> Self {
        Self {
            plugin,
            config,
            label,
            key: InstanceKey::unique(),
        }
    }
}

impl GroupReduceFn for WasmReducer {
    fn check(&self) -> Result<(), OperatorError> {
        crate::runtime::PluginInstance::start(&self.plugin, &self.config, self.label.clone())
            .map(drop)
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    fn reduce(
        &self,
        groups: GroupedValues,
        ctx: &mut PartitionContext<'_>,
    ) -> Result<(Vec<u8>, Vec<u32>), OperatorError> {
        ctx.instances
            .with_instance(self.key, &self.plugin, &self.config, &self.label, |instance| {
                instance.reduce(groups.data, groups.ends, &groups.group_ends)
            })
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }
}
