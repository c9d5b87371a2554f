//! `weir plugin build`: compiles a plugin crate to a `wasm32-wasip2`
//! component with cargo, installing the target with rustup first when it is
//! missing.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::ToolError;

/// The Rust target plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Installs the `wasm32-wasip2` target with rustup when it is missing.
pub fn ensure_wasm_target(dir: &Path) -> Result<(), ToolError> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(dir)
        .output();
    let output = match installed {
        Ok(output) if output.status.success() => output,
        // Without rustup, cargo will say clearly if the target is missing.
        _ => return Ok(()),
    };
    if String::from_utf8_lossy(&output.stdout)
        .lines()
        .any(|l| l.trim() == WASM_TARGET)
    {
        return Ok(());
    }
    eprintln!("installing the {WASM_TARGET} target: rustup target add {WASM_TARGET}");
    let status = Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .status()
        .map_err(|e| ToolError(format!("cannot run rustup: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ToolError(format!(
            "`rustup target add {WASM_TARGET}` failed; run it yourself and try again"
        )))
    }
}

/// Builds the plugin crate in `crate_dir` and returns the component files
/// cargo produced.
pub fn build_plugin(crate_dir: &Path, release: bool) -> Result<Vec<PathBuf>, ToolError> {
    // Cargo runs in the crate's directory: a relative path must not be
    // resolved a second time from there.
    let crate_dir = &crate_dir.canonicalize().map_err(|e| {
        ToolError(format!(
            "cannot find the plugin crate {}: {e}",
            crate_dir.display()
        ))
    })?;
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.exists() {
        return Err(ToolError(format!(
            "{} has no Cargo.toml (nor an app.py or app.js): point `weir plugin build` at a plugin crate (create one with `weir new plugin NAME`) or a Python or JavaScript plugin's directory",
            crate_dir.display()
        )));
    }
    ensure_wasm_target(crate_dir)?;
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args([
            "build",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .current_dir(crate_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if release {
        command.arg("--release");
    }
    let mut child = command
        .spawn()
        .map_err(|e| ToolError(format!("cannot run cargo: {e}")))?;
    let mut components = Vec::new();
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.map_err(|e| ToolError(format!("cannot read cargo's output: {e}")))?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(files) = message["filenames"].as_array() {
            components.extend(
                files
                    .iter()
                    .filter_map(|f| f.as_str())
                    .filter(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from),
            );
        }
    }
    let status = child
        .wait()
        .map_err(|e| ToolError(format!("cargo did not finish: {e}")))?;
    if !status.success() {
        return Err(ToolError(format!(
            "building {} failed (see cargo's messages above)",
            crate_dir.display()
        )));
    }
    if components.is_empty() {
        return Err(ToolError(format!(
            "{} built no .wasm file: a plugin crate needs `crate-type = [\"cdylib\"]` in [lib]",
            crate_dir.display()
        )));
    }
    Ok(components)
}
