//! Guidance: what one run means for one viewer, derived on read and never
//! stored. A run becomes a [`ResolutionCase`]: a title, the reason (from
//! [`translate`]), the impact, exactly one primary action the viewer can take,
//! optional secondary actions, the records it rests on and the raw technical
//! details. It is authorization-safe: every action's capability is held by the
//! viewer (a remedy the viewer cannot perform becomes "Ask a workspace admin
//! to …"), and it names nothing but the run, its scope and the chain ids the
//! caller passes in (already filtered to what the viewer may see).

use serde::Serialize;
use uuid::Uuid;

use crate::lifecycle::{RunOutcome, RunStatus};
use crate::reason::{
    self, NextStep, ReasonCode, Remedy, Retryability, STEP_CONTACT_ADMIN, STEP_GRANT_CAPABILITY, STEP_RETRY,
    STEP_REVIEW_DETAILS, translate,
};
use crate::run::OperationRun;
use crate::viewer::{ACCESS_MANAGE, RUNS_RETRY, RUNS_VIEW, Viewer};

/// What the caller knows about a run beyond the run itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuidanceContext {
    /// The capability the run's operation requires (from the catalog).
    pub operation_capability: Option<String>,
    /// Whether the catalog lets operators retry the operation.
    pub retryable_by_operators: bool,
    /// Earlier runs this run retries, visible to the viewer, oldest first.
    pub retry_chain: Vec<Uuid>,
    /// A newer (active) run retrying this one, if the viewer may see it.
    pub retried_by: Option<Uuid>,
}

/// How urgent a case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nothing was done and nothing will be until someone acts.
    Critical,
    /// Something needs a look, or a retry will probably do.
    Warning,
    /// For information.
    Info,
    /// Done.
    Success,
}

/// Where a case stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseStatus {
    /// The run failed; the primary action is what to do about it.
    ActionRequired,
    /// The run was refused (authorization, access, a permission); no work ran.
    Blocked,
    /// The run finished with part of its work failed.
    NeedsReview,
    /// Nothing to do: the run is queued or running, was cancelled, or a newer
    /// run retries it.
    Informational,
    /// The run succeeded.
    Resolved,
    /// The run ended for a reason this version does not recognise (or is in a
    /// state it should never be in).
    Unknown,
}

/// What an action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Go somewhere: a record, access management, technical details.
    Navigation,
    /// Retry the run (a new run, `retry_of` this one).
    Retry,
    /// Ask a workspace admin; needs no capability.
    ContactAdmin,
    /// Nothing to do.
    None,
}

/// One thing the viewer can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Action {
    /// A stable key (`retry`, `grant_capability`, `contact_admin`, `view_retry`, `none`, …).
    pub key: String,
    /// What to do, in words.
    pub label: String,
    /// What kind of action it is.
    pub kind: ActionKind,
    /// The capability it needs; always one the viewer holds.
    pub requires_capability: Option<String>,
}

/// Action key: follow the newer run that retries this one.
pub const ACTION_VIEW_RETRY: &str = "view_retry";
/// Action key: nothing to do.
pub const ACTION_NONE: &str = "none";

impl Action {
    /// Nothing to do, with a label saying why.
    fn none(label: impl Into<String>) -> Self {
        Self { key: ACTION_NONE.into(), label: label.into(), kind: ActionKind::None, requires_capability: None }
    }

    /// A translated next step as an action.
    fn from_step(step: NextStep) -> Self {
        let kind = match step.key.as_str() {
            STEP_CONTACT_ADMIN => ActionKind::ContactAdmin,
            STEP_RETRY => ActionKind::Retry,
            _ => ActionKind::Navigation,
        };
        let requires_capability = reason::required_capability(&step.key).map(str::to_string);
        Self { key: step.key, label: step.label, kind, requires_capability }
    }

    /// Retry the run.
    fn retry(label: &str) -> Self {
        Self {
            key: STEP_RETRY.into(),
            label: label.into(),
            kind: ActionKind::Retry,
            requires_capability: Some(RUNS_RETRY.into()),
        }
    }
}

/// The scope a case belongs to (the run's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseScope {
    /// The run's workspace.
    pub workspace_id: String,
    /// The run's environment, if any.
    pub environment_id: Option<String>,
}

/// How a referenced run relates to the case's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRelation {
    /// The run itself.
    This,
    /// An earlier run this one retries.
    RetryOf,
    /// A newer run retrying this one.
    RetriedBy,
}

/// The `kind` of every source reference: an OperationRun.
pub const SOURCE_KIND_RUN: &str = "operation_run";

/// A record the case rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRef {
    /// Always [`SOURCE_KIND_RUN`].
    pub kind: String,
    /// The run's id.
    pub id: Uuid,
    /// How it relates to the case's run.
    pub relation: SourceRelation,
}

impl SourceRef {
    fn run(id: Uuid, relation: SourceRelation) -> Self {
        Self { kind: SOURCE_KIND_RUN.into(), id, relation }
    }
}

/// The raw facts behind a case, for the technically minded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TechnicalDetails {
    /// The run's reason code exactly as stored.
    pub reason_code: Option<String>,
    /// How the reason code translates for retries, when there is one.
    pub retryability: Option<Retryability>,
    /// The operation type.
    pub operation: String,
    /// The attempt number.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// The run's status.
    pub status: RunStatus,
    /// The run's outcome.
    pub outcome: RunOutcome,
    /// The worker holding the lease, while running.
    pub lease_owner: Option<String>,
}

/// What one run means for one viewer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolutionCase {
    /// `operation_run:<id>`: one case per run.
    pub key: String,
    /// The run's scope.
    pub scope: CaseScope,
    /// How urgent it is.
    pub severity: Severity,
    /// Where it stands.
    pub status: CaseStatus,
    /// A one-line title.
    pub title: String,
    /// Why the run is where it is.
    pub reason: String,
    /// What it means for the work.
    pub impact: String,
    /// The one thing to do next (possibly "nothing").
    pub primary_action: Action,
    /// Other things the viewer can do.
    pub secondary_actions: Vec<Action>,
    /// The run, its visible retry chain and its visible newer retry.
    pub source_refs: Vec<SourceRef>,
    /// The raw facts, including the reason code as stored.
    pub technical: TechnicalDetails,
}

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

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::counts::SummaryCounts;
    use crate::lifecycle::SourceSurface;
    use crate::run::{FailureEntry, Initiator};

    const OP_CAP: &str = "inventory.sync";

    fn at() -> DateTime<Utc> {
        DateTime::from_timestamp(1_750_000_000, 0).unwrap()
    }

    fn run(status: RunStatus, outcome: RunOutcome, reason_code: Option<&str>) -> OperationRun {
        let completed = status == RunStatus::Completed;
        OperationRun {
            id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            operation: OP_CAP.into(),
            workspace_id: "ws-contoso".into(),
            environment_id: Some("env-prod".into()),
            target_type: None,
            target_id: None,
            initiator: Initiator::user("carol"),
            source_surface: SourceSurface::Cli,
            context: json!({}),
            params: json!({"top": 100}),
            dedup_key: None,
            status,
            outcome,
            reason_code: reason_code.map(str::to_string),
            failure_summary: reason_code
                .map(|c| vec![FailureEntry { reason_code: c.into(), message: "it went wrong".into() }])
                .unwrap_or_default(),
            summary_counts: SummaryCounts::new(),
            checkpoint: None,
            attempt: 1,
            max_attempts: 3,
            retry_of: Some(Uuid::from_u128(0xdead)),
            lease_owner: (status == RunStatus::Running).then(|| "worker-1".to_string()),
            lease_expires_at: None,
            heartbeat_at: None,
            cancel_requested_at: None,
            queued_at: at(),
            repushed_at: None,
            created_at: at(),
            started_at: Some(at()),
            completed_at: completed.then(at),
            updated_at: at(),
        }
    }

    fn admin() -> Viewer {
        Viewer::new("ada", ["runs.view", "runs.retry", "access.manage", OP_CAP])
    }

    fn plain() -> Viewer {
        Viewer::new("bob", ["runs.view"])
    }

    fn ctx() -> GuidanceContext {
        GuidanceContext {
            operation_capability: Some(OP_CAP.into()),
            retryable_by_operators: true,
            retry_chain: Vec::new(),
            retried_by: None,
        }
    }

    fn outcome_for(code: ReasonCode) -> RunOutcome {
        if code.as_str().starts_with("execution.") || code == ReasonCode::ProviderPermissionMissing {
            RunOutcome::Blocked
        } else {
            RunOutcome::Failed
        }
    }

    fn all_actions(case: &ResolutionCase) -> impl Iterator<Item = &Action> {
        std::iter::once(&case.primary_action).chain(&case.secondary_actions)
    }

    fn assert_safe(case: &ResolutionCase, viewer: &Viewer) {
        for action in all_actions(case) {
            assert!(!action.label.is_empty(), "empty action label in {case:?}");
            if let Some(cap) = &action.requires_capability {
                assert!(viewer.can(cap), "{} offered {} needing {cap}", viewer.actor_id, action.key);
            }
            if action.kind == ActionKind::Retry {
                assert!(viewer.can(RUNS_RETRY) && viewer.can(OP_CAP), "{} offered a retry", viewer.actor_id);
            }
        }
        assert!(
            case.secondary_actions.iter().all(|a| a.kind != ActionKind::None && a.key != case.primary_action.key),
            "secondary actions repeat the primary or say nothing: {case:?}"
        );
    }

    #[test]
    fn every_reason_code_gives_one_safe_primary_action_to_an_admin_and_a_plain_viewer() {
        for &code in ReasonCode::ALL {
            let r = run(RunStatus::Completed, outcome_for(code), Some(code.as_str()));
            for viewer in [admin(), plain()] {
                let case = guidance(&r, &viewer, &ctx());
                assert_safe(&case, &viewer);
                assert!(!case.title.is_empty() && !case.reason.is_empty() && !case.impact.is_empty(), "{code}");
                assert_eq!(case.technical.reason_code.as_deref(), Some(code.as_str()));
                assert!(
                    case.source_refs.contains(&SourceRef::run(r.id, SourceRelation::This)),
                    "{code}: the run itself is not among the sources"
                );
                assert_eq!(case.scope.workspace_id, "ws-contoso");
                assert_eq!(case.scope.environment_id.as_deref(), Some("env-prod"));
                if outcome_for(code) == RunOutcome::Blocked {
                    assert_eq!(case.status, CaseStatus::Blocked, "{code}");
                } else {
                    assert_eq!(case.status, CaseStatus::ActionRequired, "{code}");
                }
                if code.retryability() == Retryability::RetryNow && viewer.actor_id == "ada" {
                    assert_eq!(case.primary_action.kind, ActionKind::Retry, "{code}");
                }
                if viewer.actor_id == "bob" {
                    assert!(all_actions(&case).all(|a| a.kind != ActionKind::Retry), "{code}");
                }
            }
        }
    }

    #[test]
    fn capability_missing_tells_an_admin_to_grant_it_and_an_operator_to_ask_an_admin() {
        let r = run(RunStatus::Completed, RunOutcome::Blocked, Some("execution.capability_missing"));

        let case = guidance(&r, &admin(), &ctx());
        assert_eq!(case.status, CaseStatus::Blocked);
        assert_eq!(case.severity, Severity::Critical);
        assert_eq!(case.primary_action.key, STEP_GRANT_CAPABILITY);
        assert_eq!(case.primary_action.requires_capability.as_deref(), Some(ACCESS_MANAGE));
        assert!(case.primary_action.label.contains("'inventory.sync'"), "{}", case.primary_action.label);
        assert!(case.primary_action.label.ends_with("then retry"), "{}", case.primary_action.label);
        assert_eq!(case.secondary_actions, vec![Action::retry("Retry the run")]);

        let operator = Viewer::new("olga", ["runs.view", "runs.retry"]);
        for viewer in [plain(), operator] {
            let case = guidance(&r, &viewer, &ctx());
            assert_eq!(case.primary_action.kind, ActionKind::ContactAdmin);
            assert_eq!(case.primary_action.key, STEP_CONTACT_ADMIN);
            assert_eq!(case.primary_action.requires_capability, None);
            assert!(
                case.primary_action.label.starts_with("Ask a workspace admin to grant"),
                "{}",
                case.primary_action.label
            );
            assert!(case.secondary_actions.is_empty(), "{:?}", case.secondary_actions);
            assert_safe(&case, &viewer);
        }
    }

    #[test]
    fn retry_is_not_offered_while_a_newer_retry_exists() {
        let r = run(RunStatus::Completed, RunOutcome::Failed, Some("provider.throttled"));
        let newer = Uuid::from_u128(42);
        let context = GuidanceContext { retried_by: Some(newer), ..ctx() };
        let case = guidance(&r, &admin(), &context);
        assert!(all_actions(&case).all(|a| a.kind != ActionKind::Retry), "{case:?}");
        assert_eq!(case.primary_action.key, ACTION_VIEW_RETRY);
        assert_eq!(case.status, CaseStatus::Informational);
        assert!(case.source_refs.contains(&SourceRef::run(newer, SourceRelation::RetriedBy)));

        let without = guidance(&r, &admin(), &ctx());
        assert_eq!(without.primary_action.kind, ActionKind::Retry);
        assert_eq!(without.severity, Severity::Warning);
    }

    #[test]
    fn retry_is_not_offered_when_operators_may_not_retry_the_operation() {
        let context = GuidanceContext { retryable_by_operators: false, ..ctx() };
        for code in ["provider.timeout", "execution.actor_disabled", "unknown_error"] {
            let r = run(RunStatus::Completed, RunOutcome::Failed, Some(code));
            let case = guidance(&r, &admin(), &context);
            assert!(all_actions(&case).all(|a| a.kind != ActionKind::Retry), "{code}: {case:?}");
            assert!(all_actions(&case).all(|a| !a.label.contains("retry the run")), "{code}: {case:?}");
        }
    }

    #[test]
    fn a_viewer_without_the_operation_capability_is_sent_to_an_admin_to_retry() {
        let r = run(RunStatus::Completed, RunOutcome::Failed, Some("run.lease_expired"));
        let viewer = Viewer::new("olga", ["runs.view", "runs.retry"]);
        let case = guidance(&r, &viewer, &ctx());
        assert_eq!(case.primary_action.kind, ActionKind::ContactAdmin);
        assert_eq!(case.primary_action.label, "Ask a workspace admin to retry the run");
        assert_safe(&case, &viewer);
    }

    #[test]
    fn succeeded_run_is_resolved_with_nothing_to_do() {
        let r = run(RunStatus::Completed, RunOutcome::Succeeded, None);
        for viewer in [admin(), plain()] {
            let case = guidance(&r, &viewer, &ctx());
            assert_eq!(case.status, CaseStatus::Resolved);
            assert_eq!(case.severity, Severity::Success);
            assert_eq!(case.primary_action.kind, ActionKind::None);
            assert!(case.secondary_actions.is_empty());
            assert_eq!(case.technical.reason_code, None);
        }
    }

    #[test]
    fn unknown_code_is_an_unknown_case_with_the_fallback_and_one_primary_action() {
        let r = run(RunStatus::Completed, RunOutcome::Failed, Some("vendor.exploded"));
        for viewer in [admin(), plain(), Viewer::new("eve", Vec::<String>::new())] {
            let case = guidance(&r, &viewer, &ctx());
            assert_eq!(case.status, CaseStatus::Unknown);
            assert!(case.title.contains(reason::UNRECOGNISED_LABEL), "{}", case.title);
            assert!(case.reason.contains("vendor.exploded"), "{}", case.reason);
            assert_eq!(case.technical.reason_code.as_deref(), Some("vendor.exploded"));
            assert_ne!(case.primary_action.kind, ActionKind::None);
            assert_safe(&case, &viewer);
        }
    }

    #[test]
    fn sources_are_the_run_and_only_the_chain_the_caller_passed() {
        let r = run(RunStatus::Completed, RunOutcome::Failed, Some("provider.unavailable"));
        let case = guidance(&r, &plain(), &ctx());
        assert_eq!(case.source_refs, vec![SourceRef::run(r.id, SourceRelation::This)], "retry_of leaked");

        let chain = vec![Uuid::from_u128(1), Uuid::from_u128(2)];
        let case = guidance(&r, &plain(), &GuidanceContext { retry_chain: chain.clone(), ..ctx() });
        let ids: Vec<_> = case.source_refs.iter().map(|s| (s.id, s.relation)).collect();
        assert_eq!(
            ids,
            vec![
                (r.id, SourceRelation::This),
                (chain[0], SourceRelation::RetryOf),
                (chain[1], SourceRelation::RetryOf)
            ]
        );
        assert!(case.source_refs.iter().all(|s| s.kind == SOURCE_KIND_RUN));
    }

    #[test]
    fn active_partial_and_cancelled_runs_get_their_own_cases() {
        let queued = guidance(&run(RunStatus::Queued, RunOutcome::Pending, None), &plain(), &ctx());
        assert_eq!((queued.status, queued.severity), (CaseStatus::Informational, Severity::Info));

        let running = guidance(&run(RunStatus::Running, RunOutcome::Pending, None), &plain(), &ctx());
        assert_eq!(running.status, CaseStatus::Informational);
        assert!(running.title.to_lowercase().contains("in progress"));
        assert_eq!(running.technical.lease_owner.as_deref(), Some("worker-1"));

        let partial = guidance(&run(RunStatus::Completed, RunOutcome::PartiallySucceeded, None), &plain(), &ctx());
        assert_eq!((partial.status, partial.severity), (CaseStatus::NeedsReview, Severity::Warning));
        assert_eq!(partial.primary_action.key, STEP_REVIEW_DETAILS);

        let r = run(RunStatus::Completed, RunOutcome::Cancelled, Some("run.cancelled_by_operator"));
        let cancelled = guidance(&r, &admin(), &ctx());
        assert_eq!(cancelled.status, CaseStatus::Informational);
        assert_eq!(cancelled.primary_action.kind, ActionKind::None);
    }

    #[test]
    fn case_serializes_in_snake_case() {
        let r = run(RunStatus::Completed, RunOutcome::Failed, Some("provider.timeout"));
        let v = serde_json::to_value(guidance(&r, &admin(), &ctx())).unwrap();
        assert_eq!(v["status"], "action_required");
        assert_eq!(v["severity"], "warning");
        assert_eq!(v["primary_action"]["kind"], "retry");
        assert_eq!(v["source_refs"][0]["relation"], "this");
        assert_eq!(v["source_refs"][0]["kind"], "operation_run");
        assert_eq!(v["technical"]["reason_code"], "provider.timeout");
        assert_eq!(v["technical"]["outcome"], "failed");
    }
}
