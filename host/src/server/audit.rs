//! The audit log: one JSON line per mutating call (who, tenant, action,
//! plugin SHA-256, result, time), appended and synced before the call is
//! answered; the admin reads it through the API.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::ServerError;

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// Who: `admin`, or `tenant/role:token-id`.
    pub who: String,
    /// The tenant it acted on, if any.
    pub tenant: Option<String>,
    /// What, e.g. `deploy pipeline wordcount`.
    pub action: String,
    /// The plugin's SHA-256, for uploads and deploys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plugin_sha256: Option<String>,
    /// `ok`, or the error the call got.
    pub result: String,
}

/// The append-only audit log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl AuditLog {
    /// Opens the log at `path` for appending.
    pub fn open(path: PathBuf) -> Result<Self, ServerError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ServerError::io(format!("cannot open the audit log {}", path.display()), e))?;
        Ok(Self {
            path,
            file: Mutex::new(file),
        })
    }

    /// Appends `entry` and syncs it.
    pub fn append(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_vec(entry).expect("audit entries serialize");
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = file.write_all(&line).and_then(|()| file.sync_data()) {
            tracing::error!(%error, path = %self.path.display(), "cannot append to the audit log");
        }
    }

    /// The newest `limit` entries (about `tenant` only, if given), oldest first.
    pub fn read(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, ServerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Its own handle, without the writer's lock: a line being appended
        // is torn at the end and skipped.
        let file = std::fs::File::open(&self.path)
            .map_err(|e| ServerError::io(format!("cannot read the audit log {}", self.path.display()), e))?;
        let mut entries = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(|e| ServerError::io("cannot read the audit log".into(), e))?;
            // A line torn by a crash is skipped, not fatal.
            let Ok(entry) = serde_json::from_str::<AuditEntry>(&line) else {
                continue;
            };
            if tenant.is_some_and(|t| entry.tenant.as_deref() != Some(t)) {
                continue;
            }
            if entries.len() == limit {
                entries.pop_front();
            }
            entries.push_back(entry);
        }
        Ok(entries.into())
    }
}
