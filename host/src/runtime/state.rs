//! What each plugin instance's `Store` holds: its WASI context (empty: no
//! files, no environment, no sockets), its resource limits, its captured
//! stderr, and where its log messages go.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::log;
use super::limits::{GUEST_DATA_DIR, Sandbox};
use super::stderr::StderrCapture;

/// Who is calling: attached to every log line a plugin writes, with the
/// counters its instances' resource use goes to.
#[derive(Debug, Clone, Default)]
pub struct InstanceLabel {
    /// The pipeline.
    pub pipeline: Arc<str>,
    /// The stage.
    pub stage: Arc<str>,
    /// The plugin's name in the pipeline file.
    pub plugin: Arc<str>,
    /// Where the instances' resource use is counted (one per stage).
    pub usage: Arc<InstanceUsage>,
}

/// What the live instances of one stage's plugin use, over every worker.
#[derive(Debug, Default)]
pub struct InstanceUsage {
    /// Instances alive.
    pub instances: AtomicU64,
    /// Their linear memory together, in bytes.
    pub memory_bytes: AtomicU64,
    /// Fuel their calls burnt (metered stages only).
    pub fuel_used: AtomicU64,
}

/// Longest log message kept from a plugin; the rest is cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// The data of one plugin instance's store.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: MemoryBudget,
    /// The clock of the call in progress (its deadline, time lent to others).
    pub(crate) call: super::slicing::CallClock,
    label: InstanceLabel,
}

impl PluginState {
    /// A state with only the capabilities `sandbox` grants, stderr going to
    /// `stderr`. Fails when a granted directory cannot be opened.
    pub fn new(sandbox: &Sandbox, stderr: StderrCapture, label: InstanceLabel) -> Result<Self, String> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &sandbox.grants.env {
            wasi.env(key, value);
        }
        if let Some(dir) = &sandbox.grants.read_dir {
            wasi.preopened_dir(dir, GUEST_DATA_DIR, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| format!("cannot open the granted directory {}: {e:#}", dir.display()))?;
        }
        let wasi = wasi.build();
        let limits = MemoryBudget {
            limit: sandbox.limits.memory_bytes,
            used: 0,
            table_elements: sandbox.limits.table_elements,
            usage: label.usage.clone(),
        };
        label.usage.instances.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            wasi,
            table: ResourceTable::new(),
            limits,
            call: super::slicing::CallClock::default(),
            label,
        })
    }
}

impl PluginState {
    /// Who the instance runs for.
    pub fn label(&self) -> &InstanceLabel {
        &self.label
    }
}

/// A plugin tried to grow its memory or a table past its limit: the error
/// the limiter raises (classified as [`super::TrapKind::Memory`] by type).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MemoryLimitExceeded(pub String);

/// Caps the linear memory of a whole instance (all its memories together)
/// and the size of each table. A refused grow traps, with a message that
/// says which limit was hit.
pub struct MemoryBudget {
    limit: usize,
    used: usize,
    table_elements: usize,
    usage: Arc<InstanceUsage>,
}

impl Drop for MemoryBudget {
    fn drop(&mut self) {
        // The store (and with it the instance and its memory) is going away.
        self.usage.instances.fetch_sub(1, Ordering::Relaxed);
        self.usage
            .memory_bytes
            .fetch_sub(self.used as u64, Ordering::Relaxed);
    }
}

/// Core instances, memories and tables one plugin instance may create.
const MAX_PARTS: usize = 64;

impl ResourceLimiter for MemoryBudget {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_add(desired.saturating_sub(current));
        if after > self.limit {
            return Err(MemoryLimitExceeded(format!(
                "memory limit: growing linear memory to {desired} bytes would take the instance to {after} bytes, over its limit of {} bytes",
                self.limit
            ))
            .into());
        }
        self.usage
            .memory_bytes
            .fetch_add((after - self.used) as u64, Ordering::Relaxed);
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(MemoryLimitExceeded(format!(
                "memory limit: growing a table to {desired} elements is over the limit of {}",
                self.table_elements
            ))
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_PARTS
    }

    fn memories(&self) -> usize {
        MAX_PARTS
    }

    fn tables(&self) -> usize {
        MAX_PARTS
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl log::Host for PluginState {
    fn write(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let label = &self.label;
        let (pipeline, stage, plugin) = (&*label.pipeline, &*label.stage, &*label.plugin);
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "weir::plugin", pipeline, stage, plugin, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "weir::plugin", pipeline, stage, plugin, "{message}")
            }
            log::Level::Info => tracing::info!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "weir::plugin", pipeline, stage, plugin, "{message}"),
            log::Level::Error => {
                tracing::error!(target: "weir::plugin", pipeline, stage, plugin, "{message}")
            }
        }
    }
}

impl super::bindings::types::Host for PluginState {}
