"""Flat-map: one record per whitespace-separated word of each record's value,
with the word as both key and value and the input's timestamp; the Python
twin of `plugins/split-words`, through the SDK's batch API.

Words are separated by ASCII whitespace (`bytes.split`), as in the Rust
plugin; the Rust plugin also splits UTF-8 text on Unicode whitespace
(U+00A0, U+3000, ...), which this one keeps inside words.

No Python step is taken per word: the records of a chunk that share a
timestamp (most of a chunk does) are split and joined again with single
spaces in two calls, and ``emit_split`` hands the result to the host, which
cuts it into records.
"""

import weir


@weir.batch("flat-map", name="split-words-py")
def split_words(batch, out):
    data, ends, timestamps = batch.data, batch.ends, batch.timestamps
    n = len(timestamps)
    start = 0
    while start < n:
        time = timestamps[start]
        end = start + 1
        while end < n and timestamps[end] == time:
            end += 1
        lines = [data[ends[2 * i] : ends[2 * i + 1]] for i in range(start, end)]
        words = b" ".join(lines).split()
        if words:
            out.emit_split(b" ".join(words), b" ", keyed=True, timestamp=time)
        start = end
