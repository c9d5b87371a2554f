//! `weir plugin build` for Python plugins: a directory with an `app.py` that
//! decorates its transform with the Python SDK (`import weir`), built into a
//! component by componentize-py.
//!
//! The binary carries what a build needs besides the toolchain: the Python
//! SDK and the WIT package of its own version ([`SDK_SOURCE`], [`WIT_FILES`]),
//! unpacked into the cache directory, so that a plugin builds anywhere, not
//! only next to Weir's sources. componentize-py ([`COMPONENTIZE_PY`], pinned)
//! is installed on first use into a virtual environment in the same cache,
//! with a message; when that fails, the error gives the command to run.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::ToolError;

/// The componentize-py release plugins are built with.
pub const COMPONENTIZE_PY: &str = "0.25.1";

/// The Python SDK (`import weir`) of this Weir version.
pub const SDK_SOURCE: &str = include_str!("../../../guest-sdk/python/weir/__init__.py");

/// The WIT package plugins are built against (the current version only).
pub const WIT_FILES: [(&str, &str); 2] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// The world a Python transform plugin targets.
const WORLD: &str = "weir:plugin/transform-plugin@0.2.0";

/// The module componentize-py builds: it imports the plugin's `app` (whose
/// decorator registers the transform) and exports the SDK's classes.
const ENTRY: &str = "import app  # noqa: F401  (registers the plugin's transform)\n\
                     from weir import Lifecycle, Transform  # noqa: F401\n";

/// True when `dir` holds a Python plugin (an `app.py`, no `Cargo.toml`).
pub fn is_python_plugin(dir: &Path) -> bool {
    dir.join("app.py").is_file() && !dir.join("Cargo.toml").exists()
}

/// Builds the Python plugin in `dir` into `dir/target/<dir name>.wasm`,
/// with the toolchain and SDK kept under `cache`; returns the component.
pub fn build_python_plugin(dir: &Path, cache: &Path) -> Result<PathBuf, ToolError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| ToolError(format!("cannot find the plugin {}: {e}", dir.display())))?;
    let componentize = ensure_componentize_py(cache)?;
    let sdk = unpack_sdk(cache)?;
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| ToolError(format!("cannot create {}: {e}", out_dir.display())))?;
    let output = out_dir.join(format!("{name}.wasm"));
    let run = Command::new(&componentize)
        .arg("-d")
        .arg(sdk.join("wit"))
        .args(["-w", WORLD, "componentize", "weir_entry", "-p"])
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
            "building the Python plugin {} failed:\n{}{}",
            dir.display(),
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr).trim_end()
        )));
    }
    Ok(output)
}

/// The `componentize-py` of the pinned release under `cache`, installed
/// into a virtual environment there when missing.
fn ensure_componentize_py(cache: &Path) -> Result<PathBuf, ToolError> {
    let venv = cache
        .join("toolchains")
        .join(format!("componentize-py-{COMPONENTIZE_PY}"));
    let binary = venv.join("bin").join("componentize-py");
    if binary.is_file() {
        return Ok(binary);
    }
    let install = format!(
        "python3 -m venv {venv} && {venv}/bin/pip install componentize-py=={COMPONENTIZE_PY}",
        venv = venv.display()
    );
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY} into {} (first Python build)",
        venv.display()
    );
    let failed = |what: String| {
        ToolError(format!(
            "cannot install componentize-py {COMPONENTIZE_PY} ({what}); install it yourself with: {install}"
        ))
    };
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|e| failed(format!("cannot run python3: {e}")))?;
    if !created.success() {
        return Err(failed("`python3 -m venv` failed".into()));
    }
    let installed = Command::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("componentize-py=={COMPONENTIZE_PY}"))
        .status()
        .map_err(|e| failed(format!("cannot run pip: {e}")))?;
    if !installed.success() || !binary.is_file() {
        // A half-made environment would pass the check above next time.
        let _ = std::fs::remove_dir_all(&venv);
        return Err(failed("pip failed".into()));
    }
    Ok(binary)
}

/// Writes the SDK, the entry module and the WIT files this binary carries
/// under `cache` (once per content: the directory is named after the
/// Weir version and rewritten when a file differs); returns that directory.
fn unpack_sdk(cache: &Path) -> Result<PathBuf, ToolError> {
    let root = cache.join(format!("python-sdk-{}", env!("CARGO_PKG_VERSION")));
    let files = [
        (root.join("python").join("weir").join("__init__.py"), SDK_SOURCE),
        (root.join("python").join("weir_entry.py"), ENTRY),
    ]
    .into_iter()
    .chain(
        WIT_FILES
            .iter()
            .map(|(name, text)| (root.join("wit").join(name), *text)),
    );
    for (path, text) in files {
        if std::fs::read_to_string(&path).is_ok_and(|kept| kept == text) {
            continue;
        }
        let parent = path.parent().expect("a file under the SDK directory");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|e| ToolError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(root)
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
        std::fs::write(&sdk, "changed").unwrap();
        unpack_sdk(cache.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&sdk).unwrap(), SDK_SOURCE);
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
