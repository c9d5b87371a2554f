//! The WebAssembly runtime: one wasmtime [`Engine`] per process, the linker
//! that gives plugins their (few) imports, the cache of compiled components,
//! and loading of plugins.
//!
//! - [`bindings`]: `bindgen!` output for the WIT worlds.
//! - [`plugin`]: a loaded, pre-instantiated [`Plugin`].
//! - [`world`]: the five WIT worlds a plugin can export, as types.
//! - [`instance`]: warm [`Instance`]s of one world each, and the one call
//!   path every plugin call takes; [`calls`]: each world's calls.
//! - [`limits`], [`epoch`]: memory caps and call deadlines.
//! - [`outbound`]: the hosts and addresses a sink plugin may reach.
//! - [`state`], [`stderr`], [`logs`]: what each instance's store holds, its
//!   captured stdout and stderr, its stage's log budget.
//! - [`cache`]: compiled components on disk.
//! - [`error`]: [`PluginError`] and [`TrapKind`].

pub mod bindings;
pub mod cache;
pub mod calls;
pub mod catalog;
pub mod epoch;
pub mod error;
pub mod instance;
pub mod limits;
pub mod logs;
pub mod outbound;
pub mod plugin;
pub mod slicing;
pub mod state;
pub mod stderr;
pub mod world;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

pub use cache::{ComponentCache, content_hash};
pub use calls::{KeyGroups, SinkBatchInfo, SinkWriteError, StateUpdate, TransformOutput};
pub use catalog::{CatalogStats, PluginCatalog};
pub use error::{PluginError, TrapKind};
pub use instance::{
    CoTransformInstance, Instance, PluginInstance, ReducerInstance, SinkInstance, StateInstance,
    TransformInstance,
};
pub use limits::{CopyBound, CopyBudget, GUEST_DATA_DIR, GUEST_OUT_DIR, Grants, Limits, Sandbox};
pub use plugin::{CompiledPlugin, Plugin, PluginInfo, PluginKind};
pub use state::{InstanceLabel, InstanceUsage, PluginState};
pub use world::{CoTransformWorld, ReducerWorld, SinkWorld, StateWorld, TransformWorld, World};

/// One wasmtime engine and the linker of its plugins.
struct EngineLinker {
    engine: Engine,
    linker: Linker<PluginState>,
}

/// Live instances the pooling allocator can hold at once (per engine).
pub const POOLED_INSTANCES: u32 = 1_000;

impl EngineLinker {
    /// An engine using the pooling allocator (fresh instances after a trap
    /// come from preallocated slots), or the on-demand allocator when the
    /// pool's address space cannot be reserved.
    fn new(metered: bool, options: &RuntimeOptions) -> Result<Self, RuntimeError> {
        match Self::with_allocator(metered, options, true) {
            Ok(engine) => Ok(engine),
            Err(error) => {
                tracing::warn!("pooling allocator unavailable ({error}); using on-demand allocation");
                Self::with_allocator(metered, options, false)
            }
        }
    }

    fn with_allocator(metered: bool, options: &RuntimeOptions, pooled: bool) -> Result<Self, RuntimeError> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(metered)
            .max_wasm_stack(1 << 20)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        if options.perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if pooled {
            let mut pooling = wasmtime::PoolingAllocationConfig::new();
            pooling
                .total_component_instances(POOLED_INSTANCES)
                .total_core_instances(2 * POOLED_INSTANCES)
                .total_memories(POOLED_INSTANCES)
                .total_tables(2 * POOLED_INSTANCES)
                .max_memory_size(4 << 30);
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pooling));
        }
        let engine = Engine::new(&config).map_err(|e| RuntimeError(format!("{e:#}")))?;
        epoch::start_ticker(&engine, options.epoch_tick);
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;
        // Every plugin may import wasi:http; only a sink whose pipeline
        // allows hosts can reach one (`outbound::HttpAllowList`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        forbid_sleeping(&mut linker).map_err(|e| RuntimeError(format!("{e:#}")))?;
        bindings::log::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        bindings::v0_1::log::add_to_linker::<PluginState, HasSelf<PluginState>>(&mut linker, |s| s)
            .map_err(|e| RuntimeError(format!("{e:#}")))?;
        Ok(Self { engine, linker })
    }
}

/// How to set up a [`Runtime`].
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached (none: no cache).
    pub cache_dir: Option<PathBuf>,
    /// Write a perf map of compiled code so `perf` names plugin functions.
    pub perf_map: bool,
    /// Time between epoch ticks: how often a long call lends its worker to
    /// other pipelines and has its deadline checked ([`epoch::TICK`]).
    pub epoch_tick: std::time::Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            perf_map: false,
            epoch_tick: epoch::TICK,
        }
    }
}

/// The process-wide Wasm runtime. Cheap to share behind an [`Arc`].
///
/// It holds one engine for ordinary plugins and, created on first use, a
/// second one that meters fuel: fuel accounting costs every call (measured
/// +15–40%), so only stages that ask for a fuel budget pay for it.
pub struct Runtime {
    options: RuntimeOptions,
    plain: EngineLinker,
    metered: std::sync::OnceLock<Result<EngineLinker, String>>,
    cache: ComponentCache,
    catalog: PluginCatalog,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The runtime could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the WebAssembly runtime: {0}")]
pub struct RuntimeError(String);

impl Runtime {
    /// A runtime whose compiled components are cached in `cache_dir` (none: no cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, RuntimeError> {
        Self::with_options(RuntimeOptions {
            cache_dir,
            ..RuntimeOptions::default()
        })
    }

    /// A runtime set up as `options` say.
    pub fn with_options(options: RuntimeOptions) -> Result<Arc<Self>, RuntimeError> {
        Ok(Arc::new(Self {
            plain: EngineLinker::new(false, &options)?,
            metered: std::sync::OnceLock::new(),
            cache: ComponentCache::new(options.cache_dir.clone()),
            catalog: PluginCatalog::default(),
            options,
        }))
    }

    /// The shared engine of ordinary (unmetered) plugins.
    pub fn engine(&self) -> &Engine {
        &self.plain.engine
    }

    /// Reads, compiles (or loads from the cache), links and checks a plugin.
    pub fn load_plugin(&self, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_plugin_bytes(path, &bytes)
    }

    /// Like [`Runtime::load_plugin`], compiled for the fuel-metering engine:
    /// its instances run with a fuel budget per call.
    pub fn load_metered_plugin(&self, path: &Path) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load_metered_plugin_bytes(path, &bytes)
    }

    /// Like [`Runtime::load_metered_plugin`] for bytes already in memory; `path` names them.
    pub fn load_metered_plugin_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Plugin>, PluginError> {
        let metered = self
            .metered
            .get_or_init(|| EngineLinker::new(true, &self.options).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|message| PluginError::Compile {
                path: path.to_owned(),
                message: message.clone(),
            })?;
        self.load_with(metered, true, path, bytes)
    }

    /// Loads `bytes` for the engine a stage with (`metered`) or without a
    /// fuel budget runs its plugins on.
    pub fn load_for(&self, metered: bool, path: &Path, bytes: &[u8]) -> Result<Arc<Plugin>, PluginError> {
        if metered {
            self.load_metered_plugin_bytes(path, bytes)
        } else {
            self.load_plugin_bytes(path, bytes)
        }
    }

    /// Like [`Runtime::load_plugin`] for bytes already in memory; `path` names them.
    pub fn load_plugin_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Arc<Plugin>, PluginError> {
        self.load_with(&self.plain, false, path, bytes)
    }

    /// Interrupts every plugin call in progress at its next loop back-edge or
    /// function entry: each checks its deadline and lends its thread to
    /// waiting work ([`slicing`]), then goes on.
    pub fn interrupt_calls(&self) {
        self.plain.engine.increment_epoch();
        if let Some(Ok(metered)) = self.metered.get() {
            metered.engine.increment_epoch();
        }
    }

    /// The plugin catalog: compiled plugins shared by content hash.
    pub fn catalog(&self) -> &PluginCatalog {
        &self.catalog
    }

    fn load_with(
        &self,
        engine: &EngineLinker,
        metered: bool,
        path: &Path,
        bytes: &[u8],
    ) -> Result<Arc<Plugin>, PluginError> {
        if !bytes.starts_with(b"\0asm") {
            return Err(PluginError::Compile {
                path: path.to_owned(),
                message: "the file does not start with the WebAssembly magic bytes".into(),
            });
        }
        if wasmparser_is_core_module(bytes) {
            return Err(PluginError::Compile {
                path: path.to_owned(),
                message: "it is a core Wasm module, not a component: build plugins for the wasm32-wasip2 target (`weir plugin build DIR`)".into(),
            });
        }
        let hash = content_hash(bytes);
        let compiled = self.catalog.get_or_compile(&hash, metered, || {
            let component = self.cache.load(&engine.engine, bytes, &hash).map_err(|e| {
                match e.downcast_ref::<cache::UntrustedCache>() {
                    Some(untrusted) => PluginError::UntrustedCache(untrusted.to_string()),
                    None => PluginError::Compile {
                        path: path.to_owned(),
                        message: format!("{e:#}"),
                    },
                }
            })?;
            CompiledPlugin::new(path, hash.clone(), component, &engine.linker)
        })?;
        Ok(Arc::new(Plugin::new(path, compiled)))
    }
}

/// Replaces the monotonic clock's `subscribe-*` functions with ones that trap.
///
/// Epoch deadlines interrupt Wasm code, not a host call blocked in the sync
/// WASI `poll`: a plugin that sleeps (`std::thread::sleep` subscribes to the
/// monotonic clock, then blocks) would hold its worker past any deadline. No
/// Weir plugin needs to wait for anything, so waiting on the clock traps at
/// once. `now` and `resolution` stay available.
fn forbid_sleeping(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;

    linker.allow_shadowing(true);
    let started = std::time::Instant::now();
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("now", move |_, (): ()| Ok((started.elapsed().as_nanos() as u64,)))?;
    clock.func_wrap("resolution", |_, (): ()| Ok((1u64,)))?;
    let refuse = |what: &str| {
        wasmtime::format_err!(
            "plugins may not sleep or wait ({what} on the monotonic clock): a Weir plugin runs to completion on every call"
        )
    };
    clock.func_wrap(
        "subscribe-instant",
        move |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(refuse("subscribe-instant"))
        },
    )?;
    clock.func_wrap(
        "subscribe-duration",
        move |_, (_,): (u64,)| -> wasmtime::Result<(Resource<DynPollable>,)> {
            Err(refuse("subscribe-duration"))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Core modules have version 1 and layer 0 in their preamble; components
/// have layer 1.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[4..8] == [1, 0, 0, 0]
}
