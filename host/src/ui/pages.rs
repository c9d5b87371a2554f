//! The UI's whole pages: the pipelines list, a pipeline, a batch, the
//! login form and the error page, in one layout.

use maud::{DOCTYPE, Markup, html};

use super::directory::{Listing, Membership, TenantRow, Viewer};
use super::format;
use super::pipeline::{self, Snapshot};
use crate::pipeline::BatchDetail;

/// The layout around every page. `live` is the URL of the page's live
/// stream, if it has one.
pub fn layout(
    title: &str,
    viewer: Option<&Viewer>,
    crumbs: &[(String, String)],
    live: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Weir" }
                link rel="stylesheet" href="/ui/assets/weir.css";
                script src="/ui/assets/weir.js" defer {}
            }
            body data-live=[live] {
                header.top {
                    a.brand href="/ui/" { "Weir" }
                    nav.crumbs {
                        @for (label, href) in crumbs { span { "/" } a href=(href) { (label) } }
                    }
                    @if let Some(viewer) = viewer {
                        span.who {
                            (viewer.name)
                            @if viewer.token.is_some() {
                                form.logout method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                            }
                        }
                    }
                }
                main { (body) }
                dialog #confirm {
                    form method="dialog" {
                        p.question {}
                        div.buttons {
                            button value="cancel" { "Cancel" }
                            button.danger value="ok" #confirm-ok { "Confirm" }
                        }
                    }
                }
                div #toast role="status" {}
            }
        }
    }
}

/// The pipelines table (and, for the admin, the tenants).
pub fn pipeline_rows(viewer: &Viewer, listings: &[Listing]) -> Markup {
    let with_tenant = listings.iter().any(|l| l.tenant.is_some());
    html! {
        div.scroll {
            table.pipelines {
                thead { tr {
                    @if with_tenant { th { "Tenant" } }
                    th { "Pipeline" } th { "Status" } th.num { "Batch interval" } th { "Current batch" }
                    th.num { "Input rate" } th.num { "Total delay" } th.num { "Failures" } th { "" }
                } }
                tbody {
                    @for listing in listings {
                        @let snapshot = listing.handle.as_ref().map(|h| (h.status(), h.recent_batches(1).pop(), h.metrics()));
                        @let state = snapshot.as_ref().map(|(s, _, _)| s.state);
                        tr data-pipeline=(listing.name) data-tenant=[listing.tenant.as_deref()] {
                            @if with_tenant { td { (listing.tenant.as_deref().unwrap_or("")) } }
                            td { a href=(listing.path()) { (listing.name) } }
                            td { (pipeline::state_badge(state)) @if let Some(note) = &listing.note { " " span.muted title=(note) { "(!)" } } }
                            @if let Some((status, last, metrics)) = &snapshot {
                                td.num { (format::duration(status.batch_interval)) }
                                td { @if let Some(b) = status.last_batch { "#" (b.id) " " span.muted { (format::clock(b.time_ms)) } } @else { "—" } }
                                td.num { (last.as_ref().map_or("—".into(), |b| format::rate(b.input_rate))) }
                                td.num { (last.as_ref().map_or("—".into(), |b| format::duration(b.report.total_delay))) }
                                td.num { (format::count(metrics.stages.iter().map(|s| s.failed_batches).sum())) }
                            } @else {
                                td.num { "—" } td { "—" } td.num { "—" } td.num { "—" } td.num { "—" }
                            }
                            td { (pipeline::control_buttons(listing, viewer, state)) }
                        }
                    }
                }
            }
            @if listings.is_empty() { p.muted { "No pipelines." } }
        }
    }
}

/// The admin's tenants table: pipelines and quota use.
pub fn tenant_rows(tenants: &[TenantRow]) -> Markup {
    let share = |(used, limit): (u64, u64), f: fn(u64) -> String| {
        let percent = if limit == 0 {
            0.0
        } else {
            used as f64 * 100.0 / limit as f64
        };
        html! {
            span.use { (f(used)) " / " (f(limit)) }
            span.meter { span.fill style=(format!("width: {:.0}%", percent.min(100.0))) {} }
        }
    };
    html! {
        div.scroll {
            table.tenants {
                thead { tr { th { "Tenant" } th.num { "Pipelines" } th.num { "Running" } th { "Disk" } th { "Plugin instances" } th { "Wasm memory" } } }
                tbody {
                    @for tenant in tenants {
                        tr data-tenant=(tenant.name) {
                            td { (tenant.name) }
                            td.num { (tenant.pipelines) }
                            td.num { (tenant.running) }
                            td { (share(tenant.disk, format::bytes)) }
                            td { (share(tenant.instances, format::count)) }
                            td { (share(tenant.wasm_memory, format::bytes)) }
                        }
                    }
                }
            }
        }
    }
}

/// A cluster member's partitions: each with its task, since when it is
/// held, and its task's lag (records of the partition not read yet).
fn membership_rows(membership: &Membership, listings: &[Listing]) -> Markup {
    let lag_of = |task: &str| {
        listings
            .iter()
            .find(|l| l.name == task)
            .and_then(|l| l.handle.as_ref())
            .and_then(|h| h.metrics().sources.first().and_then(|s| s.lag))
    };
    let last = membership
        .last_rebalance_ms
        .map_or("never".to_owned(), format::time);
    html! {
        p {
            "Pipeline " code { (membership.pipeline) } ", consumer group " code { (membership.group) } ": "
            span #held-count { (membership.held.len()) } " partition(s) held, "
            span #rebalances { (membership.rebalances) } " rebalance(s), the last " (last) "; "
            span #transactions { (membership.transactions) } " Kafka transaction(s) carried "
            span #transaction-batches { (membership.transaction_batches) } " task batch(es) ("
            (membership.transactions_aborted) " aborted)."
        }
        div.scroll {
            table.held {
                thead { tr { th { "Segment" } th { "Partition" } th { "Task" } th { "Held since" } th.num { "Lag" } } }
                tbody {
                    @for held in &membership.held {
                        tr data-task=(held.task) {
                            td { (held.segment) }
                            td { code { (held.topic) "/" (held.partition) } }
                            td { a href=(format!("/ui/{}/{}", super::directory::LOCAL, held.task)) { (held.task) } }
                            td { (format::time(held.since_ms)) }
                            td.num { (lag_of(&held.task).map_or("—".into(), format::count)) }
                        }
                    }
                }
            }
        }
    }
}

/// The live sections of the list page, by element id.
pub fn list_sections(
    viewer: &Viewer,
    listings: &[Listing],
    tenants: &[TenantRow],
    membership: Option<&Membership>,
) -> Vec<(&'static str, Markup)> {
    let mut sections = Vec::new();
    if let Some(membership) = membership {
        sections.push(("cluster", membership_rows(membership, listings)));
    }
    sections.push(("pipelines", pipeline_rows(viewer, listings)));
    if viewer.admin {
        sections.push(("tenants", tenant_rows(tenants)));
    }
    sections
}

/// The list page.
pub fn list(
    viewer: &Viewer,
    listings: &[Listing],
    tenants: &[TenantRow],
    membership: Option<&Membership>,
) -> Markup {
    let sections = list_sections(viewer, listings, tenants, membership);
    let title = |id: &str| match id {
        "tenants" => "Tenants",
        "cluster" => "Cluster membership",
        _ => "Pipelines",
    };
    let body = html! {
        @for (id, markup) in &sections {
            section.card {
                h2 { (title(id)) }
                div id=(id) { (markup) }
            }
        }
    };
    layout("Pipelines", Some(viewer), &[], Some("/ui/live"), body)
}

fn pipeline_crumbs(listing: &Listing) -> Vec<(String, String)> {
    let mut crumbs = Vec::new();
    if let Some(tenant) = &listing.tenant {
        crumbs.push((tenant.clone(), "/ui/".to_owned()));
    }
    crumbs.push((listing.name.clone(), listing.path()));
    crumbs
}

/// A pipeline's page; its sections are refreshed by its live stream.
pub fn pipeline_page(listing: &Listing, viewer: &Viewer, snapshot: Option<&Snapshot>) -> Markup {
    let sections = pipeline::sections(listing, viewer, snapshot);
    let section = |id: &str| sections.iter().find(|(s, _)| *s == id).map(|(_, m)| m.clone());
    let card = |id: &str, title: &str| {
        html! {
            @if let Some(markup) = section(id) {
                section.card { h2 { (title) } div id=(id) { (markup) } }
            }
        }
    };
    let body = html! {
        section.card.title {
            h1 { (listing.name) @if let Some(t) = &listing.tenant { " " span.muted { "(" (t) ")" } } }
            div #head { (section("head").unwrap_or_default()) }
        }
        @if let Some(facts) = section("facts") { section.facts #facts { (facts) } }
        @if let Some(charts) = section("charts") { section.charts #charts { (charts) } }
        (card("batches", "Recent batches"))
        (card("sources", "Sources"))
        (card("stages", "Stages"))
        (card("plugins", "Plugins and versions"))
        (card("checkpoints", "Checkpoints"))
        (card("dead-letters", "Dead letters"))
    };
    let live = format!("{}/live", listing.path());
    layout(
        &listing.name,
        Some(viewer),
        &pipeline_crumbs(listing),
        Some(&live),
        body,
    )
}

/// A batch's page: its delays and what each stage did in it.
pub fn batch_page(listing: &Listing, viewer: &Viewer, batch: &BatchDetail) -> Markup {
    let report = &batch.report;
    let (class, outcome) = pipeline::batch_outcome(batch);
    let mut crumbs = pipeline_crumbs(listing);
    crumbs.push((
        format!("batch #{}", report.batch.id),
        format!("{}/batches/{}", listing.path(), report.batch.id),
    ));
    let body = html! {
        section.card.title {
            h1 { "Batch #" (report.batch.id) " " span.outcome.(class) { (outcome) } }
            p.muted { (listing.name) " · " (format::time(report.batch.time_ms)) }
        }
        section.facts {
            div.fact { span.label { "Records in" } span.value { (format::count(report.records_in)) } }
            div.fact { span.label { "Records out" } span.value { (format::count(report.records_out)) } }
            div.fact { span.label { "Input rate" } span.value { (format::rate(batch.input_rate)) } }
            div.fact { span.label { "Scheduling delay" } span.value { (format::duration(report.scheduling_delay)) } }
            div.fact { span.label { "Processing time" } span.value { (format::duration(report.processing_time)) } }
            div.fact { span.label { "Total delay" } span.value { (format::duration(report.total_delay)) } }
        }
        section.card {
            h2 { "Stages" }
            div.scroll {
                table.batch-stages {
                    thead { tr { th { "Stage" } th.num { "Records in" } th.num { "Records out" } th.num { "Time" } th.num { "Retries" } th.num { "Failed" } th.num { "Traps" } th.num { "Dead letters" } th.num { "Skipped" } } }
                    tbody {
                        @for stage in &batch.stages {
                            tr data-stage=(stage.stage) {
                                td { (stage.stage) }
                                td.num { (format::count(stage.records_in)) }
                                td.num { (format::count(stage.records_out)) }
                                td.num { (format::duration(stage.busy)) }
                                td.num { (format::count(stage.retries)) }
                                td.num { (format::count(stage.failed_batches)) }
                                td.num { (format::count(stage.traps)) }
                                td.num { (format::count(stage.dead_lettered)) }
                                td.num { (format::count(stage.skipped_records)) }
                            }
                        }
                    }
                }
            }
            p.muted { "Time is the stages' operators' time summed over partitions (worker time, not wall time; waits between retries included)." }
        }
    };
    layout(
        &format!("Batch #{}", report.batch.id),
        Some(viewer),
        &crumbs,
        None,
        body,
    )
}

/// The login form (a server's UI).
pub fn login(error: Option<&str>) -> Markup {
    let body = html! {
        section.card.login {
            h1 { "Log in" }
            p { "Paste a token of this server: a tenant's token shows its pipelines, the admin's shows every tenant's." }
            @if let Some(error) = error { p.error { (error) } }
            form method="post" action="/ui/login" {
                label for="token" { "Token" }
                input #token name="token" type="password" autocomplete="off" required;
                button type="submit" { "Log in" }
            }
        }
    };
    layout("Log in", None, &[], None, body)
}

/// An error page (404: no such pipeline, or not the viewer's).
pub fn error(viewer: Option<&Viewer>, title: &str, message: &str) -> Markup {
    let body = html! {
        section.card {
            h1 { (title) }
            p { (message) }
            p { a href="/ui/" { "All pipelines" } }
        }
    };
    layout(title, viewer, &[], None, body)
}
