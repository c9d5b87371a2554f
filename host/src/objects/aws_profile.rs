//! The AWS shared configuration files (`~/.aws/credentials` and
//! `~/.aws/config`, as `aws configure` writes them), which `object_store`
//! does not read: the profile named by `AWS_PROFILE` (else
//! `AWS_DEFAULT_PROFILE`, else `default`) gives static keys or a
//! `credential_process` ([`super::credential_process`]), and a region,
//! where the AWS SDKs' default chain would take them from it, between the
//! `AWS_*` variables and a web identity, a container or the instance.
//!
//! What the SDKs do beyond that (assuming a role, SSO) is not done here:
//! such a profile is refused with the command that exports its
//! credentials, rather than passed over for the instance's identity.

use std::path::{Path, PathBuf};

/// What a profile gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// The profile's name.
    pub name: String,
    /// Where its credentials come from; `None`: not from it.
    pub source: Option<ProfileSource>,
    /// `region`.
    pub region: Option<String>,
}

impl Profile {
    /// The profile's static keys, when its credentials are those.
    pub fn keys(&self) -> Option<&ProfileKeys> {
        match &self.source {
            Some(ProfileSource::Keys(keys)) => Some(keys),
            _ => None,
        }
    }
}

/// Where a profile's credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileSource {
    /// `aws_access_key_id`, `aws_secret_access_key` and (optional)
    /// `aws_session_token`.
    Keys(ProfileKeys),
    /// `credential_process`: the command that prints them.
    Process(String),
}

/// A profile's static keys.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileKeys {
    /// `aws_access_key_id`.
    pub id: String,
    /// `aws_secret_access_key`.
    pub secret: String,
    /// `aws_session_token`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ProfileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileKeys")
            .field("id", &self.id)
            .field("secret", &"…")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Why the profile cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// `AWS_PROFILE` names a profile neither file defines.
    #[error("AWS profile `{name}` (from {variable}) is defined in neither {credentials} nor {config}")]
    Missing {
        /// The profile.
        name: String,
        /// The variable that named it.
        variable: &'static str,
        /// The credentials file looked in.
        credentials: String,
        /// The config file looked in.
        config: String,
    },
    /// A file is there but cannot be read.
    #[error("cannot read the AWS shared configuration file {path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The profile has only one of the two keys.
    #[error("AWS profile `{name}` in {path} has `{present}` but no `{missing}`")]
    HalfKeys {
        /// The profile.
        name: String,
        /// The file.
        path: String,
        /// The key it has.
        present: &'static str,
        /// The key it lacks.
        missing: &'static str,
    },
    /// The profile gets its credentials in a way that is not supported here.
    #[error(
        "AWS profile `{name}` gets its credentials through `{setting}`, which Weir does not support; \
         export them into the environment (`eval \"$(aws configure export-credentials --profile {name} --format env)\"`), \
         select a profile whose credential_process prints them (`aws configure export-credentials --profile {name} --format process`), \
         or set access-key-id and secret-access-key"
    )]
    Unsupported {
        /// The profile.
        name: String,
        /// The setting (`role_arn`, `sso_session`, ...).
        setting: &'static str,
    },
}

/// Settings of a profile that mean its credentials come from elsewhere
/// (over any static keys it has, in the SDKs).
const UNSUPPORTED: [&str; 5] = [
    "role_arn",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "login_session",
];

/// The selected profile in the environment `vars` (its files read from
/// disk); `None` when the default profile is selected and defined in
/// neither file.
pub fn load(vars: &[(String, String)]) -> Result<Option<Profile>, ProfileError> {
    let var = |name: &str| {
        vars.iter()
            .rev()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    };
    let (name, variable) = match (var("AWS_PROFILE"), var("AWS_DEFAULT_PROFILE")) {
        (Some(name), _) => (name, Some("AWS_PROFILE")),
        (None, Some(name)) => (name, Some("AWS_DEFAULT_PROFILE")),
        (None, None) => ("default", None),
    };
    let home = var("HOME").or_else(|| var("USERPROFILE"));
    let place = |variable: &str, file: &str| -> Option<PathBuf> {
        match var(variable) {
            Some(path) => Some(expand_home(path, home)),
            None => home.map(|home| Path::new(home).join(".aws").join(file)),
        }
    };
    let credentials = place("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let config = place("AWS_CONFIG_FILE", "config");
    let read = |path: &Option<PathBuf>| -> Result<Option<String>, ProfileError> {
        let Some(path) = path else { return Ok(None) };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(ProfileError::Unreadable {
                path: path.display().to_string(),
                message: error.to_string(),
            }),
        }
    };
    let shown = |path: &Option<PathBuf>| {
        path.as_ref()
            .map_or_else(|| "(no home directory)".to_owned(), |p| p.display().to_string())
    };
    let from_credentials = read(&credentials)?.and_then(|text| section(&text, |header| header == name));
    let from_config = read(&config)?.and_then(|text| {
        section(&text, |header| {
            let named = header
                .strip_prefix("profile ")
                .map(str::trim)
                .is_some_and(|profile| profile == name);
            named || (name == "default" && header == "default")
        })
    });
    if from_credentials.is_none() && from_config.is_none() {
        return match variable {
            Some(variable) => Err(ProfileError::Missing {
                name: name.to_owned(),
                variable,
                credentials: shown(&credentials),
                config: shown(&config),
            }),
            None => Ok(None),
        };
    }
    // As in the SDKs, the credentials file's settings win over the config
    // file's for the same profile.
    let files = [(&from_credentials, &credentials), (&from_config, &config)];
    let in_file = |found: &Option<Vec<(String, String)>>, key: &str| {
        found
            .as_ref()
            .and_then(|pairs| pairs.iter().rev().find(|(k, _)| k == key))
            .map(|(_, value)| value.clone())
    };
    let get = |key: &str| files.iter().find_map(|(found, _)| in_file(found, key));
    if let Some(setting) = UNSUPPORTED.into_iter().find(|setting| get(setting).is_some()) {
        return Err(ProfileError::Unsupported {
            name: name.to_owned(),
            setting,
        });
    }
    // The key id, secret and token come from one file.
    let keys_in = |found: &Option<Vec<(String, String)>>, path: &Option<PathBuf>| {
        let half = |present, missing| ProfileError::HalfKeys {
            name: name.to_owned(),
            path: shown(path),
            present,
            missing,
        };
        match (
            in_file(found, "aws_access_key_id"),
            in_file(found, "aws_secret_access_key"),
        ) {
            (Some(id), Some(secret)) => Ok(Some(ProfileKeys {
                id,
                secret,
                token: in_file(found, "aws_session_token"),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(half("aws_access_key_id", "aws_secret_access_key")),
            (None, Some(_)) => Err(half("aws_secret_access_key", "aws_access_key_id")),
        }
    };
    // As in botocore: the credentials file's keys, then a
    // `credential_process`, then the config file's keys.
    let source = match keys_in(&from_credentials, &credentials)? {
        Some(keys) => Some(ProfileSource::Keys(keys)),
        None => match get("credential_process") {
            Some(command) => Some(ProfileSource::Process(command)),
            None => keys_in(&from_config, &config)?.map(ProfileSource::Keys),
        },
    };
    Ok(Some(Profile {
        name: name.to_owned(),
        source,
        region: get("region"),
    }))
}

/// `path` with a leading `~` taken for `home`.
fn expand_home(path: &str, home: Option<&str>) -> PathBuf {
    match (path.strip_prefix("~/").or(path.strip_prefix("~\\")), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// The `key = value` settings of the sections of `text` (the INI form the
/// AWS files use) whose header `wanted` accepts, in order (a later one
/// wins), with keys in lower case and empty values left out; `None` when
/// there is no such section. Comments (`#`, `;`: whole lines, after a
/// header, or after whitespace in a value), a byte-order mark, and the
/// indented sub-settings of a nested key (`s3 =` followed by indented
/// lines) are left out.
fn section(text: &str, wanted: impl Fn(&str) -> bool) -> Option<Vec<(String, String)>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut found: Option<Vec<(String, String)>> = None;
    let mut inside = false;
    // After a key with an empty value: its indented sub-settings follow.
    let mut nested = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if trimmed.starts_with('[') {
            // Any line that opens like a header ends the section before it.
            inside = header(trimmed).is_some_and(&wanted);
            nested = false;
            if inside && found.is_none() {
                found = Some(Vec::new());
            }
            continue;
        }
        if !inside || (nested && line.starts_with([' ', '\t'])) {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let value = without_comment(value.trim());
        nested = value.is_empty();
        if let (Some(settings), false) = (found.as_mut(), value.is_empty()) {
            settings.push((key.trim().to_ascii_lowercase(), value.to_owned()));
        }
    }
    found
}

/// The name in a header line (`[name]`, perhaps followed by a comment);
/// `None` when the line is not one.
fn header(line: &str) -> Option<&str> {
    let (name, rest) = line.strip_prefix('[')?.split_once(']')?;
    let rest = rest.trim();
    (rest.is_empty() || rest.starts_with('#') || rest.starts_with(';')).then(|| name.trim())
}

/// `value` without a comment (`#` or `;` after whitespace) at its end.
fn without_comment(value: &str) -> &str {
    let bytes = value.as_bytes();
    (1..bytes.len())
        .find(|&at| matches!(bytes[at], b'#' | b';') && bytes[at - 1].is_ascii_whitespace())
        .map_or(value, |at| value[..at].trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A home directory with `credentials` and `config` under `.aws`.
    fn aws_home(credentials: &str, config: &str) -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), credentials).unwrap();
        std::fs::write(home.path().join(".aws/config"), config).unwrap();
        home
    }

    const CREDENTIALS: &str = "\
# written by aws configure
[default]
aws_access_key_id = AKIDEFAULT
aws_secret_access_key = default-secret

[dev]
aws_access_key_id=AKIDEV
aws_secret_access_key=dev-secret
aws_session_token = dev-token
";

    const CONFIG: &str = "\
[default]
region = eu-west-1
s3 =
    max_concurrent_requests = 20
    region = not-this-one

[profile dev]
region = ap-south-1

[profile assumed]
role_arn = arn:aws:iam::123456789012:role/reader
source_profile = default

[profile regional]
; only a region: the credentials come from the instance
region = us-west-2
";

    /// Keys without a session token.
    fn keys(id: &str, secret: &str) -> ProfileKeys {
        ProfileKeys {
            id: id.into(),
            secret: secret.into(),
            token: None,
        }
    }

    #[test]
    fn the_selected_profile_gives_keys_and_region() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let at = home.path().to_str().unwrap();
        let default = load(&vars(&[("HOME", at)])).unwrap().unwrap();
        assert_eq!(default.name, "default");
        assert_eq!(
            default.keys().cloned(),
            Some(keys("AKIDEFAULT", "default-secret"))
        );
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));

        let dev = load(&vars(&[("HOME", at), ("AWS_PROFILE", "dev")]))
            .unwrap()
            .unwrap();
        let keys = dev.keys().unwrap();
        assert_eq!(
            (keys.id.as_str(), keys.token.as_deref()),
            ("AKIDEV", Some("dev-token"))
        );
        assert_eq!(dev.region.as_deref(), Some("ap-south-1"));
        // AWS_PROFILE wins over AWS_DEFAULT_PROFILE.
        let both = vars(&[
            ("HOME", at),
            ("AWS_DEFAULT_PROFILE", "regional"),
            ("AWS_PROFILE", "dev"),
        ]);
        assert_eq!(load(&both).unwrap().unwrap().name, "dev");

        let regional = load(&vars(&[("HOME", at), ("AWS_DEFAULT_PROFILE", "regional")]))
            .unwrap()
            .unwrap();
        assert_eq!(regional.source, None);
        assert_eq!(regional.region.as_deref(), Some("us-west-2"));
    }

    #[test]
    fn the_files_can_be_named_by_variables() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(
            elsewhere.path().join("creds"),
            "[default]\naws_access_key_id = OTHER\naws_secret_access_key = other\n",
        )
        .unwrap();
        let profile = load(&vars(&[
            ("HOME", home.path().to_str().unwrap()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                elsewhere.path().join("creds").to_str().unwrap(),
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(profile.keys().unwrap().id, "OTHER");
        // The config file is still the home directory's.
        assert_eq!(profile.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            expand_home("~/x/config", Some("/home/u")),
            PathBuf::from("/home/u/x/config")
        );
    }

    #[test]
    fn comments_nesting_and_odd_files_are_read_as_the_sdks_read_them() {
        let credentials = "\u{feff}[default] # the everyday keys\r\n\
                           aws_access_key_id = AKIDEFAULT ; inline\r\n\
                           aws_secret_access_key = se#cret # trailing\r\n\
                           aws_session_token =\r\n\
                           [prod]  # production\r\n\
                           aws_access_key_id = AKIPROD\r\n\
                           aws_secret_access_key = prod-secret\r\n";
        let config = "[default]\nregion = eu-west-1 # Ireland\n[profile indented]\n  region = us-west-1\n";
        let home = aws_home(credentials, config);
        let at = home.path().to_str().unwrap();
        let default = load(&vars(&[("HOME", at)])).unwrap().unwrap();
        assert_eq!(default.keys().cloned(), Some(keys("AKIDEFAULT", "se#cret")));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
        let prod = load(&vars(&[("HOME", at), ("AWS_PROFILE", "prod")]))
            .unwrap()
            .unwrap();
        assert_eq!(prod.keys().unwrap().id, "AKIPROD");
        // Indented settings not under a nested key are read.
        let indented = load(&vars(&[("HOME", at), ("AWS_PROFILE", "indented")]))
            .unwrap()
            .unwrap();
        assert_eq!(indented.region.as_deref(), Some("us-west-1"));
    }

    #[test]
    fn keys_come_from_one_file_and_a_role_wins_over_them() {
        let home = aws_home(
            "[dev]\naws_access_key_id = AKIDEV\naws_secret_access_key = s\n",
            "[profile dev]\naws_session_token = stale\n\
             [profile both]\naws_access_key_id = A\naws_secret_access_key = B\nrole_arn = arn:aws:iam::1:role/r\n",
        );
        let at = home.path().to_str().unwrap();
        let dev = load(&vars(&[("HOME", at), ("AWS_PROFILE", "dev")]))
            .unwrap()
            .unwrap();
        assert_eq!(dev.keys().unwrap().token, None);
        let both = load(&vars(&[("HOME", at), ("AWS_PROFILE", "both")]))
            .unwrap_err()
            .to_string();
        assert!(both.contains("through `role_arn`"), "{both}");
    }

    #[test]
    fn no_files_or_no_default_profile_is_no_profile() {
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            load(&vars(&[("HOME", empty.path().to_str().unwrap())])).unwrap(),
            None
        );
        assert_eq!(load(&[]).unwrap(), None);
        let home = aws_home("[dev]\naws_access_key_id = A\naws_secret_access_key = B\n", "");
        assert_eq!(
            load(&vars(&[("HOME", home.path().to_str().unwrap())])).unwrap(),
            None
        );
    }

    #[test]
    fn profiles_that_cannot_be_used_are_refused_with_the_reason() {
        let home = aws_home(CREDENTIALS, CONFIG);
        let at = home.path().to_str().unwrap();
        let error = |profile: &str| {
            load(&vars(&[("HOME", at), ("AWS_PROFILE", profile)]))
                .unwrap_err()
                .to_string()
        };
        let missing = error("prod");
        assert!(
            missing.contains("AWS profile `prod` (from AWS_PROFILE) is defined in neither")
                && missing.contains(".aws/credentials"),
            "{missing}"
        );
        let assumed = error("assumed");
        // A credential_process is run, not refused.
        let process = aws_home(
            "[dev]\naws_access_key_id = AKIDEV\naws_secret_access_key = s\n",
            "[profile dev]\ncredential_process = never-run\n[profile helper]\ncredential_process = helper --json\n\
             aws_access_key_id = config-keys-come-after\naws_secret_access_key = s\n",
        );
        let profile = |name: &str| {
            load(&vars(&[
                ("HOME", process.path().to_str().unwrap()),
                ("AWS_PROFILE", name),
            ]))
            .unwrap()
            .unwrap()
        };
        let helper = profile("helper");
        assert_eq!(
            helper.source,
            Some(ProfileSource::Process("helper --json".into()))
        );
        let dev = profile("dev");
        assert_eq!(dev.keys().unwrap().id, "AKIDEV");
        assert!(
            assumed.contains("through `role_arn`, which Weir does not support")
                && assumed.contains("aws configure export-credentials --profile assumed"),
            "{assumed}"
        );
        let half = aws_home("[default]\naws_access_key_id = A\n", "");
        let half = load(&vars(&[("HOME", half.path().to_str().unwrap())]))
            .unwrap_err()
            .to_string();
        assert!(
            half.contains("has `aws_access_key_id` but no `aws_secret_access_key`"),
            "{half}"
        );
        assert!(!format!("{:?}", load(&vars(&[("HOME", at)])).unwrap()).contains("default-secret"));
    }
}
