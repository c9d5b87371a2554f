//! The server's state and what can be done to it: tenants, tokens, plugin
//! uploads and deployed pipelines, kept in memory and in the data
//! directory ([`super::store`]) together, so a restart finds what was there.
//!
//! Every call that changes a tenant holds that tenant's operation lock for
//! its whole length (one change at a time per tenant, calls on other
//! tenants go on); reads take only short locks. The calls block (a deploy
//! compiles plugins, a stop waits for the pipeline's end): the API runs
//! them on tokio's blocking threads.
//!
//! This module holds the state itself, its restore after a restart, and
//! who may do what (authentication, authorization, the audit log). What
//! can be done to it is split by subject:
//!
//! - [`tenants`]: tenants and their tokens;
//! - [`uploads`]: plugins and files a tenant uploads;
//! - [`pipelines`]: deploying and running a tenant's pipelines;
//! - [`upkeep`]: what the server does over all tenants while it runs
//!   (quotas enforced, CPU shares, views for the UI and `/metrics`,
//!   shutdown).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};

use super::ServerError;
use super::audit::{AuditEntry, AuditLog};
use super::auth::{self, Principal, Role, TokenRecord};
use super::metrics::DelayHistograms;
use super::store::{self, Store};
use super::tenant::{Footprint, Quotas, TenantConfig};
use crate::engine::{Engine, PipelineHandle};
use crate::pipeline::{PipelineEvent, PipelineStatus};
use crate::source::now_ms;

mod pipelines;
mod tenants;
mod upkeep;
mod uploads;

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
}
