//! Where checkpoints and batch logs are kept: a [`CheckpointStorage`] of
//! named blobs, so that an object store can replace the local directory
//! without touching the engine. Names are `/`-separated relative paths.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Named blobs with atomic replacement.
pub trait CheckpointStorage: Send + Sync + std::fmt::Debug {
    /// Writes `bytes` as `name` atomically and durably: a reader sees the old
    /// blob or the whole new one, never part of it, and once this returns the
    /// blob survives a crash.
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()>;

    /// The blob `name`, or `None` when there is none.
    fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>>;

    /// Names of the blobs directly under `prefix` (a "directory"), sorted.
    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>>;

    /// Removes `name` and everything under it; absent names are fine.
    fn remove(&self, name: &str) -> std::io::Result<()>;
}

/// A local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    /// Keeps blobs under `root` (created when missing).
    pub fn new(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

/// Makes the entries of `dir` (files created, renamed or removed in it)
/// survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` if it is missing, so that the new directory itself
/// survives a crash (its parent is synced).
pub(crate) fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    match dir.parent() {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

impl CheckpointStorage for LocalStorage {
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        create_dir_durably(&dir)?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
        let temporary = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            sync_dir(&dir)
        };
        write().inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
    }

    fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(name)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.path(prefix)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        let path = self.path(name);
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
