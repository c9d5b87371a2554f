/**
 * Weir's guest SDK for JavaScript: a transform is a registered function.
 *
 * A plugin is a module (`app.js`) that registers one function:
 *
 *     import * as weir from "weir";
 *
 *     weir.flatMap((record, out) => {
 *       for (const word of record.text.split(/\s+/)) {
 *         if (word) out.emitKeyed(word, word);
 *       }
 *     }, { name: "split-words" });
 *
 * and `weir plugin build DIR` turns it into a component (with
 * componentize-js, over the same WIT contract as Rust and Python plugins).
 * The host calls the plugin once per chunk of a partition with the records
 * as flat buffers; the SDK hands them to the function one record at a time,
 * or, with the batch API (`weir.batch`), as the buffers themselves.
 *
 * Registration functions (one per plugin), each taking the function and
 * optional `{ name, version }` (the plugin's metadata; by default the
 * function's name and `0.1.0`):
 *
 * - `map(f)`: `f(record)` returns the new value (string or bytes), a
 *   `[key, value]` pair, or a `[key, value, timestamp]` triple; the record
 *   keeps its timestamp unless given (and its key when only a value is
 *   returned).
 * - `flatMap(f)`: `f(record, out)` emits zero or more records on `out` (an
 *   {@link Emitter}; records emitted with `emit` and `emitKeyed` take the
 *   input record's timestamp).
 * - `filter(f)`: `f(record)` returns whether to keep the record (the host
 *   keeps it as it is, without a copy).
 * - `filterMap(f)`: `f(record)` returns `null` or `undefined` to drop the
 *   record, else what `map` returns.
 * - `mapPartitions(f)`: `f(records, out)` sees the chunk's records (an array
 *   of {@link Record}) at once.
 * - `batch(kind, f)`: `f(batch, out)` sees the chunk as a {@link BatchView}
 *   (the `data` bytes and `ends` offsets); `kind` is the operator the plugin
 *   implements (`"flat-map"`, `"map"`, `"filter-map"` or
 *   `"map-partitions"`). The interpreter costs a fraction of a microsecond
 *   per JavaScript step, so the batch API's emitters take few per record:
 *   `out.emitMany(values)` a few, and `out.emitSplit(text, " ")` none (the
 *   host cuts the text into records).
 * - `reduce(f)`: `f(values)` combines a key's values (an array of bytes)
 *   into one (string or bytes), for `reduce-by-key` and reducing windows; it
 *   must be associative and commutative.
 * - `updateState(f)`: `f(key, values, state, out)` gets a key's new values of
 *   the batch (an array of bytes; empty when the key timed out) and its
 *   state (any JSON value, `null` at first), emits on `out` (by default with
 *   the latest timestamp of the values) and returns the new state, or
 *   `null`/`undefined` to remove it.
 * - `mapWithState(f)`: `f(event, state, out)` is called once per record of a
 *   key, in arrival order, with the key's {@link State} (its `value`, any
 *   JSON value, `null` when absent, to read, set or change in place), and
 *   once more when the key timed out (`event.timedOut`; the state is removed
 *   afterwards); `event` is a {@link StateEvent}. Records emitted take the
 *   event's timestamp (the batch time for a timeout).
 * - `transformWith(f)`: `f(left, right, out)` sees one partition of both
 *   inputs of a `transform-with` stage at once (two arrays of
 *   {@link Record}); records emitted take the latest timestamp of both.
 *
 * Bytes are `Uint8Array`s (views of the chunk: copy one to keep it past the
 * call); {@link text} decodes them as UTF-8, and records have `text` and
 * `keyText`. Timestamps are numbers of milliseconds since the Unix epoch.
 *
 * Errors: in the per-record functions an exception thrown for a record fails
 * that record, with the error's message and stack (the stage's `on-error`
 * policy decides what happens; in `mapWithState`, the record the function
 * was called for, or the key when it timed out); in `mapPartitions`,
 * `transformWith`, the batch API and for {@link BatchError} it fails the
 * whole chunk. `weir.init(f)` registers an optional function called once per
 * instance with the stage's `config` as an object of strings; throwing there
 * stops the pipeline before it starts, with the message. `weir.log` writes to
 * the host's log.
 */

import { write as logWrite } from "weir:plugin/log@0.2.0";

/** The version of this SDK (the Weir release it ships with). */
export const SDK_VERSION = "0.1.0";

/** Which WIT interface each kind's plugin exports. */
const EXPORT_OF = {
  map: "packedTransform",
  "flat-map": "packedTransform",
  filter: "packedTransform",
  "filter-map": "packedTransform",
  "map-partitions": "packedTransform",
  reducer: "reducer",
  "update-state": "keyedState",
  "map-with-state": "keyedState",
  "transform-with": "coTransform",
};

let plugin = null;
let initFunction = null;
let stageConfig = {};

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");

/** Fails the whole chunk (not one record) with this message. */
export class BatchError extends Error {
  constructor(message) {
    super(message);
    this.name = "BatchError";
  }
}

/** `bytes` (a `Uint8Array`) decoded as UTF-8 (invalid sequences as U+FFFD). */
export function text(bytes) {
  return decoder.decode(bytes);
}

/**
 * One input record: `key` (bytes or `null`), `value` (bytes) and `timestamp`
 * (milliseconds since the Unix epoch); `text` and `keyText` are the value and
 * key decoded as UTF-8.
 */
export class Record {
  constructor(key, value, timestamp) {
    this.key = key;
    this.value = value;
    this.timestamp = timestamp;
  }

  /** The value as text. */
  get text() {
    return decoder.decode(this.value);
  }

  /** The key as text, or `null`. */
  get keyText() {
    return this.key === null ? null : decoder.decode(this.key);
  }
}

/**
 * The state of one key in `mapWithState`: `value` is any JSON value, `null`
 * when the key has none. Set it, or change it in place; what it holds after
 * the key's last call is kept for the next batch (`null`: removed).
 */
export class State {
  constructor(value = null) {
    this.value = value;
  }

  /** Whether the key has a state. */
  get exists() {
    return this.value !== null && this.value !== undefined;
  }

  /** Removes the key's state; returns the value it had. */
  remove() {
    const value = this.value;
    this.value = null;
    return value;
  }
}

/**
 * What a `mapWithState` function is called for: a new record of a key
 * (`value` and `timestamp` set), or the key's timeout (`timedOut`; `value` is
 * `null` and `timestamp` the batch's time). This is the key's last call then:
 * its state is removed afterwards, whatever the function sets.
 */
export class StateEvent {
  constructor(key, value, timestamp, timedOut = false) {
    this.key = key;
    this.value = value;
    this.timestamp = timestamp;
    this.timedOut = timedOut;
  }

  /** The value as text (`null` for a timeout). */
  get text() {
    return this.value === null ? null : decoder.decode(this.value);
  }

  /** The key as text. */
  get keyText() {
    return decoder.decode(this.key);
  }
}

/**
 * A chunk of records in the host's flat layout: record `i` has its key at
 * `data[start, ends[2i])` where `start` is `ends[2i-1]` (0 for `i = 0`),
 * present when bit 0 of `flags[i]` is set, and its value at
 * `data[ends[2i], ends[2i+1])`; `timestamps[i]` (a `BigInt64Array`) is its
 * time, also as a number through `timestamp(i)`.
 */
export class BatchView {
  constructor(data, ends, timestamps, flags) {
    this.data = data;
    this.ends = ends;
    this.timestamps = timestamps;
    this.flags = flags;
  }

  /** The number of records. */
  get length() {
    return this.timestamps.length;
  }

  /** The value of record `i` (a view of `data`). */
  value(i) {
    return this.data.subarray(this.ends[2 * i], this.ends[2 * i + 1]);
  }

  /** The key of record `i` (a view of `data`), or `null`. */
  key(i) {
    if (!(this.flags[i] & 1)) return null;
    return this.data.subarray(i ? this.ends[2 * i - 1] : 0, this.ends[2 * i]);
  }

  /** The timestamp of record `i`, as a number. */
  timestamp(i) {
    return Number(this.timestamps[i]);
  }

  /** Every record as a {@link Record}, in order. */
  records() {
    const records = new Array(this.length);
    for (let i = 0; i < records.length; i++) {
      records[i] = new Record(this.key(i), this.value(i), Number(this.timestamps[i]));
    }
    return records;
  }
}

/** The output buffers, kept across calls (one call runs at a time). */
const buffers = {
  data: new Uint8Array(1 << 16),
  ends: new Uint32Array(1 << 12),
  timestamps: new BigInt64Array(1 << 11),
  flags: new Uint8Array(1 << 11),
};

function grown(array, needed) {
  let length = array.length;
  while (length < needed) length *= 2;
  const bigger = new array.constructor(length);
  bigger.set(array);
  return bigger;
}

/**
 * Collects output records straight into the flat layout the host reads.
 *
 * `emit` and `emitKeyed` give a record the *default timestamp*: the input
 * record's (in `mapPartitions` and the batch API, the latest of the chunk's;
 * in `updateState`, the latest of the key's new values), unless set with
 * `timestamp`.
 */
export class Emitter {
  constructor(timestamp = 0) {
    /** The timestamp `emit` and `emitKeyed` give to new records. */
    this.timestamp = timestamp;
    this.count = 0;
    this.at = 0;
    /** What `emitSplit` gathered and has not laid out yet, or `null`. */
    this.pending = null;
  }

  /** The number of records emitted so far. */
  get length() {
    let count = this.count;
    if (this.pending !== null) {
      const { texts, separator } = this.pending;
      for (const text of texts) count += text.split(separator).length;
    }
    return count;
  }

  /** Emits a record without a key. */
  emit(value) {
    this.emitRecord(null, value, this.timestamp);
  }

  /** Emits a record with `key`. */
  emitKeyed(key, value) {
    this.emitRecord(key, value, this.timestamp);
  }

  /** Emits a record with every field given (`key` may be `null`). */
  emitRecord(key, value, timestamp) {
    if (this.pending !== null) this.settle();
    const n = this.count;
    if (buffers.timestamps.length <= n) {
      buffers.timestamps = grown(buffers.timestamps, n + 1);
      buffers.flags = grown(buffers.flags, n + 1);
      buffers.ends = grown(buffers.ends, 2 * n + 2);
    }
    if (key === null || key === undefined) {
      buffers.ends[2 * n] = this.at;
      buffers.flags[n] = 0;
    } else {
      this.put(key);
      buffers.ends[2 * n] = this.at;
      buffers.flags[n] = 1;
    }
    this.put(value);
    buffers.ends[2 * n + 1] = this.at;
    buffers.timestamps[n] = BigInt(timestamp);
    this.count = n + 1;
  }

  /**
   * Emits one record per value of `values` (strings or bytes), each keyed by
   * itself when `keyed`, all with `timestamp` (default: the default
   * timestamp) — or, with `counts` and `timestamps`, in runs: the first
   * `counts[0]` values take `timestamps[0]`, the next `counts[1]` take
   * `timestamps[1]`, and so on (`timestamps` may be the batch's own
   * `BigInt64Array`). An array of strings is joined and encoded in one call,
   * not one per value, so a plugin that gathers a whole chunk's output into
   * one call pays the SDK's overhead once per chunk; what is left is a few
   * steps per value (see {@link Emitter#emitSplit} for none).
   */
  emitMany(values, { keyed = false, timestamp = this.timestamp, counts = null, timestamps = null } = {}) {
    if (this.pending !== null) this.settle();
    const first = this.count;
    const count = values.length;
    const needed = first + count;
    if (buffers.timestamps.length < needed) {
      buffers.timestamps = grown(buffers.timestamps, needed);
      buffers.flags = grown(buffers.flags, needed);
      buffers.ends = grown(buffers.ends, 2 * needed);
    }
    if (counts !== null) {
      let at = first;
      for (let run = 0; run < counts.length; run++) {
        const end = at + counts[run];
        if (end > needed) throw new RangeError("emitMany: the counts add up to more than the values");
        if (end > at) buffers.timestamps.fill(BigInt(timestamps[run]), at, end);
        at = end;
      }
      if (at !== needed) throw new RangeError("emitMany: the counts add up to fewer than the values");
    } else {
      buffers.timestamps.fill(BigInt(timestamp), first, needed);
    }
    if (!this.putJoined(values, keyed)) {
      // Some value is bytes: one at a time.
      const { ends, flags } = buffers;
      for (let n = first; n < needed; n++) {
        const value = values[n - first];
        if (keyed) {
          this.put(value);
          ends[2 * n] = this.at;
          flags[n] = 1;
        } else {
          ends[2 * n] = this.at;
          flags[n] = 0;
        }
        this.put(value);
        ends[2 * n + 1] = this.at;
      }
    }
    this.count = needed;
  }

  /**
   * Emits one record per piece of `text` cut at `separator` (one ASCII
   * character): what `emitMany(text.split(separator), options)` emits
   * (`keyed` and `timestamp` as there), without a step per record in
   * JavaScript — the host cuts the text. The fast path for many small
   * records: a word count joins a line's words with a space and emits the
   * line. An empty piece is an empty record (`"".split(" ")` is `[""]`).
   *
   * Successive calls with the same `separator` and `keyed` are gathered;
   * any other emit in the same call lays out what was gathered as records
   * first, at the cost of those steps.
   */
  emitSplit(text, separator, { keyed = false, timestamp = this.timestamp } = {}) {
    if (typeof text !== "string") {
      throw new TypeError(`emitSplit cuts a string, not ${text === null ? "null" : typeof text}`);
    }
    if (typeof separator !== "string" || separator.length !== 1 || separator.charCodeAt(0) > 0x7f) {
      throw new TypeError(`emitSplit's separator is one ASCII character, not ${JSON.stringify(separator)}`);
    }
    const pending = this.pending;
    if (this.count === 0 && (pending === null || (pending.separator === separator && pending.keyed === keyed))) {
      if (pending === null) {
        this.pending = { separator, keyed, texts: [text], timestamps: [timestamp] };
      } else {
        pending.texts.push(text);
        pending.timestamps.push(timestamp);
      }
    } else {
      this.emitMany(text.split(separator), { keyed, timestamp });
    }
  }

  /** Lays out what `emitSplit` gathered as records (the slow path). */
  settle() {
    const { separator, keyed, texts, timestamps } = this.pending;
    this.pending = null;
    for (let i = 0; i < texts.length; i++) {
      this.emitMany(texts[i].split(separator), { keyed, timestamp: timestamps[i] });
    }
  }

  /**
   * Writes `values` (when they are all strings) as one string, each twice
   * when `keyed`, with their ends and flags; returns false, having written
   * nothing that counts, when one is not a string.
   */
  putJoined(values, keyed) {
    const count = values.length;
    const parts = keyed ? [] : values;
    const { ends, flags } = buffers;
    const first = this.count;
    const start = this.at;
    // Ends as if each code unit were one byte (ASCII, the common case),
    // in as few steps per value as the interpreter allows.
    let at = start;
    let k = 2 * first;
    if (keyed) {
      for (let j = 0; j < count; j++) {
        const value = values[j];
        if (typeof value !== "string") return false;
        parts.push(value, value);
        ends[k++] = at += value.length;
        ends[k++] = at += value.length;
      }
    } else {
      for (let j = 0; j < count; j++) {
        const value = values[j];
        if (typeof value !== "string") return false;
        ends[k++] = at;
        ends[k++] = at += value.length;
      }
    }
    const joined = parts.join("");
    const most = start + 3 * joined.length;
    if (buffers.data.length < most) buffers.data = grown(buffers.data, most);
    const written = encoder.encodeInto(joined, buffers.data.subarray(start)).written;
    flags.fill(keyed ? 1 : 0, first, first + count);
    if (written === joined.length) {
      this.at = at;
    } else {
      // Not ASCII: each value again on its own (joined, a lone surrogate at
      // one's end could pair with the next one's start).
      this.at = start;
      k = 2 * first;
      for (let j = 0; j < count; j++) {
        if (keyed) this.put(values[j]);
        ends[k++] = this.at;
        this.put(values[j]);
        ends[k++] = this.at;
      }
    }
    return true;
  }

  /** Appends `value` (a string, as UTF-8, or bytes) to the data. */
  put(value) {
    if (typeof value === "string") {
      // UTF-8 takes at most three bytes per UTF-16 code unit.
      const most = this.at + 3 * value.length;
      if (buffers.data.length < most) buffers.data = grown(buffers.data, most);
      this.at += encoder.encodeInto(value, buffers.data.subarray(this.at)).written;
    } else if (value instanceof Uint8Array) {
      const end = this.at + value.length;
      if (buffers.data.length < end) buffers.data = grown(buffers.data, end);
      buffers.data.set(value, this.at);
      this.at = end;
    } else if (ArrayBuffer.isView(value) || value instanceof ArrayBuffer) {
      this.put(new Uint8Array(value.buffer ?? value, value.byteOffset ?? 0, value.byteLength));
    } else {
      const type = value === null ? "null" : typeof value;
      throw new TypeError(`a record's key and value are strings or bytes, not ${type}`);
    }
  }

  /** The WIT `batch` of what was emitted. */
  batch() {
    if (this.pending !== null) this.settle();
    const n = this.count;
    return {
      data: buffers.data.subarray(0, this.at),
      ends: buffers.ends.subarray(0, 2 * n),
      timestamps: buffers.timestamps.subarray(0, n),
      flags: buffers.flags.subarray(0, n),
    };
  }

  /**
   * The WIT `packed-output` of what was emitted: `split` records when all
   * came from `emitSplit`, else `records` with the numbers as bytes.
   */
  packedOutput() {
    if (this.pending === null) {
      const { data, ends, timestamps, flags } = this.batch();
      return { tag: "records", val: { data, ends: bytesOf(ends), timestamps: bytesOf(timestamps), flags } };
    }
    const { separator, keyed, texts, timestamps } = this.pending;
    const runEnds = new Uint32Array(texts.length);
    const runTimestamps = new BigInt64Array(texts.length);
    let at = 0;
    for (let i = 0; i < texts.length; i++) {
      const text = texts[i] + separator;
      const most = at + 3 * text.length;
      if (buffers.data.length < most) buffers.data = grown(buffers.data, most);
      at += encoder.encodeInto(text, buffers.data.subarray(at)).written;
      runEnds[i] = at;
      runTimestamps[i] = BigInt(timestamps[i]);
    }
    return {
      tag: "split",
      val: {
        data: buffers.data.subarray(0, at),
        delimiter: separator.charCodeAt(0),
        keyed,
        runEnds: bytesOf(runEnds),
        runTimestamps: bytesOf(runTimestamps),
      },
    };
  }
}

/** An error the component model returns as the `err` of a result. */
class ResultError extends Error {
  constructor(payload) {
    super(typeof payload === "string" ? payload : "plugin error");
    this.payload = payload;
  }
}

/** The frames of a stack that are the SDK's or the bindings'. */
const SDK_FRAME = /@weir\.js:\d+:\d+$|\/initializer\.js:\d+:\d+$/;

/** What an error says: its name, message and the plugin's frames of its stack. */
function describe(error) {
  if (error instanceof Error) {
    const stack = (error.stack || "")
      .split("\n")
      .filter((frame) => frame !== "" && !SDK_FRAME.test(frame))
      .join("\n");
    return stack ? `${error.name}: ${error.message}\n${stack}` : `${error.name}: ${error.message}`;
  }
  return String(error);
}

function recordFailure(index, error) {
  return new ResultError({ tag: "record", val: { index, message: describe(error) } });
}

function batchFailure(error) {
  const message = error instanceof BatchError ? error.message : describe(error);
  return new ResultError({ tag: "batch", val: message });
}

/** `out`'s batch; what cannot be one fails the chunk. */
function output(out) {
  try {
    return out.batch();
  } catch (error) {
    throw batchFailure(error);
  }
}

/** `out`'s records as a WIT `packed-output`; what cannot be one fails the chunk. */
function packedOutput(out) {
  try {
    return out.packedOutput();
  } catch (error) {
    throw batchFailure(error);
  }
}

function mapped(record, result, out) {
  if (Array.isArray(result)) {
    const [key, value, timestamp = record.timestamp] = result;
    out.emitRecord(key, value, timestamp);
  } else {
    out.emitRecord(record.key, result, record.timestamp);
  }
}

function perRecord(f, kind) {
  return (view) => {
    const out = new Emitter();
    const keep = [];
    const n = view.length;
    for (let i = 0; i < n; i++) {
      const record = new Record(view.key(i), view.value(i), Number(view.timestamps[i]));
      try {
        if (kind === "flat-map") {
          out.timestamp = record.timestamp;
          f(record, out);
        } else if (kind === "filter") {
          if (f(record)) keep.push(i);
        } else {
          const result = f(record);
          if (kind === "map" || (result !== null && result !== undefined)) {
            mapped(record, result, out);
          }
        }
      } catch (error) {
        if (error instanceof ResultError) throw error;
        if (error instanceof BatchError) throw batchFailure(error);
        throw recordFailure(i, error);
      }
    }
    if (kind === "filter") return { tag: "keep", val: bytesOf(Uint32Array.from(keep)) };
    return packedOutput(out);
  };
}

function latest(timestamps) {
  let most = null;
  for (const t of timestamps) if (most === null || t > most) most = t;
  return most === null ? 0 : Number(most);
}

function whole(f, asView) {
  return (view) => {
    const out = new Emitter(latest(view.timestamps));
    try {
      f(asView ? view : view.records(), out);
    } catch (error) {
      throw batchFailure(error);
    }
    return packedOutput(out);
  };
}

function register(kind, process, f, options = {}) {
  if (typeof f !== "function") {
    throw new TypeError(`weir: a ${kind} plugin registers a function, not ${typeof f}`);
  }
  if (plugin !== null) {
    throw new Error(`weir: a plugin has one transform: ${f.name || "this function"} is the second`);
  }
  const name = options.name || (f.name || "plugin").replace(/[_A-Z]/g, (c) => (c === "_" ? "-" : `-${c.toLowerCase()}`));
  plugin = { kind, process, name, version: options.version || "0.1.0" };
  return f;
}

/** Registers a map: `f(record)` returns the new value or `[key, value]`. */
export function map(f, options) {
  return register("map", perRecord(f, "map"), f, options);
}

/** Registers a flat map: `f(record, out)` emits zero or more records. */
export function flatMap(f, options) {
  return register("flat-map", perRecord(f, "flat-map"), f, options);
}

/** Registers a filter: `f(record)` returns whether to keep the record. */
export function filter(f, options) {
  return register("filter", perRecord(f, "filter"), f, options);
}

/** Registers a filter map: `f(record)` returns `null` to drop, else as `map`. */
export function filterMap(f, options) {
  return register("filter-map", perRecord(f, "filter-map"), f, options);
}

/** Registers a map over partitions: `f(records, out)` sees the chunk's records. */
export function mapPartitions(f, options) {
  return register("map-partitions", whole(f, false), f, options);
}

/** The batch API: `f(batch, out)` with a {@link BatchView} of the chunk. */
export function batch(kind, f, options) {
  if (!["flat-map", "map", "filter-map", "map-partitions"].includes(kind)) {
    throw new Error(`weir: batch kind ${JSON.stringify(kind)}: one of flat-map, map, filter-map, map-partitions`);
  }
  return register(kind, whole(f, true), f, options);
}

/** Registers a reducer: `f(values)` combines a key's values into one. */
export function reduce(f, options) {
  return register("reducer", f, f, options);
}

/** Registers an update-state function: `f(key, values, state, out)` returns the new state. */
export function updateState(f, options) {
  return register("update-state", f, f, options);
}

/** Registers a map-with-state function: `f(event, state, out)` per record and timeout. */
export function mapWithState(f, options) {
  return register("map-with-state", f, f, options);
}

/** Registers a transform-with function: `f(left, right, out)` per partition of both inputs. */
export function transformWith(f, options) {
  return register("transform-with", f, f, options);
}

/** Registers `f(config)` to run once per instance before any chunk. */
export function init(f) {
  initFunction = f;
  return f;
}

/** The stage's `config` table, as an object of strings. */
export function config() {
  return { ...stageConfig };
}

/** Writes to the host's log, tagged with pipeline, stage and partition. */
export const log = {
  trace: (message) => logWrite("trace", String(message)),
  debug: (message) => logWrite("debug", String(message)),
  info: (message) => logWrite("info", String(message)),
  warn: (message) => logWrite("warn", String(message)),
  error: (message) => logWrite("error", String(message)),
};

/**
 * The registered plugin, checked against the interface the build exports
 * (`interfaceName`, when given): the build runs this, so a plugin that
 * registers nothing, or registers a kind the build did not expect, fails to
 * build rather than at its first call.
 */
export function registered(interfaceName) {
  if (plugin === null) {
    throw new Error("the plugin module registers no function with weir.map, weir.flatMap, ...");
  }
  if (interfaceName !== undefined && EXPORT_OF[plugin.kind] !== interfaceName) {
    throw new Error(`the plugin registers a ${plugin.kind} plugin, which exports ${EXPORT_OF[plugin.kind]}, not ${interfaceName}`);
  }
  return plugin;
}

/** The `lifecycle` export, answered from the registered function. */
export const lifecycle = {
  describe() {
    const { kind, name, version } = registered();
    return { name, version, kind, sdkVersion: SDK_VERSION, stateVersion: 1 };
  },

  init(config) {
    stageConfig = Object.fromEntries(config);
    if (initFunction !== null) {
      try {
        initFunction({ ...stageConfig });
      } catch (error) {
        throw new ResultError(describe(error));
      }
    }
  },
};

/**
 * The `packed-transform` export: one call per chunk of a partition, with the
 * chunk's numbers packed into bytes (read in place as typed arrays).
 */
export const packedTransform = {
  process(input) {
    const ends = numbersOf(input.ends, Uint32Array);
    const timestamps = numbersOf(input.timestamps, BigInt64Array);
    return registered().process(new BatchView(input.data, ends, timestamps, input.flags));
  },
};

/** Little-endian numbers packed in `bytes`, as a `Type` array (a view when aligned). */
function numbersOf(bytes, Type) {
  const size = Type.BYTES_PER_ELEMENT;
  if (bytes.byteOffset % size === 0) {
    return new Type(bytes.buffer, bytes.byteOffset, bytes.byteLength / size);
  }
  return new Type(bytes.slice().buffer);
}

/** The bytes of a typed array (a view: no copy). */
function bytesOf(numbers) {
  return new Uint8Array(numbers.buffer, numbers.byteOffset, numbers.byteLength);
}

/** Values `start..end` of a WIT `values` (flat data and end offsets). */
function split(values, start, end) {
  const { data, ends } = values;
  const parts = new Array(end - start);
  for (let j = start; j < end; j++) {
    parts[j - start] = data.subarray(j ? ends[j - 1] : 0, ends[j]);
  }
  return parts;
}

/** A WIT `values` of `parts` (strings or bytes). */
function flat(parts) {
  const chunks = parts.map((part) => (typeof part === "string" ? encoder.encode(part) : part));
  const ends = new Uint32Array(chunks.length);
  let at = 0;
  chunks.forEach((chunk, j) => {
    at += chunk.length;
    ends[j] = at;
  });
  const data = new Uint8Array(at);
  at = 0;
  for (const chunk of chunks) {
    data.set(chunk, at);
    at += chunk.length;
  }
  return { data, ends };
}

function asBytes(value) {
  if (typeof value === "string" || value instanceof Uint8Array) return value;
  const type = value === null ? "null" : typeof value;
  throw new TypeError(`a reducer returns a string or bytes, not ${type}`);
}

/** The `reducer` export: one value per group of values. */
export const reducer = {
  reduce(values, groupEnds) {
    const f = registered().process;
    const results = [];
    let start = 0;
    for (const end of groupEnds) {
      try {
        results.push(asBytes(f(split(values, start, end))));
      } catch (error) {
        if (error instanceof BatchError) throw batchFailure(error);
        throw recordFailure(start, error);
      }
      start = end;
    }
    return flat(results);
  },
};

/** A state as JSON text; what JSON cannot hold fails the chunk. */
function stateText(value) {
  let text;
  try {
    text = JSON.stringify(value);
  } catch (error) {
    throw batchFailure(error);
  }
  if (text === undefined) throw batchFailure(new TypeError(`a state is a JSON value, not ${typeof value}`));
  return text;
}

function parseState(bytes) {
  return JSON.parse(decoder.decode(bytes));
}

function stateUpdate(states, flags, out) {
  return { states: flat(states), stateFlags: Uint8Array.from(flags), output: output(out) };
}

/** `mapWithState`: per key, its records one at a time, then its timeout. */
function mapWithStateUpdate(f, groups) {
  const out = new Emitter();
  const states = [];
  const flags = [];
  let start = 0;
  groups.groupEnds.forEach((end, g) => {
    const key = split(groups.keys, g, g + 1)[0];
    const groupFlags = groups.groupFlags[g];
    const state = new State(groupFlags & 1 ? parseState(split(groups.states, g, g + 1)[0]) : null);
    const values = split(groups.values, start, end);
    values.forEach((value, offset) => {
      const index = start + offset;
      const timestamp = Number(groups.timestamps[index]);
      out.timestamp = timestamp;
      try {
        f(new StateEvent(key, value, timestamp), state, out);
      } catch (error) {
        if (error instanceof BatchError) throw batchFailure(error);
        throw recordFailure(index, error);
      }
    });
    if (groupFlags & 2) {
      const batchTime = Number(groups.batchTime);
      out.timestamp = batchTime;
      try {
        f(new StateEvent(key, null, batchTime, true), state, out);
      } catch (error) {
        if (error instanceof BatchError) throw batchFailure(error);
        const name = JSON.stringify(decoder.decode(key));
        throw new ResultError({ tag: "batch", val: `key ${name} (timed out): ${describe(error)}` });
      }
      states.push("");
      flags.push(0);
    } else if (!state.exists) {
      states.push("");
      flags.push(0);
    } else {
      states.push(stateText(state.value));
      flags.push(1);
    }
    start = end;
  });
  return stateUpdate(states, flags, out);
}

/** The `keyed-state` export (update-state, map-with-state). */
export const keyedState = {
  update(groups) {
    const { kind, process: f } = registered();
    if (kind === "map-with-state") return mapWithStateUpdate(f, groups);
    const out = new Emitter();
    const states = [];
    const flags = [];
    let start = 0;
    groups.groupEnds.forEach((end, g) => {
      const key = split(groups.keys, g, g + 1)[0];
      const values = split(groups.values, start, end);
      const groupFlags = groups.groupFlags[g];
      const state = groupFlags & 1 ? parseState(split(groups.states, g, g + 1)[0]) : null;
      out.timestamp = end > start ? latest(groups.timestamps.subarray(start, end)) : Number(groups.batchTime);
      let updated;
      try {
        updated = f(key, values, state, out);
      } catch (error) {
        if (error instanceof BatchError) throw batchFailure(error);
        throw recordFailure(start, error);
      }
      if (updated === null || updated === undefined || groupFlags & 2) {
        states.push("");
        flags.push(0);
      } else {
        states.push(stateText(updated));
        flags.push(1);
      }
      start = end;
    });
    return stateUpdate(states, flags, out);
  },
};

/** The `co-transform` export (transform-with): one partition of both inputs. */
export const coTransform = {
  processPair(left, right) {
    const f = registered().process;
    const leftView = new BatchView(left.data, left.ends, left.timestamps, left.flags);
    const rightView = new BatchView(right.data, right.ends, right.timestamps, right.flags);
    const out = new Emitter(Math.max(latest(left.timestamps), latest(right.timestamps)));
    try {
      f(leftView.records(), rightView.records(), out);
    } catch (error) {
      throw batchFailure(error);
    }
    return output(out);
  },
};

