//! Flat-map: emits one record per whitespace-separated word of each record's
//! value, with the word as both key and value and the input's timestamp.
//!
//! Words are separated by ASCII whitespace, and within UTF-8 text also by
//! Unicode whitespace (U+00A0, U+3000, ...). Bytes that are not UTF-8 pass
//! through unchanged, split on ASCII whitespace only.
//!
//! Config: none.

use weir_guest::{Emitter, Error, Record};

#[weir_guest::flat_map]
fn split_words(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    let value = record.value();
    let mut i = 0;
    while i < value.len() {
        while i < value.len() && is_space(value[i]) {
            i += 1;
        }
        let start = i;
        // OR of the word's bytes: below 0x80 means pure ASCII.
        let mut high = 0u8;
        while i < value.len() && !is_space(value[i]) {
            high |= value[i];
            i += 1;
        }
        if start < i {
            emit_word(&value[start..i], high, out);
        }
    }
    Ok(())
}

/// The ASCII characters that `char::is_whitespace` accepts.
#[inline(always)]
fn is_space(byte: u8) -> bool {
    byte == b' ' || (b'\t'..=b'\r').contains(&byte)
}

/// Emits an ASCII-separated word; a non-ASCII one is split again on Unicode
/// whitespace when it is UTF-8.
#[inline(always)]
fn emit_word(word: &[u8], high: u8, out: &mut Emitter) {
    if high < 0x80 {
        out.emit_keyed(word, word);
        return;
    }
    match std::str::from_utf8(word) {
        Ok(text) => {
            for part in text.split_whitespace() {
                out.emit_keyed(part, part);
            }
        }
        Err(_) => out.emit_keyed(word, word),
    }
}
