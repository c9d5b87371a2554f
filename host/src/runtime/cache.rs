//! The on-disk cache of compiled components.
//!
//! Compiling a component with Cranelift takes from milliseconds to seconds;
//! the result is stored under the cache directory, keyed by the SHA-256 of the
//! component's bytes and the engine's compatibility hash (wasmtime version and
//! settings), so a second start loads native code instead of recompiling.
//! Entries are written to a temporary name and renamed, so a crash never
//! leaves a half-written entry behind.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: Option<PathBuf>,
}

impl ComponentCache {
    /// A cache in `dir`; `None` disables caching.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The default location: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir`,
    /// else `$HOME/.cache/weir`. Setting `WEIR_CACHE_DIR` to an empty value
    /// disables the cache.
    pub fn default_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
            return (!dir.is_empty()).then(|| PathBuf::from(dir));
        }
        if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("weir"));
        }
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("weir"))
    }

    /// Compiles `bytes`, or loads the compiled form cached by an earlier run.
    /// `content_hash` is the hex SHA-256 of `bytes`.
    pub fn load(&self, engine: &Engine, bytes: &[u8], content_hash: &str) -> wasmtime::Result<Component> {
        let Some(entry) = self.entry_path(engine, content_hash) else {
            return Component::new(engine, bytes);
        };
        if entry.exists() {
            // SAFETY: the entry was written by `Component::serialize` of this
            // very engine configuration (its compatibility hash is in the name)
            // into a directory that only Weir writes; wasmtime still checks
            // the header and refuses incompatible artifacts.
            match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(
                    entry = %entry.display(),
                    "ignoring unusable compiled-component cache entry: {error:#}"
                ),
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(error) = store(&entry, &component) {
            tracing::warn!(entry = %entry.display(), "cannot write the component cache: {error:#}");
        }
        Ok(component)
    }

    fn entry_path(&self, engine: &Engine, content_hash: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Some(dir.join(format!("{content_hash}-{:016x}.cwasm", hasher.finish())))
    }
}

fn store(entry: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = entry.parent().expect("cache entries live in a directory");
    if !dir.exists() {
        // Compiled code is trusted when loaded: only its owner may write here.
        std::fs::create_dir_all(dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let bytes = component.serialize()?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        entry.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, entry)?;
    Ok(())
}

/// Hex SHA-256 of `bytes`: the content hash of a plugin.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
