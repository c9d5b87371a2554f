//! S3-compatible object storage: where objects go ([`ObjectTarget`], parsed
//! from an `s3://` URL and the keys `endpoint`, `region`, `access-key-id`,
//! `secret-access-key` and `credentials`), shared by the files sink on `s3://`
//! ([`crate::sink::object_files`]) and checkpoints on `s3://`
//! ([`crate::checkpoint::object_storage`]); and the small runtime that
//! checkpoint storage, which is called from plain threads, drives its
//! requests on ([`block_on`]). The AWS shared configuration files, which
//! the client does not read itself, are read in [`aws_profile`].

pub mod aws_profile;
pub mod credential_process;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;

use crate::config::{Settings, SpecError};
use aws_profile::{Profile, ProfileError, ProfileSource};

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
    /// `credentials`: `"environment"` or `"anonymous"`.
    pub credentials: Option<&'a toml::Spanned<String>>,
}

impl<'a> ObjectKeys<'a> {
    /// The keys of a kind's settings (a sink's table).
    pub fn of(settings: &'a Settings) -> Self {
        Self {
            endpoint: settings.text("endpoint"),
            region: settings.text("region"),
            access_key_id: settings.text("access-key-id"),
            secret_access_key: settings.text("secret-access-key"),
            credentials: settings.text("credentials"),
        }
    }
}

/// How requests to the store are signed (`Debug` leaves the secret out).
#[derive(Clone, PartialEq, Eq)]
pub enum ObjectCredentials {
    /// `access-key-id` and `secret-access-key`, as written in the file.
    Keys {
        /// The access key id.
        id: String,
        /// The secret access key.
        secret: String,
    },
    /// The environment's AWS credentials, found as the AWS SDKs find them
    /// (the default when the file names none): `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`; else the keys of
    /// the shared files' profile (`AWS_PROFILE`, else `default`, in
    /// `~/.aws/credentials` and `~/.aws/config`: [`aws_profile`]); else a
    /// web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, as
    /// on EKS); else the container's (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`
    /// or `_FULL_URI`, as on ECS); else the instance metadata service (EC2).
    /// `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's `region` give the
    /// region when the file does not.
    Environment,
    /// Unsigned requests (`credentials = "anonymous"`): a public bucket,
    /// or a local store that does not check signatures.
    Anonymous,
}

impl std::fmt::Debug for ObjectCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Keys { id, .. } => f
                .debug_struct("Keys")
                .field("id", id)
                .field("secret", &"…")
                .finish(),
            Self::Environment => f.write_str("Environment"),
            Self::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl ObjectCredentials {
    /// Reads `credentials` and the access keys.
    fn parse(keys: &ObjectKeys<'_>) -> Result<Self, SpecError> {
        let static_keys = match (keys.access_key_id, keys.secret_access_key) {
            (Some(id), Some(secret)) => Some((id, secret)),
            (None, None) => None,
            (Some(key), None) | (None, Some(key)) => {
                return Err((
                    key.span().start,
                    "`access-key-id` and `secret-access-key` go together".to_owned(),
                ));
            }
        };
        match (keys.credentials, static_keys) {
            (None, Some((id, secret))) => Ok(Self::Keys {
                id: id.get_ref().clone(),
                secret: secret.get_ref().clone(),
            }),
            (None, None) => Ok(Self::Environment),
            (Some(mode), Some(_)) => Err((
                mode.span().start,
                format!(
                    "`credentials = {:?}` and the access keys exclude each other: keep one",
                    mode.get_ref()
                ),
            )),
            (Some(mode), None) => match mode.get_ref().as_str() {
                "environment" => Ok(Self::Environment),
                "anonymous" => Ok(Self::Anonymous),
                other => Err((
                    mode.span().start,
                    format!(
                        "unknown credentials {other:?} (expected \"environment\": the AWS credentials of the environment, or \"anonymous\": unsigned requests; or set access-key-id and secret-access-key)"
                    ),
                )),
            },
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
    /// The region as the file gives it; `None`: the environment's or its
    /// profile's (with [`ObjectCredentials::Environment`]), else `us-east-1`.
    pub region: Option<String>,
    /// How requests are signed.
    pub credentials: ObjectCredentials,
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
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint,
            region: keys.region.map(|r| r.get_ref().clone()),
            credentials: ObjectCredentials::parse(keys)?,
        })
    }

    /// The region requests go to: the file's; else, with the environment's
    /// credentials, `AWS_REGION`, `AWS_DEFAULT_REGION` or the profile's;
    /// else `us-east-1`.
    pub fn region(&self) -> String {
        let vars = std::env::vars().collect::<Vec<_>>();
        let profile = self.profile_in(&vars).ok().flatten();
        self.region_in(&vars, profile.as_ref())
    }

    /// The shared files' profile in the environment `vars`, with
    /// [`ObjectCredentials::Environment`] only.
    fn profile_in(&self, vars: &[(String, String)]) -> Result<Option<Profile>, ProfileError> {
        match self.credentials {
            ObjectCredentials::Environment => aws_profile::load(vars),
            _ => Ok(None),
        }
    }

    /// [`ObjectTarget::region`] in the environment `vars` with its profile.
    fn region_in(&self, vars: &[(String, String)], profile: Option<&Profile>) -> String {
        if let Some(region) = &self.region {
            return region.clone();
        }
        let mut found = None;
        if self.credentials == ObjectCredentials::Environment {
            for (name, value) in vars.iter().filter(|(_, value)| !value.is_empty()) {
                match name.as_str() {
                    "AWS_REGION" => found = Some(value.clone()),
                    "AWS_DEFAULT_REGION" if found.is_none() => found = Some(value.clone()),
                    _ => {}
                }
            }
            found = found.or_else(|| profile.and_then(|profile| profile.region.clone()));
        }
        found.unwrap_or_else(|| "us-east-1".to_owned())
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    /// `error`, which a request to this store failed with, for a message;
    /// where it failed to find the environment's credentials, with what
    /// to set.
    pub fn explain(&self, error: &dyn std::fmt::Display) -> String {
        let text = error.to_string();
        let metadata = text.contains("/latest/api/token") || text.contains("/latest/meta-data/");
        if self.credentials == ObjectCredentials::Environment && metadata {
            format!(
                "{text} (no AWS credentials in the environment or in a profile of ~/.aws/credentials, \
                 and no instance metadata service answered: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                 AWS_PROFILE, access-key-id and secret-access-key, or credentials = \"anonymous\" for \
                 unsigned requests)"
            )
        } else {
            text
        }
    }

    /// The `host:port` requests go to.
    pub fn address(&self) -> String {
        let Some(endpoint) = &self.endpoint else {
            return format!("s3.{}.amazonaws.com:443", self.region());
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
    pub fn store(&self) -> Result<Arc<dyn ObjectStore>, ClientError> {
        Ok(Arc::new(
            self.builder(&std::env::vars().collect::<Vec<_>>())?.build()?,
        ))
    }

    /// The client's configuration in the environment `vars`: with
    /// [`ObjectCredentials::Environment`], the `AWS_*` variables that
    /// `object_store` knows and, without keys among them, the profile's
    /// keys; then what the file sets over them.
    fn builder(&self, vars: &[(String, String)]) -> Result<AmazonS3Builder, ProfileError> {
        let mut builder = AmazonS3Builder::new();
        let profile = self.profile_in(vars);
        if self.credentials == ObjectCredentials::Environment {
            let keys_set = vars
                .iter()
                .any(|(name, value)| name == "AWS_ACCESS_KEY_ID" && !value.is_empty());
            for (name, value) in vars {
                let known = name
                    .starts_with("AWS_")
                    .then(|| name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>().ok())
                    .flatten();
                // A secret or token without a key id is not a credential.
                let stray = matches!(
                    known,
                    Some(AmazonS3ConfigKey::SecretAccessKey | AmazonS3ConfigKey::Token)
                ) && !keys_set;
                if let Some(key) = known.filter(|_| !stray) {
                    builder = builder.with_config(key, value);
                }
            }
            // The variables' keys come first; only without them does the
            // profile (and so its errors) matter for signing.
            let source = match &profile {
                _ if keys_set => None,
                Ok(profile) => profile.as_ref().and_then(|p| Some((&p.name, p.source.as_ref()?))),
                Err(error) => return Err(error.clone()),
            };
            match source {
                Some((_, ProfileSource::Keys(keys))) => {
                    builder = builder
                        .with_access_key_id(&keys.id)
                        .with_secret_access_key(&keys.secret);
                    if let Some(token) = &keys.token {
                        builder = builder.with_token(token);
                    }
                }
                Some((name, ProfileSource::Process(command))) => {
                    builder = builder
                        .with_credentials(credential_process::ProcessCredentials::shared(name, command));
                }
                None => {}
            }
        }
        let profile = profile.ok().flatten();
        builder = builder
            .with_bucket_name(&self.bucket)
            .with_region(self.region_in(vars, profile.as_ref()));
        if let Some(endpoint) = &self.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        Ok(match &self.credentials {
            ObjectCredentials::Keys { id, secret } => {
                builder.with_access_key_id(id).with_secret_access_key(secret)
            }
            ObjectCredentials::Environment => builder,
            ObjectCredentials::Anonymous => builder.with_skip_signature(true),
        })
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

/// Most requests of one writer in flight at once: a batch's parts
/// ([`crate::sink::object_files`]), a checkpoint's state blobs
/// ([`crate::checkpoint::object_storage`]).
pub const PARALLEL_REQUESTS: usize = 8;

/// Why a client of an object store cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The AWS profile that would sign its requests cannot be used.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The client refused its configuration.
    #[error(transparent)]
    Client(#[from] object_store::Error),
}

/// The name of the object-storage runtime's worker thread.
const RUNTIME_THREAD: &str = "weir-objects";

/// The runtime object-storage requests run on: one worker thread for the
/// whole process, started on first use and never stopped (so it is never
/// dropped inside another runtime), which also keeps pooled connections
/// looked after between requests.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(RUNTIME_THREAD)
            .enable_all()
            .build()
            .expect("cannot start the object-storage runtime")
    })
}

/// Runs `request` on the object-storage runtime and waits for it, from any
/// thread (a runtime's worker too, where `Runtime::block_on` would panic).
pub fn block_on<T: Send + 'static>(request: impl Future<Output = T> + Send + 'static) -> T {
    // On the runtime's own (one) worker, the wait would never end.
    debug_assert_ne!(
        std::thread::current().name(),
        Some(RUNTIME_THREAD),
        "objects::block_on called from a request running on the object-storage runtime"
    );
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
            region: Some(region.into()),
            credentials: ObjectCredentials::Anonymous,
        }
    }

    /// Parses `s3://bucket/p` with the keys of a TOML table `table`.
    fn parsed(table: &str) -> Result<ObjectTarget, SpecError> {
        let table: std::collections::BTreeMap<String, toml::Spanned<String>> = toml::from_str(table).unwrap();
        let keys = ObjectKeys {
            endpoint: table.get("endpoint"),
            region: table.get("region"),
            access_key_id: table.get("access-key-id"),
            secret_access_key: table.get("secret-access-key"),
            credentials: table.get("credentials"),
        };
        ObjectTarget::parse("s3://bucket/p", &keys, 0)
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn credentials_come_from_the_file_the_environment_or_nowhere() {
        let keyed = parsed("access-key-id = \"AKID\"\nsecret-access-key = \"hush\"").unwrap();
        let shown = format!("{keyed:?}");
        assert!(shown.contains("AKID") && !shown.contains("hush"), "{shown}");
        assert_eq!(
            parsed("access-key-id = \"id\"\nsecret-access-key = \"s\"")
                .unwrap()
                .credentials,
            ObjectCredentials::Keys {
                id: "id".into(),
                secret: "s".into()
            }
        );
        assert_eq!(parsed("").unwrap().credentials, ObjectCredentials::Environment);
        assert_eq!(
            parsed("credentials = \"environment\"").unwrap().credentials,
            ObjectCredentials::Environment
        );
        assert_eq!(
            parsed("credentials = \"anonymous\"").unwrap().credentials,
            ObjectCredentials::Anonymous
        );
        let message = |table: &str| parsed(table).unwrap_err().1;
        assert!(message("access-key-id = \"id\"").contains("go together"));
        assert!(
            message("credentials = \"anonymous\"\naccess-key-id = \"i\"\nsecret-access-key = \"s\"")
                .contains("exclude each other")
        );
        assert!(message("credentials = \"iam\"").contains("unknown credentials \"iam\""));
    }

    #[test]
    fn the_environment_signs_only_when_asked_to() {
        let environment = vars(&[
            ("AWS_ACCESS_KEY_ID", "env-id"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ("AWS_SESSION_TOKEN", "env-token"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_NOT_A_SETTING", "x"),
            ("HOME", "/root"),
        ]);
        let config =
            |target: &ObjectTarget, key| target.builder(&environment).unwrap().get_config_value(&key);
        let from_environment = parsed("").unwrap();
        assert_eq!(
            config(&from_environment, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("env-id")
        );
        assert_eq!(
            config(&from_environment, AmazonS3ConfigKey::Token).as_deref(),
            Some("env-token")
        );
        assert_eq!(
            config(&from_environment, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(
            config(&from_environment, AmazonS3ConfigKey::Bucket).as_deref(),
            Some("bucket")
        );
        assert_eq!(from_environment.region_in(&environment, None), "eu-west-3");
        let mut region = environment.clone();
        region.push(("AWS_REGION".into(), "ap-south-1".into()));
        assert_eq!(from_environment.region_in(&region, None), "ap-south-1");

        // The file's keys and region win; the environment's token is not mixed in.
        let keyed =
            parsed("access-key-id = \"id\"\nsecret-access-key = \"s\"\nregion = \"us-west-2\"").unwrap();
        assert_eq!(
            config(&keyed, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("id")
        );
        assert_eq!(config(&keyed, AmazonS3ConfigKey::Token), None);
        assert_eq!(
            config(&keyed, AmazonS3ConfigKey::Region).as_deref(),
            Some("us-west-2")
        );

        // Anonymous requests use nothing of the environment.
        let anonymous = parsed("credentials = \"anonymous\"").unwrap();
        assert_eq!(config(&anonymous, AmazonS3ConfigKey::AccessKeyId), None);
        assert_eq!(
            config(&anonymous, AmazonS3ConfigKey::SkipSignature).as_deref(),
            Some("true")
        );
        assert_eq!(anonymous.region_in(&environment, None), "us-east-1");
        assert_eq!(anonymous.address(), "s3.us-east-1.amazonaws.com:443");
    }

    #[test]
    fn without_keys_in_the_variables_the_profile_signs() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(
            home.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKIPROFILE\naws_secret_access_key = s\naws_session_token = t\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".aws/config"),
            "[default]\nregion = eu-north-1\n",
        )
        .unwrap();
        let at = home.path().to_str().unwrap();
        let target = parsed("").unwrap();
        let config = |environment: &[(&str, &str)], key| {
            target.builder(&vars(environment)).unwrap().get_config_value(&key)
        };
        // A stray token in the variables is not mixed with the profile's keys.
        let profile = [("HOME", at), ("AWS_SESSION_TOKEN", "stray")];
        assert_eq!(
            config(&profile, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIPROFILE")
        );
        assert_eq!(config(&profile, AmazonS3ConfigKey::Token).as_deref(), Some("t"));
        assert_eq!(
            config(&profile, AmazonS3ConfigKey::Region).as_deref(),
            Some("eu-north-1")
        );
        // The variables win, the keys and the region.
        let variables = [
            ("HOME", at),
            ("AWS_ACCESS_KEY_ID", "AKIVAR"),
            ("AWS_SECRET_ACCESS_KEY", "v"),
            ("AWS_REGION", "sa-east-1"),
        ];
        assert_eq!(
            config(&variables, AmazonS3ConfigKey::AccessKeyId).as_deref(),
            Some("AKIVAR")
        );
        assert_eq!(config(&variables, AmazonS3ConfigKey::Token), None);
        assert_eq!(
            config(&variables, AmazonS3ConfigKey::Region).as_deref(),
            Some("sa-east-1")
        );
        // A profile named but missing fails the client only where it would sign.
        let missing = vars(&[("HOME", at), ("AWS_PROFILE", "nope")]);
        assert!(matches!(
            target.builder(&missing),
            Err(ProfileError::Missing { .. })
        ));
        let mut keyed = missing.clone();
        keyed.extend(vars(&[
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "B"),
        ]));
        assert!(target.builder(&keyed).is_ok());
        // Keys in the file: no profile is read.
        let file_keys = parsed("access-key-id = \"id\"\nsecret-access-key = \"s\"").unwrap();
        assert!(file_keys.builder(&missing).is_ok());
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
