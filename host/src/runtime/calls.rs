//! The calls of each world, on its typed instance: [`TransformInstance::transform`],
//! [`ReducerInstance::reduce`], [`StateInstance::update_state`],
//! [`CoTransformInstance::process_pair`] and [`SinkInstance::write`]. Each converts its arguments to WIT,
//! goes through the shared call path (which refuses an input the plugin's
//! memory cannot hold and copies the result out within the stage's copy
//! budget) and checks what the plugin returned against the contract and the
//! stage's output limits.

use super::bindings::types;
use super::error::PluginError;
use super::instance::{
    CoTransformInstance, Instance, ReducerInstance, SinkInstance, StateInstance, TransformInstance,
};
use super::limits::Limits;
use super::world::{OutputCeiling, World};
use crate::record::Batch;

/// What a stateful plugin returned for a [`KeyGroups`] call.
#[derive(Debug, Default)]
pub struct StateUpdate {
    /// New state bytes per group, flat (`state_ends[g]` ends group `g`'s).
    pub states: Vec<u8>,
    /// End offsets into `states`, one per group.
    pub state_ends: Vec<u32>,
    /// Per group: keep the state (`true`) or remove the key (`false`).
    pub keep: Vec<bool>,
    /// Records emitted.
    pub output: Batch,
}

/// The keys of one partition with their new values and states, in the flat
/// form of the `key-groups` WIT record.
pub type KeyGroups = types::KeyGroups;

/// The result of a transform call.
#[derive(Debug)]
pub enum TransformOutput {
    /// New records.
    Records(Batch),
    /// Indices of the input records to keep.
    Keep(Vec<u32>),
}

impl TransformInstance {
    /// Runs the transform over one batch. The input batch is always handed
    /// back (filters keep records from it; errors describe records of it).
    pub fn transform(&mut self, input: Batch) -> (Batch, Result<TransformOutput, PluginError>) {
        let (records, bytes) = (input.len(), input.data_bytes());
        let limits = &self.sandbox.limits;
        let ceiling = OutputCeiling {
            records: limits.max_output_records(records),
            bytes: limits.max_output_bytes(bytes),
        };
        let mut wit_batch = to_wit(input);
        let result = self.call_moving(
            (records, Limits::input_bytes(records, bytes)),
            Some((records, bytes)),
            |exports, store| exports.process(store, &mut wit_batch, ceiling),
        );
        let input = from_wit(wit_batch);
        let output = match result {
            Ok(Ok(types::TransformOutput::Records(batch))) => self
                .checked_output(batch, input.len(), input.data_bytes())
                .map(TransformOutput::Records),
            Ok(Ok(types::TransformOutput::Keep(indices))) => Ok(TransformOutput::Keep(indices)),
            Ok(Err(error)) => Err(process_error(error)),
            Err(error) => Err(error),
        };
        (input, output)
    }
}

impl ReducerInstance {
    /// Runs the reducer over groups of values: `values` in flat form, group
    /// `g` ending at `group_ends[g]`. Returns one value per group.
    pub fn reduce(
        &mut self,
        data: Vec<u8>,
        ends: Vec<u32>,
        group_ends: &[u32],
    ) -> Result<(Vec<u8>, Vec<u32>), PluginError> {
        let input = (
            ends.len(),
            (data.len() as u64).saturating_add(4 * (ends.len() + group_ends.len()) as u64),
        );
        let values = types::Values { data, ends };
        let output = self
            .call_moving(input, None, |exports, store| {
                exports.reduce(store, &values, group_ends)
            })?
            .map_err(process_error)?;
        if output.ends.len() != group_ends.len() {
            return Err(PluginError::Batch(format!(
                "the reducer returned {} values for {} keys",
                output.ends.len(),
                group_ends.len()
            )));
        }
        if output.ends.windows(2).any(|w| w[0] > w[1])
            || output
                .ends
                .last()
                .is_some_and(|&end| end as usize != output.data.len())
        {
            return Err(crate::record::MalformedBatch("reducer returned malformed values".into()).into());
        }
        Ok((output.data, output.ends))
    }
}

impl StateInstance {
    /// Runs a stateful function over the key groups of one partition.
    /// Returns one state entry and flag per group, and the emitted records.
    pub fn update_state(&mut self, groups: &KeyGroups) -> Result<StateUpdate, PluginError> {
        let lists = |values: &types::Values| values.data.len() as u64 + 4 * values.ends.len() as u64;
        let input_bytes = lists(&groups.keys)
            + lists(&groups.values)
            + lists(&groups.states)
            + 8 * groups.timestamps.len() as u64
            + 4 * groups.group_ends.len() as u64
            + groups.group_flags.len() as u64;
        let update = self
            .call_moving(
                (groups.values.ends.len().max(groups.group_ends.len()), input_bytes),
                None,
                |exports, store| exports.update(store, groups),
            )?
            .map_err(process_error)?;
        let count = groups.group_ends.len();
        if update.states.ends.len() != count || update.state_flags.len() != count {
            return Err(PluginError::Batch(format!(
                "the plugin returned {} states and {} flags for {count} keys",
                update.states.ends.len(),
                update.state_flags.len()
            )));
        }
        check_values(&update.states, "states")?;
        let input_bytes = groups.keys.data.len() + groups.values.data.len() + groups.states.data.len();
        let output = self.checked_output(update.output, groups.values.ends.len().max(count), input_bytes)?;
        Ok(StateUpdate {
            states: update.states.data,
            state_ends: update.states.ends,
            keep: update
                .state_flags
                .iter()
                .map(|flags| flags & weir_abi::STATE_KEEP != 0)
                .collect(),
            output,
        })
    }
}

impl StateInstance {
    /// Converts `states`, written by the plugin's state version
    /// `from_version`, into its current format (`state-migration`): one
    /// state per input state, in order. An error when the plugin does not
    /// export `state-migration`.
    pub fn migrate_states(
        &mut self,
        from_version: u32,
        states: &types::Values,
    ) -> Result<types::Values, PluginError> {
        let input_bytes = states.data.len() as u64 + 4 * states.ends.len() as u64;
        let migrated = self
            .call_moving((states.ends.len(), input_bytes), None, |exports, store| {
                exports.migrate_state(store, from_version, states).transpose()
            })?
            .ok_or_else(|| {
                PluginError::Batch(format!(
                    "it exports no state-migration, so it cannot read states of its state version {from_version}"
                ))
            })?
            .map_err(process_error)?;
        if migrated.ends.len() != states.ends.len() {
            return Err(PluginError::Batch(format!(
                "migrate-state returned {} states for {}",
                migrated.ends.len(),
                states.ends.len()
            )));
        }
        check_values(&migrated, "migrated states")?;
        Ok(migrated)
    }
}

impl CoTransformInstance {
    /// Runs a transform-with over one partition of its two inputs. Both
    /// inputs are handed back.
    pub fn process_pair(&mut self, left: Batch, right: Batch) -> (Batch, Batch, Result<Batch, PluginError>) {
        let records = left.len() + right.len();
        let bytes = left.data_bytes() + right.data_bytes();
        let (wit_left, wit_right) = (to_wit(left), to_wit(right));
        let result = self.call_moving(
            (records, Limits::input_bytes(records, bytes)),
            Some((records, bytes)),
            |exports, store| exports.process_pair(store, &wit_left, &wit_right),
        );
        let (left, right) = (from_wit(wit_left), from_wit(wit_right));
        let output = match result {
            Ok(Ok(batch)) => self.checked_output(
                batch,
                left.len() + right.len(),
                left.data_bytes() + right.data_bytes(),
            ),
            Ok(Err(error)) => Err(process_error(error)),
            Err(error) => Err(error),
        };
        (left, right, output)
    }
}

impl<W: World> Instance<W> {
    /// Checks a returned batch against the output limits and the batch layout.
    fn checked_output(
        &self,
        batch: types::Batch,
        input_records: usize,
        input_bytes: usize,
    ) -> Result<Batch, PluginError> {
        let limits = &self.sandbox.limits;
        let (records, bytes) = (batch.timestamps.len() as u64, batch.data.len() as u64);
        let (max_records, max_bytes) = (
            limits.max_output_records(input_records),
            limits.max_output_bytes(input_bytes),
        );
        if records > max_records || bytes > max_bytes {
            return Err(PluginError::OutputLimit {
                records,
                bytes,
                max_records,
                max_bytes,
            });
        }
        Ok(Batch::from_parts(
            batch.data,
            batch.ends,
            batch.timestamps,
            batch.flags,
        )?)
    }
}

/// Which part of which batch a sink plugin's `write` carries (the WIT
/// `batch-info`).
pub type SinkBatchInfo = super::bindings::sink::exports::weir::plugin::sink::BatchInfo;

/// Why a sink plugin's write failed, as it says (the WIT `write-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkWriteError {
    /// Trying again may help.
    Transient(String),
    /// Trying again will not help.
    Permanent(String),
}

impl SinkInstance {
    /// Hands `records` (one partition of a batch, or all of it) to the
    /// plugin's `write`. The records are always handed back, for a retry.
    /// The outer error is a trap or a limit; the inner one the plugin's
    /// own answer.
    pub fn write(
        &mut self,
        info: &SinkBatchInfo,
        records: Batch,
    ) -> (Batch, Result<Result<(), SinkWriteError>, PluginError>) {
        use super::bindings::sink::exports::weir::plugin::sink::WriteError;
        let (count, bytes) = (records.len(), records.data_bytes());
        let wit_batch = to_wit(records);
        let result = self.call_moving(
            (count, Limits::input_bytes(count, bytes)),
            None,
            |exports, store| exports.weir_plugin_sink().call_write(store, info, &wit_batch),
        );
        let answer = result.map(|answer| {
            answer.map_err(|error| match error {
                WriteError::Transient(message) => SinkWriteError::Transient(message),
                WriteError::Permanent(message) => SinkWriteError::Permanent(message),
            })
        });
        (from_wit(wit_batch), answer)
    }
}

/// A batch in its WIT form (moved, not copied).
fn to_wit(batch: Batch) -> types::Batch {
    let (data, ends, timestamps, flags) = batch.into_parts();
    types::Batch {
        data,
        ends,
        timestamps,
        flags,
    }
}

/// A batch back from the WIT form [`to_wit`] made of it.
fn from_wit(batch: types::Batch) -> Batch {
    Batch::from_parts_unchecked(batch.data, batch.ends, batch.timestamps, batch.flags)
}

/// Checks that flat values have non-decreasing ends that cover the data.
fn check_values(values: &types::Values, what: &str) -> Result<(), PluginError> {
    weir_abi::check_ends(&values.ends, values.data.len())
        .map_err(|_| crate::record::MalformedBatch(format!("the plugin returned malformed {what}")).into())
}

fn process_error(error: types::ProcessError) -> PluginError {
    match error {
        types::ProcessError::Record(failure) => PluginError::Record {
            index: failure.index,
            message: failure.message,
        },
        types::ProcessError::Batch(message) => PluginError::Batch(message),
    }
}
