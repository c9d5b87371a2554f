//! A tenant's deployed pipelines: admission (its grants and quotas), deploy,
//! start, stop, pause, delete, their views for the API, and the task that
//! follows each pipeline's events.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Deployed, Desired, PipelineRecord, PipelineView, ServerState, Tenant, lock};
use crate::config::{self, Paths, Scope};
use crate::engine::PipelineHandle;
use crate::pipeline::{
    BatchDetail, CheckpointRecord, PipelineEvent, PipelineMetrics, PipelineState, RunOptions, StopMode,
};
use crate::server::audit::AuditEntry;
use crate::server::tenant::Footprint;
use crate::server::{ServerError, store, versions};
use crate::source::now_ms;

/// Events kept per pipeline for `GET .../events`.
const RECENT_EVENTS: usize = 200;

/// How long a stop waits for the pipeline to drain and end.
const STOP_WAIT: Duration = Duration::from_secs(60);

impl ServerState {
    /// Parses `text` in the tenant's scope, checks it against the tenant's
    /// grants and quotas, and starts it.
    pub(super) fn launch(
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
        let replaced = lock(&tenant.pipelines).insert(pipeline, deployed);
        // A stopped pipeline deployed over: what its record kept goes.
        if let Some(replaced) = replaced {
            self.release_versions(&replaced);
        }
        Ok(view)
    }

    /// Follows `handle`'s events: keeps the recent ones for the API, feeds
    /// the delay histograms, and records automatic rollbacks in the
    /// pipeline's record (so a restart runs the version rolled back to).
    pub(super) fn watch_events(&self, tenant: &Arc<Tenant>, handle: &PipelineHandle, deployed: &Deployed) {
        let mut receiver = handle.subscribe();
        let events = deployed.events.clone();
        let histograms = self.histograms.series(&tenant.name, handle.name());
        let versions = versions::RecordKeeper::new(
            deployed.record.clone(),
            self.store
                .pipelines_dir(&tenant.name)
                .join(format!("{}.json", handle.name())),
            handle.clone(),
        );
        let (audit, tenant_name, pipeline) =
            (self.audit.clone(), tenant.name.clone(), handle.name().to_owned());
        // The task ends with the run: its last event is the final state (the
        // channel never closes, since the task holds a handle of the run).
        let run = handle.clone();
        let (tenant, record) = (tenant.clone(), deployed.record.clone());
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
                            let (versions, run, tenant, record, pipeline) = (
                                versions.clone(),
                                run.clone(),
                                tenant.clone(),
                                record.clone(),
                                pipeline.clone(),
                            );
                            // A small durable write, off the event loop, as
                            // one change of the tenant's: not over a change
                            // the API made since (it pins what runs now, not
                            // what the event said), nor after the pipeline
                            // was deleted or deployed again.
                            let written = tokio::task::spawn_blocking(move || {
                                let Ok(_ops) = tenant.lock_ops() else {
                                    return Ok(());
                                };
                                let current = lock(&tenant.pipelines)
                                    .get(&pipeline)
                                    .is_some_and(|d| Arc::ptr_eq(&d.record, &record));
                                if !current {
                                    return Ok(());
                                }
                                let runs_now = run
                                    .status()
                                    .plugins
                                    .into_iter()
                                    .find(|p| p.stage == stage && p.plugin == plugin)
                                    .map_or(to, |p| p.sha256);
                                versions.running(&stage, &plugin, &runs_now)
                            })
                            .await;
                            if let Ok(Err(error)) = written {
                                tracing::error!(%error, "cannot record a plugin version change");
                            }
                        }
                        let ended = matches!(&event, PipelineEvent::StatusChanged { state } if state.is_final());
                        {
                            let mut events = lock(&events);
                            if events.len() == RECENT_EVENTS {
                                events.pop_front();
                            }
                            events.push_back(event);
                        }
                        if ended {
                            break;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let versions = versions.clone();
                        let resynced = tokio::task::spawn_blocking(move || versions.resync()).await;
                        if let Ok(Err(error)) = resynced {
                            tracing::error!(%error, "cannot record the plugin versions after missed events");
                        }
                        // The final state may have been among the missed events.
                        if run.status().state.is_final() && receiver.is_empty() {
                            break;
                        }
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    pub(in crate::server) fn with_pipeline<T>(
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
        if let Some(removed) = removed {
            self.release_versions(&removed);
        }
        Ok(())
    }

    /// The versions `deployed`'s record named (pins, history), kept no
    /// more unless an upload or another pipeline names them. Called once
    /// it is out of its tenant's pipelines.
    pub(super) fn release_versions(&self, deployed: &Deployed) {
        let record = lock(&deployed.record).clone();
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
}

/// Asks every pipeline in `handles` to stop gracefully and waits for each
/// (up to [`STOP_WAIT`], then stops it at once).
pub(super) fn stop_all(handles: &[PipelineHandle]) {
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
