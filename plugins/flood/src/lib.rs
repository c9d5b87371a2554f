//! Test fixture: a flat-map that emits `N` copies of a record whose value is
//! `N`. Used to check output limits.

use weir_guest::{Emitter, Error, Record};

#[weir_guest::flat_map]
fn flood(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    let copies: u64 = record.value_str()?.trim().parse().map_err(Error::msg)?;
    for _ in 0..copies {
        out.emit(record.value());
    }
    Ok(())
}
