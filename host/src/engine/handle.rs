//! A handle on a running pipeline: its status, live metrics and events, and
//! the requests it takes while it runs.

use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::broadcast;

use crate::error::EngineError;
use crate::pipeline::control::ControlMessage;
use crate::pipeline::live::Live;
use crate::pipeline::{
    BatchDetail, CheckpointRecord, ControlError, ControlReply, ControlRequest, PipelineEvent,
    PipelineMetrics, PipelineStatus, RollbackRule, Rollout, RunSummary, Signal, StopMode, SwapOrder,
    SwapReport, VersionRecord,
};

/// Identifies a pipeline within its engine (never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct PipelineId(pub u64);

impl std::fmt::Display for PipelineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// How a pipeline's run ended.
pub type Outcome = Result<RunSummary, Arc<EngineError>>;

/// The end of a run, for whoever waits for it.
#[derive(Debug, Default)]
pub(crate) struct Ending {
    outcome: Mutex<Option<Outcome>>,
    ended: Condvar,
}

impl Ending {
    /// Records how the run ended and wakes the waiters.
    pub(crate) fn set(&self, outcome: Outcome) {
        *self.outcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
        self.ended.notify_all();
    }
}

/// A running (or ended) pipeline. Cheap to clone; every clone is the same
/// pipeline.
#[derive(Debug, Clone)]
pub struct PipelineHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    id: PipelineId,
    name: String,
    namespace: Option<String>,
    checkpoint: Option<crate::checkpoint::CheckpointLocation>,
    live: Arc<Live>,
    signal: Signal,
    control: crossbeam_channel::Sender<ControlMessage>,
    ending: Arc<Ending>,
    /// What a hot-load's candidate is compiled with.
    runtime: Arc<crate::runtime::Runtime>,
    /// Its weight in the shared worker pool.
    weight: super::pool::ClientWeight,
}

/// A hot-load, as a caller asks for it: a new component for a stage's
/// plugin (see [`crate::pipeline::swap`]).
#[derive(Debug, Clone)]
pub struct SwapRequest {
    /// The stage.
    pub stage: String,
    /// The plugin within the stage (its name in the pipeline file), when
    /// the stage runs several.
    pub plugin: Option<String>,
    /// The component's bytes.
    pub component: Vec<u8>,
    /// What names the component in errors (its file).
    pub path: std::path::PathBuf,
    /// A new configuration; `None` keeps the current one.
    pub config: Option<Vec<(String, String)>>,
    /// Its probation, and when it is rolled back by itself.
    pub rule: RollbackRule,
    /// Immediately, or in shadow first.
    pub mode: Rollout,
    /// Who asks, for the history.
    pub by: Option<String>,
}

impl PipelineHandle {
    // One parameter per part of the handle; the engine is its only caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: PipelineId,
        name: String,
        namespace: Option<String>,
        checkpoint: Option<crate::checkpoint::CheckpointLocation>,
        live: Arc<Live>,
        signal: Signal,
        control: crossbeam_channel::Sender<ControlMessage>,
        ending: Arc<Ending>,
        runtime: Arc<crate::runtime::Runtime>,
        weight: super::pool::ClientWeight,
    ) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                id,
                name,
                namespace,
                checkpoint,
                live,
                signal,
                control,
                ending,
                runtime,
                weight,
            }),
        }
    }

    /// Its weight in the engine's worker pool: the tasks it may run in a
    /// row before another pipeline's turn (`None` once it has ended).
    pub fn cpu_weight(&self) -> Option<u32> {
        self.inner.weight.get()
    }

    /// Sets its weight in the worker pool (at least 1), from its next turn.
    pub fn set_cpu_weight(&self, weight: u32) {
        self.inner.weight.set(weight);
    }

    /// The pipeline's id in its engine.
    pub fn id(&self) -> PipelineId {
        self.inner.id
    }

    /// The pipeline's name (unique among an engine's running pipelines).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The namespace its name is unique in (a server's tenant), if any.
    pub fn namespace(&self) -> Option<&str> {
        self.inner.namespace.as_deref()
    }

    /// Where it checkpoints, when it does.
    pub fn checkpoint_location(&self) -> Option<&crate::checkpoint::CheckpointLocation> {
        self.inner.checkpoint.as_ref()
    }

    /// Its status now.
    pub fn status(&self) -> PipelineStatus {
        self.inner.live.status()
    }

    /// Its live figures now.
    pub fn metrics(&self) -> PipelineMetrics {
        self.inner.live.metrics()
    }

    /// The last `limit` of its recent batches (it keeps
    /// [`crate::pipeline::live::RECENT_BATCHES`]), oldest first, each with
    /// what every stage did in it.
    pub fn recent_batches(&self, limit: usize) -> Vec<BatchDetail> {
        self.inner.live.recent_batches(limit)
    }

    /// Recent batch `id`, if it is still kept.
    pub fn batch(&self, id: u64) -> Option<BatchDetail> {
        self.inner.live.batch(id)
    }

    /// The last checkpoints this run wrote, oldest first.
    pub fn checkpoints(&self) -> Vec<CheckpointRecord> {
        self.inner.live.checkpoint_history()
    }

    /// Its events from now on. A subscriber that falls more than a thousand
    /// events behind misses the oldest (the receiver says how many).
    pub fn subscribe(&self) -> broadcast::Receiver<PipelineEvent> {
        self.inner.live.subscribe()
    }

    /// Sends `request`, applied at the next batch boundary, and waits for
    /// its reply.
    pub fn control(&self, request: ControlRequest) -> Result<ControlReply, ControlError> {
        let ended = || ControlError::Ended(self.inner.name.clone());
        if self.inner.live.state().is_final() {
            return Err(ended());
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.inner
            .control
            .send(ControlMessage { request, reply })
            .map_err(|_| ended())?;
        self.inner.signal.notify();
        // The driver drops an unanswered request when it ends.
        answer.recv().map_err(|_| ended())?
    }

    /// Hot-loads `request`'s component into its stage at the next batch
    /// boundary: compiles it (off the pipeline's thread; the compiled-code
    /// cache makes a known component quick), then the driver checks it
    /// (kind, `init`, a dry run on the stage's recent input) and cuts over.
    /// A refusal says why; the running version is then untouched.
    pub fn swap(&self, request: SwapRequest) -> Result<SwapReport, ControlError> {
        let refused = |message: String| ControlError::Refused {
            pipeline: self.inner.name.clone(),
            message,
        };
        let metered = self.inner.live.stage_metered(&request.stage).ok_or_else(|| {
            refused(format!(
                "it has no stage `{}` that runs a Wasm plugin",
                request.stage
            ))
        })?;
        let candidate = self
            .inner
            .runtime
            .load_for(metered, &request.path, &request.component)
            .map_err(|error| refused(format!("swap refused: the candidate cannot be loaded: {error}")))?;
        let order = SwapOrder {
            stage: request.stage,
            plugin: request.plugin,
            candidate,
            bytes: Arc::from(request.component),
            config: request.config,
            rule: request.rule,
            mode: request.mode,
            by: request.by,
        };
        match self.control(ControlRequest::Swap(Box::new(order)))? {
            ControlReply::Swapped(report) => Ok(report),
            other => Err(refused(format!("unexpected reply to a swap: {other:?}"))),
        }
    }

    /// Promotes a stage plugin's candidate in shadow: it is swapped in.
    pub fn promote(
        &self,
        stage: &str,
        plugin: Option<&str>,
        by: Option<String>,
    ) -> Result<SwapReport, ControlError> {
        match self.control(ControlRequest::Promote {
            stage: stage.to_owned(),
            plugin: plugin.map(str::to_owned),
            by,
        })? {
            ControlReply::Swapped(report) => Ok(report),
            other => Err(ControlError::Refused {
                pipeline: self.inner.name.clone(),
                message: format!("unexpected reply to a promotion: {other:?}"),
            }),
        }
    }

    /// Returns a stage's plugin on probation to the version before it, or
    /// gives up its candidate in shadow.
    pub fn roll_back(
        &self,
        stage: &str,
        plugin: Option<&str>,
        by: Option<String>,
    ) -> Result<ControlReply, ControlError> {
        self.control(ControlRequest::RollBack {
            stage: stage.to_owned(),
            plugin: plugin.map(str::to_owned),
            by,
        })
    }

    /// Each stage plugin's last versions (`stage/plugin` → oldest first),
    /// with who asked for each, when, and how it ended.
    pub fn plugin_history(&self) -> std::collections::BTreeMap<String, Vec<VersionRecord>> {
        self.inner.live.plugin_history()
    }

    /// Stops cutting batches until [`PipelineHandle::resume`]; receivers
    /// are held back by their bounded queues, nothing is dropped.
    pub fn pause(&self) -> Result<ControlReply, ControlError> {
        self.control(ControlRequest::Pause)
    }

    /// Cuts batches again after a pause (also after a quarantine pause).
    pub fn resume(&self) -> Result<ControlReply, ControlError> {
        self.control(ControlRequest::Resume)
    }

    /// Asks the pipeline to stop; returns at once ([`PipelineHandle::wait`]
    /// waits for the end).
    pub fn stop(&self, mode: StopMode) {
        self.inner.signal.stop(mode);
    }

    /// Waits for the run to end and returns how it ended.
    pub fn wait(&self) -> Outcome {
        let ending = &self.inner.ending;
        let mut outcome = ending.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = ending.ended.wait(outcome).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// How the run ended, if it has.
    pub fn outcome(&self) -> Option<Outcome> {
        self.inner
            .ending
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
