//! Test fixture: a map that busy-loops for `N` milliseconds on a value `N`
//! (and returns the value): a slow plugin, to check deadlines from just
//! under the limit.

use std::time::{Duration, Instant};

use weir_guest::{Error, Record};

#[weir_guest::map]
fn busy(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let millis: u64 = record.value_str()?.trim().parse().map_err(Error::msg)?;
    let until = Instant::now() + Duration::from_millis(millis);
    let mut spins: u64 = 0;
    while Instant::now() < until {
        spins = std::hint::black_box(spins + 1);
    }
    Ok(record.value().to_vec())
}
