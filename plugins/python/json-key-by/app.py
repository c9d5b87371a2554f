"""Map: parses each record's value as a JSON object and sets the record's key
to one of its fields; the timestamp is kept. The value is kept whole, or
replaced by another field when `value-field` is set. The Python twin of
`plugins/json-key-by`.

A string field becomes its text, any other scalar (number, boolean, `null`)
its JSON text as Python writes it (`1e20` becomes `1e+20`, where the Rust
plugin writes `1e20`). A value that is not valid JSON, not an object, or
lacks a field (or has an array or object there) fails the record with a
message saying which.

Config: `field` (required), `value-field` and `timestamp-field` (optional),
as for the Rust plugin."""

import json

import weir

settings = {}


@weir.init
def setup(config):
    if "field" not in config:
        raise ValueError("json-key-by: missing config key `field`")
    settings["field"] = config["field"]
    settings["value-field"] = config.get("value-field")
    settings["timestamp-field"] = config.get("timestamp-field")


def scalar(fields, name):
    if name not in fields:
        raise ValueError(f"json-key-by: missing field `{name}`")
    value = fields[name]
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        raise ValueError(f"json-key-by: field `{name}` is not a scalar")
    return json.dumps(value)


@weir.map(name="json-key-by-py")
def key_by(record):
    try:
        fields = json.loads(record.value)
    except ValueError as error:
        raise ValueError(f"json-key-by: invalid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise ValueError("json-key-by: value is not a JSON object")
    key = scalar(fields, settings["field"])
    value_field = settings["value-field"]
    value = record.value if value_field is None else scalar(fields, value_field)
    timestamp_field = settings["timestamp-field"]
    if timestamp_field is None:
        return key, value
    timestamp = fields.get(timestamp_field)
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):
        raise ValueError(
            f"json-key-by: field `{timestamp_field}` is not an integer timestamp in milliseconds"
        )
    return key, value, timestamp
