/**
 * Map: passes records through unchanged, but misbehaves on a record whose
 * value contains the configured `word` (default `boom`), as `mode` says:
 * `throw` (an Error), `loop` (forever) or `allocate` (without end). For the
 * tests of the sandbox's limits and of error handling with JavaScript
 * plugins.
 */

import * as weir from "weir";

let word = "boom";
let mode = "throw";

weir.init((config) => {
  word = config.word ?? "boom";
  mode = config.mode ?? "throw";
  if (!["throw", "loop", "allocate"].includes(mode)) {
    throw new Error(`mode ${JSON.stringify(mode)}: one of throw, loop, allocate`);
  }
});

function explode(text) {
  if (mode === "loop") {
    for (;;) {}
  }
  if (mode === "allocate") {
    const hoard = [];
    for (;;) hoard.push(new Uint8Array(1 << 20).fill(1));
  }
  throw new Error(`found ${JSON.stringify(word)} in ${JSON.stringify(text)}`);
}

weir.map(
  (record) => {
    const text = record.text;
    if (text.includes(word)) explode(text);
    return record.value;
  },
  { name: "misbehave-js" },
);
