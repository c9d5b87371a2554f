/**
 * Update-state: a running sum per key across micro-batches (Spark's
 * `updateStateByKey` classic); the JavaScript twin of
 * `plugins/running-total`.
 *
 * For every key with new values in a batch, the values (decimal integers)
 * are added to the key's total so far, and one record is emitted: the key and
 * the new total, with the latest timestamp of the key's new values. The state
 * is the total (JSON). A key that timed out is forgotten.
 */

import * as weir from "weir";

function integer(bytes) {
  const text = weir.text(bytes).trim();
  if (!/^[+-]?[0-9]+$/.test(text)) throw new Error(`not an integer: ${JSON.stringify(text)}`);
  return Number(text);
}

weir.updateState(
  (key, values, state, out) => {
    if (values.length === 0) return null;
    let total = state ?? 0;
    for (const value of values) total += integer(value);
    if (!Number.isSafeInteger(total)) throw new Error(`the total is out of range: ${total}`);
    out.emitKeyed(key, String(total));
    return total;
  },
  { name: "running-total-js" },
);
