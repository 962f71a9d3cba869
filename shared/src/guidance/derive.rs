//! The derivation: where the run stands decides the case's status, title,
//! impact and actions; an unsuccessful run's come from its reason code.

use super::{
    ACTION_CANCEL, ACTION_RETRY_NOW, ACTION_VIEW_RETRY, Action, ActionKind, CaseScope, CaseStatus, GuidanceContext,
    ResolutionCase, SOURCE_KIND_RUN, ScopeType, Severity, SourceRef, SourceRelation, TechnicalDetails,
};
use crate::lifecycle::{RunOutcome, RunStatus, Transition};
use crate::reason::{
    self, ReasonCode, Remedy, Retryability, STEP_GRANT_CAPABILITY, STEP_RETRY, STEP_REVIEW_DETAILS, translate,
};
use crate::run::OperationRun;
use crate::viewer::{ACCESS_MANAGE, RUNS_CANCEL, RUNS_RETRY, RUNS_VIEW, Viewer};

/// The parts of a case that depend on where the run stands.
struct Verdict {
    status: CaseStatus,
    severity: Severity,
    title: String,
    reason: String,
    impact: String,
    primary: Action,
    secondary: Vec<Action>,
}

/// Derive the case for `run` as `viewer` sees it. See the module docs.
pub fn guidance(run: &OperationRun, viewer: &Viewer, ctx: &GuidanceContext) -> ResolutionCase {
    let envelope = run.reason_code.as_deref().map(|c| translate(c, viewer));
    let verdict = match (run.status, run.outcome) {
        (RunStatus::Queued, _) if run.available_at > ctx.now && run.started_at.is_some() => {
            waiting_to_run_again(run, viewer, ctx)
        }
        (RunStatus::Queued, _) if run.available_at > ctx.now => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: "Scheduled".into(),
            reason: format!("The run is queued to start no earlier than {}.", run.available_at.to_rfc3339()),
            impact: "Nothing has changed yet; no action is needed while it waits.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Queued, _) if waited(run, ctx) > ctx.queued_stale_after => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Warning,
            title: "Waiting longer than expected".into(),
            reason: format!(
                "No worker has claimed the run for {}: every worker is busy with a backlog, none is running, or none \
                 serves this operation yet (during a rolling deploy an older worker leaves runs of operations it does \
                 not know to one that does).",
                humanize(waited(run, ctx))
            ),
            impact: "Nothing has changed yet. The run is never failed for waiting: it starts when a worker \
                     claims it."
                .into(),
            primary: Action::none("Check that a worker is running (oprun worker) and has free slots"),
            secondary: Vec::new(),
        },
        (RunStatus::Queued, _) => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: if run.attempt > 1 {
                format!("Waiting to start again (attempt {} of {})", run.attempt, run.max_attempts)
            } else {
                "Waiting to start".into()
            },
            reason: "The run is queued and starts when a worker picks it up.".into(),
            impact: "Nothing has changed yet; no action is needed while it waits.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Running, _) if run.cancel_requested_at.is_some() => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: "Cancelling".into(),
            reason: "An operator asked this run to stop; the worker stops it at its next checkpoint.".into(),
            impact: "Work done before it stops is kept.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Running, _) => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: "In progress".into(),
            reason: "A worker is running this operation.".into(),
            impact: "Work is under way; its counts update as it progresses.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Completed, RunOutcome::Succeeded) => Verdict {
            status: CaseStatus::Resolved,
            severity: Severity::Success,
            title: "Completed successfully".into(),
            reason: "The operation finished and did all of its work.".into(),
            impact: "None.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Completed, RunOutcome::PartiallySucceeded) => Verdict {
            status: CaseStatus::NeedsReview,
            severity: Severity::Warning,
            title: "Partially succeeded".into(),
            reason: envelope.as_ref().map_or_else(
                || "The operation finished, but part of its work failed.".to_string(),
                |e| e.explanation.clone(),
            ),
            impact: "Some items were not processed; see the failed count and the failure summary.".into(),
            primary: Action::from_step(reason::step_for(
                Remedy {
                    key: STEP_REVIEW_DETAILS,
                    label: "Review the items that failed",
                    ask: "review the items of this run that failed",
                },
                viewer,
            )),
            secondary: Vec::new(),
        },
        (RunStatus::Completed, RunOutcome::Cancelled) => Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: "Cancelled".into(),
            reason: envelope.as_ref().map_or_else(
                || translate(ReasonCode::RunCancelledByOperator.as_str(), viewer).explanation,
                |e| e.explanation.clone(),
            ),
            impact: "The run stopped before it finished; work done before the cancel is kept.".into(),
            primary: Action::none("No action needed"),
            secondary: Vec::new(),
        },
        (RunStatus::Completed, RunOutcome::Blocked | RunOutcome::Failed) => unsuccessful(run, viewer, ctx),
        (RunStatus::Completed, RunOutcome::Pending) => Verdict {
            status: CaseStatus::Unknown,
            severity: Severity::Warning,
            title: "Completed without an outcome".into(),
            reason: "The run is completed but has no outcome, which should not happen.".into(),
            impact: "It is unknown whether the work was done.".into(),
            primary: Action::from_step(reason::step_for(
                Remedy {
                    key: STEP_REVIEW_DETAILS,
                    label: "Review the technical details",
                    ask: "review this run's technical details",
                },
                viewer,
            )),
            secondary: Vec::new(),
        },
    };

    let mut source_refs = vec![SourceRef::run(run.id, SourceRelation::This)];
    source_refs.extend(ctx.retry_chain.iter().map(|&id| SourceRef::run(id, SourceRelation::RetryOf)));
    source_refs.extend(ctx.retried_by.map(|id| SourceRef::run(id, SourceRelation::RetriedBy)));

    let primary_action = linked(verdict.primary, run, ctx);
    let secondary_actions = verdict.secondary.into_iter().map(|a| linked(a, run, ctx)).collect();
    ResolutionCase {
        key: case_key(verdict.status, run, ctx),
        run_id: run.id,
        scope: CaseScope {
            scope_type: if run.environment_id.is_some() { ScopeType::Environment } else { ScopeType::Workspace },
            workspace_id: run.workspace_id.clone(),
            environment_id: run.environment_id.clone(),
            operation: run.operation.clone(),
        },
        source_surface: run.source_surface,
        severity: verdict.severity,
        status: verdict.status,
        title: verdict.title,
        reason: verdict.reason,
        impact: verdict.impact,
        primary_action,
        secondary_actions,
        source_refs,
        technical_details: TechnicalDetails {
            reason_code: run.reason_code.clone(),
            retryability: envelope.map(|e| e.retryability),
            operation: run.operation.clone(),
            attempt: run.attempt,
            max_attempts: run.max_attempts,
            status: run.status,
            outcome: run.outcome,
            lease_owner: run.lease_owner.clone(),
        },
    }
}

/// The stable key of the kind of case (see [`ResolutionCase::key`]).
fn case_key(status: CaseStatus, run: &OperationRun, ctx: &GuidanceContext) -> String {
    let status = serde_json::to_value(status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let what = match run.reason_code.as_deref() {
        _ if ctx.retried_by.is_some() => "retried".to_string(),
        Some(code) if code.parse::<ReasonCode>().is_ok() => code.rsplit('.').next().unwrap_or(code).to_string(),
        Some(_) => "unrecognized_reason".to_string(),
        None => match (run.status, run.outcome) {
            (RunStatus::Queued, _) if run.available_at > ctx.now && run.started_at.is_some() => "snoozed",
            (RunStatus::Queued, _) if run.available_at > ctx.now => "scheduled",
            (RunStatus::Queued, _) if waited(run, ctx) > ctx.queued_stale_after => "waiting_long",
            (RunStatus::Queued, _) => "queued",
            (RunStatus::Running, _) if run.cancel_requested_at.is_some() => "cancelling",
            (RunStatus::Running, _) => "running",
            (RunStatus::Completed, RunOutcome::Succeeded) => "succeeded",
            (RunStatus::Completed, RunOutcome::PartiallySucceeded) => "partially_succeeded",
            (RunStatus::Completed, RunOutcome::Cancelled) => "cancelled",
            (RunStatus::Completed, RunOutcome::Pending) => "no_outcome",
            (RunStatus::Completed, _) => "unknown_error",
        }
        .to_string(),
    };
    format!("{SOURCE_KIND_RUN}.{status}.{what}")
}

/// `action` with where it leads, whether it asks first, what it audits and
/// what run it starts, from its key.
fn linked(mut action: Action, run: &OperationRun, ctx: &GuidanceContext) -> Action {
    let id = run.id;
    let (url, method, confirm, audit, starts) = match action.key.as_str() {
        STEP_RETRY => (Some(format!("/v1/runs/{id}/retry")), "POST", true, Some(Transition::Retry), true),
        ACTION_RETRY_NOW => (Some(format!("/v1/runs/{id}/retry")), "POST", true, Some(Transition::RetryNow), false),
        ACTION_CANCEL => {
            let t = if run.status == RunStatus::Running { Transition::CancelRequest } else { Transition::Cancel };
            (Some(format!("/v1/runs/{id}/cancel")), "POST", true, Some(t), false)
        }
        ACTION_VIEW_RETRY => (ctx.retried_by.map(|n| format!("/ui/runs/{n}")), "GET", false, None, false),
        STEP_REVIEW_DETAILS => (Some(format!("/ui/runs/{id}#technical")), "GET", false, None, false),
        _ => (None, "GET", false, None, false),
    };
    action.method = url.as_ref().map(|_| method.to_string());
    action.url = url;
    action.requires_confirmation = confirm;
    action.audit_event = audit.map(|t| t.action().to_string());
    action.operation_run_type = starts.then(|| run.operation.clone());
    action
}

/// A run that ran before and waits for its time to run again: a failed
/// attempt the retry policy retries, or a snooze.
fn waiting_to_run_again(run: &OperationRun, viewer: &Viewer, ctx: &GuidanceContext) -> Verdict {
    let at = run.available_at.to_rfc3339();
    let (title, reason) = match run.reason_code.as_deref() {
        Some(code) => {
            let envelope = translate(code, viewer);
            let when = match code {
                "provider.throttled" => "Provider throttling this environment; resuming automatically at",
                "provider.budget_full" => "Waiting for this environment's provider budget; resuming automatically at",
                _ => "Retrying automatically at",
            };
            (
                format!("{when} {at} (attempt {} of {})", run.attempt, run.max_attempts),
                format!(
                    "The last attempt ended with {}: {} The run waits without holding a worker slot.",
                    envelope.label, envelope.explanation
                ),
            )
        }
        None => (
            format!("Snoozed until {at}"),
            "The operation asked to run again later (it polls work that is not finished yet); the run waits \
             without holding a worker slot and without using an attempt."
                .to_string(),
        ),
    };
    let viewer_can_retry =
        viewer.can(RUNS_RETRY) && ctx.operation_capability.as_deref().is_none_or(|cap| viewer.can(cap));
    let primary = if viewer_can_retry {
        Action::new(ACTION_RETRY_NOW, "Retry now instead of waiting", ActionKind::Retry, Some(RUNS_RETRY))
    } else {
        Action::none("No action needed: the run tries again by itself")
    };
    let secondary = if viewer.can(RUNS_CANCEL) {
        vec![Action::new(ACTION_CANCEL, "Cancel the run", ActionKind::Cancel, Some(RUNS_CANCEL))]
    } else {
        Vec::new()
    };
    Verdict {
        status: CaseStatus::Informational,
        severity: if run.reason_code.is_some() { Severity::Warning } else { Severity::Info },
        title,
        reason,
        impact: "Nothing is needed: the run tries again by itself. If every attempt fails, it ends failed with \
                 each attempt in its failure summary."
            .into(),
        primary,
        secondary,
    }
}

/// A completed run that was blocked or failed.
fn unsuccessful(run: &OperationRun, viewer: &Viewer, ctx: &GuidanceContext) -> Verdict {
    let code = run.reason_code.as_deref().unwrap_or(ReasonCode::UnknownError.as_str());
    let envelope = translate(code, viewer);
    let known = code.parse::<ReasonCode>().ok();
    let blocked = run.outcome == RunOutcome::Blocked;
    let (status, severity) = match known {
        None => (CaseStatus::Unknown, Severity::Warning),
        Some(_) if blocked => (CaseStatus::Blocked, Severity::Critical),
        Some(k) if k.is_transient() => (CaseStatus::ActionRequired, Severity::Warning),
        Some(_) => (CaseStatus::ActionRequired, Severity::Critical),
    };
    let title = format!("{}: {}", if blocked { "Blocked" } else { "Failed" }, envelope.label);
    let impact = if blocked {
        "No work was done: the run was stopped before it changed anything."
    } else {
        "The operation did not finish; what it did before it stopped is kept, the rest was not done."
    }
    .to_string();

    if ctx.retried_by.is_some() {
        let primary = if viewer.can(RUNS_VIEW) {
            Action::new(
                ACTION_VIEW_RETRY,
                "Follow the newer run that retries this one",
                ActionKind::Navigation,
                Some(RUNS_VIEW),
            )
        } else {
            Action::none("No action needed: a newer run retries this one")
        };
        return Verdict {
            status: CaseStatus::Informational,
            severity: Severity::Info,
            title: format!("{title} (retried)"),
            reason: envelope.explanation,
            impact,
            primary,
            secondary: Vec::new(),
        };
    }

    let retry_allowed = ctx.retryable_by_operators && envelope.retryability != Retryability::NotRetryable;
    let viewer_can_retry =
        viewer.can(RUNS_RETRY) && ctx.operation_capability.as_deref().is_none_or(|cap| viewer.can(cap));
    let remedy = known.and_then(ReasonCode::remedy);
    let retry_label = remedy.filter(|r| r.key == STEP_RETRY).map_or("Retry the run", |r| r.label);
    let retry_ask = remedy.filter(|r| r.key == STEP_RETRY).map_or("retry the run", |r| r.ask);

    // The fix, as the viewer may take it; a remedy's "then retry" is dropped
    // when operators cannot retry this operation.
    let fix = match known {
        Some(ReasonCode::ExecutionCapabilityMissing) => Some(if viewer.can(ACCESS_MANAGE) {
            let what = ctx
                .operation_capability
                .as_deref()
                .map_or_else(|| "the missing capability".to_string(), |cap| format!("the capability '{cap}'"));
            Action::new(
                STEP_GRANT_CAPABILITY,
                format!("Grant {what} to the actor that started this run, then retry"),
                ActionKind::Navigation,
                Some(ACCESS_MANAGE),
            )
        } else {
            Action::from_step(reason::ask_admin("grant the missing capability, then retry the run"))
        }),
        _ => envelope.next_step.clone().filter(|s| s.key != STEP_RETRY).map(Action::from_step),
    }
    .map(|mut a| {
        if !retry_allowed {
            a.label = without_retry(&a.label);
        }
        a
    });

    let no_retry = || Action::none("No retry available: this operation cannot be retried by operators");
    if blocked && ctx.cause_cleared && retry_allowed {
        let reason =
            format!("{} This is fixed now: the same check against current access truth passes.", envelope.explanation);
        let primary = if viewer_can_retry {
            Action::retry("The cause is fixed: retry the run")
        } else {
            Action::from_step(reason::ask_admin("retry the run (its cause is fixed)"))
        };
        return Verdict { status, severity: Severity::Warning, title, reason, impact, primary, secondary: Vec::new() };
    }
    let (primary, secondary) = match envelope.retryability {
        Retryability::RetryNow if retry_allowed && viewer_can_retry => (Action::retry(retry_label), Vec::new()),
        Retryability::RetryNow if retry_allowed => (Action::from_step(reason::ask_admin(retry_ask)), Vec::new()),
        Retryability::RetryNow => (no_retry(), Vec::new()),
        Retryability::RetryAfterFix => {
            let secondary =
                if retry_allowed && viewer_can_retry { vec![Action::retry("Retry the run")] } else { Vec::new() };
            (fix.unwrap_or_else(no_retry), secondary)
        }
        Retryability::NotRetryable => (fix.unwrap_or_else(|| Action::none("No action needed")), Vec::new()),
    };
    Verdict { status, severity, title, reason: envelope.explanation, impact, primary, secondary }
}

/// `label` without a trailing "then retry" clause.
fn without_retry(label: &str) -> String {
    for suffix in [", then retry the run", ", then retry"] {
        if let Some(head) = label.strip_suffix(suffix) {
            return head.to_string();
        }
    }
    label.to_string()
}

/// How long a queued run has been ready and unclaimed.
fn waited(run: &OperationRun, ctx: &GuidanceContext) -> std::time::Duration {
    (ctx.now - run.available_at.max(run.queued_at)).to_std().unwrap_or_default()
}

/// A wait to the minute (`3h 12m`).
fn humanize(d: std::time::Duration) -> String {
    let minutes = (d.as_secs() / 60).max(1);
    humantime::format_duration(std::time::Duration::from_secs(minutes * 60)).to_string()
}
