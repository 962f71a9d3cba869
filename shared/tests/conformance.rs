//! The store conformance suite: every transition and every refusal of the
//! lifecycle table, run through `OperationRunService` against real Postgres
//! and a real SQLite file. Each case below runs once per backend.

use std::sync::Arc;

use chrono::Duration;
use oprun_shared::testing::{self, Backend, TestStore};
use oprun_shared::{
    BlockFrom, Cancelled, Claim, Completion, DispatchRequest, FailureEntry, Finish, Initiator, Lease, ManualClock,
    OperationRunService, ReasonCode, ReconcileFilter, ReconcileKind, RunFilter, RunOutcome, RunStatus, Scope,
    ServiceConfig, ServiceError, SourceSurface, SummaryCounts, TransitionError,
};
use serde_json::json;
use tokio::sync::Barrier;

struct Env {
    svc: OperationRunService,
    clock: Arc<ManualClock>,
    db: TestStore,
}

async fn env(b: Backend) -> Env {
    env_with(b, ServiceConfig::default()).await
}

async fn env_with(b: Backend, config: ServiceConfig) -> Env {
    let db = TestStore::new(b).await;
    let clock = testing::clock();
    let svc = OperationRunService::new(db.store.clone(), testing::catalog(), clock.clone(), config);
    Env { svc, clock, db }
}

fn sync_req(env: &str) -> DispatchRequest {
    DispatchRequest {
        operation: "inventory.sync".into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({"correlation_id": "c-1"}),
        params: json!({"page_size": 100}),
    }
}

fn counts(pairs: &[(&str, u64)]) -> SummaryCounts {
    let mut c = SummaryCounts::new();
    for (k, v) in pairs {
        c.add(k, *v).unwrap();
    }
    c
}

fn oncall() -> Initiator {
    Initiator::user("oncall-1")
}

/// The hold `worker` has on run `id` on the attempt the run is on now.
async fn lease(e: &Env, id: uuid::Uuid, worker: &str) -> Lease {
    Lease { run: id, worker: worker.into(), attempt: e.svc.get(id).await.unwrap().attempt }
}

async fn actions(e: &Env, id: uuid::Uuid) -> Vec<String> {
    e.svc.audit(id).await.unwrap().into_iter().map(|a| a.entry.action).collect()
}

// ---------------------------------------------------------------- dispatch

async fn dispatch_writes_a_queued_pending_run_with_its_audit_row(b: Backend) {
    let e = env(b).await;
    let d = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    assert!(!d.deduplicated);
    let run = e.svc.get(d.run.id).await.unwrap();
    assert_eq!(run, d.run, "what dispatch returns is what was stored");
    assert_eq!((run.status, run.outcome), (RunStatus::Queued, RunOutcome::Pending));
    assert_eq!(run.initiator, Initiator::user("ops-user-1"));
    assert_eq!(run.source_surface, SourceSurface::Cli);
    assert_eq!(run.context, json!({"correlation_id": "c-1"}));
    assert_eq!(run.attempt, 1);
    assert_eq!(run.max_attempts, 3);
    assert_eq!(run.queued_at, e.clock.now_for_test());
    let audit = e.svc.audit(run.id).await.unwrap();
    assert_eq!(audit.len(), 1);
    let a = &audit[0].entry;
    assert_eq!(a.action, "run.dispatch");
    assert_eq!(a.actor, Initiator::user("ops-user-1"));
    assert_eq!(a.to_status, Some(RunStatus::Queued));
    assert_eq!(a.workspace_id.as_deref(), Some("contoso"));
    assert_eq!(a.environment_id.as_deref(), Some("contoso-prod"));
}

async fn dispatch_of_an_active_scope_returns_the_existing_run_marked_deduplicated(b: Backend) {
    let e = env(b).await;
    let first = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    let again = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.run.id, first.run.id);
    // Another scope is another run.
    let other = e.svc.dispatch(sync_req("contoso-dev")).await.unwrap();
    assert!(!other.deduplicated);
    // Still deduplicated while running.
    e.svc.claim(first.run.id, "w1").await.unwrap();
    let while_running = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    assert!(while_running.deduplicated);
    assert_eq!(while_running.run.id, first.run.id);
    assert_eq!(e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap().len(), 2);
}

async fn twenty_concurrent_dispatches_of_one_scope_write_exactly_one_row(b: Backend) {
    let e = env(b).await;
    let barrier = Arc::new(Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let svc = e.svc.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            svc.dispatch(sync_req("contoso-prod")).await.unwrap()
        }));
    }
    let mut ids = std::collections::HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let d = t.await.unwrap();
        ids.insert(d.run.id);
        fresh += usize::from(!d.deduplicated);
    }
    assert_eq!(ids.len(), 1, "every dispatch got the same run");
    assert_eq!(fresh, 1, "exactly one dispatch wrote");
    let all = e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(all.len(), 1, "exactly one row");
    assert_eq!(actions(&e, all[0].id).await, vec!["run.dispatch"]);
}

async fn dispatch_after_the_active_run_completed_writes_a_new_run(b: Backend) {
    let e = env(b).await;
    let first = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run;
    e.svc.claim(first.id, "w1").await.unwrap();
    e.svc.complete(&lease(&e, first.id, "w1").await, Completion::succeeded(SummaryCounts::new())).await.unwrap();
    let second = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    assert!(!second.deduplicated);
    assert_ne!(second.run.id, first.id);
}

async fn an_operation_without_dedup_may_have_many_active_runs(b: Backend) {
    let e = env(b).await;
    let req = DispatchRequest {
        operation: "report.build".into(),
        scope: Scope { workspace_id: "contoso".into(), ..Scope::default() },
        ..sync_req("x")
    };
    let a = e.svc.dispatch(req.clone()).await.unwrap();
    let b2 = e.svc.dispatch(req).await.unwrap();
    assert!(!a.deduplicated && !b2.deduplicated);
    assert_ne!(a.run.id, b2.run.id);
    assert_eq!(a.run.dedup_key, None);
}

async fn bad_dispatches_are_refused_by_name_and_write_nothing(b: Backend) {
    let e = env(b).await;
    let cases: Vec<(DispatchRequest, &str)> = vec![
        (DispatchRequest { operation: "inventory.wipe".into(), ..sync_req("p") }, "inventory.wipe"),
        (
            DispatchRequest { scope: Scope { workspace_id: "contoso".into(), ..Scope::default() }, ..sync_req("p") },
            "environment is required",
        ),
        (
            DispatchRequest { params: json!({"auth": {"client_secret": "s3cr3t"}}), ..sync_req("p") },
            "params.auth.client_secret",
        ),
        (DispatchRequest { context: json!({"password": "hunter2"}), ..sync_req("p") }, "password"),
        (DispatchRequest { params: json!([1, 2]), ..sync_req("p") }, "params must be a JSON object"),
        (
            DispatchRequest { scope: Scope { workspace_id: " ".into(), ..sync_req("p").scope }, ..sync_req("p") },
            "workspace must not be empty",
        ),
    ];
    for (req, needle) in cases {
        let err = e.svc.dispatch(req).await.unwrap_err();
        assert!(err.to_string().contains(needle), "expected '{needle}' in: {err}");
        assert!(!err.to_string().contains("s3cr3t") && !err.to_string().contains("hunter2"), "{err}");
    }
    assert!(e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap().is_empty());
}

async fn a_refused_dispatch_records_a_completed_blocked_run(b: Backend) {
    let e = env(b).await;
    let mut req = sync_req("contoso-prod");
    req.source = SourceSurface::Scheduler;
    req.initiator = Initiator::schedule("svc-scheduler");
    let run = e
        .svc
        .refuse_dispatch(
            req,
            oprun_shared::ReasonCode::ExecutionCapabilityMissing,
            "svc-scheduler lacks inventory.sync",
        )
        .await
        .unwrap();
    assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::Blocked));
    assert_eq!(run.reason_code.as_deref(), Some("execution.capability_missing"));
    assert!(run.completed_at.is_some());
    let audit = e.svc.audit(run.id).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].entry.action, "run.dispatch_refused");
    assert_eq!(audit[0].entry.reason_code.as_deref(), Some("execution.capability_missing"));
    // It does not hold the scope: a new dispatch goes through.
    assert!(!e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().deduplicated);
}

// ---------------------------------------------------------------- claim and lease

async fn claim_sets_the_lease_and_a_second_claim_is_an_invalid_transition(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    let run = e.svc.claim(id, "w1").await.unwrap();
    let now = e.clock.now_for_test();
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.lease_owner.as_deref(), Some("w1"));
    assert_eq!(run.lease_expires_at, Some(now + Duration::seconds(60)));
    assert_eq!(run.started_at, Some(now));
    let err = e.svc.claim(id, "w2").await.unwrap_err();
    assert!(
        matches!(err, ServiceError::Transition(TransitionError::InvalidTransition { status: RunStatus::Running, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("claim"), "names the transition: {err}");
    assert!(err.to_string().contains("running"), "names the state: {err}");
    let audit = e.svc.audit(id).await.unwrap();
    assert_eq!(audit.len(), 2, "the refused claim wrote nothing");
    assert_eq!(audit[1].entry.action, "run.claim");
    assert_eq!(audit[1].entry.from_status, Some(RunStatus::Queued));
    assert_eq!(audit[1].entry.to_status, Some(RunStatus::Running));
    assert_eq!(audit[1].entry.actor, Initiator::service("worker:w1"));
}

async fn claiming_a_run_that_does_not_exist_is_not_found(b: Backend) {
    let e = env(b).await;
    let id = uuid::Uuid::now_v7();
    let err = e.svc.claim(id, "w1").await.unwrap_err();
    assert!(matches!(err, ServiceError::Transition(TransitionError::NotFound(x)) if x == id), "{err}");
}

async fn claim_many_claims_only_the_runs_still_queued(b: Backend) {
    let e = env(b).await;
    let mut ids = vec![];
    for env_id in ["e1", "e2", "e3"] {
        ids.push(e.svc.dispatch(sync_req(env_id)).await.unwrap().run.id);
    }
    e.svc.claim(ids[1], "other").await.unwrap();
    let claimed: Vec<_> = (e.svc.claim_batch(&ids, "w1").await.unwrap().into_iter())
        .filter_map(|c| match c {
            Claim::Claimed(run) => Some(*run),
            _ => None,
        })
        .collect();
    let mut got: Vec<_> = claimed.iter().map(|r| r.id).collect();
    got.sort();
    assert_eq!(got, vec![ids[0], ids[2]]);
    assert!(claimed.iter().all(|r| r.lease_owner.as_deref() == Some("w1")));
    assert_eq!(e.svc.get(ids[1]).await.unwrap().lease_owner.as_deref(), Some("other"));
}

async fn heartbeat_and_progress_by_the_lease_owner_renew_the_lease_and_add_up_counts(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.clock.advance(Duration::seconds(20));
    let state = e.svc.heartbeat(&lease(&e, id, "w1").await, "inventory.sync").await.unwrap();
    assert_eq!(state.lease_expires_at, e.clock.now_for_test() + Duration::seconds(60));
    assert!(!state.cancel_requested);
    e.svc
        .progress(
            &lease(&e, id, "w1").await,
            "inventory.sync",
            counts(&[("total", 10), ("pages", 1)]),
            Some(json!({"next": "/p2"})),
        )
        .await
        .unwrap();
    e.svc
        .progress(
            &lease(&e, id, "w1").await,
            "inventory.sync",
            counts(&[("total", 5), ("pages", 1), ("failed", 1)]),
            Some(json!({"next": "/p3"})),
        )
        .await
        .unwrap();
    let run = e.svc.get(id).await.unwrap();
    assert_eq!(run.summary_counts, counts(&[("total", 15), ("pages", 2), ("failed", 1)]));
    assert_eq!(run.checkpoint, Some(json!({"next": "/p3"})));
    assert_eq!(run.heartbeat_at, Some(e.clock.now_for_test()));
    // Heartbeats are not audited; progress is.
    assert_eq!(actions(&e, id).await, vec!["run.dispatch", "run.claim", "run.progress", "run.progress"]);
    // A checkpoint with a secret-named key is refused.
    let err = e
        .svc
        .progress(&lease(&e, id, "w1").await, "inventory.sync", SummaryCounts::new(), Some(json!({"token": "x"})))
        .await;
    assert!(matches!(err, Err(ServiceError::InvalidInput(ref m)) if m.contains("token")), "{err:?}");
}

async fn anyone_but_the_lease_owner_gets_lease_lost(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    let lost = |r: Result<_, ServiceError>| match r {
        Err(ServiceError::Transition(TransitionError::LeaseLost { holder, status, .. })) => {
            assert_eq!(holder, "w1");
            assert_eq!(status, RunStatus::Running);
        }
        other => panic!("expected LeaseLost, got {other:?}"),
    };
    lost(e.svc.heartbeat(&lease(&e, id, "w2").await, "inventory.sync").await.map(|_| ()));
    lost(e.svc.progress(&lease(&e, id, "w2").await, "inventory.sync", counts(&[("total", 1)]), None).await.map(|_| ()));
    lost(e.svc.complete(&lease(&e, id, "w2").await, Completion::succeeded(SummaryCounts::new())).await.map(|_| ()));
    lost(
        e.svc
            .block(
                id,
                BlockFrom::Lease(lease(&e, id, "w2").await),
                oprun_shared::ReasonCode::ExecutionActorDisabled,
                "x",
            )
            .await
            .map(|_| ()),
    );
    let run = e.svc.get(id).await.unwrap();
    assert_eq!(run.status, RunStatus::Running);
    assert!(run.summary_counts.is_empty(), "nothing was written");
    assert_eq!(actions(&e, id).await.len(), 2);
}

async fn a_worker_whose_run_was_requeued_has_lost_its_lease(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.clock.advance(Duration::seconds(600));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::Requeued), 1);
    let err =
        e.svc.complete(&lease(&e, id, "w1").await, Completion::succeeded(SummaryCounts::new())).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::Transition(TransitionError::LeaseLost { ref holder, status: RunStatus::Queued, .. }) if holder == "nobody"),
        "{err}"
    );
}

/// A lease fences the attempt, not only the process: the same worker
/// claims the run again after a requeue, and the superseded attempt's
/// heartbeat, progress, checkpoint, completion and block are all refused
/// while the new attempt's writes go through.
async fn a_superseded_attempt_of_the_same_worker_writes_nothing(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    let first = Lease::of(&e.svc.claim(id, "w1").await.unwrap()).unwrap();
    assert_eq!((first.worker.as_str(), first.attempt), ("w1", 1));
    e.clock.advance(Duration::seconds(600));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::Requeued), 1);
    let second = Lease::of(&e.svc.claim(id, "w1").await.unwrap()).unwrap();
    assert_eq!((second.worker.as_str(), second.attempt), ("w1", 2));
    let lost = |what: &str, r: Result<(), ServiceError>| match r {
        Err(ServiceError::Transition(TransitionError::LeaseLost { holder, status, .. })) => {
            assert_eq!((holder.as_str(), status), ("w1", RunStatus::Running), "{what}");
        }
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    };
    lost("heartbeat", e.svc.heartbeat(&first, "inventory.sync").await.map(|_| ()));
    lost("progress", e.svc.progress(&first, "inventory.sync", counts(&[("total", 7)]), None).await.map(|_| ()));
    lost(
        "checkpoint",
        e.svc.progress(&first, "inventory.sync", counts(&[]), Some(json!({"next": "/stale"}))).await.map(|_| ()),
    );
    lost("complete", e.svc.complete(&first, Completion::succeeded(counts(&[("total", 1)]))).await.map(|_| ()));
    let finish = [(first.clone(), Finish::Complete(Completion::succeeded(counts(&[]))))];
    lost("finish_batch", e.svc.finish_batch(&finish).await.unwrap().pop().unwrap().map(|_| ()));
    lost(
        "block",
        (e.svc.block(id, BlockFrom::Lease(first.clone()), ReasonCode::ExecutionActorDisabled, "stale").await)
            .map(|_| ()),
    );
    let run = e.svc.get(id).await.unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Running, 2));
    assert!(run.summary_counts.is_empty(), "the stale attempt counted nothing: {:?}", run.summary_counts);
    assert_eq!(run.checkpoint, None, "the stale attempt stored no checkpoint");
    // The attempt that holds the lease now writes as usual.
    e.svc.progress(&second, "inventory.sync", counts(&[("total", 2)]), None).await.unwrap();
    let done = e.svc.complete(&second, Completion::succeeded(counts(&[]))).await.unwrap();
    assert_eq!((done.outcome, done.attempt), (RunOutcome::Succeeded, 2));
    assert_eq!(done.summary_counts, counts(&[("total", 2)]));
}

/// Dedup keys are unambiguous: ids that contain the key's separator, or
/// that are literally its placeholder for an absent part, do not make two
/// scopes share one active run.
async fn scopes_whose_ids_contain_the_key_separator_do_not_share_a_dedup_key(b: Backend) {
    let e = env(b).await;
    let scoped = |pair: u8, ws: &str, env: &str, target_type: Option<&str>| DispatchRequest {
        scope: Scope {
            workspace_id: ws.into(),
            environment_id: Some(env.into()),
            target_type: target_type.map(Into::into),
            target_id: Some(format!("t{pair}")),
        },
        ..sync_req("unused")
    };
    let pairs = [
        (scoped(1, "a|b", "c", None), scoped(1, "a", "b|c", None)),
        (scoped(2, "a", "b%7Cc", None), scoped(2, "a", "b|c", None)),
        (scoped(3, "a", "c", Some("-")), scoped(3, "a", "c", None)),
    ];
    for (one, other) in pairs {
        let first = e.svc.dispatch(one.clone()).await.unwrap();
        let second = e.svc.dispatch(other.clone()).await.unwrap();
        assert!(!first.deduplicated && !second.deduplicated, "{:?} and {:?} share a key", one.scope, other.scope);
        assert_ne!(first.run.dedup_key, second.run.dedup_key);
        // The same scope again still deduplicates.
        assert!(e.svc.dispatch(one).await.unwrap().deduplicated);
    }
}

// ---------------------------------------------------------------- complete, block, cancel

async fn complete_ends_the_run_with_outcome_counts_and_sanitized_failures(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc.progress(&lease(&e, id, "w1").await, "inventory.sync", counts(&[("total", 3)]), None).await.unwrap();
    e.clock.advance(Duration::seconds(5));
    let completion = Completion {
        outcome: RunOutcome::PartiallySucceeded,
        reason_code: Some(ReasonCode::ProviderBadResponse),
        failures: vec![FailureEntry {
            reason_code: "provider.bad_response".into(),
            message: "item 7 rejected; Authorization: Bearer abc.def.ghi-SECRET-TOKEN-1234567890".into(),
        }],
        counts: counts(&[("total", 2), ("succeeded", 4), ("failed", 1)]),
        checkpoint: None,
    };
    let run = e.svc.complete(&lease(&e, id, "w1").await, completion).await.unwrap();
    assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::PartiallySucceeded));
    assert_eq!(run.summary_counts, counts(&[("total", 5), ("succeeded", 4), ("failed", 1)]));
    assert_eq!(run.completed_at, Some(e.clock.now_for_test()));
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.lease_expires_at, None);
    assert_eq!(run.failure_summary.len(), 1);
    assert!(!run.failure_summary[0].message.contains("SECRET-TOKEN"), "{:?}", run.failure_summary);
    assert!(run.failure_summary[0].message.contains("item 7 rejected"));
    let stored = e.svc.get(id).await.unwrap();
    assert_eq!(stored, run);
    let audit = e.svc.audit(id).await.unwrap();
    let last = &audit.last().unwrap().entry;
    assert_eq!(
        (last.action.as_str(), last.from_status, last.to_status),
        ("run.complete", Some(RunStatus::Running), Some(RunStatus::Completed))
    );
    assert_eq!(last.outcome, Some(RunOutcome::PartiallySucceeded));
    // A completed run cannot complete again.
    let err =
        e.svc.complete(&lease(&e, id, "w1").await, Completion::succeeded(SummaryCounts::new())).await.unwrap_err();
    assert!(
        matches!(
            err,
            ServiceError::Transition(TransitionError::InvalidTransition { status: RunStatus::Completed, .. })
        ),
        "{err}"
    );
}

async fn complete_refuses_a_pending_outcome_and_a_failure_without_reason(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    let pending = Completion { outcome: RunOutcome::Pending, ..Completion::succeeded(SummaryCounts::new()) };
    assert!(matches!(e.svc.complete(&lease(&e, id, "w1").await, pending).await, Err(ServiceError::InvalidInput(_))));
    let failed = Completion { outcome: RunOutcome::Failed, ..Completion::succeeded(SummaryCounts::new()) };
    assert!(
        matches!(e.svc.complete(&lease(&e, id, "w1").await, failed).await, Err(ServiceError::InvalidInput(ref m)) if m.contains("reason"))
    );
    assert_eq!(e.svc.get(id).await.unwrap().status, RunStatus::Running);
}

async fn block_ends_a_running_or_queued_run_blocked_with_its_reason(b: Backend) {
    let e = env(b).await;
    let running = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    e.svc.claim(running, "w1").await.unwrap();
    let run = e
        .svc
        .block(
            running,
            BlockFrom::Lease(lease(&e, running, "w1").await),
            oprun_shared::ReasonCode::ExecutionCapabilityMissing,
            "no inventory.sync",
        )
        .await
        .unwrap();
    assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::Blocked));
    assert_eq!(run.reason_code.as_deref(), Some("execution.capability_missing"));
    let queued = e.svc.dispatch(sync_req("e2")).await.unwrap().run.id;
    let run = e
        .svc
        .block(queued, BlockFrom::Queued, oprun_shared::ReasonCode::ExecutionWorkspaceInactive, "suspended")
        .await
        .unwrap();
    assert_eq!(run.outcome, RunOutcome::Blocked);
    let audit = e.svc.audit(queued).await.unwrap();
    assert_eq!(audit.last().unwrap().entry.from_status, Some(RunStatus::Queued));
    assert_eq!(audit.last().unwrap().entry.reason_code.as_deref(), Some("execution.workspace_inactive"));
    // Blocking a completed run is refused.
    let err = e
        .svc
        .block(queued, BlockFrom::Queued, oprun_shared::ReasonCode::ExecutionWorkspaceInactive, "again")
        .await
        .unwrap_err();
    assert!(matches!(err, ServiceError::Transition(TransitionError::InvalidTransition { .. })), "{err}");
}

async fn cancel_ends_a_queued_run_at_once_and_asks_a_running_one_to_stop(b: Backend) {
    let e = env(b).await;
    let queued = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    match e.svc.cancel(queued, &oncall()).await.unwrap() {
        Cancelled::Cancelled(run) => {
            assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::Cancelled));
            assert_eq!(run.reason_code.as_deref(), Some("run.cancelled_by_operator"));
        }
        other => panic!("expected Cancelled, got {other:?}"),
    }
    let running = e.svc.dispatch(sync_req("e2")).await.unwrap().run.id;
    e.svc.claim(running, "w1").await.unwrap();
    match e.svc.cancel(running, &oncall()).await.unwrap() {
        Cancelled::Requested(run) => {
            assert_eq!(run.status, RunStatus::Running);
            assert!(run.cancel_requested_at.is_some());
        }
        other => panic!("expected Requested, got {other:?}"),
    }
    assert!(e.svc.heartbeat(&lease(&e, running, "w1").await, "inventory.sync").await.unwrap().cancel_requested);
    let done = e
        .svc
        .complete(
            &lease(&e, running, "w1").await,
            Completion { outcome: RunOutcome::Cancelled, ..Completion::succeeded(SummaryCounts::new()) },
        )
        .await
        .unwrap();
    assert_eq!(done.outcome, RunOutcome::Cancelled);
    assert_eq!(done.reason_code.as_deref(), Some("run.cancelled_by_operator"));
    assert_eq!(actions(&e, running).await, vec!["run.dispatch", "run.claim", "run.cancel_request", "run.complete"]);
    let audit = e.svc.audit(running).await.unwrap();
    assert_eq!(audit[2].entry.actor, oncall());
    // Cancelling a completed run is refused and names its state.
    let err = e.svc.cancel(queued, &oncall()).await.unwrap_err();
    assert!(err.to_string().contains("completed/cancelled"), "{err}");
}

// ---------------------------------------------------------------- reconcile

async fn a_stale_running_run_is_requeued_while_attempts_remain(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc
        .progress(&lease(&e, id, "w1").await, "inventory.sync", counts(&[("pages", 2)]), Some(json!({"next": "/p3"})))
        .await
        .unwrap();
    // Lease 60 s + grace 10 s: at 65 s it is left alone, at 71 s it is moved.
    e.clock.advance(Duration::seconds(65));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert!(report.actions.is_empty(), "within grace: {report:?}");
    e.clock.advance(Duration::seconds(6));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.actions.len(), 1);
    let a = &report.actions[0];
    assert_eq!(
        (a.kind, a.from_status, a.to_status, a.attempt),
        (ReconcileKind::Requeued, RunStatus::Running, RunStatus::Queued, 2)
    );
    assert_eq!(report.to_push(), vec![id]);
    let run = e.svc.get(id).await.unwrap();
    assert_eq!((run.status, run.attempt), (RunStatus::Queued, 2));
    assert_eq!(run.checkpoint, Some(json!({"next": "/p3"})), "checkpoint kept");
    assert_eq!(run.summary_counts, counts(&[("pages", 2)]));
    assert_eq!(run.lease_owner, None);
    assert_eq!(run.queued_at, e.clock.now_for_test());
    let audit = e.svc.audit(id).await.unwrap();
    let last = &audit.last().unwrap().entry;
    assert_eq!(last.action, "run.requeue");
    assert_eq!(last.actor, oncall());
    assert_eq!(last.reason_code.as_deref(), Some("run.lease_expired"));
    // Idempotent: nothing more to do.
    assert!(e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap().actions.is_empty());
    // The requeued run can be claimed again by another worker.
    assert_eq!(e.svc.claim(id, "w2").await.unwrap().attempt, 2);
}

async fn a_stale_running_run_without_attempts_left_fails_with_lease_expired(b: Backend) {
    let e = env(b).await;
    let now = e.clock.now_for_test();
    let mut last = testing::running(testing::run(now), "w1", now);
    last.attempt = 3;
    let last = testing::insert(e.db.store.as_ref(), last).await;
    // Not resumable: fails on the first lost lease.
    let mut audit_run = testing::running(testing::run(now), "w1", now);
    audit_run.operation = "tenant.audit".into();
    let audit_run = testing::insert(e.db.store.as_ref(), audit_run).await;
    e.clock.advance(Duration::seconds(11));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::ExpiredLease), 2, "{report:?}");
    assert!(report.to_push().is_empty());
    for id in [last.id, audit_run.id] {
        let run = e.svc.get(id).await.unwrap();
        assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::Failed));
        assert_eq!(run.reason_code.as_deref(), Some("run.lease_expired"));
        assert_eq!(run.failure_summary[0].reason_code, "run.lease_expired");
        assert_eq!(e.svc.audit(id).await.unwrap().last().unwrap().entry.action, "run.expire");
    }
}

async fn a_stale_running_run_that_was_asked_to_cancel_ends_cancelled(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc.cancel(id, &oncall()).await.unwrap();
    e.clock.advance(Duration::seconds(120));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::CancelledStale), 1);
    assert_eq!(e.svc.get(id).await.unwrap().outcome, RunOutcome::Cancelled);
}

async fn a_queued_run_never_claimed_is_repushed_once_then_fails_never_started(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.clock.advance(Duration::minutes(4));
    assert!(e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap().actions.is_empty());
    e.clock.advance(Duration::minutes(2)); // 6 min > 5 min
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::Repush), 1);
    assert_eq!(report.to_push(), vec![id]);
    let run = e.svc.get(id).await.unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.repushed_at, Some(e.clock.now_for_test()));
    // Reported once, not on every pass.
    e.clock.advance(Duration::minutes(1));
    assert!(e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap().actions.is_empty());
    e.clock.advance(Duration::minutes(4)); // 11 min > 10 min
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::ExpiredNeverStarted), 1);
    let run = e.svc.get(id).await.unwrap();
    assert_eq!((run.status, run.outcome), (RunStatus::Completed, RunOutcome::Failed));
    assert_eq!(run.reason_code.as_deref(), Some("run.never_started"));
    assert_eq!(actions(&e, id).await, vec!["run.dispatch", "run.repush", "run.expire"]);
}

async fn a_dry_run_reconcile_changes_nothing_and_reports_what_it_would_do(b: Backend) {
    let e = env(b).await;
    let stale = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    e.svc.claim(stale, "w1").await.unwrap();
    let queued = e.svc.dispatch(sync_req("e2")).await.unwrap().run.id;
    e.clock.advance(Duration::minutes(6));
    let before = e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap();
    let dry = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.count(ReconcileKind::Requeued), 1);
    assert_eq!(dry.count(ReconcileKind::Repush), 1);
    let after = e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(before, after, "dry run wrote nothing");
    assert_eq!(actions(&e, stale).await.len(), 2);
    let real = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    let key = |r: &oprun_shared::ReconcileReport| {
        let mut v: Vec<_> = r.actions.iter().map(|a| (a.run_id, a.kind, a.to_status, a.attempt)).collect();
        v.sort();
        v
    };
    assert_eq!(key(&dry), key(&real), "the dry run predicted the real one");
    assert_eq!(e.svc.get(queued).await.unwrap().status, RunStatus::Queued);
}

async fn reconcile_pages_through_more_runs_than_one_page_and_honours_filters(b: Backend) {
    let e = env_with(b, ServiceConfig { reconcile_page: 7, ..ServiceConfig::default() }).await;
    let now = e.clock.now_for_test();
    for i in 0..25 {
        let mut r = testing::running(testing::run(now), "w1", now);
        if i % 5 == 0 {
            r.workspace_id = "fabrikam".into();
        }
        testing::insert(e.db.store.as_ref(), r).await;
    }
    e.clock.advance(Duration::seconds(30));
    let only = ReconcileFilter { workspace_id: Some("fabrikam".into()), ..Default::default() };
    let report = e.svc.reconcile(&oncall(), &only, false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::Requeued), 5);
    assert!(report.actions.iter().all(|a| a.workspace_id == "fabrikam"));
    let none = ReconcileFilter { operation: Some("tenant.audit".into()), ..Default::default() };
    assert!(e.svc.reconcile(&oncall(), &none, false).await.unwrap().actions.is_empty());
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::Requeued), 20);
    let queued =
        e.svc.list(&RunFilter { status: Some(RunStatus::Queued), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(queued.len(), 25);
}

async fn two_concurrent_reconcilers_move_each_run_exactly_once(b: Backend) {
    let e = env_with(b, ServiceConfig { reconcile_page: 10, ..ServiceConfig::default() }).await;
    let now = e.clock.now_for_test();
    let mut ids = vec![];
    for i in 0..60 {
        let mut r = testing::running(testing::run(now), "w1", now);
        r.attempt = if i % 2 == 0 { 1 } else { 3 };
        ids.push(testing::insert(e.db.store.as_ref(), r).await.id);
    }
    e.clock.advance(Duration::seconds(30));
    let barrier = Arc::new(Barrier::new(2));
    let mut tasks = vec![];
    for who in ["oncall-a", "oncall-b"] {
        let svc = e.svc.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            svc.reconcile(&Initiator::user(who), &ReconcileFilter::default(), false).await.unwrap()
        }));
    }
    let mut moved = vec![];
    for t in tasks {
        moved.extend(t.await.unwrap().actions.into_iter().map(|a| (a.run_id, a.kind)));
    }
    moved.sort();
    let distinct: std::collections::BTreeSet<_> = moved.iter().map(|(id, _)| *id).collect();
    assert_eq!(moved.len(), 60, "each run moved exactly once across both reconcilers");
    assert_eq!(distinct.len(), 60);
    assert_eq!(moved.iter().filter(|(_, k)| *k == ReconcileKind::Requeued).count(), 30);
    assert_eq!(moved.iter().filter(|(_, k)| *k == ReconcileKind::ExpiredLease).count(), 30);
    for id in ids {
        let acts = actions(&e, id).await;
        assert_eq!(acts.len(), 2, "one factory row and exactly one reconcile row: {acts:?}");
    }
}

// ---------------------------------------------------------------- retry

async fn retry_creates_a_linked_queued_run_and_a_second_retry_returns_it(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc
        .progress(&lease(&e, id, "w1").await, "inventory.sync", SummaryCounts::new(), Some(json!({"next": "/p4"})))
        .await
        .unwrap();
    e.svc
        .block(
            id,
            BlockFrom::Lease(lease(&e, id, "w1").await),
            oprun_shared::ReasonCode::ExecutionCapabilityMissing,
            "revoked",
        )
        .await
        .unwrap();
    let operator = Initiator::user("ops-user-2");
    let retry = e.svc.retry(id, &operator).await.unwrap();
    assert!(!retry.deduplicated);
    let r = &retry.run;
    assert_eq!(r.retry_of, Some(id));
    assert_eq!(r.initiator, operator);
    assert_eq!(r.source_surface, SourceSurface::Retry);
    assert_eq!((r.status, r.attempt), (RunStatus::Queued, 1));
    assert_eq!(r.params, json!({"page_size": 100}));
    assert_eq!(r.environment_id.as_deref(), Some("contoso-prod"));
    assert_eq!(r.checkpoint, Some(json!({"next": "/p4"})), "resumable: checkpoint carried");
    assert_eq!(r.context["retry_of"], json!(id));
    let again = e.svc.retry(id, &operator).await.unwrap();
    assert!(again.deduplicated);
    assert_eq!(again.run.id, r.id);
    // The old run is unchanged, plus one audit row.
    let old = e.svc.get(id).await.unwrap();
    assert_eq!(old.outcome, RunOutcome::Blocked);
    let old_audit = e.svc.audit(id).await.unwrap();
    let last = &old_audit.last().unwrap().entry;
    assert_eq!(last.action, "run.retried");
    assert_eq!(last.details["retry_run_id"], json!(r.id));
    assert_eq!(actions(&e, r.id).await, vec!["run.retry"]);
    let listed = e.svc.list(&RunFilter { retry_of: Some(id), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 1);
}

async fn retry_is_refused_for_active_succeeded_and_non_retryable_runs(b: Backend) {
    let e = env(b).await;
    let active = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    let err = e.svc.retry(active, &oncall()).await.unwrap_err();
    assert!(matches!(err, ServiceError::NotRetryable { .. }) && err.to_string().contains("still queued"), "{err}");
    e.svc.claim(active, "w1").await.unwrap();
    e.svc.complete(&lease(&e, active, "w1").await, Completion::succeeded(SummaryCounts::new())).await.unwrap();
    let err = e.svc.retry(active, &oncall()).await.unwrap_err();
    assert!(err.to_string().contains("succeeded"), "{err}");
    let audit_req = DispatchRequest { operation: "tenant.audit".into(), ..sync_req("e2") };
    let id = e.svc.dispatch(audit_req).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc
        .complete(
            &lease(&e, id, "w1").await,
            Completion::failed(RunOutcome::Failed, ReasonCode::ProviderUnavailable, "503"),
        )
        .await
        .unwrap();
    let err = e.svc.retry(id, &oncall()).await.unwrap_err();
    assert!(err.to_string().contains("not retryable by operators"), "{err}");
    let missing = e.svc.retry(uuid::Uuid::now_v7(), &oncall()).await.unwrap_err();
    assert!(matches!(missing, ServiceError::Transition(TransitionError::NotFound(_))), "{missing}");
}

// ---------------------------------------------------------------- reads

async fn list_filters_by_visibility_status_outcome_and_pages_by_cursor(b: Backend) {
    let e = env(b).await;
    let mut ids = vec![];
    for (ws, env_id) in [("contoso", "e1"), ("contoso", "e2"), ("fabrikam", "f1"), ("contoso", "e3")] {
        let req = DispatchRequest {
            scope: Scope { workspace_id: ws.into(), environment_id: Some(env_id.into()), ..Scope::default() },
            ..sync_req(env_id)
        };
        ids.push(e.svc.dispatch(req).await.unwrap().run.id);
    }
    e.svc.cancel(ids[0], &oncall()).await.unwrap();
    let visible = RunFilter { visible_workspaces: Some(vec!["contoso".into()]), limit: 100, ..Default::default() };
    let runs = e.svc.list(&visible).await.unwrap();
    assert_eq!(
        runs.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[3], ids[1], ids[0]],
        "newest first, contoso only"
    );
    let nothing = RunFilter { visible_workspaces: Some(vec![]), limit: 100, ..Default::default() };
    assert!(e.svc.list(&nothing).await.unwrap().is_empty());
    let cancelled = RunFilter { outcome: Some(RunOutcome::Cancelled), limit: 100, ..Default::default() };
    assert_eq!(e.svc.list(&cancelled).await.unwrap().len(), 1);
    let page1 = e.svc.list(&RunFilter { limit: 2, ..Default::default() }).await.unwrap();
    let page2 = e.svc.list(&RunFilter { limit: 2, before: Some(page1[1].id), ..Default::default() }).await.unwrap();
    let all: Vec<_> = page1.iter().chain(&page2).map(|r| r.id).collect();
    assert_eq!(all, vec![ids[3], ids[2], ids[1], ids[0]]);
}

// ---------------------------------------------------------------- batches

async fn dispatch_many_writes_every_run_with_its_audit_row_and_dedups_within_and_across_batches(b: Backend) {
    let e = env(b).await;
    let held = e.svc.dispatch(sync_req("held")).await.unwrap().run;
    let mut bad = sync_req("e-bad");
    bad.params = json!("not an object");
    let reqs = vec![sync_req("e1"), sync_req("held"), bad, sync_req("e2"), sync_req("e1")];
    let out = e.svc.dispatch_many(&reqs).await.unwrap();
    assert_eq!(out.len(), 5);
    let first = out[0].as_ref().unwrap();
    assert!(!first.deduplicated);
    assert_eq!(first.run.environment_id.as_deref(), Some("e1"));
    let again = out[1].as_ref().unwrap();
    assert!(again.deduplicated, "an active run held the key before the batch");
    assert_eq!(again.run.id, held.id);
    match &out[2] {
        Err(ServiceError::InvalidInput(m)) => assert!(m.contains("params"), "{m}"),
        other => panic!("want invalid input, got {other:?}"),
    }
    assert!(!out[3].as_ref().unwrap().deduplicated);
    let dup = out[4].as_ref().unwrap();
    assert!(dup.deduplicated, "the same scope twice in one batch writes one run");
    assert_eq!(dup.run.id, first.run.id);
    let queued =
        e.svc.list(&RunFilter { status: Some(RunStatus::Queued), limit: 100, ..RunFilter::default() }).await.unwrap();
    assert_eq!(queued.len(), 3, "held, e1, e2");
    for d in [first, out[3].as_ref().unwrap()] {
        assert_eq!(e.svc.get(d.run.id).await.unwrap(), d.run);
        assert_eq!(actions(&e, d.run.id).await, vec!["run.dispatch"]);
        let audit = e.svc.audit(d.run.id).await.unwrap();
        assert_eq!(audit[0].entry.actor, Initiator::user("ops-user-1"));
        assert_eq!(audit[0].entry.to_status, Some(RunStatus::Queued));
    }
}

async fn claim_batch_claims_queued_runs_and_says_why_it_did_not_claim_the_others(b: Backend) {
    let e = env(b).await;
    let report = DispatchRequest {
        operation: "report.build".into(),
        scope: Scope { workspace_id: "contoso".into(), ..Scope::default() },
        ..sync_req("x")
    };
    let a = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    let taken = e.svc.dispatch(sync_req("e2")).await.unwrap().run.id;
    let r = e.svc.dispatch(report).await.unwrap().run.id;
    e.svc.claim(taken, "other").await.unwrap();
    let missing = uuid::Uuid::now_v7();
    let out = e.svc.claim_batch(&[a, taken, missing, r, a], "w1").await.unwrap();
    assert_eq!(out.len(), 5);
    let Claim::Claimed(run_a) = &out[0] else { panic!("{:?}", out[0]) };
    assert_eq!((run_a.status, run_a.lease_owner.as_deref()), (RunStatus::Running, Some("w1")));
    assert_eq!(out[1], Claim::NotQueued(RunStatus::Running));
    assert_eq!(out[2], Claim::NotFound);
    let Claim::Claimed(run_r) = &out[3] else { panic!("{:?}", out[3]) };
    // Each operation keeps its own lease length.
    let now = e.clock.now_for_test();
    assert_eq!(
        run_a.lease_expires_at.unwrap() - now,
        chrono::Duration::from_std(e.svc.spec("inventory.sync").unwrap().lease).unwrap()
    );
    assert_eq!(
        run_r.lease_expires_at.unwrap() - now,
        chrono::Duration::from_std(e.svc.spec("report.build").unwrap().lease).unwrap()
    );
    assert_eq!(out[4], Claim::NotQueued(RunStatus::Running), "the same id twice is claimed once");
    assert_eq!(actions(&e, a).await, vec!["run.dispatch", "run.claim"]);
    assert_eq!(e.svc.get(taken).await.unwrap().lease_owner.as_deref(), Some("other"));
}

async fn finish_batch_writes_each_outcome_in_one_commit_and_refuses_runs_it_does_not_hold(b: Backend) {
    let e = env(b).await;
    let mut ids = vec![];
    for env_id in ["e1", "e2", "e3", "e4", "e5"] {
        let id = e.svc.dispatch(sync_req(env_id)).await.unwrap().run.id;
        e.svc.claim(id, if env_id == "e5" { "other" } else { "w1" }).await.unwrap();
        ids.push(id);
    }
    let items = vec![
        (ids[0], Finish::Complete(Completion::succeeded(counts(&[("processed", 3)])))),
        (ids[1], Finish::Complete(Completion::succeeded(SummaryCounts::new()))),
        (
            ids[2],
            Finish::Complete(Completion::failed(RunOutcome::Failed, ReasonCode::ProviderUnavailable, "503 token=abc")),
        ),
        (ids[3], Finish::Block { reason: ReasonCode::ExecutionActorDisabled, message: "disabled".into() }),
        (ids[4], Finish::Complete(Completion::succeeded(SummaryCounts::new()))),
        (
            ids[1],
            Finish::Complete(Completion {
                reason_code: None,
                ..Completion::failed(RunOutcome::Failed, ReasonCode::UnknownError, "y")
            }),
        ),
    ];
    let mut leased = Vec::new();
    for (id, finish) in items {
        leased.push((lease(&e, id, "w1").await, finish));
    }
    let out = e.svc.finish_batch(&leased).await.unwrap();
    let r0 = out[0].as_ref().unwrap();
    assert_eq!((r0.status, r0.outcome), (RunStatus::Completed, RunOutcome::Succeeded));
    assert_eq!(r0.summary_counts, counts(&[("processed", 3)]));
    assert_eq!(out[1].as_ref().unwrap().outcome, RunOutcome::Succeeded);
    let r2 = out[2].as_ref().unwrap();
    assert_eq!((r2.outcome, r2.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.unavailable")));
    assert!(!r2.failure_summary[0].message.contains("abc"), "failures are sanitized: {:?}", r2.failure_summary);
    let r3 = out[3].as_ref().unwrap();
    assert_eq!((r3.outcome, r3.reason_code.as_deref()), (RunOutcome::Blocked, Some("execution.actor_disabled")));
    assert!(
        matches!(out[4], Err(ServiceError::Transition(TransitionError::LeaseLost { .. }))),
        "another worker's run: {:?}",
        out[4]
    );
    assert!(matches!(out[5], Err(ServiceError::InvalidInput(_))), "a failure without reason: {:?}", out[5]);
    assert_eq!(e.svc.get(ids[4]).await.unwrap().status, RunStatus::Running);
    assert_eq!(actions(&e, ids[0]).await, vec!["run.dispatch", "run.claim", "run.complete"]);
    assert_eq!(actions(&e, ids[3]).await, vec!["run.dispatch", "run.claim", "run.block"]);
    for id in &ids[..4] {
        assert_eq!(e.svc.get(*id).await.unwrap().lease_owner, None);
    }
}

// ---------------------------------------------------------------- audit

/// Every guarded write audits each run as written: its id, workspace and
/// environment, the status it left and the one it is in, its outcome, the
/// reason, the actor and the instant (on Postgres the rows are filled in
/// inside the database, on SQLite from what the update returned).
async fn every_guarded_write_audits_each_run_as_it_was_written(b: Backend) {
    let e = env(b).await;
    let ids: Vec<_> = {
        let mut v = Vec::new();
        for env_id in ["contoso-prod", "contoso-dev"] {
            v.push(e.svc.dispatch(sync_req(env_id)).await.unwrap().run.id);
        }
        v
    };
    let claimed_at = e.clock.now_for_test();
    let claims = e.svc.claim_batch(&ids, "w1").await.unwrap();
    assert!(claims.iter().all(|c| matches!(c, Claim::Claimed(_))), "{claims:?}");
    // The first run's worker dies; the reconciler requeues it and w2 takes it.
    e.clock.advance(Duration::seconds(30));
    e.svc.progress(&lease(&e, ids[1], "w1").await, "inventory.sync", counts(&[]), None).await.unwrap();
    e.clock.advance(Duration::seconds(41));
    let requeued_at = e.clock.now_for_test();
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.to_push(), vec![ids[0]]);
    e.svc.claim(ids[0], "w2").await.unwrap();
    let finished_at = e.clock.now_for_test();
    let out = e
        .svc
        .finish_batch(&[(
            lease(&e, ids[0], "w2").await,
            Finish::Complete(Completion::failed(RunOutcome::Failed, ReasonCode::ProviderBadResponse, "bad page")),
        )])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");
    let out = e
        .svc
        .finish_batch(&[(
            lease(&e, ids[1], "w1").await,
            Finish::Complete(Completion::succeeded(counts(&[("pages", 1)]))),
        )])
        .await
        .unwrap();
    assert!(out[0].is_ok(), "{out:?}");

    type Row = (String, Initiator, Option<RunStatus>, Option<RunStatus>, Option<RunOutcome>, Option<String>);
    let row = |a: &oprun_shared::AuditEntry| -> Row {
        (a.action.clone(), a.actor.clone(), a.from_status, a.to_status, a.outcome, a.reason_code.clone())
    };
    let worker = |w: &str| Initiator::service(format!("worker:{w}"));
    let claim = |w: &str| -> Row {
        (
            "run.claim".into(),
            worker(w),
            Some(RunStatus::Queued),
            Some(RunStatus::Running),
            Some(RunOutcome::Pending),
            None,
        )
    };
    let trail0 = e.svc.audit(ids[0]).await.unwrap();
    let want0: Vec<Row> = vec![
        (
            "run.dispatch".into(),
            Initiator::user("ops-user-1"),
            None,
            Some(RunStatus::Queued),
            Some(RunOutcome::Pending),
            None,
        ),
        claim("w1"),
        (
            "run.requeue".into(),
            oncall(),
            Some(RunStatus::Running),
            Some(RunStatus::Queued),
            Some(RunOutcome::Pending),
            Some("run.lease_expired".into()),
        ),
        claim("w2"),
        (
            "run.complete".into(),
            worker("w2"),
            Some(RunStatus::Running),
            Some(RunStatus::Completed),
            Some(RunOutcome::Failed),
            Some("provider.bad_response".into()),
        ),
    ];
    assert_eq!(trail0.iter().map(|a| row(&a.entry)).collect::<Vec<_>>(), want0);
    let ats: Vec<_> = trail0.iter().map(|a| a.entry.at).collect();
    assert_eq!(ats, vec![claimed_at, claimed_at, requeued_at, finished_at, finished_at]);
    assert_eq!(trail0[2].entry.details, json!({"reconcile": "requeued"}));
    let trail1 = e.svc.audit(ids[1]).await.unwrap();
    assert_eq!(
        trail1.iter().map(|a| a.entry.action.as_str()).collect::<Vec<_>>(),
        vec!["run.dispatch", "run.claim", "run.complete"],
        "a heartbeat writes no audit row"
    );
    assert_eq!(
        row(&trail1[2].entry),
        (
            "run.complete".into(),
            worker("w1"),
            Some(RunStatus::Running),
            Some(RunStatus::Completed),
            Some(RunOutcome::Succeeded),
            None
        )
    );
    for (trail, env_id, id) in [(&trail0, "contoso-prod", ids[0]), (&trail1, "contoso-dev", ids[1])] {
        for a in trail.iter() {
            assert_eq!(a.entry.run_id, Some(id), "{a:?}");
            assert_eq!(a.entry.workspace_id.as_deref(), Some("contoso"), "{a:?}");
            assert_eq!(a.entry.environment_id.as_deref(), Some(env_id), "{a:?}");
        }
    }
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

conformance!(
    dispatch_writes_a_queued_pending_run_with_its_audit_row,
    dispatch_of_an_active_scope_returns_the_existing_run_marked_deduplicated,
    twenty_concurrent_dispatches_of_one_scope_write_exactly_one_row,
    dispatch_after_the_active_run_completed_writes_a_new_run,
    an_operation_without_dedup_may_have_many_active_runs,
    bad_dispatches_are_refused_by_name_and_write_nothing,
    a_refused_dispatch_records_a_completed_blocked_run,
    claim_sets_the_lease_and_a_second_claim_is_an_invalid_transition,
    claiming_a_run_that_does_not_exist_is_not_found,
    claim_many_claims_only_the_runs_still_queued,
    heartbeat_and_progress_by_the_lease_owner_renew_the_lease_and_add_up_counts,
    anyone_but_the_lease_owner_gets_lease_lost,
    a_superseded_attempt_of_the_same_worker_writes_nothing,
    scopes_whose_ids_contain_the_key_separator_do_not_share_a_dedup_key,
    a_worker_whose_run_was_requeued_has_lost_its_lease,
    complete_ends_the_run_with_outcome_counts_and_sanitized_failures,
    complete_refuses_a_pending_outcome_and_a_failure_without_reason,
    block_ends_a_running_or_queued_run_blocked_with_its_reason,
    cancel_ends_a_queued_run_at_once_and_asks_a_running_one_to_stop,
    a_stale_running_run_is_requeued_while_attempts_remain,
    a_stale_running_run_without_attempts_left_fails_with_lease_expired,
    a_stale_running_run_that_was_asked_to_cancel_ends_cancelled,
    a_queued_run_never_claimed_is_repushed_once_then_fails_never_started,
    a_dry_run_reconcile_changes_nothing_and_reports_what_it_would_do,
    reconcile_pages_through_more_runs_than_one_page_and_honours_filters,
    two_concurrent_reconcilers_move_each_run_exactly_once,
    retry_creates_a_linked_queued_run_and_a_second_retry_returns_it,
    retry_is_refused_for_active_succeeded_and_non_retryable_runs,
    list_filters_by_visibility_status_outcome_and_pages_by_cursor,
    dispatch_many_writes_every_run_with_its_audit_row_and_dedups_within_and_across_batches,
    claim_batch_claims_queued_runs_and_says_why_it_did_not_claim_the_others,
    finish_batch_writes_each_outcome_in_one_commit_and_refuses_runs_it_does_not_hold,
    every_guarded_write_audits_each_run_as_it_was_written,
);

/// Test-only convenience: the manual clock's current time.
trait NowForTest {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> chrono::DateTime<chrono::Utc> {
        oprun_shared::Clock::now(self)
    }
}
