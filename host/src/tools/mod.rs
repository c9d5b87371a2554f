//! Developer tooling behind the CLI: building plugins (Rust with cargo,
//! Python with componentize-py), scaffolding new ones, inspecting components.

pub mod build;
pub mod inspect;
pub mod python;
pub mod scaffold;

use std::path::PathBuf;

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
