//! Reading input records: [`Batch`], a borrowed view of a flat input batch,
//! and [`Record`], one record of it.

use weir_abi::HAS_KEY;

use crate::Error;

/// A read-only view of one input batch, as laid out by the host: the key and
/// value bytes of every record back to back, two end offsets per record, a
/// timestamp column and a flags column.
///
/// Reading a record borrows from the batch: nothing is copied.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    data: &'a [u8],
    ends: &'a [u32],
    timestamps: &'a [i64],
    flags: &'a [u8],
}

impl<'a> Batch<'a> {
    /// Views flat batch buffers, checking that they are consistent (the
    /// host checks plugin output with the same rules): `n` timestamps, `n`
    /// flags and `2 * n` non-decreasing `ends` that end at `data.len()`, and
    /// an empty key range for each record without a key.
    pub fn new(
        data: &'a [u8],
        ends: &'a [u32],
        timestamps: &'a [i64],
        flags: &'a [u8],
    ) -> Result<Self, Error> {
        weir_abi::check_batch(data, ends, timestamps, flags)
            .map_err(|e| Error::msg(format!("malformed batch: {e}")))?;
        Ok(Self {
            data,
            ends,
            timestamps,
            flags,
        })
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// The total size of the keys and values of all records, in bytes.
    pub fn data_len(&self) -> usize {
        self.data.len()
    }

    /// The record at `index`, if `index < len()`.
    #[inline(always)]
    pub fn get(&self, index: usize) -> Option<Record<'a>> {
        if index < self.len() {
            Some(self.record(index))
        } else {
            None
        }
    }

    /// The records, in order.
    pub fn iter(&self) -> Records<'a> {
        Records {
            batch: *self,
            next: 0,
        }
    }

    /// Record `index`; `index < len()`.
    #[inline(always)]
    fn record(&self, index: usize) -> Record<'a> {
        let start = if index == 0 {
            0
        } else {
            self.ends[2 * index - 1] as usize
        };
        let key_end = self.ends[2 * index] as usize;
        let value_end = self.ends[2 * index + 1] as usize;
        let key = if self.flags[index] & HAS_KEY != 0 {
            Some(&self.data[start..key_end])
        } else {
            None
        };
        Record {
            key,
            value: &self.data[key_end..value_end],
            timestamp: self.timestamps[index],
            index,
        }
    }
}

impl<'a> IntoIterator for &Batch<'a> {
    type Item = Record<'a>;
    type IntoIter = Records<'a>;

    fn into_iter(self) -> Records<'a> {
        self.iter()
    }
}

impl<'a> IntoIterator for Batch<'a> {
    type Item = Record<'a>;
    type IntoIter = Records<'a>;

    fn into_iter(self) -> Records<'a> {
        self.iter()
    }
}

/// An iterator over the records of a [`Batch`], in order.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    batch: Batch<'a>,
    next: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    #[inline(always)]
    fn next(&mut self) -> Option<Record<'a>> {
        let record = self.batch.get(self.next)?;
        self.next += 1;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batch.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Records<'_> {}

impl std::iter::FusedIterator for Records<'_> {}

/// One input record: an optional key, a value and a timestamp, borrowed from
/// the input batch.
///
/// `Record` is `Copy`: pass it around freely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    key: Option<&'a [u8]>,
    value: &'a [u8],
    timestamp: i64,
    index: usize,
}

impl<'a> Record<'a> {
    /// A record outside any batch (its index is 0): for unit tests of plugin
    /// functions.
    pub fn new(key: Option<&'a [u8]>, value: &'a [u8], timestamp: i64) -> Self {
        Self {
            key,
            value,
            timestamp,
            index: 0,
        }
    }

    /// A record at `index` in its input (for the SDK's own loops).
    #[inline(always)]
    pub(crate) fn at(key: Option<&'a [u8]>, value: &'a [u8], timestamp: i64, index: usize) -> Self {
        Self {
            key,
            value,
            timestamp,
            index,
        }
    }

    /// The key, if the record has one.
    #[inline]
    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    /// The value.
    #[inline]
    pub fn value(&self) -> &'a [u8] {
        self.value
    }

    /// The timestamp, in milliseconds since the Unix epoch.
    #[inline]
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The index of this record in its input batch (for a
    /// [`map_with_state`](macro@crate::map_with_state) record, its index among
    /// the values of the whole call).
    #[inline]
    pub fn index(&self) -> usize {
        self.index
    }

    /// The value as UTF-8 text; an error if it is not valid UTF-8.
    pub fn value_str(&self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.value).map_err(|e| Error::msg(format!("value is not UTF-8: {e}")))
    }

    /// The key as UTF-8 text (`None` when the record has no key); an error if
    /// it is not valid UTF-8.
    pub fn key_str(&self) -> Result<Option<&'a str>, Error> {
        match self.key {
            None => Ok(None),
            Some(key) => std::str::from_utf8(key)
                .map(Some)
                .map_err(|e| Error::msg(format!("key is not UTF-8: {e}"))),
        }
    }

    /// Parses the value as JSON. The result may borrow from the value (`&str`
    /// fields without escapes, for instance).
    pub fn value_json<T: serde::Deserialize<'a>>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.value)
            .map_err(|e| Error::msg(format!("value is not valid JSON for this type: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<u32>, Vec<i64>, Vec<u8>) {
        // record 0: key "k", value "one"; record 1: no key, value "two";
        // record 2: empty key, empty value.
        (
            b"konetwo".to_vec(),
            vec![1, 4, 4, 7, 7, 7],
            vec![10, 20, 30],
            vec![1, 0, 1],
        )
    }

    #[test]
    fn reads_records() {
        let (data, ends, timestamps, flags) = sample();
        let batch = Batch::new(&data, &ends, &timestamps, &flags).unwrap();
        assert_eq!(batch.len(), 3);
        let records: Vec<_> = batch.iter().collect();
        assert_eq!(records[0].key(), Some(&b"k"[..]));
        assert_eq!(records[0].value(), b"one");
        assert_eq!(records[0].timestamp(), 10);
        assert_eq!(records[1].key(), None);
        assert_eq!(records[1].value(), b"two");
        assert_eq!(records[1].index(), 1);
        assert_eq!(records[2].key(), Some(&b""[..]));
        assert_eq!(records[2].value(), b"");
        assert_eq!(batch.get(3), None);
        assert_eq!(batch.iter().len(), 3);
    }

    #[test]
    fn rejects_malformed_batches() {
        let (data, ends, timestamps, flags) = sample();
        assert!(Batch::new(&data, &ends[..4], &timestamps, &flags).is_err());
        assert!(Batch::new(&data, &ends, &timestamps, &flags[..2]).is_err());
        assert!(Batch::new(&data[..6], &ends, &timestamps, &flags).is_err());
        let decreasing = [1, 4, 3, 7, 7, 7];
        assert!(Batch::new(&data, &decreasing, &timestamps, &flags).is_err());
        assert!(Batch::new(&[], &[], &[], &[]).unwrap().is_empty());
    }

    #[test]
    fn text_and_json_helpers() {
        let record = Record::new(Some(b"\xff"), br#"{"a": 1}"#, 5);
        assert!(record.key_str().is_err());
        assert_eq!(record.value_str().unwrap(), r#"{"a": 1}"#);
        let value: serde_json::Value = record.value_json().unwrap();
        assert_eq!(value["a"], 1);
        let bad = Record::new(None, b"{", 0);
        assert_eq!(bad.key_str().unwrap(), None);
        assert!(bad.value_json::<serde_json::Value>().is_err());
    }
}
