//! `weir new plugin NAME`: a plugin that builds as it is — a Rust crate
//! over the `weir-guest` SDK, or a directory with an `app.py` (`--lang
//! python`) or an `app.js` (`--lang js`) over the Python or JavaScript SDK
//! the `weir` binary carries.

use std::path::{Path, PathBuf};

use super::ToolError;

/// The kinds a new plugin can be.
pub const KINDS: [&str; 7] = [
    "map",
    "flat-map",
    "filter",
    "filter-map",
    "map-partitions",
    "reduce",
    "sink",
];

/// The kinds a new Python or JavaScript plugin can be.
pub const SCRIPT_KINDS: [&str; 9] = [
    "map",
    "flat-map",
    "filter",
    "filter-map",
    "map-partitions",
    "reduce",
    "update-state",
    "map-with-state",
    "transform-with",
];

/// Checks a new plugin's name, and that `dir` is absent or empty.
fn check_new(name: &str, dir: &Path) -> Result<(), ToolError> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphabetic());
    if !valid_name {
        return Err(ToolError(format!(
            "invalid plugin name {name:?}: use letters, digits, '-' and '_', starting with a letter"
        )));
    }
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(ToolError(format!(
            "{} already exists and is not empty",
            dir.display()
        )));
    }
    Ok(())
}

fn unknown_kind(kind: &str, kinds: &[&str]) -> ToolError {
    ToolError(format!(
        "unknown kind `{kind}` (expected one of: {})",
        kinds.join(", ")
    ))
}

/// Creates a Python plugin `name` of `kind` in `dir`: an `app.py` that
/// `weir plugin build` builds anywhere (the binary carries the SDK).
/// Returns the files written.
pub fn new_python_plugin(name: &str, kind: &str, dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let body = python_body(kind).ok_or_else(|| unknown_kind(kind, &SCRIPT_KINDS))?;
    check_new(name, dir)?;
    std::fs::create_dir_all(dir).map_err(|e| ToolError(format!("cannot create {}: {e}", dir.display())))?;
    let app = dir.join("app.py");
    let text = format!(
        "\"\"\"`{name}`: a Weir {kind} plugin in Python.\n\nBuild it with `weir plugin build {}`.\"\"\"\n\nimport weir\n\n{}",
        dir.display(),
        body.replace("NAME", name)
    );
    std::fs::write(&app, text).map_err(|e| ToolError(format!("cannot write {}: {e}", app.display())))?;
    Ok(vec![app])
}

/// Creates a JavaScript plugin `name` of `kind` in `dir`: an `app.js` that
/// `weir plugin build` builds anywhere (the binary carries the SDK).
/// Returns the files written.
pub fn new_javascript_plugin(name: &str, kind: &str, dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let body = javascript_body(kind).ok_or_else(|| unknown_kind(kind, &SCRIPT_KINDS))?;
    check_new(name, dir)?;
    std::fs::create_dir_all(dir).map_err(|e| ToolError(format!("cannot create {}: {e}", dir.display())))?;
    let app = dir.join("app.js");
    let text = format!(
        "/**\n * `{name}`: a Weir {kind} plugin in JavaScript.\n *\n * Build it with `weir plugin build {}`.\n */\n\nimport * as weir from \"weir\";\n{}",
        dir.display(),
        body.replace("NAME", name)
    );
    std::fs::write(&app, text).map_err(|e| ToolError(format!("cannot write {}: {e}", app.display())))?;
    Ok(vec![app])
}

/// Creates a plugin crate `name` of `kind` in `dir`, depending on the guest
/// SDK at `sdk_dir`. Returns the files written.
pub fn new_plugin(name: &str, kind: &str, dir: &Path, sdk_dir: &Path) -> Result<Vec<PathBuf>, ToolError> {
    let body = body(kind).ok_or_else(|| unknown_kind(kind, &KINDS))?;
    check_new(name, dir)?;
    let sdk_dir = sdk_dir
        .canonicalize()
        .map_err(|e| ToolError(format!("cannot find the guest SDK at {}: {e}", sdk_dir.display())))?;
    std::fs::create_dir_all(dir.join("src"))
        .map_err(|e| ToolError(format!("cannot create {}: {e}", dir.display())))?;
    // Inside the Weir workspace's plugins/ folder the crate is a workspace
    // member; anywhere else it is its own workspace.
    let workspace_root = sdk_dir.parent().map(Path::to_path_buf);
    let parent = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf));
    let in_workspace =
        matches!((&workspace_root, &parent), (Some(root), Some(parent)) if *parent == root.join("plugins"));
    let manifest = if in_workspace {
        format!(
            r#"[package]
name = "{name}"
description = "A Weir {kind} plugin"
version.workspace = true
edition.workspace = true
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-guest.workspace = true

[lints]
workspace = true
"#
        )
    } else {
        format!(
            r#"[package]
name = "{name}"
description = "A Weir {kind} plugin"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-guest = {{ path = "{}" }}

[profile.release]
opt-level = 3
strip = true

# A plugin is its own workspace.
[workspace]
"#,
            sdk_dir.display()
        )
    };
    let lib = format!(
        "//! `{name}`: a Weir {kind} plugin.\n//!\n//! Build it with `weir plugin build {}` (or `cargo build --release --target wasm32-wasip2`).\n\n{body}",
        dir.display()
    );
    let files = [
        (dir.join("Cargo.toml"), manifest),
        (dir.join("src").join("lib.rs"), lib),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|e| ToolError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(files.into_iter().map(|(path, _)| path).collect())
}

/// The decorated function of a Python plugin of `kind` (`NAME` stands for
/// the plugin's name).
fn python_body(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "map" => {
            r#"
@weir.map(name="NAME")
def transform(record):
    """Upper-cases each record's value (keeps its key and timestamp)."""
    return record.value.upper()
"#
        }
        "flat-map" => {
            r#"
@weir.flat_map(name="NAME")
def transform(record, out):
    """One record per comma-separated field of each value."""
    for field in record.value.split(b","):
        out.emit(field)
"#
        }
        "filter" => {
            r#"
@weir.filter(name="NAME")
def keep(record):
    """Keeps records whose value is not empty."""
    return len(record.value) > 0
"#
        }
        "filter-map" => {
            r#"
@weir.filter_map(name="NAME")
def transform(record):
    """Keeps values that parse as integers, doubled."""
    try:
        return str(int(record.value) * 2)
    except ValueError:
        return None
"#
        }
        "map-partitions" => {
            r#"
@weir.map_partitions(name="NAME")
def transform(records, out):
    """Emits one record per chunk of a partition: how many records it had."""
    out.emit(str(len(records)))
"#
        }
        "reduce" => {
            r#"
@weir.reduce(name="NAME")
def longest(values):
    """The longest value of each key."""
    return max(values, key=len)
"#
        }
        "update-state" => {
            r#"
@weir.update_state(name="NAME")
def count(key, values, state, out):
    """Counts each key's records across batches; emits the count so far."""
    if not values:
        return None  # the key timed out: forget it
    total = (state or 0) + len(values)
    out.emit_keyed(key, str(total))
    return total
"#
        }
        "map-with-state" => {
            r#"
@weir.map_with_state(name="NAME")
def count(event, state, out):
    """Counts each key's records; emits the count when the key times out
    (set the stage's `timeout`)."""
    if event.timed_out:
        out.emit_keyed(event.key, str(state.value or 0))
    else:
        state.value = (state.value or 0) + 1
"#
        }
        "transform-with" => {
            r#"
@weir.transform_with(name="NAME")
def join(left, right, out):
    """Each left record with the value of the last right record of its key
    appended after a tab (left records without one pass unchanged)."""
    latest = {row.key: row.value for row in right if row.key is not None}
    for record in left:
        found = latest.get(record.key)
        value = record.value if found is None else record.value + b"\t" + found
        out.emit_record(record.key, value, record.timestamp)
"#
        }
        _ => return None,
    })
}

/// The registered function of a JavaScript plugin of `kind` (`NAME` stands
/// for the plugin's name).
fn javascript_body(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "map" => {
            r#"
/** Upper-cases each record's value (keeps its key and timestamp). */
weir.map((record) => record.text.toUpperCase(), { name: "NAME" });
"#
        }
        "flat-map" => {
            r#"
/** One record per comma-separated field of each value. */
weir.flatMap(
  (record, out) => {
    for (const field of record.text.split(",")) out.emit(field);
  },
  { name: "NAME" },
);
"#
        }
        "filter" => {
            r#"
/** Keeps records whose value is not empty. */
weir.filter((record) => record.value.length > 0, { name: "NAME" });
"#
        }
        "filter-map" => {
            r#"
/** Keeps values that parse as integers, doubled. */
weir.filterMap(
  (record) => {
    const text = record.text.trim();
    return /^[+-]?[0-9]+$/.test(text) ? String(Number(text) * 2) : null;
  },
  { name: "NAME" },
);
"#
        }
        "map-partitions" => {
            r#"
/** Emits one record per chunk of a partition: how many records it had. */
weir.mapPartitions((records, out) => out.emit(String(records.length)), { name: "NAME" });
"#
        }
        "reduce" => {
            r#"
/** The longest value of each key. */
weir.reduce(
  (values) => values.reduce((longest, value) => (value.length > longest.length ? value : longest)),
  { name: "NAME" },
);
"#
        }
        "update-state" => {
            r#"
/** Counts each key's records across batches; emits the count so far. */
weir.updateState(
  (key, values, state, out) => {
    if (values.length === 0) return null; // the key timed out: forget it
    const total = (state ?? 0) + values.length;
    out.emitKeyed(key, String(total));
    return total;
  },
  { name: "NAME" },
);
"#
        }
        "map-with-state" => {
            r#"
/**
 * Counts each key's records; emits the count when the key times out (set
 * the stage's `timeout`).
 */
weir.mapWithState(
  (event, state, out) => {
    if (event.timedOut) {
      out.emitKeyed(event.key, String(state.value ?? 0));
    } else {
      state.value = (state.value ?? 0) + 1;
    }
  },
  { name: "NAME" },
);
"#
        }
        "transform-with" => {
            r#"
/**
 * Each left record with the value of the last right record of its key
 * appended after a tab (left records without one pass unchanged).
 */
weir.transformWith(
  (left, right, out) => {
    const latest = new Map();
    for (const row of right) if (row.key !== null) latest.set(row.keyText, row.text);
    for (const record of left) {
      const found = record.key === null ? undefined : latest.get(record.keyText);
      const value = found === undefined ? record.value : `${record.text}\t${found}`;
      out.emitRecord(record.key, value, record.timestamp);
    }
  },
  { name: "NAME" },
);
"#
        }
        _ => return None,
    })
}

fn body(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "map" => {
            r#"use weir_guest::{Error, Record};

/// Upper-cases each record's value (keeps its key and timestamp).
#[weir_guest::map]
fn transform(record: Record<'_>) -> Result<String, Error> {
    Ok(record.value_str()?.to_uppercase())
}
"#
        }
        "flat-map" => {
            r#"use weir_guest::{Emitter, Error, Record};

/// One record per comma-separated field of each value.
#[weir_guest::flat_map]
fn transform(record: Record<'_>, out: &mut Emitter) -> Result<(), Error> {
    for field in record.value().split(|&b| b == b',') {
        out.emit(field);
    }
    Ok(())
}
"#
        }
        "filter" => {
            r#"use weir_guest::{Error, Record};

/// Keeps records whose value is not empty.
#[weir_guest::filter]
fn keep(record: Record<'_>) -> Result<bool, Error> {
    Ok(!record.value().is_empty())
}
"#
        }
        "filter-map" => {
            r#"use weir_guest::{Error, Record};

/// Keeps values that parse as integers, doubled.
#[weir_guest::filter_map]
fn transform(record: Record<'_>) -> Result<Option<String>, Error> {
    Ok(record.value_str()?.trim().parse::<i64>().ok().map(|n| (n * 2).to_string()))
}
"#
        }
        "map-partitions" => {
            r#"use weir_guest::{Batch, Emitter, Error};

/// Emits one record per partition: how many records it had.
#[weir_guest::map_partitions]
fn transform(input: &Batch<'_>, out: &mut Emitter) -> Result<(), Error> {
    out.emit(input.len().to_string());
    Ok(())
}
"#
        }
        "reduce" => {
            r#"use weir_guest::{Error, Values};

/// The longest value of each key.
#[weir_guest::reduce]
fn longest(values: Values<'_>) -> Result<Vec<u8>, Error> {
    Ok(values.max_by_key(|v| v.len()).unwrap_or_default().to_vec())
}
"#
        }
        "sink" => {
            r#"use weir_guest::http::Request;
use weir_guest::{Batch, BatchInfo, Config, Error, SinkError};

fn setup(config: &Config) -> Result<(), Error> {
    config.require("url")?;
    Ok(())
}

/// POSTs each partition of each batch to the sink's `url` as lines of
/// `key<TAB>value`, keyed for idempotence (the sink's `allow-http` must
/// name the URL's `host:port`).
#[weir_guest::sink(init = setup)]
fn write(batch: &BatchInfo, records: &Batch<'_>) -> Result<(), SinkError> {
    let mut body = String::new();
    for record in records {
        body.push_str(record.key_str()?.unwrap_or_default());
        body.push('\t');
        body.push_str(record.value_str()?);
        body.push('\n');
    }
    Request::post(weir_guest::config().require("url")?)
        .header("idempotency-key", batch.idempotency_key())
        .body(body)
        .send()?
        .error_for_status()?;
    Ok(())
}
"#
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_javascript_kind_gets_its_registration_and_the_plugin_name() {
        let root = tempfile::tempdir().unwrap();
        for kind in SCRIPT_KINDS {
            let dir = root.path().join(kind);
            let files = new_javascript_plugin("demo", kind, &dir).unwrap();
            assert_eq!(files, vec![dir.join("app.js")]);
            let text = std::fs::read_to_string(&files[0]).unwrap();
            let mut function = kind.replace("-state", "State").replace("-with", "With");
            function = match function.as_str() {
                "flat-map" => "flatMap".into(),
                "filter-map" => "filterMap".into(),
                "map-partitions" => "mapPartitions".into(),
                _ => function,
            };
            assert!(text.contains(&format!("weir.{function}(")), "{kind}: {text}");
            assert!(text.contains("{ name: \"demo\" }"), "{kind}: {text}");
            assert!(text.contains("import * as weir from \"weir\";"), "{kind}");
        }
        let error = new_javascript_plugin("demo", "sink", &root.path().join("sink")).unwrap_err();
        assert!(error.0.contains("unknown kind `sink`"), "{error:?}");
    }

    #[test]
    fn every_python_kind_gets_its_decorator_and_the_plugin_name() {
        let root = tempfile::tempdir().unwrap();
        for kind in SCRIPT_KINDS {
            let dir = root.path().join(kind);
            let files = new_python_plugin("demo", kind, &dir).unwrap();
            assert_eq!(files, vec![dir.join("app.py")]);
            let text = std::fs::read_to_string(&files[0]).unwrap();
            let decorator = format!("@weir.{}(name=\"demo\")", kind.replace('-', "_"));
            assert!(text.contains(&decorator), "{kind}: {text}");
            assert!(text.contains("import weir"), "{kind}");
        }
        // Sinks are Rust only; a taken directory is refused.
        let error = new_python_plugin("demo", "sink", &root.path().join("sink")).unwrap_err();
        assert!(error.0.contains("unknown kind `sink`"), "{error:?}");
        let error = new_python_plugin("demo", "map", &root.path().join("map")).unwrap_err();
        assert!(error.0.contains("not empty"), "{error:?}");
    }
}
