//! S3-compatible object storage: where objects go ([`ObjectTarget`], parsed
//! from an `s3://` URL and the keys `endpoint`, `region`, `access-key-id`
//! and `secret-access-key`), shared by the files sink on `s3://`
//! ([`crate::sink::object_files`]) and checkpoints on `s3://`
//! ([`crate::checkpoint::object_storage`]); and the small runtime that
//! checkpoint storage, which is called from plain threads, drives its
//! requests on ([`block_on`]).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;

use crate::config::{Settings, SpecError};

/// The object-storage keys of a table, as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectKeys<'a> {
    /// `endpoint`: a custom endpoint URL.
    pub endpoint: Option<&'a toml::Spanned<String>>,
    /// `region`.
    pub region: Option<&'a toml::Spanned<String>>,
    /// `access-key-id`.
    pub access_key_id: Option<&'a toml::Spanned<String>>,
    /// `secret-access-key`.
    pub secret_access_key: Option<&'a toml::Spanned<String>>,
}

impl<'a> ObjectKeys<'a> {
    /// The keys of a kind's settings (a sink's table).
    pub fn of(settings: &'a Settings) -> Self {
        Self {
            endpoint: settings.text("endpoint"),
            region: settings.text("region"),
            access_key_id: settings.text("access-key-id"),
            secret_access_key: settings.text("secret-access-key"),
        }
    }
}

/// Where objects go (a bucket and a key prefix) and how to sign in.
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
    /// Parses `s3://bucket[/prefix]` (at offset `at` of the file) and its
    /// object-storage keys.
    pub fn parse(url: &str, keys: &ObjectKeys<'_>, at: usize) -> Result<Self, SpecError> {
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
        let endpoint = match keys.endpoint {
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
        let credentials = match (keys.access_key_id, keys.secret_access_key) {
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
            region: keys
                .region
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

    /// A client of the bucket.
    pub fn store(&self) -> object_store::Result<Arc<dyn ObjectStore>> {
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

    /// The same bucket with `relative` (a `/`-separated path) added to the
    /// prefix.
    pub fn child(&self, relative: &str) -> Self {
        let relative = relative.trim_matches('/');
        Self {
            prefix: if self.prefix.is_empty() {
                relative.to_owned()
            } else {
                format!("{}/{relative}", self.prefix)
            },
            ..self.clone()
        }
    }

    /// The key of `name` (a `/`-separated relative path) under the prefix.
    pub fn key(&self, name: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }
}

/// The runtime object-storage requests run on: one worker thread for the
/// whole process, started on first use and never stopped (so it is never
/// dropped inside another runtime), which also keeps pooled connections
/// looked after between requests.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-objects")
            .enable_all()
            .build()
            .expect("cannot start the object-storage runtime")
    })
}

/// Runs `request` on the object-storage runtime and waits for it, from any
/// thread (a runtime's worker too, where `Runtime::block_on` would panic).
pub fn block_on<T: Send + 'static>(request: impl Future<Output = T> + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let _ = done.send(request.await);
    });
    result
        .recv()
        .expect("an object-storage request panicked (the runtime is never stopped)")
}

/// Runs `request` on the object-storage runtime without waiting for it
/// (clean-up that may fail unnoticed).
pub fn detach(request: impl Future<Output = ()> + Send + 'static) {
    runtime().spawn(request);
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
        assert_eq!(t.key("a/b.json").as_ref(), "out/counts/a/b.json");
        let mut root = t.clone();
        root.prefix.clear();
        assert_eq!(root.key("a/b.json").as_ref(), "a/b.json");
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

    #[test]
    fn requests_can_wait_from_inside_another_runtime() {
        let outer = tokio::runtime::Runtime::new().unwrap();
        let value = outer.block_on(async { block_on(async { 7 }) });
        assert_eq!(value, 7);
    }
}
