//! Writing output records: [`Emitter`], the output batch builder, and
//! [`IntoOutput`], what map-like functions may return.

use std::borrow::Cow;

use crate::Record;
use crate::record::FLAG_HAS_KEY;

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
        Self {
            data: Vec::with_capacity(data_bytes),
            ends: Vec::with_capacity(2 * records),
            timestamps: Vec::with_capacity(records),
            flags: Vec::with_capacity(records),
            default_timestamp: 0,
        }
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

    // Always inlined: Cranelift does not inline, so a call per output record
    // would stay a call in the compiled plugin.
    #[inline(always)]
    fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: i64) {
        let flags = match key {
            Some(key) => {
                append(&mut self.data, key);
                FLAG_HAS_KEY
            }
            None => 0,
        };
        self.ends.push(offset(self.data.len()));
        append(&mut self.data, value);
        self.ends.push(offset(self.data.len()));
        self.timestamps.push(timestamp);
        self.flags.push(flags);
    }
}

/// A batch is limited to 4 GiB of data by its `u32` offsets.
/// Appends `bytes` to `data`.
///
/// Short slices (most keys and values) are copied with a few unaligned word
/// loads and stores instead of `extend_from_slice`: in a Wasm module built
/// with bulk memory, that becomes a `memory.copy`, which wasmtime runs as a
/// call out of the module into the runtime — far dearer than the copy itself
/// for a word of a few bytes.
#[inline(always)]
fn append(data: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len();
    if len > 16 {
        data.extend_from_slice(bytes);
        return;
    }
    data.reserve(16);
    // SAFETY: `reserve(16)` guarantees room for 16 more bytes after
    // `data.len()`, and `len <= 16`. Every read stays within `bytes` (the
    // two overlapping loads of each size start at 0 and at `len - size`,
    // both in bounds because `len >= size` in that branch) and every write
    // within the reserved room. Unaligned accesses are used throughout. The
    // bytes `data.len()..data.len() + len` are all written before `set_len`.
    unsafe {
        let source = bytes.as_ptr();
        let target = data.as_mut_ptr().add(data.len());
        if len >= 8 {
            let head = source.cast::<u64>().read_unaligned();
            let tail = source.add(len - 8).cast::<u64>().read_unaligned();
            target.cast::<u64>().write_unaligned(head);
            target.add(len - 8).cast::<u64>().write_unaligned(tail);
        } else if len >= 4 {
            let head = source.cast::<u32>().read_unaligned();
            let tail = source.add(len - 4).cast::<u32>().read_unaligned();
            target.cast::<u32>().write_unaligned(head);
            target.add(len - 4).cast::<u32>().write_unaligned(tail);
        } else if len > 0 {
            *target = *source;
            *target.add(len / 2) = *source.add(len / 2);
            *target.add(len - 1) = *source.add(len - 1);
        }
        data.set_len(data.len() + len);
    }
}

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
    fn append_copies_every_length_exactly() {
        let source: Vec<u8> = (0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(1)).collect();
        for len in 0..=source.len() {
            for prefix in [0usize, 1, 7, 15] {
                let mut data = vec![0xEE; prefix];
                data.shrink_to_fit();
                super::append(&mut data, &source[..len]);
                assert_eq!(data.len(), prefix + len);
                assert!(data[..prefix].iter().all(|&b| b == 0xEE));
                assert_eq!(&data[prefix..], &source[..len]);
            }
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
