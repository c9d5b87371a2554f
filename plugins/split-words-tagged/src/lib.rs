//! Flat-map: split-words (one record per word, keyed by the word) whose
//! words carry a prefix, as key and value. A second version of split-words
//! whose output shows which version processed a record: the hot-load tests
//! and benchmark swap it in for split-words mid-stream.
//!
//! Config:
//! - `prefix`: put before every word. Default: `v2:`.

use weir_guest::{Emitter, Error, Record};
use weir_split_words::for_each_word;

#[weir_guest::flat_map]
fn split_words_tagged(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    let prefix = weir_guest::config().get_or("prefix", "v2:");
    let mut tagged = Vec::with_capacity(prefix.len() + 16);
    for_each_word(record.value(), |word| {
        tagged.clear();
        tagged.extend_from_slice(prefix.as_bytes());
        tagged.extend_from_slice(word);
        out.emit_keyed(&tagged, &tagged);
    });
    Ok(())
}
