//! The Rust guest SDK this `weir` binary was built with, carried in the
//! binary: `weir new plugin` outside the Weir workspace points the new
//! crate at a copy unpacked into the cache directory, so that a plugin
//! builds in any directory with the binary alone (and cargo, and the
//! registry for the SDK's own dependencies).
//!
//! The copy has the repository's layout — `guest-sdk/` (`weir-guest`, its
//! WIT package in `guest-sdk/wit/`), `guest-sdk/macros/`
//! (`weir-guest-macros`), `guest-sdk/abi/` (`weir-abi`) — with each
//! crate's manifest made standalone as `cargo package` makes it: the keys
//! inherited from the workspace (`version.workspace = true`, `serde.workspace
//! = true`, ...) replaced by the workspace's values, the SDK's own crates as
//! path dependencies pinned to this version, the workspace lints dropped.

use std::path::{Path, PathBuf};

use super::ToolError;

/// The workspace manifest, for the values the SDK's manifests inherit.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// Each SDK crate: its directory (relative to the unpacked root) and manifest.
const CRATES: [(&str, &str); 3] = [
    ("guest-sdk", include_str!("../../../guest-sdk/Cargo.toml")),
    (
        "guest-sdk/macros",
        include_str!("../../../guest-sdk/macros/Cargo.toml"),
    ),
    ("guest-sdk/abi", include_str!("../../../guest-sdk/abi/Cargo.toml")),
];

/// Every source file of the SDK crates, relative to the unpacked root.
const SOURCES: [(&str, &str); 19] = [
    (
        "guest-sdk/src/config.rs",
        include_str!("../../../guest-sdk/src/config.rs"),
    ),
    (
        "guest-sdk/src/emit.rs",
        include_str!("../../../guest-sdk/src/emit.rs"),
    ),
    (
        "guest-sdk/src/error.rs",
        include_str!("../../../guest-sdk/src/error.rs"),
    ),
    (
        "guest-sdk/src/glue.rs",
        include_str!("../../../guest-sdk/src/glue.rs"),
    ),
    (
        "guest-sdk/src/http.rs",
        include_str!("../../../guest-sdk/src/http.rs"),
    ),
    (
        "guest-sdk/src/json.rs",
        include_str!("../../../guest-sdk/src/json.rs"),
    ),
    (
        "guest-sdk/src/lib.rs",
        include_str!("../../../guest-sdk/src/lib.rs"),
    ),
    (
        "guest-sdk/src/log.rs",
        include_str!("../../../guest-sdk/src/log.rs"),
    ),
    (
        "guest-sdk/src/record.rs",
        include_str!("../../../guest-sdk/src/record.rs"),
    ),
    (
        "guest-sdk/src/reduce.rs",
        include_str!("../../../guest-sdk/src/reduce.rs"),
    ),
    (
        "guest-sdk/src/sink.rs",
        include_str!("../../../guest-sdk/src/sink.rs"),
    ),
    (
        "guest-sdk/src/state.rs",
        include_str!("../../../guest-sdk/src/state.rs"),
    ),
    ("guest-sdk/wit/types.wit", include_str!("../../../wit/types.wit")),
    (
        "guest-sdk/wit/worlds.wit",
        include_str!("../../../wit/worlds.wit"),
    ),
    (
        "guest-sdk/macros/src/lib.rs",
        include_str!("../../../guest-sdk/macros/src/lib.rs"),
    ),
    (
        "guest-sdk/abi/src/copy.rs",
        include_str!("../../../guest-sdk/abi/src/copy.rs"),
    ),
    (
        "guest-sdk/abi/src/kind.rs",
        include_str!("../../../guest-sdk/abi/src/kind.rs"),
    ),
    (
        "guest-sdk/abi/src/layout.rs",
        include_str!("../../../guest-sdk/abi/src/layout.rs"),
    ),
    (
        "guest-sdk/abi/src/lib.rs",
        include_str!("../../../guest-sdk/abi/src/lib.rs"),
    ),
];

fn manifest_error(what: &str, error: impl std::fmt::Display) -> ToolError {
    ToolError(format!(
        "the Rust SDK this binary carries has a bad manifest ({what}): {error}"
    ))
}

/// The workspace-relative path of `crate_dir`'s way back to the root, e.g.
/// `../..` for `guest-sdk/macros`.
fn to_root(crate_dir: &str) -> String {
    crate_dir.split('/').map(|_| "..").collect::<Vec<_>>().join("/")
}

/// One dependency spec with what it inherits from the workspace resolved:
/// the workspace's spec, its path (if any) made relative to `crate_dir` and
/// pinned to `version`, then the crate's own keys (`features` added).
fn resolve_dependency(
    name: &str,
    spec: &toml::Value,
    workspace_dependencies: &toml::Table,
    crate_dir: &str,
    version: &str,
) -> Result<toml::Value, ToolError> {
    let Some(own) = spec
        .as_table()
        .filter(|t| t.get("workspace").and_then(toml::Value::as_bool) == Some(true))
    else {
        return Ok(spec.clone());
    };
    let inherited = workspace_dependencies
        .get(name)
        .ok_or_else(|| manifest_error(name, "not a workspace dependency"))?;
    let mut resolved = match inherited {
        toml::Value::String(version) => {
            toml::Table::from_iter([("version".to_owned(), toml::Value::from(version.as_str()))])
        }
        toml::Value::Table(table) => table.clone(),
        other => return Err(manifest_error(name, format!("unexpected spec {other}"))),
    };
    if let Some(path) = resolved.get("path").and_then(toml::Value::as_str) {
        let path = format!("{}/{path}", to_root(crate_dir));
        resolved.insert("path".into(), toml::Value::from(path));
        resolved.insert("version".into(), toml::Value::from(format!("={version}")));
    }
    for (key, value) in own {
        match (key.as_str(), value) {
            ("workspace", _) => {}
            ("features", toml::Value::Array(more)) => {
                let features = resolved
                    .entry("features")
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                if let toml::Value::Array(features) = features {
                    features.extend(more.iter().cloned());
                }
            }
            _ => {
                resolved.insert(key.clone(), value.clone());
            }
        }
    }
    Ok(toml::Value::Table(resolved))
}

/// `manifest` (of the crate in `crate_dir`) made standalone.
fn standalone_manifest(manifest: &str, crate_dir: &str) -> Result<String, ToolError> {
    let workspace: toml::Table = WORKSPACE_MANIFEST
        .parse()
        .map_err(|e| manifest_error("the workspace", e))?;
    let inherited = |table: &str| -> Result<toml::Table, ToolError> {
        workspace
            .get("workspace")
            .and_then(|w| w.get(table))
            .and_then(toml::Value::as_table)
            .cloned()
            .ok_or_else(|| manifest_error("the workspace", format!("no [workspace.{table}]")))
    };
    let (package_values, workspace_dependencies) = (inherited("package")?, inherited("dependencies")?);
    let mut manifest: toml::Table = manifest.parse().map_err(|e| manifest_error(crate_dir, e))?;
    manifest.remove("lints");
    let package = manifest
        .get_mut("package")
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| manifest_error(crate_dir, "no [package]"))?;
    for (key, value) in package.iter_mut() {
        if value.get("workspace").and_then(toml::Value::as_bool) == Some(true) {
            *value = package_values
                .get(key)
                .cloned()
                .ok_or_else(|| manifest_error(crate_dir, format!("workspace.package.{key} is missing")))?;
        }
    }
    // Packaged crates exclude what the SDK's directory holds besides the crate.
    package.remove("exclude");
    let version = package
        .get("version")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| manifest_error(crate_dir, "no version"))?
        .to_owned();
    let mut tables: Vec<&mut toml::Table> = Vec::new();
    let (plain, targets): (Vec<_>, Vec<_>) = manifest.iter_mut().partition(|(key, _)| *key != "target");
    for (key, value) in plain {
        if key == "dependencies"
            && let Some(table) = value.as_table_mut()
        {
            tables.push(table);
        }
    }
    for (_, targets) in targets {
        for (_, target) in targets.as_table_mut().into_iter().flatten() {
            if let Some(table) = target.get_mut("dependencies").and_then(toml::Value::as_table_mut) {
                tables.push(table);
            }
        }
    }
    for table in tables {
        for (name, spec) in table.iter_mut() {
            *spec = resolve_dependency(name, spec, &workspace_dependencies, crate_dir, &version)?;
        }
    }
    let text = toml::to_string(&manifest).map_err(|e| manifest_error(crate_dir, e))?;
    Ok(format!(
        "# The weir-guest SDK carried by the weir binary, unpacked by `weir new plugin`.\n{text}"
    ))
}

/// Writes the SDK under `cache` ([`super::unpack`]); returns the unpacked
/// root, whose `guest-sdk` directory is the `weir-guest` crate.
pub fn unpack(cache: &Path) -> Result<PathBuf, ToolError> {
    let mut files = Vec::new();
    for (dir, manifest) in CRATES {
        files.push((
            Path::new(dir).join("Cargo.toml"),
            standalone_manifest(manifest, dir)?,
        ));
    }
    for (path, text) in SOURCES {
        files.push((PathBuf::from(path), text.to_owned()));
    }
    super::unpack(cache, "rust-sdk", files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sdk_source_file_is_carried() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut on_disk = Vec::new();
        for dir in ["guest-sdk/src", "guest-sdk/macros/src", "guest-sdk/abi/src"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                on_disk.push(format!("{dir}/{name}"));
            }
        }
        for name in ["types.wit", "worlds.wit"] {
            on_disk.push(format!("guest-sdk/wit/{name}"));
        }
        on_disk.sort();
        let mut carried: Vec<String> = SOURCES.iter().map(|(path, _)| (*path).to_owned()).collect();
        carried.sort();
        assert_eq!(carried, on_disk, "list every SDK source file in SOURCES");
        // The crates find their WIT package where the copy puts it.
        assert!(include_str!("../../../guest-sdk/src/glue.rs").contains("path: \"wit\""));
    }

    #[test]
    fn the_unpacked_manifests_stand_alone() {
        let cache = tempfile::tempdir().unwrap();
        let root = unpack(cache.path()).unwrap();
        let read = |dir: &str| -> toml::Table {
            std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
                .unwrap()
                .parse()
                .unwrap()
        };
        let guest = read("guest-sdk");
        let text = toml::to_string(&guest).unwrap();
        assert!(!text.contains("workspace"), "{text}");
        assert_eq!(
            guest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(guest["package"]["edition"].as_str(), Some("2024"));
        let dependencies = &guest["dependencies"];
        assert_eq!(
            dependencies["weir-abi"]["path"].as_str(),
            Some("../guest-sdk/abi")
        );
        assert_eq!(
            dependencies["weir-abi"]["version"].as_str(),
            Some(format!("={}", env!("CARGO_PKG_VERSION")).as_str())
        );
        assert_eq!(
            dependencies["wit-bindgen"]["default-features"].as_bool(),
            Some(false)
        );
        assert!(
            dependencies["serde"]["features"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str() == Some("derive"))
        );
        assert!(
            guest["target"]["cfg(target_arch = \"wasm32\")"]["dependencies"]
                .get("wasip2")
                .is_some()
        );
        let macros = read("guest-sdk/macros");
        assert_eq!(
            macros["dependencies"]["weir-abi"]["path"].as_str(),
            Some("../../guest-sdk/abi")
        );
        assert_eq!(macros["lib"]["proc-macro"].as_bool(), Some(true));
        assert!(root.join("guest-sdk/wit/worlds.wit").is_file());
        assert!(root.join("guest-sdk/abi/src/layout.rs").is_file());
        // Unpacking again finds the same directory.
        assert_eq!(unpack(cache.path()).unwrap(), root);
    }
}
