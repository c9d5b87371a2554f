//! Flat-map: split-words (one record per word, keyed by the word) whose
//! words carry a prefix. A second version of split-words whose output shows
//! which version processed a record: the hot-load tests and benchmark swap
//! it in for split-words mid-stream, or run it in shadow beside it.
//!
//! Config:
//! - `prefix`: put before the tagged words. Default: `v2:`.
//! - `tag`: `both` (key and value, the default) or `value` (the key stays
//!   the word: the record differs from split-words' in its value only).
//! - `only-starting-with`: tag only the words that start with this text
//!   (default: every word).

use weir_guest::{Emitter, Error, Record};
use weir_split_words::for_each_word;

#[weir_guest::flat_map]
fn split_words_tagged(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    let config = weir_guest::config();
    let prefix = config.get_or("prefix", "v2:");
    let value_only = match config.get_or("tag", "both") {
        "both" => false,
        "value" => true,
        other => weir_guest::bail!("tag must be `both` or `value`, not `{other}`"),
    };
    let only = config.get_or("only-starting-with", "").as_bytes();
    let mut tagged = Vec::with_capacity(prefix.len() + 16);
    for_each_word(record.value(), |word| {
        if !word.starts_with(only) {
            out.emit_keyed(word, word);
            return;
        }
        tagged.clear();
        tagged.extend_from_slice(prefix.as_bytes());
        tagged.extend_from_slice(word);
        if value_only {
            out.emit_keyed(word, &tagged);
        } else {
            out.emit_keyed(&tagged, &tagged);
        }
    });
    Ok(())
}
