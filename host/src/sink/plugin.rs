//! Sinks written as plugins (`type = "plugin"`): Spark's `foreachRDD`,
//! sandboxed. A component exporting the `sink-plugin` world gets each
//! batch of the sink's input stream, once per non-empty partition (`per =
//! "partition"`, the default, up to `concurrency` partitions at once) or
//! once with every record (`per = "batch"`), and writes it wherever its
//! capabilities let it:
//!
//! - `allow-http`: the `host:port`s it may send HTTP(S) requests to
//!   (`wasi:http`); any other is denied.
//! - `write-dir`: a directory it may read and write, at `/out` (cap-std;
//!   created if missing).
//! - `allow-connect`: the `host:port`s it may open TCP connections to
//!   (`wasi:sockets`; the host resolves names, the plugin connects by
//!   address).
//! - `env`: environment variables (credentials, say).
//!
//! It gets nothing else: no other file, host or address. Its instances have
//! the pipeline's `[limits]` (or the sink's own `limits`): memory, and a
//! call deadline that also bounds every HTTP request up to its answer's
//! head (not the waits of an `allow-connect` socket: see
//! [`crate::runtime::outbound`]). No fuel: its time goes to I/O.
//!
//! Delivery: the runner hands a batch to plugin sinks after the batch's
//! other sinks. Every call carries the pipeline, the sink, the batch id and
//! the partition, the same when a batch is written again (a retry, or a
//! re-run after a crash when the pipeline checkpoints): a plugin that
//! writes idempotently by them makes the sink exactly once; otherwise it
//! is at least once. Without a checkpoint directory batch ids start again
//! at 0 every run, so the call also names the run (`run-<start ms>`).
//!
//! Failures: a trap, or a `transient` error the plugin returns, is retried
//! `retries` times (default 3; a fresh instance after a trap) with backoff
//! from 100 ms doubling to 5 s; a `permanent` error is not. Then `on-error`
//! applies: `fail` (the default) fails the run, which resumes from its last
//! checkpoint; `skip-batch` logs the failure and goes on without that
//! partition's write, until `quarantine-after` (default 5) batches in a
//! row had one: then the run fails too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{BatchInfo, Sink, SinkContext, SinkError};
use crate::config::{
    DirPath, Key, KindContext, Reach, Settings, SinkConfig, SinkSpec, SinkType, SpecError, one_or_many,
};
use crate::failpoint::crash_point;
use crate::record::{Batch, Partition};
use crate::runtime::{
    Grants, InstanceLabel, InstanceUsage, Plugin, PluginError, PluginKind, Sandbox, SinkBatchInfo,
    SinkInstance, SinkWriteError,
};

/// How much of a batch one `write` call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePer {
    /// One call per non-empty partition.
    Partition,
    /// One call with every record of the batch.
    Batch,
}

/// What a write that still fails after its retries does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginSinkOnError {
    /// Fail the run.
    Fail,
    /// Log it and go on without that write.
    SkipBatch,
}

/// Settings of a plugin sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSinkSpec {
    /// The plugin's name in `[plugins]`.
    pub plugin: String,
    /// The sink's `config` table, for the plugin's `init`.
    pub config: Vec<(String, String)>,
    /// How much of a batch one call carries.
    pub per: WritePer,
    /// Partitions written at once (each on its own instance).
    pub concurrency: usize,
    /// The instances' limits and capabilities.
    pub sandbox: Sandbox,
    /// Tries after the first.
    pub retries: u32,
    /// What a write that still fails does.
    pub on_error: PluginSinkOnError,
    /// Consecutive batches with a skipped write after which the run fails
    /// (`skip-batch` only).
    pub quarantine_after: u32,
}

/// Retries of a failed write unless the sink says.
const DEFAULT_RETRIES: u32 = 3;

/// Consecutive batches with a skipped write before the run fails, unless
/// the sink says (as for a stage).
const DEFAULT_QUARANTINE_AFTER: u32 = 5;

/// The most retries a sink may ask for.
const MAX_RETRIES: u32 = 100;

impl SinkType for PluginSinkSpec {
    const NAME: &'static str = "plugin";
    const KEYS: &'static [Key] = &[
        Key::text("plugin"),
        Key::any("config"),
        Key::text("per"),
        Key::integer("concurrency"),
        Key::any("allow-http"),
        Key::any("allow-connect"),
        Key::text("write-dir"),
        Key::any("env"),
        Key::any("limits"),
        Key::integer("retries"),
        Key::text("on-error"),
        Key::integer("quarantine-after"),
    ];

    fn parse(settings: &Settings, cx: &KindContext<'_>) -> Result<Self, SpecError> {
        let at = |key: &str| settings.text(key).map(|t| t.span().start).unwrap_or(cx.offset);
        let plugin =
            crate::config::required(settings.text("plugin"), "plugin", cx.offset, "a `plugin` sink")?;
        if !cx.plugins.contains_key(plugin) {
            let known: Vec<&str> = cx.plugins.keys().map(String::as_str).collect();
            return Err((
                at("plugin"),
                format!(
                    "unknown plugin `{plugin}` (declare it in [plugins]; declared: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        let per = match settings.text("per").map(|t| t.get_ref().as_str()) {
            None | Some("partition") => WritePer::Partition,
            Some("batch") => WritePer::Batch,
            Some(other) => {
                return Err((
                    at("per"),
                    format!("unknown per `{other}` (expected partition or batch)"),
                ));
            }
        };
        let concurrency = crate::config::positive(settings.integer("concurrency"), "concurrency", 256)?
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()).min(8));
        let strings = |key: &str| -> Result<Vec<(String, String)>, SpecError> {
            let Some(value) = settings.any(key) else {
                return Ok(Vec::new());
            };
            let toml::Value::Table(table) = value.get_ref() else {
                return Err((value.span().start, format!("`{key}` must be a table")));
            };
            table
                .iter()
                .map(|(name, value)| match value {
                    toml::Value::String(text) => Ok((name.clone(), text.clone())),
                    toml::Value::Integer(n) => Ok((name.clone(), n.to_string())),
                    toml::Value::Float(x) => Ok((name.clone(), x.to_string())),
                    toml::Value::Boolean(b) => Ok((name.clone(), b.to_string())),
                    _ => Err((
                        value_at(settings, key, cx.offset),
                        format!("`{key}.{name}` must be a string, a number or a boolean"),
                    )),
                })
                .collect()
        };
        let addresses = |key: &str| -> Result<Vec<String>, SpecError> {
            let Some(value) = settings.any(key) else {
                return Ok(Vec::new());
            };
            let addresses = one_or_many(value, &format!("`{key}` must be a `host:port` or a list of them"))?;
            for address in &addresses {
                if let Err(why) = check_address(address) {
                    return Err((value.span().start, format!("`{key}`: {why}")));
                }
            }
            Ok(addresses)
        };
        let write_dir: Option<DirPath> = settings
            .text("write-dir")
            .map(|dir| cx.dir(dir.get_ref(), "write-dir"))
            .transpose()?;
        let limits = match settings.any("limits") {
            None => cx.limits.clone(),
            Some(value) => {
                let table: crate::config::LimitsTable = toml::to_string(value.get_ref())
                    .ok()
                    .and_then(|text| toml::from_str(&text).ok())
                    .ok_or_else(|| {
                        (
                            value.span().start,
                            "`limits` must be a table of memory, timeout, log-messages-per-second \
                             and log-bytes-per-second"
                                .to_owned(),
                        )
                    })?;
                if table.fuel.is_some() {
                    return Err((
                        value.span().start,
                        "a sink plugin has no fuel budget: limit its calls with `timeout`".to_owned(),
                    ));
                }
                crate::config::stage_limits(&table, cx.limits.clone())
                    .map_err(|(_, message)| (value.span().start, message))?
            }
        };
        // Its time goes to I/O: it runs unmetered, bounded by `timeout`
        // (the pipeline's `fuel` is for its stages).
        let limits = crate::runtime::Limits { fuel: None, ..limits };
        let retries = match crate::config::non_negative(settings.integer("retries"), "retries")? {
            None => DEFAULT_RETRIES,
            Some(n) if n <= MAX_RETRIES as u64 => n as u32,
            Some(n) => {
                let at = settings.integer("retries").map_or(cx.offset, |v| v.span().start);
                return Err((at, format!("`retries` = {n} is more than {MAX_RETRIES}")));
            }
        };
        let on_error = match settings.text("on-error").map(|t| t.get_ref().as_str()) {
            None | Some("fail") => PluginSinkOnError::Fail,
            Some("skip-batch") => PluginSinkOnError::SkipBatch,
            Some(other) => {
                return Err((
                    at("on-error"),
                    format!(
                        "unknown on-error `{other}` for a plugin sink (expected fail or skip-batch: \
                         a sink's records have no dead-letter stream to go to)"
                    ),
                ));
            }
        };
        let quarantine_after = crate::config::positive(
            settings.integer("quarantine-after"),
            "quarantine-after",
            1_000_000,
        )?
        .map_or(DEFAULT_QUARANTINE_AFTER, |n| n as u32);
        let config = strings("config")?;
        let env = strings("env")?;
        let http = addresses("allow-http")?;
        let connect = addresses("allow-connect")?;
        Ok(Self {
            plugin: plugin.to_owned(),
            config,
            per,
            concurrency,
            sandbox: Sandbox {
                limits,
                grants: Grants {
                    read_dir: None,
                    env,
                    write_dir,
                    http,
                    connect,
                },
            },
            retries,
            on_error,
            quarantine_after,
        })
    }
}

/// Checks that `address` is a `host:port` (an IPv6 host in brackets).
fn check_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        .ok_or_else(|| format!("`{address}` is not a `host:port` (name the port: `{address}:443`)"))?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "`{address}`: put an IPv6 address in brackets (`[{host}]:{port}`)"
        ));
    }
    Ok(())
}

/// Where `key`'s value starts (the table's start when absent).
fn value_at(settings: &Settings, key: &str, offset: usize) -> usize {
    settings.any(key).map_or(offset, |v| v.span().start)
}

impl SinkConfig for PluginSinkSpec {
    fn build(&self, spec: &SinkSpec, cx: &SinkContext<'_>) -> Box<dyn Sink> {
        let plugin = match cx.plugins.and_then(|plugins| (plugins.0)(&self.plugin)) {
            Some(plugin) => Ok(plugin),
            None => Err(format!(
                "plugin `{}` is not loaded (a plugin sink runs only in a pipeline whose plugins were loaded)",
                self.plugin
            )),
        };
        Box::new(PluginSink {
            writer: Writer {
                name: spec.name.clone(),
                pipeline: cx.pipeline.to_owned(),
                run: if cx.checkpointed {
                    String::new()
                } else {
                    format!("run-{}", crate::source::now_ms())
                },
                settings: self.clone(),
                plugin,
                sandbox: Arc::new(self.sandbox.clone()),
                usage: Arc::new(InstanceUsage::default()),
            },
            idle: Vec::new(),
            failing_batches: 0,
        })
    }

    fn reach(&self) -> Reach {
        let grants = &self.sandbox.grants;
        if grants.http.is_empty() && grants.connect.is_empty() {
            Reach::Files
        } else {
            Reach::Network(grants.http.iter().chain(&grants.connect).cloned().collect())
        }
    }

    fn after_other_sinks(&self) -> bool {
        true
    }

    fn plugin(&self) -> Option<crate::config::SinkPlugin<'_>> {
        Some(crate::config::SinkPlugin {
            name: &self.plugin,
            limits: &self.sandbox.limits,
            instances: self.concurrency,
        })
    }
}

/// A sink whose writes a plugin makes.
pub struct PluginSink {
    writer: Writer,
    /// Warm instances between batches (at most `concurrency`).
    idle: Vec<SinkInstance>,
    /// Batches in a row with a write skipped by `skip-batch`.
    failing_batches: u32,
}

/// What every write of a plugin sink shares (across the threads writing
/// a batch's partitions).
struct Writer {
    name: String,
    pipeline: String,
    /// `run-<start ms>` without a checkpoint directory, else empty.
    run: String,
    settings: PluginSinkSpec,
    plugin: Result<Arc<Plugin>, String>,
    sandbox: Arc<Sandbox>,
    usage: Arc<InstanceUsage>,
}

/// Why a fresh instance could not start, and whether trying again may help.
struct StartError {
    error: SinkError,
    retryable: bool,
}

/// The parts of a batch, taken one at a time by the threads writing them.
struct PartQueue {
    parts: Vec<std::sync::Mutex<Option<Part>>>,
    next: AtomicUsize,
}

impl PartQueue {
    fn new(parts: Vec<Part>) -> Self {
        Self {
            parts: parts
                .into_iter()
                .map(|part| std::sync::Mutex::new(Some(part)))
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The next part nobody took, if any.
    fn take(&self) -> Option<Part> {
        let slot = self.parts.get(self.next.fetch_add(1, Ordering::Relaxed))?;
        slot.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// What one thread writing parts ends with: its warm instance, and the
/// parts (by partition) whose write failed for good.
struct Drained {
    warm: Option<SinkInstance>,
    failures: Vec<(u32, String)>,
}

/// One `write` call to make: the records and where they come from.
struct Part {
    partition: u32,
    partitions: u32,
    records: Batch,
}

impl Writer {
    fn error(&self, message: String) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            message,
            superseded: false,
        }
    }

    /// The plugin, checked to be a sink.
    fn plugin(&self) -> Result<&Arc<Plugin>, SinkError> {
        let plugin = self
            .plugin
            .as_ref()
            .map_err(|message| self.error(message.clone()))?;
        if plugin.info().kind != PluginKind::Sink {
            return Err(self.error(format!(
                "plugin `{}` ({}) is a {}, not a sink plugin (build it with #[weir_guest::sink])",
                self.settings.plugin,
                plugin.path().display(),
                plugin.info().kind.name()
            )));
        }
        Ok(plugin)
    }

    /// A fresh instance, through `init`. The error says whether trying
    /// again may help: not when the plugin is no sink or refuses its config.
    fn start(&self) -> Result<SinkInstance, StartError> {
        let plugin = self.plugin().map_err(|error| StartError {
            error,
            retryable: false,
        })?;
        let label = InstanceLabel {
            pipeline: self.pipeline.as_str().into(),
            stage: self.name.as_str().into(),
            plugin: self.settings.plugin.as_str().into(),
            usage: self.usage.clone(),
            candidate_fuel: None,
        };
        SinkInstance::start(plugin, &self.settings.config, label, &self.sandbox).map_err(|error| StartError {
            retryable: !matches!(error, PluginError::Init(_) | PluginError::Contract { .. }),
            error: self.error(format!("plugin `{}` cannot start: {error}", self.settings.plugin)),
        })
    }

    /// The parts of a batch: its non-empty partitions, or all of it.
    fn parts(&self, partitions: &[Partition]) -> Vec<Part> {
        match self.settings.per {
            WritePer::Batch => {
                let records = Batch::concat(partitions.iter().flatten());
                if records.is_empty() {
                    Vec::new()
                } else {
                    vec![Part {
                        partition: 0,
                        partitions: 1,
                        records,
                    }]
                }
            }
            WritePer::Partition => partitions
                .iter()
                .enumerate()
                .filter(|(_, chunks)| chunks.iter().any(|chunk| !chunk.is_empty()))
                .map(|(index, chunks)| Part {
                    partition: index as u32,
                    partitions: partitions.len() as u32,
                    records: Batch::concat(chunks),
                })
                .collect(),
        }
    }

    /// Writes parts from `queue` until it is empty, on `instance` (or
    /// fresh ones).
    fn drain(&self, mut instance: Option<SinkInstance>, queue: &PartQueue, batch: BatchInfo) -> Drained {
        let mut failures = Vec::new();
        while let Some(part) = queue.take() {
            let partition = part.partition;
            let (kept, result) = self.write_part(instance.take(), batch, part);
            instance = kept;
            if let Err(message) = result {
                failures.push((partition, message));
            }
        }
        Drained {
            warm: instance,
            failures,
        }
    }

    /// Writes one part, retrying as the settings say. Returns the instance
    /// to keep warm (none after a trap), and the failure that outlived the
    /// retries.
    fn write_part(
        &self,
        mut instance: Option<SinkInstance>,
        batch: BatchInfo,
        part: Part,
    ) -> (Option<SinkInstance>, Result<(), String>) {
        let mut records = part.records;
        let mut backoff = Duration::from_millis(100);
        let tries = self.settings.retries + 1;
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                tracing::warn!(
                    pipeline = %self.pipeline, sink = %self.name, batch = batch.id, partition = part.partition,
                    "write failed ({last}); trying again in {}", humantime::format_duration(backoff)
                );
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            let mut current = match instance.take() {
                Some(instance) => instance,
                None => match self.start() {
                    Ok(instance) => instance,
                    Err(StartError { error, retryable }) => {
                        if !retryable {
                            return (None, Err(format!("{} (not retried)", error.message)));
                        }
                        last = error.message;
                        continue;
                    }
                },
            };
            let info = SinkBatchInfo {
                pipeline: self.pipeline.clone(),
                sink: self.name.clone(),
                run: self.run.clone(),
                id: batch.id,
                time: batch.time_ms,
                partition: part.partition,
                partitions: part.partitions,
                attempt,
            };
            let (back, result) = current.write(&info, records);
            records = back;
            match result {
                Ok(Ok(())) => {
                    crash_point("plugin-sink-wrote");
                    return (Some(current), Ok(()));
                }
                Ok(Err(SinkWriteError::Transient(message))) => {
                    last = format!("the plugin says: {message}");
                    instance = Some(current);
                }
                Ok(Err(SinkWriteError::Permanent(message))) => {
                    return (
                        Some(current),
                        Err(format!(
                            "the plugin says (a permanent failure, not retried): {message}"
                        )),
                    );
                }
                Err(error) => {
                    let retryable = error.retryable() || matches!(error, PluginError::Trap { .. });
                    last = error.to_string();
                    if !error.poisons_instance() {
                        instance = Some(current);
                    }
                    if !retryable {
                        return (instance, Err(format!("{last} (not retried)")));
                    }
                }
            }
        }
        let tried = if tries == 1 {
            "once".to_owned()
        } else {
            format!("{tries} times")
        };
        (instance, Err(format!("{last} (tried {tried})")))
    }
}

impl Sink for PluginSink {
    fn open(&mut self) -> Result<(), SinkError> {
        // Fail at start, not at the first batch, on a plugin that is not a
        // sink or whose `init` refuses the config.
        let instance = self.writer.start().map_err(|start| start.error)?;
        self.idle.push(instance);
        Ok(())
    }

    fn write(&mut self, batch: BatchInfo, partitions: &[Partition]) -> Result<(), SinkError> {
        let this = &self.writer;
        let parts = this.parts(partitions);
        if parts.is_empty() {
            // A batch without a failure, as for a stage's quarantine.
            self.failing_batches = 0;
            return Ok(());
        }
        let workers = this.settings.concurrency.min(parts.len()).max(1);
        let mut idle = std::mem::take(&mut self.idle);
        let queue = PartQueue::new(parts);
        let outcomes: Vec<Drained> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let instance = idle.pop();
                    let queue = &queue;
                    scope.spawn(move || this.drain(instance, queue, batch))
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a plugin sink worker panicked"))
                .collect()
        });
        let mut failures = Vec::new();
        let mut warm = idle;
        for drained in outcomes {
            warm.extend(drained.warm);
            failures.extend(drained.failures);
        }
        self.idle = warm;
        failures.sort_by_key(|(partition, _)| *partition);
        let Some((partition, message)) = failures.first() else {
            self.failing_batches = 0;
            return Ok(());
        };
        let which = match this.settings.per {
            WritePer::Batch => format!("batch {}", batch.id),
            WritePer::Partition => format!("partition {partition} of batch {}", batch.id),
        };
        let also = match failures.len() {
            1 => String::new(),
            n => format!(" ({} other partitions failed too)", n - 1),
        };
        match this.settings.on_error {
            PluginSinkOnError::Fail => Err(this.error(format!(
                "plugin `{}` could not write {which}: {message}{also}",
                this.settings.plugin
            ))),
            PluginSinkOnError::SkipBatch => {
                self.failing_batches += 1;
                let after = this.settings.quarantine_after;
                if self.failing_batches >= after {
                    return Err(this.error(format!(
                        "quarantined: plugin `{}` failed to write {after} batches in a row (quarantine-after = {after}); the last: {which}: {message}{also}",
                        this.settings.plugin
                    )));
                }
                tracing::error!(
                    pipeline = %this.pipeline, sink = %this.name,
                    "plugin `{}` could not write {which}: {message}{also}; skipped (on-error = \"skip-batch\")",
                    this.settings.plugin
                );
                Ok(())
            }
        }
    }
}
