"""Filter: drops the records whose value, trimmed and compared
case-insensitively, is a stopword; keeps every other record unchanged. The
Python twin of `plugins/drop-stopwords`.

Config: `stopwords`, a comma-separated list (case-insensitive); by default the
Rust plugin's short English list. An empty value drops nothing."""

import weir

DEFAULT_STOPWORDS = (
    "the, a, an, and, or, but, not, of, to, in, on, at, by, "
    "for, from, with, as, is, are, was, were, be, been, it, its, this, that, these, those"
)

stopwords = set()


@weir.init
def setup(config):
    words = config.get("stopwords", DEFAULT_STOPWORDS).split(",")
    stopwords.update(word.strip().lower() for word in words if word.strip())


@weir.filter(name="drop-stopwords-py")
def keep(record):
    return record.value.decode("utf-8", "replace").strip().lower() not in stopwords
