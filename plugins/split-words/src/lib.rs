//! Flat-map: emits one record per whitespace-separated word of each record's
//! value, with the word as both key and value and the input's timestamp.
//!
//! UTF-8 values are split on Unicode whitespace; values that are not UTF-8 are
//! split on ASCII whitespace bytes instead of failing (their bytes pass
//! through unchanged).
//!
//! Config: none.

use weir_guest::{Emitter, Error, Record};

#[weir_guest::flat_map]
fn split_words(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    let value = record.value();
    if !value.is_ascii()
        && let Ok(text) = std::str::from_utf8(value)
    {
        for word in text.split_whitespace() {
            out.emit_keyed(word, word);
        }
    } else {
        split_ascii(value, out);
    }
    Ok(())
}

/// The ASCII characters that `char::is_whitespace` accepts.
#[inline]
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t'..=b'\r')
}

/// Splits on ASCII whitespace: the fast path, and the fallback for non-UTF-8 bytes.
#[inline]
fn split_ascii(value: &[u8], out: &mut Emitter) {
    let mut i = 0;
    let len = value.len();
    while i < len {
        while i < len && is_space(value[i]) {
            i += 1;
        }
        let start = i;
        while i < len && !is_space(value[i]) {
            i += 1;
        }
        if start < i {
            let word = &value[start..i];
            out.emit_keyed(word, word);
        }
    }
}
