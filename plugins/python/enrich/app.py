"""Transform-with: events (left input) enriched with reference rows (right
input) of the same key; the Python twin of `plugins/enrich`.

Both inputs are JSON objects keyed by the same field. Each event gets the
fields of the last reference row with its key that it lacks (all of them,
overwriting its own, with `overwrite = "true"`). Events without a row pass
unchanged, or are dropped with `require-match = "true"`. Output objects are
written compactly with their fields in sorted order."""

import json

import weir

settings = {"overwrite": False, "require-match": False}


@weir.init
def setup(config):
    for name in settings:
        text = config.get(name)
        if text is not None:
            if text not in ("true", "false"):
                raise ValueError(f"enrich: {name} must be true or false, not {text!r}")
            settings[name] = text == "true"


def as_object(value, side):
    parsed = json.loads(value)
    if not isinstance(parsed, dict):
        raise ValueError(f"enrich: {side} value is not a JSON object")
    return parsed


@weir.transform_with(name="enrich-py")
def enrich(left, right, out):
    reference = {}
    for row in right:
        row_object = as_object(row.value, "right")
        if row.key is not None:
            reference[row.key] = row_object
    for event in left:
        event_object = as_object(event.value, "left")
        row = reference.get(event.key) if event.key is not None else None
        if row is not None:
            for field, value in row.items():
                if settings["overwrite"] or field not in event_object:
                    event_object[field] = value
            text = json.dumps(event_object, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
            out.emit_record(event.key, text, event.timestamp)
        elif not settings["require-match"]:
            out.emit_record(event.key, event.value, event.timestamp)
