//! What the server does over all tenants while it runs: disk quotas
//! measured and enforced, CPU shares rebalanced, the views of every
//! pipeline for the UI and `/metrics`, and the shutdown.

use std::sync::atomic::Ordering;

use super::pipelines::stop_all;
use super::{Desired, ServerState, lock};
use crate::engine::PipelineHandle;
use crate::server::tenant::{QuotaUse, cpu_weight};
use crate::server::{ServerError, store};

impl ServerState {
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
    /// [`cpu_weight`]).
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
            let weight = cpu_weight(share, running.len(), most);
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
