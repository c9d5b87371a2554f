//! Test fixture, not a real transform: an identity map that panics
//! (trapping the instance) on a record whose value ends in a number that is
//! a multiple of `every` — so on 1% of the records `w1`, `w2`, ... with the
//! default. The hot-load tests swap it in as a bad candidate that must be
//! rolled back.
//!
//! Config:
//! - `every`: the divisor. Default: `100`.

use weir_guest::{Error, Record};

#[weir_guest::map]
fn trap_every(record: Record<'_>) -> Result<&[u8], Error> {
    let every: u64 = weir_guest::config()
        .get_or("every", "100")
        .parse()
        .unwrap_or(100)
        .max(1);
    let value = record.value();
    let digits = value.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    if digits > 0
        && let Ok(number) = std::str::from_utf8(&value[value.len() - digits..])
            .unwrap_or("")
            .parse::<u64>()
        && number % every == 0
    {
        panic!("trap-every: record {number} is a multiple of {every}");
    }
    Ok(value)
}
