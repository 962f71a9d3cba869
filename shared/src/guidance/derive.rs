//! The derivation: where the run stands decides the case's status, title,
//! impact and actions; an unsuccessful run's come from its reason code.

use super::{
    ACTION_CANCEL, ACTION_RETRY_NOW, ACTION_VIEW_RETRY, Action, ActionKind, CaseScope, CaseStatus, GuidanceContext,
    ResolutionCase, SOURCE_KIND_RUN, Severity, SourceRef, SourceRelation, TechnicalDetails,
};
use crate::lifecycle::{RunOutcome, RunStatus};
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
                "No worker has claimed the run for {}: every worker is busy with a backlog, or none is running.",
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

    ResolutionCase {
        key: format!("{SOURCE_KIND_RUN}:{}", run.id),
        scope: CaseScope { workspace_id: run.workspace_id.clone(), environment_id: run.environment_id.clone() },
        severity: verdict.severity,
        status: verdict.status,
        title: verdict.title,
        reason: verdict.reason,
        impact: verdict.impact,
        primary_action: verdict.primary,
        secondary_actions: verdict.secondary,
        source_refs,
        technical: TechnicalDetails {
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
        Action {
            key: ACTION_RETRY_NOW.into(),
            label: "Retry now instead of waiting".into(),
            kind: ActionKind::Retry,
            requires_capability: Some(RUNS_RETRY.into()),
        }
    } else {
        Action::none("No action needed: the run tries again by itself")
    };
    let secondary = if viewer.can(RUNS_CANCEL) {
        vec![Action {
            key: ACTION_CANCEL.into(),
            label: "Cancel the run".into(),
            kind: ActionKind::Cancel,
            requires_capability: Some(RUNS_CANCEL.into()),
        }]
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
            Action {
                key: ACTION_VIEW_RETRY.into(),
                label: "Follow the newer run that retries this one".into(),
                kind: ActionKind::Navigation,
                requires_capability: Some(RUNS_VIEW.into()),
            }
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
            Action {
                key: STEP_GRANT_CAPABILITY.into(),
                label: format!("Grant {what} to the actor that started this run, then retry"),
                kind: ActionKind::Navigation,
                requires_capability: Some(ACCESS_MANAGE.into()),
            }
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
