"""Flat-map: one record per whitespace-separated word of each record's value,
with the word as both key and value and the input's timestamp; the Python
twin of `plugins/split-words`, through the SDK's batch API.

Words are separated by ASCII whitespace (`bytes.split`), as in the Rust
plugin; the Rust plugin also splits UTF-8 text on Unicode whitespace
(U+00A0, U+3000, ...), which this one keeps inside words.
"""

import weir


@weir.batch("flat-map", name="split-words-py")
def split_words(batch, out):
    data, ends, timestamps = batch.data, batch.ends, batch.timestamps
    for i in range(len(timestamps)):
        words = data[ends[2 * i] : ends[2 * i + 1]].split()
        if words:
            out.emit_many(words, keyed=True, timestamp=timestamps[i])
