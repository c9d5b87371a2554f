//! Toolchains that `weir plugin build` installs on first use (componentize-py
//! for Python, componentize-js for JavaScript), each of a pinned version in
//! a directory of its own under the cache's `toolchains/`.
//!
//! An install runs under a lock (two first builds at once install once), is
//! marked complete only once it succeeded (a directory without its marker is
//! half made and installed again), and a failure gives the command to run by
//! hand. The cache must be private (0700, as the compiled-component cache
//! is): a build never runs a toolchain from a directory others may write.

use std::path::{Path, PathBuf};

use super::ToolError;

/// A pinned toolchain.
pub struct Toolchain<'a> {
    /// Its directory's name under `toolchains/`, e.g. `componentize-py-0.25.1`.
    pub dir_name: &'a str,
    /// What it is, for messages, e.g. `componentize-py 0.25.1`.
    pub what: &'a str,
    /// The first build that needs it, for the message, e.g. `Python`.
    pub first_build: &'a str,
    /// A file (relative to its directory) that a complete install has.
    pub marker_file: &'a str,
    /// The command a user runs to install it by hand.
    pub manual: String,
}

/// The directory of `toolchain` under `cache`, installed there by `install`
/// (given the directory, which does not exist yet) when missing; `install`
/// returns what failed.
pub fn ensure(
    cache: &Path,
    toolchain: &Toolchain<'_>,
    install: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, ToolError> {
    crate::runtime::cache::check_private_dir(cache).map_err(|e| {
        ToolError(format!(
            "cannot keep the {} toolchain there: {e}",
            toolchain.first_build
        ))
    })?;
    let toolchains = cache.join("toolchains");
    let dir = toolchains.join(toolchain.dir_name);
    let complete = toolchains.join(format!("{}.complete", toolchain.dir_name));
    let installed = || complete.is_file() && dir.join(toolchain.marker_file).is_file();
    if installed() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&toolchains)
        .map_err(|e| ToolError(format!("cannot create {}: {e}", toolchains.display())))?;
    let lock_path = toolchains.join(".install.lock");
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| ToolError(format!("cannot create {}: {e}", lock_path.display())))?;
    lock.lock()
        .map_err(|e| ToolError(format!("cannot lock {}: {e}", lock_path.display())))?;
    // Another build may have installed it while this one waited.
    if installed() {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "installing {} into {} (first {} build)",
        toolchain.what,
        dir.display(),
        toolchain.first_build
    );
    let failed = |reason: String| {
        ToolError(format!(
            "cannot install {} ({reason}); install it yourself with: {}",
            toolchain.what, toolchain.manual
        ))
    };
    if let Err(reason) = install(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(failed(reason));
    }
    if !dir.join(toolchain.marker_file).is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(failed(format!("{} is missing afterwards", toolchain.marker_file)));
    }
    std::fs::write(&complete, toolchain.what)
        .map_err(|e| ToolError(format!("cannot write {}: {e}", complete.display())))?;
    Ok(dir)
}

/// A Python or JavaScript plugin's directory, read for a build.
pub struct ScriptPlugin {
    /// The directory, canonical.
    pub dir: PathBuf,
    /// The text of its main module (`app.py`, `app.js`).
    pub source: String,
    /// Where the component goes: `target/<directory name>.wasm` in it (the
    /// `target` directory exists).
    pub output: PathBuf,
}

/// Reads the plugin in `dir` whose main module is `app` (a file name).
pub fn read_script_plugin(dir: &Path, app: &str) -> Result<ScriptPlugin, ToolError> {
    let dir = dir
        .canonicalize()
        .map_err(|e| ToolError(format!("cannot find the plugin {}: {e}", dir.display())))?;
    let app = dir.join(app);
    let source = std::fs::read_to_string(&app)
        .map_err(|e| ToolError(format!("cannot read {}: {e}", app.display())))?;
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let out_dir = dir.join("target");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| ToolError(format!("cannot create {}: {e}", out_dir.display())))?;
    let output = out_dir.join(format!("{name}.wasm"));
    Ok(ScriptPlugin { dir, source, output })
}

/// What a failed tool said on its stdout and stderr, trimmed and joined.
pub fn said(output: &std::process::Output) -> String {
    [&output.stdout, &output.stderr]
        .iter()
        .map(|text| String::from_utf8_lossy(text).trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_cache() -> tempfile::TempDir {
        let cache = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        cache
    }

    fn demo() -> Toolchain<'static> {
        Toolchain {
            dir_name: "demo-1.0",
            what: "demo 1.0",
            first_build: "demo",
            marker_file: "bin/demo",
            manual: "install demo".into(),
        }
    }

    #[test]
    fn a_toolchain_installs_once_and_a_failed_install_leaves_nothing() {
        let cache = private_cache();
        let error = ensure(cache.path(), &demo(), |dir| {
            std::fs::create_dir_all(dir).unwrap();
            Err("no network".into())
        })
        .unwrap_err();
        assert!(
            error.0.contains("no network") && error.0.contains("install demo"),
            "{error}"
        );
        assert!(!cache.path().join("toolchains/demo-1.0").exists());

        let mut installs = 0;
        for _ in 0..2 {
            let dir = ensure(cache.path(), &demo(), |dir| {
                installs += 1;
                std::fs::create_dir_all(dir.join("bin")).unwrap();
                std::fs::write(dir.join("bin/demo"), "").unwrap();
                Ok(())
            })
            .unwrap();
            assert!(dir.join("bin/demo").is_file());
        }
        assert_eq!(installs, 1);
    }

    #[test]
    fn an_install_that_does_not_leave_its_marker_fails() {
        let cache = private_cache();
        let error = ensure(cache.path(), &demo(), |dir| {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())
        })
        .unwrap_err();
        assert!(error.0.contains("bin/demo is missing"), "{error}");
    }
}
