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

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use super::files::{FileFormat, encode_partition};
use super::{BatchInfo, Sink, SinkError};
use crate::config::{Settings, SpecError};
use crate::failpoint::crash_point;
use crate::record::Partition;

/// Where the batches go and how to sign in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectTarget {
    /// The bucket.
    pub bucket: String,
    /// The key prefix, without a trailing `/` (empty: the bucket's root).
    pub prefix: String,
    /// A custom endpoint (MinIO, moto, another S3-compatible store);
    /// `None`: AWS S3 of `region`.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The access key id and secret; `None`: unsigned requests.
    pub credentials: Option<(String, String)>,
}

impl ObjectTarget {
    /// Parses `s3://bucket[/prefix]` and the sink's object-storage keys.
    pub fn parse(url: &str, settings: &Settings, at: usize) -> Result<Self, SpecError> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err((
                at,
                format!("invalid bucket {bucket:?} in {url:?} (3-63 lowercase letters, digits, `-` or `.`)"),
            ));
        }
        let endpoint = match settings.text("endpoint") {
            Some(text)
                if !text.get_ref().starts_with("http://") && !text.get_ref().starts_with("https://") =>
            {
                return Err((
                    text.span().start,
                    format!(
                        "invalid endpoint {:?} (an http:// or https:// URL)",
                        text.get_ref()
                    ),
                ));
            }
            Some(text) => Some(text.get_ref().trim_end_matches('/').to_owned()),
            None => None,
        };
        let credentials = match (settings.text("access-key-id"), settings.text("secret-access-key")) {
            (Some(id), Some(secret)) => Some((id.get_ref().clone(), secret.get_ref().clone())),
            (None, None) => None,
            (Some(key), None) | (None, Some(key)) => {
                return Err((
                    key.span().start,
                    "`access-key-id` and `secret-access-key` go together".to_owned(),
                ));
            }
        };
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint,
            region: settings
                .text("region")
                .map_or_else(|| "us-east-1".to_owned(), |r| r.get_ref().clone()),
            credentials,
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// The `host:port` requests go to.
    pub fn address(&self) -> String {
        let Some(endpoint) = &self.endpoint else {
            return format!("s3.{}.amazonaws.com:443", self.region);
        };
        let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
        let host = rest.split('/').next().unwrap_or(rest);
        if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:{}", if scheme == "http" { 80 } else { 443 })
        }
    }

    fn store(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region);
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        builder = match &self.credentials {
            Some((id, secret)) => builder.with_access_key_id(id).with_secret_access_key(secret),
            None => builder.with_skip_signature(true),
        };
        Ok(Arc::new(builder.build()?))
    }

    /// The key of `name` in batch `id`'s directory.
    fn key(&self, id: u64, name: &str) -> ObjectPath {
        let directory = format!("batch-{id:012}/{name}");
        if self.prefix.is_empty() {
            ObjectPath::from(directory)
        } else {
            ObjectPath::from(format!("{}/{directory}", self.prefix))
        }
    }
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
    client: Option<(tokio::runtime::Runtime, Arc<dyn ObjectStore>)>,
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
            client: None,
        }
    }

    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
        }
    }

    fn client(&self) -> Result<&(tokio::runtime::Runtime, Arc<dyn ObjectStore>), SinkError> {
        self.client
            .as_ref()
            .ok_or_else(|| self.error("written before it was opened".into()))
    }

    /// True when batch `id` has a manifest.
    fn committed(&self, id: u64) -> Result<bool, SinkError> {
        let (runtime, store) = self.client()?;
        let key = self.target.key(id, MANIFEST);
        match runtime.block_on(store.head(&key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(self.error(format!(
                "cannot read {}/{key} at {}: {error}",
                self.target.bucket,
                self.target.address()
            ))),
        }
    }
}

impl Sink for ObjectFilesSink {
    fn open(&mut self) -> Result<(), SinkError> {
        // One worker of its own, so that the HTTP client's connections are
        // looked after between batches too (a pooled connection the store
        // closed is noticed before it is used).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-s3")
            .enable_all()
            .build()
            .map_err(|e| self.error(format!("cannot start the object-storage client: {e}")))?;
        let store = self
            .target
            .store()
            .map_err(|e| self.error(format!("invalid object storage {}: {e}", self.target.url())))?;
        self.client = Some((runtime, store));
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
        let (runtime, store) = self.client()?;
        let fail = |key: &ObjectPath, error: &dyn std::fmt::Display| {
            self.error(format!(
                "cannot write batch {} to {}/{key} at {}: {error}",
                batch.id,
                self.target.bucket,
                self.target.address()
            ))
        };
        let mut parts = Vec::new();
        for (index, partition) in partitions.iter().enumerate() {
            let records: usize = partition.iter().map(crate::record::Batch::len).sum();
            if records == 0 {
                continue;
            }
            let name = format!("part-{index:05}.{extension}");
            let key = self.target.key(batch.id, &name);
            let mut body = Vec::new();
            encode_partition(&mut body, self.format, self.window_ms, partition)
                .map_err(|e| fail(&key, &e))?;
            let bytes = body.len();
            runtime
                .block_on(store.put(&key, PutPayload::from(body)))
                .map_err(|e| fail(&key, &e))?;
            parts.push(serde_json::json!({"name": name, "bytes": bytes, "records": records}));
        }
        crash_point("sink-commit");
        let manifest = serde_json::json!({
            "batch": batch.id,
            "time_ms": batch.time_ms,
            "format": extension,
            "parts": parts,
        });
        let key = self.target.key(batch.id, MANIFEST);
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
        match runtime.block_on(store.put_opts(&key, body, options)) {
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

    fn target(endpoint: Option<&str>, region: &str) -> ObjectTarget {
        ObjectTarget {
            bucket: "b".repeat(3),
            prefix: "out/counts".into(),
            endpoint: endpoint.map(str::to_owned),
            region: region.into(),
            credentials: None,
        }
    }

    #[test]
    fn keys_and_addresses() {
        let t = target(Some("http://127.0.0.1:9000"), "us-east-1");
        assert_eq!(
            t.key(7, MANIFEST).as_ref(),
            "out/counts/batch-000000000007/_manifest.json"
        );
        assert_eq!(t.address(), "127.0.0.1:9000");
        assert_eq!(
            target(Some("https://minio.internal"), "x").address(),
            "minio.internal:443"
        );
        assert_eq!(
            target(None, "eu-west-1").address(),
            "s3.eu-west-1.amazonaws.com:443"
        );
        assert_eq!(t.url(), "s3://bbb/out/counts");
    }
}
