//! Test fixture: an update-state whose state is a string of the size its
//! key's last value asks for. Used to check the guest memory a state call
//! needs.
//!
//! A value `N` makes the key's state `N` MiB of `x`s (a value `NK`: `N` KiB);
//! it emits one record per key, `<key> <state bytes before> <state bytes now>`.

use weir_guest::{Emitter, Error, Values};

#[weir_guest::update_state]
fn big_state(
    key: &[u8],
    values: Values<'_>,
    state: Option<String>,
    out: &mut Emitter,
) -> Result<Option<String>, Error> {
    let before = state.as_ref().map_or(0, String::len);
    drop(state);
    let mut size = before;
    for value in values {
        let text = std::str::from_utf8(value).map_err(Error::msg)?.trim();
        size = match text.strip_suffix('K') {
            Some(kib) => kib.parse::<usize>().map_err(Error::msg)? << 10,
            None => text.parse::<usize>().map_err(Error::msg)? << 20,
        };
    }
    let new = "x".repeat(size);
    out.emit(format!("{} {before} {}", String::from_utf8_lossy(key), new.len()));
    Ok(Some(new))
}
