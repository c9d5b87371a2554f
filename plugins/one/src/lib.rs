//! Map: replaces each record's value with `1`, keeping its key and
//! timestamp — so that a `sum` or a `running-total` downstream counts records.
//!
//! Config: none.

use weir_guest::{Error, Record};

#[weir_guest::map]
fn one(_record: Record<'_>) -> Result<&'static str, Error> {
    Ok("1")
}
