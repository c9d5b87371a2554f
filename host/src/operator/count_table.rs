//! The map-side combine's hottest case, counting records by short key (a
//! word count), as a table of its own.
//!
//! A key of 1 to 15 bytes is packed into two words, zero-padded, with its
//! length in the top byte of the second word, so a slot (key, count, largest
//! timestamp) is 32 bytes, two to a cache line, and an empty slot is all
//! zeros. The table is open-addressed with linear probing.
//!
//! On long-tailed keys (real text) such a table outgrows the core's caches
//! and each record's lookup waits for memory. [`CountTable::count_chunk`]
//! therefore works in groups: it packs and hashes a group of keys and
//! prefetches their slots first, then counts them, so the group's cache
//! misses overlap instead of following one another.

use crate::record::{Batch, RecordRef};

/// A key of 1 to 15 bytes, packed (see the module docs). Never all zeros.
/// The combine's other tables key short keys by it too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PackedKey([u64; 2]);

impl PackedKey {
    /// The packed form of `key`; `None` when it is empty or longer than 15 bytes.
    #[inline(always)]
    pub fn new(key: &[u8]) -> Option<Self> {
        let len = key.len();
        let word = |at: usize| u64::from_le_bytes(key[at..at + 8].try_into().expect("8 bytes"));
        let half = |at: usize| u64::from(u32::from_le_bytes(key[at..at + 4].try_into().expect("4 bytes")));
        let [low, high] = match len {
            1..=3 => [
                u64::from(key[0])
                    | u64::from(key[len / 2]) << (8 * (len / 2))
                    | u64::from(key[len - 1]) << (8 * (len - 1)),
                0,
            ],
            // The two loads overlap; the bytes they share are equal.
            4..=7 => [half(0) | half(len - 4) << (8 * (len - 4)), 0],
            // Bytes 8.. of the key: the last eight, less those in `low`
            // (none for 8 bytes: the shift is then the whole word).
            8..=15 => [
                word(0),
                word(len - 8).checked_shr(8 * (16 - len) as u32).unwrap_or(0),
            ],
            _ => return None,
        };
        Some(Self([low, high | (len as u64) << 56]))
    }

    /// The key's bytes: the first `len` bytes of the array.
    pub fn bytes(&self) -> ([u8; 16], usize) {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.0[0].to_le_bytes());
        bytes[8..].copy_from_slice(&self.0[1].to_le_bytes());
        let len = usize::from(bytes[15]);
        (bytes, len)
    }

    /// A hash of the key (a folded multiply of its two words).
    #[inline(always)]
    fn hash(&self) -> u64 {
        let [low, high] = self.0;
        let product =
            u128::from(low ^ 0x243f_6a88_85a3_08d3).wrapping_mul(u128::from(high ^ 0x1319_8a2e_0370_7344));
        (product as u64) ^ (product >> 64) as u64
    }
}

/// One slot: a packed key (all zeros when empty), its count and its
/// largest timestamp.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    key: [u64; 2],
    count: u64,
    timestamp: i64,
}

/// Counts and largest timestamps by packed key.
pub struct CountTable {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for CountTable {
    /// An empty table that allocates with its first key.
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
        }
    }
}

/// Records packed, hashed and prefetched ahead of being counted.
const GROUP: usize = 16;

impl CountTable {
    /// An empty table with room for `keys` keys before it grows.
    pub fn with_capacity(keys: usize) -> Self {
        let slots = (keys * 2).next_power_of_two().max(64);
        Self {
            slots: vec![Slot::default(); slots],
            len: 0,
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Counts every record of `chunk` whose key packs (1 to 15 bytes);
    /// hands each other record to `other`, in order.
    pub fn count_chunk<'a>(&mut self, chunk: &'a Batch, mut other: impl FnMut(RecordRef<'a>)) {
        let mut keys = [(PackedKey([0, 0]), 0u64, 0i64); GROUP];
        let mut records = chunk.iter();
        loop {
            let mut grouped = 0;
            for record in records.by_ref() {
                match record.key.and_then(PackedKey::new) {
                    Some(key) => {
                        let hash = key.hash();
                        self.prefetch(hash);
                        keys[grouped] = (key, hash, record.timestamp);
                        grouped += 1;
                        if grouped == GROUP {
                            break;
                        }
                    }
                    None => other(record),
                }
            }
            if grouped == 0 {
                return;
            }
            for &(key, hash, timestamp) in &keys[..grouped] {
                self.count(key, hash, timestamp);
            }
        }
    }

    /// Adds one record of `key` at `timestamp`.
    #[inline(always)]
    fn count(&mut self, key: PackedKey, hash: u64, timestamp: i64) {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut index = hash as usize & mask;
        loop {
            let slot = &mut self.slots[index];
            if slot.key == key.0 {
                slot.count += 1;
                slot.timestamp = slot.timestamp.max(timestamp);
                return;
            }
            if slot.key == [0, 0] {
                *slot = Slot {
                    key: key.0,
                    count: 1,
                    timestamp,
                };
                self.len += 1;
                return;
            }
            index = (index + 1) & mask;
        }
    }

    /// Asks the CPU to bring the slot of `hash` into cache.
    #[inline(always)]
    fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        if !self.slots.is_empty() {
            let slot = &self.slots[hash as usize & (self.slots.len() - 1)];
            // SAFETY: a prefetch only hints the cache; `slot` is a valid
            // reference anyway.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    std::ptr::from_ref(slot).cast(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    /// Doubles the slots and places every key again.
    #[cold]
    fn grow(&mut self) {
        let doubled = vec![Slot::default(); (2 * self.slots.len()).max(64)];
        let old = std::mem::replace(&mut self.slots, doubled);
        let mask = self.slots.len() - 1;
        for slot in old.into_iter().filter(|slot| slot.key != [0, 0]) {
            let mut index = PackedKey(slot.key).hash() as usize & mask;
            while self.slots[index].key != [0, 0] {
                index = (index + 1) & mask;
            }
            self.slots[index] = slot;
        }
    }

    /// Every key with its count and largest timestamp, in no order.
    pub fn drain(self) -> impl Iterator<Item = (PackedKey, u64, i64)> {
        self.slots
            .into_iter()
            .filter(|slot| slot.key != [0, 0])
            .map(|slot| (PackedKey(slot.key), slot.count, slot.timestamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_one_to_one_and_reversible() {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        for len in 0..=17usize {
            let base: Vec<u8> = (0..len as u8).map(|i| b'a' + i).collect();
            keys.push(base.clone());
            for at in 0..len {
                let mut changed = base.clone();
                changed[at] = 0;
                keys.push(changed);
            }
        }
        for a in &keys {
            let packed = PackedKey::new(a);
            assert_eq!(packed.is_some(), (1..=15).contains(&a.len()), "{a:?}");
            let Some(packed) = packed else { continue };
            assert_ne!(packed.0, [0, 0]);
            let (bytes, len) = packed.bytes();
            assert_eq!(&bytes[..len], &a[..]);
            for b in &keys {
                if let Some(other) = PackedKey::new(b) {
                    assert_eq!(packed == other, a == b, "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn counts_like_a_hash_map_through_growth() {
        let mut chunk = Batch::new();
        let mut expected: std::collections::HashMap<Vec<u8>, (u64, i64)> = Default::default();
        let mut others = 0;
        let mut state = 1u64;
        for i in 0..50_000i64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            // Long-tailed: small numbers are frequent.
            let word = format!("w{}", state % (1 + state % 5_000));
            let key = if i % 97 == 0 {
                "a key that does not pack".to_owned()
            } else {
                word
            };
            chunk.push(Some(key.as_bytes()), b"", i % 1_000);
            if key.len() <= 15 {
                let entry = expected.entry(key.into_bytes()).or_default();
                entry.0 += 1;
                entry.1 = entry.1.max(i % 1_000);
            }
        }
        chunk.push(None, b"keyless", 0);
        let mut table = CountTable::with_capacity(4);
        table.count_chunk(&chunk, |_| others += 1);
        assert_eq!(others, 50_000 / 97 + 1 + 1);
        assert_eq!(table.len(), expected.len());
        for (key, count, timestamp) in table.drain() {
            let (bytes, len) = key.bytes();
            assert_eq!(expected[&bytes[..len]], (count, timestamp));
        }
    }
}
