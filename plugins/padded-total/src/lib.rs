//! Update-state: a running sum of decimal integers per key, like
//! `running-total`, whose state is padded to about `state-bytes` bytes —
//! the plugin of `weir bench --suite state`, which needs state of a known
//! size that cannot come back altered unnoticed.
//!
//! For every key with new values in a micro-batch, the values are added to
//! the key's total so far and one record is emitted: the key and the new
//! total as decimal text. The state is `{"total":..,"pad":".."}`, the pad
//! made of the key and the total repeated, so that it is `state-bytes` long
//! in all (for totals of up to 12 digits); every state read back is checked
//! against the pad it must have, and a state that differs fails the key's
//! first value with an error naming the key. A key that timed out is
//! forgotten.
//!
//! Config: `state-bytes`, the size of each state in bytes (default 1024,
//! at least 64).

use std::sync::OnceLock;

use weir_guest::serde::{Deserialize, Serialize};
use weir_guest::{Config, Emitter, Error, Values};

/// One key's state.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "weir_guest::serde")]
struct Padded {
    /// The running total.
    total: i64,
    /// [`pad`] of the key and the total.
    pad: String,
}

/// The state size asked for, set once by `setup`.
static STATE_BYTES: OnceLock<usize> = OnceLock::new();

/// Bytes of the JSON around the pad: `{"total":` + 12 digits + `,"pad":"` + `"}`.
const FRAME: usize = 9 + 12 + 8 + 2;

fn setup(config: &Config) -> Result<(), Error> {
    let bytes = config.parse::<usize>("state-bytes")?.unwrap_or(1024);
    if bytes < 64 {
        return Err(Error::msg(format!(
            "padded-total: state-bytes must be at least 64, not {bytes}"
        )));
    }
    STATE_BYTES
        .set(bytes)
        .map_err(|_| Error::msg("padded-total: init called twice"))
}

/// The pad of `key` at `total`: `key:total;` repeated, cut to the size that
/// makes the state `state-bytes` long.
fn pad(key: &[u8], total: i64) -> String {
    let len = STATE_BYTES.get().copied().unwrap_or(1024) - FRAME;
    let unit = format!("{}:{total};", String::from_utf8_lossy(key));
    let mut pad = unit.repeat(len / unit.len() + 1);
    pad.truncate(len);
    pad
}

#[weir_guest::update_state(init = setup)]
fn padded_total(
    key: &[u8],
    values: Values<'_>,
    state: Option<Padded>,
    out: &mut Emitter,
) -> Result<Option<Padded>, Error> {
    if values.len() == 0 {
        // The key timed out: its state is removed whatever we return.
        return Ok(None);
    }
    let mut total = match state {
        Some(state) if state.pad != pad(key, state.total) => {
            return Err(Error::msg(format!(
                "padded-total: the state of key {:?} came back altered (total {})",
                String::from_utf8_lossy(key),
                state.total
            ))
            .at_record(0));
        }
        Some(state) => state.total,
        None => 0,
    };
    for (position, value) in values.enumerate() {
        let number = std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                Error::msg(format!(
                    "padded-total: not a decimal integer: {:?}",
                    String::from_utf8_lossy(value)
                ))
                .at_record(position)
            })?;
        total = total
            .checked_add(number)
            .ok_or_else(|| Error::msg("padded-total: integer overflow").at_record(position))?;
    }
    out.emit_keyed(key, total.to_string());
    Ok(Some(Padded {
        total,
        pad: pad(key, total),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[&[u8]], state: Option<Padded>) -> (Result<Option<Padded>, Error>, Vec<Vec<u8>>) {
        let storage = Values::storage(values);
        let mut out = Emitter::new();
        let result = padded_total(b"k7", Values::from_storage(&storage), state, &mut out);
        let records = out.as_batch().iter().map(|r| r.value().to_vec()).collect();
        (result, records)
    }

    #[test]
    fn adds_and_pads_the_state_to_its_size() {
        let (result, records) = run(&[b"5", b" 7"], None);
        let state = result.unwrap().unwrap();
        assert_eq!(state.total, 12);
        assert_eq!(records, [b"12".to_vec()]);
        let json = weir_guest::json::to_vec(&state).unwrap();
        assert!((1000..=1024).contains(&json.len()), "{}", json.len());
        let (result, _) = run(&[b"-2"], Some(state));
        assert_eq!(result.unwrap().unwrap().total, 10);
    }

    #[test]
    fn an_altered_state_is_refused() {
        let mut state = run(&[b"5"], None).0.unwrap().unwrap();
        state.total = 6;
        let error = run(&[b"1"], Some(state)).0.unwrap_err();
        assert!(error.message().contains("altered"), "{}", error.message());
    }
}
