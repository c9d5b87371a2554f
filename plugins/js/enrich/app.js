/**
 * Transform-with: events (left input) enriched with reference rows (right
 * input) of the same key; the JavaScript twin of `plugins/enrich`.
 *
 * Both inputs are JSON objects keyed by the same field. Each event gets the
 * fields of the last reference row with its key that it lacks (all of them,
 * overwriting its own, with `overwrite = "true"`). Events without a row pass
 * unchanged, or are dropped with `require-match = "true"`. Output objects are
 * written compactly with their fields in sorted order (by UTF-16 code units,
 * which is code point order for the fields of the examples).
 */

import * as weir from "weir";

const settings = { overwrite: false, "require-match": false };

weir.init((config) => {
  for (const name of Object.keys(settings)) {
    const text = config[name];
    if (text === undefined) continue;
    if (text !== "true" && text !== "false") {
      throw new Error(`enrich: ${name} must be true or false, not ${JSON.stringify(text)}`);
    }
    settings[name] = text === "true";
  }
});

function asObject(value, side) {
  const parsed = JSON.parse(weir.text(value));
  if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
    throw new Error(`enrich: ${side} value is not a JSON object`);
  }
  return parsed;
}

/** `object` with its fields in sorted order, as compact JSON. */
function sortedJson(object) {
  const sorted = {};
  for (const field of Object.keys(object).sort()) sorted[field] = object[field];
  return JSON.stringify(sorted);
}

weir.transformWith(
  (left, right, out) => {
    const reference = new Map();
    for (const row of right) {
      const rowObject = asObject(row.value, "right");
      if (row.key !== null) reference.set(row.keyText, rowObject);
    }
    for (const event of left) {
      const eventObject = asObject(event.value, "left");
      const row = event.key === null ? undefined : reference.get(event.keyText);
      if (row !== undefined) {
        for (const [field, value] of Object.entries(row)) {
          if (settings.overwrite || !Object.hasOwn(eventObject, field)) eventObject[field] = value;
        }
        out.emitRecord(event.key, sortedJson(eventObject), event.timestamp);
      } else if (!settings["require-match"]) {
        out.emitRecord(event.key, event.value, event.timestamp);
      }
    }
  },
  { name: "enrich-js" },
);
