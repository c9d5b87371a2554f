//! Transform-with: enriches events with reference data of the same key, a
//! lookup join written as a plugin.
//!
//! The stage's first input (`left`) holds the events and its second
//! (`right`) the reference rows; both have JSON object values and are keyed
//! by the same id. In each call, for every left record whose key has a right
//! record in the same call (the last one for that key, if several), the
//! output record's value is the left object with the right object's fields
//! merged in: on a field both have, the left value wins unless `overwrite`
//! is set. A left record without a match is output unchanged, or dropped
//! with `require-match`. Output records keep the left record's key and
//! timestamp, in the left input's order. Records without a key never match.
//!
//! Only the right records of the same call are looked up (the same
//! partition of the same micro-batch): reference data the host does not
//! resend with every batch is not remembered.
//!
//! A left or right value that is not a JSON object fails that record, with
//! an error saying which.
//!
//! Config:
//! - `overwrite` (`true` or `false`, default `false`): the right object's
//!   fields replace the left object's fields of the same name.
//! - `require-match` (`true` or `false`, default `false`): drop the left
//!   records that have no match, instead of outputting them unchanged.

use std::collections::HashMap;
use std::sync::OnceLock;

use weir_guest::json::{Map, Value};
use weir_guest::{Batch, Config, Emitter, Error};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Settings {
    overwrite: bool,
    require_match: bool,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

fn setup(config: &Config) -> Result<(), Error> {
    let settings = settings(config)?;
    SETTINGS
        .set(settings)
        .map_err(|_| Error::msg("enrich: init called twice"))
}

fn settings(config: &Config) -> Result<Settings, Error> {
    let flag = |key: &str| {
        config
            .parse::<bool>(key)
            .map(Option::unwrap_or_default)
            .map_err(|e| e.context("enrich"))
    };
    Ok(Settings {
        overwrite: flag("overwrite")?,
        require_match: flag("require-match")?,
    })
}

#[weir_guest::transform_with(init = setup)]
fn enrich(left: &Batch<'_>, right: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
    let settings = SETTINGS.get().copied().unwrap_or_default();
    run(left, right, out, settings)
}

fn run(left: &Batch<'_>, right: &Batch<'_>, out: &mut Emitter, settings: Settings) -> Result<(), Error> {
    let mut reference: HashMap<&[u8], Map<String, Value>> = HashMap::with_capacity(right.len());
    for row in right {
        let object = object(row.value(), "right").map_err(|e| e.at_right_record(row.index()))?;
        if let Some(key) = row.key() {
            reference.insert(key, object);
        }
    }
    for event in left {
        let mut object = object(event.value(), "left").map_err(|e| e.at_record(event.index()))?;
        match event.key().and_then(|key| reference.get(key)) {
            Some(row) => {
                for (field, value) in row {
                    if settings.overwrite || !object.contains_key(field) {
                        object.insert(field.clone(), value.clone());
                    }
                }
                let value = weir_guest::json::to_vec(&object).map_err(|e| e.at_record(event.index()))?;
                out.emit_record(event.key(), value, event.timestamp());
            }
            None if settings.require_match => {}
            None => out.emit_record(event.key(), event.value(), event.timestamp()),
        }
    }
    Ok(())
}

/// `value` as a JSON object.
fn object(value: &[u8], side: &str) -> Result<Map<String, Value>, Error> {
    match weir_guest::json::from_slice::<Value>(value) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(Error::msg(format!("enrich: {side} value is not a JSON object"))),
        Err(e) => Err(Error::msg(format!(
            "enrich: {side} value is not a JSON object: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(Option<&str>, &str, i64)]) -> Emitter {
        let mut input = Emitter::new();
        for (key, value, timestamp) in records {
            input.emit_record(key.map(str::as_bytes), value, *timestamp);
        }
        input
    }

    fn enriched(
        left: &[(Option<&str>, &str, i64)],
        right: &[(Option<&str>, &str, i64)],
        settings: Settings,
    ) -> Result<Vec<(Option<String>, String, i64)>, Error> {
        let (left, right) = (batch(left), batch(right));
        let mut out = Emitter::new();
        run(&left.as_batch(), &right.as_batch(), &mut out, settings)?;
        Ok(out
            .as_batch()
            .iter()
            .map(|r| {
                (
                    r.key_str().unwrap().map(str::to_owned),
                    r.value_str().unwrap().to_owned(),
                    r.timestamp(),
                )
            })
            .collect())
    }

    const EVENTS: &[(Option<&str>, &str, i64)] = &[
        (Some("1"), r#"{"id":1,"name":"left"}"#, 10),
        (Some("2"), r#"{ "id": 2 }"#, 20),
        (None, r#"{"id":3}"#, 30),
    ];
    const ROWS: &[(Option<&str>, &str, i64)] = &[
        (Some("1"), r#"{"name":"old","city":"Oslo"}"#, 1),
        (Some("1"), r#"{"name":"right","country":"NO"}"#, 2),
        (None, r#"{"city":"nowhere"}"#, 3),
    ];

    #[test]
    fn merges_the_last_matching_row() {
        let s = |t: &str| t.to_owned();
        assert_eq!(
            enriched(EVENTS, ROWS, Settings::default()).unwrap(),
            [
                (Some(s("1")), s(r#"{"country":"NO","id":1,"name":"left"}"#), 10),
                (Some(s("2")), s(r#"{ "id": 2 }"#), 20),
                (None, s(r#"{"id":3}"#), 30),
            ]
        );
        let settings = Settings {
            overwrite: true,
            require_match: true,
        };
        assert_eq!(
            enriched(EVENTS, ROWS, settings).unwrap(),
            [(Some(s("1")), s(r#"{"country":"NO","id":1,"name":"right"}"#), 10)]
        );
    }

    #[test]
    fn values_that_are_not_objects_fail_their_record() {
        let error = enriched(
            &[(Some("1"), "{}", 0), (Some("2"), "[1]", 0)],
            &[],
            Settings::default(),
        )
        .unwrap_err();
        assert_eq!(error.record_index(), Some(1));
        assert_eq!(error.message(), "enrich: left value is not a JSON object");
        let error = enriched(EVENTS, &[(Some("1"), "{", 0)], Settings::default()).unwrap_err();
        assert_eq!(error.right_record_index(), Some(0));
        assert!(
            error
                .message()
                .starts_with("enrich: right value is not a JSON object: ")
        );
    }

    #[test]
    fn config_flags() {
        assert_eq!(settings(&Config::default()).unwrap(), Settings::default());
        let config = Config::new([("overwrite", "true"), ("require-match", "false")]);
        assert_eq!(
            settings(&config).unwrap(),
            Settings {
                overwrite: true,
                require_match: false
            }
        );
        let error = settings(&Config::new([("overwrite", "yes")])).unwrap_err();
        assert!(
            error
                .message()
                .starts_with("enrich: invalid value \"yes\" for config key `overwrite`")
        );
    }
}
