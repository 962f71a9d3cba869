//! The overview, schedules, reconcile (a dry run first, then apply) and
//! bulk retry or cancel by filter (a preview of the runs it touches first).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use maud::{Markup, html};
use oprun_shared::{ReconcileFilter, RunFilter, RunOutcome, RunStatus, RunView};

use super::layout::{self, badge, csrf_field, opt_time, page, run_link, time};
use super::runs::runs_table;
use super::{Form, PageError, PageResult, Signed, Ui, html_page, query_of};
use crate::api::input::{BulkBody, bulk_filter};
use crate::operator::{BULK_DEFAULT_MAX, BulkAction};

/// The overview's columns: a run's state in words.
const COLUMNS: [&str; 7] = ["queued", "running", "succeeded", "partially_succeeded", "blocked", "failed", "cancelled"];

fn column(status: RunStatus, outcome: RunOutcome) -> &'static str {
    match (status, outcome) {
        (RunStatus::Queued, _) => "queued",
        (RunStatus::Running, _) => "running",
        (_, o) => o.as_str(),
    }
}

pub(super) async fn overview(State(ui): State<Ui>, signed: Signed) -> PageResult {
    let reads = ui.api.operator.reads();
    let actor = &signed.actor.id;
    let visible: Vec<String> = reads.visible_workspaces(actor).await?.into_iter().collect();
    let since = ui.api.clock.now() - chrono::Duration::hours(24);
    let counts = ui
        .api
        .operator
        .dispatcher()
        .service()
        .count(&RunFilter {
            visible_workspaces: Some(visible.clone()),
            created_after: Some(since),
            ..RunFilter::default()
        })
        .await
        .map_err(|e| PageError::from(crate::operator::ActionError::Store(e.to_string().into())))?;
    let mut table: BTreeMap<&str, BTreeMap<&str, u64>> =
        visible.iter().map(|w| (w.as_str(), BTreeMap::new())).collect();
    for c in &counts {
        if let Some(row) = table.get_mut(c.workspace_id.as_str()) {
            *row.entry(column(c.status, c.outcome)).or_default() += c.count;
        }
    }
    let mut needing = Vec::new();
    for outcome in [RunOutcome::Blocked, RunOutcome::Failed] {
        let filter = RunFilter {
            status: Some(RunStatus::Completed),
            outcome: Some(outcome),
            created_after: Some(since),
            without_retry: true,
            limit: 20,
            ..RunFilter::default()
        };
        needing.extend(reads.list(actor, filter).await?);
    }
    needing.sort_by_key(|r| std::cmp::Reverse(r.id));
    needing.truncate(20);
    let needing: Vec<RunView> = needing.iter().map(RunView::from).collect();
    let schedules = schedule_admin(&ui).list(actor, 5).await?;
    let unclean: Vec<_> =
        schedules.iter().filter(|s| s.recent_ticks.iter().take(3).any(|t| t.clean == Some(false))).collect();
    let body = html! {
        section.card {
            h2 { "Needs action" }
            @if needing.is_empty() { p.muted #nothing-needed { "No blocked or failed run of the last 24 hours waits for an operator." } }
            @else {
                p.muted { "Blocked or failed in the last 24 hours, not retried yet — newest first." }
                (runs_table(&needing))
            }
        }
        section.card {
            h2 { "Runs of the last 24 hours" }
            @if visible.is_empty() { p.muted { "You may see no workspace's runs." } }
            @else {
                div.scroll { table #by-outcome {
                    thead { tr { th { "Workspace" } @for c in COLUMNS { th { (c.replace('_', " ")) } } } }
                    tbody { @for (ws, row) in &table { tr {
                        td { (ws) }
                        @for c in COLUMNS {
                            td { @match row.get(c) {
                                Some(n) => a href={ "/ui/runs?workspace=" (ws) "&" (filter_of(c)) } { (n) },
                                None => span.muted { "0" },
                            } }
                        }
                    } } }
                } }
            }
        }
        section.card {
            h2 { "Schedules with unclean recent ticks" }
            @if unclean.is_empty() { p.muted { "Every schedule's recent ticks were clean (or none has ticked yet)." } }
            @else { ul { @for s in &unclean { li {
                a href="/ui/schedules" { (s.name) } " — " (s.operation) " in " (s.workspace)
                @if let Some(e) = &s.environment { " / " (e) }
                ": clean streak " (s.clean_streak)
            } } } }
        }
    };
    Ok(html_page(StatusCode::OK, page("Overview", &signed.chrome("overview"), false, body)))
}

/// The runs-list query of an overview column.
fn filter_of(column: &str) -> String {
    match column {
        "queued" | "running" => format!("status={column}"),
        outcome => format!("outcome={outcome}"),
    }
}

fn schedule_admin(ui: &Ui) -> crate::schedules::Schedules {
    super::super::schedule_admin(&ui.api)
}

pub(super) async fn schedules(State(ui): State<Ui>, signed: Signed) -> PageResult {
    let views = schedule_admin(&ui).list(&signed.actor.id, 10).await?;
    let body = html! {
        @if views.is_empty() { p.muted { "No schedule in a workspace you may see." } }
        @for s in &views {
            section.card data-schedule=(s.name) {
                h2 { (s.name) " "
                    @if s.paused.is_some() { (badge("paused", "warn")) }
                    @else if !s.enabled { (badge("disabled", "muted")) }
                    @else { (badge("active", "ok")) }
                }
                dl.facts {
                    dt { "Operation" } dd { (s.operation) }
                    dt { "Scope" } dd { (s.workspace) @if let Some(e) = &s.environment { " / " (e) } }
                    dt { "Cron" } dd.mono { (s.cron) " (" (s.timezone) ")" }
                    dt { "Clean streak" } dd.streak { (s.clean_streak) " ticks" }
                    dt { "Next tick" } dd { (opt_time(s.next_tick)) }
                    @if let Some(p) = &s.paused {
                        dt { "Paused" } dd { (time(p.at)) " by " (p.by.as_deref().unwrap_or("?"))
                            @if let Some(n) = &p.note { " — " (n) } }
                    }
                }
                @if !s.recent_ticks.is_empty() {
                    div.scroll { table {
                        thead { tr { th { "Tick" } th { "Decision" } th { "Clean" } th { "Runs" } } }
                        tbody { @for t in &s.recent_ticks { tr {
                            td { (time(t.scheduled_for)) }
                            td { (badge(t.decision.as_str(), decision_tone(t.decision.as_str()))) }
                            td { @match t.clean { Some(true) => "clean", Some(false) => "not clean", None => "–" } }
                            td { @for id in &t.run_ids { (run_link(*id)) " " } }
                        } } }
                    } }
                }
            }
        }
    };
    Ok(html_page(StatusCode::OK, page("Schedules", &signed.chrome("schedules"), false, body)))
}

fn decision_tone(decision: &str) -> &'static str {
    match decision {
        "fired" => "ok",
        "refused" => "bad",
        "skipped_overlap" | "skipped_misfire" | "claimed" => "warn",
        _ => "muted",
    }
}

/// The reconcile form's fields.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconcileForm {
    workspace: Option<String>,
    operation: Option<String>,
    apply: Option<String>,
}

pub(super) async fn reconcile_page(signed: Signed) -> PageResult {
    let body = reconcile_form(&signed, &ReconcileForm::default(), None);
    Ok(html_page(StatusCode::OK, page("Reconcile", &signed.chrome("reconcile"), false, body)))
}

fn reconcile_form(signed: &Signed, f: &ReconcileForm, report: Option<Markup>) -> Markup {
    html! {
        p.muted { "Moves on runs whose worker stopped heartbeating (their lease expired): requeued while attempts remain, \
                   else failed run.lease_expired; a run asked to cancel is cancelled. A dry run shows what would change." }
        form.filters.card method="post" action="/ui/reconcile" {
            (csrf_field(&signed.session.csrf))
            label { "Workspace" input type="text" name="workspace" value=(f.workspace.as_deref().unwrap_or("")); }
            label { "Operation" input type="text" name="operation" value=(f.operation.as_deref().unwrap_or("")); }
            div { button #dry-run type="submit" { "Preview (dry run)" } }
        }
        @if let Some(r) = report { (r) }
    }
}

pub(super) async fn reconcile(State(ui): State<Ui>, signed: Signed, body: Result<Bytes, BytesRejection>) -> PageResult {
    let form = Form::parse(body)?;
    form.check(&signed)?;
    let f: ReconcileForm = query_of(&form.encoded_without(&["csrf"]))?;
    let dry_run = f.apply.as_deref() != Some("yes");
    let filter = ReconcileFilter { operation: f.operation.clone(), workspace_id: f.workspace.clone(), within: None };
    let report = ui.api.operator.reconcile(&signed.actor, &filter, dry_run).await?;
    let result = html! {
        section.card #reconcile-report {
            h2 { @if dry_run { "Would change" } @else { "Changed" } }
            @if report.actions.is_empty() { p #nothing { "Nothing to reconcile: no run's lease has expired." } }
            @else {
                div.scroll { table {
                    thead { tr { th { "Run" } th { "Operation" } th { "Workspace" } th { "What" } th { "Why" } } }
                    tbody { @for a in &report.actions { tr {
                        td { (run_link(a.run_id)) }
                        td { (a.operation) }
                        td { (a.workspace_id) }
                        td { (a.from_status.as_str()) " → " (a.to_status.as_str()) " " code { (a.reason_code) } }
                        td { (a.why) }
                    } } }
                } }
                @if dry_run {
                    form method="post" action="/ui/reconcile" {
                        (csrf_field(&signed.session.csrf))
                        @if let Some(w) = &f.workspace { input type="hidden" name="workspace" value=(w); }
                        @if let Some(o) = &f.operation { input type="hidden" name="operation" value=(o); }
                        input type="hidden" name="apply" value="yes";
                        button #apply.danger type="submit" { "Apply to " (report.actions.len()) " runs" }
                    }
                }
            }
            @if report.lost_races > 0 { p.muted { (report.lost_races) " runs were moved by another process first." } }
        }
    };
    let body = reconcile_form(&signed, &f, Some(result));
    Ok(html_page(StatusCode::OK, page("Reconcile", &signed.chrome("reconcile"), false, body)))
}

/// The filters a bulk action takes (the API's `BulkBody` fields).
const BULK_FIELDS: [(&str, &str); 10] = [
    ("reason", "Reason code"),
    ("status", "Status"),
    ("outcome", "Outcome"),
    ("operation", "Operation"),
    ("workspace", "Workspace"),
    ("environment", "Environment"),
    ("schedule", "Schedule"),
    ("initiator", "Started by"),
    ("created_after", "Created after"),
    ("created_before", "Created before"),
];

pub(super) async fn bulk_page(signed: Signed) -> PageResult {
    let body = bulk_form(&signed, &Form(Vec::new()), None);
    Ok(html_page(StatusCode::OK, page("Bulk actions", &signed.chrome("bulk"), false, body)))
}

fn bulk_form(signed: &Signed, form: &Form, result: Option<Markup>) -> Markup {
    let value = |n: &str| form.get(n).unwrap_or("").to_string();
    let action = value("action");
    html! {
        p.muted { "Retry every blocked or failed run a filter matches, or cancel every queued or running one: \
                   each run is authorized and audited on its own. A preview lists the runs first." }
        form.filters.card method="post" action="/ui/bulk" {
            (csrf_field(&signed.session.csrf))
            label { "Action" select name="action" {
                option value="retry" selected[action != "cancel"] { "retry" }
                option value="cancel" selected[action == "cancel"] { "cancel" }
            } }
            @for (name, label) in BULK_FIELDS {
                label { (label) input type="text" name=(name) value=(value(name)); }
            }
            label { "At most" input type="number" name="max" min="1" max="10000" value=(value("max")) placeholder=(BULK_DEFAULT_MAX); }
            div { button #preview type="submit" { "Preview" } }
        }
        @if let Some(r) = result { (r) }
    }
}

pub(super) async fn bulk(State(ui): State<Ui>, signed: Signed, body: Result<Bytes, BytesRejection>) -> PageResult {
    let form = Form::parse(body)?;
    form.check(&signed)?;
    let action = match form.get("action") {
        Some("cancel") => BulkAction::Cancel,
        Some("retry") | None => BulkAction::Retry,
        Some(other) => {
            return Err(PageError::invalid(format!("action: '{}' is neither retry nor cancel", other.escape_debug())));
        }
    };
    let confirmed = form.get("confirmed") == Some("yes");
    let fields = form.encoded_without(&["csrf", "action", "confirmed"]);
    let b: BulkBody = match query_of(&fields) {
        Ok(b) => b,
        Err(e) => return Ok(bulk_refused(&signed, &form, e)),
    };
    let filter = match bulk_filter(&b) {
        Ok(f) => f,
        Err(e) => return Ok(bulk_refused(&signed, &form, e.into())),
    };
    let report = ui.api.operator.act_on_filter(&signed.actor, action, filter, b.max, !confirmed).await?;
    let verb = if action == BulkAction::Retry { "retry" } else { "cancel" };
    let result = html! {
        section.card #bulk-report {
            h2 { @if report.dry_run { "Would " (verb) " " (report.matched) " runs" } @else { "Done: " (report.matched) " runs" } }
            @if report.more { (layout::notice("warn", "More runs match than the cap: act again after this, or raise it.")) }
            @if !report.runs.is_empty() {
                div.scroll { table {
                    thead { tr { th { "Run" } th { "Operation" } th { "Scope" } th { "Reason" } th { "Result" } th { "New run" } } }
                    tbody { @for r in &report.runs { tr {
                        td { (run_link(r.run_id)) }
                        td { (r.operation) }
                        td { (r.workspace_id) @if let Some(e) = &r.environment_id { " / " (e) } }
                        td.mono { (r.reason_code.as_deref().unwrap_or("–")) }
                        td { (r.result) @if let Some(m) = &r.message { " — " (m) } }
                        td { @if let Some(n) = r.new_run_id { (run_link(n)) } }
                    } } }
                } }
            }
            @if report.dry_run && !report.runs.is_empty() {
                form method="post" action="/ui/bulk" {
                    (csrf_field(&signed.session.csrf))
                    input type="hidden" name="action" value=(verb);
                    @for (k, v) in &form.0 {
                        @if !v.is_empty() && !["csrf", "action", "confirmed"].contains(&k.as_str()) {
                            input type="hidden" name=(k) value=(v);
                        }
                    }
                    input type="hidden" name="confirmed" value="yes";
                    button #confirm.danger type="submit" { "Yes, " (verb) " these " (report.runs.len()) " runs" }
                }
            }
        }
    };
    Ok(html_page(
        StatusCode::OK,
        page("Bulk actions", &signed.chrome("bulk"), false, bulk_form(&signed, &form, Some(result))),
    ))
}

fn bulk_refused(signed: &Signed, form: &Form, e: PageError) -> axum::response::Response {
    let body = bulk_form(signed, form, Some(layout::notice("bad", &e.message)));
    html_page(e.status, page("Bulk actions", &signed.chrome("bulk"), false, body))
}
