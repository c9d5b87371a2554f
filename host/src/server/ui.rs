//! The web UI of a server (`/ui`): a [`Directory`] of the tenants'
//! pipelines behind the API's tokens and roles. A tenant's token sees its
//! own pipelines only; the admin's sees every tenant's, with their quota
//! use. Changes made from the UI go through the same calls as the API's
//! (the desired state is kept, so a restart honours it) and are audited.

use std::sync::Arc;

use super::ServerError;
use super::auth::{Principal, Role};
use super::state::ServerState;
use crate::ui::{Action, Directory, Listing, TenantRow, Viewer};

/// The server's pipelines, as its UI shows them.
#[derive(Debug, Clone)]
pub struct ServerDirectory {
    state: Arc<ServerState>,
}

impl ServerDirectory {
    /// The pipelines of `state`'s tenants.
    pub fn new(state: Arc<ServerState>) -> Self {
        Self { state }
    }

    fn principal(&self, viewer: &Viewer) -> Option<Principal> {
        self.state.authenticate(viewer.token.as_deref()?)
    }
}

impl Directory for ServerDirectory {
    fn pipelines(&self, viewer: &Viewer) -> Vec<Listing> {
        let tenants = match &viewer.tenant {
            Some(tenant) => vec![tenant.clone()],
            None if viewer.admin => self
                .state
                .list_tenants()
                .into_iter()
                .map(|t| t.config.name)
                .collect(),
            None => Vec::new(),
        };
        tenants
            .iter()
            .flat_map(|tenant| self.state.ui_listings(tenant).unwrap_or_default())
            .collect()
    }

    fn viewer(&self, token: Option<&str>) -> Option<Viewer> {
        let token = token?;
        let viewer = match self.state.authenticate(token)? {
            Principal::Admin => Viewer {
                name: "admin".into(),
                tenant: None,
                admin: true,
                may_operate: true,
                token: Some(token.to_owned()),
            },
            Principal::Tenant { tenant, role, .. } => Viewer {
                name: format!(
                    "{tenant} ({})",
                    match role {
                        Role::Operator => "operator",
                        Role::Viewer => "viewer",
                    }
                ),
                tenant: Some(tenant),
                admin: false,
                may_operate: role == Role::Operator,
                token: Some(token.to_owned()),
            },
        };
        Some(viewer)
    }

    fn control(&self, viewer: &Viewer, listing: &Listing, action: &Action) -> Result<(), String> {
        let principal = self
            .principal(viewer)
            .ok_or_else(|| "the token is no longer valid: log in again".to_owned())?;
        let tenant = listing
            .tenant
            .clone()
            .ok_or_else(|| "a server's pipeline has a tenant".to_owned())?;
        let pipeline = &listing.name;
        let result = self
            .state
            .authorize(&principal, &tenant, true)
            .and_then(|()| match action {
                Action::Pause => self.state.pause_pipeline(&tenant, pipeline, true).map(drop),
                Action::Resume => self.state.pause_pipeline(&tenant, pipeline, false).map(drop),
                Action::Stop => self.state.stop_pipeline(&tenant, pipeline).map(drop),
                Action::RollBack { stage, plugin } => self
                    .state
                    .roll_back(
                        &tenant,
                        pipeline,
                        stage,
                        super::versions::RollbackBody {
                            plugin: plugin.clone(),
                            to: None,
                        },
                        principal.who(),
                    )
                    .map(drop),
            });
        let what = format!("{} pipeline {pipeline} (web UI)", action.describe());
        self.state.audit(&principal, Some(&tenant), &what, None, &result);
        result.map_err(|error: ServerError| error.to_string())
    }

    fn tenants(&self, viewer: &Viewer) -> Vec<TenantRow> {
        if !viewer.admin {
            return Vec::new();
        }
        self.state
            .list_tenants()
            .into_iter()
            .map(|tenant| {
                let quotas = &tenant.config.quotas;
                TenantRow {
                    name: tenant.config.name.clone(),
                    pipelines: tenant.pipelines,
                    running: tenant.running,
                    disk: (tenant.disk_bytes, quotas.max_disk_bytes),
                    instances: (tenant.footprint.instances as u64, quotas.max_instances as u64),
                    wasm_memory: (tenant.footprint.wasm_memory, quotas.max_wasm_memory),
                }
            })
            .collect()
    }
}
