/**
 * Filter: drops the records whose value, trimmed and compared
 * case-insensitively, is a stopword; keeps every other record unchanged. The
 * JavaScript twin of `plugins/drop-stopwords`.
 *
 * Config: `stopwords`, a comma-separated list (case-insensitive); by default
 * the Rust plugin's short English list. An empty value drops nothing.
 */

import * as weir from "weir";

const DEFAULT_STOPWORDS =
  "the, a, an, and, or, but, not, of, to, in, on, at, by, " +
  "for, from, with, as, is, are, was, were, be, been, it, its, this, that, these, those";

let stopwords = new Set();

weir.init((config) => {
  const list = config.stopwords ?? DEFAULT_STOPWORDS;
  stopwords = new Set(
    list
      .split(",")
      .map((word) => word.trim().toLowerCase())
      .filter((word) => word !== ""),
  );
});

weir.filter((record) => !stopwords.has(record.text.trim().toLowerCase()), {
  name: "drop-stopwords-js",
});
