//! Writing output records: [`Emitter`], the output batch builder, and
//! [`IntoOutput`], what map-like functions may return.

use std::borrow::Cow;

use weir_abi::{HAS_KEY, copy_short};

use crate::Record;

/// Builds an output batch: each `emit*` call appends one record straight into
/// the flat output buffers (no allocation per record once they have grown).
///
/// `emit` and `emit_keyed` give the new record the *default timestamp*: the
/// timestamp of the input record being processed (for `flat_map`), or, in
/// `map_partitions`, the largest timestamp of the input batch unless changed
/// with [`Emitter::set_default_timestamp`].
#[derive(Debug, Default)]
pub struct Emitter {
    data: Vec<u8>,
    ends: Vec<u32>,
    timestamps: Vec<i64>,
    flags: Vec<u8>,
    /// Records that fit in `ends`, `timestamps` and `flags` without growing
    /// any of them: one comparison per record instead of one per buffer.
    record_capacity: usize,
    default_timestamp: i64,
}

impl Emitter {
    /// An empty emitter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty emitter with room for `records` records totalling
    /// `data_bytes` bytes of keys and values.
    pub fn with_capacity(records: usize, data_bytes: usize) -> Self {
        let mut emitter = Self {
            data: Vec::with_capacity(data_bytes),
            ends: Vec::with_capacity(2 * records),
            timestamps: Vec::with_capacity(records),
            flags: Vec::with_capacity(records),
            record_capacity: 0,
            default_timestamp: 0,
        };
        emitter.record_capacity = emitter.fitting_records();
        emitter
    }

    /// Appends a record without a key, with the default timestamp.
    #[inline(always)]
    pub fn emit(&mut self, value: impl AsRef<[u8]>) {
        self.push(None, value.as_ref(), self.default_timestamp);
    }

    /// Appends a record with a key, with the default timestamp.
    #[inline(always)]
    pub fn emit_keyed(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.push(Some(key.as_ref()), value.as_ref(), self.default_timestamp);
    }

    /// Appends a record with every field given. Passing an input record's
    /// fields copies it through: `out.emit_record(r.key(), r.value(), r.timestamp())`.
    #[inline(always)]
    pub fn emit_record(&mut self, key: Option<&[u8]>, value: impl AsRef<[u8]>, timestamp: i64) {
        self.push(key, value.as_ref(), timestamp);
    }

    /// The timestamp `emit` and `emit_keyed` give to new records.
    pub fn default_timestamp(&self) -> i64 {
        self.default_timestamp
    }

    /// Sets the timestamp `emit` and `emit_keyed` give to new records (the SDK
    /// sets it to each input record's timestamp before calling a per-record function).
    pub fn set_default_timestamp(&mut self, timestamp: i64) {
        self.default_timestamp = timestamp;
    }

    /// The number of records emitted so far.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    /// Whether no record was emitted yet.
    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Reads back the records emitted so far (for tests).
    pub fn as_batch(&self) -> crate::Batch<'_> {
        crate::Batch::new(&self.data, &self.ends, &self.timestamps, &self.flags)
            .expect("an emitter always holds a well-formed batch")
    }

    /// The flat buffers: data, ends, timestamps, flags.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<u32>, Vec<i64>, Vec<u8>) {
        (self.data, self.ends, self.timestamps, self.flags)
    }

    /// Appends one record with a single capacity check for all four
    /// buffers. Always inlined: Cranelift does not inline, so a call per
    /// output record would stay a call in the compiled plugin. Every
    /// pointer and length is read before the first byte is written, so the
    /// compiler need not reload them after each store (a byte store could
    /// otherwise alias the buffers' own fields).
    #[inline(always)]
    fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: i64) {
        let (key, flags) = match key {
            Some(key) => (key, HAS_KEY),
            None => (&[][..], 0),
        };
        let bytes = key.len() + value.len();
        let records = self.timestamps.len();
        if records >= self.record_capacity || self.data.capacity() - self.data.len() < bytes {
            // By value: the emitter's own address never reaches a call, so
            // the compiler may keep its fields in registers across records
            // instead of reloading them after every byte written.
            *self = std::mem::take(self).grown(bytes);
        }
        let start = self.data.len();
        let key_end = start + key.len();
        let value_end = key_end + value.len();
        let (key_offset, value_offset) = (offset(key_end), offset(value_end));
        let data = self.data.as_mut_ptr();
        let ends = self.ends.as_mut_ptr();
        let timestamps = self.timestamps.as_mut_ptr();
        let flag_bytes = self.flags.as_mut_ptr();
        // SAFETY: after the check above (and `grown`), `data` has room for
        // `bytes` more bytes, and `ends`, `timestamps` and `flags` for one
        // more record (`record_capacity` never exceeds what the three hold:
        // see `fitting_records`); `ends` holds exactly two entries per record.
        // Every element up to each new length is written before `set_len`.
        unsafe {
            copy_short(key, data.add(start));
            copy_short(value, data.add(key_end));
            ends.add(2 * records).write(key_offset);
            ends.add(2 * records + 1).write(value_offset);
            timestamps.add(records).write(timestamp);
            flag_bytes.add(records).write(flags);
            self.data.set_len(value_end);
            self.ends.set_len(2 * records + 2);
            self.timestamps.set_len(records + 1);
            self.flags.set_len(records + 1);
        }
    }

    /// The emitter with room for one more record of `bytes` bytes
    /// (amortized: buffers at least double when they grow).
    #[cold]
    #[inline(never)]
    fn grown(mut self, bytes: usize) -> Self {
        self.data.reserve(bytes);
        self.ends.reserve(2);
        self.timestamps.reserve(1);
        self.flags.reserve(1);
        self.record_capacity = self.fitting_records();
        self
    }

    /// How many records `ends`, `timestamps` and `flags` can all hold.
    fn fitting_records(&self) -> usize {
        (self.ends.capacity() / 2)
            .min(self.timestamps.capacity())
            .min(self.flags.capacity())
    }
}

/// A batch is limited to 4 GiB of data by its `u32` offsets.
#[inline]
fn offset(len: usize) -> u32 {
    u32::try_from(len).expect("an output batch holds more than 4 GiB of data")
}

/// What a `map` or `filter_map` function may return for an input record.
///
/// - a value alone (`Vec<u8>`, `String`, `&[u8]`, `&str`, `Cow` of those, byte
///   arrays): the output record keeps the input record's key and timestamp;
/// - a `(key, value)` tuple of those: sets the key, keeps the timestamp;
/// - an [`Output`]: sets every field.
pub trait IntoOutput {
    /// Appends the output record for `input` to `out`.
    fn emit_into(self, input: &Record<'_>, out: &mut Emitter);
}

/// Byte views of the value types that [`IntoOutput`] and
/// [`IntoValue`](crate::IntoValue) accept alone.
pub(crate) trait AsBytes {
    fn bytes(&self) -> &[u8];
}

macro_rules! as_bytes {
    ($($ty:ty => $conv:expr),* $(,)?) => {$(
        impl AsBytes for $ty {
            #[inline]
            fn bytes(&self) -> &[u8] {
                let conv: fn(&Self) -> &[u8] = $conv;
                conv(self)
            }
        }
        impl IntoOutput for $ty {
            #[inline]
            fn emit_into(self, input: &Record<'_>, out: &mut Emitter) {
                out.emit_record(input.key(), AsBytes::bytes(&self), input.timestamp());
            }
        }
    )*};
}

as_bytes!(
    Vec<u8> => |v| v.as_slice(),
    String => |v| str::as_bytes(v),
    &[u8] => |v| v,
    &str => |v| str::as_bytes(v),
    &Vec<u8> => |v| v.as_slice(),
    &String => |v| str::as_bytes(v),
    Cow<'_, [u8]> => |v| v,
    Cow<'_, str> => |v| str::as_bytes(v),
    Box<[u8]> => |v| v,
    Box<str> => |v| str::as_bytes(v),
);

impl<const N: usize> IntoOutput for [u8; N] {
    #[inline]
    fn emit_into(self, input: &Record<'_>, out: &mut Emitter) {
        out.emit_record(input.key(), self, input.timestamp());
    }
}

impl<const N: usize> IntoOutput for &[u8; N] {
    #[inline]
    fn emit_into(self, input: &Record<'_>, out: &mut Emitter) {
        out.emit_record(input.key(), self, input.timestamp());
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> IntoOutput for (K, V) {
    #[inline]
    fn emit_into(self, input: &Record<'_>, out: &mut Emitter) {
        out.emit_record(Some(self.0.as_ref()), self.1, input.timestamp());
    }
}

/// An output record with every field chosen by the plugin.
///
/// ```
/// use weir_guest::{Output, Record};
///
/// fn retime(record: Record<'_>) -> Output<&[u8], &[u8]> {
///     Output { key: None, value: record.value(), timestamp: record.timestamp() / 1000 * 1000 }
/// }
/// # let _ = retime;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output<K = Vec<u8>, V = Vec<u8>> {
    /// The key; `None` for a record without a key.
    pub key: Option<K>,
    /// The value.
    pub value: V,
    /// The timestamp, in milliseconds since the Unix epoch.
    pub timestamp: i64,
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> IntoOutput for Output<K, V> {
    #[inline]
    fn emit_into(self, _input: &Record<'_>, out: &mut Emitter) {
        out.emit_record(self.key.as_ref().map(AsRef::as_ref), self.value, self.timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;

    #[test]
    fn keys_and_values_of_every_length_are_copied_exactly() {
        let source: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        // Starting empty and tiny makes the buffers grow at every size.
        for start in [Emitter::new(), Emitter::with_capacity(1, 1)] {
            let mut out = start;
            let mut expected = Vec::new();
            for len in 0..=source.len() {
                let (key, value) = (&source[..len], &source[source.len() - len..]);
                out.emit_record(Some(key), value, len as i64);
                out.emit_record(None, key, -(len as i64));
                expected.push((Some(key), value, len as i64));
                expected.push((None, key, -(len as i64)));
            }
            let batch = out.as_batch();
            let records: Vec<_> = batch
                .iter()
                .map(|r| (r.key(), r.value(), r.timestamp()))
                .collect();
            assert_eq!(records, expected);
        }
    }

    #[test]
    fn round_trip_through_a_batch() {
        let mut out = Emitter::with_capacity(2, 16);
        out.set_default_timestamp(7);
        out.emit("plain");
        out.emit_keyed("k", b"v");
        out.emit_record(Some(b""), "", -1);
        out.emit_record(None, vec![1u8, 2], 9);
        assert_eq!(out.len(), 4);

        let (data, ends, timestamps, flags) = out.into_parts();
        assert_eq!(data, b"plainkv\x01\x02");
        assert_eq!(ends, [0, 5, 6, 7, 7, 7, 7, 9]);
        assert_eq!(timestamps, [7, 7, -1, 9]);
        assert_eq!(flags, [0, 1, 1, 0]);

        let batch = Batch::new(&data, &ends, &timestamps, &flags).unwrap();
        let records: Vec<_> = batch
            .iter()
            .map(|r| (r.key(), r.value(), r.timestamp()))
            .collect();
        assert_eq!(
            records,
            [
                (None, &b"plain"[..], 7),
                (Some(&b"k"[..]), &b"v"[..], 7),
                (Some(&b""[..]), &b""[..], -1),
                (None, &b"\x01\x02"[..], 9),
            ]
        );
    }

    #[test]
    fn into_output_variants() {
        let input = Record::new(Some(b"key"), b"in", 42);
        let mut out = Emitter::new();
        "value".emit_into(&input, &mut out);
        ("new-key", String::from("v2")).emit_into(&input, &mut out);
        Output {
            key: None::<Vec<u8>>,
            value: b"v3".to_vec(),
            timestamp: 1,
        }
        .emit_into(&input, &mut out);
        b"v4".emit_into(&input, &mut out);
        let batch = out.as_batch();
        let records: Vec<_> = batch
            .iter()
            .map(|r| (r.key(), r.value(), r.timestamp()))
            .collect();
        assert_eq!(
            records,
            [
                (Some(&b"key"[..]), &b"value"[..], 42),
                (Some(&b"new-key"[..]), &b"v2"[..], 42),
                (None, &b"v3"[..], 1),
                (Some(&b"key"[..]), &b"v4"[..], 42),
            ]
        );
    }
}
