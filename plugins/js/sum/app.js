/**
 * Reducer: sums the values of each key, read as decimal integers, and writes
 * the total as decimal text; the JavaScript twin of `plugins/sum` for
 * integers (totals are valid inputs, so partial sums merge). A value that is
 * not an integer, or a total past 2^53, fails the key's values.
 */

import * as weir from "weir";

/** `bytes` as an integer: an optional sign then ASCII digits, trimmed. */
export function integer(bytes) {
  const text = weir.text(bytes).trim();
  if (!/^[+-]?[0-9]+$/.test(text)) throw new Error(`not an integer: ${JSON.stringify(text)}`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`integer out of range: ${text}`);
  return n;
}

weir.reduce(
  (values) => {
    let total = 0;
    for (const value of values) total += integer(value);
    if (!Number.isSafeInteger(total)) throw new Error("the sum is out of range");
    return String(total);
  },
  { name: "sum-js" },
);
