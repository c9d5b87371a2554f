/**
 * Map: parses each record's value as a JSON object and sets the record's key
 * to one of its fields; the timestamp is kept. The value is kept whole, or
 * replaced by another field when `value-field` is set. The JavaScript twin
 * of `plugins/json-key-by`.
 *
 * A string field becomes its text, any other scalar (number, boolean, `null`)
 * its JSON text as JavaScript writes it (`1.0` becomes `1`, where the Rust
 * plugin writes `1.0`). A value that is not valid JSON, not an object, or
 * lacks a field (or has an array or object there) fails the record with a
 * message saying which.
 *
 * Config: `field` (required), `value-field` and `timestamp-field`
 * (optional), as for the Rust plugin.
 */

import * as weir from "weir";

const settings = { field: null, valueField: null, timestampField: null };

weir.init((config) => {
  if (config.field === undefined) throw new Error("json-key-by: missing config key `field`");
  settings.field = config.field;
  settings.valueField = config["value-field"] ?? null;
  settings.timestampField = config["timestamp-field"] ?? null;
});

function scalar(object, name) {
  if (!Object.hasOwn(object, name)) throw new Error(`json-key-by: missing field \`${name}\``);
  const value = object[name];
  if (typeof value === "string") return value;
  if (value !== null && typeof value === "object") {
    throw new Error(`json-key-by: field \`${name}\` is not a scalar`);
  }
  return JSON.stringify(value);
}

weir.map(
  (record) => {
    let object;
    try {
      object = JSON.parse(record.text);
    } catch (error) {
      throw new Error(`json-key-by: invalid JSON: ${error.message}`);
    }
    if (object === null || typeof object !== "object" || Array.isArray(object)) {
      throw new Error("json-key-by: value is not a JSON object");
    }
    const key = scalar(object, settings.field);
    const value = settings.valueField === null ? record.value : scalar(object, settings.valueField);
    if (settings.timestampField === null) return [key, value];
    const timestamp = object[settings.timestampField];
    if (!Number.isSafeInteger(timestamp)) {
      throw new Error(
        `json-key-by: field \`${settings.timestampField}\` is not an integer timestamp in milliseconds`,
      );
    }
    return [key, value, timestamp];
  },
  { name: "json-key-by-js" },
);
