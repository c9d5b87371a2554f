//! Bearer tokens and roles.
//!
//! The admin token is read from a file when the server starts; tenant
//! tokens are made here, shown once, and kept only as SHA-256 hashes. A
//! token reads `weir_<id>_<secret>`: the id finds its record, the hash of
//! the whole token is compared in constant time. Revoking removes the
//! record, so the next call with that token is refused.
//!
//! Failed authentications are counted per client address; past a few in a
//! minute, each further answer is delayed, doubling up to five seconds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Deploy, stop and remove its tenant's pipelines, upload plugins, make tokens.
    Operator,
    /// Read its tenant's pipelines, plugins and metrics.
    Viewer,
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The server's admin: every tenant, tenants themselves, the audit log.
    Admin,
    /// A tenant's token.
    Tenant {
        /// The tenant.
        tenant: String,
        /// Its role.
        role: Role,
        /// The token's id.
        token: String,
    },
}

impl Principal {
    /// How the audit log names it.
    pub fn who(&self) -> String {
        match self {
            Self::Admin => "admin".to_owned(),
            Self::Tenant { tenant, role, token } => {
                format!(
                    "{tenant}/{}:{token}",
                    if *role == Role::Operator {
                        "operator"
                    } else {
                        "viewer"
                    }
                )
            }
        }
    }
}

/// A tenant token as stored: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (the part between `weir_` and the secret).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// Makes a new token for `role`: the record to keep, and the token to show once.
pub fn new_token(role: Role, now_ms: i64) -> (TokenRecord, String) {
    let id = random_hex(8);
    let token = format!("weir_{id}_{}", random_hex(24));
    let record = TokenRecord {
        id,
        role,
        sha256: sha256_hex(token.as_bytes()),
        created_ms: now_ms,
    };
    (record, token)
}

/// The id of a well-formed tenant token.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("weir_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 48).then_some(id)
}

/// True when `token` hashes to `sha256` (hex), compared in constant time.
pub fn token_matches(token: &str, sha256: &str) -> bool {
    sha256_hex(token.as_bytes())
        .as_bytes()
        .ct_eq(sha256.as_bytes())
        .into()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    hex(&buf)
}

/// Failed authentications per client address.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Failures within this window count together.
const WINDOW: Duration = Duration::from_secs(60);
/// Failures answered at once before the delays start.
const FREE_FAILURES: u32 = 5;

impl Throttle {
    /// Counts a failure from `client`; returns how long to wait before answering it.
    pub fn fail(&self, client: IpAddr) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() > 10_000 {
            failures.retain(|_, (_, last)| now.duration_since(*last) < WINDOW);
        }
        let entry = failures.entry(client).or_insert((0, now));
        if now.duration_since(entry.1) >= WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.1 = now;
        match entry.0.checked_sub(FREE_FAILURES) {
            None | Some(0) => Duration::ZERO,
            Some(over) => Duration::from_millis(100u64 << (over - 1).min(6)).min(Duration::from_secs(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_their_hash_only() {
        let (record, token) = new_token(Role::Viewer, 0);
        assert_eq!(token_id(&token), Some(record.id.as_str()));
        assert!(token_matches(&token, &record.sha256));
        let mut other = token.clone();
        other.pop();
        other.push(if token.ends_with('0') { '1' } else { '0' });
        assert!(!token_matches(&other, &record.sha256));
        assert_eq!(token_id("weir_short_x"), None);
        assert!(!token.contains(&record.sha256));
    }

    #[test]
    fn repeated_failures_are_slowed_down() {
        let throttle = Throttle::default();
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let delays: Vec<Duration> = (0..8).map(|_| throttle.fail(client)).collect();
        assert!(delays[..5].iter().all(Duration::is_zero), "{delays:?}");
        assert!(delays[5] > Duration::ZERO && delays[7] > delays[6], "{delays:?}");
    }
}
