//! The server's state and what can be done to it: tenants, tokens, plugin
//! uploads and deployed pipelines, kept in memory and in the data
//! directory ([`super::store`]) together, so a restart finds what was there.
//!
//! Every call that changes a tenant holds that tenant's operation lock for
//! its whole length (one change at a time per tenant, calls on other
//! tenants go on); reads take only short locks. The calls block (a deploy
//! compiles plugins, a stop waits for the pipeline's end): the API runs
//! them on tokio's blocking threads.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServerError;
use super::audit::{AuditEntry, AuditLog};
use super::auth::{self, Principal, Role, TokenRecord};
use super::metrics::DelayHistograms;
use super::store::{self, Store};
use super::tenant::{Footprint, QuotaUse, Quotas, TenantConfig};
use crate::config::{self, Paths, Scope, check_name};
use crate::engine::{Engine, PipelineHandle};
use crate::pipeline::{
    BatchDetail, CheckpointRecord, PipelineEvent, PipelineMetrics, PipelineState, PipelineStatus, RunOptions,
    StopMode,
};
use crate::source::now_ms;

/// Events kept per pipeline for `GET .../events`.
const RECENT_EVENTS: usize = 200;

/// How long a stop waits for the pipeline to drain and end.
const STOP_WAIT: Duration = Duration::from_secs(60);

/// What the operator wants a deployed pipeline to be doing; a restart
/// brings it back to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Desired {
    /// Running.
    Running,
    /// Started, then paused.
    Paused,
    /// Not running.
    Stopped,
}

/// A deployed pipeline's record in `pipelines/<name>.json`: one file, so
/// a deploy is one durable write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PipelineRecord {
    pub(super) desired: Desired,
    pub(super) deployed_ms: i64,
    /// The pipeline file as deployed.
    pub(super) file: String,
    /// The plugin versions hot-loaded into its stages (`stage/plugin`),
    /// which a start runs instead of the pipeline file's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) pins: BTreeMap<String, super::versions::Pin>,
    /// Each stage plugin's last versions (`stage/plugin`), over restarts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) history: BTreeMap<String, Vec<crate::pipeline::VersionRecord>>,
}

/// An uploaded plugin's record in `plugins.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its name and version as the component says.
    pub version: String,
    /// The operator it implements.
    pub kind: String,
    /// When it was uploaded, in milliseconds since the Unix epoch.
    pub uploaded_ms: i64,
}

/// A deployed pipeline.
pub(super) struct Deployed {
    text: String,
    /// Shared with the task that records its automatic rollbacks.
    pub(super) record: Arc<Mutex<PipelineRecord>>,
    pub(super) handle: Option<PipelineHandle>,
    /// Why it could not be started (a restore after a restart, a start).
    failure: Option<String>,
    /// Why the server paused it (a quota), if it did.
    quota_paused: Option<String>,
    footprint: Footprint,
    events: Arc<Mutex<VecDeque<PipelineEvent>>>,
}

impl Deployed {
    fn active(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.status().state.is_final())
    }
}

/// A pipeline's status as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineView {
    /// Its name.
    pub name: String,
    /// What the operator wants it to be doing.
    pub desired: Desired,
    /// What it is doing: its live status (absent when it never started).
    pub status: Option<PipelineStatus>,
    /// Why it could not be started.
    pub failure: Option<String>,
    /// Why the server paused it for a quota.
    pub quota_paused: Option<String>,
    /// Its worst-case plugin instances and Wasm memory.
    pub footprint: Footprint,
    /// When it was deployed.
    pub deployed_ms: i64,
    /// Its weight in the worker pool while it runs (its tenant's CPU share
    /// split among the tenant's running pipelines).
    pub cpu_weight: Option<u32>,
}

impl PipelineView {
    /// The SHA-256 of every plugin it runs, sorted, comma-separated (for
    /// the audit log); `None` when it runs none.
    pub fn plugin_sha256s(&self) -> Option<String> {
        let mut hashes: Vec<&str> = self
            .status
            .as_ref()?
            .plugins
            .iter()
            .map(|p| p.sha256.as_str())
            .collect();
        hashes.sort_unstable();
        hashes.dedup();
        (!hashes.is_empty()).then(|| hashes.join(","))
    }
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    /// Its settings.
    #[serde(flatten)]
    pub config: TenantConfig,
    /// Pipelines deployed.
    pub pipelines: usize,
    /// Pipelines running.
    pub running: usize,
    /// Bytes its files, spilled state and uploads hold (files measured every
    /// few seconds).
    pub disk_bytes: u64,
    /// Worst-case footprint of its running pipelines.
    pub footprint: Footprint,
}

pub(super) struct Tenant {
    name: String,
    config: Mutex<TenantConfig>,
    tokens: Mutex<Vec<TokenRecord>>,
    plugins: Mutex<BTreeMap<String, PluginRecord>>,
    pipelines: Mutex<BTreeMap<String, Deployed>>,
    /// Held for the whole of every change to this tenant.
    ops: Mutex<()>,
    /// Set (under `ops`) when the tenant is removed: a change that waited
    /// for `ops` meanwhile finds it gone.
    removed: std::sync::atomic::AtomicBool,
    disk_bytes: AtomicU64,
}

impl Tenant {
    fn new(
        config: TenantConfig,
        tokens: Vec<TokenRecord>,
        plugins: BTreeMap<String, PluginRecord>,
        disk: u64,
    ) -> Self {
        Self {
            name: config.name.clone(),
            config: Mutex::new(config),
            tokens: Mutex::new(tokens),
            plugins: Mutex::new(plugins),
            pipelines: Mutex::default(),
            ops: Mutex::default(),
            removed: Default::default(),
            disk_bytes: AtomicU64::new(disk),
        }
    }

    /// What its running pipelines may hold at worst, but `except` (the one
    /// a deploy replaces).
    fn running_footprint(&self, except: Option<&str>) -> Footprint {
        lock(&self.pipelines)
            .iter()
            .filter(|(name, d)| d.active() && Some(name.as_str()) != except)
            .fold(Footprint::default(), |sum, (_, d)| sum.plus(d.footprint))
    }

    /// Bytes it holds: its files and spilled state (as last measured) and
    /// its uploads.
    fn used_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed) + lock(&self.plugins).values().map(|p| p.bytes).sum::<u64>()
    }

    /// Takes the tenant's operation lock, unless the tenant was removed.
    pub(super) fn lock_ops(&self) -> Result<MutexGuard<'_, ()>, ServerError> {
        let ops = lock(&self.ops);
        if self.removed.load(Ordering::Acquire) {
            return Err(ServerError::NotFound(format!("no tenant `{}`", self.name)));
        }
        Ok(ops)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a tenant may change a tenant's settings to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantChange {
    /// Quotas to change (an object of some of [`Quotas`]' fields): over the
    /// server's defaults for a new tenant, over the current ones for a change.
    pub quotas: Option<serde_json::Value>,
    /// New granted addresses.
    pub allowed_addresses: Option<Vec<String>>,
}

/// A file written into a tenant's root through the API.
#[derive(Debug, Clone, Serialize)]
pub struct FileRecord {
    /// Its path in the tenant's root.
    pub path: String,
    /// Its size.
    pub bytes: u64,
    /// Hex SHA-256 of its content.
    pub sha256: String,
}

/// The server: its engine, its tenants and its audit log.
pub struct ServerState {
    store: Store,
    engine: Engine,
    admin_sha256: String,
    defaults: Quotas,
    tenants: RwLock<BTreeMap<String, Arc<Tenant>>>,
    /// Token id → tenant.
    token_index: RwLock<HashMap<String, String>>,
    admin_ops: Mutex<()>,
    /// Held while a stored component is added or removed.
    blobs: Mutex<()>,
    /// Shared with the tasks that record automatic plugin version changes.
    audit: Arc<AuditLog>,
    pub(super) histograms: DelayHistograms,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("data", &self.store.dir())
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// Opens the data directory and brings back every tenant, and every
    /// pipeline that should be running, from its checkpoint.
    pub fn open(
        store: Store,
        engine: Engine,
        admin_token: &str,
        defaults: Quotas,
        runtime: tokio::runtime::Handle,
    ) -> Result<Arc<Self>, ServerError> {
        let audit = Arc::new(AuditLog::open(store.audit_log())?);
        let state = Arc::new(Self {
            store,
            engine,
            admin_sha256: auth::sha256_hex(admin_token.as_bytes()),
            defaults,
            tenants: RwLock::default(),
            token_index: RwLock::default(),
            admin_ops: Mutex::default(),
            blobs: Mutex::default(),
            audit,
            histograms: DelayHistograms::default(),
            runtime,
        });
        state.restore()?;
        Ok(state)
    }

    /// The engine every tenant's pipelines run on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The data directory.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    fn restore(&self) -> Result<(), ServerError> {
        let dir = self.store.tenants_dir();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| ServerError::io(format!("cannot list {}", dir.display()), e))?;
        let mut names = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.starts_with('.') {
                // A tenant whose removal a crash interrupted.
                let _ = std::fs::remove_dir_all(entry.path());
            } else if entry.path().join("tenant.json").exists() {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let tenant_dir = self.store.tenant_dir(&name);
            // Spilled state of the pipelines of a process that ended; none runs yet.
            let _ = std::fs::remove_dir_all(self.store.tenant_spill(&name));
            let Some(config) = store::read_json::<TenantConfig>(&tenant_dir.join("tenant.json"))? else {
                continue;
            };
            let tokens: Vec<TokenRecord> =
                store::read_json(&tenant_dir.join("tokens.json"))?.unwrap_or_default();
            let plugins: BTreeMap<String, PluginRecord> =
                store::read_json(&tenant_dir.join("plugins.json"))?.unwrap_or_default();
            let disk = store::disk_usage(&self.store.tenant_root(&name));
            let tenant = Arc::new(Tenant::new(config, tokens.clone(), plugins, disk));
            {
                let mut index = self.token_index.write().unwrap_or_else(|e| e.into_inner());
                for token in tokens {
                    index.insert(token.id, name.clone());
                }
            }
            self.tenants
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), tenant.clone());
            self.restore_pipelines(&tenant)?;
        }
        Ok(())
    }

    fn restore_pipelines(&self, tenant: &Arc<Tenant>) -> Result<(), ServerError> {
        let dir = self.store.pipelines_dir(&tenant.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        for file in files {
            let Some(name) = file.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some(record) = store::read_json::<PipelineRecord>(&file)? else {
                continue;
            };
            let text = record.file.clone();
            let mut deployed = Deployed {
                text,
                record: Arc::new(Mutex::new(record)),
                handle: None,
                failure: None,
                quota_paused: None,
                footprint: Footprint::default(),
                events: Arc::default(),
            };
            let desired = lock(&deployed.record).desired;
            if desired != Desired::Stopped {
                let shown = format!("pipelines/{name}.toml");
                let kept = lock(&deployed.record).clone();
                match self.launch(tenant, &deployed.text, &shown, Some(&kept)) {
                    Ok((handle, footprint)) => {
                        if desired == Desired::Paused {
                            let _ = handle.pause();
                        }
                        self.watch_events(tenant, &handle, &deployed);
                        deployed.handle = Some(handle);
                        deployed.footprint = footprint;
                    }
                    Err(error) => {
                        tracing::error!(tenant = %tenant.name, pipeline = %name, %error, "cannot restore pipeline");
                        deployed.failure = Some(error.to_string());
                    }
                }
            }
            lock(&tenant.pipelines).insert(name, deployed);
        }
        Ok(())
    }

    // ----- authentication -------------------------------------------------

    /// Who `token` is, if anyone.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        if auth::token_matches(token, &self.admin_sha256) {
            return Some(Principal::Admin);
        }
        let id = auth::token_id(token)?;
        let tenant_name = self
            .token_index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()?;
        let tenant = self.tenant(&tenant_name).ok()?;
        let tokens = lock(&tenant.tokens);
        let record = tokens.iter().find(|t| t.id == id)?;
        auth::token_matches(token, &record.sha256).then(|| Principal::Tenant {
            tenant: tenant_name.clone(),
            role: record.role,
            token: record.id.clone(),
        })
    }

    /// Checks that `who` may act on `tenant` (operating when `operate`):
    /// another tenant's objects are "not found", a viewer may not operate.
    pub fn authorize(&self, who: &Principal, tenant: &str, operate: bool) -> Result<(), ServerError> {
        match who {
            Principal::Admin => Ok(()),
            Principal::Tenant {
                tenant: own, role, ..
            } => {
                if own != tenant {
                    Err(ServerError::NotFound(format!("no tenant `{tenant}`")))
                } else if operate && *role == Role::Viewer {
                    Err(ServerError::Forbidden(
                        "this token is a viewer's: it may read, not change".into(),
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    // ----- audit ----------------------------------------------------------

    /// Appends an audit entry for a mutating call and its result.
    pub fn audit<T>(
        &self,
        who: &Principal,
        tenant: Option<&str>,
        action: &str,
        plugin_sha256: Option<String>,
        result: &Result<T, ServerError>,
    ) {
        self.audit.append(&AuditEntry {
            time_ms: now_ms(),
            who: who.who(),
            tenant: tenant.map(str::to_owned),
            action: action.to_owned(),
            plugin_sha256,
            result: match result {
                Ok(_) => "ok".to_owned(),
                Err(error) => error.to_string(),
            },
        });
    }

    /// Appends an audit entry for a mutating call refused before its caller
    /// was known (`who` describes it).
    pub fn audit_refused(&self, who: &str, action: &str, why: &str) {
        self.audit.append(&AuditEntry {
            time_ms: now_ms(),
            who: who.to_owned(),
            tenant: None,
            action: action.to_owned(),
            plugin_sha256: None,
            result: why.to_owned(),
        });
    }

    /// The newest audit entries.
    pub fn audit_entries(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<AuditEntry>, ServerError> {
        self.audit.read(tenant, limit)
    }

    // ----- tenants --------------------------------------------------------

    pub(super) fn tenant(&self, name: &str) -> Result<Arc<Tenant>, ServerError> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| ServerError::NotFound(format!("no tenant `{name}`")))
    }

    fn tenant_names(&self) -> Vec<String> {
        self.tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Creates tenant `name`.
    pub fn create_tenant(&self, name: &str, change: TenantChange) -> Result<TenantView, ServerError> {
        check_name(name).map_err(|why| ServerError::Invalid(format!("tenant name `{name}` {why}")))?;
        let _admin = lock(&self.admin_ops);
        if self.tenant(name).is_ok() {
            return Err(ServerError::Conflict(format!("tenant `{name}` exists")));
        }
        let config = TenantConfig {
            name: name.to_owned(),
            quotas: merged_quotas(&self.defaults, change.quotas)?,
            allowed_addresses: change.allowed_addresses.unwrap_or_default(),
            created_ms: now_ms(),
        };
        let dir = self.store.tenant_dir(name);
        if dir.exists() {
            // What a create interrupted by a crash left (a tenant exists
            // once its tenant.json is written, and is then in memory).
            std::fs::remove_dir_all(&dir)
                .map_err(|e| ServerError::io(format!("cannot clear {}", dir.display()), e))?;
        }
        for sub in [dir.join("root"), dir.join("pipelines")] {
            std::fs::create_dir_all(&sub)
                .map_err(|e| ServerError::io(format!("cannot create {}", sub.display()), e))?;
        }
        store::write_json(&dir.join("tokens.json"), &Vec::<TokenRecord>::new())?;
        store::write_json(
            &dir.join("plugins.json"),
            &BTreeMap::<String, PluginRecord>::new(),
        )?;
        // tenant.json last: a tenant exists once it is written.
        store::write_json(&dir.join("tenant.json"), &config)?;
        let tenant = Arc::new(Tenant::new(config, Vec::new(), BTreeMap::new(), 0));
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), tenant.clone());
        Ok(self.view_tenant(&tenant))
    }

    /// Changes tenant `name`'s quotas or grants (running pipelines keep
    /// theirs until they are started again).
    pub fn change_tenant(&self, name: &str, change: TenantChange) -> Result<TenantView, ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let mut config = lock(&tenant.config).clone();
        config.quotas = merged_quotas(&config.quotas, change.quotas)?;
        if let Some(addresses) = change.allowed_addresses {
            config.allowed_addresses = addresses;
        }
        store::write_json(&self.store.tenant_dir(name).join("tenant.json"), &config)?;
        *lock(&tenant.config) = config;
        Ok(self.view_tenant(&tenant))
    }

    /// Removes tenant `name`: stops its pipelines, revokes its tokens,
    /// deletes its directory.
    pub fn delete_tenant(&self, name: &str) -> Result<(), ServerError> {
        let _admin = lock(&self.admin_ops);
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        tenant.removed.store(true, Ordering::Release);
        let handles: Vec<PipelineHandle> = lock(&tenant.pipelines)
            .values()
            .filter_map(|d| d.handle.clone())
            .collect();
        stop_all(&handles);
        for pipeline in lock(&tenant.pipelines).keys() {
            self.histograms.remove(name, pipeline);
        }
        {
            let mut index = self.token_index.write().unwrap_or_else(|e| e.into_inner());
            index.retain(|_, owner| owner != name);
        }
        self.tenants
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        // Renamed away first (one atomic step: a crash cannot leave half a
        // tenant that comes back), then removed.
        let dir = self.store.tenant_dir(name);
        let tombstone = self
            .store
            .tenants_dir()
            .join(format!(".removed-{name}-{}", now_ms()));
        std::fs::rename(&dir, &tombstone)
            .map_err(|e| ServerError::io(format!("cannot remove {}", dir.display()), e))?;
        if let Err(error) = std::fs::remove_dir_all(&tombstone) {
            tracing::warn!(%error, dir = %tombstone.display(), "cannot delete a removed tenant's files; the next start does");
        }
        let blobs: Vec<String> = lock(&tenant.plugins).values().map(|p| p.sha256.clone()).collect();
        for sha256 in blobs {
            self.release_blob(&sha256);
        }
        Ok(())
    }

    /// Every tenant.
    pub fn list_tenants(&self) -> Vec<TenantView> {
        self.tenant_names()
            .iter()
            .filter_map(|name| self.tenant(name).ok())
            .map(|tenant| self.view_tenant(&tenant))
            .collect()
    }

    /// Tenant `name`.
    pub fn get_tenant(&self, name: &str) -> Result<TenantView, ServerError> {
        Ok(self.view_tenant(&*self.tenant(name)?))
    }

    fn view_tenant(&self, tenant: &Tenant) -> TenantView {
        let pipelines = lock(&tenant.pipelines);
        let active: Vec<&Deployed> = pipelines.values().filter(|d| d.active()).collect();
        TenantView {
            config: lock(&tenant.config).clone(),
            pipelines: pipelines.len(),
            running: active.len(),
            disk_bytes: tenant.used_bytes(),
            footprint: active
                .iter()
                .fold(Footprint::default(), |sum, d| sum.plus(d.footprint)),
        }
    }

    // ----- tokens ---------------------------------------------------------

    /// Makes a token of `role` for tenant `name`; returns its record and
    /// the token, which is not kept.
    pub fn create_token(&self, name: &str, role: Role) -> Result<(TokenRecord, String), ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let (record, token) = auth::new_token(role, now_ms());
        let mut tokens = lock(&tenant.tokens).clone();
        tokens.push(record.clone());
        store::write_json(&self.store.tenant_dir(name).join("tokens.json"), &tokens)?;
        *lock(&tenant.tokens) = tokens;
        self.token_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(record.id.clone(), name.to_owned());
        Ok((record, token))
    }

    /// Tenant `name`'s tokens (ids and roles; never the tokens).
    pub fn list_tokens(&self, name: &str) -> Result<Vec<TokenRecord>, ServerError> {
        Ok(lock(&self.tenant(name)?.tokens).clone())
    }

    /// Revokes token `id` of tenant `name`: its next call is refused.
    pub fn revoke_token(&self, name: &str, id: &str) -> Result<(), ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let mut tokens = lock(&tenant.tokens).clone();
        let before = tokens.len();
        tokens.retain(|t| t.id != id);
        if tokens.len() == before {
            return Err(ServerError::NotFound(format!("no token `{id}`")));
        }
        // Out of the index first: from here on, the token is refused.
        self.token_index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        *lock(&tenant.tokens) = tokens.clone();
        store::write_json(&self.store.tenant_dir(name).join("tokens.json"), &tokens)
    }

    // ----- plugins --------------------------------------------------------

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
    /// or a pipeline's hot-loaded version or version history, still names it.
    pub(super) fn release_blob(&self, sha256: &str) {
        let _blobs = lock(&self.blobs);
        let used = self
            .tenants
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|tenant| {
                lock(&tenant.plugins).values().any(|p| p.sha256 == sha256)
                    || lock(&tenant.pipelines)
                        .values()
                        .any(|d| super::versions::names(&lock(&d.record), sha256))
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

    // ----- files ----------------------------------------------------------

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

    // ----- pipelines ------------------------------------------------------

    /// Parses `text` in the tenant's scope, checks it against the tenant's
    /// grants and quotas, and starts it.
    fn launch(
        &self,
        tenant: &Tenant,
        text: &str,
        shown: &str,
        kept: Option<&PipelineRecord>,
    ) -> Result<(PipelineHandle, Footprint), ServerError> {
        let (spec, footprint) = self.admit(tenant, text, shown)?;
        self.start_spec(tenant, spec, footprint, shown, kept)
    }

    fn start_spec(
        &self,
        tenant: &Tenant,
        spec: config::PipelineSpec,
        footprint: Footprint,
        shown: &str,
        kept: Option<&PipelineRecord>,
    ) -> Result<(PipelineHandle, Footprint), ServerError> {
        let config = lock(&tenant.config).clone();
        // A start after a hot-load runs the versions it pinned, and goes on
        // with their history.
        let (pins, history) = kept
            .map(|record| (record.pins.clone(), record.history.clone()))
            .unwrap_or_default();
        let mut prepared = self
            .engine
            .prepare_parsed(
                spec,
                Path::new(shown),
                Some(&self.store.tenant_spill(&tenant.name)),
            )
            .map_err(|error| ServerError::Invalid(error.to_string()))?
            .in_namespace(&tenant.name)
            .with_history(history);
        self.apply_pins(&mut prepared, &pins)?;
        let handle = self
            .engine
            .start(
                prepared,
                RunOptions {
                    weight: config.quotas.cpu_share.max(1),
                    ..RunOptions::default()
                },
            )
            .map_err(|error| ServerError::Conflict(error.to_string()))?;
        Ok((handle, footprint))
    }

    /// Parses `text` (named `shown` in errors) in the tenant's scope and
    /// checks it against the tenant's grants and quotas, counting its
    /// running pipelines but one of the same name (which it replaces).
    fn admit(
        &self,
        tenant: &Tenant,
        text: &str,
        shown: &str,
    ) -> Result<(config::PipelineSpec, Footprint), ServerError> {
        let root = self.store.tenant_root(&tenant.name);
        let catalog = lock(&tenant.plugins)
            .iter()
            .map(|(name, record)| (name.clone(), self.store.blob(&record.sha256)))
            .collect();
        let scope = Scope {
            paths: Paths::confined_to(&root),
            catalog: Some(catalog),
            checkpoints: Some(root.join("checkpoints")),
            // Kafka consumer groups and transactional ids are the tenant's own.
            ids_prefix: Some(format!("tenant-{}.", tenant.name)),
        };
        let mut spec = config::parse_in(text, Path::new(shown), &scope)
            .map_err(|error| ServerError::Invalid(error.to_string()))?;
        let config = lock(&tenant.config).clone();
        config.admit(&mut spec, shown)?;
        // A tenant has no other way to make the directories its files
        // sources watch: they are made here, inside its root.
        for source in &spec.sources {
            if let Some(files) = source.kind.settings::<crate::source::files::FilesSpec>() {
                files.dir.open(true).map_err(|e| {
                    ServerError::Invalid(format!(
                        "{shown}:{}: cannot make the directory of source `{}`: {e}",
                        source.line, source.name
                    ))
                })?;
            }
        }
        let footprint = Footprint::of(&spec);
        let others = tenant.running_footprint(Some(&spec.name));
        let total = others.plus(footprint);
        let q = &config.quotas;
        if total.instances > q.max_instances {
            return Err(ServerError::Quota(format!(
                "pipeline `{}` may hold {} plugin instances at worst (each plugin stage one per partition of the widest stage); with the tenant's running pipelines that is {}, above its quota of {}",
                spec.name, footprint.instances, total.instances, q.max_instances
            )));
        }
        if total.wasm_memory > q.max_wasm_memory {
            return Err(ServerError::Quota(format!(
                "pipeline `{}` may hold {} MiB of Wasm memory; with the tenant's running pipelines that is {} MiB, above its quota of {} MiB",
                spec.name,
                footprint.wasm_memory >> 20,
                total.wasm_memory >> 20,
                q.max_wasm_memory >> 20
            )));
        }
        Ok((spec, footprint))
    }

    /// Deploys `text` as one of tenant `name`'s pipelines and starts it;
    /// replaces a stopped pipeline of the same name.
    pub fn deploy(&self, name: &str, text: &str) -> Result<PipelineView, ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let started = std::time::Instant::now();
        let shown = "pipeline.toml";
        let (spec, footprint) = self.admit(&tenant, text, shown)?;
        let admitted = started.elapsed();
        let pipeline = spec.name.clone();
        {
            let pipelines = lock(&tenant.pipelines);
            match pipelines.get(&pipeline) {
                Some(existing) if existing.active() => {
                    return Err(ServerError::Conflict(format!(
                        "pipeline `{pipeline}` is running: stop it before deploying it again"
                    )));
                }
                Some(_) => {}
                None => {
                    let max = lock(&tenant.config).quotas.max_pipelines;
                    if pipelines.len() >= max {
                        return Err(ServerError::Quota(format!(
                            "this tenant has {} pipelines deployed, its quota: delete one before deploying `{pipeline}`",
                            pipelines.len()
                        )));
                    }
                }
            }
        }
        let (handle, footprint) = self.start_spec(&tenant, spec, footprint, shown, None)?;
        let launched = started.elapsed();
        let record = PipelineRecord {
            desired: Desired::Running,
            deployed_ms: now_ms(),
            file: text.to_owned(),
            pins: BTreeMap::new(),
            history: BTreeMap::new(),
        };
        let saved = store::write_json(
            &self.store.pipelines_dir(name).join(format!("{pipeline}.json")),
            &record,
        );
        if let Err(error) = saved {
            // Not on disk: not deployed.
            handle.stop(StopMode::Now);
            let _ = handle.wait();
            return Err(error);
        }
        tracing::debug!(
            tenant = %name, %pipeline,
            admit = ?admitted, start = ?(launched - admitted), persist = ?(started.elapsed() - launched),
            "deployed"
        );
        let deployed = Deployed {
            text: text.to_owned(),
            record: Arc::new(Mutex::new(record)),
            handle: Some(handle.clone()),
            failure: None,
            quota_paused: None,
            footprint,
            events: Arc::default(),
        };
        self.watch_events(&tenant, &handle, &deployed);
        let view = view_pipeline(&pipeline, &deployed);
        lock(&tenant.pipelines).insert(pipeline, deployed);
        Ok(view)
    }

    /// Follows `handle`'s events: keeps the recent ones for the API, feeds
    /// the delay histograms, and records automatic rollbacks in the
    /// pipeline's record (so a restart runs the version rolled back to).
    fn watch_events(&self, tenant: &Tenant, handle: &PipelineHandle, deployed: &Deployed) {
        let mut receiver = handle.subscribe();
        let events = deployed.events.clone();
        let histograms = self.histograms.series(&tenant.name, handle.name());
        let versions = super::versions::RecordKeeper::new(
            deployed.record.clone(),
            self.store
                .pipelines_dir(&tenant.name)
                .join(format!("{}.json", handle.name())),
            handle.clone(),
        );
        let (audit, tenant_name, pipeline) =
            (self.audit.clone(), tenant.name.clone(), handle.name().to_owned());
        self.runtime.spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match receiver.recv().await {
                    Ok(event) => {
                        if let PipelineEvent::BatchCompleted(report) = &event {
                            histograms.observe(report);
                        }
                        // Automatic rollbacks and promotions change what the
                        // pipeline runs: pinned, so a restart runs it too;
                        // the engine's own rollbacks are audited as its.
                        let changed = match &event {
                            PipelineEvent::PluginRolledBack {
                                stage,
                                plugin,
                                to,
                                reason,
                                ..
                            } => {
                                if !reason.contains("(by ") {
                                    audit.append(&AuditEntry {
                                        time_ms: now_ms(),
                                        who: "weir".into(),
                                        tenant: Some(tenant_name.clone()),
                                        action: format!(
                                            "automatic rollback of pipeline {pipeline} stage {stage}: {reason}"
                                        ),
                                        plugin_sha256: Some(to.clone()),
                                        result: "ok".into(),
                                    });
                                }
                                Some((stage.clone(), plugin.clone(), to.clone()))
                            }
                            PipelineEvent::PluginSwapped(report) if report.replaced_current() => {
                                Some((report.stage.clone(), report.plugin.clone(), report.to.clone()))
                            }
                            _ => None,
                        };
                        if let Some((stage, plugin, to)) = changed {
                            let versions = versions.clone();
                            // A small durable write, off the event loop.
                            let written =
                                tokio::task::spawn_blocking(move || versions.running(&stage, &plugin, &to))
                                    .await;
                            if let Ok(Err(error)) = written {
                                tracing::error!(%error, "cannot record a plugin version change");
                            }
                        }
                        let mut events = lock(&events);
                        if events.len() == RECENT_EVENTS {
                            events.pop_front();
                        }
                        events.push_back(event);
                    }
                    Err(RecvError::Lagged(_)) => {
                        let versions = versions.clone();
                        let resynced = tokio::task::spawn_blocking(move || versions.resync()).await;
                        if let Ok(Err(error)) = resynced {
                            tracing::error!(%error, "cannot record the plugin versions after missed events");
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    pub(super) fn with_pipeline<T>(
        &self,
        name: &str,
        pipeline: &str,
        f: impl FnOnce(&Arc<Tenant>, &mut Deployed) -> Result<T, ServerError>,
    ) -> Result<T, ServerError> {
        let tenant = self.tenant(name)?;
        let mut pipelines = lock(&tenant.pipelines);
        let deployed = pipelines
            .get_mut(pipeline)
            .ok_or_else(|| ServerError::NotFound(format!("no pipeline `{pipeline}`")))?;
        f(&tenant, deployed)
    }

    /// Tenant `name`'s pipelines.
    pub fn list_pipelines(&self, name: &str) -> Result<Vec<PipelineView>, ServerError> {
        let tenant = self.tenant(name)?;
        let pipelines = lock(&tenant.pipelines);
        Ok(pipelines.iter().map(|(name, d)| view_pipeline(name, d)).collect())
    }

    /// One pipeline's status.
    pub fn pipeline(&self, name: &str, pipeline: &str) -> Result<PipelineView, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| Ok(view_pipeline(pipeline, d)))
    }

    /// One pipeline's live metrics (none when it never started).
    pub fn pipeline_metrics(
        &self,
        name: &str,
        pipeline: &str,
    ) -> Result<Option<PipelineMetrics>, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| {
            Ok(d.handle.as_ref().map(PipelineHandle::metrics))
        })
    }

    /// One pipeline's last `limit` recent batches, oldest first (none when
    /// it never started).
    pub fn pipeline_batches(
        &self,
        name: &str,
        pipeline: &str,
        limit: usize,
    ) -> Result<Vec<BatchDetail>, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| {
            Ok(d.handle
                .as_ref()
                .map(|handle| handle.recent_batches(limit))
                .unwrap_or_default())
        })
    }

    /// One pipeline's last checkpoints this run, oldest first.
    pub fn pipeline_checkpoints(
        &self,
        name: &str,
        pipeline: &str,
    ) -> Result<Vec<CheckpointRecord>, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| {
            Ok(d.handle
                .as_ref()
                .map(PipelineHandle::checkpoints)
                .unwrap_or_default())
        })
    }

    /// One pipeline's recent events, oldest first.
    pub fn pipeline_events(&self, name: &str, pipeline: &str) -> Result<Vec<PipelineEvent>, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| {
            Ok(lock(&d.events).iter().cloned().collect())
        })
    }

    /// The deployed pipeline file.
    pub fn pipeline_file(&self, name: &str, pipeline: &str) -> Result<String, ServerError> {
        self.with_pipeline(name, pipeline, |_, d| Ok(d.text.clone()))
    }

    /// Records what the operator wants `pipeline` to be doing, on disk
    /// first. Callers hold the tenant's operation lock (the record changes
    /// nowhere else); the pipelines' lock is not held across the write.
    fn set_desired(&self, name: &str, pipeline: &str, desired: Desired) -> Result<(), ServerError> {
        let shared = self.with_pipeline(name, pipeline, |_, d| Ok(d.record.clone()))?;
        let mut record = lock(&shared);
        let mut changed = record.clone();
        changed.desired = desired;
        store::write_json(
            &self.store.pipelines_dir(name).join(format!("{pipeline}.json")),
            &changed,
        )?;
        *record = changed;
        Ok(())
    }

    /// Starts a stopped (or failed) pipeline again, from its checkpoint.
    pub fn start_pipeline(&self, name: &str, pipeline: &str) -> Result<PipelineView, ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let (text, kept) = self.with_pipeline(name, pipeline, |_, d| {
            if d.active() {
                return Err(ServerError::Conflict(format!("pipeline `{pipeline}` is running")));
            }
            Ok((d.text.clone(), lock(&d.record).clone()))
        })?;
        let shown = format!("pipelines/{pipeline}.toml");
        let launched = self.launch(&tenant, &text, &shown, Some(&kept));
        let (handle, footprint) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                self.with_pipeline(name, pipeline, |_, d| {
                    d.failure = Some(error.to_string());
                    Ok(())
                })?;
                return Err(error);
            }
        };
        if let Err(error) = self.set_desired(name, pipeline, Desired::Running) {
            // Not recorded: not started.
            handle.stop(StopMode::Now);
            let _ = handle.wait();
            return Err(error);
        }
        self.with_pipeline(name, pipeline, |tenant, d| {
            self.watch_events(tenant, &handle, d);
            d.handle = Some(handle);
            d.footprint = footprint;
            d.failure = None;
            d.quota_paused = None;
            Ok(view_pipeline(pipeline, d))
        })
    }

    /// Stops a pipeline gracefully (what its receivers queued is processed
    /// and checkpointed) and waits for its end.
    pub fn stop_pipeline(&self, name: &str, pipeline: &str) -> Result<PipelineView, ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        self.set_desired(name, pipeline, Desired::Stopped)?;
        let handle = self.with_pipeline(name, pipeline, |_, d| Ok(d.handle.clone()))?;
        if let Some(handle) = handle {
            stop_all(&[handle]);
        }
        self.pipeline(name, pipeline)
    }

    /// Pauses (or resumes) a running pipeline at its next batch boundary.
    pub fn pause_pipeline(
        &self,
        name: &str,
        pipeline: &str,
        pause: bool,
    ) -> Result<PipelineView, ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let handle = self.with_pipeline(name, pipeline, |_, d| {
            d.handle
                .clone()
                .filter(|h| !h.status().state.is_final())
                .ok_or_else(|| ServerError::Conflict(format!("pipeline `{pipeline}` is not running")))
        })?;
        let reply = if pause { handle.pause() } else { handle.resume() };
        reply.map_err(|error| ServerError::Conflict(error.to_string()))?;
        self.set_desired(
            name,
            pipeline,
            if pause { Desired::Paused } else { Desired::Running },
        )?;
        if !pause {
            self.with_pipeline(name, pipeline, |_, d| {
                d.quota_paused = None;
                Ok(())
            })?;
        }
        self.pipeline(name, pipeline)
    }

    /// Stops and removes a pipeline (its checkpoints and outputs stay in the
    /// tenant's root).
    pub fn delete_pipeline(&self, name: &str, pipeline: &str) -> Result<(), ServerError> {
        let tenant = self.tenant(name)?;
        let _ops = tenant.lock_ops()?;
        let handle = self.with_pipeline(name, pipeline, |_, d| Ok(d.handle.clone()))?;
        if let Some(handle) = handle {
            stop_all(&[handle]);
        }
        let dir = self.store.pipelines_dir(name);
        for file in [format!("{pipeline}.json")] {
            match std::fs::remove_file(dir.join(&file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ServerError::io(format!("cannot remove {file}"), e)),
            }
        }
        let removed = lock(&tenant.pipelines).remove(pipeline);
        self.histograms.remove(name, pipeline);
        // The versions its record named (pins, history) are kept no more,
        // unless an upload or another pipeline names them.
        if let Some(removed) = removed {
            let record = lock(&removed.record).clone();
            let named: std::collections::BTreeSet<String> = record
                .pins
                .values()
                .map(|pin| pin.sha256.clone())
                .chain(
                    record
                        .history
                        .values()
                        .flatten()
                        .map(|version| version.sha256.clone()),
                )
                .collect();
            for sha256 in named {
                self.release_blob(&sha256);
            }
        }
        Ok(())
    }

    // ----- quotas at run time and shutdown ---------------------------------

    /// Measures every tenant's disk use; pauses the pipelines of a tenant
    /// over its quota, resumes those it paused once it is under again.
    pub fn enforce_disk_quotas(&self) {
        for name in self.tenant_names() {
            let Ok(tenant) = self.tenant(&name) else { continue };
            let uploads: u64 = lock(&tenant.plugins).values().map(|p| p.bytes).sum();
            let files = store::disk_usage(&self.store.tenant_root(&name))
                + store::disk_usage(&self.store.tenant_spill(&name));
            tenant.disk_bytes.store(files, Ordering::Relaxed);
            let used = files + uploads;
            let max = lock(&tenant.config).quotas.max_disk_bytes;
            let mut pipelines = lock(&tenant.pipelines);
            for (pipeline, deployed) in pipelines.iter_mut() {
                let Some(handle) = deployed.handle.clone().filter(|h| !h.status().state.is_final()) else {
                    continue;
                };
                if used > max && deployed.quota_paused.is_none() {
                    let reason = format!(
                        "paused by the server: the tenant's files and uploads hold {used} bytes, above its disk quota of {max}; free space to resume"
                    );
                    tracing::warn!(tenant = %name, %pipeline, %reason);
                    deployed.quota_paused = Some(reason);
                    // Applied at the next batch boundary; do not wait here.
                    let _ = std::thread::Builder::new().spawn(move || handle.pause());
                } else if used <= max && deployed.quota_paused.is_some() {
                    deployed.quota_paused = None;
                    if lock(&deployed.record).desired == Desired::Running {
                        let _ = std::thread::Builder::new().spawn(move || handle.resume());
                    }
                }
            }
        }
    }

    /// Tenant `name`'s pipelines as the web UI lists them: each with its
    /// run (if started) and what its owner should know besides.
    pub fn ui_listings(&self, name: &str) -> Result<Vec<crate::ui::Listing>, ServerError> {
        let tenant = self.tenant(name)?;
        let pipelines = lock(&tenant.pipelines);
        Ok(pipelines
            .iter()
            .map(|(pipeline, deployed)| {
                let desired = lock(&deployed.record).desired;
                let note = deployed
                    .failure
                    .as_ref()
                    .map(|failure| format!("Could not start: {failure}"))
                    .or_else(|| {
                        deployed
                            .quota_paused
                            .as_ref()
                            .map(|why| format!("Paused by the server: {why}"))
                    })
                    .or_else(|| (desired == Desired::Stopped).then(|| "Stopped by its owner.".to_owned()));
                crate::ui::Listing {
                    tenant: Some(name.to_owned()),
                    name: pipeline.clone(),
                    handle: deployed.handle.clone(),
                    note,
                }
            })
            .collect())
    }

    /// Shares each tenant's CPU share among its running pipelines (see
    /// [`super::tenant::cpu_weight`]).
    pub fn rebalance_cpu(&self) {
        let tenants: Vec<(u32, Vec<PipelineHandle>)> = self
            .tenant_names()
            .iter()
            .filter_map(|name| self.tenant(name).ok())
            .map(|tenant| {
                let share = lock(&tenant.config).quotas.cpu_share;
                let running = lock(&tenant.pipelines)
                    .values()
                    .filter(|d| d.active())
                    .filter_map(|d| d.handle.clone())
                    .collect();
                (share, running)
            })
            .collect();
        let most = tenants
            .iter()
            .map(|(_, running)| running.len())
            .max()
            .unwrap_or(0);
        for (share, running) in tenants {
            let weight = super::tenant::cpu_weight(share, running.len(), most);
            for handle in running {
                handle.set_cpu_weight(weight);
            }
        }
    }

    /// Every pipeline handle, with its tenant.
    pub fn handles(&self) -> Vec<(String, PipelineHandle)> {
        let mut all = Vec::new();
        for name in self.tenant_names() {
            let Ok(tenant) = self.tenant(&name) else { continue };
            for deployed in lock(&tenant.pipelines).values() {
                if let Some(handle) = &deployed.handle {
                    all.push((name.clone(), handle.clone()));
                }
            }
        }
        all
    }

    /// What every tenant uses of its quotas, for `/metrics`.
    pub fn quota_use(&self) -> Vec<QuotaUse> {
        self.tenant_names()
            .into_iter()
            .filter_map(|name| {
                let tenant = self.tenant(&name).ok()?;
                let quotas = lock(&tenant.config).quotas.clone();
                // Counted alone: its lock is let go before the footprint's.
                let pipelines = lock(&tenant.pipelines).len();
                Some(QuotaUse {
                    pipelines,
                    running: tenant.running_footprint(None),
                    disk_bytes: tenant.used_bytes(),
                    tenant: name,
                    quotas,
                })
            })
            .collect()
    }

    /// Stops every pipeline gracefully and waits for them (their desired
    /// state stays: a restart brings them back).
    pub fn shutdown(&self) {
        let handles: Vec<PipelineHandle> = self.handles().into_iter().map(|(_, h)| h).collect();
        stop_all(&handles);
    }
}

/// `base` with the fields `change` (a JSON object) gives.
fn merged_quotas(base: &Quotas, change: Option<serde_json::Value>) -> Result<Quotas, ServerError> {
    let Some(change) = change else {
        return Ok(base.clone());
    };
    let serde_json::Value::Object(fields) = change else {
        return Err(ServerError::Invalid(
            "`quotas` must be an object of quota fields".into(),
        ));
    };
    let mut merged = serde_json::to_value(base).expect("quotas serialize");
    for (field, value) in fields {
        merged[field] = value;
    }
    serde_json::from_value(merged).map_err(|error| ServerError::Invalid(format!("invalid quotas: {error}")))
}

/// Asks every pipeline in `handles` to stop gracefully and waits for each
/// (up to [`STOP_WAIT`], then stops it at once).
fn stop_all(handles: &[PipelineHandle]) {
    for handle in handles {
        handle.stop(StopMode::Graceful);
    }
    for handle in handles {
        let deadline = std::time::Instant::now() + STOP_WAIT;
        while handle.outcome().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if handle.outcome().is_none() {
            handle.stop(StopMode::Now);
            let _ = handle.wait();
        }
    }
}

fn view_pipeline(name: &str, deployed: &Deployed) -> PipelineView {
    let status = deployed.handle.as_ref().map(|h| {
        let mut status = h.status();
        if status.state == PipelineState::Paused
            && let Some(reason) = &deployed.quota_paused
        {
            status.paused_because = Some(reason.clone());
        }
        status
    });
    let record = lock(&deployed.record);
    PipelineView {
        name: name.to_owned(),
        desired: record.desired,
        status,
        failure: deployed.failure.clone(),
        quota_paused: deployed.quota_paused.clone(),
        footprint: deployed.footprint,
        deployed_ms: record.deployed_ms,
        cpu_weight: deployed
            .handle
            .as_ref()
            .filter(|_| deployed.active())
            .and_then(PipelineHandle::cpu_weight),
    }
}
