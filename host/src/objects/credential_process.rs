//! Credentials from a profile's `credential_process`: the command runs
//! through the shell (`sh -c`, as the AWS SDKs run it) and prints its
//! credentials as JSON on stdout — `{"Version": 1, "AccessKeyId",
//! "SecretAccessKey", "SessionToken"?, "Expiration"?}` — which are kept
//! until [`REFRESH_BEFORE`] ahead of their expiration (for good, without
//! one). Tools that sign in through SSO or assume roles offer such a
//! command (`aws configure export-credentials --format process`,
//! `aws-vault exec --json`, ...).
//!
//! A run that fails while the kept credentials have not expired yet keeps
//! them (with a warning); a failure is not retried for [`RETRY_AFTER`]; a
//! command that runs longer than [`TIMEOUT`] is killed. Messages name the
//! command's program only: its arguments may hold secrets.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use object_store::aws::AwsCredential;
use object_store::client::CredentialProvider;

/// How long before their expiration credentials are fetched again.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// How long after a failed run requests get its error without running the
/// command again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long the command may run (a sign-in through a browser included).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Most of a failing command's stderr shown in the error.
const STDERR_SHOWN: usize = 500;

/// Most of the command's output read (as the Java SDK does).
const OUTPUT_LIMIT: u64 = 64 << 10;

/// A [`CredentialProvider`] that runs a profile's `credential_process`.
pub struct ProcessCredentials {
    profile: String,
    command: String,
    state: tokio::sync::Mutex<State>,
}

impl std::fmt::Debug for ProcessCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessCredentials")
            .field("profile", &self.profile)
            .field("command", &shown(&self.command))
            .finish()
    }
}

/// What the provider keeps between requests.
#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// The last run's failure, while it is retried no sooner.
    failed: Option<(Instant, String)>,
}

struct Cached {
    credential: Arc<AwsCredential>,
    expires: Option<SystemTime>,
}

/// What `pipe` gives, up to [`OUTPUT_LIMIT`] bytes, read on a thread of its
/// own (so that neither of a child's pipes fills while the other is read).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.by_ref().take(OUTPUT_LIMIT).read_to_end(&mut bytes);
        bytes
    })
}

/// The command's program, without its arguments (which may hold secrets).
fn shown(command: &str) -> String {
    let program = command.split_whitespace().next().unwrap_or_default();
    if program.len() < command.trim().len() {
        format!("{program} …")
    } else {
        program.to_owned()
    }
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
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    fn error(&self, message: String) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "the credential_process of AWS profile `{}` ({}): {message}",
                self.profile,
                shown(&self.command)
            )
            .into(),
        }
    }

    /// Runs the command (killed after `timeout`) and reads what it printed.
    fn run(&self, timeout: Duration) -> object_store::Result<Cached> {
        use std::process::{Command, Stdio};
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.error(format!("cannot run it: {e}")))?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.error(format!(
                        "it ran longer than {} and was stopped",
                        humantime::format_duration(timeout)
                    )));
                }
                Err(e) => return Err(self.error(format!("cannot wait for it: {e}"))),
            }
        };
        let collect = |reader: Option<std::thread::JoinHandle<Vec<u8>>>| {
            reader.and_then(|reader| reader.join().ok()).unwrap_or_default()
        };
        let (stdout, stderr) = (collect(stdout), collect(stderr));
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim();
            let shown = &stderr[..stderr.floor_char_boundary(STDERR_SHOWN)];
            return Err(self.error(format!("it failed ({status}): {shown}")));
        }
        self.parse(&stdout)
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
    /// left, else fresh ones (`now` for tests); where the run fails, the
    /// cached ones while they have not expired.
    async fn credential_at(&self, now: SystemTime) -> object_store::Result<Arc<AwsCredential>> {
        let mut state = self.state.lock().await;
        let usable = |cached: &Option<Cached>, margin: Duration| {
            cached.as_ref().and_then(|cached| {
                let valid = cached.expires.is_none_or(|expires| expires > now + margin);
                valid.then(|| cached.credential.clone())
            })
        };
        if let Some(credential) = usable(&state.cached, REFRESH_BEFORE) {
            return Ok(credential);
        }
        let ran = match &state.failed {
            Some((at, message)) if at.elapsed() < RETRY_AFTER => Err(message.clone()),
            _ => {
                // A command that prompts or talks to a sign-in service blocks:
                // off the runtime's worker.
                let runner = Self::new(&self.profile, &self.command);
                tokio::task::spawn_blocking(move || runner.run(TIMEOUT))
                    .await
                    .map_err(|e| self.error(format!("it did not finish: {e}")))
                    .and_then(|ran| ran)
                    .map_err(|error| error.to_string())
            }
        };
        match ran {
            Ok(ran) => {
                state.failed = None;
                let credential = ran.credential.clone();
                state.cached = Some(ran);
                Ok(credential)
            }
            Err(message) => {
                if state
                    .failed
                    .as_ref()
                    .is_none_or(|(at, _)| at.elapsed() >= RETRY_AFTER)
                {
                    state.failed = Some((Instant::now(), message.clone()));
                }
                match usable(&state.cached, Duration::ZERO) {
                    Some(credential) => {
                        tracing::warn!(
                            profile = %self.profile,
                            "{message}; the credentials it gave before are used until they expire"
                        );
                        Ok(credential)
                    }
                    None => Err(object_store::Error::Generic {
                        store: "S3",
                        source: message.into(),
                    }),
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ProcessCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.credential_at(SystemTime::now()).await
    }
}

/// An RFC 3339 time: `2026-12-03T15:00:00Z`, with fractional seconds or
/// an offset (`+02:00`, `-05:00`) in place of the `Z`.
fn parse_expiration(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Some(utc) = text.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(&format!("{utc}Z")).ok();
    }
    // `±HH:MM` at the end: the local time there, shifted to UTC.
    let at = text.len().checked_sub(6)?;
    let (local, offset) = (text.get(..at)?, text.get(at..)?.as_bytes());
    let digits =
        |range: std::ops::Range<usize>| std::str::from_utf8(&offset[range]).ok()?.parse::<u64>().ok();
    let (hours, minutes) = (digits(1..3)?, digits(4..6)?);
    if offset[3] != b':' || hours > 23 || minutes > 59 {
        return None;
    }
    let local = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    let shift = Duration::from_secs(hours * 3600 + minutes * 60);
    match offset[0] {
        b'+' => local.checked_sub(shift),
        b'-' => local.checked_add(shift),
        _ => None,
    }
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
        let error = |bytes: &[u8]| provider("helper --json").parse(bytes).err().unwrap().to_string();
        assert!(
            error(b"{\"Version\": 2, \"AccessKeyId\": \"a\", \"SecretAccessKey\": \"b\"}")
                .contains("Version 2, not 1")
        );
        let bad = error(b"not json");
        assert!(
            bad.contains("credential_process of AWS profile `dev` (helper …)")
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
    fn expirations_with_offsets_are_read_in_utc() {
        let utc = |text| humantime::parse_rfc3339_weak(text).unwrap();
        assert_eq!(
            parse_expiration("2026-12-03T17:00:00.5+02:00"),
            Some(utc("2026-12-03T15:00:00.5Z"))
        );
        assert_eq!(
            parse_expiration("2026-12-03T10:30:00-05:30"),
            Some(utc("2026-12-03T16:00:00Z"))
        );
        assert_eq!(
            parse_expiration("2026-12-03T15:00:00z"),
            Some(utc("2026-12-03T15:00:00Z"))
        );
        for bad in [
            "2026-12-03T15:00:00+2:000",
            "2026-12-03T15:00:00+25:00",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_expiration(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_failed_refresh_keeps_credentials_that_have_not_expired() {
        let dir = tempfile::tempdir().unwrap();
        let (runs, down) = (dir.path().join("runs"), dir.path().join("down"));
        let command = format!(
            "echo run >> '{}'; if [ -e '{}' ]; then echo sign-in is down >&2; exit 1; fi; touch '{}'; \
             printf '%s' '{{\"Version\": 1, \"AccessKeyId\": \"AKI\", \"SecretAccessKey\": \"s\", \"Expiration\": \"2030-01-01T00:00:00Z\"}}'",
            runs.display(),
            down.display(),
            down.display()
        );
        let provider = provider(&command);
        let expires = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        let count = || std::fs::read_to_string(&runs).unwrap().lines().count();
        block_on(async {
            provider
                .credential_at(expires - Duration::from_secs(3600))
                .await
                .unwrap();
            // Due for a refresh, which fails: the old ones still work.
            let kept = provider
                .credential_at(expires - Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!((kept.key_id.as_str(), count()), ("AKI", 2));
            // Expired, and the failure is too recent to run again.
            let error = provider
                .credential_at(expires + Duration::from_secs(1))
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("sign-in is down"), "{error}");
            assert_eq!(count(), 2);
        });
    }

    #[test]
    fn a_command_that_runs_too_long_is_stopped() {
        let error = provider("sleep 30")
            .run(Duration::from_millis(100))
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("it ran longer than 100ms and was stopped"),
            "{error}"
        );
    }

    #[test]
    fn the_command_s_arguments_are_not_shown() {
        let provider = provider("helper --token hush");
        assert!(!format!("{provider:?}").contains("hush"));
        assert!(!provider.error("x".into()).to_string().contains("hush"));
        assert_eq!(shown("helper"), "helper");
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
