//! The files sink on S3-compatible object storage (`path =
//! "s3://bucket/prefix"`), through the `object_store` crate: the same
//! batch layout as on disk, `prefix/batch-<id>/part-<partition>.<ext>`,
//! committed by a **manifest**, `prefix/batch-<id>/_manifest.json`, written
//! last and create-only (`If-None-Match: *`).
//!
//! Readers take the batches that have a manifest and read the parts it
//! names, so they never see a partial batch. In a pipeline that
//! checkpoints, a batch whose manifest exists is skipped (a re-run after a
//! crash whose manifest had gone through): exactly once. A batch whose
//! parts were written but not its manifest is written again whole, and the
//! create-only put means only one writer's manifest ever lands. Without a
//! checkpoint, batch ids start again at 0 on every run: manifests are then
//! overwritten like the directories of a local files sink.
//!
//! A batch's parts go up at once (up to [`PARALLEL_REQUESTS`](crate::objects::PARALLEL_REQUESTS) requests in
//! flight), then its manifest; requests run on the process's one
//! object-storage runtime ([`crate::objects::block_on`]).

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::files::{FileFormat, encode_partition};
use super::{BatchInfo, Sink, SinkError};
use crate::failpoint::crash_point;
pub use crate::objects::ObjectTarget;
use crate::objects::block_on;
use crate::record::Partition;

/// The key of `name` in batch `id`'s directory of `target`.
fn batch_key(target: &ObjectTarget, id: u64, name: &str) -> ObjectPath {
    target.key(&format!("batch-{id:012}/{name}"))
}

/// The name of a batch's manifest in its directory.
pub const MANIFEST: &str = "_manifest.json";

/// Writes batches to object storage.
pub struct ObjectFilesSink {
    name: String,
    target: ObjectTarget,
    format: FileFormat,
    window_ms: Option<i64>,
    checkpointed: bool,
    store: Option<Arc<dyn ObjectStore>>,
}

impl ObjectFilesSink {
    /// Writes to `target` in `format`; `checkpointed`: batch ids go on
    /// across restarts (manifests are then create-only).
    pub fn new(
        name: String,
        target: ObjectTarget,
        format: FileFormat,
        window_ms: Option<i64>,
        checkpointed: bool,
    ) -> Self {
        Self {
            name,
            target,
            format,
            window_ms,
            checkpointed,
            store: None,
        }
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    fn store(&self) -> Result<Arc<dyn ObjectStore>, SinkError> {
        self.store
            .clone()
            .ok_or_else(|| self.error("written before it was opened".into()))
    }

    /// True when batch `id` has a manifest.
    fn committed(&self, id: u64) -> Result<bool, SinkError> {
        let store = self.store()?;
        let key = batch_key(&self.target, id, MANIFEST);
        let head = {
            let key = key.clone();
            block_on(async move { store.head(&key).await })
        };
        match head {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(self.error(format!(
                "cannot read {}/{key} at {}: {}",
                self.target.bucket,
                self.target.address(),
                self.target.explain(&error)
            ))),
        }
    }
}

impl Sink for ObjectFilesSink {
    fn open(&mut self) -> Result<(), SinkError> {
        let store = self
            .target
            .store()
            .map_err(|e| self.error(format!("cannot set up the client of {}: {e}", self.target.url())))?;
        self.store = Some(store);
        Ok(())
    }

    fn recovered(&mut self, logged_end: u64) -> Result<(), SinkError> {
        if self.committed(logged_end)? {
            return Err(self.error(format!(
                "{} already holds batch {logged_end}, but this pipeline's batch log ends before it: another \
                 checkpoint directory or pipeline writes there. Restore the checkpoint directory or write elsewhere",
                self.target.url()
            )));
        }
        Ok(())
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        if partitions.iter().flatten().all(|chunk| chunk.is_empty()) {
            return Ok(());
        }
        if self.checkpointed && self.committed(batch.id)? {
            tracing::debug!(sink = %self.name, batch = batch.id, "batch already committed: skipped");
            return Ok(());
        }
        let extension = match self.format {
            FileFormat::Text => "txt",
            FileFormat::Jsonl => "jsonl",
        };
        let store = self.store()?;
        let fail = |key: &ObjectPath, error: &dyn std::fmt::Display| {
            self.error(format!(
                "cannot write batch {} to {}/{key} at {}: {}",
                batch.id,
                self.target.bucket,
                self.target.address(),
                self.target.explain(error)
            ))
        };
        let mut parts = Vec::new();
        let mut uploads = Vec::new();
        for (index, partition) in partitions.iter().enumerate() {
            let records: usize = partition.iter().map(crate::record::Batch::len).sum();
            if records == 0 {
                continue;
            }
            let name = format!("part-{index:05}.{extension}");
            let key = batch_key(&self.target, batch.id, &name);
            let mut body = Vec::new();
            encode_partition(&mut body, self.format, self.window_ms, partition)
                .map_err(|e| fail(&key, &e))?;
            parts.push(serde_json::json!({"name": name, "bytes": body.len(), "records": records}));
            uploads.push((key, PutPayload::from(body)));
        }
        let uploaded = {
            let store = store.clone();
            block_on(async move {
                futures_util::stream::iter(uploads)
                    .map(|(key, body)| {
                        let store = store.clone();
                        async move { store.put(&key, body).await.map_err(|error| (key, error)) }
                    })
                    .buffer_unordered(crate::objects::PARALLEL_REQUESTS)
                    .try_for_each(|_| async { Ok(()) })
                    .await
            })
        };
        uploaded.map_err(|(key, error)| fail(&key, &error))?;
        crash_point("sink-commit");
        let manifest = serde_json::json!({
            "batch": batch.id,
            "time_ms": batch.time_ms,
            "format": extension,
            "parts": parts,
        });
        let key = batch_key(&self.target, batch.id, MANIFEST);
        let mode = if self.checkpointed {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let body = PutPayload::from(manifest.to_string().into_bytes());
        let committed = {
            let key = key.clone();
            block_on(async move { store.put_opts(&key, body, options).await })
        };
        match committed {
            Ok(_) => Ok(()),
            // Another attempt at the same batch committed first: its parts
            // hold the same records.
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(fail(&key, &error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_have_a_directory_each() {
        let target = ObjectTarget {
            bucket: "bbb".into(),
            prefix: "out/counts".into(),
            endpoint: None,
            region: None,
            credentials: crate::objects::ObjectCredentials::Anonymous,
        };
        assert_eq!(
            batch_key(&target, 7, MANIFEST).as_ref(),
            "out/counts/batch-000000000007/_manifest.json"
        );
    }
}
