//! `update-state-by-key` and `map-with-state`: a plugin function over each
//! key's new values and its state, with the state owned by the host.
//!
//! The operator shuffles by key, so a key's state always lives in the same
//! partition's [`KeyedStore`]. Once per partition per batch it groups the
//! records by key (values in arrival order), adds the keys that timed out
//! (no value for `timeout`; offered once, with no values, then removed),
//! reads their states, and makes **one** plugin call with all of it. The new
//! states are committed only after the call succeeded, so a failed call
//! (retried, skipped or dead-lettered by the stage's policy) leaves state as
//! it was. The two operators differ only in the plugin's SDK API: all values
//! of a key at once, or one record at a time.
//!
//! Checkpoints are incremental ([`IncrementalState`]): each writes, per
//! partition, the entries put and the keys removed since the previous one
//! (or the whole partition when the store lost track), and recovery merges
//! the checkpoint's chain of parts back into the stores as a stream. A
//! snapshot written whole by an earlier version ([`Operator::restore`]) is
//! still restored; the first checkpoint after it is then a full one.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::keyed::{FastMap, PartitionStates, lock};
use super::write_part_sections;
use super::{
    IncrementalState, Operator, OperatorError, PartitionContext, Planning, PluginUse,
    check_restored_partitions, restore_error,
};
use crate::checkpoint::codec::Decoder;
use crate::checkpoint::incremental::{Merge, PartSummary};
use crate::partition::Partitioning;
use crate::record::Partition;
use crate::runtime::bindings::types::Values;
use crate::runtime::{KeyGroups, PluginError, StateUpdate, StateWorld};
use crate::state::{KeyedStore, StateChanges, StateEntry, StateSize};
use weir_abi::{GROUP_HAS_STATE, GROUP_TIMED_OUT};

/// Where and how much state a stage keeps.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Memory for state per stage before it spills; split evenly over partitions.
    pub memory_bytes: usize,
    /// Directory of the stage's spill files.
    pub spill_dir: PathBuf,
    /// Keys idle this long time out.
    pub timeout: Option<Duration>,
    /// Partitions the state is split into.
    pub partitions: usize,
}

/// A keyed-state stage.
#[derive(Debug)]
pub struct KeyedState {
    plugin: PluginUse<StateWorld>,
    settings: StateSettings,
    stores: PartitionStates<Option<KeyedStore>>,
}

impl KeyedState {
    /// Calls `plugin` with state kept as `settings` say.
    pub fn new(plugin: PluginUse<StateWorld>, settings: StateSettings) -> Self {
        Self {
            plugin,
            settings,
            stores: PartitionStates::default(),
        }
    }

    /// True when the call running on `ctx` offers `key`'s timeout: during
    /// a canary, only the version the key is hashed to does.
    fn owns_timeout(&self, key: Option<&[u8]>, ctx: &PartitionContext<'_>) -> bool {
        let slot = self.plugin.slot();
        !slot.in_canary() || slot.canary_owns(key) == (ctx.instances.route == super::binding::Route::Canary)
    }

    fn store_for(&self, partition: usize) -> KeyedStore {
        KeyedStore::new(
            self.settings.memory_bytes / self.settings.partitions.max(1),
            self.settings
                .spill_dir
                .join(format!("partition-{partition:05}.redb")),
        )
    }
}

/// Encodes a record key as a store key: keyless records share one key.
fn store_key(key: Option<&[u8]>) -> Box<[u8]> {
    match key {
        None => Box::from(&[0u8][..]),
        Some(key) => {
            let mut bytes = Vec::with_capacity(key.len() + 1);
            bytes.push(1);
            bytes.extend_from_slice(key);
            bytes.into()
        }
    }
}

fn record_key(store_key: &[u8]) -> Option<&[u8]> {
    match store_key.split_first() {
        Some((1, key)) => Some(key),
        _ => None,
    }
}

fn push_value(values: &mut Values, bytes: &[u8]) {
    values.data.extend_from_slice(bytes);
    values.ends.push(values.data.len() as u32);
}

/// States a migration call converts at most, and their bytes at most
/// (a larger state goes alone).
const MIGRATION_CHUNK_STATES: usize = 1024;
const MIGRATION_CHUNK_BYTES: usize = 1 << 20;

/// Converts the states of `keys` in `store` with `instance`'s
/// `migrate-state`, in calls of at most [`MIGRATION_CHUNK_STATES`] states
/// and [`MIGRATION_CHUNK_BYTES`]; writes them back when `keep`.
fn migrate_keys(
    store: &mut KeyedStore,
    keys: &[Box<[u8]>],
    instance: &mut crate::runtime::StateInstance,
    from_version: u32,
    keep: bool,
    done: &mut super::StateMigration,
) -> Result<(), String> {
    for block in keys.chunks(MIGRATION_CHUNK_STATES) {
        let entries: Vec<(&[u8], StateEntry)> = block
            .iter()
            .zip(store.get_many(block).map_err(|e| e.to_string())?)
            .filter_map(|(key, entry)| Some((&key[..], entry?)))
            .collect();
        let mut rest = &entries[..];
        while !rest.is_empty() {
            let mut bytes = 0;
            let count = rest
                .iter()
                .take_while(|(_, entry)| {
                    bytes += entry.state.len();
                    bytes <= MIGRATION_CHUNK_BYTES
                })
                .count()
                .max(1);
            let (chunk, after) = rest.split_at(count);
            rest = after;
            let mut states = Values {
                data: Vec::with_capacity(bytes.min(MIGRATION_CHUNK_BYTES)),
                ends: Vec::with_capacity(count),
            };
            for (_, entry) in chunk {
                push_value(&mut states, &entry.state);
            }
            let migrated = instance
                .migrate_states(from_version, &states)
                .map_err(|error| migration_failure(error, chunk))?;
            done.states += count as u64;
            done.calls += 1;
            if keep {
                let mut changes = StateChanges::default();
                let mut start = 0;
                for ((key, entry), &end) in chunk.iter().zip(&migrated.ends) {
                    let state = migrated.data[start..end as usize].to_vec();
                    start = end as usize;
                    changes.put.push((
                        Box::from(*key),
                        StateEntry {
                            state,
                            last_seen: entry.last_seen,
                        },
                    ));
                }
                store.commit(changes).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// A failed migration call, naming the key of a state the plugin named.
fn migration_failure(error: PluginError, chunk: &[(&[u8], StateEntry)]) -> String {
    match error {
        PluginError::Record { index, message } => match chunk.get(index as usize) {
            Some((key, _)) => format!(
                "the state of key {:?} cannot be converted: {message}",
                String::from_utf8_lossy(record_key(key).unwrap_or_default())
            ),
            None => message,
        },
        error => error.to_string(),
    }
}

impl Operator for KeyedState {
    fn process(&self, input: Partition, ctx: &mut PartitionContext<'_>) -> Result<Partition, OperatorError> {
        let slot = self.stores.get(ctx.partition);
        let mut slot = lock(&slot);
        let store = slot.get_or_insert_with(|| self.store_for(ctx.partition));

        // Group the records by key, keys in order of first appearance; remember
        // where each value came from to name failing records.
        let mut group_of: FastMap<Option<&[u8]>, usize> = FastMap::default();
        let mut members: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut keys: Vec<Option<&[u8]>> = Vec::new();
        for (chunk_index, chunk) in input.iter().enumerate() {
            for (index, record) in chunk.iter().enumerate() {
                let next = keys.len();
                let group = *group_of.entry(record.key).or_insert(next);
                if group == next {
                    keys.push(record.key);
                    members.push(Vec::new());
                }
                members[group].push((chunk_index, index));
            }
        }
        let timed_out = match self.settings.timeout {
            Some(timeout) => store
                .idle_since(ctx.batch_time - timeout.as_millis() as i64)
                .map_err(OperatorError::from)?
                .into_iter()
                .filter(|(key, _)| !group_of.contains_key(&record_key(key)))
                .filter(|(key, _)| self.owns_timeout(record_key(key), ctx))
                .collect(),
            None => Vec::new(),
        };
        if keys.is_empty() && timed_out.is_empty() {
            return Ok(Vec::new());
        }

        let mut groups = KeyGroups {
            keys: Values {
                data: Vec::new(),
                ends: Vec::new(),
            },
            values: Values {
                data: Vec::new(),
                ends: Vec::new(),
            },
            timestamps: Vec::new(),
            group_ends: Vec::with_capacity(keys.len() + timed_out.len()),
            states: Values {
                data: Vec::new(),
                ends: Vec::new(),
            },
            group_flags: Vec::with_capacity(keys.len() + timed_out.len()),
            batch_time: ctx.batch_time,
        };
        // Input position (in the concatenated partition) of each value.
        let mut positions: Vec<u32> = Vec::new();
        let chunk_starts: Vec<usize> = input
            .iter()
            .scan(0, |start, chunk| {
                let this = *start;
                *start += chunk.len();
                Some(this)
            })
            .collect();
        let mut store_keys: Vec<Box<[u8]>> = keys.iter().map(|key| store_key(*key)).collect();
        let previous_states = store.get_many(&store_keys).map_err(OperatorError::from)?;
        for ((key, records), previous) in keys.iter().zip(&members).zip(previous_states) {
            push_value(&mut groups.keys, key.unwrap_or_default());
            for &(chunk, index) in records {
                let record = input[chunk].get(index);
                push_value(&mut groups.values, record.value);
                groups.timestamps.push(record.timestamp);
                positions.push((chunk_starts[chunk] + index) as u32);
            }
            groups.group_ends.push(groups.values.ends.len() as u32);
            push_value(
                &mut groups.states,
                previous.as_ref().map_or(&[][..], |e| &e.state),
            );
            groups
                .group_flags
                .push(if previous.is_some() { GROUP_HAS_STATE } else { 0 });
        }
        for (stored_key, entry) in &timed_out {
            push_value(&mut groups.keys, record_key(stored_key).unwrap_or_default());
            groups.group_ends.push(groups.values.ends.len() as u32);
            push_value(&mut groups.states, &entry.state);
            groups.group_flags.push(GROUP_HAS_STATE | GROUP_TIMED_OUT);
            store_keys.push(stored_key.clone());
        }

        self.plugin
            .keep_sample(ctx.batch_id, || super::binding::Sample::of_keys(&groups));
        let update: StateUpdate = self
            .plugin
            .call(ctx.instances, |instance| instance.update_state(&groups))
            .map_err(|error| match error {
                PluginError::Record { index, message } if (index as usize) < positions.len() => {
                    let position = positions[index as usize];
                    let record = super::guard::record_at(&input, position as usize)
                        .map_or_else(String::new, |record| record.describe());
                    OperatorError::Plugin {
                        error: PluginError::Record {
                            index: position,
                            message,
                        },
                        record: Some(record),
                    }
                }
                PluginError::Record { index, .. } => OperatorError::Plugin {
                    error: PluginError::Batch(format!(
                        "the plugin named value {index}, which does not exist"
                    )),
                    record: None,
                },
                error => OperatorError::Plugin { error, record: None },
            })?;

        let mut changes = StateChanges::default();
        let mut start = 0usize;
        for (group, stored_key) in store_keys.into_iter().enumerate() {
            let end = update.state_ends[group] as usize;
            if end < start {
                return Err(OperatorError::Plugin {
                    error: PluginError::Batch("the plugin returned malformed states".into()),
                    record: None,
                });
            }
            let timed_out = groups.group_flags[group] & GROUP_TIMED_OUT != 0;
            if update.keep[group] && !timed_out {
                changes.put.push((
                    stored_key,
                    StateEntry {
                        state: update.states[start..end].to_vec(),
                        last_seen: ctx.batch_time,
                    },
                ));
            } else if groups.group_flags[group] & GROUP_HAS_STATE != 0 {
                changes.remove.push(stored_key);
            }
            start = end;
        }
        store.commit(changes).map_err(OperatorError::from)?;
        Ok(vec![update.output])
    }

    fn planning(&self) -> Planning {
        Planning::partitioned(Partitioning::HashByKey(self.settings.partitions))
    }

    fn plugin_slots(&self) -> Vec<std::sync::Arc<super::BindingSlot>> {
        vec![self.plugin.slot().clone()]
    }

    fn migrate_state(
        &self,
        slot: &super::BindingSlot,
        candidate: &super::binding::Binding,
        from_version: u32,
    ) -> Result<Option<super::StateMigration>, super::MigrationError> {
        if !std::ptr::eq(slot, &**self.plugin.slot()) {
            return Ok(None);
        }
        let mut instance = crate::runtime::Instance::<StateWorld>::start(
            &candidate.plugin,
            &candidate.config,
            slot.label.clone(),
            &slot.sandbox,
        )
        .map_err(|error| super::MigrationError::Refused(error.to_string()))?;
        let mut done = super::StateMigration::default();
        // First every state converted and dropped, then converted and kept.
        for keep in [false, true] {
            done = super::StateMigration::default();
            for partition in 0..self.settings.partitions {
                let slot = self.stores.get(partition);
                let mut slot = lock(&slot);
                let Some(store) = slot.as_mut() else { continue };
                store
                    .keys()
                    .map_err(|error| error.to_string())
                    .and_then(|keys| migrate_keys(store, &keys, &mut instance, from_version, keep, &mut done))
                    .map_err(|message| match keep {
                        false => super::MigrationError::Refused(message),
                        true => super::MigrationError::HalfDone(message),
                    })?;
            }
        }
        Ok(Some(done))
    }

    fn check(&self) -> Result<(), OperatorError> {
        self.plugin
            .check()
            .map_err(|error| OperatorError::Plugin { error, record: None })
    }

    /// Restores a snapshot written whole (format 1 checkpoints, before
    /// incremental ones): per partition, a count, then key, state and
    /// `last_seen` of each entry.
    fn restore(&self, snapshot: &[u8]) -> Result<(), OperatorError> {
        let mut input = Decoder::new(snapshot);
        let count = input.count(8).map_err(restore_error)?;
        check_restored_partitions(count, self.settings.partitions, "keyed")?;
        let mut stores = Vec::with_capacity(count);
        for partition in 0..count {
            let mut changes = StateChanges::default();
            for _ in 0..input.count(24).map_err(restore_error)? {
                let key = Box::from(input.bytes().map_err(restore_error)?);
                let state = input.bytes().map_err(restore_error)?.to_vec();
                let last_seen = input.i64().map_err(restore_error)?;
                changes.put.push((key, StateEntry { state, last_seen }));
            }
            let mut store = self.store_for(partition);
            store.commit(changes).map_err(OperatorError::from)?;
            stores.push(Some(store));
        }
        self.stores.replace(stores);
        Ok(())
    }

    fn state_size(&self) -> StateSize {
        let mut total = StateSize::default();
        self.stores.for_each(|_, store| {
            if let Some(store) = store {
                total += store.size();
            }
        });
        total
    }

    fn incremental(&self) -> Option<&dyn IncrementalState> {
        Some(self)
    }
}

impl IncrementalState for KeyedState {
    fn write_part(&self, out: &mut dyn Write) -> Result<PartSummary, OperatorError> {
        write_part_sections(
            out,
            self.settings.partitions,
            "keyed state",
            |partition, part| {
                let slot = self.stores.get(partition);
                let mut slot = lock(&slot);
                match slot.as_mut() {
                    Some(store) => store.write_part(part).map_err(|e| e.to_string()),
                    // Never used, nothing restored: empty.
                    None => part.begin(true).map_err(|e| e.to_string()),
                }
            },
            || {
                self.stores.for_each(|_, store| {
                    if let Some(store) = store {
                        store.forget_changes();
                    }
                })
            },
        )
    }

    fn restore_chain(&self, merge: &mut Merge<Box<dyn Read + Send>>) -> Result<(), OperatorError> {
        check_restored_partitions(merge.partitions(), self.settings.partitions, "keyed")?;
        // Entries go into each store a slice at a time, so a store spills
        // as it fills and the state never needs more memory than its budget.
        let slice = (self.settings.memory_bytes / self.settings.partitions.max(1) / 4).max(64 << 10);
        let mut stores = Vec::with_capacity(merge.partitions());
        while let Some(partition) = merge.next_partition().map_err(restore_error)? {
            let mut store = self.store_for(partition);
            let mut changes = StateChanges::default();
            let mut bytes = 0;
            while let Some((key, value)) = merge.next_entry().map_err(restore_error)? {
                let entry = StateEntry::decode(&value).ok_or_else(|| {
                    restore_error(format!("an entry of {} bytes is too short", value.len()))
                })?;
                bytes += key.len() + value.len();
                changes.put.push((key.into(), entry));
                if bytes >= slice {
                    store
                        .commit(std::mem::take(&mut changes))
                        .map_err(OperatorError::from)?;
                    bytes = 0;
                }
            }
            store.commit(changes).map_err(OperatorError::from)?;
            store.mark_checkpointed();
            stores.push(Some(store));
        }
        self.stores.replace(stores);
        Ok(())
    }
}
