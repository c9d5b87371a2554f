//! Tenants and their tokens: create, change and remove a tenant (its
//! quotas over the server's defaults, its granted addresses), and make,
//! list and revoke its API tokens.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::pipelines::stop_all;
use super::{Deployed, PluginRecord, ServerState, Tenant, TenantChange, TenantView, lock};
use crate::config::check_name;
use crate::engine::PipelineHandle;
use crate::server::ServerError;
use crate::server::auth::{self, Role, TokenRecord};
use crate::server::store;
use crate::server::tenant::{Footprint, Quotas, TenantConfig};
use crate::source::now_ms;

impl ServerState {
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
        for deployed in lock(&tenant.pipelines).values() {
            self.release_versions(deployed);
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
