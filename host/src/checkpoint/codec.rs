//! A small binary encoding for operator state in checkpoints: little-endian
//! integers and length-prefixed byte strings, with batches as their four
//! buffers (checked again when read back).

use crate::record::Batch;

/// A snapshot that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("corrupt state snapshot: {0}")]
pub struct DecodeError(pub String);

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    bytes: Vec<u8>,
}

impl Encoder {
    /// An empty encoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    /// Writes a `u64`.
    pub fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Writes an `i64`.
    pub fn i64(&mut self, value: i64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    /// Writes a length-prefixed byte string.
    pub fn bytes(&mut self, value: &[u8]) {
        self.u64(value.len() as u64);
        self.bytes.extend_from_slice(value);
    }

    /// Writes a batch.
    pub fn batch(&mut self, batch: &Batch) {
        let (data, ends, timestamps, flags) = batch.parts();
        self.bytes(data);
        self.u64(ends.len() as u64);
        for end in ends {
            self.bytes.extend_from_slice(&end.to_le_bytes());
        }
        self.u64(timestamps.len() as u64);
        for timestamp in timestamps {
            self.i64(*timestamp);
        }
        self.bytes(flags);
    }
}

/// Reads values back in the order they were written.
#[derive(Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// Reads `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// True when everything was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError(format!(
                "wanted {n} more bytes, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// Reads a count of items each at least `min_size` bytes long (checked
    /// against what is left, so a corrupt count cannot allocate wildly).
    pub fn count(&mut self, min_size: usize) -> Result<usize, DecodeError> {
        let count = self.u64()?;
        if count.saturating_mul(min_size.max(1) as u64) > self.bytes.len() as u64 {
            return Err(DecodeError(format!("a count of {count} does not fit")));
        }
        Ok(count as usize)
    }

    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.count(1)?;
        self.take(len)
    }

    /// Reads a batch.
    pub fn batch(&mut self) -> Result<Batch, DecodeError> {
        let data = self.bytes()?.to_vec();
        let ends_len = self.count(4)?;
        let ends = self
            .take(ends_len * 4)?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        let timestamps_len = self.count(8)?;
        let timestamps = self
            .take(timestamps_len * 8)?
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let flags = self.bytes()?.to_vec();
        Batch::from_parts(data, ends, timestamps, flags).map_err(|e| DecodeError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_batches_read_back() {
        let mut batch = Batch::new();
        batch.push(Some(b"k"), b"value", 7);
        batch.push(None, b"", -1);
        let mut out = Encoder::new();
        out.u64(42);
        out.batch(&batch);
        out.bytes(b"tail");
        let bytes = out.finish();
        let mut input = Decoder::new(&bytes);
        assert_eq!(input.u64().unwrap(), 42);
        assert_eq!(input.batch().unwrap(), batch);
        assert_eq!(input.bytes().unwrap(), b"tail");
        assert!(input.is_empty());
        // Truncated snapshots are errors, not panics.
        for cut in 0..bytes.len() {
            let mut input = Decoder::new(&bytes[..cut]);
            let whole = input
                .u64()
                .and_then(|_| input.batch())
                .and_then(|_| input.bytes().map(drop));
            assert!(whole.is_err(), "cut at {cut}");
        }
    }
}
