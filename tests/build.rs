//! Builds every plugin under `plugins/` to a `wasm32-wasip2` component, once,
//! and writes `plugins.rs` into `OUT_DIR` with one constant per plugin holding
//! the component's path (the model is wasmtime's test-programs artifacts).
//!
//! The plugins get their own target directory next to the workspace's, so
//! this nested cargo never waits on the lock of the build that runs it. A
//! missing wasm target is an error that says how to install it: tests never
//! skip.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["plugins", "guest-sdk", "wit", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = plugin_target_dir(&out_dir);

    let mut plugins: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("plugins"))
        .expect("plugins/ exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.join("Cargo.toml").exists())
        .map(|path| (package_name(&path.join("Cargo.toml")), path))
        .collect();
    plugins.sort();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (name, _) in &plugins {
        command.args(["-p", name]);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let output = command
        .output()
        .expect("cannot run cargo to build the test plugins");
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("target may not be installed") || stderr.contains("can't find crate for `core`") {
            panic!(
                "the {TARGET} target is not installed; install it with:\n\n    rustup target add {TARGET}\n\n{stderr}"
            );
        }
        panic!("building the test plugins failed:\n{stderr}");
    }

    let mut constants = String::new();
    for (name, _) in &plugins {
        let file = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        assert!(file.exists(), "cargo built no component at {}", file.display());
        constants.push_str(&format!(
            "/// The `{name}` plugin's component.\npub const {}: &str = {:?};\n",
            name.replace('-', "_").to_uppercase(),
            file.display().to_string()
        ));
    }
    std::fs::write(out_dir.join("plugins.rs"), constants).unwrap();
}

/// `<target>/wasm-plugins`, where `<target>` holds `OUT_DIR`
/// (`<target>/<profile>/build/<pkg>-<hash>/out`).
fn plugin_target_dir(out_dir: &Path) -> PathBuf {
    let target = out_dir
        .ancestors()
        .find(|dir| dir.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| out_dir.to_path_buf());
    target.join("wasm-plugins")
}

fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).unwrap();
    text.lines()
        .find_map(|line| {
            let line = line.trim();
            let rest = line.strip_prefix("name")?.trim_start().strip_prefix('=')?;
            Some(rest.trim().trim_matches('"').to_owned())
        })
        .unwrap_or_else(|| panic!("no package name in {}", manifest.display()))
}
