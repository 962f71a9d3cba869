//! Cancel: of a queued run (at once) and of a running one (asked to stop).

use oprun_shared::testing::Backend;
use oprun_shared::{Cancelled, Completion, RunOutcome, RunStatus, SummaryCounts};

use super::{actions, env, lease, oncall, sync_req};

pub(crate) async fn cancel_ends_a_queued_run_at_once_and_asks_a_running_one_to_stop(b: Backend) {
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
