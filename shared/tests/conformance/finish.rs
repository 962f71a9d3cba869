//! Finish: complete, block and finish_batch by the lease holder.

use chrono::Duration;
use oprun_shared::testing::Backend;
use oprun_shared::{
    BlockFrom, Completion, FailureEntry, Finish, ReasonCode, RunOutcome, RunStatus, ServiceError, SummaryCounts,
    TransitionError,
};

use super::{NowForTest, actions, counts, env, lease, sync_req};

pub(crate) async fn complete_ends_the_run_with_outcome_counts_and_sanitized_failures(b: Backend) {
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

pub(crate) async fn complete_refuses_a_pending_outcome_and_a_failure_without_reason(b: Backend) {
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

pub(crate) async fn block_ends_a_running_or_queued_run_blocked_with_its_reason(b: Backend) {
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

pub(crate) async fn finish_batch_writes_each_outcome_in_one_commit_and_refuses_runs_it_does_not_hold(b: Backend) {
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
