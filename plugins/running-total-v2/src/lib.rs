//! Update-state: the second version of `running-total`, whose state changed
//! format: a key's state is now an object with the sum of its values and
//! their count (`{"sum":12,"count":3}`), where `running-total` kept the sum
//! alone (a JSON number). It says so with `state_version = 2`, and converts
//! the states `running-total` kept (state version 1) with `migrate`, so that
//! it can be hot-loaded over a running `running-total` and the totals go on.
//!
//! Values are decimal integers, as for `running-total`. For every key with
//! new values in a micro-batch, one record is emitted: the key and
//! `"<sum> (<count> values)"`, stamped with the latest timestamp of the key's
//! new values. A state migrated from version 1 has a count of values unknown
//! to the old version; it starts at 0 (the sum is exact).
//!
//! Config: none.

use weir_guest::serde::{Deserialize, Serialize};
use weir_guest::{Emitter, Error, Values};

/// A key's state.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "weir_guest::serde")]
pub struct Total {
    /// The sum of the key's values so far.
    pub sum: i64,
    /// How many values were added (since the state was migrated, for a
    /// state kept by version 1).
    pub count: u64,
}

/// Converts a state of an earlier state version: version 1 (`running-total`)
/// kept the sum alone.
fn migrate(from_version: u32, old: i64) -> Result<Total, Error> {
    match from_version {
        1 => Ok(Total { sum: old, count: 0 }),
        other => Err(Error::msg(format!(
            "running-total-v2: no migration from state version {other}"
        ))),
    }
}

#[weir_guest::update_state(state_version = 2, migrate = migrate)]
fn running_total(
    key: &[u8],
    values: Values<'_>,
    state: Option<Total>,
    out: &mut Emitter,
) -> Result<Option<Total>, Error> {
    if values.len() == 0 {
        // The key timed out: its state is removed whatever we return.
        return Ok(None);
    }
    let mut total = state.unwrap_or_default();
    for (position, value) in values.enumerate() {
        total.sum = add(total.sum, value).map_err(|error| error.at_record(position))?;
        total.count += 1;
    }
    out.emit_keyed(key, format!("{} ({} values)", total.sum, total.count));
    Ok(Some(total))
}

/// `sum + value`, `value` as decimal text.
fn add(sum: i64, value: &[u8]) -> Result<i64, Error> {
    let quoted = || String::from_utf8_lossy(value).into_owned();
    let text = std::str::from_utf8(value)
        .map_err(|_| not_an_integer(&quoted()))?
        .trim();
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_an_integer(&quoted()));
    }
    text.parse::<i64>()
        .ok()
        .and_then(|n| sum.checked_add(n))
        .ok_or_else(|| {
            Error::msg(format!(
                "running-total-v2: integer overflow adding {:?}",
                quoted()
            ))
        })
}

fn not_an_integer(value: &str) -> Error {
    Error::msg(format!("running-total-v2: not a decimal integer: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_state_becomes_an_object_with_the_same_sum() {
        assert_eq!(migrate(1, -42).unwrap(), Total { sum: -42, count: 0 });
        assert!(migrate(3, 1).is_err());
    }

    #[test]
    fn adds_and_counts_values() {
        let storage = Values::storage(&[b"2", b" 3 "]);
        let mut out = Emitter::new();
        let state = running_total(
            b"k",
            Values::from_storage(&storage),
            Some(Total { sum: 5, count: 0 }),
            &mut out,
        );
        assert_eq!(state.unwrap(), Some(Total { sum: 10, count: 2 }));
        assert_eq!(out.as_batch().get(0).unwrap().value(), b"10 (2 values)");
    }
}
