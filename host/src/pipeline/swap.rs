//! Hot-load: a new version of a stage's plugin swapped in while the pipeline
//! runs, between two batches, with its state kept (the host owns it).
//!
//! A [`SwapOrder`] (a compiled candidate and how to roll it out) reaches the
//! driver through the control channel, and the driver's `Swaps::swap` applies it at the
//! next batch boundary:
//!
//! 1. The candidate is checked for every slot of the stage's plugin
//!    ([`BindingSlot::check`]): the same kind as the version it replaces, its
//!    `init` accepts the configuration, and a dry run on a sample of the
//!    stage's recent input succeeds, in an instance of its own under the
//!    stage's limits. A failure refuses the swap; nothing changed.
//! 2. With a checkpoint directory, the component is kept in it (under
//!    `plugins/`), and every batch logged from then on names the version
//!    that processed it, so a replay after a crash runs each batch with the
//!    version that processed it. A checkpoint is taken at the swap.
//! 3. The slots are switched; workers drop the old instances at their next
//!    call or sweep. The new version is on probation for the rollout's
//!    number of batches: a call of it that fails is processed again by the
//!    previous version ([`crate::operator::guard`]), and when its failures
//!    pass the [`RollbackRule`]'s threshold (or the stage's failure rate
//!    before the swap) the stage returns to the previous version after the
//!    batch (`Swaps::after_batch`).
//!
//! A candidate can instead run beside the current version: in **shadow**
//! (same input, output compared and dropped) or as a **canary** (a share of
//! the keys, hashed, output delivered), until it is promoted or given up.
//! A candidate whose state version differs has its states converted by its
//! `migrate-state` before the cut-over ([`crate::operator::Operator::migrate_state`]).
//!
//! Each stage plugin's last [`HISTORY`] versions, with who asked, when and
//! how each ended, are published in the pipeline's status.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::durability::Durability;
use super::live::Live;
use super::plan::Plan;
use crate::checkpoint::{LoggedCanary, LoggedVersion};
use crate::error::EngineError;
use crate::operator::binding::{Binding, PluginConfig};
use crate::operator::{BindingSlot, MigrationError};
use crate::runtime::{Plugin, Runtime};

/// Versions kept in each stage plugin's history.
pub const HISTORY: usize = 20;

/// Batches a new version is on probation for, unless the request says.
pub const DEFAULT_PROBATION_BATCHES: u64 = 10;

/// The key of a stage's plugin in histories, batch logs and checkpoints.
pub fn slot_key(stage: &str, plugin: &str) -> String {
    format!("{stage}/{plugin}")
}

/// When a new version returns to the previous one by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RollbackRule {
    /// Batches the new version is on probation for; 0: none (no automatic
    /// rollback, and its failures are handled by the stage's policy at once).
    #[serde(default = "default_probation")]
    pub batches: u64,
    /// Failed calls it may have during its probation. The threshold is the
    /// larger of this and the failures the previous version had over as
    /// many batches (its failure rate before the swap).
    #[serde(default)]
    pub max_failures: u64,
}

fn default_probation() -> u64 {
    DEFAULT_PROBATION_BATCHES
}

impl Default for RollbackRule {
    fn default() -> Self {
        Self {
            batches: DEFAULT_PROBATION_BATCHES,
            max_failures: 0,
        }
    }
}

/// A new version for a stage's plugin, compiled for the engine the stage
/// runs on, and how to roll it out.
#[derive(Debug, Clone)]
pub struct SwapOrder {
    /// The stage.
    pub stage: String,
    /// The plugin within the stage (its name in the pipeline file), when
    /// the stage has several (a window with a reducer and an inverse).
    pub plugin: Option<String>,
    /// The new version.
    pub candidate: Arc<Plugin>,
    /// Its component, kept in the checkpoint directory for replays.
    pub bytes: Arc<[u8]>,
    /// A new configuration for it; `None` keeps the current one.
    pub config: Option<Vec<(String, String)>>,
    /// Its probation.
    pub rule: RollbackRule,
    /// How it is rolled out.
    pub mode: Rollout,
    /// Who asked (a user or token name), for the history.
    pub by: Option<String>,
}

/// How a new version is rolled out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Rollout {
    /// It replaces the current version from the next batch on.
    #[default]
    Immediate,
    /// It runs beside the current version on the same input; its output is
    /// compared with the current one's and not delivered, until it is
    /// promoted (by hand, or by the rule) or given up.
    Shadow(ShadowRule),
    /// It takes a share of the keys (by a hash of the key, so each key and
    /// its state stay with one version) while the current version keeps
    /// the others, until it is promoted (by hand, or by the rule) or given
    /// up (by hand, or when it fails more than the rule allows).
    Canary(CanaryRule),
}

/// A canary's share of the keys, and when it ends by itself.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct CanaryRule {
    /// The share of the keys it gets, in percent (more than 0, less than
    /// 100; to a hundredth of a percent).
    pub percent: f64,
    /// Promote it after this many batches in a row in which none of its
    /// calls failed; `None`: only by hand.
    #[serde(default)]
    pub promote_after: Option<u64>,
    /// Give it up once more of its calls than this have failed (a failed
    /// call's records are processed again by the current version).
    #[serde(default)]
    pub max_failures: u64,
}

impl CanaryRule {
    /// The ten-thousandths of the key range it gets, or why `percent` is out of range.
    fn share(&self) -> Result<u64, String> {
        let share = (self.percent * 100.0).round();
        if !(1.0..=9_999.0).contains(&share) {
            return Err(format!(
                "a canary's percent is more than 0 and less than 100 (to a hundredth), not {}",
                self.percent
            ));
        }
        Ok(share as u64)
    }
}

/// When a version in shadow is promoted by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ShadowRule {
    /// Promote it after this many batches in a row with no difference and
    /// no failure; `None`: only by hand.
    #[serde(default)]
    pub promote_after: Option<u64>,
    /// ... and when it was at most this many percent slower than the
    /// current version over its shadow (its calls' total time).
    #[serde(default = "default_slower")]
    pub max_slower_percent: f64,
}

fn default_slower() -> f64 {
    10.0
}

/// A stage plugin's candidate in shadow, as its pipeline's status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShadowReport {
    /// The stage.
    pub stage: String,
    /// The plugin's name in the pipeline file.
    pub plugin: String,
    /// Hex SHA-256 of the candidate.
    pub candidate: String,
    /// How it compares with the current version so far.
    #[serde(flatten)]
    pub stats: crate::operator::binding::ShadowStats,
}

/// A stage plugin's canary, as its pipeline's status shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryReport {
    /// The stage.
    pub stage: String,
    /// The plugin's name in the pipeline file.
    pub plugin: String,
    /// Hex SHA-256 of the canary.
    pub candidate: String,
    /// How its calls and the current version's compare so far.
    #[serde(flatten)]
    pub stats: crate::operator::binding::CanaryStats,
}

/// What a swap did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwapReport {
    /// The stage.
    pub stage: String,
    /// The plugin's name in the pipeline file.
    pub plugin: String,
    /// Hex SHA-256 of the version replaced.
    pub from: String,
    /// Hex SHA-256 of the version now running.
    pub to: String,
    /// The version the new plugin declares.
    pub version: String,
    /// The last batch processed by the version replaced (none: before the first).
    pub after_batch: Option<u64>,
    /// Sample records the candidate's dry run processed (0: the stage had
    /// no input yet).
    pub sample_records: usize,
    /// Batches the new version is on probation for.
    pub probation_batches: u64,
    /// True when it runs in shadow (the current version goes on).
    pub shadow: bool,
    /// The share of the keys it runs as a canary, in percent (`None`: not a canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<f64>,
    /// States converted by the new version's `migrate-state` (its state
    /// version differs from the replaced one's); `None`: no conversion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_states: Option<u64>,
    /// Microseconds the conversion took (included in `took_us`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub migration_us: u64,
    /// Microseconds the checks and the cut-over took in the driver.
    pub took_us: u64,
}

impl SwapReport {
    /// True when the new version replaced the current one (not a shadow or
    /// a canary beside it).
    pub fn replaced_current(&self) -> bool {
        !self.shadow && self.canary_percent.is_none()
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// How a version in a history ended (or stands).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum VersionOutcome {
    /// Running (the pipeline's first version, or one past its probation).
    Running,
    /// Running, on probation.
    OnProbation,
    /// Running in shadow beside the current version.
    InShadow,
    /// Running as a canary on a share of the keys.
    InCanary {
        /// The share, in percent.
        percent: f64,
    },
    /// Replaced by a later version.
    Replaced,
    /// Returned from, to the previous version.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Refused before anything changed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// One version in a stage plugin's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Hex SHA-256 of the component.
    pub sha256: String,
    /// The version the plugin declares.
    pub version: String,
    /// The configuration its instances got.
    pub config: Vec<(String, String)>,
    /// When it was asked for, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who asked.
    pub by: Option<String>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: VersionOutcome,
}

/// What [`Swaps::after_batch`] found: whether a probation ended, the
/// rollbacks made (`stage/plugin`, the version given up, the one running
/// again, why), and the candidates in shadow to promote (stage, plugin).
pub(crate) type AfterBatch = (bool, Vec<(String, String, String, String)>, Vec<(String, String)>);

/// The driver's side of hot-load: every plugin slot of the plan, what it
/// started with, and their probations.
pub(crate) struct Swaps {
    pipeline: String,
    slots: Vec<Arc<BindingSlot>>,
    /// Per slot: the binding it was planned with (the pipeline file's).
    configured: Vec<Arc<Binding>>,
    /// Per slot: failed calls tolerated in its probation.
    thresholds: Vec<u64>,
    /// Per slot: the order of the candidate in shadow, and its rule.
    shadows: Vec<Option<(SwapOrder, ShadowRule)>>,
    /// Per slot: the order of the canary (to promote it), and its rule.
    canaries: Vec<Option<(SwapOrder, CanaryRule)>>,
    /// Per slot: the binding the last swap replaced, kept so that its
    /// compiled form stays in the engine's catalog (a rollback, or a swap
    /// back, then needs no compile); its instances are gone.
    replaced: Vec<Option<Arc<Binding>>>,
    runtime: Arc<Runtime>,
    live: Arc<Live>,
}

/// The slots of `plan`'s plugins, each once, in stage order.
pub fn plan_slots(plan: &Plan) -> Vec<Arc<BindingSlot>> {
    let mut slots: Vec<Arc<BindingSlot>> = Vec::new();
    for stage in &plan.stages {
        for operator in &stage.operators {
            for slot in operator.plugin_slots() {
                if !slots.iter().any(|known| Arc::ptr_eq(known, &slot)) {
                    slots.push(slot);
                }
            }
        }
    }
    slots
}

impl Swaps {
    /// The slots of `plan`, publishing their histories through `live`.
    pub fn new(plan: &Plan, runtime: Arc<Runtime>, live: Arc<Live>) -> Self {
        let slots = plan_slots(plan);
        let configured: Vec<Arc<Binding>> = slots.iter().map(|slot| slot.current()).collect();
        for (slot, binding) in slots.iter().zip(&configured) {
            live.start_version(&key(slot), record(binding, None, VersionOutcome::Running));
        }
        Self {
            pipeline: plan.pipeline.clone(),
            thresholds: vec![0; slots.len()],
            replaced: vec![None; slots.len()],
            shadows: vec![None; slots.len()],
            canaries: vec![None; slots.len()],
            slots,
            configured,
            runtime,
            live,
        }
    }

    /// The SHA-256 of every slot's version in the pipeline file.
    pub fn configured_versions(&self) -> Vec<String> {
        self.configured
            .iter()
            .map(|binding| binding.plugin.content_hash().to_owned())
            .collect()
    }

    /// The version of every slot now, as the batch log and checkpoints name it.
    pub fn versions(&self) -> BTreeMap<String, LoggedVersion> {
        self.slots
            .iter()
            .zip(&self.configured)
            .zip(&self.canaries)
            .zip(&self.thresholds)
            .map(|(((slot, configured), canary_order), threshold)| {
                let current = slot.current();
                let fallback = slot
                    .on_probation()
                    .then(|| slot.binding(true))
                    .filter(|previous| !Arc::ptr_eq(previous, &current))
                    .map(|previous| Box::new(logged(&previous, configured)));
                let mut version = logged(&current, configured);
                version.probation_left = fallback.is_some().then(|| slot.probation_left());
                version.max_failures = fallback.is_some().then_some(*threshold);
                version.fallback = fallback;
                if let (Some((canary, _)), Some((_, rule))) = (slot.canary_stats(), canary_order) {
                    version.canary = Some(Box::new(LoggedCanary {
                        version: logged(&canary, configured),
                        share: slot.canary_share(),
                        promote_after: rule.promote_after,
                        max_failures: rule.max_failures,
                    }));
                }
                (key(slot), version)
            })
            .collect()
    }

    /// Keeps every slot's current component in the checkpoint directory (at
    /// the start of a run), read back from the file it was loaded from; a
    /// file that changed since is skipped with a warning.
    pub fn keep_components(&self, durability: &Durability) -> Result<(), EngineError> {
        for slot in &self.slots {
            let plugin = slot.current().plugin.clone();
            match std::fs::read(plugin.path()) {
                Ok(bytes) if crate::runtime::content_hash(&bytes) == plugin.content_hash() => {
                    durability.store_plugin(plugin.content_hash(), &bytes)?;
                }
                _ => tracing::warn!(
                    plugin = %slot.name(),
                    "cannot keep plugin component {} in the checkpoint directory: its file changed or is gone",
                    plugin.path().display()
                ),
            }
        }
        Ok(())
    }

    /// Checks, for a run that resumes on the pipeline file's versions
    /// whatever the checkpoint names (`--allow-plugin-change`), that each
    /// keyed-state plugin keeps the state version of the states `restored`
    /// names: no flag makes a plugin read states of another format.
    pub fn check_state_versions(
        &self,
        restored: &BTreeMap<String, LoggedVersion>,
    ) -> Result<(), EngineError> {
        for (slot, configured) in self.slots.iter().zip(&self.configured) {
            let info = configured.plugin.info();
            let Some(version) = restored.get(&key(slot)) else {
                continue;
            };
            let kept = version.state_version.unwrap_or(1);
            if info.kind.interface() == "keyed-state" && info.state_version != kept {
                return Err(EngineError::Plan {
                    location: format!("pipeline `{}`", self.pipeline),
                    message: format!(
                        "plugin `{}`: the checkpoint's states are of state version {kept} (version {} of the plugin), the pipeline file's plugin keeps state version {}: it cannot resume on them, even with --allow-plugin-change; point the pipeline file at the checkpoint's version (kept as plugins/{}.wasm in the checkpoint directory) and swap the new one in while it runs, which converts the states",
                        key(slot),
                        version.sha256,
                        info.state_version,
                        version.sha256
                    ),
                });
            }
        }
        Ok(())
    }

    /// Puts every slot named in `wanted` on the version it names (loading
    /// kept components from the checkpoint directory): before the replay of
    /// a logged batch, and at start on the restored checkpoint's versions.
    /// No dry run: these versions already ran. Before a replayed batch
    /// (`replaying`: the plan whose state the previous batches left), a
    /// version of another state version converts the state first, as the
    /// swap that installed it did; the restored checkpoint's state is
    /// already in its versions' formats.
    pub fn align(
        &mut self,
        wanted: &BTreeMap<String, LoggedVersion>,
        durability: &Durability,
        replaying: Option<&Plan>,
    ) -> Result<bool, EngineError> {
        let mut changed = false;
        for index in 0..self.slots.len() {
            let slot = self.slots[index].clone();
            let Some(want) = wanted.get(&key(&slot)) else {
                continue;
            };
            let configured = self.configured[index].clone();
            let current = slot.current();
            let fallback_now = slot.on_probation().then(|| slot.binding(true));
            let same_fallback = match (&want.fallback, &fallback_now) {
                (None, None) => true,
                (Some(want), Some(now)) => logged(now, &configured) == **want,
                _ => false,
            };
            let canary_now = slot
                .canary_stats()
                .map(|(canary, _)| (logged(&canary, &configured), slot.canary_share()));
            let canary_wanted = want.canary.as_deref();
            if canary_now != canary_wanted.map(|canary| (canary.version.clone(), canary.share)) {
                self.align_canary(index, canary_wanted, durability)?;
                changed = true;
            }
            let bare = LoggedVersion {
                fallback: None,
                probation_left: None,
                max_failures: None,
                canary: None,
                ..want.clone()
            };
            if logged(&current, &configured) == bare && same_fallback {
                continue;
            }
            if let Some(fallback) = &want.fallback {
                let (plugin, config) = self.load_version(&slot, fallback, &configured, durability)?;
                slot.install(plugin, config, 0);
            }
            let (plugin, config) = self.load_version(&slot, want, &configured, durability)?;
            let from_version = current.plugin.info().state_version;
            if let Some(plan) = replaying
                && plugin.info().kind.interface() == "keyed-state"
                && plugin.info().state_version != from_version
            {
                let candidate = Binding {
                    plugin: plugin.clone(),
                    config: config.clone(),
                    generation: 0,
                };
                migrate_states(plan, std::slice::from_ref(&slot), &candidate, from_version).map_err(
                    |error| EngineError::Plan {
                        location: format!("pipeline `{}`", self.pipeline),
                        message: format!(
                            "plugin `{}`: replaying the conversion of its states to version {}: {error}",
                            key(&slot),
                            want.sha256
                        ),
                    },
                )?;
                slot.clear_sample();
            }
            let probation = match &want.fallback {
                Some(_) => want.probation_left.unwrap_or(DEFAULT_PROBATION_BATCHES).max(1),
                None => 0,
            };
            self.thresholds[index] = want.max_failures.unwrap_or(0);
            slot.install(plugin, config, probation);
            tracing::info!(plugin = %key(&slot), version = %want.sha256, "replaying on the plugin version the batch log names");
            changed = true;
        }
        Ok(changed)
    }

    /// Puts slot `index`'s canary on `wanted` (a version, its share of the
    /// keys and its rule), or ends it (`None`), as a logged batch or a
    /// checkpoint names it.
    fn align_canary(
        &mut self,
        index: usize,
        wanted: Option<&LoggedCanary>,
        durability: &Durability,
    ) -> Result<(), EngineError> {
        let slot = self.slots[index].clone();
        slot.end_canary();
        self.canaries[index] = None;
        let Some(LoggedCanary {
            version,
            share,
            promote_after,
            max_failures,
        }) = wanted.cloned()
        else {
            return Ok(());
        };
        let configured = self.configured[index].clone();
        let (plugin, config) = self.load_version(&slot, &version, &configured, durability)?;
        slot.start_canary(plugin.clone(), config.clone(), share);
        let order = SwapOrder {
            stage: slot.stage().to_owned(),
            plugin: Some(slot.name().to_owned()),
            candidate: plugin,
            bytes: Arc::from(Vec::new()),
            config: Some(config),
            rule: RollbackRule {
                batches: 0,
                max_failures: 0,
            },
            mode: Rollout::Immediate,
            by: None,
        };
        let rule = CanaryRule {
            percent: share as f64 / 100.0,
            promote_after,
            max_failures,
        };
        self.canaries[index] = Some((order, rule));
        tracing::info!(plugin = %key(&slot), version = %version.sha256, "replaying with the canary the batch log names");
        Ok(())
    }

    /// The plugin and configuration `version` names for `slot`.
    fn load_version(
        &self,
        slot: &BindingSlot,
        version: &LoggedVersion,
        configured: &Binding,
        durability: &Durability,
    ) -> Result<(Arc<Plugin>, PluginConfig), EngineError> {
        let config = version
            .config
            .clone()
            .unwrap_or_else(|| configured.config.clone());
        if version.sha256 == configured.plugin.content_hash() {
            return Ok((configured.plugin.clone(), config));
        }
        let unusable = |message: String| EngineError::Plan {
            location: format!("pipeline `{}`", self.pipeline),
            message: format!("plugin `{}`: {message}", key(slot)),
        };
        let bytes = durability.load_plugin(&version.sha256)?.ok_or_else(|| {
            unusable(format!(
                "the checkpoint or batch log names its version {}, which the checkpoint directory does not keep (the plugin changed since): restore the old component, or pass --allow-plugin-change to resume anyway",
                version.sha256
            ))
        })?;
        let path = Path::new("plugins").join(format!("{}.wasm", version.sha256));
        let plugin = self
            .runtime
            .load_for(slot.metered(), &path, &bytes)
            .map_err(|error| unusable(format!("cannot load its version {}: {error}", version.sha256)))?;
        Ok((plugin, config))
    }

    /// The slots a request for `plugin` of `stage` means.
    fn targets(&self, stage: &str, plugin: Option<&str>) -> Result<Vec<usize>, String> {
        let in_stage: Vec<usize> = (0..self.slots.len())
            .filter(|&index| self.slots[index].stage() == stage)
            .collect();
        if in_stage.is_empty() {
            return Err(format!("it has no stage `{stage}` that runs a Wasm plugin"));
        }
        let names: Vec<&str> = in_stage.iter().map(|&index| self.slots[index].name()).collect();
        let name = match plugin {
            Some(name) => name,
            None if names.iter().all(|name| *name == names[0]) => names[0],
            None => {
                return Err(format!(
                    "stage `{stage}` runs several plugins ({}): name the one to swap",
                    names.join(", ")
                ));
            }
        };
        let targets: Vec<usize> = in_stage
            .into_iter()
            .filter(|&index| self.slots[index].name() == name)
            .collect();
        if targets.is_empty() {
            return Err(format!("stage `{stage}` runs no plugin `{name}`"));
        }
        Ok(targets)
    }

    /// Checks `order`'s candidate and, when it passes, cuts over to it (see
    /// the module's steps). `after_batch` is the last batch processed;
    /// `batches_run` the run's batches so far (for the failure baseline).
    /// A refusal changes nothing.
    pub fn swap(
        &mut self,
        order: &SwapOrder,
        after_batch: Option<u64>,
        batches_run: u64,
        durability: Option<&mut Durability>,
        plan: &Plan,
    ) -> Result<SwapReport, SwapRefused> {
        let started = Instant::now();
        let targets = self
            .targets(&order.stage, order.plugin.as_deref())
            .map_err(SwapRefused::Request)?;
        let first = self.slots[targets[0]].clone();
        let key = key(&first);
        let current = first.current();
        let config = order.config.clone().unwrap_or_else(|| current.config.clone());
        let refuse = |this: &Self, reason: String| {
            this.live.record_version(
                &key,
                VersionRecord {
                    outcome: VersionOutcome::Refused {
                        reason: reason.clone(),
                    },
                    ..record_of(&order.candidate, &config, order.by.clone())
                },
            );
            SwapRefused::Candidate(reason)
        };
        let (old_kind, new_kind) = (current.plugin.info().kind, order.candidate.info().kind);
        if old_kind != new_kind {
            return Err(refuse(
                self,
                format!(
                    "the candidate is a plugin of kind `{}`, the stage runs one of kind `{}`",
                    new_kind.name(),
                    old_kind.name()
                ),
            ));
        }
        let migrate_from = match state_change(&current.plugin, &order.candidate, order) {
            Ok(from) => from,
            Err(reason) => return Err(refuse(self, reason)),
        };
        let mut sample_records = 0;
        for &index in &targets {
            match self.slots[index].check(&order.candidate, &config, migrate_from) {
                Ok(records) => sample_records = sample_records.max(records),
                Err(error) => return Err(refuse(self, format!("the candidate failed its checks: {error}"))),
            }
        }
        let checked = Checked {
            order,
            targets: &targets,
            current: &current,
            // The refusal above still names the configuration.
            config: config.clone(),
            sample_records,
            after_batch,
            started,
        };
        if let Rollout::Shadow(rule) = order.mode {
            return self.start_shadow(checked, rule);
        }
        let failed =
            |this: &Self, error: EngineError| refuse(this, format!("cannot keep the component: {error}"));
        if let Some(durability) = durability.as_deref()
            && !order.bytes.is_empty()
            && let Err(error) = durability.store_plugin(order.candidate.content_hash(), &order.bytes)
        {
            return Err(failed(self, error));
        }
        if let Rollout::Canary(rule) = order.mode {
            return self.start_canary(checked, rule, durability);
        }
        crate::failpoint::crash_point("swap-checked");
        let mut migrated = None;
        if let Some(from_version) = migrate_from {
            let candidate = Binding {
                plugin: order.candidate.clone(),
                config: config.clone(),
                generation: 0,
            };
            let began = Instant::now();
            match migrate_states(
                plan,
                &targets.iter().map(|&i| self.slots[i].clone()).collect::<Vec<_>>(),
                &candidate,
                from_version,
            ) {
                Ok(states) => {
                    for &index in &targets {
                        // Its states are of the old format.
                        self.slots[index].clear_sample();
                    }
                    migrated = Some((states, began.elapsed()));
                }
                Err(MigrationError::Refused(reason)) => {
                    return Err(refuse(
                        self,
                        format!("the candidate cannot convert the stage's states: {reason}"),
                    ));
                }
                Err(error @ MigrationError::HalfDone(_)) => {
                    return Err(SwapRefused::Failed(format!(
                        "converting the stage's states failed: {error}"
                    )));
                }
            }
        }
        // A version that converted the state has no probation: the
        // version it replaced cannot read the converted states.
        let probation = if migrated.is_some() { 0 } else { order.rule.batches };
        // It replaces a canary too (a promotion of the canary is this swap).
        self.end_canary(&targets, VersionOutcome::Replaced);
        // The failure rate before the swap: failed calls per batch.
        let stage_failures = plan
            .stages
            .iter()
            .find(|stage| stage.name == order.stage)
            .map_or(0, |stage| {
                stage
                    .metrics
                    .failed_batches
                    .load(std::sync::atomic::Ordering::Relaxed)
            });
        let baseline = if batches_run == 0 {
            0
        } else {
            (stage_failures as f64 / batches_run as f64 * order.rule.batches as f64).ceil() as u64
        };
        for &index in &targets {
            let slot = &self.slots[index];
            let replaced = slot.install(order.candidate.clone(), config.clone(), probation);
            self.thresholds[index] = order.rule.max_failures.max(baseline);
            self.replaced[index] = Some(replaced.clone());
            self.live
                .set_outcome(&key, replaced.plugin.content_hash(), VersionOutcome::Replaced);
        }
        let outcome = if probation > 0 {
            VersionOutcome::OnProbation
        } else {
            VersionOutcome::Running
        };
        self.live.record_version(
            &key,
            VersionRecord {
                outcome,
                ..record_of(&order.candidate, &config, order.by.clone())
            },
        );
        if let Some(durability) = durability {
            durability.set_versions(self.versions());
            if let Some(batch) = after_batch {
                let time = self.live.status().last_batch.map_or(0, |mark| mark.time_ms);
                durability
                    .after_batch(plan, batch, time, true)
                    .map_err(|error| SwapRefused::Failed(error.to_string()))?;
            }
        }
        crate::failpoint::crash_point("swap-cut-over");
        tracing::info!(
            plugin = %key,
            from = %current.plugin.content_hash(),
            to = %order.candidate.content_hash(),
            by = order.by.as_deref().unwrap_or("-"),
            "hot-loaded plugin version {} after batch {after_batch:?}",
            order.candidate.info().version
        );
        Ok(SwapReport {
            probation_batches: probation,
            migrated_states: migrated.map(|(states, _)| states),
            migration_us: migrated.map_or(0, |(_, took)| took.as_micros() as u64),
            ..checked.report(first.name())
        })
    }

    /// Runs `order`'s candidate (checked) in shadow beside `current` on
    /// the slots `targets`: only for stateless transforms, whose output
    /// two versions can produce from the same input without either
    /// touching state.
    fn start_shadow(&mut self, checked: Checked<'_>, rule: ShadowRule) -> Result<SwapReport, SwapRefused> {
        let Checked {
            order,
            targets,
            current,
            ..
        } = checked;
        let config = checked.config.clone();
        if let Some(busy) = targets
            .iter()
            .map(|&index| &self.slots[index])
            .find(|slot| slot.in_canary())
        {
            return Err(SwapRefused::Request(format!(
                "`{}` runs a canary: promote it or roll it back first",
                key(busy)
            )));
        }
        use crate::runtime::PluginKind;
        let kind = current.plugin.info().kind;
        if !matches!(
            kind,
            PluginKind::Map
                | PluginKind::FlatMap
                | PluginKind::Filter
                | PluginKind::FilterMap
                | PluginKind::MapPartitions
        ) {
            return Err(SwapRefused::Request(format!(
                "shadow mode compares the outputs of stateless transforms; stage `{}` runs a {} (swap it in with `immediate` and a probation instead)",
                order.stage,
                kind.name()
            )));
        }
        let key = key(&self.slots[targets[0]]);
        for &index in targets {
            self.slots[index].start_shadow(order.candidate.clone(), config.clone());
            let mut promoted = order.clone();
            promoted.mode = Rollout::Immediate;
            promoted.config = Some(config.clone());
            self.shadows[index] = Some((promoted, rule));
        }
        self.live.record_version(
            &key,
            VersionRecord {
                outcome: VersionOutcome::InShadow,
                ..record_of(&order.candidate, &config, order.by.clone())
            },
        );
        tracing::info!(plugin = %key, candidate = %order.candidate.content_hash(), "running a candidate in shadow");
        Ok(SwapReport {
            shadow: true,
            ..checked.report(self.slots[targets[0]].name())
        })
    }

    /// Runs `order`'s candidate (checked) as a canary on `rule`'s share of
    /// the keys of the slots `targets`: for per-record transforms and
    /// keyed state, whose keys can go to two versions independently.
    fn start_canary(
        &mut self,
        checked: Checked<'_>,
        rule: CanaryRule,
        durability: Option<&mut Durability>,
    ) -> Result<SwapReport, SwapRefused> {
        let Checked {
            order,
            targets,
            current,
            ..
        } = checked;
        let config = checked.config.clone();
        use crate::runtime::PluginKind;
        let kind = current.plugin.info().kind;
        if !matches!(
            kind,
            PluginKind::Map
                | PluginKind::FlatMap
                | PluginKind::Filter
                | PluginKind::FilterMap
                | PluginKind::UpdateState
                | PluginKind::MapWithState
        ) {
            return Err(SwapRefused::Request(format!(
                "a canary splits a stage's records by key, which needs a per-record transform or keyed state; stage `{}` runs a {} (swap it in with `immediate` and a probation instead)",
                order.stage,
                kind.name()
            )));
        }
        let share = rule.share().map_err(SwapRefused::Request)?;
        if let Some(busy) = targets
            .iter()
            .map(|&index| &self.slots[index])
            .find(|slot| slot.on_probation() || slot.in_shadow() || slot.in_canary())
        {
            return Err(SwapRefused::Request(format!(
                "`{}` already has a version on probation, in shadow or as a canary: let it finish, promote it or roll it back first",
                key(busy)
            )));
        }
        let key = key(&self.slots[targets[0]]);
        for &index in targets {
            self.slots[index].start_canary(order.candidate.clone(), config.clone(), share);
            let mut promoted = order.clone();
            promoted.mode = Rollout::Immediate;
            promoted.config = Some(config.clone());
            promoted.rule.batches = 0;
            self.canaries[index] = Some((promoted, rule));
        }
        if let Some(durability) = durability {
            // The batches from the next one on name the canary.
            durability.set_versions(self.versions());
        }
        self.live.record_version(
            &key,
            VersionRecord {
                outcome: VersionOutcome::InCanary {
                    percent: rule.percent,
                },
                ..record_of(&order.candidate, &config, order.by.clone())
            },
        );
        tracing::info!(plugin = %key, candidate = %order.candidate.content_hash(), percent = rule.percent, "running a canary");
        Ok(SwapReport {
            canary_percent: Some(share as f64 / 100.0),
            ..checked.report(self.slots[targets[0]].name())
        })
    }

    /// Ends the canary of the slots `targets`, if any, with `outcome` in
    /// the history; returns its SHA-256.
    fn end_canary(&mut self, targets: &[usize], outcome: VersionOutcome) -> Option<String> {
        let mut ended = None;
        for &index in targets {
            if let Some((binding, _)) = self.slots[index].end_canary() {
                ended = Some(binding.plugin.content_hash().to_owned());
            }
            self.canaries[index] = None;
        }
        let sha = ended?;
        self.live
            .set_outcome(&key(&self.slots[targets[0]]), &sha, outcome);
        Some(sha)
    }

    /// Promotes the candidate in shadow of `plugin` of `stage`: it is
    /// swapped in (with the checks and probation of its order).
    #[allow(clippy::too_many_arguments)]
    pub fn promote(
        &mut self,
        stage: &str,
        plugin: Option<&str>,
        by: Option<String>,
        after_batch: Option<u64>,
        batches_run: u64,
        durability: Option<&mut Durability>,
        plan: &Plan,
    ) -> Result<SwapReport, SwapRefused> {
        let targets = self.targets(stage, plugin).map_err(SwapRefused::Request)?;
        let waiting = self.shadows[targets[0]]
            .as_ref()
            .map(|(order, _)| order)
            .or(self.canaries[targets[0]].as_ref().map(|(order, _)| order));
        let Some(mut order) = waiting.cloned() else {
            return Err(SwapRefused::Request(format!(
                "no candidate of `{}` runs in shadow or as a canary",
                slot_key(stage, self.slots[targets[0]].name())
            )));
        };
        order.by = by.or(order.by);
        // Checked again and cut over first: a refusal keeps the shadow.
        let report = self.swap(&order, after_batch, batches_run, durability, plan)?;
        for &index in &targets {
            self.slots[index].end_shadow();
            self.shadows[index] = None;
        }
        Ok(report)
    }

    /// Gives up the candidate in shadow of the slots `targets`; returns its SHA-256.
    fn end_shadow(&mut self, targets: &[usize], reason: &str) -> Option<String> {
        let mut ended = None;
        for &index in targets {
            if let Some((binding, _)) = self.slots[index].end_shadow() {
                ended = Some(binding.plugin.content_hash().to_owned());
            }
            self.shadows[index] = None;
        }
        let sha = ended?;
        self.live.set_outcome(
            &key(&self.slots[targets[0]]),
            &sha,
            VersionOutcome::RolledBack {
                reason: reason.to_owned(),
            },
        );
        Some(sha)
    }

    /// Returns `plugin` of `stage` to the version before its last swap:
    /// the one on probation is given up, else the previous version in its
    /// history is swapped in again (after the same checks as any swap).
    /// `by` and `reason` go in the history.
    pub fn roll_back(
        &mut self,
        stage: &str,
        plugin: Option<&str>,
        by: Option<String>,
        reason: &str,
    ) -> Result<(String, String), SwapRefused> {
        let targets = self.targets(stage, plugin).map_err(SwapRefused::Request)?;
        if self.slots[targets[0]].in_shadow() {
            let reason = match &by {
                Some(by) => format!("shadow given up (by {by})"),
                None => "shadow given up".to_owned(),
            };
            let given_up = self.end_shadow(&targets, &reason).unwrap_or_default();
            let current = self.slots[targets[0]].current().plugin.content_hash().to_owned();
            return Ok((given_up, current));
        }
        if self.slots[targets[0]].in_canary() {
            let reason = match &by {
                Some(by) => format!("canary given up (by {by})"),
                None => "canary given up".to_owned(),
            };
            let given_up = self
                .end_canary(&targets, VersionOutcome::RolledBack { reason })
                .unwrap_or_default();
            let current = self.slots[targets[0]].current().plugin.content_hash().to_owned();
            return Ok((given_up, current));
        }
        let mut given_up = None;
        for &index in &targets {
            if let Some(binding) = self.slots[index].roll_back() {
                given_up = Some(binding.plugin.content_hash().to_owned());
            }
        }
        let Some(given_up) = given_up else {
            return Err(SwapRefused::Request(format!(
                "no version of `{}` is on probation, in shadow or a canary: swap to the version wanted instead",
                slot_key(stage, self.slots[targets[0]].name())
            )));
        };
        let key = key(&self.slots[targets[0]]);
        let by_whom = by.clone();
        let reason = match by {
            Some(by) => format!("{reason} (by {by})"),
            None => reason.to_owned(),
        };
        self.live
            .set_outcome(&key, &given_up, VersionOutcome::RolledBack { reason });
        let restored = self.slots[targets[0]].current();
        self.live
            .record_version(&key, record(&restored, by_whom, VersionOutcome::Running));
        Ok((given_up, restored.plugin.content_hash().to_owned()))
    }

    /// After a batch: ends the probations that are over and rolls back the
    /// versions whose failures passed their threshold. Returns whether a
    /// probation ended, and the rollbacks made (`stage/plugin`, the version
    /// given up, the one running again, why).
    pub fn after_batch(&mut self) -> AfterBatch {
        let mut ended = false;
        let mut rolled_back = Vec::new();
        let mut promotions = Vec::new();
        for index in 0..self.slots.len() {
            let slot = self.slots[index].clone();
            // A batch that did not call the plugin proves nothing either way.
            let called = slot.take_batch_calls();
            if called
                && let Some((_, rule)) = &self.shadows[index]
                && let Some(stats) = slot.shadow_batch_done()
                && let Some(after) = rule.promote_after
                && stats.streak.clean_batches >= after
                && stats.candidate_time.as_secs_f64()
                    <= stats.live_time.as_secs_f64() * (1.0 + rule.max_slower_percent / 100.0)
            {
                let promotion = (slot.stage().to_owned(), slot.name().to_owned());
                if !promotions.contains(&promotion) {
                    promotions.push(promotion);
                }
            }
            if called
                && let Some((_, rule)) = &self.canaries[index]
                && let Some(stats) = slot.canary_batch_done()
            {
                let rule = *rule;
                let key = key(&slot);
                let (current, canary) = (slot.current(), slot.canary_stats());
                if stats.canary.failures > rule.max_failures {
                    let reason = format!(
                        "{} failed calls as a canary (at most {} allowed); the current version processed their records again",
                        stats.canary.failures, rule.max_failures
                    );
                    tracing::warn!(plugin = %key, "giving up the canary: {reason}");
                    let given_up = self
                        .end_canary(
                            &[index],
                            VersionOutcome::RolledBack {
                                reason: reason.clone(),
                            },
                        )
                        .unwrap_or_default();
                    if canary.is_some() {
                        rolled_back.push((key, given_up, current.plugin.content_hash().to_owned(), reason));
                    }
                } else if rule
                    .promote_after
                    .is_some_and(|after| stats.streak.clean_batches >= after)
                {
                    let promotion = (slot.stage().to_owned(), slot.name().to_owned());
                    if !promotions.contains(&promotion) {
                        promotions.push(promotion);
                    }
                }
            }
            if !slot.on_probation() {
                continue;
            }
            let failures = slot.candidate_failures();
            let key = key(&slot);
            let current = slot.current();
            if failures > self.thresholds[index] {
                let reason = format!(
                    "{failures} failed calls on probation (at most {} allowed); the previous version processed them again",
                    self.thresholds[index]
                );
                tracing::warn!(plugin = %key, version = %current.plugin.content_hash(), "rolling back: {reason}");
                slot.roll_back();
                self.live.set_outcome(
                    &key,
                    current.plugin.content_hash(),
                    VersionOutcome::RolledBack {
                        reason: reason.clone(),
                    },
                );
                let restored = slot.current();
                self.live.record_version(
                    &key,
                    record(
                        &restored,
                        Some("automatic rollback".into()),
                        VersionOutcome::Running,
                    ),
                );
                rolled_back.push((
                    key,
                    current.plugin.content_hash().to_owned(),
                    restored.plugin.content_hash().to_owned(),
                    reason,
                ));
            } else if called && slot.probation_batch_done() {
                ended = true;
                tracing::info!(plugin = %key, version = %current.plugin.content_hash(), "probation passed");
                self.live
                    .set_outcome(&key, current.plugin.content_hash(), VersionOutcome::Running);
            }
        }
        (ended, rolled_back, promotions)
    }

    /// The stages whose plugin version differs from the pipeline file's,
    /// with the plugin's name and the pipeline file's binding.
    pub fn off_configured(&self) -> Vec<(String, String, Arc<Binding>)> {
        self.slots
            .iter()
            .zip(&self.configured)
            .filter(|(slot, configured)| {
                let current = slot.current();
                current.plugin.content_hash() != configured.plugin.content_hash()
                    || current.config != configured.config
            })
            .map(|(slot, configured)| {
                (
                    slot.stage().to_owned(),
                    slot.name().to_owned(),
                    configured.clone(),
                )
            })
            .collect()
    }
}

/// A candidate that passed its checks, and what its report needs.
struct Checked<'a> {
    order: &'a SwapOrder,
    /// The slots it goes into.
    targets: &'a [usize],
    /// The version it replaces (or runs beside).
    current: &'a Binding,
    /// The configuration it runs with.
    config: PluginConfig,
    sample_records: usize,
    after_batch: Option<u64>,
    /// When the request reached the driver.
    started: Instant,
}

impl Checked<'_> {
    /// The report of an immediate swap without probation of it into
    /// `plugin`; the rollout's own fields are set by the caller.
    fn report(&self, plugin: &str) -> SwapReport {
        SwapReport {
            stage: self.order.stage.clone(),
            plugin: plugin.to_owned(),
            from: self.current.plugin.content_hash().to_owned(),
            to: self.order.candidate.content_hash().to_owned(),
            version: self.order.candidate.info().version.clone(),
            after_batch: self.after_batch,
            sample_records: self.sample_records,
            probation_batches: 0,
            shadow: false,
            canary_percent: None,
            migrated_states: None,
            migration_us: 0,
            took_us: self.started.elapsed().as_micros() as u64,
        }
    }
}

/// Why a swap was not made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapRefused {
    /// The request names no such stage or plugin, or does not apply.
    Request(String),
    /// The candidate failed its checks (or could not be kept).
    Candidate(String),
    /// The cut-over was made but the checkpoint at it failed (the pipeline
    /// stops at this boundary, as on any checkpoint failure), or a state
    /// conversion failed half-way.
    Failed(String),
}

impl std::fmt::Display for SwapRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Request(message) | Self::Candidate(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// Whether `candidate` changes the state format of `current` and, if so,
/// the state version to convert from: refused (with the reason) when it
/// cannot convert, or when `order` asks for a rollout a converted state
/// does not allow.
fn state_change(current: &Plugin, candidate: &Plugin, order: &SwapOrder) -> Result<Option<u32>, String> {
    let (from, to) = (current.info().state_version, candidate.info().state_version);
    if from == to || candidate.info().kind.interface() != "keyed-state" {
        return Ok(None);
    }
    if !candidate.info().migrates_state {
        return Err(format!(
            "the candidate keeps state version {to} and the running version state version {from}, \
             and the candidate exports no state-migration to convert the states kept \
             (weir-guest: `migrate = ...`); keep the state version, or add a migration"
        ));
    }
    if !matches!(order.mode, Rollout::Immediate) {
        return Err(
            "a version that converts state runs on every key at once (not in shadow or as a canary): swap it in immediately"
                .into(),
        );
    }
    Ok(Some(from))
}

/// Converts the states every operator keeps for `slots` with `candidate`.
fn migrate_states(
    plan: &Plan,
    slots: &[Arc<BindingSlot>],
    candidate: &Binding,
    from_version: u32,
) -> Result<u64, MigrationError> {
    let mut states = 0;
    for operator in plan.stages.iter().flat_map(|stage| &stage.operators) {
        for slot in slots {
            if let Some(done) = operator.migrate_state(slot, candidate, from_version)? {
                states += done.states;
            }
        }
    }
    Ok(states)
}

fn key(slot: &BindingSlot) -> String {
    slot_key(slot.stage(), slot.name())
}

/// `binding` as the batch log names it: its configuration only when it
/// differs from the pipeline file's.
fn logged(binding: &Binding, configured: &Binding) -> LoggedVersion {
    LoggedVersion {
        sha256: binding.plugin.content_hash().to_owned(),
        config: (binding.config != configured.config).then(|| binding.config.clone()),
        fallback: None,
        probation_left: None,
        max_failures: None,
        canary: None,
        state_version: Some(binding.plugin.info().state_version).filter(|&version| version != 1),
    }
}

fn record(binding: &Binding, by: Option<String>, outcome: VersionOutcome) -> VersionRecord {
    VersionRecord {
        outcome,
        ..record_of(&binding.plugin, &binding.config, by)
    }
}

fn record_of(plugin: &Plugin, config: &[(String, String)], by: Option<String>) -> VersionRecord {
    VersionRecord {
        sha256: plugin.content_hash().to_owned(),
        version: plugin.info().version.clone(),
        config: config.to_vec(),
        at_ms: crate::source::now_ms(),
        by,
        outcome: VersionOutcome::Running,
    }
}
