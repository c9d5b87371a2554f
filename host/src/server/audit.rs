//! The audit log: one JSON line per mutating call (who, tenant, action,
//! plugin SHA-256, result, time), appended and synced before the call is
//! answered; the admin reads it through the API.
//!
//! It is bounded: past [`MAX_FILE_BYTES`] the file is rotated
//! (`audit.log` → `audit.log.1` → ... → `audit.log.`[`KEPT_FILES`], the
//! oldest dropped), so a busy server keeps the newest entries in at most
//! `(KEPT_FILES + 1) × MAX_FILE_BYTES` of disk.

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

/// Bytes an audit log file grows to before it is rotated.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

/// Rotated files kept besides the current one.
pub const KEPT_FILES: usize = 8;

/// The append-only audit log file, with its rotated predecessors.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    kept: usize,
    /// The current file and its size.
    file: Mutex<(std::fs::File, u64)>,
}

impl AuditLog {
    /// Opens the log at `path` for appending, rotated at [`MAX_FILE_BYTES`].
    pub fn open(path: PathBuf) -> Result<Self, ServerError> {
        Self::open_bounded(path, MAX_FILE_BYTES, KEPT_FILES)
    }

    /// Opens the log at `path`, rotated past `max_bytes` with `kept` rotated files.
    pub fn open_bounded(path: PathBuf, max_bytes: u64, kept: usize) -> Result<Self, ServerError> {
        let file = Self::open_file(&path)?;
        let size = file.metadata().map_or(0, |metadata| metadata.len());
        Ok(Self {
            path,
            max_bytes,
            kept,
            file: Mutex::new((file, size)),
        })
    }

    fn open_file(path: &std::path::Path) -> Result<std::fs::File, ServerError> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| ServerError::io(format!("cannot open the audit log {}", path.display()), e))
    }

    /// The `n`-th rotated file (0: the current one).
    fn rotated(&self, n: usize) -> PathBuf {
        match n {
            0 => self.path.clone(),
            n => {
                let mut name = self.path.as_os_str().to_owned();
                name.push(format!(".{n}"));
                PathBuf::from(name)
            }
        }
    }

    /// Appends `entry` and syncs it; rotates the file when it is full.
    pub fn append(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_vec(entry).expect("audit entries serialize");
        line.push(b'\n');
        let mut current = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if current.1 > 0 && current.1 + line.len() as u64 > self.max_bytes {
            match self.rotate() {
                Ok(file) => *current = (file, 0),
                Err(error) => tracing::error!(%error, "cannot rotate the audit log; it grows on"),
            }
        }
        let (file, size) = &mut *current;
        match file.write_all(&line).and_then(|()| file.sync_data()) {
            Ok(()) => *size += line.len() as u64,
            Err(error) => {
                tracing::error!(%error, path = %self.path.display(), "cannot append to the audit log")
            }
        }
    }

    /// Shifts every file one place older (dropping the oldest) and opens a
    /// new current file.
    fn rotate(&self) -> Result<std::fs::File, ServerError> {
        let _ = std::fs::remove_file(self.rotated(self.kept));
        for n in (0..self.kept).rev() {
            match std::fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServerError::io("cannot rotate the audit log".into(), e)),
            }
        }
        let file = Self::open_file(&self.path)?;
        if let Some(dir) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(file)
    }

    /// The newest `limit` entries (about `tenant` only, if given), oldest first.
    pub fn read(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, ServerError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Newest file first, each read whole, until there are enough.
        let mut newest_first: Vec<Vec<AuditEntry>> = Vec::new();
        let mut found = 0;
        for n in 0..=self.kept {
            let entries = self.read_file(&self.rotated(n), tenant, limit)?;
            found += entries.len();
            newest_first.push(entries);
            if found >= limit {
                break;
            }
        }
        let mut entries: Vec<AuditEntry> = newest_first.into_iter().rev().flatten().collect();
        let surplus = entries.len().saturating_sub(limit);
        entries.drain(..surplus);
        Ok(entries)
    }

    /// The newest `limit` entries of the file at `path` (about `tenant`
    /// only, if given), oldest first; none when it does not exist.
    fn read_file(
        &self,
        path: &std::path::Path,
        tenant: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServerError> {
        // Its own handle, without the writer's lock: a line being appended
        // is torn at the end and skipped.
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(ServerError::io(
                    format!("cannot read the audit log {}", path.display()),
                    e,
                ));
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, tenant: &str) -> AuditEntry {
        AuditEntry {
            time_ms: i as i64,
            who: "admin".into(),
            tenant: Some(tenant.into()),
            action: format!("action {i:04}"),
            plugin_sha256: None,
            result: "ok".into(),
        }
    }

    #[test]
    fn the_log_rotates_keeps_its_newest_entries_and_reads_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open_bounded(path.clone(), 1_000, 3).unwrap();
        for i in 0..200 {
            log.append(&entry(i, if i % 2 == 0 { "a" } else { "b" }));
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(files.len(), 4, "the current file and 3 rotated ones");
        for file in &files {
            assert!(file.metadata().unwrap().len() <= 1_000, "{file:?}");
        }
        // The newest entries, oldest first, across the files.
        let newest = log.read(None, 20).unwrap();
        let times: Vec<i64> = newest.iter().map(|e| e.time_ms).collect();
        assert_eq!(times, (180..200).collect::<Vec<i64>>());
        let all = log.read(None, 10_000).unwrap();
        assert!(all.len() < 200 && all.len() > 20, "{}", all.len());
        assert!(all.windows(2).all(|pair| pair[0].time_ms + 1 == pair[1].time_ms));
        assert_eq!(all.last().unwrap().time_ms, 199);
        let of_a = log.read(Some("a"), 5).unwrap();
        assert_eq!(
            of_a.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [190, 192, 194, 196, 198]
        );
        // Reopened, it goes on from the current file's size.
        drop(log);
        let log = AuditLog::open_bounded(path, 1_000, 3).unwrap();
        log.append(&entry(200, "a"));
        assert_eq!(log.read(None, 1).unwrap()[0].time_ms, 200);
    }
}
