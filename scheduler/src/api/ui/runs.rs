//! The runs list and a run: its guidance with the one primary action as a
//! button when the viewer may take it, counts, attempts and failures, the
//! audit trail, the retry chain and the scope; retry and cancel (each asks
//! first: the case says `requires_confirmation`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use maud::{Markup, html};
use oprun_shared::{Action, ActionKind, RunDetail, RunStatus, RunView, SourceRelation};

use super::layout::{self, opt_time, page, run_link, state, time};
use super::{Form, PageError, PageResult, Signed, Ui, html_page, query_of, redirect, run_id};
use crate::api::input::{ListQuery, list_filter};

/// The filters the runs page offers (names as `GET /v1/runs` takes them).
const FILTERS: [(&str, &str); 10] = [
    ("status", "Status"),
    ("outcome", "Outcome"),
    ("reason", "Reason code"),
    ("operation", "Operation"),
    ("workspace", "Workspace"),
    ("environment", "Environment"),
    ("schedule", "Schedule"),
    ("initiator", "Started by"),
    ("created_after", "Created after"),
    ("created_before", "Created before"),
];

const STATUSES: [&str; 3] = ["queued", "running", "completed"];
const OUTCOMES: [&str; 7] = ["pending", "succeeded", "partially_succeeded", "blocked", "failed", "cancelled", ""];

pub(super) async fn list(State(ui): State<Ui>, signed: Signed, uri: Uri) -> PageResult {
    let raw = uri.query().unwrap_or("");
    let given: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes()).into_owned().collect();
    let value = |name: &str| given.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str()).to_string();
    let reads = ui.api.operator.reads();
    let workspaces = reads.visible_workspaces(&signed.actor.id).await?;
    let operations: Vec<String> = ui.api.operator.dispatcher().service().catalog().operations.keys().cloned().collect();
    let parsed = query_of::<ListQuery>(raw).and_then(|q| list_filter(q, ui.api.clock.now()).map_err(PageError::from));
    let (runs, error) = match parsed {
        Ok(filter) => (reads.list(&signed.actor.id, filter.clone()).await?, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let limit: usize = value("limit").parse().unwrap_or(50);
    let next = (runs.len() == limit).then(|| runs.last().map(|r| r.id)).flatten();
    let live = runs.iter().any(|r| r.status != RunStatus::Completed);
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    let select = |name: &str, options: &[String]| {
        let current = value(name);
        html! {
            select name=(name) {
                option value="" { "any" }
                @for o in options { option value=(o) selected[*o == current] { (o) } }
            }
        }
    };
    let body = html! {
        @if let Some(e) = &error { (layout::notice("bad", &e.message)) }
        form.filters.card method="get" action="/ui/runs" {
            @for (name, label) in FILTERS {
                label { (label)
                    @match name {
                        "status" => (select(name, &STATUSES.map(String::from))),
                        "outcome" => (select(name, &OUTCOMES[..6].iter().map(|s| s.to_string()).collect::<Vec<_>>())),
                        "operation" => (select(name, &operations)),
                        "workspace" => (select(name, &workspaces.iter().cloned().collect::<Vec<_>>())),
                        "created_after" | "created_before" => input type="text" name=(name) value=(value(name))
                            placeholder="2026-12-01T00:00:00Z";,
                        _ => input type="text" name=(name) value=(value(name));,
                    }
                }
            }
            div { button type="submit" { "Filter" } " " a href="/ui/runs" { "Clear" } }
        }
        @if live { p.muted { "Live runs on this page: it refreshes every 5 s (with JavaScript)." } }
        (runs_table(&views))
        @if views.is_empty() && error.is_none() { p.muted { "No runs match." } }
        div.pager {
            @if let Some(before) = next {
                a #older href={ "/ui/runs?" (with_before(&given, before)) } { "Older runs →" }
            }
        }
    };
    Ok(html_page(status, page("Runs", &signed.chrome("runs"), live, body)))
}

/// The query with `before` set to `id`.
fn with_before(given: &[(String, String)], id: uuid::Uuid) -> String {
    let kept: Vec<(String, String)> = given
        .iter()
        .filter(|(k, v)| k != "before" && !v.is_empty())
        .cloned()
        .chain([("before".into(), id.to_string())])
        .collect();
    super::encode(kept.iter())
}

/// A table of runs.
pub(super) fn runs_table(runs: &[RunView]) -> Markup {
    html! {
        @if !runs.is_empty() {
            div.scroll {
                table.runs {
                    thead { tr {
                        th { "Run" } th { "Operation" } th { "State" } th { "Reason" } th { "Scope" }
                        th.hide-narrow { "Started by" } th { "Created" }
                    } }
                    tbody {
                        @for r in runs {
                            tr data-run=(r.id) {
                                td { (run_link(r.id)) }
                                td { (r.operation) }
                                td { (state(r.status, r.outcome)) }
                                td.mono { (r.reason_code.as_deref().unwrap_or("–")) }
                                td { (r.workspace_id) @if let Some(e) = &r.environment_id { " / " (e) } }
                                td.hide-narrow { (r.initiator.kind.as_str()) ":" (r.initiator.id) }
                                td { (time(r.created_at)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn show(
    State(ui): State<Ui>,
    signed: Signed,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> PageResult {
    let id = run_id(path)?;
    let reads = ui.api.operator.reads();
    let (_, detail) = reads.detail(&signed.actor.id, id).await?;
    let audit = reads.audit(&signed.actor.id, id).await?;
    let done = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "done")
        .map(|(_, v)| v.into_owned());
    let live = detail.run.status != RunStatus::Completed;
    let body = html! {
        @match done.as_deref() {
            Some("retried") => (layout::notice("ok", "Retry started: this is the new run.")),
            Some("ready") => (layout::notice("ok", "The run is ready now: a worker claims it next.")),
            Some("deduplicated") => (layout::notice("warn", "An active run of the same scope already existed: this is it, not a new retry.")),
            Some("cancelled") => (layout::notice("ok", "Cancelled.")),
            Some("cancel_requested") => (layout::notice("ok", "Cancel requested: the worker stops it at its next checkpoint.")),
            _ => {}
        }
        (guidance(&detail, &signed))
        div.grid2 {
            section.card {
                h2 { "Run" }
                dl.facts {
                    dt { "Id" } dd.mono #run-id { (detail.run.id) }
                    dt { "Operation" } dd { (detail.run.operation) }
                    dt { "State" } dd #state { (state(detail.run.status, detail.run.outcome)) }
                    dt { "Reason code" } dd.mono { (detail.run.reason_code.as_deref().unwrap_or("–")) }
                    dt { "Attempt" } dd { (detail.run.attempt) " of " (detail.run.max_attempts) }
                    dt { "Created" } dd { (time(detail.run.created_at)) }
                    dt { "Started" } dd { (opt_time(detail.run.started_at)) }
                    dt { "Completed" } dd { (opt_time(detail.run.completed_at)) }
                    @if detail.run.refusals > 0 {
                        dt { "Refused ticks" } dd { (detail.run.refusals) ", last " (opt_time(detail.run.last_refused_at)) }
                    }
                }
            }
            section.card {
                h2 { "Scope" }
                dl.facts {
                    dt { "Workspace" } dd { (detail.run.workspace_id) }
                    dt { "Environment" } dd { (detail.run.environment_id.as_deref().unwrap_or("–")) }
                    @if let (Some(t), Some(i)) = (&detail.run.target_type, &detail.run.target_id) {
                        dt { "Target" } dd { (t) " " (i) }
                    }
                    dt { "Started by" } dd { (detail.run.initiator.kind.as_str()) ":" (detail.run.initiator.id) }
                    dt { "From" } dd { (detail.run.source_surface.as_str()) }
                }
            }
        }
        section.card #chain {
            h2 { "Retry chain" }
            (chain(&detail))
        }
        section.card {
            h2 { "Counts" }
            (layout::json(&detail.run.summary_counts))
            @if !detail.run.failure_summary.is_empty() {
                h2 { "Failures" }
                ul { @for f in &detail.run.failure_summary { li { code { (f.reason_code) } ": " (f.message) } } }
            }
        }
        section.card {
            h2 { "Audit trail" }
            div.scroll { table #audit {
                thead { tr { th { "At" } th { "Action" } th { "By" } th { "Details" } } }
                tbody { @for e in &audit { tr {
                    td { (time(e.entry.at)) }
                    td.mono { (e.entry.action) }
                    td { (e.entry.actor.kind.as_str()) ":" (e.entry.actor.id) }
                    td.mono { (compact(&e.entry.details)) }
                } } }
            } }
        }
        section.card #technical {
            h2 { "Technical details" }
            (layout::json(&serde_json::to_value(&detail.guidance.technical_details).unwrap_or_default()))
            p.muted { "Case " code { (detail.guidance.key) } }
        }
    };
    Ok(html_page(StatusCode::OK, page(&format!("Run {}", &id.to_string()[..8]), &signed.chrome("runs"), live, body)))
}

fn compact(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.len() > 300 { format!("{}…", s.chars().take(300).collect::<String>()) } else { s }
}

/// The run's guidance: title, reason, impact, the primary action and the
/// secondary ones.
fn guidance(detail: &RunDetail, signed: &Signed) -> Markup {
    let g = &detail.guidance;
    html! {
        section.card.guidance #guidance {
            p.title { (layout::severity(g.severity)) " " span #guidance-title { (g.title) } }
            p #guidance-reason { (g.reason) }
            p.muted { "Impact: " (g.impact) }
            div.primary #primary-action { (action(detail, &g.primary_action, signed, true)) }
            @for a in &g.secondary_actions {
                div.secondary { (action(detail, a, signed, false)) }
            }
        }
    }
}

/// One action: a button for one that changes the run (the case only
/// offers those the viewer may take), a link for one that leads somewhere,
/// words for the rest ("Ask a workspace admin to …").
fn action(detail: &RunDetail, a: &Action, signed: &Signed, primary: bool) -> Markup {
    let id = detail.run.id;
    let class = if primary { "" } else { "secondary" };
    match a.kind {
        ActionKind::Retry | ActionKind::Cancel => {
            let verb = if a.kind == ActionKind::Retry { "retry" } else { "cancel" };
            html! {
                form method="post" action={ "/ui/runs/" (id) "/" (verb) } {
                    (layout::csrf_field(&signed.session.csrf))
                    button type="submit" class=(class) data-action=(a.key) { (a.label) }
                }
            }
        }
        ActionKind::Navigation if a.url.as_deref().is_some_and(|u| u.starts_with("/ui/")) => {
            html! { a href=(a.url.as_deref().unwrap_or("/ui")) data-action=(a.key) { (a.label) } }
        }
        ActionKind::ContactAdmin => html! { p.ask data-action=(a.key) { (a.label) } },
        _ => html! { p data-action=(a.key) { (a.label) } },
    }
}

/// Earlier runs this one retries and the newer one retrying it.
fn chain(detail: &RunDetail) -> Markup {
    let refs = &detail.guidance.source_refs;
    let earlier: Vec<_> = refs.iter().filter(|r| r.relation == SourceRelation::RetryOf).collect();
    let newer: Vec<_> = refs.iter().filter(|r| r.relation == SourceRelation::RetriedBy).collect();
    html! {
        @if earlier.is_empty() && newer.is_empty() { p.muted { "No retries: this run retries none and none retries it." } }
        @if !earlier.is_empty() {
            p { "Retries " @for (i, r) in earlier.iter().enumerate() { @if i > 0 { " ← " } span.retry-of { (run_link(r.id)) } } }
        }
        @for r in newer { p { "Retried by " span.retried-by { (run_link(r.id)) } } }
    }
}

/// Whether a posted action was confirmed; else the confirmation page.
fn confirmation(form: &Form, signed: &Signed, detail: &RunDetail, verb: &str) -> Option<PageResult> {
    if form.get("confirmed") == Some("yes") {
        return None;
    }
    let g = &detail.guidance;
    let action = std::iter::once(&g.primary_action)
        .chain(&g.secondary_actions)
        .find(|a| matches!((verb, a.kind), ("retry", ActionKind::Retry) | ("cancel", ActionKind::Cancel)));
    let what = match action {
        Some(a) if a.operation_run_type.is_some() => format!(
            "This starts a new run of {} in {} that retries this one (audited as {}).",
            a.operation_run_type.as_deref().unwrap_or(""),
            detail.run.workspace_id,
            a.audit_event.as_deref().unwrap_or("run.retry")
        ),
        Some(a) => format!("{} (audited as {}).", a.label, a.audit_event.as_deref().unwrap_or(verb)),
        None => format!("{verb} this run."),
    };
    let id = detail.run.id;
    let body = html! {
        section.card {
            p #confirm-what { (what) }
            form method="post" action={ "/ui/runs/" (id) "/" (verb) } {
                (layout::csrf_field(&signed.session.csrf))
                input type="hidden" name="confirmed" value="yes";
                button #confirm type="submit" class=[(verb == "cancel").then_some("danger")] { "Yes, " (verb) }
                " " a href={ "/ui/runs/" (id) } { "No, back to the run" }
            }
        }
    };
    let title = if verb == "retry" { "Retry this run?" } else { "Cancel this run?" };
    Some(Ok(html_page(StatusCode::OK, page(title, &signed.chrome("runs"), false, body))))
}

pub(super) async fn retry(
    State(ui): State<Ui>,
    signed: Signed,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> PageResult {
    act(ui, signed, path, body, "retry").await
}

pub(super) async fn cancel(
    State(ui): State<Ui>,
    signed: Signed,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> PageResult {
    act(ui, signed, path, body, "cancel").await
}

async fn act(
    ui: Ui,
    signed: Signed,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    verb: &str,
) -> PageResult {
    let form = Form::parse(body)?;
    form.check(&signed)?;
    let id = run_id(path)?;
    let (run, detail) = ui.api.operator.reads().detail(&signed.actor.id, id).await?;
    if let Some(page) = confirmation(&form, &signed, &detail, verb) {
        return page;
    }
    if verb == "retry" {
        let r = ui.api.operator.retry(&signed.actor, id).await?;
        let done = match (r.run.id == run.id, r.deduplicated) {
            (true, _) => "ready",
            (false, true) => "deduplicated",
            (false, false) => "retried",
        };
        return Ok(redirect(&format!("/ui/runs/{}?done={done}", r.run.id)));
    }
    let done = match ui.api.operator.cancel(&signed.actor, id).await? {
        oprun_shared::Cancelled::Cancelled(_) => "cancelled",
        oprun_shared::Cancelled::Requested(_) => "cancel_requested",
    };
    Ok(redirect(&format!("/ui/runs/{id}?done={done}")))
}
