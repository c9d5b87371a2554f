//! `weir plugin build` for Python plugins: a directory with an `app.py` that
//! decorates its transform with the Python SDK (`import weir`), built into a
//! component by componentize-py.
//!
//! The binary carries what a build needs besides the toolchain: the Python
//! SDK and the WIT package of its own version ([`SDK_SOURCE`], [`WIT_FILES`]),
//! unpacked into the cache directory (under a name derived from their
//! content), so that a plugin builds anywhere, not only next to Weir's
//! sources. componentize-py ([`COMPONENTIZE_PY`], pinned) is installed on
//! first use into a virtual environment in the same cache
//! ([`super::toolchain`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ToolError;
use super::toolchain::{self, ScriptPlugin, Toolchain};

/// The componentize-py release plugins are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The Python SDK (`import weir`) of this Weir version.
pub const SDK_SOURCE: &str = include_str!("../../../guest-sdk/python/weir/__init__.py");

pub use super::WIT_FILES;

/// A WIT world a Python plugin can target, with the SDK class of its
/// operator's export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct World {
    /// The world's name in the WIT package.
    wit: &'static str,
    /// The SDK class that implements its operator's export.
    export: &'static str,
    /// The module componentize-py builds: it imports the plugin's `app`
    /// (whose decorator registers the function) and exports the SDK's
    /// classes.
    entry: &'static str,
}

/// Transforms: map, flat-map, filter, filter-map, map-partitions.
///
/// Built against `packed-transform`: componentize-py converts a `list<u32>`
/// an element at a time (the lowering of a word count's output cost more
/// than the plugin's own work), a `list<u8>` in one copy.
const TRANSFORM: World = World {
    wit: "weir:plugin/packed-transform-plugin@0.2.0",
    export: "PackedTransform",
    entry: "weir_entry_transform",
};

/// `@weir.reduce`.
const REDUCER: World = World {
    wit: "weir:plugin/reducer-plugin@0.2.0",
    export: "Reducer",
    entry: "weir_entry_reducer",
};

/// `@weir.update_state` and `@weir.map_with_state`.
const STATE: World = World {
    wit: "weir:plugin/state-plugin@0.2.0",
    export: "KeyedState",
    entry: "weir_entry_state",
};

/// `@weir.transform_with`.
const CO_TRANSFORM: World = World {
    wit: "weir:plugin/co-transform-plugin@0.2.0",
    export: "CoTransform",
    entry: "weir_entry_co_transform",
};

/// The world of the plugin whose `app.py` is `source`, from the SDK
/// decorator it uses.
fn world_of(source: &str) -> World {
    if source.contains("@weir.reduce") {
        REDUCER
    } else if source.contains("@weir.update_state") || source.contains("@weir.map_with_state") {
        STATE
    } else if source.contains("@weir.transform_with") {
        CO_TRANSFORM
    } else {
        TRANSFORM
    }
}

impl World {
    /// The entry module's text.
    fn entry_source(&self) -> String {
        // componentize-py runs the module while it builds: a plugin that
        // decorates no function fails the build, not its first call.
        format!(
            "import app  # noqa: F401  (registers the plugin's function)\n\
             import weir\n\
             from weir import Lifecycle, {}  # noqa: F401\n\
             weir._registered()\n",
            self.export
        )
    }
}

/// True when `dir` holds a Python plugin (an `app.py`, no `Cargo.toml`).
pub fn is_python_plugin(dir: &Path) -> bool {
    dir.join("app.py").is_file() && !dir.join("Cargo.toml").exists()
}

/// Builds the Python plugin in `dir` into `dir/target/<dir name>.wasm`,
/// with the toolchain and SDK kept under `cache`; returns the component.
pub fn build_python_plugin(dir: &Path, cache: &Path) -> Result<PathBuf, ToolError> {
    let ScriptPlugin { dir, source, output } = toolchain::read_script_plugin(dir, "app.py")?;
    let world = world_of(&source);
    let componentize = ensure_componentize_py(cache)?;
    let sdk = unpack_sdk(cache)?;
    let run = Command::new(&componentize)
        .arg("-d")
        .arg(sdk.join("wit"))
        .args(["-w", world.wit, "componentize", world.entry, "-p"])
        .arg(&dir)
        .arg("-p")
        .arg(sdk.join("python"))
        .arg("-o")
        .arg(&output)
        .current_dir(&dir)
        .output()
        .map_err(|e| ToolError(format!("cannot run {}: {e}", componentize.display())))?;
    if !run.status.success() {
        return Err(ToolError(format!(
            "building the Python plugin {} failed:\n{}",
            dir.display(),
            toolchain::said(&run)
        )));
    }
    Ok(output)
}

/// The `componentize-py` of the pinned release under `cache`, installed
/// into a virtual environment there when missing.
fn ensure_componentize_py(cache: &Path) -> Result<PathBuf, ToolError> {
    let dir_name = format!("componentize-py-{COMPONENTIZE_PY}");
    let venv = cache.join("toolchains").join(&dir_name);
    let toolchain = Toolchain {
        dir_name: &dir_name,
        what: &format!("componentize-py {COMPONENTIZE_PY}"),
        first_build: "Python",
        marker_file: "bin/componentize-py",
        manual: format!(
            "python3 -m venv '{venv}' && '{venv}/bin/pip' install componentize-py=={COMPONENTIZE_PY} && touch '{venv}.complete'",
            venv = venv.display()
        ),
    };
    let venv = toolchain::ensure(cache, &toolchain, |venv| {
        let created = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv)
            // Only the components' paths go to stdout.
            .stdout(std::io::stderr())
            .status()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        if !created.success() {
            return Err("`python3 -m venv` failed".into());
        }
        let installed = Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
            .stdout(std::io::stderr())
            .status()
            .map_err(|e| format!("cannot run pip: {e}"))?;
        if installed.success() {
            Ok(())
        } else {
            Err("pip failed".into())
        }
    })?;
    Ok(venv.join("bin").join("componentize-py"))
}

/// Writes the SDK, the entry modules and the WIT files this binary carries
/// under `cache` ([`super::unpack`]); returns that directory.
fn unpack_sdk(cache: &Path) -> Result<PathBuf, ToolError> {
    let mut files = vec![(PathBuf::from("python/weir/__init__.py"), SDK_SOURCE.to_owned())];
    for world in [TRANSFORM, REDUCER, STATE, CO_TRANSFORM] {
        files.push((
            PathBuf::from(format!("python/{}.py", world.entry)),
            world.entry_source(),
        ));
    }
    for (name, text) in WIT_FILES {
        files.push((Path::new("wit").join(name), text.to_owned()));
    }
    super::unpack(cache, "python-sdk", files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_sdk_reports_this_weir_version() {
        let line = format!("SDK_VERSION = \"{}\"", env!("CARGO_PKG_VERSION"));
        assert!(
            SDK_SOURCE.contains(&line),
            "guest-sdk/python/weir/__init__.py must say {line}"
        );
    }

    #[test]
    fn the_sdk_is_unpacked_once_and_mended_when_changed() {
        let cache = tempfile::tempdir().unwrap();
        let root = unpack_sdk(cache.path()).unwrap();
        let sdk = root.join("python/weir/__init__.py");
        assert_eq!(std::fs::read_to_string(&sdk).unwrap(), SDK_SOURCE);
        assert!(root.join("wit/worlds.wit").is_file());
        assert!(root.join("python/weir_entry_state.py").is_file());
        std::fs::write(&sdk, "changed").unwrap();
        unpack_sdk(cache.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&sdk).unwrap(), SDK_SOURCE);
    }

    #[test]
    fn the_world_follows_the_decorator() {
        assert_eq!(
            world_of("import weir\n@weir.flat_map\ndef f(r, o): ..."),
            TRANSFORM
        );
        assert_eq!(world_of("@weir.reduce\ndef total(values): ..."), REDUCER);
        assert_eq!(
            world_of("@weir.update_state(name='x')\ndef f(k, v, s, o): ..."),
            STATE
        );
        assert_eq!(world_of("@weir.map_with_state\ndef f(e, s, o): ..."), STATE);
        assert_eq!(
            world_of("@weir.transform_with\ndef f(l, r, o): ..."),
            CO_TRANSFORM
        );
        assert!(
            REDUCER
                .entry_source()
                .contains("from weir import Lifecycle, Reducer")
        );
    }

    #[test]
    fn a_directory_with_app_py_and_no_cargo_toml_is_a_python_plugin() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_python_plugin(dir.path()));
        std::fs::write(dir.path().join("app.py"), "import weir\n").unwrap();
        assert!(is_python_plugin(dir.path()));
        std::fs::write(dir.path().join("Cargo.toml"), "").unwrap();
        assert!(!is_python_plugin(dir.path()));
    }
}
