//! Test fixture: a map that busy-loops for `N` milliseconds on a value `N`
//! (and returns the value): a slow plugin, to check deadlines from just
//! under the limit. On a value `sleep N` it calls `std::thread::sleep`
//! instead, which the host refuses (a blocked host call would outlive any
//! deadline).

use std::time::{Duration, Instant};

use weir_guest::{Error, Record};

#[weir_guest::map]
fn busy(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let text = record.value_str()?.trim();
    if let Some(millis) = text.strip_prefix("sleep ") {
        let millis: u64 = millis.parse().map_err(Error::msg)?;
        std::thread::sleep(Duration::from_millis(millis));
        return Ok(record.value().to_vec());
    }
    let millis: u64 = text.parse().map_err(Error::msg)?;
    let until = Instant::now() + Duration::from_millis(millis);
    let mut spins: u64 = 0;
    while Instant::now() < until {
        spins = std::hint::black_box(spins + 1);
    }
    Ok(record.value().to_vec())
}
