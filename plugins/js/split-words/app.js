/**
 * Flat-map: one record per whitespace-separated word of each record's value,
 * with the word as both key and value and the input's timestamp; the
 * JavaScript twin of `plugins/split-words`, through the SDK's batch API.
 *
 * Values are decoded as UTF-8 and split on Unicode's White_Space characters,
 * as the Rust plugin splits UTF-8 text (`char::is_whitespace`; JavaScript's
 * `\s` differs: it has U+FEFF and lacks U+0085); bytes that are not UTF-8
 * become U+FFFD, where the Rust plugin keeps them.
 *
 * SpiderMonkey runs inside the component without a JIT, where every
 * JavaScript step per word costs a fraction of a microsecond; so the plugin
 * takes none. The records of a chunk that share a timestamp (most of a
 * chunk does) are joined into one string of words with single spaces
 * between them, and `emitSplit` hands that string to the host, which cuts
 * it into records. In a chunk of printable ASCII (the common case, checked
 * once per chunk) a line is its words already; elsewhere each line's
 * whitespace is first replaced by single spaces.
 */

import * as weir from "weir";

/** Anything but printable ASCII and spaces. */
const NOT_PLAIN = /[^\x21-\x7e ]/;
/** A run of Unicode White_Space (Rust's `char::is_whitespace`). */
const WHITESPACE = /[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/g;
/** Two spaces or more. */
const SPACES = / {2,}/g;

weir.batch(
  "flat-map",
  (batch, out) => {
    const { data, ends, timestamps } = batch;
    const n = timestamps.length;
    const whole = weir.text(data);
    // In plain text a byte is a code unit: byte offsets are string offsets.
    const plain = !NOT_PLAIN.test(whole);
    for (let i = 0; i < n; ) {
      const time = timestamps[i];
      const lines = [];
      for (; i < n && timestamps[i] === time; i++) {
        const start = ends[2 * i];
        const end = ends[2 * i + 1];
        lines.push(plain ? whole.slice(start, end) : weir.text(data.subarray(start, end)).replace(WHITESPACE, " "));
      }
      let words = lines.join(" ");
      // Empty lines, and spaces at a line's ends or in a row, leave empty words.
      if (words.includes("  ") || words.startsWith(" ") || words.endsWith(" ")) {
        words = words.replace(SPACES, " ");
        if (words.startsWith(" ")) words = words.slice(1);
        if (words.endsWith(" ")) words = words.slice(0, -1);
      }
      if (words !== "") out.emitSplit(words, " ", { keyed: true, timestamp: time });
    }
  },
  { name: "split-words-js" },
);
