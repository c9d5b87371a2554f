//! Flat-map: emits one record per whitespace-separated word of each record's
//! value, with the word as both key and value and the input's timestamp.
//!
//! Words are separated by ASCII whitespace, and within UTF-8 text also by
//! Unicode whitespace (U+00A0, U+3000, ...). Bytes that are not UTF-8 pass
//! through unchanged, split on ASCII whitespace only.
//!
//! Config: none.
//!
//! ASCII text, the common case, is scanned eight bytes at a time: one 64-bit
//! load yields a bit per whitespace byte, and the bits where that changes
//! are the words' starts and ends. A word of five letters costs two such
//! edges and part of one eight-byte step instead of a dozen byte steps, and
//! every loop iteration saved in a Wasm plugin also saves the runtime's
//! interruption check on the loop's back edge. The first non-ASCII byte
//! sends the rest of the value to a byte-at-a-time loop that understands
//! Unicode whitespace. The host's native twin of this plugin
//! (`weir::operator::native::library::split_words`, used by `weir bench`)
//! calls the same splitter: both depend on the `weir-split-words` crate in
//! `words/`.

use weir_guest::{Emitter, Error, Record};
use weir_split_words::for_each_word;

#[weir_guest::flat_map]
fn split_words(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    for_each_word(record.value(), |word| out.emit_keyed(word, word));
    Ok(())
}
