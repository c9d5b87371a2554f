//! Checkpoints on S3-compatible object storage (`checkpoint-dir =
//! "s3://bucket/prefix"`): a [`CheckpointStorage`] whose blobs are objects
//! under the prefix, so that a pipeline's batch log, checkpoints and
//! incremental state outlive the machine it ran on and another machine
//! can resume it.
//!
//! - **Atomic and durable**: an object store's `PUT` replaces an object
//!   whole, and is durable once it returns; large blobs
//!   ([`CheckpointStorage::create`]) go up as a multipart upload of
//!   [`PART_BYTES`] parts, which nobody sees before it is completed. A
//!   blob smaller than one part is one `PUT`.
//! - **Create-only** ([`CheckpointStorage::put_new`]): `If-None-Match: *`,
//!   so of two writers of one name exactly one wins.
//! - **Streams** are read in ranges of [`PART_BYTES`], never whole.
//! - **What it cannot do**: write in place (the idle batch log then writes
//!   a blob per batch), or sync (every write is durable already).
//!   Multipart uploads cut short by a crash are left to the bucket's
//!   lifecycle rule for incomplete uploads, as on any S3 bucket.

use std::io::{Read, Write};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{MultipartUpload, ObjectStore, PutMode, PutOptions, PutPayload};

use super::storage::{BlobWriter, CheckpointStorage};
use crate::objects::{ObjectTarget, block_on};

/// The size of each part of a multipart upload, and of each ranged read
/// (S3 wants parts of 5 MiB at least).
pub const PART_BYTES: usize = 8 << 20;

/// Checkpoint blobs as objects under a bucket's prefix.
#[derive(Clone)]
pub struct ObjectStorage {
    target: ObjectTarget,
    store: Arc<dyn ObjectStore>,
}

impl std::fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStorage")
            .field("url", &self.target.url())
            .field("address", &self.target.address())
            .finish()
    }
}

impl ObjectStorage {
    /// A client of `target` (no request is made yet).
    pub fn new(target: ObjectTarget) -> std::io::Result<Self> {
        let store = target.store().map_err(|e| {
            std::io::Error::other(format!("cannot set up the client of {}: {e}", target.url()))
        })?;
        Ok(Self { target, store })
    }

    /// Where the blobs are.
    pub fn target(&self) -> &ObjectTarget {
        &self.target
    }

    /// `error` of a request about `name`, as an I/O error of the matching
    /// kind (not found, already exists) that says where it went.
    fn failed(&self, name: &str, error: object_store::Error) -> std::io::Error {
        let kind = match &error {
            object_store::Error::NotFound { .. } => std::io::ErrorKind::NotFound,
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
                std::io::ErrorKind::AlreadyExists
            }
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(
            kind,
            format!(
                "{}/{name} at {}: {}",
                self.target.url(),
                self.target.address(),
                self.target.explain(&error)
            ),
        )
    }

    /// Deletes the objects `keys` in as few requests as the store allows
    /// (S3: a thousand a request); absent ones are fine.
    fn delete_all(&self, name: &str, keys: Vec<ObjectPath>) -> std::io::Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let failure = block_on(async move {
            use futures_util::StreamExt;
            let locations = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
            let mut deleted = store.delete_stream(locations);
            while let Some(result) = deleted.next().await {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => return Some(error),
                }
            }
            None
        });
        match failure {
            None => Ok(()),
            Some(error) => Err(self.failed(name, error)),
        }
    }
}

impl CheckpointStorage for ObjectStorage {
    fn put(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let (store, key) = (self.store.clone(), self.target.key(name));
        let payload = PutPayload::from(bytes.to_vec());
        block_on(async move { store.put(&key, payload).await })
            .map(drop)
            .map_err(|e| self.failed(name, e))
    }

    fn put_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<bool> {
        let (store, key) = (self.store.clone(), self.target.key(name));
        let payload = PutPayload::from(bytes.to_vec());
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match block_on(async move { store.put_opts(&key, payload, options).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                Ok(false)
            }
            Err(error) => Err(self.failed(name, error)),
        }
    }

    fn get(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let (store, key) = (self.store.clone(), self.target.key(name));
        match block_on(async move { store.get(&key).await?.bytes().await }) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(self.failed(name, error)),
        }
    }

    fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        let store = self.store.clone();
        let under = (!prefix.is_empty() || !self.target.prefix.is_empty()).then(|| self.target.key(prefix));
        let listed = block_on(async move { store.list_with_delimiter(under.as_ref()).await })
            .map_err(|e| self.failed(prefix, e))?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|object| &object.location))
            .filter_map(|path| path.filename().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        let key = self.target.key(name);
        let store = self.store.clone();
        let under = key.clone();
        let inside: Vec<ObjectPath> = block_on(async move {
            use futures_util::TryStreamExt;
            store
                .list(Some(&under))
                .map_ok(|object| object.location)
                .try_collect()
                .await
        })
        .map_err(|e| self.failed(name, e))?;
        let mut keys = inside;
        keys.push(key);
        self.delete_all(name, keys)
    }

    fn remove_blobs(&self, names: &[String]) -> std::io::Result<()> {
        let Some(first) = names.first() else {
            return Ok(());
        };
        let keys = names.iter().map(|name| self.target.key(name)).collect();
        self.delete_all(first, keys)
    }

    fn create(&self, name: &str) -> std::io::Result<Box<dyn BlobWriter>> {
        Ok(Box::new(ObjectBlob {
            storage: self.clone(),
            name: name.to_owned(),
            buffer: Vec::new(),
            upload: None,
        }))
    }

    fn parallel_writes(&self) -> usize {
        crate::objects::PARALLEL_REQUESTS
    }

    fn open(&self, name: &str) -> std::io::Result<Option<Box<dyn Read + Send>>> {
        let (store, key) = (self.store.clone(), self.target.key(name));
        let size = match block_on(async move { store.head(&key).await }) {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(self.failed(name, error)),
        };
        Ok(Some(Box::new(ObjectReader {
            storage: self.clone(),
            name: name.to_owned(),
            size,
            next: 0,
            chunk: bytes::Bytes::new(),
        })))
    }
}

/// A blob going up: held in memory up to one part, then as a multipart
/// upload, a part at a time.
struct ObjectBlob {
    storage: ObjectStorage,
    name: String,
    buffer: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
}

impl ObjectBlob {
    /// Uploads the buffer as the next part (starting the upload first).
    fn upload_part(&mut self) -> std::io::Result<()> {
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let (store, key) = (self.storage.store.clone(), self.storage.target.key(&self.name));
                let started = block_on(async move { store.put_multipart(&key).await })
                    .map_err(|e| self.storage.failed(&self.name, e))?;
                self.upload.insert(started)
            }
        };
        let part = upload.put_part(PutPayload::from(std::mem::take(&mut self.buffer)));
        block_on(part).map_err(|e| self.storage.failed(&self.name, e))
    }
}

impl Write for ObjectBlob {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = PART_BYTES - self.buffer.len();
        let taken = buf.len().min(room);
        self.buffer.extend_from_slice(&buf[..taken]);
        if self.buffer.len() == PART_BYTES {
            self.upload_part()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BlobWriter for ObjectBlob {
    fn commit(mut self: Box<Self>) -> std::io::Result<()> {
        if self.upload.is_none() {
            return self.storage.put(&self.name, &self.buffer);
        }
        if !self.buffer.is_empty() {
            self.upload_part()?;
        }
        let mut upload = self.upload.take().expect("a multipart upload was started");
        block_on(async move {
            let completed = upload.complete().await;
            if completed.is_err() {
                let _ = upload.abort().await;
            }
            completed
        })
        .map(drop)
        .map_err(|e| self.storage.failed(&self.name, e))
    }
}

impl Drop for ObjectBlob {
    fn drop(&mut self) {
        // Not committed: the parts are discarded, best effort (a bucket's
        // lifecycle rule removes what is left).
        if let Some(mut upload) = self.upload.take() {
            crate::objects::detach(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

/// A blob read in ranges of [`PART_BYTES`].
struct ObjectReader {
    storage: ObjectStorage,
    name: String,
    size: u64,
    next: u64,
    chunk: bytes::Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.chunk.is_empty() && self.next < self.size {
            let end = self.size.min(self.next + PART_BYTES as u64);
            let (store, key) = (self.storage.store.clone(), self.storage.target.key(&self.name));
            let range = self.next..end;
            self.chunk = block_on(async move { store.get_range(&key, range).await })
                .map_err(|e| self.storage.failed(&self.name, e))?;
            if self.chunk.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}/{} ended before its size",
                        self.storage.target.url(),
                        self.name
                    ),
                ));
            }
            self.next += self.chunk.len() as u64;
        }
        let taken = buf.len().min(self.chunk.len());
        buf[..taken].copy_from_slice(&self.chunk.split_to(taken));
        Ok(taken)
    }
}
