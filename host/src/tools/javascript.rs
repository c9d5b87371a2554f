//! `weir plugin build` for JavaScript plugins: a directory with an `app.js`
//! (an ES module) that registers its transform with the JavaScript SDK
//! (`import * as weir from "weir"`), built into a component by
//! componentize-js (SpiderMonkey, pre-initialized with the module).
//!
//! The binary carries what a build needs besides Node.js: the SDK and the
//! WIT package of its own version ([`SDK_SOURCE`], [`WIT_FILES`]) and a
//! small Node driver ([`DRIVER`]), unpacked into the cache, and the
//! toolchain's manifest and lock file ([`TOOLCHAIN_MANIFEST`],
//! [`TOOLCHAIN_LOCK`]): componentize-js ([`COMPONENTIZE_JS`]) and every
//! package under it install at the versions of that lock, with `npm ci`, on
//! first use ([`super::toolchain`]).
//!
//! A build stages the plugin's modules with the SDK (as `weir.js`) and an
//! entry module under `target/js/`, in which the bare `weir` import
//! resolves: componentize-js resolves imports from the staged directory,
//! where the plugin's own modules may import each other by relative paths.
//! The entry checks, while the build pre-initializes the module, that the
//! plugin registered a function of the world it is built for.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ToolError;
use super::toolchain::{self, ScriptPlugin, Toolchain};

/// The componentize-js release plugins are built with.
pub const COMPONENTIZE_JS: &str = "0.23.0";

/// The JavaScript SDK (`import * as weir from "weir"`) of this Weir version.
pub const SDK_SOURCE: &str = include_str!("../../../guest-sdk/js/weir.js");

/// The npm manifest of the build toolchain (componentize-js, pinned).
pub const TOOLCHAIN_MANIFEST: &str = include_str!("../../../guest-sdk/js/toolchain/package.json");

/// The lock file that pins every package of the toolchain.
pub const TOOLCHAIN_LOCK: &str = include_str!("../../../guest-sdk/js/toolchain/package-lock.json");

/// The Node script that runs componentize-js: `node build.mjs TOOLCHAIN
/// ENTRY WIT WORLD OUTPUT`, in the staged directory.
pub const DRIVER: &str = include_str!("../../../guest-sdk/js/build.mjs");

pub use super::WIT_FILES;

/// The oldest Node.js major version componentize-js runs on.
const NODE_MAJOR: u32 = 18;

/// A WIT world a JavaScript plugin can target, with the SDK export of its
/// operator's interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct World {
    /// The world's name in the WIT package.
    wit: &'static str,
    /// The SDK's export for its operator's interface (componentize-js names
    /// an interface's export in lower camel case).
    export: &'static str,
}

/// Transforms: map, flat-map, filter, filter-map, map-partitions; built
/// against `packed-transform`, so that the SDK reads and writes the numbers
/// of a batch as typed arrays over bytes and can return `split-records`.
const TRANSFORM: World = World {
    wit: "weir:plugin/packed-transform-plugin@0.2.0",
    export: "packedTransform",
};

/// `weir.reduce`.
const REDUCER: World = World {
    wit: "weir:plugin/reducer-plugin@0.2.0",
    export: "reducer",
};

/// `weir.updateState` and `weir.mapWithState`.
const STATE: World = World {
    wit: "weir:plugin/state-plugin@0.2.0",
    export: "keyedState",
};

/// `weir.transformWith`.
const CO_TRANSFORM: World = World {
    wit: "weir:plugin/co-transform-plugin@0.2.0",
    export: "coTransform",
};

/// The world of the plugin whose `app.js` is `source`, from the SDK function
/// it registers with (`weir.reduce(...)`, or `reduce(...)` imported by name
/// from `weir`). A guess from the text: the entry module checks it while
/// the build runs the module.
fn world_of(source: &str) -> World {
    let named: Vec<&str> = source
        .split("import")
        .skip(1)
        .filter_map(|statement| {
            let (names, rest) = statement.split_once('}')?;
            let from = rest.trim_start().strip_prefix("from")?.trim_start();
            (from.starts_with("\"weir\"") || from.starts_with("'weir'"))
                .then(|| names.trim_start().strip_prefix('{'))
                .flatten()
        })
        .flat_map(|names| names.split(','))
        .map(|name| name.split(" as ").next().unwrap_or_default().trim())
        .collect();
    let uses = |function: &str| source.contains(&format!("weir.{function}(")) || named.contains(&function);
    if uses("reduce") {
        REDUCER
    } else if uses("updateState") || uses("mapWithState") {
        STATE
    } else if uses("transformWith") {
        CO_TRANSFORM
    } else {
        TRANSFORM
    }
}

impl World {
    /// The entry module's text: it runs the plugin's module (which
    /// registers its function), checks the registration, and exports the
    /// world's interfaces from the SDK.
    fn entry_source(&self) -> String {
        format!(
            "import \"./app.js\";\n\
             import {{ registered }} from \"./weir.js\";\n\
             registered(\"{export}\");\n\
             export {{ lifecycle, {export} }} from \"./weir.js\";\n",
            export = self.export
        )
    }
}

/// True when `dir` holds a JavaScript plugin (an `app.js`, no `Cargo.toml`).
pub fn is_javascript_plugin(dir: &Path) -> bool {
    dir.join("app.js").is_file() && !dir.join("Cargo.toml").exists()
}

/// Builds the JavaScript plugin in `dir` into `dir/target/<dir name>.wasm`,
/// with the toolchain and SDK kept under `cache`; returns the component.
pub fn build_javascript_plugin(dir: &Path, cache: &Path) -> Result<PathBuf, ToolError> {
    let ScriptPlugin { dir, source, output } = toolchain::read_script_plugin(dir, "app.js")?;
    let world = world_of(&source);
    check_node()?;
    let componentize_js = ensure_componentize_js(cache)?;
    let sdk = unpack_sdk(cache)?;
    let staged = dir.join("target").join("js");
    stage(&dir, &staged, &world)?;
    let run = Command::new("node")
        .arg(sdk.join("build.mjs"))
        .arg(&componentize_js)
        .arg("weir-entry.js")
        .arg(sdk.join("wit"))
        .arg(world.wit)
        .arg(&output)
        .current_dir(&staged)
        .output()
        .map_err(|e| ToolError(format!("cannot run node: {e}")))?;
    if !run.status.success() {
        return Err(ToolError(format!(
            "building the JavaScript plugin {} failed:\n{}",
            dir.display(),
            toolchain::said(&run)
        )));
    }
    Ok(output)
}

/// Copies the plugin's modules (`.js`, `.mjs`, `.json` files, outside
/// `target/`, `node_modules/` and hidden directories) from `dir` into a
/// fresh `staged`, with the SDK as `weir.js` and the entry module.
fn stage(dir: &Path, staged: &Path, world: &World) -> Result<(), ToolError> {
    let _ = std::fs::remove_dir_all(staged);
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let from = dir.join(&relative);
        let entries = std::fs::read_dir(&from)
            .map_err(|e| ToolError(format!("cannot read {}: {e}", from.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| ToolError(format!("cannot read {}: {e}", from.display())))?;
            let name = entry.file_name();
            let name_text = name.to_string_lossy();
            let path = relative.join(&name);
            let file_type = entry
                .file_type()
                .map_err(|e| ToolError(format!("cannot read {}: {e}", entry.path().display())))?;
            if file_type.is_dir() {
                let skipped = name_text.starts_with('.')
                    || (relative.as_os_str().is_empty() && name_text == "target")
                    || name_text == "node_modules";
                if !skipped {
                    pending.push(path);
                }
            } else if [".js", ".mjs", ".json"]
                .iter()
                .any(|extension| name_text.ends_with(extension))
            {
                let to = staged.join(&path);
                std::fs::create_dir_all(to.parent().expect("a staged file's directory"))
                    .and_then(|()| std::fs::copy(entry.path(), &to).map(drop))
                    .map_err(|e| ToolError(format!("cannot stage {}: {e}", entry.path().display())))?;
            }
        }
    }
    for (name, text) in [
        ("weir.js", SDK_SOURCE.to_owned()),
        ("weir-entry.js", world.entry_source()),
    ] {
        let to = staged.join(name);
        std::fs::write(&to, text).map_err(|e| ToolError(format!("cannot write {}: {e}", to.display())))?;
    }
    Ok(())
}

/// Checks that Node.js is on the `PATH` and recent enough.
fn check_node() -> Result<(), ToolError> {
    let missing = |what: String| {
        ToolError(format!(
            "JavaScript plugins are built with componentize-js, which runs on Node.js {NODE_MAJOR} or newer: {what}; install Node.js (with npm) and try again"
        ))
    };
    let output = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| missing(format!("cannot run `node` ({e})")))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version
        .strip_prefix('v')
        .and_then(|v| v.split('.').next())
        .and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= NODE_MAJOR => Ok(()),
        _ => Err(missing(format!("`node --version` says {version:?}"))),
    }
}

/// The toolchain directory of the pinned componentize-js under `cache`,
/// installed there with `npm ci` from the lock this binary carries when
/// missing.
fn ensure_componentize_js(cache: &Path) -> Result<PathBuf, ToolError> {
    let dir_name = format!("componentize-js-{COMPONENTIZE_JS}");
    let dir = cache.join("toolchains").join(&dir_name);
    let toolchain = Toolchain {
        dir_name: &dir_name,
        what: &format!("componentize-js {COMPONENTIZE_JS}"),
        first_build: "JavaScript",
        marker_file: "node_modules/@bytecodealliance/componentize-js/src/componentize.js",
        manual: format!(
            "write the package.json and package-lock.json of guest-sdk/js/toolchain into '{dir}', then: (cd '{dir}' && npm ci && touch '{dir}.complete')",
            dir = dir.display()
        ),
    };
    toolchain::ensure(cache, &toolchain, |dir| {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join("package.json"), TOOLCHAIN_MANIFEST))
            .and_then(|()| std::fs::write(dir.join("package-lock.json"), TOOLCHAIN_LOCK))
            .map_err(|e| format!("cannot write the toolchain's manifest: {e}"))?;
        let installed = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            // Only the components' paths go to stdout.
            .stdout(std::io::stderr())
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if installed.success() {
            Ok(())
        } else {
            Err("`npm ci` failed".into())
        }
    })
}

/// Writes the driver and the WIT files this binary carries under `cache`
/// ([`super::unpack`]); returns that directory.
fn unpack_sdk(cache: &Path) -> Result<PathBuf, ToolError> {
    let mut files = vec![(PathBuf::from("build.mjs"), DRIVER.to_owned())];
    for (name, text) in WIT_FILES {
        files.push((Path::new("wit").join(name), text.to_owned()));
    }
    super::unpack(cache, "js-sdk", files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_javascript_sdk_reports_this_weir_version() {
        let line = format!("export const SDK_VERSION = \"{}\";", env!("CARGO_PKG_VERSION"));
        assert!(SDK_SOURCE.contains(&line), "guest-sdk/js/weir.js must say {line}");
    }

    #[test]
    fn the_toolchain_lock_pins_the_componentize_js_release() {
        let manifest: serde_json::Value = serde_json::from_str(TOOLCHAIN_MANIFEST).unwrap();
        let lock: serde_json::Value = serde_json::from_str(TOOLCHAIN_LOCK).unwrap();
        let package = "@bytecodealliance/componentize-js";
        assert_eq!(manifest["dependencies"][package], COMPONENTIZE_JS);
        assert_eq!(
            lock["packages"][format!("node_modules/{package}")]["version"],
            COMPONENTIZE_JS
        );
        assert_eq!(lock["packages"][""]["dependencies"][package], COMPONENTIZE_JS);
    }

    #[test]
    fn the_world_follows_the_registration() {
        assert_eq!(
            world_of("import * as weir from \"weir\";\nweir.flatMap((r, out) => {});"),
            TRANSFORM
        );
        assert_eq!(
            world_of("import * as weir from 'weir';\nweir.reduce((values) => values[0]);"),
            REDUCER
        );
        // Array.prototype.reduce is not the SDK's.
        assert_eq!(
            world_of("import * as weir from 'weir';\nweir.map((r) => [1, 2].reduce((a, b) => a + b));"),
            TRANSFORM
        );
        assert_eq!(
            world_of("import { mapWithState as withState, log } from \"weir\";\nwithState(f);"),
            STATE
        );
        assert_eq!(world_of("weir.updateState(f)"), STATE);
        assert_eq!(
            world_of("import { transformWith } from 'weir';\ntransformWith(join);"),
            CO_TRANSFORM
        );
        assert!(
            REDUCER
                .entry_source()
                .contains("export { lifecycle, reducer } from \"./weir.js\";")
        );
    }

    #[test]
    fn staging_copies_the_modules_and_adds_the_sdk_and_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("app.js"), "import './lib/words.js';").unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::write(root.join("lib/words.js"), "export const x = 1;").unwrap();
        std::fs::write(root.join("notes.txt"), "not a module").unwrap();
        for skipped in ["target/old", "node_modules/left", ".git"] {
            std::fs::create_dir_all(root.join(skipped)).unwrap();
            std::fs::write(root.join(skipped).join("x.js"), "").unwrap();
        }
        let staged = root.join("target/js");
        stage(root, &staged, &TRANSFORM).unwrap();
        let mut files: Vec<String> = Vec::new();
        let mut pending = vec![staged.clone()];
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    files.push(path.strip_prefix(&staged).unwrap().display().to_string());
                }
            }
        }
        files.sort();
        assert_eq!(files, ["app.js", "lib/words.js", "weir-entry.js", "weir.js"]);
        assert_eq!(
            std::fs::read_to_string(staged.join("weir.js")).unwrap(),
            SDK_SOURCE
        );
    }

    #[test]
    fn a_directory_with_app_js_and_no_cargo_toml_is_a_javascript_plugin() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_javascript_plugin(dir.path()));
        std::fs::write(dir.path().join("app.js"), "import * as weir from 'weir';\n").unwrap();
        assert!(is_javascript_plugin(dir.path()));
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert!(!is_javascript_plugin(dir.path()));
    }
}
