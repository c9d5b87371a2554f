//! What a tenant uploads: plugins (validated, stored once by content and
//! shared between tenants, removed when nothing names them) and files in
//! its root (written through cap-std, inside the root only), both within
//! its disk quota.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{FileRecord, PluginRecord, ServerState, lock};
use crate::config::{self, Paths, check_name};
use crate::server::auth;
use crate::server::{ServerError, store, versions};
use crate::source::now_ms;

impl ServerState {
    /// Validates `bytes` as a Weir plugin and stores it as tenant `name`'s
    /// upload `plugin`, content-addressed.
    pub fn put_plugin(&self, name: &str, plugin: &str, bytes: &[u8]) -> Result<PluginRecord, ServerError> {
        check_name(plugin).map_err(|why| ServerError::Invalid(format!("plugin name `{plugin}` {why}")))?;
        let tenant = self.tenant(name)?;
        let limit = lock(&tenant.config).quotas.max_plugin_bytes;
        if bytes.len() as u64 > limit {
            return Err(ServerError::TooLarge(format!(
                "the component is {} bytes; this tenant's uploads may have at most {limit}",
                bytes.len()
            )));
        }
        let _ops = tenant.lock_ops()?;
        let sha256 = auth::sha256_hex(bytes);
        let loaded = self
            .engine
            .runtime()
            .load_plugin_bytes(Path::new(&format!("{plugin}.wasm")), bytes)
            .map_err(|error| ServerError::Invalid(format!("not a usable Weir plugin: {error}")))?;
        // Within its disk quota, counting the uploads it keeps.
        let quota = lock(&tenant.config).quotas.max_disk_bytes;
        let kept: u64 = lock(&tenant.plugins)
            .iter()
            .filter(|(name, _)| name.as_str() != plugin)
            .map(|(_, record)| record.bytes)
            .sum();
        let used = tenant.disk_bytes.load(Ordering::Relaxed) + kept;
        if used + bytes.len() as u64 > quota {
            return Err(ServerError::Quota(format!(
                "the tenant's files and uploads hold {used} bytes; {} more would be above its disk quota of {quota}",
                bytes.len()
            )));
        }
        let _blobs = lock(&self.blobs);
        self.store.put_blob(&sha256, bytes)?;
        let info = loaded.info();
        let record = PluginRecord {
            sha256,
            bytes: bytes.len() as u64,
            version: format!("{} {}", info.name, info.version),
            kind: info.kind.name().to_owned(),
            uploaded_ms: now_ms(),
        };
        let mut plugins = lock(&tenant.plugins).clone();
        let replaced = plugins.insert(plugin.to_owned(), record.clone());
        store::write_json(&self.store.tenant_dir(name).join("plugins.json"), &plugins)?;
        *lock(&tenant.plugins) = plugins;
        drop(_blobs);
        if let Some(replaced) = replaced {
            self.release_blob(&replaced.sha256);
        }
        Ok(record)
    }

    /// Removes the stored component `sha256` unless some tenant's upload,
    /// a pipeline's hot-loaded version or version history, or a running
    /// pipeline still names it. (A pipeline deployed from an upload runs
    /// that upload's component without a record naming it: replacing the
    /// upload must keep the component, which a later rollback returns to.)
    pub(in crate::server) fn release_blob(&self, sha256: &str) {
        let _blobs = lock(&self.blobs);
        let used = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|tenant| {
                lock(&tenant.plugins).values().any(|p| p.sha256 == sha256)
                    || lock(&tenant.pipelines).values().any(|d| {
                        versions::names(&lock(&d.record), sha256)
                            || d.handle.as_ref().is_some_and(|h| versions::runs(h, sha256))
                    })
            });
        if !used {
            let _ = std::fs::remove_file(self.store.blob(sha256));
        }
    }

    /// Tenant `name`'s uploads.
    pub fn list_plugins(&self, name: &str) -> Result<BTreeMap<String, PluginRecord>, ServerError> {
        Ok(lock(&self.tenant(name)?.plugins).clone())
    }

    /// Removes tenant `name`'s upload `plugin` (running pipelines keep the
    /// component they loaded; the bytes stay for other tenants' uploads).
    pub fn delete_plugin(&self, name: &str, plugin: &str) -> Result<(), ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let mut plugins = lock(&tenant.plugins).clone();
        let Some(removed) = plugins.remove(plugin) else {
            return Err(ServerError::NotFound(format!("no plugin `{plugin}`")));
        };
        store::write_json(&self.store.tenant_dir(name).join("plugins.json"), &plugins)?;
        *lock(&tenant.plugins) = plugins;
        self.release_blob(&removed.sha256);
        Ok(())
    }

    /// Writes `bytes` as the file `path` of tenant `name`'s root (made with
    /// its directories, inside the root only): first under a dot-name in
    /// the same directory, then renamed into place, so a `files` source
    /// never reads it half written. Within the tenant's disk quota.
    pub fn put_file(&self, name: &str, path: &str, bytes: &[u8]) -> Result<FileRecord, ServerError> {
        let tenant = self.tenant(name)?;
        let (dir, file) = self.tenant_file(name, path)?;
        let quota = lock(&tenant.config).quotas.max_disk_bytes;
        let uploads: u64 = lock(&tenant.plugins).values().map(|p| p.bytes).sum();
        let used = tenant.disk_bytes.load(Ordering::Relaxed) + uploads;
        if used + bytes.len() as u64 > quota {
            return Err(ServerError::Quota(format!(
                "the tenant's files and uploads hold {used} bytes; {} more would be above its disk quota of {quota}",
                bytes.len()
            )));
        }
        let failed = |e: std::io::Error| ServerError::io(format!("cannot write the file {path}"), e);
        let dir = dir.open(true).map_err(failed)?;
        let staged = format!(".{file}.upload");
        dir.write(&staged, bytes).map_err(failed)?;
        dir.open(&staged).and_then(|f| f.sync_all()).map_err(failed)?;
        dir.rename(&staged, &dir, &file).map_err(failed)?;
        tenant.disk_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(FileRecord {
            path: path.to_owned(),
            bytes: bytes.len() as u64,
            sha256: auth::sha256_hex(bytes),
        })
    }

    /// Removes the file `path` of tenant `name`'s root.
    pub fn delete_file(&self, name: &str, path: &str) -> Result<(), ServerError> {
        self.tenant(name)?;
        let (dir, file) = self.tenant_file(name, path)?;
        let missing = || ServerError::NotFound(format!("no file {path}"));
        let dir = dir.open(false).map_err(|_| missing())?;
        match dir.remove_file(&file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(ServerError::io(format!("cannot remove the file {path}"), e)),
        }
    }

    /// The directory (inside tenant `name`'s root) and name of its file
    /// `path`, or why `path` may not name one.
    fn tenant_file(&self, name: &str, path: &str) -> Result<(config::DirPath, String), ServerError> {
        let invalid = |why: String| ServerError::Invalid(why);
        let (parent, file) = path.rsplit_once('/').unwrap_or(("", path));
        if file.is_empty() || file.starts_with('.') {
            return Err(invalid(format!(
                "`{path}` names no file a source would read (empty, or a dot-name)"
            )));
        }
        let paths = Paths::confined_to(self.store.tenant_root(name));
        let dir = paths
            .resolve_dir(if parent.is_empty() { "." } else { parent }, "path")
            .map_err(invalid)?;
        Ok((dir, file.to_owned()))
    }
}
