//! What each plugin instance's `Store` holds: its WASI context (empty: no
//! files, no environment, no sockets, unless its stage grants them), its
//! `wasi:http` context (no host, unless its sink allows some), its resource
//! limits, its captured stdout and stderr, and where its log messages go
//! (through its stage's [`LogBudget`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::log;
use super::limits::{GUEST_DATA_DIR, GUEST_OUT_DIR, Limits, Sandbox};
use super::logs::{Admission, LogBudget};
use super::outbound::{HttpAllowList, socket_check};
use super::stderr::OutputCapture;

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
    /// Where the fuel of a hot-load candidate's instances (in shadow or a
    /// canary) is also counted, to report it apart from the current version's.
    pub candidate_fuel: Option<Arc<AtomicU64>>,
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
    /// Instances replaced between calls because their memory had outgrown
    /// them ([`crate::runtime::Instance::outgrown`]).
    pub instances_replaced: AtomicU64,
    /// The stage's log budget (and the count of messages it dropped).
    pub logs: LogBudget,
}

/// The data of one plugin instance's store.
pub struct PluginState {
    wasi: WasiCtx,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: HttpAllowList,
    table: ResourceTable,
    pub(crate) limits: MemoryBudget,
    /// The clock of the call in progress (its deadline, time lent to others).
    pub(crate) call: super::slicing::CallClock,
    label: InstanceLabel,
    /// The stage's limits (for its log budget).
    log_limits: Limits,
}

impl PluginState {
    /// A state with only the capabilities `sandbox` grants, stdout and
    /// stderr going to the bounded captures `stdout` and `stderr`. Fails when
    /// a granted directory cannot be opened.
    pub fn new(
        sandbox: &Sandbox,
        stdout: OutputCapture,
        stderr: OutputCapture,
        label: InstanceLabel,
    ) -> Result<Self, String> {
        let mut wasi = WasiCtxBuilder::new();
        let grants = &sandbox.grants;
        let connects = !grants.connect.is_empty();
        wasi.stdout(stdout)
            .stderr(stderr)
            .allow_tcp(connects)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(socket_check(&grants.connect));
        for (key, value) in &grants.env {
            wasi.env(key, value);
        }
        let granted = [
            (&grants.read_dir, GUEST_DATA_DIR, wasmtime_wasi::FsPerms::ReadOnly),
            (
                &grants.write_dir,
                GUEST_OUT_DIR,
                wasmtime_wasi::FsPerms::ReadWrite,
            ),
        ];
        for (dir, guest_path, perms) in granted {
            let Some(dir) = dir else { continue };
            let cannot = |e: &dyn std::fmt::Display| {
                format!(
                    "cannot open the granted directory {}: {e:#}",
                    dir.path().display()
                )
            };
            // Opened through cap-std (from the tenant's root when confined:
            // a link planted since the deploy cannot lead out), then handed
            // to WASI by its descriptor, never by its path again. A writable
            // directory is created if missing.
            let writable = perms == wasmtime_wasi::FsPerms::ReadWrite;
            let opened = dir.open(writable).map_err(|e| cannot(&e))?;
            let by_descriptor = descriptor_path(&opened);
            wasi.preopened_dir(&by_descriptor, guest_path, perms)
                .map_err(|e| cannot(&e))?;
        }
        let wasi = wasi.build();
        let http_hooks = HttpAllowList::new(&grants.http, sandbox.limits.call_deadline);
        let limits = MemoryBudget {
            limit: sandbox.limits.memory_bytes,
            used: 0,
            table_elements: sandbox.limits.table_elements,
            usage: label.usage.clone(),
        };
        label.usage.instances.fetch_add(1, Ordering::Relaxed);
        Ok(Self {
            wasi,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
            table: ResourceTable::new(),
            limits,
            call: super::slicing::CallClock::default(),
            label,
            log_limits: sandbox.limits.clone(),
        })
    }
}

/// A path that opens `dir` itself, whatever is at its path now:
/// `/proc/self/fd/N`, a link to the open directory (Linux).
fn descriptor_path(dir: &cap_std::fs::Dir) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

impl PluginState {
    /// Who the instance runs for.
    pub fn label(&self) -> &InstanceLabel {
        &self.label
    }
}

/// A plugin tried to grow its memory or a table past its limit: the error
/// the limiter raises (classified as [`super::TrapKind::Memory`] by type,
/// whose name, `memory limit`, comes before this message in the trap's).
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

impl MemoryBudget {
    /// Bytes of linear memory (all memories together) the instance holds.
    pub fn used(&self) -> usize {
        self.used
    }

    /// The most it may hold.
    pub fn limit(&self) -> usize {
        self.limit
    }
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
                "growing linear memory to {desired} bytes would take the instance to {after} bytes, over its limit of {} bytes",
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
                "growing a table to {desired} elements is over the limit of {}",
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

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

impl log::Host for PluginState {
    /// Writes a plugin's message to the host's log, tagged with pipeline,
    /// stage and plugin: cut to [`super::logs::MAX_LOG_MESSAGE`] bytes, and
    /// only if the stage's [`LogBudget`] has room (a message the log filter
    /// would not show costs nothing).
    fn write(&mut self, level: log::Level, message: String) {
        let shown = match level {
            log::Level::Trace => tracing::enabled!(target: "weir::plugin", tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: "weir::plugin", tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: "weir::plugin", tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: "weir::plugin", tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: "weir::plugin", tracing::Level::ERROR),
        };
        if !shown {
            return;
        }
        let message = super::logs::cut(message);
        let label = &self.label;
        let (pipeline, stage, plugin) = (&*label.pipeline, &*label.stage, &*label.plugin);
        let limits = &self.log_limits;
        match label
            .usage
            .logs
            .admit(message.len(), limits, std::time::Instant::now())
        {
            Admission::Write => {}
            Admission::Drop => return,
            Admission::DropAndWarn(dropped) => {
                tracing::warn!(
                    pipeline,
                    stage,
                    plugin,
                    "the plugin writes more log than its stage allows ({} messages and {} bytes per second: \
                     limits log-messages-per-second and log-bytes-per-second); {dropped} messages dropped so far",
                    limits.log_messages_per_second,
                    limits.log_bytes_per_second,
                );
                return;
            }
        }
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

impl super::bindings::v0_1::log::Host for PluginState {
    /// A 0.1 plugin's message: written as a current one's.
    fn write(&mut self, level: super::bindings::v0_1::log::Level, message: String) {
        use super::bindings::v0_1::log::Level as Old;
        let level = match level {
            Old::Trace => log::Level::Trace,
            Old::Debug => log::Level::Debug,
            Old::Info => log::Level::Info,
            Old::Warn => log::Level::Warn,
            Old::Error => log::Level::Error,
        };
        log::Host::write(self, level, message);
    }
}
