//! State an operator keeps for each partition across micro-batches, and
//! small helpers over keyed batches shared by the stateful operators.
//!
//! Every partition of a stateful stage is processed by exactly one task per
//! batch, so its state sits behind its own mutex, never contended; the map
//! from partition index to state is only locked to find it.

use std::sync::{Arc, Mutex, MutexGuard};

use hashbrown::HashMap;

use crate::record::Batch;

/// A hash map with the engine's fast, fixed hasher.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// One `T` per partition index, created on first use.
pub struct PartitionStates<T> {
    slots: Mutex<Vec<Arc<Mutex<T>>>>,
}

impl<T> Default for PartitionStates<T> {
    fn default() -> Self {
        Self {
            slots: Mutex::new(Vec::new()),
        }
    }
}

impl<T> std::fmt::Debug for PartitionStates<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionStates")
            .field("partitions", &lock(&self.slots).len())
            .finish()
    }
}

impl<T: Default> PartitionStates<T> {
    /// The state of `partition`.
    pub fn get(&self, partition: usize) -> Arc<Mutex<T>> {
        let mut slots = lock(&self.slots);
        while slots.len() <= partition {
            slots.push(Arc::new(Mutex::new(T::default())));
        }
        slots[partition].clone()
    }

    /// Replaces every partition's state with `states` (partition `i` gets `states[i]`).
    pub fn replace(&self, states: Vec<T>) {
        *lock(&self.slots) = states
            .into_iter()
            .map(|state| Arc::new(Mutex::new(state)))
            .collect();
    }

    /// Calls `visit` with the state of every partition, in partition order.
    pub fn for_each(&self, mut visit: impl FnMut(usize, &mut T)) {
        let slots: Vec<Arc<Mutex<T>>> = lock(&self.slots).clone();
        for (index, slot) in slots.iter().enumerate() {
            visit(index, &mut lock(slot));
        }
    }
}

/// Locks `mutex`, ignoring poisoning: a panicking task is reported as a
/// failed batch, and state is only ever replaced whole.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// An owned key: `None` for records without one (they form one group).
pub type OwnedKey = Option<Box<[u8]>>;

/// The key of a record as an owned value.
pub fn owned_key(key: Option<&[u8]>) -> OwnedKey {
    key.map(Box::from)
}

/// A record's key, to look up an [`OwnedKey`] in a map without allocating
/// one: it hashes and compares as the owned key does.
#[derive(Hash)]
pub struct KeyView<'a>(pub Option<&'a [u8]>);

impl hashbrown::Equivalent<OwnedKey> for KeyView<'_> {
    fn equivalent(&self, key: &OwnedKey) -> bool {
        self.0 == key.as_deref()
    }
}

impl hashbrown::Equivalent<Option<&[u8]>> for KeyView<'_> {
    fn equivalent(&self, key: &Option<&[u8]>) -> bool {
        self.0 == *key
    }
}

/// `batch` without the records whose value is `neutral`.
pub fn without_value(batch: Batch, neutral: Option<&[u8]>) -> Batch {
    let Some(neutral) = neutral else {
        return batch;
    };
    let mut out = Batch::with_capacity(batch.len(), batch.data_bytes());
    for record in batch.iter().filter(|r| r.value != neutral) {
        out.push_ref(record);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_view_finds_its_owned_key() {
        let keys = [None, Some(&b""[..]), Some(&b"word"[..])];
        let map: FastMap<OwnedKey, usize> =
            keys.iter().enumerate().map(|(i, &k)| (owned_key(k), i)).collect();
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(map.get(&KeyView(key)), Some(&i), "{key:?}");
        }
        assert_eq!(map.get(&KeyView(Some(b"other"))), None);
    }
}
