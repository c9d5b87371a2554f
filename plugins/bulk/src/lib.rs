//! Test fixture: a map-partitions that measures its input or emits large
//! records. Used to check the limits on how much data one call moves.
//!
//! When the partition's first value is `emit COUNT MIB`, it emits `COUNT`
//! records of `MIB` MiB each (values of `x`s); otherwise it emits one record
//! `records=N bytes=B`, the partition's record count and value bytes.

use weir_guest::{Batch, Emitter, Error};

#[weir_guest::map_partitions]
fn bulk(input: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
    let first = input.get(0).map(|record| record.value()).unwrap_or_default();
    let words: Vec<&str> = std::str::from_utf8(first)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if let ["emit", count, mib] = words.as_slice() {
        let count: usize = count.parse().map_err(Error::msg)?;
        let mib: usize = mib.parse().map_err(Error::msg)?;
        let value = vec![b'x'; mib << 20];
        for _ in 0..count {
            out.emit(&value);
        }
        return Ok(());
    }
    let bytes: usize = input.iter().map(|record| record.value().len()).sum();
    out.emit(format!("records={} bytes={bytes}", input.len()));
    Ok(())
}
