//! Credentials from a profile's `credential_process`: the command runs
//! through the shell (`sh -c`, as the AWS SDKs run it) and prints its
//! credentials as JSON on stdout — `{"Version": 1, "AccessKeyId",
//! "SecretAccessKey", "SessionToken"?, "Expiration"?}` — which are kept
//! until [`REFRESH_BEFORE`] ahead of their expiration (for good, without
//! one). Tools that sign in through SSO or assume roles offer such a
//! command (`aws configure export-credentials --format process`,
//! `aws-vault exec --json`, ...).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use object_store::aws::AwsCredential;
use object_store::client::CredentialProvider;

/// How long before their expiration credentials are fetched again.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Most of a failing command's stderr shown in the error.
const STDERR_SHOWN: usize = 500;

/// A [`CredentialProvider`] that runs a profile's `credential_process`.
#[derive(Debug)]
pub struct ProcessCredentials {
    profile: String,
    command: String,
    cached: tokio::sync::Mutex<Option<Cached>>,
}

#[derive(Debug)]
struct Cached {
    credential: Arc<AwsCredential>,
    expires: Option<SystemTime>,
}

/// The command's output, as the AWS SDKs define it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Output {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    expiration: Option<String>,
}

impl ProcessCredentials {
    /// The process's one provider of profile `profile`'s
    /// `credential_process` `command`, shared by every client that signs
    /// with it (so the command runs once for all of them).
    pub fn shared(profile: &str, command: &str) -> Arc<Self> {
        static SHARED: Mutex<BTreeMap<(String, String), Arc<ProcessCredentials>>> =
            Mutex::new(BTreeMap::new());
        SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((profile.to_owned(), command.to_owned()))
            .or_insert_with(|| Arc::new(Self::new(profile, command)))
            .clone()
    }

    /// A provider of profile `profile`'s `credential_process` `command`
    /// (nothing runs before the first request).
    pub fn new(profile: &str, command: &str) -> Self {
        Self {
            profile: profile.to_owned(),
            command: command.to_owned(),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    fn error(&self, message: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "the credential_process of AWS profile `{}` ({}): {message}",
                self.profile, self.command
            )
            .into(),
        }
    }

    /// Runs the command and reads what it printed.
    fn run(&self) -> object_store::Result<Cached> {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| self.error(format!("cannot run it: {e}")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = stderr.trim();
            let cut = stderr.len().min(STDERR_SHOWN);
            let cut = (0..=cut)
                .rev()
                .find(|&at| stderr.is_char_boundary(at))
                .unwrap_or(0);
            return Err(self.error(format!("it failed ({}): {}", output.status, &stderr[..cut])));
        }
        self.parse(&output.stdout)
    }

    /// Reads the command's output.
    fn parse(&self, stdout: &[u8]) -> object_store::Result<Cached> {
        let output: Output = serde_json::from_slice(stdout)
            .map_err(|e| self.error(format!("its output is not the credentials JSON: {e}")))?;
        if output.version != 1 {
            return Err(self.error(format!("its output has Version {}, not 1", output.version)));
        }
        let expires = match &output.expiration {
            Some(text) => Some(
                parse_expiration(text)
                    .ok_or_else(|| self.error(format!("its Expiration {text:?} is not an RFC 3339 time")))?,
            ),
            None => None,
        };
        Ok(Cached {
            credential: Arc::new(AwsCredential {
                key_id: output.access_key_id,
                secret_key: output.secret_access_key,
                token: output.session_token.filter(|token| !token.is_empty()),
            }),
            expires,
        })
    }

    /// The cached credentials while they have [`REFRESH_BEFORE`] or more
    /// left, else fresh ones (`now` for tests).
    async fn credential_at(&self, now: SystemTime) -> object_store::Result<Arc<AwsCredential>> {
        let mut cached = self.cached.lock().await;
        let fresh = cached.as_ref().is_some_and(|cached| {
            cached
                .expires
                .is_none_or(|expires| expires > now + REFRESH_BEFORE)
        });
        if !fresh {
            // A command that prompts or talks to a sign-in service blocks:
            // off the runtime's worker.
            let runner = Self::new(&self.profile, &self.command);
            let ran = tokio::task::spawn_blocking(move || runner.run())
                .await
                .map_err(|e| self.error(format!("it did not finish: {e}")))??;
            *cached = Some(ran);
        }
        Ok(cached.as_ref().expect("set above").credential.clone())
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ProcessCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.credential_at(SystemTime::now()).await
    }
}

/// An RFC 3339 time (`2026-12-03T15:00:00Z`, with fractional seconds or an
/// offset of `+00:00`, as the tools write it in UTC).
fn parse_expiration(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    let utc = text
        .strip_suffix("+00:00")
        .map_or_else(|| text.to_owned(), |rest| format!("{rest}Z"));
    humantime::parse_rfc3339_weak(&utc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(command: &str) -> ProcessCredentials {
        ProcessCredentials::new("dev", command)
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn the_output_gives_keys_token_and_expiration() {
        let parsed = provider("x")
            .parse(
                br#"{"Version": 1, "AccessKeyId": "AKI", "SecretAccessKey": "s", "SessionToken": "t",
                     "Expiration": "2026-12-03T15:00:00+00:00"}"#,
            )
            .unwrap();
        assert_eq!(parsed.credential.key_id, "AKI");
        assert_eq!(parsed.credential.token.as_deref(), Some("t"));
        assert_eq!(
            parsed.expires,
            Some(humantime::parse_rfc3339("2026-12-03T15:00:00Z").unwrap())
        );
        let error = |bytes: &[u8]| provider("helper --json").parse(bytes).unwrap_err().to_string();
        assert!(
            error(b"{\"Version\": 2, \"AccessKeyId\": \"a\", \"SecretAccessKey\": \"b\"}")
                .contains("Version 2, not 1")
        );
        let bad = error(b"not json");
        assert!(
            bad.contains("credential_process of AWS profile `dev` (helper --json)")
                && bad.contains("not the credentials JSON"),
            "{bad}"
        );
        assert!(
            error(br#"{"Version": 1, "AccessKeyId": "a", "SecretAccessKey": "b", "Expiration": "soon"}"#)
                .contains("Expiration \"soon\" is not an RFC 3339 time")
        );
    }

    #[test]
    fn credentials_are_kept_until_shortly_before_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let runs = dir.path().join("runs");
        let command = format!(
            "echo run >> '{}'; printf '%s' '{{\"Version\": 1, \"AccessKeyId\": \"AKI\", \"SecretAccessKey\": \"s\", \"Expiration\": \"2030-01-01T00:00:00Z\"}}'",
            runs.display()
        );
        let provider = provider(&command);
        let expires = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        block_on(async {
            let early = expires - Duration::from_secs(3600);
            assert_eq!(provider.credential_at(early).await.unwrap().key_id, "AKI");
            provider.credential_at(early).await.unwrap();
            assert_eq!(count(), 1);
            provider
                .credential_at(expires - REFRESH_BEFORE + Duration::from_secs(1))
                .await
                .unwrap();
            assert_eq!(count(), 2);
        });
    }

    #[test]
    fn clients_of_one_profile_share_its_provider() {
        let one = ProcessCredentials::shared("p", "helper");
        assert!(Arc::ptr_eq(&one, &ProcessCredentials::shared("p", "helper")));
        assert!(!Arc::ptr_eq(&one, &ProcessCredentials::shared("q", "helper")));
    }

    #[test]
    fn a_failing_command_says_why() {
        let error = block_on(provider("echo 'SSO session expired' >&2; exit 3").get_credential())
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("it failed (exit status: 3): SSO session expired"),
            "{error}"
        );
    }
}
