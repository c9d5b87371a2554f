//! The live engine: one process-wide place that pipelines are added to,
//! watched, changed and removed from while they run.
//!
//! ```text
//! Engine ── Runtime (one wasmtime engine, compiled-code cache, plugin catalog)
//!   │   ├── WorkerPool (one, sized to the cores, fair across pipelines)
//!   │   └── tokio runtime (one, for every pipeline's receivers)
//!   └── Supervisor ── PipelineHandle (status, metrics, events, control) ── driver thread
//! ```
//!
//! [`Engine::prepare`] parses and validates a pipeline file and loads its
//! plugins through the shared catalog; [`Engine::start`] starts it and
//! returns its [`PipelineHandle`]. The `weir` CLI runs every pipeline this
//! way, and so will the server.
//!
//! ```no_run
//! use std::path::Path;
//! use weir::engine::{Engine, EngineOptions};
//! use weir::pipeline::{RunOptions, StopMode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(EngineOptions::default())?;
//! let text = std::fs::read_to_string("wordcount.toml")?;
//! let prepared = engine.prepare(&text, Path::new("wordcount.toml"))?;
//! let handle = engine.start(prepared, RunOptions::default())?;
//! std::thread::sleep(std::time::Duration::from_secs(2));
//! let metrics = handle.metrics();
//! println!("{} batches, p99 processing {:?}", metrics.batches, metrics.processing_time.p99);
//! handle.stop(StopMode::Graceful);
//! let summary = handle.wait()?;
//! println!("{summary}");
//! # Ok(())
//! # }
//! ```

pub mod handle;
mod latency;
pub mod pool;
pub mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use handle::{Outcome, PipelineHandle, PipelineId, SwapRequest};
pub use pool::WorkerPool;
pub use supervisor::Supervisor;

use crate::config::{self, PipelineSpec};
use crate::error::EngineError;
use crate::pipeline::live::Live;
use crate::pipeline::runner::Drive;
use crate::pipeline::{Pipeline, PluginRegistry, RunOptions, Signal};
use crate::runtime::{CatalogStats, Runtime, RuntimeOptions};

/// How to set up an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Where compiled components are cached (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Worker threads of the shared pool (default: the number of cores).
    pub workers: Option<usize>,
    /// Threads of the runtime that runs every pipeline's receivers.
    pub io_threads: usize,
    /// Where pipelines spill keyed state; each pipeline gets a directory of
    /// its own below it, named after its id.
    pub state_dir: PathBuf,
    /// Write a perf map of compiled plugin code (`/tmp/perf-PID.map`) so
    /// `perf` names plugin functions.
    pub perf_map: bool,
    /// Time between epoch ticks: how often a long plugin call lends its
    /// worker to other pipelines and has its deadline checked.
    pub epoch_tick: std::time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            workers: None,
            io_threads: 2,
            state_dir: std::env::temp_dir().join("weir-state"),
            perf_map: false,
            epoch_tick: crate::runtime::epoch::TICK,
        }
    }
}

/// A pipeline parsed, planned and checked, with its plugins loaded: ready
/// to [`Engine::start`].
pub struct Prepared {
    id: PipelineId,
    namespace: Option<String>,
    spec: PipelineSpec,
    pipeline: Pipeline,
    state_dir: PathBuf,
    /// Each stage plugin's versions before this run (a server's record).
    history: std::collections::BTreeMap<String, Vec<crate::pipeline::VersionRecord>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("id", &self.id)
            .field("name", &self.spec.name)
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// The id the pipeline will run under.
    pub fn id(&self) -> PipelineId {
        self.id
    }

    /// Puts the pipeline in `namespace` (a server's tenant): its name need
    /// only be unique among the running pipelines of that namespace.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Starts the run's plugin version histories (`stage/plugin`) with
    /// `history`, the versions of earlier runs (a server restores them).
    pub fn with_history(
        mut self,
        history: std::collections::BTreeMap<String, Vec<crate::pipeline::VersionRecord>>,
    ) -> Self {
        self.history = history;
        self
    }

    /// The validated pipeline file.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// The planned pipeline (to replace its sinks when embedding).
    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// The planned pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
}

struct Shared {
    runtime: Arc<Runtime>,
    pool: Arc<WorkerPool>,
    io: Arc<tokio::runtime::Runtime>,
    supervisor: Supervisor,
    next_id: AtomicU64,
    state_dir: PathBuf,
}

/// The live engine. Cheap to clone; every clone is the same engine.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.shared.pool.threads())
            .field("pipelines", &self.shared.supervisor.list().len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Sets up the Wasm runtime, the worker pool and the receivers' runtime.
    pub fn new(options: EngineOptions) -> Result<Self, EngineError> {
        let runtime = Runtime::with_options(RuntimeOptions {
            cache_dir: options.cache_dir.clone(),
            perf_map: options.perf_map,
            epoch_tick: options.epoch_tick,
        })?;
        let io_error = |what: &str, e: std::io::Error| EngineError::Io(format!("cannot start {what}: {e}"));
        let workers = options
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let calls = Arc::downgrade(&runtime);
        let nudge: pool::Nudge = Box::new(move || {
            if let Some(runtime) = calls.upgrade() {
                runtime.interrupt_calls();
            }
        });
        let pool = WorkerPool::new(workers, Some(nudge)).map_err(|e| io_error("the worker pool", e))?;
        let io = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.io_threads.max(1))
            .thread_name("weir-io")
            .on_thread_start(latency::request_short_slice)
            .enable_all()
            .build()
            .map_err(|e| io_error("the receivers' runtime", e))?;
        Ok(Self {
            shared: Arc::new(Shared {
                runtime,
                pool: Arc::new(pool),
                io: Arc::new(io),
                supervisor: Supervisor::default(),
                next_id: AtomicU64::new(1),
                state_dir: options.state_dir.join(std::process::id().to_string()),
            }),
        })
    }

    /// The Wasm runtime every pipeline's plugins are loaded through.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.shared.runtime
    }

    /// The engine's pipelines.
    pub fn supervisor(&self) -> &Supervisor {
        &self.shared.supervisor
    }

    /// The plugin catalog's figures: compiled plugins in use, hits, compiles.
    pub fn catalog(&self) -> CatalogStats {
        self.shared.runtime.catalog().stats()
    }

    /// Worker threads of the shared pool.
    pub fn worker_threads(&self) -> usize {
        self.shared.pool.threads()
    }

    /// Tasks that ran inside another pipeline's long plugin call (time-slicing).
    pub fn lent_tasks(&self) -> u64 {
        self.shared.pool.nested_runs()
    }

    /// Parses and validates the pipeline in `text` (`path` names it in
    /// errors), loads its plugins and plans it.
    pub fn prepare(&self, text: &str, path: &Path) -> Result<Prepared, EngineError> {
        self.prepare_with(text, path, |_| {})
    }

    /// Reads and prepares the pipeline file at `path`.
    pub fn prepare_file(&self, path: &Path) -> Result<Prepared, EngineError> {
        let spec = config::load(path)?;
        self.prepare_spec(spec, path, |_| {})
    }

    /// Like [`Engine::prepare`]; `register` may first register native
    /// functions in the pipeline's registry (they take precedence over
    /// `[plugins]`).
    pub fn prepare_with(
        &self,
        text: &str,
        path: &Path,
        register: impl FnOnce(&mut PluginRegistry),
    ) -> Result<Prepared, EngineError> {
        let spec = config::parse(text, path)?;
        self.prepare_spec(spec, path, register)
    }

    /// Prepares a pipeline already parsed and validated (with
    /// [`config::parse_in`], say, and checked against a server's policy).
    /// `spill`: where its keyed state spills (in a directory of its own
    /// below it); `None`: below the engine's `state_dir`.
    pub fn prepare_parsed(
        &self,
        spec: PipelineSpec,
        path: &Path,
        spill: Option<&Path>,
    ) -> Result<Prepared, EngineError> {
        self.prepare_in(spec, path, spill, |_| {})
    }

    fn prepare_spec(
        &self,
        spec: PipelineSpec,
        path: &Path,
        register: impl FnOnce(&mut PluginRegistry),
    ) -> Result<Prepared, EngineError> {
        self.prepare_in(spec, path, None, register)
    }

    fn prepare_in(
        &self,
        spec: PipelineSpec,
        path: &Path,
        spill: Option<&Path>,
        register: impl FnOnce(&mut PluginRegistry),
    ) -> Result<Prepared, EngineError> {
        let mut registry = PluginRegistry::new(self.shared.runtime.clone());
        register(&mut registry);
        registry.load_declared(&spec)?;
        let id = PipelineId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let state_dir = spill
            .unwrap_or(&self.shared.state_dir)
            .join(format!("{id}-{}", spec.name));
        let pipeline = Pipeline::build(&spec, &registry, &path.display().to_string(), &state_dir)?;
        Ok(Prepared {
            id,
            namespace: None,
            spec,
            pipeline,
            state_dir,
            history: Default::default(),
        })
    }

    /// Starts `plugin` of `stage` in `prepared` on `component` instead of the
    /// pipeline file's version (with `config`, or the file's): what a server
    /// restores after a hot-load. The component must be a plugin of the
    /// same kind; it passed a hot-load's checks when it was first swapped
    /// in, and starting checks that its `init` takes the configuration.
    pub fn pin_plugin(
        &self,
        prepared: &mut Prepared,
        stage: &str,
        plugin: &str,
        component: &[u8],
        path: &Path,
        config: Option<Vec<(String, String)>>,
    ) -> Result<(), EngineError> {
        let pinned = |message: String| EngineError::Plan {
            location: format!("pipeline `{}`", prepared.spec.name),
            message: format!("stage `{stage}`, plugin `{plugin}`: {message}"),
        };
        let slots: Vec<_> = crate::pipeline::swap::plan_slots(prepared.pipeline.plan())
            .into_iter()
            .filter(|slot| slot.stage() == stage && slot.name() == plugin)
            .collect();
        let Some(first) = slots.first() else {
            return Err(pinned("no such plugin in the pipeline".into()));
        };
        let loaded = self
            .shared
            .runtime
            .load_for(first.metered(), path, component)
            .map_err(|error| pinned(format!("cannot load its pinned version: {error}")))?;
        let current = first.current();
        if loaded.info().kind != current.plugin.info().kind {
            return Err(pinned(format!(
                "its pinned version is a plugin of kind `{}`, the stage runs one of kind `{}`",
                loaded.info().kind.name(),
                current.plugin.info().kind.name()
            )));
        }
        let config = config.unwrap_or_else(|| current.config.clone());
        for slot in slots {
            slot.install(loaded.clone(), config.clone(), 0);
        }
        Ok(())
    }

    /// Starts `prepared` on its own driver thread; its stages run on the
    /// shared pool. Refused while another running pipeline has its name or
    /// its checkpoint directory.
    pub fn start(&self, prepared: Prepared, options: RunOptions) -> Result<PipelineHandle, EngineError> {
        let Prepared {
            id,
            namespace,
            spec: _,
            pipeline,
            state_dir,
            history,
        } = prepared;
        pipeline.check_options(&options)?;
        let name = pipeline.name().to_owned();
        let plan = pipeline.plan().clone();
        let live = Arc::new(Live::new(
            pipeline.plan().clone(),
            pipeline.batch_interval(),
            pipeline.stage_plugins().to_vec(),
        ));
        live.seed_history(history);
        let signal = Signal::new();
        let (control, requests) = crossbeam_channel::unbounded();
        let ending = Arc::new(handle::Ending::default());
        let pool = self.shared.pool.client(options.weight.max(1));
        let handle = PipelineHandle::new(
            id,
            name.clone(),
            namespace,
            pipeline.checkpoint_location().cloned(),
            live.clone(),
            signal.clone(),
            control,
            ending.clone(),
            self.shared.runtime.clone(),
            pool.weight_control(),
        );
        self.shared.supervisor.register(&handle)?;
        let drive = Drive {
            pool,
            io: self.shared.io.handle().clone(),
            live: live.clone(),
            signal,
            control: requests,
            options,
            runtime: self.shared.runtime.clone(),
        };
        // The driver keeps the pool and the receivers' runtime alive while it runs.
        let (pool, io) = (self.shared.pool.clone(), self.shared.io.clone());
        let (failed_live, failed_ending) = (live.clone(), ending.clone());
        let driver = move || {
            latency::request_short_slice();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.drive(drive)))
                .unwrap_or_else(|panic| {
                    Err(EngineError::Io(format!(
                        "internal error: the pipeline's driver panicked: {}",
                        pool::panic_message(&*panic)
                    )))
                })
                .map_err(Arc::new);
            pool::release_caller_instances();
            plan.retire();
            pool.sweep();
            let _ = std::fs::remove_dir_all(&state_dir);
            live.finish(outcome.as_ref().err().map(|error| error.to_string()));
            ending.set(outcome);
            drop((pool, io));
        };
        if let Err(error) = std::thread::Builder::new()
            .name(format!("weir-pipeline-{id}"))
            // Room for a plugin call's Wasm stack: the driver runs its own
            // short tasks when every worker is busy.
            .stack_size(pool::WORKER_STACK)
            .spawn(driver)
        {
            let message = format!("cannot start pipeline `{name}`'s driver thread: {error}");
            // It ends here: its handle says so, and its name is free again.
            failed_live.finish(Some(message.clone()));
            failed_ending.set(Err(Arc::new(EngineError::Io(message.clone()))));
            return Err(EngineError::Io(message));
        }
        Ok(handle)
    }
}
