//! Which version of its plugin a stage's calls run, and how it is swapped
//! while the pipeline runs (hot-load).
//!
//! Every Wasm plugin use of a stage (a [`super::PluginUse`]) reads its
//! plugin through a [`BindingSlot`]: the current [`Binding`] (a component
//! and the configuration its instances are initialised with) and a
//! generation number that grows with each swap. Workers key their warm
//! instances by the slot and remember the generation each was started
//! from; a call that finds its instance of an older generation drops it and
//! starts one of the current binding, and a sweep drops every outdated
//! instance a worker holds. So a swap costs each call one atomic load, and
//! 1,000 swaps leave no more instances behind than one.
//!
//! A swap is made by the pipeline's driver between two batches, never while
//! a call runs: every batch is processed wholly by one version. Before it,
//! the candidate is checked in instances of its own under the stage's
//! limits: it exports the world the stage calls, its `init` accepts the
//! configuration, and a **dry run** on a sample of the stage's recent input
//! (kept by the slot, one per batch) succeeds.
//!
//! After a swap the new binding is **on probation** for a number of
//! batches: a call of it that fails is counted against it and the same input
//! is processed again by the previous binding, so its output is what the old
//! version gives and nothing is lost; the driver rolls the slot back when the
//! failures pass the rollout's threshold.
//!
//! A candidate can also run in **shadow** beside the current binding: the
//! stage's guard gives it the same input as the current one, compares the
//! two outputs ([`ShadowStats`]) and delivers only the current one's.
//!
//! Which binding a call runs is its [`Route`], set by the guard on the
//! worker's instance slots.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::instances::InstanceKey;
use crate::record::Batch;
use crate::runtime::{InstanceLabel, KeyGroups, Plugin, PluginError, Sandbox};

/// A stage's configuration as its plugin's `init` gets it: key/value pairs.
pub type PluginConfig = Vec<(String, String)>;

/// Records of a stage's input kept for a candidate's dry run.
pub const SAMPLE_RECORDS: usize = 256;

/// One version of a stage's plugin.
#[derive(Debug)]
pub struct Binding {
    /// The component.
    pub plugin: Arc<Plugin>,
    /// The stage's configuration, handed to every instance's `init`.
    pub config: Vec<(String, String)>,
    /// The slot's generation this binding was installed as (0 at the start).
    pub generation: u64,
}

/// A sample of a stage's input, as its plugin's calls take it.
#[derive(Debug, Clone)]
pub enum Sample {
    /// Records (transforms).
    Records(Batch),
    /// Groups of values (reducers): `data`/`ends` in flat form, group `g`
    /// ending at `group_ends[g]`.
    Groups {
        /// Value bytes.
        data: Vec<u8>,
        /// Value end offsets.
        ends: Vec<u32>,
        /// Group end indices.
        group_ends: Vec<u32>,
    },
    /// Keys with their new values and states (keyed-state plugins).
    Keys(KeyGroups),
    /// Both inputs of a two-input plugin.
    Pair(Batch, Batch),
}

/// Which of a slot's bindings a call runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Route {
    /// The current binding.
    #[default]
    Current,
    /// The binding before the current one, while the current one is on
    /// probation (its call failed on this input).
    Fallback,
    /// The candidate in shadow.
    Shadow,
    /// The canary candidate (for the keys hashed to it).
    Canary,
}

/// What every worker's instance entries and the slot share: whether the run
/// is over, and the generations instances must be of.
#[derive(Debug, Default)]
pub struct SlotShared {
    /// Set when the pipeline's run ends: every instance of the slot goes.
    pub(super) retired: Arc<AtomicBool>,
    /// The current binding's generation.
    pub(super) generation: AtomicU64,
    /// The previous binding's generation, while the current one is on probation.
    pub(super) fallback_generation: AtomicU64,
    /// The shadow candidate's generation (`u64::MAX`: none).
    pub(super) shadow_generation: AtomicU64,
    /// The canary candidate's generation (`u64::MAX`: none).
    pub(super) canary_generation: AtomicU64,
}

impl SlotShared {
    /// The generation instances on `route` must be of.
    pub(super) fn generation(&self, route: Route) -> u64 {
        match route {
            Route::Current => &self.generation,
            Route::Fallback => &self.fallback_generation,
            Route::Shadow => &self.shadow_generation,
            Route::Canary => &self.canary_generation,
        }
        .load(Ordering::Acquire)
    }

    /// True when an instance of `generation` on `route` may be kept.
    pub(super) fn keeps(&self, generation: u64, route: Route) -> bool {
        !self.retired.load(Ordering::Relaxed) && self.generation(route) == generation
    }
}

/// How a shadow candidate compares with the current version so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShadowStats {
    /// Its batches, and those in a row, up to the last, in which its output
    /// was the current version's and it did not fail.
    #[serde(flatten)]
    pub streak: Streak,
    /// Output records only the current version produced.
    pub only_live: u64,
    /// Output records only the candidate produced.
    pub only_candidate: u64,
    /// Output records of a key both produced, with different values.
    pub different: u64,
    /// The keys (text, lossy) whose records differed, at most [`DIFF_KEYS`].
    pub differing_keys: std::collections::BTreeSet<String>,
    /// Calls of the candidate that failed (traps, errors, limits).
    pub candidate_failures: u64,
    /// Time the current version's calls took.
    pub live_time: std::time::Duration,
    /// Time the candidate's calls took.
    pub candidate_time: std::time::Duration,
    /// Fuel the current version's calls burnt since the shadow started
    /// (stages with a fuel budget; 0 otherwise).
    pub live_fuel: u64,
    /// Fuel the candidate's calls burnt.
    pub candidate_fuel: u64,
}

/// A candidate's batches so far, and its clean ones in a row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Streak {
    /// Batches it ran in.
    pub batches: u64,
    /// Batches in a row, up to the last, without a failure (or, in shadow,
    /// a difference).
    pub clean_batches: u64,
    /// A failure (or difference) in the batch running now.
    #[serde(skip)]
    dirty: bool,
    /// The candidate had input in the batch running now.
    #[serde(skip)]
    active: bool,
}

impl Streak {
    /// Marks the batch running now as one the candidate had input in.
    fn touch(&mut self) {
        self.active = true;
    }

    /// Marks the batch running now as not clean.
    fn spoil(&mut self) {
        self.dirty = true;
    }

    /// Ends a batch: counted only when the candidate had input in it (a
    /// batch that gave it nothing proves nothing either way).
    fn batch_done(&mut self) {
        if !std::mem::take(&mut self.active) {
            return;
        }
        self.batches += 1;
        self.clean_batches = if self.dirty { 0 } else { self.clean_batches + 1 };
        self.dirty = false;
    }
}

/// What one version's calls did during a canary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VersionCalls {
    /// Calls it made.
    pub calls: u64,
    /// Calls of it that failed (traps, errors, limits); a failed call of
    /// the canary is processed again by the current version.
    pub failures: u64,
    /// Input records of its calls.
    pub records: u64,
    /// Time its calls took.
    pub time: std::time::Duration,
    /// Fuel its calls burnt (stages with a fuel budget; 0 otherwise).
    pub fuel: u64,
}

impl VersionCalls {
    fn add(&mut self, records: usize, ok: bool, time: std::time::Duration) {
        self.calls += 1;
        self.records += records as u64;
        self.failures += u64::from(!ok);
        self.time += time;
    }
}

/// How a canary compares with the current version so far: each key (and
/// its state) goes to one of them, by a hash of the key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CanaryStats {
    /// The share of keys hashed to the canary, in percent.
    pub percent: f64,
    /// Its batches, and those in a row, up to the last, without a failure.
    #[serde(flatten)]
    pub streak: Streak,
    /// The current version's calls on its keys.
    pub live: VersionCalls,
    /// The canary's calls on its keys.
    pub canary: VersionCalls,
}

/// Seed of the hash that sends keys to a canary (not the partitioning
/// hash, so that a canary's keys spread over every partition).
const CANARY_SEED: u64 = 0x5eed_ca4a_4e11;

/// Differing keys a [`ShadowStats`] lists.
pub const DIFF_KEYS: usize = 1_000;

/// How two outputs of one call differ.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputDiff {
    /// Records only in the current version's output.
    pub only_live: u64,
    /// Records only in the candidate's.
    pub only_candidate: u64,
    /// Records of a key in both whose values differ.
    pub different: u64,
    /// The keys involved.
    pub keys: Vec<Vec<u8>>,
}

impl OutputDiff {
    /// Compares two outputs as multisets of records by key: per key, the
    /// values both have match; of the rest, pairs count as different
    /// values and the remainder as only in one output.
    pub fn of(live: &[Batch], candidate: &[Batch]) -> Self {
        use std::collections::HashMap;
        /// Per key: its values in the current version's output, in the candidate's.
        type Values<'a> = (Vec<&'a [u8]>, Vec<&'a [u8]>);
        let mut by_key: HashMap<Option<&[u8]>, Values<'_>> = HashMap::new();
        for record in live.iter().flat_map(Batch::iter) {
            by_key.entry(record.key).or_default().0.push(record.value);
        }
        for record in candidate.iter().flat_map(Batch::iter) {
            by_key.entry(record.key).or_default().1.push(record.value);
        }
        let mut diff = Self::default();
        for (key, (mut live, mut candidate)) in by_key {
            live.sort_unstable();
            candidate.sort_unstable();
            let (mut i, mut j, mut common) = (0, 0, 0);
            while i < live.len() && j < candidate.len() {
                match live[i].cmp(candidate[j]) {
                    std::cmp::Ordering::Equal => {
                        common += 1;
                        i += 1;
                        j += 1;
                    }
                    std::cmp::Ordering::Less => i += 1,
                    std::cmp::Ordering::Greater => j += 1,
                }
            }
            let (l, c) = ((live.len() - common) as u64, (candidate.len() - common) as u64);
            if l + c == 0 {
                continue;
            }
            let different = l.min(c);
            diff.different += different;
            diff.only_live += l - different;
            diff.only_candidate += c - different;
            diff.keys.push(key.unwrap_or_default().to_vec());
        }
        diff
    }

    /// True when the outputs were the same.
    pub fn is_empty(&self) -> bool {
        self.only_live + self.only_candidate + self.different == 0
    }
}

/// A candidate's first batches after a swap.
#[derive(Debug, Default)]
struct Probation {
    /// The binding to fall back on (the one the swap replaced).
    previous: Option<Arc<Binding>>,
    /// Batches left on probation.
    batches_left: u64,
}

/// Checks a candidate binding for one world: instantiates it in the slot's
/// sandbox, runs `init`, and the dry run on the sample when there is one.
/// With `migrate_from`, the sample's states are first converted from that
/// state version by the candidate's `migrate-state`.
pub(super) type Checker = fn(&BindingSlot, &Binding, Option<&Sample>, Option<u32>) -> Result<(), PluginError>;

/// A stage's plugin use as swaps see it: its current binding and what a
/// candidate is checked with. Shared by the operator and the driver.
pub struct BindingSlot {
    /// The plugin's name in the pipeline file.
    name: String,
    pub(super) label: InstanceLabel,
    pub(super) sandbox: Arc<Sandbox>,
    /// Whether the stage runs its plugin under a fuel budget (a candidate
    /// is then compiled for the metering engine).
    metered: bool,
    /// The key of the slot's instances of the current binding.
    pub(super) key: InstanceKey,
    /// The key of its instances of the previous binding, during probation.
    pub(super) fallback_key: InstanceKey,
    /// The key of its instances of the shadow candidate.
    pub(super) shadow_key: InstanceKey,
    /// The candidate in shadow, with how it compares so far.
    shadow: Mutex<Option<(Arc<Binding>, ShadowStats)>>,
    in_shadow: AtomicBool,
    /// The key of its instances of the canary.
    pub(super) canary_key: InstanceKey,
    /// The canary, with how it compares so far.
    canary: Mutex<Option<(Arc<Binding>, CanaryStats)>>,
    /// Fuel the instances of the candidate in shadow or of the canary burnt.
    pub(super) candidate_fuel: Arc<AtomicU64>,
    /// The stage's fuel counter when the shadow or canary started.
    fuel_at_start: AtomicU64,
    /// Calls of the slot's plugin since the last batch ended.
    batch_calls: AtomicU64,
    /// Keys whose hash (out of 10,000) is below this go to the canary (0: none).
    canary_share: AtomicU64,
    /// Whether a record without a key goes by its value (stateless
    /// transforms) rather than with every other keyless record (keyed
    /// state, where they share one state).
    canary_by_value: AtomicBool,
    pub(super) shared: Arc<SlotShared>,
    current: RwLock<Arc<Binding>>,
    probation: Mutex<Probation>,
    on_probation: AtomicBool,
    /// Calls of the current binding that failed during its probation.
    candidate_failures: AtomicU64,
    /// The batch the sample was last added to (`u64::MAX`: none yet).
    sampled_batch: AtomicU64,
    /// Records added to the sample in that batch.
    sampled_records: std::sync::atomic::AtomicUsize,
    sample: Mutex<Option<Sample>>,
    checker: Checker,
}

impl std::fmt::Debug for BindingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingSlot")
            .field("name", &self.name)
            .field("generation", &self.shared.generation)
            .finish_non_exhaustive()
    }
}

impl BindingSlot {
    /// A slot running `plugin` with `config`, under `sandbox`.
    pub(super) fn new(
        plugin: Arc<Plugin>,
        config: Vec<(String, String)>,
        label: InstanceLabel,
        sandbox: Sandbox,
        checker: Checker,
    ) -> Self {
        Self {
            name: label.plugin.to_string(),
            metered: sandbox.limits.fuel.is_some(),
            label,
            sandbox: Arc::new(sandbox),
            key: InstanceKey::unique(),
            fallback_key: InstanceKey::unique(),
            shadow_key: InstanceKey::unique(),
            shadow: Mutex::new(None),
            in_shadow: AtomicBool::new(false),
            canary_key: InstanceKey::unique(),
            canary: Mutex::new(None),
            candidate_fuel: Arc::new(AtomicU64::new(0)),
            fuel_at_start: AtomicU64::new(0),
            batch_calls: AtomicU64::new(0),
            canary_share: AtomicU64::new(0),
            canary_by_value: AtomicBool::new(false),
            shared: Arc::new(SlotShared {
                shadow_generation: AtomicU64::new(u64::MAX),
                canary_generation: AtomicU64::new(u64::MAX),
                ..SlotShared::default()
            }),
            current: RwLock::new(Arc::new(Binding {
                plugin,
                config,
                generation: 0,
            })),
            probation: Mutex::new(Probation::default()),
            on_probation: AtomicBool::new(false),
            candidate_failures: AtomicU64::new(0),
            sampled_batch: AtomicU64::new(u64::MAX),
            sampled_records: std::sync::atomic::AtomicUsize::new(0),
            sample: Mutex::new(None),
            checker,
        }
    }

    /// Ties the slot to a run: once `retired` is set, workers drop its instances.
    pub(super) fn retired_by(&mut self, retired: Arc<AtomicBool>) {
        Arc::get_mut(&mut self.shared)
            .expect("the slot is not shared yet")
            .retired = retired;
    }

    /// The plugin's name in the pipeline file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stage the slot belongs to.
    pub fn stage(&self) -> &str {
        &self.label.stage
    }

    /// Whether a candidate must be compiled for the fuel-metering engine.
    pub fn metered(&self) -> bool {
        self.metered
    }

    /// The binding calls run now.
    pub fn current(&self) -> Arc<Binding> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The binding a call runs: the previous one when `fallback` is asked
    /// for during a probation, the current one otherwise.
    pub(crate) fn binding(&self, fallback: bool) -> Arc<Binding> {
        if fallback && let Some(previous) = self.lock_probation().previous.clone() {
            return previous;
        }
        self.current()
    }

    /// The route a call asking for `wanted` takes now: the fallback only
    /// during a probation, the shadow only while there is one.
    pub(super) fn route(&self, wanted: Route) -> Route {
        match wanted {
            Route::Fallback if self.on_probation() => Route::Fallback,
            Route::Shadow if self.in_shadow() => Route::Shadow,
            Route::Canary if self.in_canary() => Route::Canary,
            _ => Route::Current,
        }
    }

    /// The key of the instances on `route`.
    pub(super) fn key_of(&self, route: Route) -> InstanceKey {
        match route {
            Route::Current => self.key,
            Route::Fallback => self.fallback_key,
            Route::Shadow => self.shadow_key,
            Route::Canary => self.canary_key,
        }
    }

    /// The binding of `route`.
    pub(super) fn binding_of(&self, route: Route) -> Arc<Binding> {
        match route {
            Route::Shadow => match &*self.lock_shadow() {
                Some((binding, _)) => binding.clone(),
                None => self.current(),
            },
            Route::Canary => match &*self.lock_canary() {
                Some((binding, _)) => binding.clone(),
                None => self.current(),
            },
            route => self.binding(route == Route::Fallback),
        }
    }

    fn lock_shadow(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Binding>, ShadowStats)>> {
        self.shadow.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while a candidate runs in shadow.
    pub fn in_shadow(&self) -> bool {
        self.in_shadow.load(Ordering::Acquire)
    }

    /// Runs `plugin` with `config` in shadow from the next batch on
    /// (between batches), replacing any candidate in shadow.
    pub fn start_shadow(&self, plugin: Arc<Plugin>, config: Vec<(String, String)>) {
        let mut shadow = self.lock_shadow();
        *shadow = Some((
            next_binding(&self.shared.shadow_generation, plugin, config),
            ShadowStats::default(),
        ));
        self.start_fuel_count();
        self.in_shadow.store(true, Ordering::Release);
    }

    /// Ends the shadow (between batches); returns the candidate and how it compared.
    pub fn end_shadow(&self) -> Option<(Arc<Binding>, ShadowStats)> {
        let ended = self.lock_shadow().take();
        self.in_shadow.store(false, Ordering::Release);
        // Its instances go at the next sweep.
        let generation = self.shared.shadow_generation.load(Ordering::Acquire);
        self.shared
            .shadow_generation
            .store(generation.wrapping_add(1), Ordering::Release);
        ended
    }

    /// How the candidate in shadow compares so far, with its SHA-256.
    pub fn shadow_stats(&self) -> Option<(String, ShadowStats)> {
        let (live_fuel, candidate_fuel) = self.fuel_since_start();
        self.lock_shadow().as_ref().map(|(binding, stats)| {
            let stats = ShadowStats {
                live_fuel,
                candidate_fuel,
                ..stats.clone()
            };
            (binding.plugin.content_hash().to_owned(), stats)
        })
    }

    /// Starts counting the fuel of the current version and of a candidate
    /// apart (a shadow or a canary starts).
    fn start_fuel_count(&self) {
        self.candidate_fuel.store(0, Ordering::Relaxed);
        let stage = self.label.usage.fuel_used.load(Ordering::Relaxed);
        self.fuel_at_start.store(stage, Ordering::Relaxed);
    }

    /// Fuel the current version and the candidate burnt since the shadow
    /// or canary started.
    fn fuel_since_start(&self) -> (u64, u64) {
        let candidate = self.candidate_fuel.load(Ordering::Relaxed);
        let stage = self.label.usage.fuel_used.load(Ordering::Relaxed);
        let since = stage.saturating_sub(self.fuel_at_start.load(Ordering::Relaxed));
        (since.saturating_sub(candidate), candidate)
    }

    /// Adds one call's comparison: `diff` (`None`: the candidate failed)
    /// and the two versions' times.
    pub(super) fn shadow_call(
        &self,
        diff: Option<OutputDiff>,
        live_time: std::time::Duration,
        candidate_time: std::time::Duration,
    ) {
        let mut shadow = self.lock_shadow();
        let Some((_, stats)) = shadow.as_mut() else {
            return;
        };
        stats.live_time += live_time;
        stats.candidate_time += candidate_time;
        stats.streak.touch();
        match diff {
            None => {
                stats.candidate_failures += 1;
                stats.streak.spoil();
            }
            Some(diff) if !diff.is_empty() => {
                stats.only_live += diff.only_live;
                stats.only_candidate += diff.only_candidate;
                stats.different += diff.different;
                stats.streak.spoil();
                for key in diff.keys {
                    if stats.differing_keys.len() >= DIFF_KEYS {
                        break;
                    }
                    stats
                        .differing_keys
                        .insert(String::from_utf8_lossy(&key).into_owned());
                }
            }
            Some(_) => {}
        }
    }

    /// Ends a batch of the shadow (between batches); returns the stats so far.
    pub fn shadow_batch_done(&self) -> Option<ShadowStats> {
        let mut shadow = self.lock_shadow();
        let (_, stats) = shadow.as_mut()?;
        stats.streak.batch_done();
        Some(stats.clone())
    }

    fn lock_canary(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Binding>, CanaryStats)>> {
        self.canary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while a canary runs.
    pub fn in_canary(&self) -> bool {
        self.canary_share.load(Ordering::Acquire) > 0
    }

    /// Runs `plugin` with `config` as a canary from the next batch on
    /// (between batches): the keys whose hash falls in the first `share`
    /// ten-thousandths of the range go to it, the others stay with the
    /// current version.
    pub fn start_canary(&self, plugin: Arc<Plugin>, config: Vec<(String, String)>, share: u64) {
        let mut canary = self.lock_canary();
        *canary = Some((
            next_binding(&self.shared.canary_generation, plugin, config),
            CanaryStats {
                percent: share as f64 / 100.0,
                ..CanaryStats::default()
            },
        ));
        self.start_fuel_count();
        self.canary_by_value.store(!self.stateful(), Ordering::Release);
        self.canary_share.store(share, Ordering::Release);
    }

    /// Ends the canary (between batches); returns it and how it compared.
    pub fn end_canary(&self) -> Option<(Arc<Binding>, CanaryStats)> {
        let ended = self.lock_canary().take();
        self.canary_share.store(0, Ordering::Release);
        // Its instances go at the next sweep.
        let generation = self.shared.canary_generation.load(Ordering::Acquire);
        self.shared
            .canary_generation
            .store(generation.wrapping_add(1), Ordering::Release);
        ended
    }

    /// The canary and how it compares so far.
    pub fn canary_stats(&self) -> Option<(Arc<Binding>, CanaryStats)> {
        let (live_fuel, canary_fuel) = self.fuel_since_start();
        self.lock_canary().clone().map(|(binding, mut stats)| {
            stats.live.fuel = live_fuel;
            stats.canary.fuel = canary_fuel;
            (binding, stats)
        })
    }

    /// The ten-thousandths of the keys the canary gets (0: no canary).
    pub fn canary_share(&self) -> u64 {
        self.canary_share.load(Ordering::Acquire)
    }

    /// Counts a call of the slot's plugin (any route).
    pub(super) fn called(&self) {
        self.batch_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// True when the plugin was called since the last time this was asked
    /// (between batches): a batch without a call does not count towards a
    /// probation, a shadow's or a canary's clean batches.
    pub fn take_batch_calls(&self) -> bool {
        self.batch_calls.swap(0, Ordering::Relaxed) > 0
    }

    /// True when the slot's plugin keeps per-key state.
    pub fn stateful(&self) -> bool {
        self.current().plugin.info().kind.interface() == "keyed-state"
    }

    /// True when `key` goes to the canary (false when there is none).
    pub fn canary_owns(&self, key: Option<&[u8]>) -> bool {
        let share = self.canary_share.load(Ordering::Relaxed);
        share > 0
            && xxhash_rust::xxh3::xxh3_64_with_seed(key.unwrap_or_default(), CANARY_SEED) % 10_000 < share
    }

    /// True when `record` goes to the canary: by its key, or by its value
    /// when it has none and the plugin keeps no state.
    pub fn canary_owns_record(&self, record: crate::record::RecordRef<'_>) -> bool {
        match record.key {
            None if self.canary_by_value.load(Ordering::Relaxed) => self.canary_owns(Some(record.value)),
            key => self.canary_owns(key),
        }
    }

    /// Adds one call of `route` over `records` input records, which took
    /// `time` and failed unless `ok`.
    pub(super) fn canary_call(&self, route: Route, records: usize, ok: bool, time: std::time::Duration) {
        if let Some((_, stats)) = self.lock_canary().as_mut() {
            match route {
                Route::Canary => {
                    stats.canary.add(records, ok, time);
                    if records > 0 {
                        stats.streak.touch();
                    }
                    if !ok {
                        stats.streak.spoil();
                    }
                }
                _ => stats.live.add(records, ok, time),
            }
        }
    }

    /// Ends a batch of the canary (between batches); returns the stats so far.
    pub fn canary_batch_done(&self) -> Option<CanaryStats> {
        let mut canary = self.lock_canary();
        let (_, stats) = canary.as_mut()?;
        stats.streak.batch_done();
        Some(stats.clone())
    }

    fn lock_probation(&self) -> std::sync::MutexGuard<'_, Probation> {
        self.probation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the sample (its states were converted to another format).
    pub fn clear_sample(&self) {
        *self.sample.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.sampled_batch.store(u64::MAX, Ordering::Relaxed);
    }

    /// Keeps a sample of this batch's input: the first calls of a batch
    /// add theirs until it has [`SAMPLE_RECORDS`] records (later calls cost
    /// two atomic loads and do not call `sample`). Records are added to the
    /// newest of the earlier batches', so that the sample spans the recent
    /// batches, not only the last (which may be small).
    pub fn keep_sample(&self, batch: u64, sample: impl FnOnce() -> Sample) {
        if self.sampled_batch.load(Ordering::Relaxed) == batch
            && self.sampled_records.load(Ordering::Relaxed) >= SAMPLE_RECORDS
        {
            return;
        }
        let mut kept = self.sample.lock().unwrap_or_else(|e| e.into_inner());
        if self.sampled_batch.swap(batch, Ordering::Relaxed) != batch {
            self.sampled_records.store(0, Ordering::Relaxed);
        }
        let sample = sample();
        self.sampled_records.fetch_add(sample.len(), Ordering::Relaxed);
        *kept = Some(Sample::newest(kept.take(), sample));
    }

    /// Checks `plugin` with `config` as this slot's next binding: it
    /// exports the world the stage calls, instantiates under the stage's
    /// limits, accepts the configuration, and processes the sample of the
    /// stage's recent input (when the stage has seen any) without failing;
    /// with `migrate_from`, after converting the sample's states from that
    /// state version (`migrate-state`). Returns the number of sample
    /// records it was tried on.
    pub fn check(
        &self,
        plugin: &Arc<Plugin>,
        config: &[(String, String)],
        migrate_from: Option<u32>,
    ) -> Result<usize, PluginError> {
        let candidate = Binding {
            plugin: plugin.clone(),
            config: config.to_vec(),
            generation: 0,
        };
        let sample = self.sample.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.checker)(self, &candidate, sample.as_ref(), migrate_from)?;
        Ok(sample.as_ref().map_or(0, Sample::len))
    }

    /// Installs `plugin` with `config` as the current binding (between two
    /// batches: no call of the slot may run). With `probation` > 0 the
    /// binding it replaces stays as the fallback for that many batches.
    /// Returns the replaced binding.
    pub fn install(
        &self,
        plugin: Arc<Plugin>,
        config: Vec<(String, String)>,
        probation: u64,
    ) -> Arc<Binding> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let previous = current.clone();
        let generation = previous.generation + 1;
        *current = Arc::new(Binding {
            plugin,
            config,
            generation,
        });
        let mut state = self.lock_probation();
        state.previous = (probation > 0).then(|| previous.clone());
        state.batches_left = probation;
        self.shared
            .fallback_generation
            .store(previous.generation, Ordering::Release);
        self.shared.generation.store(generation, Ordering::Release);
        self.candidate_failures.store(0, Ordering::Relaxed);
        self.on_probation.store(probation > 0, Ordering::Release);
        previous
    }

    /// Batches left of the current binding's probation (0: none).
    pub fn probation_left(&self) -> u64 {
        if !self.on_probation() {
            return 0;
        }
        self.lock_probation().batches_left
    }

    /// True while the current binding is on probation.
    pub fn on_probation(&self) -> bool {
        self.on_probation.load(Ordering::Acquire)
    }

    /// Counts a failed call of the binding on probation.
    pub(super) fn candidate_failed(&self) {
        self.candidate_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Failed calls of the current binding during its probation so far.
    pub fn candidate_failures(&self) -> u64 {
        self.candidate_failures.load(Ordering::Relaxed)
    }

    /// Ends a batch of the probation (between batches). Returns true when
    /// it was the last one: the previous binding is then let go.
    pub fn probation_batch_done(&self) -> bool {
        if !self.on_probation() {
            return false;
        }
        let mut state = self.lock_probation();
        state.batches_left = state.batches_left.saturating_sub(1);
        if state.batches_left > 0 {
            return false;
        }
        state.previous = None;
        self.on_probation.store(false, Ordering::Release);
        // Outdated fallback instances go at the next sweep.
        self.shared.fallback_generation.store(u64::MAX, Ordering::Release);
        true
    }

    /// The binding on probation is given up for the previous one (between
    /// batches). Returns the binding given up, or `None` when there was no
    /// probation.
    pub fn roll_back(&self) -> Option<Arc<Binding>> {
        let previous = {
            let mut state = self.lock_probation();
            state.batches_left = 0;
            state.previous.take()?
        };
        let given_up = self.install(previous.plugin.clone(), previous.config.clone(), 0);
        Some(given_up)
    }
}

/// A binding of `plugin` with `config` as the next generation of
/// `generation` (a shadow's or a canary's), which is moved on to it: the
/// instances of the one before go at the next sweep.
fn next_binding(generation: &AtomicU64, plugin: Arc<Plugin>, config: PluginConfig) -> Arc<Binding> {
    let next = generation.load(Ordering::Acquire).wrapping_add(1);
    generation.store(next, Ordering::Release);
    Arc::new(Binding {
        plugin,
        config,
        generation: next,
    })
}

impl Sample {
    /// Records (or keys) in the sample.
    pub fn len(&self) -> usize {
        match self {
            Self::Records(batch) => batch.len(),
            Self::Groups { ends, .. } => ends.len(),
            Self::Keys(groups) => groups.group_ends.len(),
            Self::Pair(left, right) => left.len() + right.len(),
        }
    }

    /// True when the sample holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `newer` added to `older`: records keep the newest
    /// [`SAMPLE_RECORDS`] of both; other samples are replaced.
    fn newest(older: Option<Self>, newer: Self) -> Self {
        match (older, newer) {
            (Some(Self::Records(older)), Self::Records(newer)) => {
                let both = Batch::concat([&older, &newer]);
                let start = both.len().saturating_sub(SAMPLE_RECORDS);
                Self::Records(both.slice(start, both.len()))
            }
            (_, newer) => newer,
        }
    }

    /// The first [`SAMPLE_RECORDS`] records of `batch`.
    pub fn of_records(batch: &Batch) -> Self {
        Self::Records(batch.slice(0, batch.len().min(SAMPLE_RECORDS)))
    }

    /// The first groups of a reducer call, up to [`SAMPLE_RECORDS`] values.
    pub fn of_groups(data: &[u8], ends: &[u32], group_ends: &[u32]) -> Self {
        let groups = group_ends
            .iter()
            .take_while(|&&end| end as usize <= SAMPLE_RECORDS)
            .count()
            .max(1)
            .min(group_ends.len());
        let values = group_ends
            .get(groups.wrapping_sub(1))
            .map_or(0, |&end| end as usize);
        let bytes = values.checked_sub(1).map_or(0, |last| ends[last] as usize);
        Self::Groups {
            data: data[..bytes].to_vec(),
            ends: ends[..values].to_vec(),
            group_ends: group_ends[..groups].to_vec(),
        }
    }

    /// The first keys of a keyed-state call, up to [`SAMPLE_RECORDS`] of them.
    pub fn of_keys(groups: &KeyGroups) -> Self {
        let keys = groups.group_ends.len().min(SAMPLE_RECORDS);
        let prefix = |values: &crate::runtime::bindings::types::Values, n: usize| {
            let bytes = n.checked_sub(1).map_or(0, |last| values.ends[last] as usize);
            crate::runtime::bindings::types::Values {
                data: values.data[..bytes].to_vec(),
                ends: values.ends[..n].to_vec(),
            }
        };
        let values = keys
            .checked_sub(1)
            .map_or(0, |last| groups.group_ends[last] as usize);
        Self::Keys(KeyGroups {
            keys: prefix(&groups.keys, keys),
            values: prefix(&groups.values, values),
            timestamps: groups.timestamps[..values].to_vec(),
            group_ends: groups.group_ends[..keys].to_vec(),
            states: prefix(&groups.states, keys),
            group_flags: groups.group_flags[..keys].to_vec(),
            batch_time: groups.batch_time,
        })
    }

    /// The first records of both inputs.
    pub fn of_pair(left: &Batch, right: &Batch) -> Self {
        Self::Pair(
            left.slice(0, left.len().min(SAMPLE_RECORDS)),
            right.slice(0, right.len().min(SAMPLE_RECORDS)),
        )
    }
}
