//! Update-state: keeps a running sum per key across micro-batches (Spark's
//! `updateStateByKey` classic).
//!
//! Values are decimal integers (`i64`, an optional sign then ASCII digits;
//! surrounding whitespace is ignored). For every key with new values in a
//! micro-batch, the values are added to the key's total so far, and one
//! record is emitted: the key, the new running total as decimal text, and
//! the latest timestamp of the key's new values. The state of a key is its
//! total.
//!
//! A value that is not a decimal integer, or that makes the total overflow
//! an `i64`, fails that value, with an error quoting it (with
//! `on-error = "dead-letter"`, that value goes to the dead letters and the
//! key's other values still count). With a stage `timeout`, a key that
//! had no value for that long is forgotten: its total is removed and
//! nothing is emitted.
//!
//! Config: none.

use weir_guest::{Emitter, Error, Values};

#[weir_guest::update_state]
fn running_total(
    key: &[u8],
    values: Values<'_>,
    state: Option<i64>,
    out: &mut Emitter,
) -> Result<Option<i64>, Error> {
    if values.len() == 0 {
        // The key timed out: its state is removed whatever we return.
        return Ok(None);
    }
    let mut total = state.unwrap_or(0);
    for (position, value) in values.enumerate() {
        total = add(total, value).map_err(|error| error.at_record(position))?;
    }
    // The default timestamp is the latest timestamp of the key's new values.
    out.emit_keyed(key, total.to_string());
    Ok(Some(total))
}

/// `total + value`, `value` as decimal text.
fn add(total: i64, value: &[u8]) -> Result<i64, Error> {
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
        .and_then(|n| total.checked_add(n))
        .ok_or_else(|| Error::msg(format!("running-total: integer overflow adding {:?}", quoted())))
}

fn not_an_integer(value: &str) -> Error {
    Error::msg(format!("running-total: not a decimal integer: {value:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The new state, and the emitted (key, value) pairs.
    type Run = (Result<Option<i64>, Error>, Vec<(Vec<u8>, Vec<u8>)>);

    fn run(values: &[&[u8]], state: Option<i64>) -> Run {
        let storage = Values::storage(values);
        let mut out = Emitter::new();
        let result = running_total(b"k", Values::from_storage(&storage), state, &mut out);
        let records = out
            .as_batch()
            .iter()
            .map(|r| (r.key().unwrap().to_vec(), r.value().to_vec()))
            .collect();
        (result, records)
    }

    #[test]
    fn adds_to_the_running_total() {
        let (result, records) = run(&[b"1", b" 2\n", b"+3", b"-10"], Some(100));
        assert_eq!(result.unwrap(), Some(96));
        assert_eq!(records, [(b"k".to_vec(), b"96".to_vec())]);
        let (result, _) = run(&[b"7"], None);
        assert_eq!(result.unwrap(), Some(7));
    }

    #[test]
    fn a_timed_out_key_is_forgotten_silently() {
        let (result, records) = run(&[], Some(5));
        assert_eq!(result.unwrap(), None);
        assert!(records.is_empty());
    }

    #[test]
    fn bad_values_name_themselves() {
        let (result, records) = run(&[b"1", b"1.5"], None);
        let error = result.unwrap_err();
        assert_eq!(error.record_index(), Some(1));
        assert_eq!(error.message(), r#"running-total: not a decimal integer: "1.5""#);
        assert!(records.is_empty());

        let error = run(&[b"", b"2"], None).0.unwrap_err();
        assert_eq!(error.record_index(), Some(0));
        let error = run(&[b"1", b"9223372036854775807"], Some(0)).0.unwrap_err();
        assert_eq!(error.record_index(), Some(1));
        assert!(error.message().contains("overflow"));
        let error = run(&[b"99999999999999999999"], None).0.unwrap_err();
        assert!(error.message().contains("overflow"));
    }
}
