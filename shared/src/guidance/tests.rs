use chrono::{DateTime, Utc};
use serde_json::json;

use super::*;
use crate::counts::SummaryCounts;
use crate::lifecycle::SourceSurface;
use crate::reason::{ReasonCode, Retryability, STEP_CONTACT_ADMIN, STEP_GRANT_CAPABILITY, STEP_REVIEW_DETAILS};
use crate::run::{FailureEntry, Initiator, OperationRun};
use crate::viewer::{ACCESS_MANAGE, RUNS_RETRY, Viewer};

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
        snoozes: 0,
        refusals: 0,
        last_refused_at: None,
        refusal_key: None,
        retry_of: Some(Uuid::from_u128(0xdead)),
        lease_owner: (status == RunStatus::Running).then(|| "worker-1".to_string()),
        lease_expires_at: None,
        heartbeat_at: None,
        cancel_requested_at: None,
        queued_at: at(),
        repushed_at: None,
        available_at: at(),
        created_at: at(),
        started_at: (status != RunStatus::Queued).then(at),
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
        now: at(),
        queued_stale_after: std::time::Duration::from_secs(300),
        cause_cleared: false,
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
            assert_eq!(case.technical_details.reason_code.as_deref(), Some(code.as_str()));
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
    let keys: Vec<_> = case.secondary_actions.iter().map(|a| (a.key.as_str(), a.label.as_str(), a.kind)).collect();
    assert_eq!(keys, vec![(STEP_RETRY, "Retry the run", ActionKind::Retry)]);

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
        assert_eq!(case.technical_details.reason_code, None);
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
        assert_eq!(case.technical_details.reason_code.as_deref(), Some("vendor.exploded"));
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
        vec![(r.id, SourceRelation::This), (chain[0], SourceRelation::RetryOf), (chain[1], SourceRelation::RetryOf)]
    );
    assert!(case.source_refs.iter().all(|s| s.kind == SOURCE_KIND_RUN));
}

#[test]
fn active_partial_and_cancelled_runs_get_their_own_cases() {
    let queued = guidance(&run(RunStatus::Queued, RunOutcome::Pending, None), &plain(), &ctx());
    assert_eq!((queued.status, queued.severity), (CaseStatus::Informational, Severity::Info));
    // Dispatched for later: scheduled, with the time.
    let mut later = run(RunStatus::Queued, RunOutcome::Pending, None);
    later.available_at = at() + chrono::Duration::hours(2);
    let scheduled = guidance(&later, &plain(), &ctx());
    assert_eq!((scheduled.title.as_str(), scheduled.severity), ("Scheduled", Severity::Info));
    assert!(scheduled.reason.contains(&later.available_at.to_rfc3339()), "{}", scheduled.reason);
    // Ready and unclaimed past queued_stale_after: worth a look, never failed.
    let waiting = guidance(
        &run(RunStatus::Queued, RunOutcome::Pending, None),
        &plain(),
        &GuidanceContext { now: at() + chrono::Duration::hours(3), ..ctx() },
    );
    assert_eq!((waiting.status, waiting.severity), (CaseStatus::Informational, Severity::Warning));
    assert!(waiting.reason.contains("for 3h:") && waiting.impact.contains("never failed"), "{waiting:?}");

    let running = guidance(&run(RunStatus::Running, RunOutcome::Pending, None), &plain(), &ctx());
    assert_eq!(running.status, CaseStatus::Informational);
    assert!(running.title.to_lowercase().contains("in progress"));
    assert_eq!(running.technical_details.lease_owner.as_deref(), Some("worker-1"));

    let partial = guidance(&run(RunStatus::Completed, RunOutcome::PartiallySucceeded, None), &plain(), &ctx());
    assert_eq!((partial.status, partial.severity), (CaseStatus::NeedsReview, Severity::Warning));
    assert_eq!(partial.primary_action.key, STEP_REVIEW_DETAILS);

    let r = run(RunStatus::Completed, RunOutcome::Cancelled, Some("run.cancelled_by_operator"));
    let cancelled = guidance(&r, &admin(), &ctx());
    assert_eq!(cancelled.status, CaseStatus::Informational);
    assert_eq!(cancelled.primary_action.kind, ActionKind::None);
}

#[test]
fn a_run_waiting_to_run_again_offers_retry_now_and_cancel_to_those_who_may() {
    let ops = Viewer::new("olga", ["runs.view", "runs.retry", "runs.cancel", OP_CAP]);
    // A failed attempt the retry policy retries: waiting, attempt 2 of 3.
    let mut retrying = run(RunStatus::Queued, RunOutcome::Pending, Some("provider.unavailable"));
    (retrying.attempt, retrying.started_at) = (2, Some(at() - chrono::Duration::minutes(1)));
    retrying.available_at = at() + chrono::Duration::seconds(30);
    let case = guidance(&retrying, &ops, &ctx());
    let when = retrying.available_at.to_rfc3339();
    assert_eq!(case.title, format!("Retrying automatically at {when} (attempt 2 of 3)"));
    assert_eq!((case.status, case.severity), (CaseStatus::Informational, Severity::Warning));
    assert_eq!((case.primary_action.key.as_str(), case.primary_action.kind), (ACTION_RETRY_NOW, ActionKind::Retry));
    assert!(case.secondary_actions.iter().any(|a| a.key == ACTION_CANCEL && a.kind == ActionKind::Cancel));
    assert_safe(&case, &ops);
    // A viewer who may neither retry nor cancel is told nothing is needed.
    let case = guidance(&retrying, &Viewer::new("vic", ["runs.view"]), &ctx());
    assert_eq!(case.primary_action.kind, ActionKind::None);
    assert!(case.secondary_actions.is_empty(), "{:?}", case.secondary_actions);
    // A snooze (no failure): "Snoozed until", informational.
    let mut snoozed = run(RunStatus::Queued, RunOutcome::Pending, None);
    (snoozed.snoozes, snoozed.started_at) = (1, Some(at()));
    snoozed.available_at = at() + chrono::Duration::minutes(5);
    let case = guidance(&snoozed, &ops, &ctx());
    assert_eq!(case.title, format!("Snoozed until {}", snoozed.available_at.to_rfc3339()));
    assert_eq!(case.severity, Severity::Info);
    // Its time come, it is simply queued again.
    let ready = guidance(&snoozed, &ops, &GuidanceContext { now: snoozed.available_at, ..ctx() });
    assert_ne!(ready.primary_action.key, ACTION_RETRY_NOW);
    // Snoozed by the provider's throttling, or waiting for its budget: said so.
    let mut throttled = run(RunStatus::Queued, RunOutcome::Pending, Some("provider.throttled"));
    (throttled.snoozes, throttled.started_at, throttled.available_at) =
        (1, Some(at()), at() + chrono::Duration::minutes(10));
    let when = throttled.available_at.to_rfc3339();
    assert_eq!(
        guidance(&throttled, &ops, &ctx()).title,
        format!("Provider throttling this environment; resuming automatically at {when} (attempt 1 of 3)")
    );
    throttled.reason_code = Some("provider.budget_full".into());
    let case = guidance(&throttled, &ops, &ctx());
    assert!(case.title.starts_with("Waiting for this environment's provider budget; resuming automatically at"));
    assert!(case.reason.contains("without holding a worker slot"), "{}", case.reason);
    assert_safe(&case, &ops);
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
    assert_eq!(v["technical_details"]["reason_code"], "provider.timeout");
    assert_eq!(v["technical_details"]["outcome"], "failed");
}

// The resolution-case contract, field by field.

#[test]
fn case_key_names_the_kind_of_case_not_the_run() {
    let blocked = run(RunStatus::Completed, RunOutcome::Blocked, Some("execution.environment_not_operable"));
    let case = guidance(&blocked, &admin(), &ctx());
    assert_eq!(case.key, "operation_run.blocked.environment_not_operable");
    // Another run of the same kind: the same key; the run is named apart.
    let mut other = blocked.clone();
    other.id = Uuid::from_u128(0xbeef);
    let again = guidance(&other, &admin(), &ctx());
    assert_eq!(again.key, case.key);
    assert_eq!((case.run_id, again.run_id), (blocked.id, other.id));
    let keyed = |r: &OperationRun, c: &GuidanceContext| guidance(r, &admin(), c).key;
    assert_eq!(
        keyed(&run(RunStatus::Completed, RunOutcome::Succeeded, None), &ctx()),
        "operation_run.resolved.succeeded"
    );
    assert_eq!(keyed(&run(RunStatus::Queued, RunOutcome::Pending, None), &ctx()), "operation_run.informational.queued");
    assert_eq!(
        keyed(&run(RunStatus::Running, RunOutcome::Pending, None), &ctx()),
        "operation_run.informational.running"
    );
    assert_eq!(
        keyed(&run(RunStatus::Completed, RunOutcome::Failed, Some("provider.timeout")), &ctx()),
        "operation_run.action_required.timeout"
    );
    assert_eq!(
        keyed(&run(RunStatus::Completed, RunOutcome::Failed, Some("vendor.exploded")), &ctx()),
        "operation_run.unknown.unrecognized_reason"
    );
    let retried = GuidanceContext { retried_by: Some(Uuid::from_u128(0xfeed)), ..ctx() };
    assert_eq!(keyed(&blocked, &retried), "operation_run.informational.retried");
}

#[test]
fn scope_carries_its_type_and_the_case_its_source_surface() {
    let mut r = run(RunStatus::Completed, RunOutcome::Succeeded, None);
    let case = guidance(&r, &admin(), &ctx());
    assert_eq!(case.scope.scope_type, ScopeType::Environment);
    assert_eq!(case.scope.operation, OP_CAP);
    assert_eq!(case.source_surface, SourceSurface::Cli);
    r.environment_id = None;
    r.source_surface = SourceSurface::Scheduler;
    let v = serde_json::to_value(guidance(&r, &admin(), &ctx())).unwrap();
    assert_eq!(v["scope"]["type"], "workspace");
    assert_eq!(v["scope"]["workspace_id"], "ws-contoso");
    assert_eq!(v["source_surface"], "scheduler");
    assert!(v.get("technical").is_none(), "the old name is gone: {v}");
}

#[test]
fn a_retry_action_says_where_it_leads_what_it_audits_and_what_it_starts() {
    let r = run(RunStatus::Completed, RunOutcome::Failed, Some("provider.timeout"));
    let a = guidance(&r, &admin(), &ctx()).primary_action;
    assert_eq!(a.key, STEP_RETRY);
    assert_eq!(a.url.as_deref(), Some(format!("/v1/runs/{}/retry", r.id).as_str()));
    assert_eq!(a.method.as_deref(), Some("POST"));
    assert!(a.requires_confirmation);
    assert_eq!(a.audit_event.as_deref(), Some("run.retry"));
    assert_eq!(a.operation_run_type.as_deref(), Some(OP_CAP));
}

#[test]
fn retry_now_and_cancel_change_the_same_run_and_start_none() {
    let ops = Viewer::new("olga", ["runs.view", "runs.retry", "runs.cancel", OP_CAP]);
    let mut waiting = run(RunStatus::Queued, RunOutcome::Pending, Some("provider.unavailable"));
    (waiting.attempt, waiting.started_at, waiting.available_at) = (2, Some(at()), at() + chrono::Duration::seconds(30));
    let case = guidance(&waiting, &ops, &ctx());
    assert_eq!(case.primary_action.audit_event.as_deref(), Some("run.retry_now"));
    assert_eq!(case.primary_action.operation_run_type, None);
    let cancel = &case.secondary_actions[0];
    assert_eq!(cancel.url.as_deref(), Some(format!("/v1/runs/{}/cancel", waiting.id).as_str()));
    assert_eq!((cancel.audit_event.as_deref(), cancel.requires_confirmation), (Some("run.cancel"), true));
}

#[test]
fn navigation_and_asking_lead_nowhere_that_changes_a_run() {
    let newer = Uuid::from_u128(0xfeed);
    let blocked = run(RunStatus::Completed, RunOutcome::Blocked, Some("execution.environment_not_operable"));
    let follow = guidance(&blocked, &plain(), &GuidanceContext { retried_by: Some(newer), ..ctx() }).primary_action;
    assert_eq!(follow.key, ACTION_VIEW_RETRY);
    assert_eq!(
        (follow.url.as_deref(), follow.method.as_deref()),
        (Some(format!("/ui/runs/{newer}").as_str()), Some("GET"))
    );
    assert!(!follow.requires_confirmation && follow.audit_event.is_none());
    let ask = guidance(&blocked, &plain(), &ctx()).primary_action;
    assert_eq!(ask.key, STEP_CONTACT_ADMIN);
    assert_eq!((ask.url, ask.method, ask.audit_event, ask.operation_run_type), (None, None, None, None));
    let partial = run(RunStatus::Completed, RunOutcome::PartiallySucceeded, Some("provider.item_failed"));
    let review = guidance(&partial, &admin(), &ctx()).primary_action;
    assert_eq!(review.url.as_deref(), Some(format!("/ui/runs/{}#technical", partial.id).as_str()));
}

#[test]
fn a_blocked_run_whose_cause_is_fixed_now_makes_retry_the_primary_action() {
    let blocked = run(RunStatus::Completed, RunOutcome::Blocked, Some("execution.environment_not_operable"));
    let cleared = GuidanceContext { cause_cleared: true, ..ctx() };
    let ops = Viewer::new("olga", ["runs.view", "runs.retry", OP_CAP]);
    let case = guidance(&blocked, &ops, &cleared);
    assert_eq!((case.primary_action.key.as_str(), case.primary_action.kind), (STEP_RETRY, ActionKind::Retry));
    assert!(
        case.reason.ends_with("This is fixed now: the same check against current access truth passes."),
        "{}",
        case.reason
    );
    assert!(case.secondary_actions.is_empty(), "{:?}", case.secondary_actions);
    assert_eq!(case.key, "operation_run.blocked.environment_not_operable");
    // Not before the fix, and never for a viewer who may not retry.
    assert_eq!(guidance(&blocked, &ops, &ctx()).primary_action.key, STEP_CONTACT_ADMIN);
    let case = guidance(&blocked, &plain(), &cleared);
    assert_eq!(case.primary_action.key, STEP_CONTACT_ADMIN);
    assert!(case.primary_action.label.contains("retry the run"), "{}", case.primary_action.label);
    assert_safe(&case, &plain());
}
