//! Schedules and runs at scale: actions by filter after an outage, pauses
//! and backfills across schedulers, and a refusal repeated tick after tick.

use std::sync::Arc;

use chrono::Utc;
use oprun_scheduler::config::ScheduleSpec;
use oprun_shared::{ManualClock, RunFilter, TickDecision};

use super::{scheduler, spec, t};
use crate::common::{self, Env, Stack};

/// After an outage: 500 blocked runs, retried by filter once access is
/// fixed. Before the fix every run is refused (and each refusal audited);
/// a dry run lists them and writes nothing; then each is retried and
/// audited with the operator as actor, and a second pass returns the
/// active retries (dedup holds).
pub(crate) async fn five_hundred_blocked_runs_are_retried_by_filter_after_access_is_fixed(stack: Stack) {
    let e = Env::new(stack).await;
    let operator = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let ops = oprun_shared::Initiator::user("ops-user-1");
    for _ in 0..500 {
        let req = oprun_shared::DispatchRequest {
            operation: "test.fanout".into(),
            scope: oprun_shared::Scope {
                workspace_id: "contoso".into(),
                environment_id: Some("contoso-prod".into()),
                ..Default::default()
            },
            initiator: oprun_shared::Initiator::service("svc-scheduler"),
            source: oprun_shared::SourceSurface::Api,
            context: serde_json::json!({}),
            params: serde_json::json!({}),
            available_at: None,
        };
        e.service.refuse_dispatch(req, oprun_shared::ReasonCode::ExecutionCapabilityMissing, "revoked").await.unwrap();
    }
    // Another workspace's blocked run with the same reason is not ops-user-1's to see.
    let mut fab = testing_run("fabrikam", "fabrikam-prod");
    fab.reason_code = Some("execution.capability_missing".into());
    let fab = oprun_shared::testing::insert(e.db.store.as_ref(), fab).await;
    let filter = || RunFilter {
        reason_code: Some("execution.capability_missing".into()),
        operation: Some("test.fanout".into()),
        ..Default::default()
    };
    use oprun_scheduler::BulkAction::Retry;

    // The operator has lost the operation's capability: every retry is refused.
    let broken =
        common::ACCESS.replace("operator = [\"inventory.sync\", \"report.build\",", "operator = [\"report.build\",");
    e.db.access.apply_access(&common::access(&broken)).await.unwrap();
    let refused = operator.act_on_filter(&ops, Retry, filter(), None, false).await.unwrap();
    assert_eq!((refused.matched, refused.count("refused")), (500, 500), "{:?}", refused.runs.first());
    let audit = oprun_shared::AuditFilter {
        action: Some("operator.refused".into()),
        actor: Some("ops-user-1".into()),
        limit: 1000,
        ..Default::default()
    };
    assert_eq!(e.db.store.list_audit(&audit).await.unwrap().len(), 500, "each refusal audited with the caller");

    // Fixed: a dry run first, then the retry.
    e.db.access.apply_access(&common::access(common::ACCESS)).await.unwrap();
    let dry = operator.act_on_filter(&ops, Retry, filter(), None, true).await.unwrap();
    assert_eq!((dry.matched, dry.count("would_retry"), dry.more), (500, 500, false));
    assert!(dry.runs.iter().all(|r| r.run_id != fab.id), "another tenant's run is not matched");
    let queued = RunFilter { status: Some(oprun_shared::RunStatus::Queued), limit: 1000, ..Default::default() };
    assert!(e.service.list(&queued).await.unwrap().is_empty(), "a dry run writes nothing");
    let capped = operator.act_on_filter(&ops, Retry, filter(), Some(100), true).await.unwrap();
    assert_eq!((capped.matched, capped.more), (100, true), "the cap holds and says more are left");

    let done = operator.act_on_filter(&ops, Retry, filter(), None, false).await.unwrap();
    assert_eq!(done.count("retried"), 500, "{:?}", done.runs.iter().find(|r| r.result != "retried"));
    assert_eq!(e.service.list(&queued).await.unwrap().len(), 500);
    let some = done.runs[17].run_id;
    let trail = e.service.audit(some).await.unwrap();
    let retried = trail.iter().find(|a| a.entry.action == "run.retried").expect("audited on the old run");
    assert_eq!(retried.entry.actor, ops);
    let again = operator.act_on_filter(&ops, Retry, filter(), None, false).await.unwrap();
    assert_eq!(again.count("deduplicated"), 500, "the active retries are returned, no new runs");
    assert_eq!(e.service.list(&queued).await.unwrap().len(), 500);
    let summary =
        oprun_shared::AuditFilter { action: Some("runs.retry_by_filter".into()), limit: 10, ..Default::default() };
    assert_eq!(e.db.store.list_audit(&summary).await.unwrap().len(), 3, "each pass that acted is summarized once");
}

fn testing_run(ws: &str, env: &str) -> oprun_shared::OperationRun {
    let now = Utc::now();
    let mut r = oprun_shared::testing::run(now);
    r.operation = "test.fanout".into();
    r.workspace_id = ws.into();
    r.environment_id = Some(env.into());
    r.status = oprun_shared::RunStatus::Completed;
    r.outcome = oprun_shared::RunOutcome::Blocked;
    r.completed_at = Some(now);
    r
}

/// A pause is stored: both schedulers record the paused ticks as
/// `skipped_paused` (not missed), and fire again once resumed; a backfill
/// fires a past range's unrecorded ticks once each, as catch-up; a viewer
/// may do neither (refused and audited).
pub(crate) async fn a_pause_holds_across_two_schedulers_and_a_backfill_fires_each_tick_once(stack: Stack) {
    let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
    let e = Env::with_clock(stack, clock.clone()).await;
    let s = spec("overlap = \"allow\"");
    let a = scheduler(&e, "sched-a", &s, clock.clone()).await;
    let b = scheduler(&e, "sched-b", &s, clock.clone()).await;
    let operator = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let admin = oprun_scheduler::Schedules::new(operator, Arc::new(vec![s.clone()]), e.db.ticks.clone());
    let ops = oprun_shared::Initiator::user("ops-user-1");
    let viewer = oprun_shared::Initiator::user("viewer-1");
    let refused = admin.set_paused(&viewer, "five", Some(None)).await.unwrap_err();
    assert!(matches!(refused, oprun_scheduler::ActionError::Forbidden(_)), "{refused}");
    assert!(admin.set_paused(&ops, "five", Some(Some("provider outage"))).await.unwrap());
    for minute in ["09:00:01", "09:05:02"] {
        clock.set(t(&format!("2026-11-02T{minute}Z")));
        let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
        let decided: Vec<_> = ra.unwrap().into_iter().chain(rb.unwrap()).collect();
        assert_eq!(decided.len(), 1, "{decided:?}");
        assert_eq!(decided[0].decision, TickDecision::SkippedPaused);
    }
    assert!(admin.set_paused(&ops, "five", None).await.unwrap());
    clock.set(t("2026-11-02T09:10:01Z"));
    let (ra, rb) = tokio::join!(a.run_once(), b.run_once());
    let fired: Vec<_> = ra.unwrap().into_iter().chain(rb.unwrap()).collect();
    assert_eq!(fired.iter().map(|d| d.decision).collect::<Vec<_>>(), vec![TickDecision::Fired]);
    let view = admin.show("ops-user-1", "five", 10).await.unwrap();
    assert!(view.paused.is_none());
    assert_eq!(view.next_tick, Some(t("2026-11-02T09:15:00Z")));

    // Backfill 08:30–08:50: five ticks no scheduler ever recorded.
    let range = (t("2026-11-02T08:30:00Z"), t("2026-11-02T08:50:00Z"));
    let dry = admin.backfill(&ops, &a, "five", range, true).await.unwrap();
    assert_eq!(dry.len(), 5);
    assert_eq!(e.db.ticks.ticks("five", 100).await.unwrap().len(), 3, "a dry run records nothing");
    let done = admin.backfill(&ops, &a, "five", range, false).await.unwrap();
    assert!(done.iter().all(|b| b.decision == Some(TickDecision::Fired)), "{done:?}");
    let again = admin.backfill(&ops, &b, "five", range, false).await.unwrap();
    assert!(again.iter().all(|b| b.decision.is_none()), "each tick once: {again:?}");
    let backfilled = e.db.ticks.ticks("five", 100).await.unwrap();
    assert_eq!(backfilled.len(), 8);
    let old = backfilled.iter().find(|t| t.scheduled_for == range.0).unwrap();
    assert_eq!(old.details["catch_up"], true);
    assert_eq!(old.details["backfill"]["by"], "user:ops-user-1");
    assert!(admin.backfill(&viewer, &a, "five", range, false).await.is_err());
    let future = admin.backfill(&ops, &a, "five", (t("2026-11-02T09:00:00Z"), t("2026-11-03T00:00:00Z")), false);
    assert!(matches!(future.await, Err(oprun_scheduler::ActionError::Invalid(_))), "the future is the scheduler's");

    // Every act audited, the refusals too.
    let acts = oprun_shared::AuditFilter { administrative: true, limit: 100, ..Default::default() };
    let actions: Vec<String> =
        e.db.store.list_audit(&acts).await.unwrap().into_iter().map(|a| a.entry.action).collect();
    for want in ["schedule.pause", "schedule.resume", "schedule.backfill", "operator.refused"] {
        assert!(actions.iter().any(|a| a == want), "{want} in {actions:?}");
    }
}

/// A schedule refused on every tick (its environment suspended) keeps one
/// blocked run for 100 ticks, each tick still in the ledger naming it.
pub(crate) async fn a_refusal_repeated_over_100_ticks_is_one_blocked_run(stack: Stack) {
    let e = Env::new(stack).await;
    let s = ScheduleSpec {
        name: "every-minute".into(),
        cron: "* * * * *".into(),
        environment: Some("contoso-lab".into()),
        environments: None,
        ..spec("overlap = \"allow\"")
    };
    let clock = Arc::new(ManualClock::new(t("2026-11-02T08:59:58Z")));
    let sched = scheduler(&e, "s", &s, clock.clone()).await;
    for m in 0..100 {
        clock.set(t("2026-11-02T09:00:01Z") + chrono::Duration::minutes(m));
        let d = sched.run_once().await.unwrap();
        assert_eq!(d.iter().map(|d| d.decision).collect::<Vec<_>>(), vec![TickDecision::Refused], "minute {m}");
    }
    let blocked = RunFilter { schedule: Some("every-minute".into()), limit: 1000, ..Default::default() };
    let runs = e.service.list(&blocked).await.unwrap();
    assert_eq!(runs.len(), 1, "one blocked run for 100 refused ticks");
    assert_eq!(runs[0].refusals, 100);
    let shown = oprun_shared::RunView::from(&runs[0]);
    assert_eq!((shown.refusals, shown.last_refused_at), (100, runs[0].last_refused_at), "what operators see says so");
    assert_eq!(runs[0].reason_code.as_deref(), Some("execution.environment_not_operable"));
    let ticks = e.db.ticks.ticks("every-minute", 1000).await.unwrap();
    assert_eq!(ticks.len(), 100);
    assert!(ticks.iter().all(|t| t.run_ids == vec![runs[0].id]), "each tick names the one run");
    // Refused ticks are not clean: the streak, settled over all of them, is 0.
    let states = e.db.ticks.schedule_states().await.unwrap();
    let state = states.iter().find(|s| s.schedule == "every-minute").unwrap();
    assert_eq!((state.clean_streak, state.settled_through), (0, Some(ticks[0].scheduled_for)));
}
