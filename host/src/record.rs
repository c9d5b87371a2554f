//! Records and batches.
//!
//! A [`Batch`] is one partition of one micro-batch, stored exactly as it crosses
//! the Wasm boundary (see `wit/types.wit`): all key and value bytes back to back
//! in one buffer, two end offsets per record, a timestamp column and a flags
//! column. Moving a batch between stages, into a plugin and out of it costs a
//! few memory copies, never an allocation per record.

use std::fmt;

// The flag bits, layout checks and short copies the guest SDK uses too.
use weir_abi::{HAS_KEY, LayoutError, check_batch, copy_short};

/// A borrowed view of one record of a [`Batch`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("value", &String::from_utf8_lossy(self.value))
            .field("timestamp", &self.timestamp)
            .finish()
    }
}

impl RecordRef<'_> {
    /// A short printable description, for error messages: the key if any,
    /// else the value, cut to 60 characters.
    pub fn describe(&self) -> String {
        let (what, bytes) = match self.key {
            Some(key) => ("key", key),
            None => ("value", self.value),
        };
        let text = String::from_utf8_lossy(bytes);
        let short: String = text.chars().take(60).collect();
        let ellipsis = if short.len() < text.len() { "…" } else { "" };
        format!("{what} {short:?}{ellipsis}")
    }
}

/// One partition of one micro-batch, in flat columnar form.
///
/// Invariants: `ends.len() == 2 * len`, `timestamps.len() == flags.len() == len`,
/// `ends` is non-decreasing and ends at `data.len()`, and a record without a
/// key has an empty key range (what [`weir_abi::check_batch`] checks).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Batch {
    data: Vec<u8>,
    ends: Vec<u32>,
    timestamps: Vec<i64>,
    flags: Vec<u8>,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A batch whose buffers break the [`Batch`] invariants (returned by a plugin).
#[derive(Debug, thiserror::Error)]
#[error("malformed batch from plugin: {0}")]
pub struct MalformedBatch(pub String);

impl From<LayoutError> for MalformedBatch {
    fn from(error: LayoutError) -> Self {
        MalformedBatch(error.to_string())
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records * 2),
            timestamps: Vec::with_capacity(records),
            flags: Vec::with_capacity(records),
        }
    }

    /// Builds a batch from its raw buffers, checking every invariant.
    pub fn from_parts(
        data: Vec<u8>,
        ends: Vec<u32>,
        timestamps: Vec<i64>,
        flags: Vec<u8>,
    ) -> Result<Self, MalformedBatch> {
        check_batch(&data, &ends, &timestamps, &flags)?;
        Ok(Self {
            data,
            ends,
            timestamps,
            flags,
        })
    }

    /// Rebuilds a batch from buffers that came out of [`Batch::into_parts`]
    /// unchanged (no validation).
    pub(crate) fn from_parts_unchecked(
        data: Vec<u8>,
        ends: Vec<u32>,
        timestamps: Vec<i64>,
        flags: Vec<u8>,
    ) -> Self {
        debug_assert_eq!(ends.len(), timestamps.len() * 2);
        Self {
            data,
            ends,
            timestamps,
            flags,
        }
    }

    /// The raw buffers: data, ends, timestamps, flags.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u32>, Vec<i64>, Vec<u8>) {
        (self.data, self.ends, self.timestamps, self.flags)
    }

    /// Borrowed raw buffers: data, ends, timestamps, flags.
    pub fn parts(&self) -> (&[u8], &[u32], &[i64], &[u8]) {
        (&self.data, &self.ends, &self.timestamps, &self.flags)
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Bytes of keys and values.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// Approximate memory used by the batch's contents.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.ends.len() * 4 + self.timestamps.len() * 8 + self.flags.len()
    }

    /// Appends one record.
    ///
    /// # Panics
    /// When the batch would exceed 4 GiB of data (a partition limit of the ABI).
    #[inline]
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: i64) {
        let (key, flags) = match key {
            Some(key) => (key, HAS_KEY),
            None => (&[][..], 0),
        };
        self.data.reserve(key.len() + value.len());
        let start = self.data.len();
        let key_end = start + key.len();
        let value_end = key_end + value.len();
        // SAFETY: `reserve` made room for both slices after `start`; both
        // are written before `set_len`, and neither overlaps `data`'s spare
        // capacity (they are borrowed immutably while `self` is borrowed mutably).
        unsafe {
            let target = self.data.as_mut_ptr();
            copy_short(key, target.add(start));
            copy_short(value, target.add(key_end));
            self.data.set_len(value_end);
        }
        self.ends.push(offset(key_end));
        self.ends.push(offset(value_end));
        self.timestamps.push(timestamp);
        self.flags.push(flags);
    }

    /// Appends a record given as a view.
    #[inline]
    pub fn push_ref(&mut self, record: RecordRef<'_>) {
        self.push(record.key, record.value, record.timestamp);
    }

    /// The record at `index`.
    ///
    /// # Panics
    /// When `index >= len()`.
    #[inline]
    pub fn get(&self, index: usize) -> RecordRef<'_> {
        let key_start = if index == 0 {
            0
        } else {
            self.ends[2 * index - 1] as usize
        };
        let key_end = self.ends[2 * index] as usize;
        let value_end = self.ends[2 * index + 1] as usize;
        let key = (self.flags[index] & HAS_KEY != 0).then(|| &self.data[key_start..key_end]);
        RecordRef {
            key,
            value: &self.data[key_end..value_end],
            timestamp: self.timestamps[index],
        }
    }

    /// Iterates over the records in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            batch: self,
            index: 0,
            start: 0,
        }
    }

    /// Appends every record of `other`, with one copy per buffer.
    pub fn append(&mut self, other: &Batch) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            self.clone_from(other);
            return;
        }
        let base = offset(self.data.len());
        offset(self.data.len() + other.data.len());
        self.data.extend_from_slice(&other.data);
        self.ends.extend(other.ends.iter().map(|end| end + base));
        self.timestamps.extend_from_slice(&other.timestamps);
        self.flags.extend_from_slice(&other.flags);
    }

    /// Concatenates batches in order.
    pub fn concat<'a>(batches: impl IntoIterator<Item = &'a Batch>) -> Batch {
        let batches: Vec<&Batch> = batches.into_iter().collect();
        let records = batches.iter().map(|b| b.len()).sum();
        let bytes = batches.iter().map(|b| b.data.len()).sum();
        let mut out = Batch::with_capacity(records, bytes);
        for batch in batches {
            out.append(batch);
        }
        out
    }

    /// The records at `indices`, in that order.
    pub fn select(&self, indices: &[u32]) -> Result<Batch, MalformedBatch> {
        let mut out = Batch::with_capacity(indices.len(), 0);
        for &index in indices {
            if index as usize >= self.len() {
                return Err(MalformedBatch(format!(
                    "index {index} out of range for {} records",
                    self.len()
                )));
            }
            out.push_ref(self.get(index as usize));
        }
        Ok(out)
    }

    /// Splits the batch into `parts` batches of near-equal record counts,
    /// keeping order (part 0 gets the first records).
    pub fn split_even(&self, parts: usize) -> Vec<Batch> {
        let parts = parts.max(1);
        let per_part = self.len().div_ceil(parts);
        let mut out: Vec<Batch> = Vec::with_capacity(parts);
        for part in 0..parts {
            let start = (part * per_part).min(self.len());
            let end = ((part + 1) * per_part).min(self.len());
            out.push(self.slice(start, end));
        }
        out
    }

    /// The same records, all with timestamp `timestamp` (no copy).
    pub fn retimed(mut self, timestamp: i64) -> Batch {
        self.timestamps.fill(timestamp);
        self
    }

    /// Records `start..end` as a new batch (one copy per buffer).
    pub fn slice(&self, start: usize, end: usize) -> Batch {
        if start >= end {
            return Batch::new();
        }
        let data_start = if start == 0 { 0 } else { self.ends[2 * start - 1] };
        let data_end = self.ends[2 * end - 1];
        Batch {
            data: self.data[data_start as usize..data_end as usize].to_vec(),
            ends: self.ends[2 * start..2 * end]
                .iter()
                .map(|e| e - data_start)
                .collect(),
            timestamps: self.timestamps[start..end].to_vec(),
            flags: self.flags[start..end].to_vec(),
        }
    }
}

/// Iterator over the records of a [`Batch`]; walks the offsets once.
pub struct Iter<'a> {
    batch: &'a Batch,
    index: usize,
    start: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = RecordRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<RecordRef<'a>> {
        let batch = self.batch;
        let index = self.index;
        if index >= batch.timestamps.len() {
            return None;
        }
        let key_end = batch.ends[2 * index] as usize;
        let value_end = batch.ends[2 * index + 1] as usize;
        let key = (batch.flags[index] & HAS_KEY != 0).then(|| &batch.data[self.start..key_end]);
        let record = RecordRef {
            key,
            value: &batch.data[key_end..value_end],
            timestamp: batch.timestamps[index],
        };
        self.index += 1;
        self.start = value_end;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batch.len() - self.index;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl<'a> IntoIterator for &'a Batch {
    type Item = RecordRef<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// One partition of a stream in one micro-batch: its records as a list of
/// chunks, in order. Operators that work record by record process chunk by
/// chunk, so records are not copied just to be concatenated.
pub type Partition = Vec<Batch>;

/// Records in all chunks of a partition.
pub fn partition_len(partition: &[Batch]) -> usize {
    partition.iter().map(Batch::len).sum()
}

#[inline]
fn offset(len: usize) -> u32 {
    u32::try_from(len).expect("a partition's batch is limited to 4 GiB of data")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        let mut batch = Batch::new();
        batch.push(Some(b"k1"), b"v1", 1);
        batch.push(None, b"value-two", 2);
        batch.push(Some(b""), b"", 3);
        batch
    }

    #[test]
    fn push_and_get_round_trip() {
        let batch = sample();
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.get(0).key, Some(&b"k1"[..]));
        assert_eq!(batch.get(1).key, None);
        assert_eq!(batch.get(1).value, b"value-two");
        assert_eq!(batch.get(2).key, Some(&b""[..]));
        assert_eq!(batch.get(2).timestamp, 3);
    }

    #[test]
    fn keys_and_values_of_every_length_are_copied_exactly() {
        let source: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        let mut batch = Batch::new();
        for len in 0..=source.len() {
            batch.push(Some(&source[..len]), &source[source.len() - len..], len as i64);
            batch.push(None, &source[..len], -(len as i64));
        }
        for len in 0..=source.len() {
            let keyed = batch.get(2 * len);
            assert_eq!(keyed.key, Some(&source[..len]));
            assert_eq!(keyed.value, &source[source.len() - len..]);
            let keyless = batch.get(2 * len + 1);
            assert_eq!((keyless.key, keyless.value), (None, &source[..len]));
        }
        let (d, e, t, f) = batch.clone().into_parts();
        assert_eq!(Batch::from_parts(d, e, t, f).unwrap(), batch);
    }

    #[test]
    fn parts_round_trip_and_validation() {
        let batch = sample();
        let (d, e, t, f) = batch.clone().into_parts();
        assert_eq!(Batch::from_parts(d, e, t, f).unwrap(), batch);
        assert!(Batch::from_parts(vec![1, 2], vec![0, 1], vec![0], vec![0]).is_err());
        assert!(Batch::from_parts(vec![1], vec![1, 0], vec![0], vec![1]).is_err());
        assert!(Batch::from_parts(vec![1], vec![1, 1], vec![0], vec![0]).is_err());
        // The second record has no key but a one-byte key range.
        assert!(Batch::from_parts(vec![1, 2], vec![0, 1, 2, 2], vec![0, 0], vec![0, 0]).is_err());
        assert!(Batch::from_parts(vec![1, 2], vec![0, 1, 1, 2], vec![0, 0], vec![0, 0]).is_ok());
        assert!(Batch::from_parts(vec![1, 2], vec![0, 1, 2, 2], vec![0, 0], vec![0, 1]).is_ok());
    }

    #[test]
    fn split_append_select_slice() {
        let batch = sample();
        let parts = batch.split_even(2);
        assert_eq!(parts.iter().map(Batch::len).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(Batch::concat(&parts), batch);
        let selected = batch.select(&[2, 0]).unwrap();
        assert_eq!(selected.get(0), batch.get(2));
        assert_eq!(selected.get(1), batch.get(0));
        assert!(batch.select(&[3]).is_err());
        assert_eq!(batch.slice(1, 3).get(0), batch.get(1));
        assert_eq!(batch.split_even(5).len(), 5);
    }
}
