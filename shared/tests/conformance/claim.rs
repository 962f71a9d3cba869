//! Claiming ready runs straight from the run store: fair across scopes,
//! only runs whose time has come, never one run twice.

use std::collections::HashSet;

use chrono::Duration;
use oprun_shared::testing::Backend;
use oprun_shared::{DispatchRequest, Initiator, RunStatus, Scope, SourceSurface};
use serde_json::json;

use super::{NowForTest, actions, env};

/// A run of `report.build` (no dedup) in workspace `ws`.
fn build_req(ws: &str) -> DispatchRequest {
    DispatchRequest {
        operation: "report.build".into(),
        scope: Scope { workspace_id: ws.into(), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
        available_at: None,
    }
}

/// Tenant A's backlog does not delay tenant B's one run: the first claim
/// (of 10, while A has 300 ready and older) takes B's run; A's runs come
/// oldest first.
pub(crate) async fn a_backlog_in_one_scope_does_not_delay_another_scopes_run(b: Backend) {
    let e = env(b).await;
    let mut a_ids = Vec::new();
    for _ in 0..3 {
        let reqs: Vec<_> = (0..100).map(|_| build_req("tenant-a")).collect();
        for r in e.svc.dispatch_many(&reqs).await.unwrap() {
            a_ids.push(r.unwrap().run.id);
        }
    }
    let b_id = e.svc.dispatch(build_req("tenant-b")).await.unwrap().run.id;
    let mut cursor = None;
    let first = e.svc.claim_ready("w1", 10, &mut cursor).await.unwrap();
    let ids: Vec<_> = first.iter().map(|r| r.id).collect();
    assert!(ids.contains(&b_id), "B's run is in the first claim: {ids:?}");
    let a_claimed: Vec<_> = ids.iter().filter(|id| **id != b_id).copied().collect();
    assert_eq!(a_claimed, a_ids[..a_claimed.len()].to_vec(), "A's oldest runs, in order");
    assert!(first.iter().all(|r| r.status == RunStatus::Running && r.lease_owner.as_deref() == Some("w1")));
    assert_eq!(actions(&e, b_id).await, vec!["run.dispatch", "run.claim"]);
}

/// With as many scopes as the claim's size, claims take turns: three
/// scopes, claims of one, in key order and round again.
pub(crate) async fn claims_take_turns_across_scopes(b: Backend) {
    let e = env(b).await;
    for ws in ["ws-c", "ws-a", "ws-b"] {
        for _ in 0..2 {
            e.svc.dispatch(build_req(ws)).await.unwrap();
        }
    }
    let mut cursor = None;
    let mut order = Vec::new();
    for _ in 0..6 {
        let got = e.svc.claim_ready("w1", 1, &mut cursor).await.unwrap();
        assert_eq!(got.len(), 1);
        order.push(got[0].workspace_id.clone());
    }
    assert_eq!(order, ["ws-a", "ws-b", "ws-c", "ws-a", "ws-b", "ws-c"]);
    assert!(e.svc.claim_ready("w1", 5, &mut cursor).await.unwrap().is_empty(), "nothing is left");
}

/// A run dispatched for later is queued but not claimable until its time
/// comes; then it is claimed like any other.
pub(crate) async fn a_run_dispatched_for_later_is_claimed_only_when_its_time_comes(b: Backend) {
    let e = env(b).await;
    let mut req = build_req("contoso");
    req.available_at = Some(e.clock.now_for_test() + Duration::minutes(10));
    let run = e.svc.dispatch(req).await.unwrap().run;
    assert_eq!((run.status, run.available_at), (RunStatus::Queued, e.clock.now_for_test() + Duration::minutes(10)));
    let mut cursor = None;
    assert!(e.svc.claim_ready("w1", 10, &mut cursor).await.unwrap().is_empty(), "not yet");
    e.clock.advance(Duration::minutes(9));
    assert!(e.svc.claim_ready("w1", 10, &mut cursor).await.unwrap().is_empty(), "still not yet");
    e.clock.advance(Duration::minutes(1));
    let got = e.svc.claim_ready("w1", 10, &mut cursor).await.unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![run.id]);
    // A time in the past means now.
    let mut past = build_req("contoso");
    past.available_at = Some(e.clock.now_for_test() - Duration::hours(1));
    let run = e.svc.dispatch(past).await.unwrap().run;
    assert_eq!(run.available_at, e.clock.now_for_test());
}

/// Claims running at once (as many workers would) never take one run
/// twice, and together take every ready run.
pub(crate) async fn concurrent_claims_never_take_the_same_run(b: Backend) {
    let e = env(b).await;
    let mut all = HashSet::new();
    for ws in ["t1", "t2", "t3"] {
        let reqs: Vec<_> = (0..100).map(|_| build_req(ws)).collect();
        for r in e.svc.dispatch_many(&reqs).await.unwrap() {
            all.insert(r.unwrap().run.id);
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..4 {
        let svc = e.svc.clone();
        tasks.spawn(async move {
            let (mut cursor, mut mine) = (None, Vec::new());
            loop {
                let got = svc.claim_ready(&format!("w{w}"), 7, &mut cursor).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|r| r.id));
            }
        });
    }
    let mut seen = HashSet::new();
    while let Some(mine) = tasks.join_next().await {
        for id in mine.unwrap() {
            assert!(seen.insert(id), "run {id} claimed twice");
        }
    }
    assert_eq!(seen, all, "every run claimed");
}

/// A rolling deploy: a worker whose catalog lacks `report.build` (an older
/// build) claims the other runs and leaves that one queued, unfailed, for a
/// worker that serves it.
pub(crate) async fn a_worker_leaves_runs_of_operations_its_catalog_does_not_serve(b: Backend) {
    let e = env(b).await;
    let build = e.svc.dispatch(build_req("contoso")).await.unwrap().run.id;
    let sync = e.svc.dispatch(super::sync_req("contoso-prod")).await.unwrap().run.id;
    let mut older = (*oprun_shared::testing::catalog()).clone();
    older.operations.remove("report.build");
    let old_worker = oprun_shared::OperationRunService::new(
        e.db.store.clone(),
        std::sync::Arc::new(older),
        e.clock.clone(),
        oprun_shared::ServiceConfig::default(),
    );
    let mut cursor = None;
    let claimed: Vec<_> =
        old_worker.claim_ready("w-old", 10, &mut cursor).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(claimed, vec![sync], "the older worker takes only what it serves");
    let again = old_worker.claim_ready("w-old", 10, &mut None).await.unwrap();
    assert!(again.is_empty(), "{again:?}");
    let waiting = e.svc.get(build).await.unwrap();
    assert_eq!((waiting.status, waiting.reason_code), (RunStatus::Queued, None), "left queued, not failed");
    let taken: Vec<_> = e.svc.claim_ready("w-new", 10, &mut None).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(taken, vec![build], "a worker that serves it claims it");
    assert!(actions(&e, build).await.contains(&"run.claim".to_string()));
}
