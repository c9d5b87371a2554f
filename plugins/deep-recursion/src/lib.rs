//! Test fixture: a map that, for a value `N`, recurses `N` levels deep (and
//! returns the value). Frames hold only scalars, so the recursion uses the
//! Wasm stack (bounded by the engine) rather than the module's shadow stack
//! in linear memory. Used to check the stack limit.

use weir_guest::{Error, Record};

#[inline(never)]
fn descend(depth: u64, acc: u64) -> u64 {
    if depth == 0 {
        return acc;
    }
    let below = std::hint::black_box(descend(depth - 1, acc.wrapping_mul(31)));
    below.wrapping_add(std::hint::black_box(1))
}

#[weir_guest::map]
fn recurse(record: Record<'_>) -> Result<Vec<u8>, Error> {
    let depth: u64 = record.value_str()?.trim().parse().map_err(Error::msg)?;
    std::hint::black_box(descend(depth, 7));
    Ok(record.value().to_vec())
}
