//! The server's data directory: where tenants, token hashes, plugins and
//! deployed pipelines live, and the atomic writes that keep it whole
//! through a kill -9.
//!
//! ```text
//! DATA/
//!   audit.log                      append-only, one JSON object a line
//!   blobs/<sha256>.wasm            uploaded components, stored once per content
//!   cache/                         compiled components
//!   tenants/<tenant>/
//!     tenant.json                  quotas and grants
//!     tokens.json                  token ids, roles and SHA-256 hashes
//!     plugins.json                 upload name → SHA-256
//!     pipelines/<name>.json        the pipeline file as deployed, its desired state
//!     spill/                       keyed state spilled by its running pipelines
//!     root/                        the tenant's files: every path in its pipelines
//!       checkpoints/<name>/        resolves here; default checkpoint directories
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ServerError;

/// The data directory's layout.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (and creates) the data directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ServerError> {
        for sub in ["blobs", "tenants", "cache"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| ServerError::io(format!("cannot create {}", dir.join(sub).display()), e))?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// The audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// The component with content hash `sha256`.
    pub fn blob(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha256}.wasm"))
    }

    /// The directory of every tenant.
    pub fn tenants_dir(&self) -> PathBuf {
        self.dir.join("tenants")
    }

    /// Tenant `name`'s directory.
    pub fn tenant_dir(&self, name: &str) -> PathBuf {
        self.tenants_dir().join(name)
    }

    /// Tenant `name`'s file root.
    pub fn tenant_root(&self, name: &str) -> PathBuf {
        self.tenant_dir(name).join("root")
    }

    /// Where tenant `name`'s pipelines spill keyed state: the server's, not
    /// reachable by the tenant's paths, counted in its disk use, emptied
    /// when the server starts.
    pub fn tenant_spill(&self, name: &str) -> PathBuf {
        self.tenant_dir(name).join("spill")
    }

    /// Tenant `name`'s deployed pipelines.
    pub fn pipelines_dir(&self, tenant: &str) -> PathBuf {
        self.tenant_dir(tenant).join("pipelines")
    }

    /// Stores `bytes` as blob `sha256` unless it is already there.
    pub fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<PathBuf, ServerError> {
        let path = self.blob(sha256);
        if !path.exists() {
            write_atomic(&path, bytes)?;
        }
        Ok(path)
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one: a temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let failed = |e| ServerError::io(format!("cannot write {}", path.display()), e);
    std::fs::create_dir_all(dir).map_err(failed)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| ServerError::io(format!("cannot sync {}", dir.display()), e))
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<(), ServerError> {
    let mut text = serde_json::to_vec_pretty(value).expect("server records serialize");
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Reads the JSON file at `path`; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, ServerError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ServerError::io(format!("cannot read {}", path.display()), e)),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| ServerError::Corrupt(format!("{}: {e}", path.display())))
}

/// Bytes of the files under `dir` (symbolic links not followed).
pub fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
