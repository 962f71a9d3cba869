//! Reconcile: stale running and never-claimed queued runs, dry runs, paging, concurrency.

use std::sync::Arc;

use chrono::Duration;
use oprun_shared::testing::Backend;
use oprun_shared::{
    Initiator, ReconcileFilter, ReconcileKind, RunFilter, RunOutcome, RunStatus, ServiceConfig, testing,
};
use serde_json::json;
use tokio::sync::Barrier;

use super::{NowForTest, actions, counts, env, env_with, lease, oncall, sync_req};

pub(crate) async fn a_stale_running_run_is_requeued_while_attempts_remain(b: Backend) {
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

pub(crate) async fn a_stale_running_run_without_attempts_left_fails_with_lease_expired(b: Backend) {
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

pub(crate) async fn a_stale_running_run_that_was_asked_to_cancel_ends_cancelled(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.svc.claim(id, "w1").await.unwrap();
    e.svc.cancel(id, &oncall()).await.unwrap();
    e.clock.advance(Duration::seconds(120));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert_eq!(report.count(ReconcileKind::CancelledStale), 1);
    assert_eq!(e.svc.get(id).await.unwrap().outcome, RunOutcome::Cancelled);
}

/// The run row is the job: a queued run cannot be lost, so however long it
/// waits (a backlog, no worker yet) the reconciler leaves it queued.
pub(crate) async fn a_queued_run_that_waits_long_is_left_queued_by_the_reconciler(b: Backend) {
    let e = env(b).await;
    let id = e.svc.dispatch(sync_req("contoso-prod")).await.unwrap().run.id;
    e.clock.advance(Duration::days(2));
    let report = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), false).await.unwrap();
    assert!(report.actions.is_empty(), "{report:?}");
    let run = e.svc.get(id).await.unwrap();
    assert_eq!((run.status, run.outcome), (RunStatus::Queued, RunOutcome::Pending));
    assert_eq!(actions(&e, id).await, vec!["run.dispatch"]);
}

pub(crate) async fn a_dry_run_reconcile_changes_nothing_and_reports_what_it_would_do(b: Backend) {
    let e = env(b).await;
    let stale = e.svc.dispatch(sync_req("e1")).await.unwrap().run.id;
    e.svc.claim(stale, "w1").await.unwrap();
    let queued = e.svc.dispatch(sync_req("e2")).await.unwrap().run.id;
    e.clock.advance(Duration::minutes(6));
    let before = e.svc.list(&RunFilter { limit: 100, ..Default::default() }).await.unwrap();
    let dry = e.svc.reconcile(&oncall(), &ReconcileFilter::default(), true).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.count(ReconcileKind::Requeued), 1);
    assert_eq!(dry.actions.len(), 1, "the queued run is left alone: {dry:?}");
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

pub(crate) async fn reconcile_pages_through_more_runs_than_one_page_and_honours_filters(b: Backend) {
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

pub(crate) async fn two_concurrent_reconcilers_move_each_run_exactly_once(b: Backend) {
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
