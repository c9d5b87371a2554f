//! Map: parses each record's value as a JSON object and sets the record's
//! key to one of its fields; the value and timestamp are kept unchanged.
//!
//! A string field becomes its text, any other scalar (number, boolean,
//! `null`) its JSON text. A value that is not valid JSON, not an object, or
//! lacks the field (or has an array or object there) fails the record with a
//! message saying which.
//!
//! Config:
//! - `field` (required): the name of the field to key by.

use std::sync::OnceLock;

use weir_guest::json::Value;
use weir_guest::{Config, Error, Record};

static FIELD: OnceLock<String> = OnceLock::new();

fn setup(config: &Config) -> Result<(), Error> {
    let field = config
        .require("field")
        .map_err(|e| e.context("json-key-by"))?;
    FIELD
        .set(field.to_owned())
        .map_err(|_| Error::msg("json-key-by: init called twice"))
}

#[weir_guest::map(init = setup)]
fn key_by(record: Record<'_>) -> Result<(String, &[u8]), Error> {
    let field = FIELD
        .get()
        .ok_or_else(|| Error::msg("json-key-by: not initialized"))?;
    let value: Value = weir_guest::json::serde_json::from_slice(record.value())
        .map_err(|e| Error::msg(format!("json-key-by: invalid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Error::msg("json-key-by: value is not a JSON object"));
    };
    let key = match object.get(field.as_str()) {
        None => {
            return Err(Error::msg(format!(
                "json-key-by: missing field `{field}`"
            )));
        }
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(_) | Value::Object(_)) => {
            return Err(Error::msg(format!(
                "json-key-by: field `{field}` is not a scalar"
            )));
        }
        Some(scalar) => scalar.to_string(),
    };
    Ok((key, record.value()))
}
