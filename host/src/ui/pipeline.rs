//! The pipeline page's sections. Each is rendered from one [`Snapshot`] of
//! the run and has an element id; the live stream sends them again, by id,
//! as the run moves on.

use std::collections::BTreeMap;

use maud::{Markup, html};

use super::chart::Chart;
use super::directory::{Listing, Viewer};
use super::format;
use crate::pipeline::{
    BatchDetail, CheckpointRecord, PipelineMetrics, PipelineState, PipelineStatus, VersionRecord,
};

/// Batches the charts show.
pub const CHART_BATCHES: usize = 60;
/// Batches the batch table lists.
pub const TABLE_BATCHES: usize = 20;

/// What the page shows of a run, read once.
#[derive(Debug)]
pub struct Snapshot {
    /// The status.
    pub status: PipelineStatus,
    /// The live figures.
    pub metrics: PipelineMetrics,
    /// The recent batches, oldest first.
    pub batches: Vec<BatchDetail>,
    /// The last checkpoints, oldest first.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Each stage plugin's versions.
    pub history: BTreeMap<String, Vec<VersionRecord>>,
}

impl Snapshot {
    /// Reads `listing`'s run; `None` when it never started.
    pub fn of(listing: &Listing) -> Option<Self> {
        let handle = listing.handle.as_ref()?;
        Some(Self {
            status: handle.status(),
            metrics: handle.metrics(),
            batches: handle.recent_batches(CHART_BATCHES.max(TABLE_BATCHES)),
            checkpoints: handle.checkpoints(),
            history: handle.plugin_history(),
        })
    }
}

/// The state's badge.
pub fn state_badge(state: Option<PipelineState>) -> Markup {
    let (class, text) = match state {
        None => ("never", "not started"),
        Some(PipelineState::Starting) => ("starting", "starting"),
        Some(PipelineState::Running) => ("running", "running"),
        Some(PipelineState::Paused) => ("paused", "paused"),
        Some(PipelineState::Stopping) => ("stopping", "stopping"),
        Some(PipelineState::Stopped) => ("stopped", "stopped"),
        Some(PipelineState::Failed) => ("failed", "failed"),
    };
    html! { span.badge.(class) data-state=(text) { (text) } }
}

/// The pause / resume / stop buttons for `state`, for a viewer who may
/// operate; each asks for confirmation.
pub fn control_buttons(listing: &Listing, viewer: &Viewer, state: Option<PipelineState>) -> Markup {
    if !viewer.may_operate {
        return html! {};
    }
    let base = format!("{}/actions", listing.path());
    let name = &listing.name;
    let live = matches!(state, Some(PipelineState::Running | PipelineState::Paused));
    html! {
        span.actions {
            @if state == Some(PipelineState::Running) {
                button.act data-url=(format!("{base}/pause")) data-confirm=(format!("Pause pipeline {name}? No batches are cut until it is resumed; nothing is dropped.")) { "Pause" }
            }
            @if state == Some(PipelineState::Paused) {
                button.act data-url=(format!("{base}/resume")) data-confirm=(format!("Resume pipeline {name}?")) { "Resume" }
            }
            @if live {
                button.act.danger data-url=(format!("{base}/stop")) data-confirm=(format!("Stop pipeline {name}? It drains what it received, then stops.")) { "Stop" }
            }
        }
    }
}

/// The head: state, why, and the controls. It changes only when the
/// state does (its buttons are not replaced under a pointer every batch).
pub fn head(listing: &Listing, viewer: &Viewer, snapshot: Option<&Snapshot>) -> Markup {
    let status = snapshot.map(|s| &s.status);
    let state = status.map(|s| s.state);
    html! {
        div.headline {
            (state_badge(state))
            (control_buttons(listing, viewer, state))
        }
        @if let Some(why) = status.and_then(|s| s.paused_because.as_ref()) {
            p.notice { "Paused: " (why) }
        }
        @if let Some(error) = status.and_then(|s| s.error.as_ref()) {
            p.error { "Failed: " (error) }
        }
        @if let Some(note) = &listing.note {
            p.notice { (note) }
        }
    }
}

/// The key figures.
pub fn facts(snapshot: &Snapshot) -> Markup {
    let m = &snapshot.metrics;
    let last = snapshot.batches.last();
    let failures: u64 = m.stages.iter().map(|s| s.failed_batches).sum();
    let dead: u64 = m.stages.iter().map(|s| s.dead_lettered).sum();
    let fact = |label: &str, value: String| {
        html! { div.fact { span.label { (label) } span.value { (value) } } }
    };
    let current = snapshot.status.last_batch.map_or("—".into(), |batch| {
        format!("#{} at {}", batch.id, format::clock(batch.time_ms))
    });
    html! {
        (fact("Current batch", current))
        (fact("Batch interval", format::duration(snapshot.status.batch_interval)))
        (fact("Batches", format::count(m.batches)))
        (fact("Input rate", last.map_or("—".into(), |b| format::rate(b.input_rate))))
        (fact("Records in / out", format!("{} / {}", format::count(m.records_in), format::count(m.records_out))))
        (fact("Processing p50 / p95", format!("{} / {}", format::duration(m.processing_time.p50), format::duration(m.processing_time.p95))))
        (fact("Scheduling delay p95", format::duration(m.scheduling_delay.p95)))
        (fact("Total delay p50 / p99", format!("{} / {}", format::duration(m.total_delay.p50), format::duration(m.total_delay.p99))))
        (fact("Slow batches", format::count(m.slow_batches)))
        (fact("Queued chunks", format::count(m.queued_chunks)))
        (fact("Failed partition batches", format::count(failures)))
        (fact("Dead letters", format::count(dead)))
    }
}

/// The four charts of Spark's streaming UI over the last
/// [`CHART_BATCHES`] batches, the batch interval marked on the delays.
pub fn charts(snapshot: &Snapshot) -> Markup {
    let recent = &snapshot.batches[snapshot.batches.len().saturating_sub(CHART_BATCHES)..];
    let series = |f: fn(&BatchDetail) -> f64| recent.iter().map(|b| (b.report.batch.id, f(b))).collect();
    let interval = Some((format::ms(snapshot.status.batch_interval), "batch interval"));
    let charts = [
        Chart {
            id: "input-rate",
            title: "Input rate",
            unit: "records/s",
            points: series(|b| b.input_rate),
            mark: None,
        },
        Chart {
            id: "scheduling-delay",
            title: "Scheduling delay",
            unit: "ms",
            points: series(|b| format::ms(b.report.scheduling_delay)),
            mark: None,
        },
        Chart {
            id: "processing-time",
            title: "Processing time",
            unit: "ms",
            points: series(|b| format::ms(b.report.processing_time)),
            mark: interval,
        },
        Chart {
            id: "total-delay",
            title: "Total delay",
            unit: "ms",
            points: series(|b| format::ms(b.report.total_delay)),
            mark: interval,
        },
    ];
    html! { @for chart in &charts { (chart.render()) } }
}

/// How a batch went, in a word.
pub fn batch_outcome(batch: &BatchDetail) -> (&'static str, String) {
    let failed: u64 = batch.stages.iter().map(|s| s.failed_batches).sum();
    let dead: u64 = batch.stages.iter().map(|s| s.dead_lettered).sum();
    if failed > 0 {
        ("warn", format!("{failed} partition batch(es) failed"))
    } else if dead > 0 {
        ("warn", format!("{dead} dead-lettered"))
    } else if batch.slow {
        ("slow", "slow".into())
    } else {
        ("ok", "ok".into())
    }
}

/// The last [`TABLE_BATCHES`] batches, newest first, each linking to its page.
pub fn batch_table(listing: &Listing, snapshot: &Snapshot) -> Markup {
    let recent = snapshot.batches.iter().rev().take(TABLE_BATCHES);
    html! {
        div.scroll {
            table.batches {
                thead { tr { th { "Batch" } th { "Time" } th.num { "Records" } th.num { "Input rate" } th.num { "Scheduling" } th.num { "Processing" } th.num { "Total delay" } th { "Status" } } }
                tbody {
                    @for batch in recent {
                        @let (class, outcome) = batch_outcome(batch);
                        tr data-batch=(batch.report.batch.id) {
                            td { a href=(format!("{}/batches/{}", listing.path(), batch.report.batch.id)) { "#" (batch.report.batch.id) } }
                            td { (format::clock(batch.report.batch.time_ms)) }
                            td.num { (format::count(batch.report.records_in)) }
                            td.num { (format::rate(batch.input_rate)) }
                            td.num { (format::duration(batch.report.scheduling_delay)) }
                            td.num { (format::duration(batch.report.processing_time)) }
                            td.num { (format::duration(batch.report.total_delay)) }
                            td { span.outcome.(class) { (outcome) } }
                        }
                    }
                }
            }
            @if snapshot.batches.is_empty() { p.muted { "No batch has completed yet." } }
        }
    }
}

/// Every stage: its operator, records, failures, instances, memory, fuel
/// and state.
pub fn stages(snapshot: &Snapshot) -> Markup {
    let paused = snapshot.status.paused_because.as_deref().unwrap_or_default();
    html! {
        div.scroll {
            table.stages {
                thead { tr {
                    th { "Stage" } th { "Operator" } th.num { "In" } th.num { "Out" } th.num { "Busy" }
                    th.num { "Retries" } th.num { "Failed" } th.num { "Traps" } th.num { "Dead letters" }
                    th.num { "Instances" } th.num { "Wasm memory" } th.num { "Fuel" } th.num { "State keys" } th.num { "State memory" } th { "Quarantine" }
                } }
                tbody {
                    @for stage in &snapshot.metrics.stages {
                        @let quarantined = !paused.is_empty() && paused.contains(&format!("`{}`", stage.stage));
                        tr data-stage=(stage.stage) {
                            td { (stage.stage) }
                            td { code { (stage.op) } }
                            td.num { (format::count(stage.records_in)) }
                            td.num { (format::count(stage.records_out)) }
                            td.num { (format::duration(stage.busy)) }
                            td.num { (format::count(stage.retries)) }
                            td.num { (format::count(stage.failed_batches)) }
                            td.num title=(format!("deadline {}, fuel {}, memory {}, stack {}, panic {}, other {}", stage.traps.deadline, stage.traps.fuel, stage.traps.memory, stage.traps.stack_overflow, stage.traps.panic, stage.traps.other)) { (format::count(stage.traps.total())) }
                            td.num { (format::count(stage.dead_lettered)) }
                            td.num { (format::count(stage.instances)) }
                            td.num { (format::bytes(stage.wasm_memory_bytes)) }
                            td.num { (format::count(stage.fuel_used)) }
                            td.num { (format::count(stage.state.keys)) }
                            td.num { (format::bytes(stage.state.memory_bytes)) }
                            td { @if quarantined { span.outcome.warn { "quarantined" } } @else { span.muted { "no" } } }
                        }
                    }
                }
            }
        }
    }
}

/// Every source: what it received, its rate and limit, and for a
/// partitioned source (Kafka) each partition's lag: the records it holds
/// that the source has not read yet.
pub fn sources(snapshot: &Snapshot) -> Markup {
    let lag = |lag: Option<u64>| lag.map_or("—".into(), format::count);
    html! {
        div.scroll {
            table.sources {
                thead { tr {
                    th { "Source" } th { "Partition" } th.num { "Records" } th.num { "Rate" } th.num { "Rate limit" }
                    th.num { "Position" } th.num { "End" } th.num { "Lag" }
                } }
                tbody {
                    @for source in &snapshot.metrics.sources {
                        tr data-source=(source.name) {
                            td { (source.name) }
                            td.muted { @if source.partitions.is_empty() { "—" } @else { "all" } }
                            td.num { (format::count(source.records)) }
                            td.num { (format::rate(source.rate)) }
                            td.num { (source.rate_limit.map_or("none".into(), format::rate)) }
                            td.num { "—" }
                            td.num { "—" }
                            td.num { (lag(source.lag)) }
                        }
                        @for partition in &source.partitions {
                            tr data-partition=(partition.partition) {
                                td {}
                                td { code { (partition.partition) } }
                                td.num {} td.num {} td.num {}
                                td.num { (partition.position) }
                                td.num { (partition.end) }
                                td.num { (format::count(partition.lag())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Every stage plugin: the version running, its canary or shadow, and its
/// version history, with a rollback button for an operator.
pub fn plugins(listing: &Listing, viewer: &Viewer, snapshot: &Snapshot) -> Markup {
    let status = &snapshot.status;
    html! {
        @if status.plugins.is_empty() { p.muted { "No stage runs a Wasm plugin." } }
        @for plugin in &status.plugins {
            @let key = format!("{}/{}", plugin.stage, plugin.plugin);
            @let shadow = status.shadows.iter().find(|s| s.stage == plugin.stage && s.plugin == plugin.plugin);
            @let canary = status.canaries.iter().find(|c| c.stage == plugin.stage && c.plugin == plugin.plugin);
            section.plugin data-stage=(plugin.stage) data-plugin=(plugin.plugin) {
                h3 {
                    (plugin.stage) " · " (plugin.plugin)
                    @if !plugin.version.is_empty() { " " span.muted { (plugin.version) } }
                }
                dl {
                    dt { "SHA-256" } dd { code title=(plugin.sha256) { (format::short_sha(&plugin.sha256)) } }
                    @if !plugin.contract.is_empty() { dt { "Contract" } dd { (plugin.contract) } }
                    dt { "State version" } dd { (plugin.state_version) }
                    @if plugin.probation_left > 0 { dt { "Probation" } dd { (plugin.probation_left) " batches left" } }
                    @if let Some(canary) = canary {
                        dt { "Canary" }
                        dd.canary {
                            code title=(canary.candidate) { (format::short_sha(&canary.candidate)) }
                            " on " (canary.stats.percent) "% of keys; "
                            (canary.stats.streak.clean_batches) " clean batches in a row of " (canary.stats.streak.batches) "; calls "
                            (canary.stats.canary.calls) " (" (canary.stats.canary.failures) " failed) vs live "
                            (canary.stats.live.calls) " (" (canary.stats.live.failures) " failed)"
                        }
                    }
                    @if let Some(shadow) = shadow {
                        dt { "Shadow" }
                        dd.shadow {
                            code title=(shadow.candidate) { (format::short_sha(&shadow.candidate)) }
                            " " (shadow.stats.streak.clean_batches) " matching batches in a row of " (shadow.stats.streak.batches)
                            "; only live " (shadow.stats.only_live) ", only candidate " (shadow.stats.only_candidate)
                            ", different " (shadow.stats.different) ", candidate failures " (shadow.stats.candidate_failures)
                            @if !shadow.stats.differing_keys.is_empty() {
                                "; keys that differ: " (shadow.stats.differing_keys.iter().take(10).cloned().collect::<Vec<_>>().join(", "))
                            }
                        }
                    }
                }
                @if viewer.may_operate && (plugin.probation_left > 0 || shadow.is_some() || canary.is_some()) {
                    @let what = if shadow.is_some() { "Give up the candidate in shadow" } else if canary.is_some() { "Give up the canary" } else { "Roll back to the previous version" };
                    button.act.danger data-url=(format!("{}/stages/{}/rollback?plugin={}", listing.path(), plugin.stage, plugin.plugin))
                        data-confirm=(format!("{what} of stage {}?", plugin.stage)) { "Roll back" }
                }
                @if let Some(versions) = snapshot.history.get(&key) {
                    div.scroll {
                        table.history {
                            thead { tr { th { "Version" } th { "SHA-256" } th { "Asked" } th { "By" } th { "Outcome" } } }
                            tbody {
                                @for record in versions.iter().rev() {
                                    tr {
                                        td { (record.version) }
                                        td { code title=(record.sha256) { (format::short_sha(&record.sha256)) } }
                                        td { (format::time(record.at_ms)) }
                                        td { (record.by.as_deref().unwrap_or("—")) }
                                        td { (outcome_text(&record.outcome)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn outcome_text(outcome: &crate::pipeline::swap::VersionOutcome) -> String {
    use crate::pipeline::swap::VersionOutcome as O;
    match outcome {
        O::Running => "running".into(),
        O::OnProbation => "on probation".into(),
        O::InShadow => "in shadow".into(),
        O::InCanary { percent } => format!("canary on {percent}% of keys"),
        O::Replaced => "replaced".into(),
        O::RolledBack { reason } => format!("rolled back: {reason}"),
        O::Refused { reason } => format!("refused: {reason}"),
    }
}

/// The last checkpoints and the totals.
pub fn checkpoints(snapshot: &Snapshot) -> Markup {
    let stats = &snapshot.metrics.checkpoints;
    html! {
        @if stats.written == 0 {
            p.muted { "No checkpoint written in this run (a pipeline without a [checkpoint] directory writes none)." }
        } @else {
            p {
                (format::count(stats.written)) " written, " (format::bytes(stats.total_bytes)) " in all; longest "
                (format::duration(stats.max_duration)) ", longest pause between batches " (format::duration(stats.max_snapshot))
            }
            div.scroll {
                table.checkpoints {
                    thead { tr { th { "After batch" } th { "Time" } th.num { "Size" } th.num { "Duration" } } }
                    tbody {
                        @for checkpoint in snapshot.checkpoints.iter().rev() {
                            tr {
                                td { "#" (checkpoint.batch) }
                                td { (format::time(checkpoint.time_ms)) }
                                td.num { (format::bytes(checkpoint.bytes)) }
                                td.num { (format::duration(checkpoint.duration)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The dead-letter count and the latest entries, per stage.
pub fn dead_letters(snapshot: &Snapshot) -> Markup {
    let total: u64 = snapshot.metrics.stages.iter().map(|s| s.dead_lettered).sum();
    html! {
        p { (format::count(total)) " record(s) dead-lettered in this run." }
        @for stage in snapshot.metrics.stages.iter().filter(|s| !s.latest_dead_letters.is_empty()) {
            h3 { (stage.stage) " · latest" }
            ul.dead {
                @for entry in stage.latest_dead_letters.iter().rev() { li { code { (entry) } } }
            }
        }
    }
}

/// Every live section of the page by element id, for the live stream.
pub fn sections(
    listing: &Listing,
    viewer: &Viewer,
    snapshot: Option<&Snapshot>,
) -> Vec<(&'static str, Markup)> {
    let mut sections = vec![("head", head(listing, viewer, snapshot))];
    if let Some(snapshot) = snapshot {
        sections.extend([
            ("facts", facts(snapshot)),
            ("charts", charts(snapshot)),
            ("batches", batch_table(listing, snapshot)),
            ("sources", sources(snapshot)),
            ("stages", stages(snapshot)),
            ("plugins", plugins(listing, viewer, snapshot)),
            ("checkpoints", checkpoints(snapshot)),
            ("dead-letters", dead_letters(snapshot)),
        ]);
    }
    sections
}
