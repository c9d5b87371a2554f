//! Value parsers shared by every table: durations, sizes, counts in range,
//! plugin configuration, and the checks of keys, names and references.
//!
//! Each returns a [`SpecError`] at the offset of the offending value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::SpecError;

/// Reads a duration between 1 ms and one day.
pub(crate) fn duration(text: &Spanned<String>) -> Result<Duration, SpecError> {
    let value = humantime::parse_duration(text.get_ref()).map_err(|e| {
        (
            text.span().start,
            format!(
                "invalid duration {:?}: {e} (write e.g. \"1s\", \"50ms\")",
                text.get_ref()
            ),
        )
    })?;
    if value < Duration::from_millis(1) || value > Duration::from_secs(24 * 3600) {
        return Err((
            text.span().start,
            format!("duration {:?} must be between 1ms and 1 day", text.get_ref()),
        ));
    }
    Ok(value)
}

/// Reads `"64MiB"`, `"512KiB"`, `"1GiB"`, `"100MB"` or a plain number of bytes.
pub(crate) fn byte_size(text: &Spanned<String>) -> Result<usize, SpecError> {
    let raw = text.get_ref().trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => u64::MAX,
    };
    match number.parse::<u64>() {
        Ok(n) if multiplier != u64::MAX && n > 0 => Ok(n.saturating_mul(multiplier).min(4 << 30) as usize),
        _ => Err((
            text.span().start,
            format!("invalid size {raw:?} (write e.g. \"64MiB\", \"512KiB\", \"1GiB\")"),
        )),
    }
}

/// An optional integer between 1 and `max`, named `key` in errors.
pub(crate) fn positive(
    value: Option<&Spanned<i64>>,
    key: &str,
    max: usize,
) -> Result<Option<usize>, SpecError> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() >= 1 && (*v.get_ref() as u64) <= max as u64 => {
            Ok(Some(*v.get_ref() as usize))
        }
        Some(v) => Err((
            v.span().start,
            format!("{key} must be between 1 and {max}, not {}", v.get_ref()),
        )),
    }
}

/// An optional integer of at least 0, named `key` in errors.
pub(crate) fn non_negative(value: Option<&Spanned<i64>>, key: &str) -> Result<Option<u64>, SpecError> {
    match value {
        None => Ok(None),
        Some(v) if *v.get_ref() >= 0 => Ok(Some(*v.get_ref() as u64)),
        Some(v) => Err((
            v.span().start,
            format!("{key} must not be negative, not {}", v.get_ref()),
        )),
    }
}

/// A `config` table as the text pairs plugins get, sorted by key.
pub(crate) fn config_pairs(
    config: Option<&Spanned<BTreeMap<String, toml::Value>>>,
) -> Result<Vec<(String, String)>, SpecError> {
    let Some(config) = config else {
        return Ok(Vec::new());
    };
    config
        .get_ref()
        .iter()
        .map(|(key, value)| {
            scalar_text(value).map(|text| (key.clone(), text)).ok_or_else(|| {
                (
                    config.span().start,
                    format!("config `{key}` must be a string, number, boolean or a list of them"),
                )
            })
        })
        .collect()
}

/// Config values reach plugins as text: scalars as written, lists joined by commas.
fn scalar_text(value: &toml::Value) -> Option<String> {
    Some(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::Array(_) | toml::Value::Table(_) => None,
                other => scalar_text(other),
            })
            .collect::<Option<Vec<_>>>()?
            .join(","),
        toml::Value::Table(_) => return None,
    })
}

/// Fails on the first key of `present` (name, offset if set) that is not
/// in `allowed`; the error lists `allowed`.
pub(crate) fn only_keys(
    present: &[(&str, Option<usize>)],
    allowed: &[&str],
    context: &str,
) -> Result<(), SpecError> {
    for (key, at) in present {
        if let Some(at) = at
            && !allowed.contains(key)
        {
            let hint = if allowed.is_empty() {
                "it takes no other keys".to_owned()
            } else {
                format!("it accepts {}", allowed.join(", "))
            };
            return Err((*at, format!("`{key}` is not a setting of {context} ({hint})")));
        }
    }
    Ok(())
}

/// A string or a list of strings (`topics = "a"` or `topics = ["a", "b"]`);
/// anything else is the error `expected`, at the value.
pub(crate) fn one_or_many(value: &Spanned<toml::Value>, expected: &str) -> Result<Vec<String>, SpecError> {
    let wrong = || (value.span().start, expected.to_owned());
    match value.get_ref() {
        toml::Value::String(one) => Ok(vec![one.clone()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(wrong),
        _ => Err(wrong()),
    }
}

/// The value of a key `context` cannot do without; the error points at the
/// table (`offset`).
pub(crate) fn required<'a>(
    value: Option<&'a Spanned<String>>,
    key: &str,
    offset: usize,
    context: &str,
) -> Result<&'a str, SpecError> {
    value
        .map(|v| v.get_ref().as_str())
        .ok_or_else(|| (offset, format!("{context} needs `{key}`")))
}

/// `name` must be declared in `[plugins]`.
pub(crate) fn plugin_known(
    plugins: &BTreeMap<String, PathBuf>,
    name: &str,
    at: usize,
) -> Result<(), SpecError> {
    if plugins.contains_key(name) {
        Ok(())
    } else {
        let known: Vec<&str> = plugins.keys().map(String::as_str).collect();
        Err((
            at,
            format!(
                "unknown plugin `{name}`: declare it in [plugins] as {name} = \"path/to/plugin.wasm\" (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ))
    }
}

/// A stream name: letters, digits, '-', '_' and '.'.
pub(crate) fn stream_name(name: &Spanned<String>) -> Result<String, SpecError> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if valid {
        Ok(text.clone())
    } else {
        Err((
            name.span().start,
            format!("invalid stream name {text:?}: use letters, digits, '-', '_' and '.'"),
        ))
    }
}

/// `a, b, c or d`: the accepted values of an error message.
pub(crate) fn alternatives(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}
