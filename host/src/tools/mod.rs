//! Developer tooling behind the CLI: building plugins (Rust with cargo,
//! Python with componentize-py, JavaScript with componentize-js),
//! scaffolding new ones, inspecting components.

pub mod build;
pub mod inspect;
pub mod javascript;
pub mod python;
pub mod rust_sdk;
pub mod scaffold;
pub mod toolchain;

use std::path::{Path, PathBuf};

/// The WIT package that Python and JavaScript plugins are built against (the
/// current version only), carried by the binary.
pub const WIT_FILES: [(&str, &str); 2] = [
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
];

/// A tooling command failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// The root of the Weir source tree this binary was built from, if it is
/// still there (used to find the guest SDK and the example plugins).
pub fn source_root() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent()?.to_path_buf();
    root.join("guest-sdk").join("Cargo.toml").exists().then_some(root)
}

/// Writes `files` (paths relative to the directory, and their text) under
/// `cache`, in a directory named `prefix` and a hash of their content
/// (binaries that carry different files never share one); returns that
/// directory. A file is rewritten when it differs, written aside and
/// renamed into place, so a build running at the same time never reads
/// half a file.
pub fn unpack(cache: &Path, prefix: &str, files: Vec<(PathBuf, String)>) -> Result<PathBuf, ToolError> {
    let all: String = files
        .iter()
        .map(|(path, text)| format!("{}\n{text}", path.display()))
        .collect();
    let root = cache.join(format!(
        "{prefix}-{}",
        &crate::runtime::content_hash(all.as_bytes())[..16]
    ));
    for (relative, text) in files {
        let path = root.join(relative);
        if std::fs::read_to_string(&path).is_ok_and(|kept| kept == text) {
            continue;
        }
        let parent = path.parent().expect("a file under the unpacked directory");
        let aside = parent.join(format!(
            ".{}.{}",
            path.file_name().expect("a file name").to_string_lossy(),
            std::process::id()
        ));
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&aside, &text))
            .and_then(|()| std::fs::rename(&aside, &path))
            .map_err(|e| ToolError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(root)
}
