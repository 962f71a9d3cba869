//! Dispatch: single and batched inserts, dedup of active scopes, refusals.

use std::sync::Arc;

use oprun_shared::testing::Backend;
use oprun_shared::{
    Completion, DispatchRequest, Initiator, RunFilter, RunOutcome, RunStatus, Scope, ServiceError, SourceSurface,
    SummaryCounts,
};
use serde_json::json;
use tokio::sync::Barrier;

use super::{NowForTest, actions, env, lease, sync_req};

pub(crate) async fn dispatch_writes_a_queued_pending_run_with_its_audit_row(b: Backend) {
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

pub(crate) async fn dispatch_of_an_active_scope_returns_the_existing_run_marked_deduplicated(b: Backend) {
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

pub(crate) async fn twenty_concurrent_dispatches_of_one_scope_write_exactly_one_row(b: Backend) {
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

pub(crate) async fn dispatch_after_the_active_run_completed_writes_a_new_run(b: Backend) {
    let e = env(b).await;
    let first = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run;
    e.svc.claim(first.id, "w1").await.unwrap();
    e.svc.complete(&lease(&e, first.id, "w1").await, Completion::succeeded(SummaryCounts::new())).await.unwrap();
    let second = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap();
    assert!(!second.deduplicated);
    assert_ne!(second.run.id, first.id);
}

pub(crate) async fn an_operation_without_dedup_may_have_many_active_runs(b: Backend) {
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

pub(crate) async fn bad_dispatches_are_refused_by_name_and_write_nothing(b: Backend) {
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

pub(crate) async fn a_refused_dispatch_records_a_completed_blocked_run(b: Backend) {
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

/// Dedup keys are unambiguous: ids that contain the key's separator, or
/// that are literally its placeholder for an absent part, do not make two
/// scopes share one active run.
pub(crate) async fn scopes_whose_ids_contain_the_key_separator_do_not_share_a_dedup_key(b: Backend) {
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

pub(crate) async fn dispatch_many_writes_every_run_with_its_audit_row_and_dedups_within_and_across_batches(b: Backend) {
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
