//! The queue over the run store at the sizes the product promises: one
//! tenant's backlog does not starve another's run, and a long backlog is
//! healthy work, never failed for waiting.

mod common;

use std::time::Duration;

use common::{Env, Stack, reconcile_later};
use oprun_scheduler::DispatchOutcome;
use oprun_shared::{DispatchRequest, Initiator, RunFilter, RunOutcome, RunStatus, Scope, SourceSurface};
use serde_json::json;

/// A `test.fanout` run (no dedup) by ops-user-1 on `contoso` / `env`.
fn fanout(env: &str) -> DispatchRequest {
    DispatchRequest {
        operation: "test.fanout".into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
        available_at: None,
    }
}

/// Dispatch `n` runs on `env` in batches of 500; their ids.
async fn dispatch_backlog(e: &Env, env: &str, n: usize) -> Vec<uuid::Uuid> {
    let mut ids = Vec::with_capacity(n);
    while ids.len() < n {
        let reqs: Vec<_> = (0..(n - ids.len()).min(500)).map(|_| fanout(env)).collect();
        for r in e.dispatcher.dispatch_many(reqs).await.expect("dispatch") {
            match r.expect("dispatched") {
                DispatchOutcome::Dispatched { run, .. } => ids.push(run.id),
                other => panic!("{other:?}"),
            }
        }
    }
    ids
}

/// Runs of `env` that started before `t`.
async fn started_before(e: &Env, env_runs: &[uuid::Uuid], t: chrono::DateTime<chrono::Utc>) -> usize {
    let mut n = 0;
    for chunk in env_runs.chunks(1000) {
        let runs = e.db.store.get_runs(chunk).await.expect("read runs");
        n += runs.iter().filter(|r| r.started_at.is_some_and(|s| s < t)).count();
    }
    n
}

/// Tenant A has 10,000 runs queued and a worker on them; then tenant B
/// dispatches one run. B's run starts before 2% of A's backlog (200 runs)
/// has started.
async fn a_10000_run_backlog_does_not_delay_another_tenants_run(stack: Stack) {
    let e = Env::new(stack).await;
    let a = dispatch_backlog(&e, "contoso-prod", 10_000).await;
    let worker = e.start_worker_with(e.runner("w1"), 16);
    Env::until(|| e.calls() >= 20, 60, "the worker to be busy on A's backlog").await;
    let b = dispatch_backlog(&e, "contoso-dev", 1).await[0];
    let done = e.until_completed(b, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    let b_started = done.started_at.expect("B's run started");
    let before = started_before(&e, &a, b_started).await;
    let ran_at_dispatch = 20;
    assert!(
        before < 200,
        "{before} of A's 10,000 runs started before B's (at least {ran_at_dispatch} had when B was dispatched)"
    );
}

/// 5,000 runs wait in a backlog far longer than their `queued_stale_after`
/// (a reconcile pass an hour on finds them all still queued): none is
/// touched, and once workers come every one succeeds on its first attempt.
async fn a_long_backlog_is_never_failed_for_waiting(stack: Stack) {
    let e = Env::new(stack).await;
    let ids = dispatch_backlog(&e, "contoso-prod", 5_000).await;
    let report = reconcile_later(&e, 3600).await;
    assert!(report.actions.is_empty(), "the reconciler left the backlog alone: {} actions", report.actions.len());
    let (w1, w2) = (e.start_worker_with(e.runner("w1"), 16), e.start_worker_with(e.runner("w2"), 16));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let active = e
            .service
            .list(&RunFilter { status: Some(RunStatus::Queued), limit: 1, ..RunFilter::default() })
            .await
            .unwrap()
            .len()
            + e.service
                .list(&RunFilter { status: Some(RunStatus::Running), limit: 1, ..RunFilter::default() })
                .await
                .unwrap()
                .len();
        if active == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the backlog did not drain in 10 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w1.stop().await;
    w2.stop().await;
    for chunk in ids.chunks(1000) {
        for run in e.db.store.get_runs(chunk).await.unwrap() {
            assert_eq!((run.outcome, run.attempt), (RunOutcome::Succeeded, 1), "run {}", run.id);
        }
    }
    assert_eq!(e.calls(), 5_000, "each run executed once");
}

both_stacks!(a_10000_run_backlog_does_not_delay_another_tenants_run, a_long_backlog_is_never_failed_for_waiting);
