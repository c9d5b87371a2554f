//! Where checkpoints and batch logs are kept: a [`CheckpointStorage`] of
//! named blobs, so that an object store can replace the local directory
//! without touching the engine. Names are `/`-separated relative paths.
//! Large blobs (incremental state) are written and read as streams
//! ([`CheckpointStorage::create`], [`CheckpointStorage::open`]), never held
//! in memory whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::fs::Dir;

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

    /// Writes `bytes` as `name` (atomically and durably, as
    /// [`put`](Self::put) does) only when there is no blob `name` yet, and
    /// returns true; returns false, changing nothing, when there is one. Of
    /// two writers racing for one name, exactly one gets true.
    fn put_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<bool>;

    /// The blob `name`, or `None` when there is none.
    fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>>;

    /// Names of the blobs directly under `prefix` (a "directory"), sorted.
    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>>;

    /// Removes `name` and everything under it; absent names are fine.
    fn remove(&self, name: &str) -> std::io::Result<()>;

    /// Removes the blobs `names` (blobs, not "directories"); absent names
    /// are fine. Default: a [`remove`](Self::remove) each. Object storage
    /// deletes them in one request per thousand.
    fn remove_blobs(&self, names: &[String]) -> std::io::Result<()> {
        names.iter().try_for_each(|name| self.remove(name))
    }

    /// Starts writing the blob `name` as a stream (see [`BlobWriter`]).
    fn create(&self, name: &str) -> std::io::Result<Box<dyn BlobWriter>>;

    /// The blob `name` as a stream, or `None` when there is none.
    fn open(&self, name: &str) -> std::io::Result<Option<Box<dyn Read + Send>>>;

    /// Removes what streams cut short by a crash left under `prefix` (a
    /// "directory"), when the storage can leave such things. Default: nothing.
    fn remove_unfinished(&self, _prefix: &str) -> std::io::Result<()> {
        Ok(())
    }

    /// Makes the blob or "directory" `name` durable as it is now (what a
    /// crash may have left only in memory, or a removal under it). Default:
    /// nothing (every write of the storage is durable already).
    fn sync(&self, _name: &str) -> std::io::Result<()> {
        Ok(())
    }

    /// Creates the blob `name` as `size` zero bytes (atomically and durably,
    /// replacing any blob of that name) and opens it to be written in place,
    /// or `None` when the storage cannot write in place (an object store).
    /// Default: `None`.
    fn open_in_place(&self, _name: &str, _size: u64) -> std::io::Result<Option<Box<dyn InPlaceFile>>> {
        Ok(None)
    }

    /// How many independent blobs a writer should have in flight at once:
    /// more than one where each request waits on the network (an object
    /// store). Default: 1 (a disk, where one writer keeps it busy).
    fn parallel_writes(&self) -> usize {
        1
    }
}

/// A blob of fixed size written in place ([`CheckpointStorage::open_in_place`]).
pub trait InPlaceFile: Send {
    /// Writes `bytes` at `offset`, inside the blob's size, and returns once
    /// they survive a crash. Nothing else about the blob changes, so this
    /// costs a data write, not a new file.
    fn write_durably(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()>;
}

impl InPlaceFile for std::fs::File {
    fn write_durably(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.write_all_at(bytes, offset)?;
        // The blocks were written (zeros) and synced when the file was
        // created, so a data sync writes these bytes and no metadata.
        self.sync_data()
    }
}

/// Checkpoints in a local directory, opened once through cap-std: every
/// blob is read and written relative to it, so nothing can lead out of it
/// (a `..` or a symbolic link planted inside is not followed out).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    dir: Arc<Dir>,
}

impl LocalStorage {
    /// Opens (and creates) the directory `root`.
    pub fn new(root: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority())?;
        Ok(Self {
            root: root.to_owned(),
            dir: Arc::new(dir),
        })
    }

    /// Opens (and creates) the directory `root`, which lies inside
    /// `within`, from `within`: no link on the way may lead out of it.
    pub fn confined(within: &Path, root: &Path) -> std::io::Result<Self> {
        let relative = root.strip_prefix(within).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not inside {}", root.display(), within.display()),
            )
        })?;
        let within = Dir::open_ambient_dir(within, cap_std::ambient_authority())?;
        within.create_dir_all(relative)?;
        let dir = within.open_dir(relative)?;
        Ok(Self {
            root: root.to_owned(),
            dir: Arc::new(dir),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory `relative` inside it, made (durably) when missing:
    /// opened through the storage's own, so no link leads out of it.
    pub(crate) fn subdir(&self, relative: &Path) -> std::io::Result<Dir> {
        self.create_dir_durably(relative)?;
        self.dir.open_dir(relative)
    }

    /// Makes the directory `relative` (and its parents) durably: the
    /// directory holding the new one is synced.
    fn create_dir_durably(&self, relative: &Path) -> std::io::Result<()> {
        if relative.as_os_str().is_empty() || self.dir.exists(relative) {
            return Ok(());
        }
        self.dir.create_dir_all(relative)?;
        self.sync_dir(relative.parent().unwrap_or(Path::new("")))
    }

    /// `name`'s directory (made durably when missing), and a private name
    /// beside `name` for a blob being written: hidden, and named after
    /// this process and `kind` (what it is for, which `remove_unfinished`
    /// reads).
    fn stage(&self, name: &str, kind: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let (parent, file_name) = split(name);
        self.create_dir_durably(parent)?;
        let temporary = parent.join(format!(
            ".{file_name}.{kind}-{}-{}",
            std::process::id(),
            STREAMS.fetch_add(1, Ordering::Relaxed)
        ));
        Ok((parent.to_owned(), temporary))
    }

    /// Writes `bytes` as the file `relative`, synced.
    fn write_synced(&self, relative: &Path, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = self.dir.create(relative)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// Syncs the directory `relative` (`""`: the root).
    fn sync_dir(&self, relative: &Path) -> std::io::Result<()> {
        sync_in(&self.dir, relative)
    }
}

/// Syncs directory `relative` of `dir` (a cap-std `Dir` is an `O_PATH`
/// descriptor, which cannot be synced: the directory is opened for reading).
fn sync_in(dir: &Dir, relative: &Path) -> std::io::Result<()> {
    let target = if relative.as_os_str().is_empty() {
        Path::new(".")
    } else {
        relative
    };
    dir.open(target)?.sync_all()
}

static STREAMS: AtomicU64 = AtomicU64::new(0);

struct LocalBlob {
    out: Option<std::io::BufWriter<std::fs::File>>,
    dir: Arc<Dir>,
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
        self.dir.rename(&self.temporary, &self.dir, &self.path)?;
        sync_in(&self.dir, self.path.parent().unwrap_or(Path::new("")))
    }
}

impl Drop for LocalBlob {
    fn drop(&mut self) {
        let _ = self.dir.remove_file(&self.temporary);
    }
}

fn not_found_is_none<T>(result: std::io::Result<T>) -> std::io::Result<Option<T>> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// `name`'s directory and file name.
fn split(name: &str) -> (&Path, &str) {
    let path = Path::new(name);
    let parent = path.parent().unwrap_or(Path::new(""));
    let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("blob");
    (parent, file)
}

/// A prefix as a directory to list (`""`: the root).
fn listed(prefix: &str) -> &Path {
    if prefix.is_empty() {
        Path::new(".")
    } else {
        Path::new(prefix)
    }
}

impl CheckpointStorage for LocalStorage {
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let (parent, temporary) = self.stage(name, "tmp")?;
        let write = || -> std::io::Result<()> {
            self.write_synced(&temporary, bytes)?;
            self.dir.rename(&temporary, &self.dir, name)?;
            self.sync_dir(&parent)
        };
        write().inspect_err(|_| {
            let _ = self.dir.remove_file(&temporary);
        })
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<bool> {
        let (parent, temporary) = self.stage(name, "new")?;
        // Written whole under a private name, then linked to its own: a
        // link, unlike a rename, fails when the name is taken.
        let write = || -> std::io::Result<bool> {
            self.write_synced(&temporary, bytes)?;
            let linked = match self.dir.hard_link(&temporary, &self.dir, name) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                // A file system without hard links (some FUSE and SMB
                // mounts): look, then rename, which a racing writer can
                // slip between.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Unsupported | std::io::ErrorKind::PermissionDenied
                    ) =>
                {
                    if self.dir.exists(name) {
                        false
                    } else {
                        self.dir.rename(&temporary, &self.dir, name)?;
                        self.sync_dir(&parent)?;
                        return Ok(true);
                    }
                }
                Err(e) => return Err(e),
            };
            self.dir.remove_file(&temporary)?;
            self.sync_dir(&parent)?;
            Ok(linked)
        };
        write().inspect_err(|_| {
            let _ = self.dir.remove_file(&temporary);
        })
    }

    fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        not_found_is_none(self.dir.read(name))
    }

    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let Some(entries) = not_found_is_none(self.dir.read_dir(listed(prefix)))? else {
            return Ok(Vec::new());
        };
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn create(&self, name: &str) -> std::io::Result<Box<dyn BlobWriter>> {
        let (_, temporary) = self.stage(name, "stream")?;
        let file = self.dir.create(&temporary)?.into_std();
        Ok(Box::new(LocalBlob {
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            dir: self.dir.clone(),
            temporary,
            path: PathBuf::from(name),
        }))
    }

    fn open(&self, name: &str) -> std::io::Result<Option<Box<dyn Read + Send>>> {
        Ok(not_found_is_none(self.dir.open(name))?.map(|file| {
            Box::new(std::io::BufReader::with_capacity(1 << 16, file.into_std())) as Box<dyn Read + Send>
        }))
    }

    fn remove_unfinished(&self, prefix: &str) -> std::io::Result<()> {
        let Some(entries) = not_found_is_none(self.dir.read_dir(listed(prefix)))? else {
            return Ok(());
        };
        let own = format!("-{}-", std::process::id());
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Streams of another (crashed) process; this one's are in use.
            if name.starts_with('.') && name.contains(".stream-") && !name.contains(&own) {
                self.dir.remove_file(Path::new(prefix).join(name))?;
            }
        }
        Ok(())
    }

    fn sync(&self, name: &str) -> std::io::Result<()> {
        match self.dir.open(listed(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            opened => opened?.sync_all(),
        }
    }

    fn open_in_place(&self, name: &str, size: u64) -> std::io::Result<Option<Box<dyn InPlaceFile>>> {
        let zeros = vec![0u8; usize::try_from(size).map_err(std::io::Error::other)?];
        self.put(name, &zeros)?;
        let file = self
            .dir
            .open_with(name, cap_std::fs::OpenOptions::new().read(true).write(true))?
            .into_std();
        Ok(Some(Box::new(file)))
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        let is_dir = self.dir.symlink_metadata(name).is_ok_and(|meta| meta.is_dir());
        let result = if is_dir {
            self.dir.remove_dir_all(name)
        } else {
            self.dir.remove_file(name)
        };
        match result {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_and_list_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let storage = LocalStorage::new(&dir.path().join("ckpt")).unwrap();
        storage.put("offsets/00002", b"two").unwrap();
        storage.put("offsets/00001", b"one").unwrap();
        let mut stream = storage.create("parts/big").unwrap();
        stream.write_all(b"streamed").unwrap();
        stream.commit().unwrap();
        assert_eq!(
            storage.get("offsets/00001").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(storage.list("offsets").unwrap(), ["00001", "00002"]);
        let mut read = String::new();
        storage
            .open("parts/big")
            .unwrap()
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "streamed");
        storage.remove("offsets").unwrap();
        assert_eq!(storage.get("offsets/00001").unwrap(), None);
        assert!(storage.list("").unwrap().contains(&"parts".to_owned()));
    }

    #[test]
    fn a_confined_storage_follows_no_link_out_of_its_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // The checkpoint directory itself replaced by a link out.
        std::os::unix::fs::symlink(outside.path(), root.path().join("ckpt")).unwrap();
        assert!(LocalStorage::confined(root.path(), &root.path().join("ckpt")).is_err());
        // A link planted inside it after it was opened.
        let storage = LocalStorage::confined(root.path(), &root.path().join("ok")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("ok/offsets")).unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        assert!(storage.put("offsets/00001", b"x").is_err());
        assert!(storage.get("offsets/secret").is_err(), "read outside the root");
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            1,
            "written outside the root"
        );
        // Outside the root altogether.
        assert!(LocalStorage::confined(root.path(), outside.path()).is_err());
    }
}
