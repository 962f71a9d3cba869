//! Claim and lease: claim, claim_many, claim_batch, heartbeat/progress, lease fencing.

use chrono::Duration;
use oprun_shared::testing::Backend;
use oprun_shared::{
    BlockFrom, Claim, Completion, DispatchRequest, Finish, Initiator, Lease, ReasonCode, ReconcileFilter,
    ReconcileKind, RunOutcome, RunStatus, Scope, ServiceError, SummaryCounts, TransitionError,
};
use serde_json::json;

use super::{NowForTest, actions, counts, env, lease, oncall, sync_req};

pub(crate) async fn claim_sets_the_lease_and_a_second_claim_is_an_invalid_transition(b: Backend) {
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

pub(crate) async fn claiming_a_run_that_does_not_exist_is_not_found(b: Backend) {
    let e = env(b).await;
    let id = uuid::Uuid::now_v7();
    let err = e.svc.claim(id, "w1").await.unwrap_err();
    assert!(matches!(err, ServiceError::Transition(TransitionError::NotFound(x)) if x == id), "{err}");
}

pub(crate) async fn claim_many_claims_only_the_runs_still_queued(b: Backend) {
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

pub(crate) async fn heartbeat_and_progress_by_the_lease_owner_renew_the_lease_and_add_up_counts(b: Backend) {
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

pub(crate) async fn anyone_but_the_lease_owner_gets_lease_lost(b: Backend) {
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

pub(crate) async fn a_worker_whose_run_was_requeued_has_lost_its_lease(b: Backend) {
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
pub(crate) async fn a_superseded_attempt_of_the_same_worker_writes_nothing(b: Backend) {
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

pub(crate) async fn claim_batch_claims_queued_runs_and_says_why_it_did_not_claim_the_others(b: Backend) {
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
