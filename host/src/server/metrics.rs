//! `/metrics`: the server's figures in Prometheus text format, with tenant,
//! pipeline and stage labels, encoded by `prometheus-client`.
//!
//! Batch delays are histograms fed by each pipeline's events as batches
//! complete ([`DelayHistograms`]); everything else is read from the live
//! engine when scraped.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::state::ServerState;
use super::tenant::QuotaUse;
use crate::engine::PipelineHandle;
use crate::pipeline::PipelineState;
use crate::pipeline::live::BatchReport;
use crate::ui::directory::Membership;

type Labels = Vec<(&'static str, String)>;

/// A tenant gauge of `/metrics`: its name, its help, and the figure of a
/// tenant's [`QuotaUse`] it shows.
type QuotaGauge = (&'static str, &'static str, fn(&QuotaUse) -> u64);
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn delay_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Processing, scheduling and total delay of every pipeline's batches.
#[derive(Debug, Clone)]
pub struct DelayHistograms {
    processing: Histograms,
    scheduling: Histograms,
    total: Histograms,
}

impl Default for DelayHistograms {
    fn default() -> Self {
        let family = || Histograms::new_with_constructor(delay_histogram as fn() -> Histogram);
        Self {
            processing: family(),
            scheduling: family(),
            total: family(),
        }
    }
}

/// One pipeline's three histograms.
#[derive(Debug, Clone)]
pub struct DelaySeries {
    processing: Histogram,
    scheduling: Histogram,
    total: Histogram,
}

impl DelaySeries {
    /// Counts one completed batch.
    pub fn observe(&self, report: &BatchReport) {
        self.processing.observe(report.processing_time.as_secs_f64());
        self.scheduling.observe(report.scheduling_delay.as_secs_f64());
        self.total.observe(report.total_delay.as_secs_f64());
    }
}

fn pipeline_labels(tenant: &str, pipeline: &str) -> Labels {
    vec![("tenant", tenant.to_owned()), ("pipeline", pipeline.to_owned())]
}

impl DelayHistograms {
    /// The series of `tenant`'s pipeline `pipeline` (kept across restarts
    /// of the pipeline).
    pub fn series(&self, tenant: &str, pipeline: &str) -> DelaySeries {
        let labels = pipeline_labels(tenant, pipeline);
        DelaySeries {
            processing: self.processing.get_or_create_owned(&labels),
            scheduling: self.scheduling.get_or_create_owned(&labels),
            total: self.total.get_or_create_owned(&labels),
        }
    }

    /// Forgets a removed pipeline's series.
    pub fn remove(&self, tenant: &str, pipeline: &str) {
        let labels = pipeline_labels(tenant, pipeline);
        self.processing.remove(&labels);
        self.scheduling.remove(&labels);
        self.total.remove(&labels);
    }
}

/// The Prometheus text of everything the server runs.
pub fn render(state: &Arc<ServerState>) -> String {
    let mut registry = Registry::with_prefix("weir");
    register_pipelines(&mut registry, state.handles());

    // What each tenant uses of its quotas, next to the quota: each gauge
    // with the figure it shows.
    let quota_gauges: [QuotaGauge; 8] = [
        ("tenant_pipelines", "Pipelines the tenant has deployed", |u| {
            u.pipelines as u64
        }),
        (
            "tenant_pipelines_quota",
            "The tenant's quota of deployed pipelines",
            |u| u.quotas.max_pipelines as u64,
        ),
        (
            "tenant_plugin_instances",
            "Plugin instances the tenant's running pipelines may hold at worst",
            |u| u.running.instances as u64,
        ),
        (
            "tenant_plugin_instances_quota",
            "The tenant's quota of plugin instances",
            |u| u.quotas.max_instances as u64,
        ),
        (
            "tenant_wasm_memory_bytes",
            "Wasm memory the tenant's running pipelines may hold at worst",
            |u| u.running.wasm_memory,
        ),
        (
            "tenant_wasm_memory_quota_bytes",
            "The tenant's quota of Wasm memory",
            |u| u.quotas.max_wasm_memory,
        ),
        (
            "tenant_disk_bytes",
            "Bytes of the tenant's root, spilled state and uploads",
            |u| u.disk_bytes,
        ),
        ("tenant_disk_quota_bytes", "The tenant's disk quota", |u| {
            u.quotas.max_disk_bytes
        }),
    ];
    let uses = state.quota_use();
    for (name, help, figure) in quota_gauges {
        let family = Family::<Labels, Gauge>::default();
        for used in &uses {
            let labels: Labels = vec![("tenant", used.tenant.clone())];
            family
                .get_or_create(&labels)
                .set(i64::try_from(figure(used)).unwrap_or(i64::MAX));
        }
        registry.register(name, help, family);
    }
    let histograms = &state.histograms;
    registry.register(
        "batch_processing_seconds",
        "Processing time of batches",
        histograms.processing.clone(),
    );
    registry.register(
        "batch_scheduling_delay_seconds",
        "Scheduling delay of batches",
        histograms.scheduling.clone(),
    );
    registry.register(
        "batch_total_delay_seconds",
        "Total delay of batches",
        histograms.total.clone(),
    );
    encoded(&registry)
}

/// The Prometheus text of one `weir run`'s pipelines (labelled with the
/// tenant `local`) and, for a cluster member, its membership.
pub fn render_local(pipelines: Vec<PipelineHandle>, membership: Option<&Membership>) -> String {
    let mut registry = Registry::with_prefix("weir");
    let local = crate::ui::directory::LOCAL;
    register_pipelines(
        &mut registry,
        pipelines.into_iter().map(|h| (local.to_owned(), h)),
    );
    if let Some(membership) = membership {
        register_membership(&mut registry, membership);
    }
    encoded(&registry)
}

fn encoded(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// Registers the live figures of `pipelines` (each with its tenant label):
/// records, batches, sources with their partitions' lag, and stages.
pub fn register_pipelines(
    registry: &mut Registry,
    pipelines: impl IntoIterator<Item = (String, PipelineHandle)>,
) {
    let counter = || Family::<Labels, Counter>::default();
    let gauge = || Family::<Labels, Gauge>::default();
    let float_gauge = || Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();

    let records_in = counter();
    let records_out = counter();
    let batches = counter();
    let up = gauge();
    let stage_in = counter();
    let stage_out = counter();
    let traps = counter();
    let instances = gauge();
    let wasm_memory = gauge();
    let replaced = counter();
    let source_rate = float_gauge();
    let source_lag = gauge();

    for (tenant, handle) in pipelines {
        let labels = pipeline_labels(&tenant, handle.name());
        let status = handle.status();
        let metrics = handle.metrics();
        records_in.get_or_create(&labels).inc_by(metrics.records_in);
        records_out.get_or_create(&labels).inc_by(metrics.records_out);
        batches.get_or_create(&labels).inc_by(metrics.batches);
        let running = matches!(status.state, PipelineState::Running | PipelineState::Starting);
        up.get_or_create(&labels).set(i64::from(running));
        for source in &metrics.sources {
            let mut labels = labels.clone();
            labels.push(("source", source.name.clone()));
            source_rate.get_or_create(&labels).set(source.rate);
            for partition in &source.partitions {
                let mut labels = labels.clone();
                labels.push(("partition", partition.partition.clone()));
                source_lag
                    .get_or_create(&labels)
                    .set(i64::try_from(partition.lag()).unwrap_or(i64::MAX));
            }
        }
        for stage in &metrics.stages {
            let mut labels = labels.clone();
            labels.push(("stage", stage.stage.clone()));
            stage_in.get_or_create(&labels).inc_by(stage.records_in);
            stage_out.get_or_create(&labels).inc_by(stage.records_out);
            instances.get_or_create(&labels).set(stage.instances as i64);
            replaced.get_or_create(&labels).inc_by(stage.instances_replaced);
            wasm_memory
                .get_or_create(&labels)
                .set(stage.wasm_memory_bytes as i64);
            let t = &stage.traps;
            for (kind, count) in [
                ("deadline", t.deadline),
                ("fuel", t.fuel),
                ("memory", t.memory),
                ("stack-overflow", t.stack_overflow),
                ("panic", t.panic),
                ("other", t.other),
            ] {
                let mut labels = labels.clone();
                labels.push(("kind", kind.to_owned()));
                traps.get_or_create(&labels).inc_by(count);
            }
        }
    }

    registry.register("records_in", "Records received from sources", records_in);
    registry.register("records_out", "Records handed to sinks", records_out);
    registry.register("batches", "Micro-batches completed", batches);
    registry.register("pipeline_running", "1 while the pipeline runs or starts", up);
    registry.register(
        "source_rate",
        "Records per second a source received in the last batch",
        source_rate,
    );
    registry.register(
        "source_lag_records",
        "Records of a source's partition (topic/partition) not read yet, as last reported",
        source_lag,
    );
    registry.register("stage_records_in", "Records into a stage", stage_in);
    registry.register("stage_records_out", "Records out of a stage", stage_out);
    registry.register("stage_traps", "Plugin traps by kind", traps);
    registry.register("stage_instances", "Plugin instances alive", instances);
    registry.register(
        "stage_instances_replaced",
        "Plugin instances replaced because their linear memory had outgrown them",
        replaced,
    );
    registry.register(
        "stage_wasm_memory_bytes",
        "Linear memory of the stage's instances",
        wasm_memory,
    );
}

/// Registers a cluster member's partitions and rebalances.
pub fn register_membership(registry: &mut Registry, membership: &Membership) {
    let labels: Labels = vec![
        ("pipeline", membership.pipeline.clone()),
        ("group", membership.group.clone()),
    ];
    let held = Family::<Labels, Gauge>::default();
    let partitions = Family::<Labels, Gauge>::default();
    let rebalances = Family::<Labels, Counter>::default();
    let transactions = Family::<Labels, Counter>::default();
    let batches = Family::<Labels, Counter>::default();
    let aborted = Family::<Labels, Counter>::default();
    held.get_or_create(&labels).set(membership.held.len() as i64);
    rebalances.get_or_create(&labels).inc_by(membership.rebalances);
    transactions
        .get_or_create(&labels)
        .inc_by(membership.transactions);
    batches
        .get_or_create(&labels)
        .inc_by(membership.transaction_batches);
    aborted
        .get_or_create(&labels)
        .inc_by(membership.transactions_aborted);
    for partition in &membership.held {
        let mut labels = labels.clone();
        labels.extend([
            ("segment", partition.segment.clone()),
            ("topic", partition.topic.clone()),
            ("partition", partition.partition.to_string()),
            ("task", partition.task.clone()),
        ]);
        partitions.get_or_create(&labels).set(1);
    }
    registry.register(
        "cluster_partitions_held",
        "Partitions the consumer group gives this process (one task each)",
        held,
    );
    registry.register(
        "cluster_partition_held",
        "1 for each partition this process holds, with its segment and task",
        partitions,
    );
    registry.register(
        "cluster_rebalances",
        "Rebalances this process took part in (assignments and revocations)",
        rebalances,
    );
    registry.register(
        "cluster_transactions",
        "Kafka transactions this process committed, each with the batches of all its tasks that were ready",
        transactions,
    );
    registry.register(
        "cluster_transaction_batches",
        "Task batches those transactions carried",
        batches,
    );
    registry.register(
        "cluster_transactions_aborted",
        "Kafka transactions this process aborted (their tasks wrote their batches again or failed)",
        aborted,
    );
}
