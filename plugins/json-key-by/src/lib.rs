//! Map: parses each record's value as a JSON object and sets the record's
//! key to one of its fields; the timestamp is kept. The value is kept whole,
//! or replaced by another field when `value-field` is set.
//!
//! A string field becomes its text, any other scalar (number, boolean,
//! `null`) its JSON text. A value that is not valid JSON, not an object, or
//! lacks a field (or has an array or object there) fails the record with a
//! message saying which.
//!
//! Config:
//! - `field` (required): the name of the field to key by.
//! - `value-field` (optional): the name of the field to keep as the value.
//! - `timestamp-field` (optional): a field holding the record's event time as
//!   an integer of milliseconds since the Unix epoch; it becomes the record's
//!   timestamp (for event-time windows). A missing or non-integer field fails
//!   the record.

use std::borrow::Cow;
use std::sync::OnceLock;

use weir_guest::json::{Map, Value};
use weir_guest::{Config, Error, Output, Record};

struct Settings {
    field: String,
    value_field: Option<String>,
    timestamp_field: Option<String>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn setup(config: &Config) -> Result<(), Error> {
    let field = config.require("field").map_err(|e| e.context("json-key-by"))?;
    let settings = Settings {
        field: field.to_owned(),
        value_field: config.get("value-field").map(str::to_owned),
        timestamp_field: config.get("timestamp-field").map(str::to_owned),
    };
    SETTINGS
        .set(settings)
        .map_err(|_| Error::msg("json-key-by: init called twice"))
}

/// The text of scalar field `name` of `object`.
fn scalar(object: &Map<String, Value>, name: &str) -> Result<String, Error> {
    match object.get(name) {
        None => Err(Error::msg(format!("json-key-by: missing field `{name}`"))),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(_) | Value::Object(_)) => {
            Err(Error::msg(format!("json-key-by: field `{name}` is not a scalar")))
        }
        Some(scalar) => Ok(scalar.to_string()),
    }
}

#[weir_guest::map(init = setup)]
fn key_by(record: Record<'_>) -> Result<Output<String, Cow<'_, [u8]>>, Error> {
    let settings = SETTINGS
        .get()
        .ok_or_else(|| Error::msg("json-key-by: not initialized"))?;
    let value: Value = weir_guest::json::serde_json::from_slice(record.value())
        .map_err(|e| Error::msg(format!("json-key-by: invalid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Error::msg("json-key-by: value is not a JSON object"));
    };
    let key = scalar(&object, &settings.field)?;
    let value = match &settings.value_field {
        Some(name) => Cow::Owned(scalar(&object, name)?.into_bytes()),
        None => Cow::Borrowed(record.value()),
    };
    let timestamp = match &settings.timestamp_field {
        Some(name) => object.get(name).and_then(Value::as_i64).ok_or_else(|| {
            Error::msg(format!(
                "json-key-by: field `{name}` is not an integer timestamp in milliseconds"
            ))
        })?,
        None => record.timestamp(),
    };
    Ok(Output {
        key: Some(key),
        value,
        timestamp,
    })
}
