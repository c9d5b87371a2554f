//! Where checkpoints and batch logs are kept: a [`CheckpointStorage`] of
//! named blobs, so that an object store can replace the local directory
//! without touching the engine. Names are `/`-separated relative paths.
//! Large blobs (incremental state) are written and read as streams
//! ([`CheckpointStorage::create`], [`CheckpointStorage::open`]), never held
//! in memory whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A blob being written as a stream: nobody sees it before
/// [`BlobWriter::commit`]; dropped without it, it is discarded.
pub trait BlobWriter: Write + Send {
    /// Makes the blob visible under its name, atomically and durably (as
    /// [`CheckpointStorage::put`] does).
    fn commit(self: Box<Self>) -> std::io::Result<()>;
}

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

    /// Starts writing the blob `name` as a stream (see [`BlobWriter`]).
    fn create(&self, name: &str) -> std::io::Result<Box<dyn BlobWriter>>;

    /// The blob `name` as a stream, or `None` when there is none.
    fn open(&self, name: &str) -> std::io::Result<Option<Box<dyn Read + Send>>>;

    /// Removes what streams cut short by a crash left under `prefix` (a
    /// "directory"), when the storage can leave such things. Default: nothing.
    fn remove_unfinished(&self, _prefix: &str) -> std::io::Result<()> {
        Ok(())
    }
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

/// Temporary files of streams get a number of their own within the process.
static STREAMS: AtomicU64 = AtomicU64::new(0);

/// A blob being written to a temporary file next to its final place.
struct LocalBlob {
    out: Option<std::io::BufWriter<std::fs::File>>,
    temporary: PathBuf,
    path: PathBuf,
}

impl Write for LocalBlob {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.as_mut().expect("open until committed").write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.out.as_mut().expect("open until committed").write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.as_mut().expect("open until committed").flush()
    }
}

impl BlobWriter for LocalBlob {
    fn commit(mut self: Box<Self>) -> std::io::Result<()> {
        let file = self
            .out
            .take()
            .expect("committed once")
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temporary, &self.path)?;
        sync_dir(self.path.parent().expect("a blob has a directory"))
    }
}

impl Drop for LocalBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temporary);
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

    fn create(&self, name: &str) -> std::io::Result<Box<dyn BlobWriter>> {
        let path = self.path(name);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        create_dir_durably(&dir)?;
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
        let temporary = dir.join(format!(
            ".{file_name}.stream-{}-{}",
            std::process::id(),
            STREAMS.fetch_add(1, Ordering::Relaxed)
        ));
        let file = std::fs::File::create(&temporary)?;
        Ok(Box::new(LocalBlob {
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            temporary,
            path,
        }))
    }

    fn open(&self, name: &str) -> std::io::Result<Option<Box<dyn Read + Send>>> {
        match std::fs::File::open(self.path(name)) {
            Ok(file) => Ok(Some(Box::new(std::io::BufReader::with_capacity(1 << 16, file)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn remove_unfinished(&self, prefix: &str) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(self.path(prefix)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let own = format!("-{}-", std::process::id());
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Streams of another (crashed) process; this one's are in use.
            if name.starts_with('.') && name.contains(".stream-") && !name.contains(&own) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
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
