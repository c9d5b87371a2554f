/**
 * Flat-map: one record per whitespace-separated word of each record's value,
 * with the word as both key and value and the input's timestamp; the
 * JavaScript twin of `plugins/split-words`, through the SDK's batch API.
 *
 * Values are decoded as UTF-8 and split on JavaScript's whitespace (`\s`:
 * ASCII and Unicode whitespace, as the Rust plugin splits UTF-8 text); bytes
 * that are not UTF-8 become U+FFFD, where the Rust plugin keeps them.
 *
 * SpiderMonkey runs inside the component without a JIT, where every
 * JavaScript operation per word counts and a regular-expression split costs
 * several times a split on a string: a chunk of printable ASCII words
 * separated by single spaces (the common case, checked once per chunk) is
 * split on " ", any other chunk on `\s+`; the whole chunk's words go to the
 * SDK in one `emitMany` call, in runs that take their record's timestamp.
 */

import * as weir from "weir";

const WHITESPACE = /\s+/;
/** Anything but printable ASCII and spaces, or two spaces in a row. */
const NOT_PLAIN = /[^\x21-\x7e ]| {2}/;

weir.batch(
  "flat-map",
  (batch, out) => {
    const { data, ends, timestamps } = batch;
    const whole = weir.text(data);
    const plain = !NOT_PLAIN.test(whole);
    const all = [];
    const counts = new Uint32Array(timestamps.length);
    for (let i = 0; i < timestamps.length; i++) {
      const start = ends[2 * i];
      const end = ends[2 * i + 1];
      if (start === end) continue;
      // In plain text a byte is a code unit: byte offsets are string offsets.
      const words = plain ? whole.slice(start, end).split(" ") : weir.text(data.subarray(start, end)).split(WHITESPACE);
      // A leading or trailing space leaves an empty word at an end.
      if (words[0] === "") words.shift();
      if (words.length && words[words.length - 1] === "") words.pop();
      counts[i] = words.length;
      all.push.apply(all, words);
    }
    out.emitMany(all, { keyed: true, counts, timestamps });
  },
  { name: "split-words-js" },
);
