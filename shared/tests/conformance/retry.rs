//! Retry: the linked new run and the refusals.

use oprun_shared::testing::Backend;
use oprun_shared::{
    BlockFrom, Completion, DispatchRequest, Initiator, RunFilter, RunOutcome, RunStatus, ServiceError, SourceSurface,
    SummaryCounts, TransitionError,
};
use serde_json::json;

use super::{actions, env, lease, oncall, sync_req};

pub(crate) async fn retry_creates_a_linked_queued_run_and_a_second_retry_returns_it(b: Backend) {
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

pub(crate) async fn retry_is_refused_for_active_succeeded_and_non_retryable_runs(b: Backend) {
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
            Completion::failed(RunOutcome::Failed, oprun_shared::ReasonCode::ProviderUnavailable, "503"),
        )
        .await
        .unwrap();
    let err = e.svc.retry(id, &oncall()).await.unwrap_err();
    assert!(err.to_string().contains("not retryable by operators"), "{err}");
    let missing = e.svc.retry(uuid::Uuid::now_v7(), &oncall()).await.unwrap_err();
    assert!(matches!(missing, ServiceError::Transition(TransitionError::NotFound(_))), "{missing}");
}
