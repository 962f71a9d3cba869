//! Audit: what every guarded write records for each run it writes.

use chrono::Duration;
use oprun_shared::testing::Backend;
use oprun_shared::{Claim, Completion, Finish, Initiator, ReconcileFilter, RunOutcome, RunStatus};
use serde_json::json;

use super::{NowForTest, counts, env, lease, oncall, sync_req};

/// Every guarded write audits each run as written: its id, workspace and
/// environment, the status it left and the one it is in, its outcome, the
/// reason, the actor and the instant (on Postgres the rows are filled in
/// inside the database, on SQLite from what the update returned).
pub(crate) async fn every_guarded_write_audits_each_run_as_it_was_written(b: Backend) {
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
            Finish::Complete(Completion::failed(
                RunOutcome::Failed,
                oprun_shared::ReasonCode::ProviderBadResponse,
                "bad page",
            )),
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
