//! Tenants: their quotas and grants, as the admin sets them, and the checks
//! a tenant's pipeline passes before it is started.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ServerError;
use crate::config::{OperatorSpec, PipelineSpec, Reach};

/// What one tenant may use. The admin sets them per tenant; the server's
/// defaults fill what is not set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Pipelines deployed (running or not).
    pub max_pipelines: usize,
    /// Plugin instances its running pipelines may hold together, at worst
    /// (each plugin stage may hold one per partition).
    pub max_instances: usize,
    /// Wasm linear memory its running pipelines may hold together, at worst
    /// (each instance up to its stage's memory limit), in bytes.
    pub max_wasm_memory: u64,
    /// Its share of the worker pool: each round of the fair scheduler gives
    /// the tenant `cpu_share` × (the most pipelines any tenant runs) turns,
    /// split among its running pipelines ([`cpu_weight`]), so its share does
    /// not grow with its pipeline count.
    pub cpu_share: u32,
    /// Ceiling of a stage's `memory` limit, in bytes.
    pub max_stage_memory: u64,
    /// Ceiling of a stage's call `timeout`, in milliseconds.
    pub max_call_timeout_ms: u64,
    /// Ceiling of a stage's `fuel` per call; `None`: no ceiling.
    pub max_fuel: Option<u64>,
    /// Ceiling of each source's records per second; a source without
    /// `max-rate` is held to it. `None`: no ceiling.
    pub max_input_rate: Option<u64>,
    /// Bytes its root (checkpoints, outputs, inputs) and its spilled keyed
    /// state may hold together; over
    /// it, its pipelines are paused until it is under again.
    pub max_disk_bytes: u64,
    /// Largest plugin upload, in bytes.
    pub max_plugin_bytes: u64,
    /// Ceiling of `max-batch-memory` (input one batch may gather from one
    /// source), in bytes. A pipeline that does not set it gets the default
    /// (256 MiB) or this ceiling, whichever is lower.
    pub max_batch_memory: u64,
    /// Ceiling of a stateful stage's `state-memory` (keyed state, or the
    /// state of a reducing window, processing or event time, kept in memory
    /// before it spills to disk), in bytes. A stage that does not set it
    /// gets the default (256 MiB) or this ceiling, whichever is lower.
    pub max_state_memory: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_pipelines: 10,
            max_instances: 64,
            max_wasm_memory: 4 << 30,
            cpu_share: 1,
            max_stage_memory: 256 << 20,
            max_call_timeout_ms: 60_000,
            max_fuel: None,
            max_input_rate: None,
            max_disk_bytes: 10 << 30,
            max_plugin_bytes: 32 << 20,
            max_batch_memory: crate::config::DEFAULT_MAX_BATCH_MEMORY as u64,
            max_state_memory: crate::pipeline::stage_ops::DEFAULT_STATE_MEMORY as u64,
        }
    }
}

/// What one tenant uses of its quotas (`ServerState::quota_use`, for
/// `/metrics`).
#[derive(Debug, Clone)]
pub struct QuotaUse {
    /// The tenant.
    pub tenant: String,
    /// Pipelines deployed (running or not).
    pub pipelines: usize,
    /// Plugin instances and Wasm memory its running pipelines may hold at
    /// worst (what admission counts against the quotas).
    pub running: Footprint,
    /// Bytes of its root and spilled state (as last measured) and of its
    /// uploads: what its disk quota counts.
    pub disk_bytes: u64,
    /// Its quotas.
    pub quotas: Quotas,
}

/// A tenant as stored in `tenant.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its name.
    pub name: String,
    /// Its quotas.
    pub quotas: Quotas,
    /// Network addresses (`host:port`; `host:*` for any port) its sources
    /// and sinks may listen on or connect to. Default: none.
    #[serde(default)]
    pub allowed_addresses: Vec<String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// The worst-case footprint of a pipeline, checked against the quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Plugin instances it may hold.
    pub instances: usize,
    /// Wasm memory those may hold, in bytes.
    pub wasm_memory: u64,
}

impl Footprint {
    /// The footprint of `spec`: every plugin stage may hold one instance per
    /// partition, each up to its memory limit; a sink written as a plugin,
    /// `concurrency` instances.
    ///
    /// A stage's partition count follows from its inputs (a `repartition`
    /// or a stage with its own `partitions` changes it downstream), so each
    /// plugin stage is counted at the widest count any stage of the
    /// pipeline has: an upper bound.
    pub fn of(spec: &PipelineSpec) -> Self {
        let widest = spec
            .stages
            .iter()
            .filter_map(|stage| stage_partitions(&stage.op))
            .fold(spec.partitions, usize::max);
        let mut footprint = Self::default();
        for stage in &spec.stages {
            let plugins = stage.op.plugins().len();
            if plugins == 0 {
                continue;
            }
            let instances = plugins * widest;
            footprint.instances += instances;
            footprint.wasm_memory += instances as u64 * stage.sandbox.limits.memory_bytes as u64;
        }
        for plugin in spec.sinks.iter().filter_map(|sink| sink.kind.plugin()) {
            footprint.instances += plugin.instances;
            footprint.wasm_memory += plugin.instances as u64 * plugin.limits.memory_bytes as u64;
        }
        footprint
    }

    /// The sum of two footprints.
    pub fn plus(self, other: Self) -> Self {
        Self {
            instances: self.instances + other.instances,
            wasm_memory: self.wasm_memory + other.wasm_memory,
        }
    }
}

/// The partitions a stage sets for its output, if it sets them.
fn stage_partitions(op: &OperatorSpec) -> Option<usize> {
    match op {
        OperatorSpec::ReduceByKey { partitions, .. }
        | OperatorSpec::Repartition { partitions }
        | OperatorSpec::Join { partitions, .. }
        | OperatorSpec::TransformWith { partitions, .. } => *partitions,
        OperatorSpec::KeyedState(state) => state.partitions,
        OperatorSpec::Window(window) => window.partitions,
        OperatorSpec::Transform { .. } | OperatorSpec::Union => None,
    }
}

impl Quotas {
    /// What in `limits` (of a plugin's instances) is above this tenant's
    /// memory or call-timeout ceiling, if anything.
    fn over_instance_ceilings(&self, limits: &crate::runtime::Limits) -> Option<String> {
        if limits.memory_bytes as u64 > self.max_stage_memory {
            return Some(format!(
                "memory = {} MiB, above this tenant's ceiling of {} MiB",
                limits.memory_bytes >> 20,
                self.max_stage_memory >> 20
            ));
        }
        let timeout = Duration::from_millis(self.max_call_timeout_ms);
        (limits.call_deadline > timeout).then(|| {
            format!(
                "timeout = {}, above this tenant's ceiling of {}",
                humantime::format_duration(limits.call_deadline),
                humantime::format_duration(timeout)
            )
        })
    }
}

/// Holds a pipeline's `setting` to a tenant's `ceiling`: one set above it
/// is refused (`Err` with what was asked); one not set takes `default`
/// lowered to the ceiling, or the ceiling itself when there is no default.
fn within_ceiling<T: Copy + Ord>(setting: &mut Option<T>, default: Option<T>, ceiling: T) -> Result<(), T> {
    match *setting {
        Some(asked) if asked > ceiling => Err(asked),
        Some(_) => Ok(()),
        None => {
            *setting = Some(default.map_or(ceiling, |default| default.min(ceiling)));
            Ok(())
        }
    }
}

impl TenantConfig {
    /// Checks `spec` (from `file`) against the tenant's grants (refused:
    /// [`ServerError::Forbidden`]) and ceilings ([`ServerError::Quota`]).
    /// Settings the pipeline leaves unset are held to the tenant's ceilings
    /// ([`within_ceiling`]): a source without `max-rate` runs at the input
    /// rate ceiling, and `max-batch-memory` and a stage's `state-memory`
    /// take their ceilings where the defaults are above them. Errors name
    /// the file and line, as `weir check` does.
    pub fn admit(&self, spec: &mut PipelineSpec, file: &str) -> Result<(), ServerError> {
        let q = &self.quotas;
        let at = |line: usize, message: String| ServerError::Quota(format!("{file}:{line}: {message}"));
        let denied =
            |line: usize, message: String| ServerError::Forbidden(format!("{file}:{line}: {message}"));
        for source in &mut spec.sources {
            self.check_reach(source.kind.reach(), &format!("source `{}`", source.name))
                .map_err(|m| denied(source.line, m))?;
            if let Some(ceiling) = q.max_input_rate {
                within_ceiling(&mut source.rate.max_rate, None, ceiling).map_err(|rate| {
                    at(
                        source.line,
                        format!(
                            "source `{}` asks for max-rate = {rate} records/s, above this tenant's ceiling of {ceiling}",
                            source.name
                        ),
                    )
                })?;
            }
        }
        let ceiling = usize::try_from(q.max_batch_memory).unwrap_or(usize::MAX);
        within_ceiling(
            &mut spec.max_batch_memory,
            Some(crate::config::DEFAULT_MAX_BATCH_MEMORY),
            ceiling,
        )
        .map_err(|asked| {
            at(
                1,
                format!(
                    "max-batch-memory = {} MiB is above this tenant's ceiling of {} MiB",
                    asked >> 20,
                    q.max_batch_memory >> 20
                ),
            )
        })?;
        let ceiling = usize::try_from(q.max_state_memory).unwrap_or(usize::MAX);
        for stage in &mut spec.stages {
            let memory = match &mut stage.op {
                OperatorSpec::KeyedState(state) => &mut state.memory,
                // Reducing windows keep state (and take state-memory); a raw window keeps records.
                OperatorSpec::Window(window) if !matches!(window.op, crate::config::WindowOp::Raw) => {
                    &mut window.memory
                }
                _ => continue,
            };
            within_ceiling(memory, Some(crate::pipeline::stage_ops::DEFAULT_STATE_MEMORY), ceiling).map_err(
                |asked| {
                    at(
                        stage.line,
                        format!(
                            "stage `{}` keeps {} MiB of state in memory (state-memory), above this tenant's ceiling of {} MiB",
                            stage.name,
                            asked >> 20,
                            q.max_state_memory >> 20
                        ),
                    )
                },
            )?;
        }
        for sink in &spec.sinks {
            self.check_reach(sink.kind.reach(), &format!("sink `{}`", sink.name))
                .map_err(|m| denied(sink.line, m))?;
        }
        for sink in &spec.sinks {
            let Some(crate::config::SinkPlugin { limits, .. }) = sink.kind.plugin() else {
                continue;
            };
            let refuse = |what: String| {
                Err(at(
                    sink.line,
                    format!("sink `{}` asks for {what}; lower it in its limits", sink.name),
                ))
            };
            if let Some(what) = q.over_instance_ceilings(limits) {
                return refuse(what);
            }
            if let Some(ceiling) = q.max_fuel {
                return Err(at(
                    sink.line,
                    format!(
                        "sink `{}` runs a plugin, which is not fuel-metered, but this tenant's plugins run with at most {ceiling} fuel a call: sink plugins are not available to it",
                        sink.name
                    ),
                ));
            }
        }
        for stage in spec.stages.iter().filter(|stage| !stage.op.plugins().is_empty()) {
            let limits = &stage.sandbox.limits;
            let refuse = |what: String| {
                Err(at(
                    stage.line,
                    format!(
                        "stage `{}` asks for {what}; lower it in its [stage.limits]",
                        stage.name
                    ),
                ))
            };
            if let Some(what) = q.over_instance_ceilings(limits) {
                return refuse(what);
            }
            if let Some(ceiling) = q.max_fuel {
                match limits.fuel {
                    Some(fuel) if fuel <= ceiling => {}
                    Some(fuel) => {
                        return refuse(format!("fuel = {fuel}, above this tenant's ceiling of {ceiling}"));
                    }
                    None => {
                        return refuse(format!(
                            "no fuel budget, but this tenant's plugins run with at most {ceiling} fuel a call: set fuel"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn check_reach(&self, reach: Reach, what: &str) -> Result<(), String> {
        match reach {
            Reach::Files => Ok(()),
            Reach::Undeclared => Err(format!(
                "{what} is of a kind that does not declare what it reaches, which tenants' pipelines may not use"
            )),
            Reach::Process(stream) => Err(format!(
                "{what} uses the server's {stream}, which tenants' pipelines may not: use a files source or sink"
            )),
            Reach::Network(addresses) => {
                for address in addresses {
                    if !self.address_allowed(&address) {
                        return Err(format!(
                            "{what} reaches `{address}`, which this tenant may not: the admin grants addresses (allowed: {})",
                            if self.allowed_addresses.is_empty() {
                                "none".to_owned()
                            } else {
                                self.allowed_addresses.join(", ")
                            }
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// True when `address` (`host:port`) is granted.
    pub fn address_allowed(&self, address: &str) -> bool {
        let (host, port) = address.rsplit_once(':').unwrap_or((address, ""));
        self.allowed_addresses
            .iter()
            .any(|allowed| match allowed.rsplit_once(':') {
                Some((allowed_host, "*")) => allowed_host == host,
                Some(_) => allowed == address,
                None => allowed == host && port.is_empty(),
            })
    }
}

/// The worker-pool weight (turns in a row) of each running pipeline of a
/// tenant with CPU share `share` and `running` pipelines, when the tenant
/// with the most runs `most`: the tenant's turns per round are `share` ×
/// `most` whatever its pipeline count (at least one turn per pipeline).
pub fn cpu_weight(share: u32, running: usize, most: usize) -> u32 {
    let running = running.max(1) as u64;
    let turns = u64::from(share.max(1)) * most.max(1) as u64;
    u32::try_from(((turns + running / 2) / running).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tenants_share_does_not_grow_with_its_pipelines() {
        // One tenant runs 1 pipeline, another 3: 3 turns a round each.
        assert_eq!(cpu_weight(1, 1, 3), 3);
        assert_eq!(cpu_weight(1, 3, 3), 1);
        // Everyone with one pipeline: the plain round robin.
        assert_eq!(cpu_weight(1, 1, 1), 1);
        // A share of 2 is twice the turns; never below one.
        assert_eq!(cpu_weight(2, 2, 4), 4);
        assert_eq!(cpu_weight(1, 8, 3), 1);
        assert_eq!(cpu_weight(0, 0, 0), 1);
    }

    use super::*;

    #[test]
    fn addresses_match_exactly_or_by_any_port() {
        let tenant = tenant_allowed(&["127.0.0.1:9000", "kafka:*"]);
        assert!(tenant.address_allowed("127.0.0.1:9000"));
        assert!(!tenant.address_allowed("127.0.0.1:9001"));
        assert!(tenant.address_allowed("kafka:9092"));
        assert!(!tenant.address_allowed("kafka2:9092"));
    }

    /// Tenant `a` with the default quotas, allowed `addresses`.
    fn tenant_allowed(addresses: &[&str]) -> TenantConfig {
        TenantConfig {
            name: "a".into(),
            quotas: Quotas::default(),
            allowed_addresses: addresses.iter().map(|a| a.to_string()).collect(),
            created_ms: 0,
        }
    }

    /// Parses `text` as a pipeline file.
    fn parsed(text: &str) -> PipelineSpec {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, text).unwrap();
        crate::config::parse(text, &file).unwrap()
    }

    #[test]
    fn settings_left_unset_take_the_ceilings_and_set_ones_must_be_within() {
        let mut tenant = tenant_allowed(&[]);
        tenant.quotas.max_batch_memory = 64 << 20;
        tenant.quotas.max_state_memory = 32 << 20;
        tenant.quotas.max_input_rate = Some(500);
        let text = r#"
[pipeline]
name = "p"
[[source]]
name = "in"
type = "files"
path = "in"
[[stage]]
name = "counts"
input = "in"
op = "count-by-value-and-window"
length = "10s"
slide = "5s"
[[stage]]
name = "sums"
input = "in"
op = "reduce-by-key-and-window"
reducer = "count"
length = "10s"
slide = "5s"
state-memory = "16MiB"
[[stage]]
name = "raw"
input = "in"
op = "window"
length = "10s"
slide = "5s"
[[sink]]
input = "counts"
type = "files"
path = "out"
"#;
        let mut spec = parsed(text);
        tenant.admit(&mut spec, "p.toml").unwrap();
        assert_eq!(spec.max_batch_memory, Some(64 << 20));
        assert_eq!(spec.sources[0].rate.max_rate, Some(500));
        let memory = |name: &str| match &spec.stages.iter().find(|s| s.name == name).unwrap().op {
            OperatorSpec::Window(window) => window.memory,
            other => panic!("{other:?}"),
        };
        // Unset: the ceiling (below the default); set within it: as set;
        // a raw window keeps records, not state: left alone.
        assert_eq!(memory("counts"), Some(32 << 20));
        assert_eq!(memory("sums"), Some(16 << 20));
        assert_eq!(memory("raw"), None);
        // A ceiling above the defaults leaves the defaults.
        tenant.quotas.max_batch_memory = 1 << 30;
        tenant.quotas.max_state_memory = 1 << 30;
        let mut spec = parsed(text);
        tenant.admit(&mut spec, "p.toml").unwrap();
        assert_eq!(
            spec.max_batch_memory,
            Some(crate::config::DEFAULT_MAX_BATCH_MEMORY)
        );
        // Set above the ceiling: refused, naming the line.
        tenant.quotas.max_state_memory = 8 << 20;
        let refused = tenant.admit(&mut parsed(text), "p.toml").unwrap_err().to_string();
        assert!(
            refused.contains("p.toml:14: stage `sums` keeps 16 MiB of state in memory"),
            "{refused}"
        );
    }

    #[test]
    fn a_kind_that_does_not_declare_its_reach_is_refused() {
        let tenant = tenant_allowed(&["127.0.0.1:9000"]);
        let refused = tenant.check_reach(Reach::Undeclared, "source `s`").unwrap_err();
        assert!(
            refused.contains("source `s` is of a kind that does not declare"),
            "{refused}"
        );
        assert!(tenant.check_reach(Reach::Files, "source `s`").is_ok());
        let network = Reach::Network(vec!["127.0.0.1:9000".into()]);
        assert!(tenant.check_reach(network, "sink `k`").is_ok());
    }

    /// The kinds that reach no network (the files and generator sources,
    /// the files sink on a local path) declare `Files`; the others declare
    /// their addresses or streams in their own modules.
    #[test]
    fn the_kinds_that_reach_only_files_say_so() {
        let text = r#"
[pipeline]
name = "p"
[[source]]
name = "in"
type = "files"
path = "in"
[[source]]
name = "made"
type = "generator"
lines = 10
[[stage]]
name = "both"
input = ["in", "made"]
op = "union"
[[sink]]
input = "both"
type = "files"
path = "out"
"#;
        let spec = parsed(text);
        for source in &spec.sources {
            assert_eq!(source.kind.reach(), Reach::Files, "{}", source.name);
        }
        assert_eq!(spec.sinks[0].kind.reach(), Reach::Files);
    }
}
