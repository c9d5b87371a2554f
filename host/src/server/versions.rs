//! Hot-load on the server: a tenant swaps a running pipeline's stage to
//! another version of its plugin (one of its uploads), rolls it back, and
//! reads each stage plugin's version history.
//!
//! What a pipeline runs survives restarts: each swap, rollback (asked for
//! or automatic) **pins** the version in the pipeline's record, which a
//! start runs instead of the pipeline file's, and the record keeps each
//! stage plugin's last versions. A component a pin or a history entry
//! names is kept in the server's blob store even after the upload that
//! brought it is replaced, so a rollback to it works later.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::ServerError;
use super::state::{PipelineRecord, ServerState};
use super::store;
use crate::engine::{PipelineHandle, Prepared, SwapRequest};
use crate::pipeline::swap::slot_key;
use crate::pipeline::{ControlReply, RollbackRule, Rollout, SwapReport, VersionRecord};

/// A version a stage's plugin is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// Hex SHA-256 of the component (in the server's blob store).
    pub sha256: String,
    /// Its configuration, when the swap changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Vec<(String, String)>>,
}

/// The body of `POST .../pipelines/{pipeline}/stages/{stage}/swap`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SwapBody {
    /// The plugin within the stage (its name in the pipeline file), when
    /// the stage runs several.
    #[serde(default)]
    pub plugin: Option<String>,
    /// The new version: one of the tenant's uploads, by name...
    #[serde(default)]
    pub upload: Option<String>,
    /// ... or by SHA-256: an upload's, or a version in the stage's history.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A new configuration for it; absent: the current one.
    #[serde(default)]
    pub config: Option<BTreeMap<String, String>>,
    /// Its probation, and when it is rolled back by itself.
    #[serde(default)]
    pub rollback: RollbackRule,
    /// `"immediate"` (the default), `{"shadow": {"promote-after": N,
    /// "max-slower-percent": X}}` or `{"canary": {"percent": P,
    /// "promote-after": N, "max-failures": F}}`.
    #[serde(default)]
    pub mode: Rollout,
}

/// The body of `POST .../pipelines/{pipeline}/stages/{stage}/rollback`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RollbackBody {
    /// The plugin within the stage, when it runs several.
    #[serde(default)]
    pub plugin: Option<String>,
    /// A version of the stage's history to return to; absent: the one
    /// before the version on probation.
    #[serde(default)]
    pub to: Option<String>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    /// The stage.
    pub stage: String,
    /// Hex SHA-256 of the version given up.
    pub from: String,
    /// Hex SHA-256 of the version running now.
    pub to: String,
}

/// True when `record` pins `sha256` or names it in a history.
pub(super) fn names(record: &PipelineRecord, sha256: &str) -> bool {
    record.pins.values().any(|pin| pin.sha256 == sha256)
        || record
            .history
            .values()
            .flatten()
            .any(|version| version.sha256 == sha256)
}

/// True when the run of `handle`, if it has not ended, runs `sha256` in a
/// stage or has it in a stage's version history.
pub(super) fn runs(handle: &PipelineHandle, sha256: &str) -> bool {
    let status = handle.status();
    !status.state.is_final()
        && (status.plugins.iter().any(|plugin| plugin.sha256 == sha256)
            || handle
                .plugin_history()
                .values()
                .flatten()
                .any(|version| version.sha256 == sha256))
}

/// Writes a pipeline's version changes into its record: what the API's
/// swaps and rollbacks and the event task's automatic rollbacks share.
#[derive(Clone)]
pub(super) struct RecordKeeper {
    record: Arc<Mutex<PipelineRecord>>,
    path: PathBuf,
    handle: PipelineHandle,
}

impl RecordKeeper {
    /// Keeps `record` (the file `path`) for the running `handle`.
    pub(super) fn new(record: Arc<Mutex<PipelineRecord>>, path: PathBuf, handle: PipelineHandle) -> Self {
        Self { record, path, handle }
    }

    /// Records durably that `key` (`stage/plugin`) now runs `pin`, with the
    /// running pipeline's version history.
    fn pin(&self, key: &str, pin: Pin) -> Result<(), ServerError> {
        self.set_pin(key, Some(pin))
    }

    /// The pin of `key`, if it has one.
    fn pinned(&self, key: &str) -> Option<Pin> {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pins
            .get(key)
            .cloned()
    }

    /// Records durably that `key` runs `pin` (`None`: the pipeline file's
    /// version), with the running pipeline's version history.
    fn set_pin(&self, key: &str, pin: Option<Pin>) -> Result<(), ServerError> {
        let history = self.handle.plugin_history();
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = record.clone();
        match pin {
            Some(pin) => changed.pins.insert(key.to_owned(), pin),
            None => changed.pins.remove(key),
        };
        changed.history = history;
        store::write_json(&self.path, &changed)?;
        *record = changed;
        Ok(())
    }

    /// Pins what each stage plugin runs now where the record says
    /// otherwise: after the event task missed events (it lagged), so an
    /// automatic rollback or promotion it did not see is pinned too.
    pub(super) fn resync(&self) -> Result<(), ServerError> {
        let history = self.handle.plugin_history();
        for plugin in self.handle.status().plugins {
            let key = slot_key(&plugin.stage, &plugin.plugin);
            let swapped = history.get(&key).is_some_and(|versions| versions.len() > 1);
            match self.pinned(&key) {
                Some(pin) if pin.sha256 == plugin.sha256 => {}
                None if !swapped => {}
                _ => self.running(&plugin.stage, &plugin.plugin, &plugin.sha256)?,
            }
        }
        Ok(())
    }

    /// The `stage/plugin` key a request for `plugin` (or the stage's only
    /// plugin) of `stage` means, if the pipeline runs it.
    fn slot_key(&self, stage: &str, plugin: Option<&str>) -> Option<String> {
        let plugins = self.handle.status().plugins;
        let mut in_stage = plugins
            .iter()
            .filter(|p| p.stage == stage && plugin.is_none_or(|name| name == p.plugin));
        let found = in_stage.next()?;
        in_stage.next().is_none().then(|| slot_key(stage, &found.plugin))
    }

    /// Records durably the running pipeline's version history (a candidate
    /// in shadow or a canary is in it, so its component stays in the blob
    /// store until it is promoted or given up, even if its upload is replaced).
    fn keep_history(&self) -> Result<(), ServerError> {
        let history = self.handle.plugin_history();
        let mut record = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = record.clone();
        changed.history = history;
        store::write_json(&self.path, &changed)?;
        *record = changed;
        Ok(())
    }

    /// Records that `plugin` of `stage` runs `to` now (an automatic
    /// rollback, a promotion), with the configuration its history gives it.
    pub(super) fn running(&self, stage: &str, plugin: &str, to: &str) -> Result<(), ServerError> {
        let key = slot_key(stage, plugin);
        let config = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .history
            .get(&key)
            .and_then(|versions| versions.iter().rev().find(|v| v.sha256 == to))
            .map(|version| version.config.clone());
        let config = config.or_else(|| {
            self.handle
                .plugin_history()
                .get(&key)
                .and_then(|versions| versions.iter().rev().find(|v| v.sha256 == to))
                .map(|version| version.config.clone())
        });
        self.pin(
            &key,
            Pin {
                sha256: to.to_owned(),
                config,
            },
        )
    }

    /// The history, by `stage/plugin`: the running pipeline's (which
    /// started from the kept one).
    fn history(&self) -> BTreeMap<String, Vec<VersionRecord>> {
        self.handle.plugin_history()
    }
}

impl ServerState {
    /// Starts the stages of `prepared` on the versions `pins` name.
    pub(super) fn apply_pins(
        &self,
        prepared: &mut Prepared,
        pins: &BTreeMap<String, Pin>,
    ) -> Result<(), ServerError> {
        for (key, pin) in pins {
            let (stage, plugin) = key.split_once('/').unwrap_or((key, ""));
            let path = self.store().blob(&pin.sha256);
            let component = std::fs::read(&path).map_err(|e| {
                ServerError::io(
                    format!("cannot read the pinned version {} of `{key}`", pin.sha256),
                    e,
                )
            })?;
            self.engine()
                .pin_plugin(
                    prepared,
                    stage,
                    plugin,
                    &component,
                    // The blob it was read from: the run keeps the
                    // component in its checkpoint directory from there, so
                    // a later replay of batches it processed finds it.
                    &path,
                    pin.config.clone(),
                )
                .map_err(|error| ServerError::Invalid(error.to_string()))?;
        }
        Ok(())
    }

    /// The running pipeline's handle and its record keeper.
    fn running(&self, tenant: &str, pipeline: &str) -> Result<RecordKeeper, ServerError> {
        self.with_pipeline(tenant, pipeline, |_, deployed| {
            let handle = deployed
                .handle
                .clone()
                .filter(|handle| !handle.status().state.is_final())
                .ok_or_else(|| ServerError::Conflict(format!("pipeline `{pipeline}` is not running")))?;
            Ok(RecordKeeper::new(
                deployed.record.clone(),
                self.store()
                    .pipelines_dir(tenant)
                    .join(format!("{pipeline}.json")),
                handle,
            ))
        })
    }

    /// The component a swap asks for: an upload by name, or a version by
    /// SHA-256 that the tenant uploaded or that the stage ran.
    fn component(
        &self,
        tenant: &str,
        keeper: &RecordKeeper,
        body: &SwapBody,
    ) -> Result<(String, Vec<u8>), ServerError> {
        let uploads = self.list_plugins(tenant)?;
        let sha256 = match (&body.upload, &body.sha256) {
            (Some(name), None) => uploads
                .get(name)
                .map(|record| record.sha256.clone())
                .ok_or_else(|| ServerError::NotFound(format!("no plugin `{name}` uploaded")))?,
            (None, Some(sha256)) => {
                let known = uploads.values().any(|record| record.sha256 == *sha256)
                    || keeper.history().values().flatten().any(|v| v.sha256 == *sha256);
                if !known {
                    return Err(ServerError::NotFound(format!(
                        "no version {sha256} among the tenant's uploads or the pipeline's history"
                    )));
                }
                sha256.clone()
            }
            _ => {
                return Err(ServerError::Invalid(
                    "name the new version with exactly one of `upload` or `sha256`".into(),
                ));
            }
        };
        let component = std::fs::read(self.store().blob(&sha256))
            .map_err(|e| ServerError::io(format!("cannot read the component {sha256}"), e))?;
        Ok((sha256, component))
    }

    /// Hot-loads a version of `stage`'s plugin into a running pipeline and
    /// pins it. `by` names the caller in the history.
    pub fn swap(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        body: SwapBody,
        by: String,
    ) -> Result<SwapReport, ServerError> {
        let owner = self.tenant(tenant)?;
        // One change of the tenant's at a time: a delete or redeploy of the
        // pipeline cannot interleave with the record written here.
        let _ops = owner.lock_ops()?;
        self.swap_locked(tenant, pipeline, stage, body, by)
    }

    /// [`Self::swap`], with the tenant's operations lock held.
    fn swap_locked(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        body: SwapBody,
        by: String,
    ) -> Result<SwapReport, ServerError> {
        let keeper = self.running(tenant, pipeline)?;
        let (sha256, component) = self.component(tenant, &keeper, &body)?;
        let config = body.config.map(|config| config.into_iter().collect::<Vec<_>>());
        // An immediate swap is pinned before it is made (and the pin put
        // back if it is refused): a kill -9 between its cut-over and a pin
        // written after it would restart the pipeline on the old version,
        // which may not read the states the swap converted. The restart
        // then swaps the pinned version in after its replay instead.
        let planned = match body.mode {
            Rollout::Immediate => keeper.slot_key(stage, body.plugin.as_deref()),
            _ => None,
        };
        let before = planned.as_ref().map(|key| keeper.pinned(key));
        if let Some(key) = &planned {
            let kept = before.clone().flatten().and_then(|pin| pin.config);
            keeper.pin(
                key,
                Pin {
                    sha256: sha256.clone(),
                    config: config.clone().or(kept),
                },
            )?;
        }
        let swapped = keeper.handle.swap(SwapRequest {
            stage: stage.to_owned(),
            plugin: body.plugin,
            component,
            path: PathBuf::from(format!("{sha256}.wasm")),
            config: config.clone(),
            rule: body.rollback,
            mode: body.mode,
            by: Some(by),
        });
        let report = match swapped {
            Ok(report) => report,
            Err(error) => {
                if let (Some(key), Some(before)) = (&planned, before) {
                    keeper.set_pin(key, before)?;
                }
                return Err(ServerError::Refused(error.to_string()));
            }
        };
        if !report.replaced_current() {
            // The current version goes on (beside a shadow or a canary); a
            // promotion pins the candidate.
            keeper.keep_history()?;
            return Ok(report);
        }
        let key = slot_key(&report.stage, &report.plugin);
        let config = config.or_else(|| {
            keeper
                .record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pins
                .get(&key)
                .and_then(|pin| pin.config.clone())
        });
        keeper.pin(
            &key,
            Pin {
                sha256: report.to.clone(),
                config,
            },
        )?;
        Ok(report)
    }

    /// Rolls `stage`'s plugin back: to the version before the one on
    /// probation, or (with `to`) to a version of its history, swapped in
    /// like any other (without probation).
    pub fn roll_back(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        body: RollbackBody,
        by: String,
    ) -> Result<RollbackReport, ServerError> {
        let owner = self.tenant(tenant)?;
        let _ops = owner.lock_ops()?;
        if let Some(to) = body.to {
            let report = self.swap_locked(
                tenant,
                pipeline,
                stage,
                SwapBody {
                    plugin: body.plugin,
                    upload: None,
                    sha256: Some(to),
                    config: None,
                    rollback: RollbackRule {
                        batches: 0,
                        max_failures: 0,
                    },
                    mode: Rollout::Immediate,
                },
                by,
            )?;
            return Ok(RollbackReport {
                stage: report.stage,
                from: report.from,
                to: report.to,
            });
        }
        let keeper = self.running(tenant, pipeline)?;
        let reply = keeper
            .handle
            .roll_back(stage, body.plugin.as_deref(), Some(by))
            .map_err(|error| ServerError::Refused(error.to_string()))?;
        let ControlReply::RolledBack { from, to } = reply else {
            return Err(ServerError::Internal(format!(
                "unexpected reply to a rollback: {reply:?}"
            )));
        };
        let plugins = keeper.handle.status().plugins;
        let in_stage = || plugins.iter().filter(|p| p.stage == stage);
        let plugin = in_stage()
            .find(|p| p.sha256 == to && body.plugin.as_ref().is_none_or(|name| *name == p.plugin))
            .or_else(|| in_stage().find(|p| body.plugin.as_ref().is_none_or(|name| *name == p.plugin)))
            .map(|p| p.plugin.clone())
            .ok_or_else(|| {
                ServerError::Internal(format!("stage `{stage}` runs no plugin after its rollback"))
            })?;
        keeper.running(stage, &plugin, &to)?;
        Ok(RollbackReport {
            stage: stage.to_owned(),
            from,
            to,
        })
    }

    /// Promotes `stage`'s candidate in shadow (it is swapped in) and pins it.
    pub fn promote(
        &self,
        tenant: &str,
        pipeline: &str,
        stage: &str,
        body: RollbackBody,
        by: String,
    ) -> Result<SwapReport, ServerError> {
        if body.to.is_some() {
            return Err(ServerError::Invalid("a promotion takes no `to`".into()));
        }
        let owner = self.tenant(tenant)?;
        let _ops = owner.lock_ops()?;
        let keeper = self.running(tenant, pipeline)?;
        let report = keeper
            .handle
            .promote(stage, body.plugin.as_deref(), Some(by))
            .map_err(|error| ServerError::Refused(error.to_string()))?;
        keeper.running(&report.stage, &report.plugin, &report.to)?;
        Ok(report)
    }

    /// Each stage plugin's last versions (`stage/plugin`, oldest first),
    /// over restarts.
    pub fn plugin_history(
        &self,
        tenant: &str,
        pipeline: &str,
    ) -> Result<BTreeMap<String, Vec<VersionRecord>>, ServerError> {
        self.with_pipeline(tenant, pipeline, |_, deployed| {
            Ok(match &deployed.handle {
                Some(handle) => {
                    RecordKeeper::new(deployed.record.clone(), PathBuf::new(), handle.clone()).history()
                }
                None => deployed
                    .record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .history
                    .clone(),
            })
        })
    }
}
