//! Operations at scale: the filters, retention, collapsed refusals, the
//! audit log's reads and the schedule state (pause, settled streak).

use chrono::{DateTime, Duration, Utc};
use oprun_shared::testing::{self, Backend};
use oprun_shared::{
    AuditEntry, AuditFilter, Clock, Initiator, InitiatorFilter, OperationRun, ReasonCode, RetentionPolicy, RunFilter,
    RunOutcome, RunStatus, SourceSurface,
};
use serde_json::json;

use super::{env, sync_req};

fn completed(mut run: OperationRun, outcome: RunOutcome, at: DateTime<Utc>) -> OperationRun {
    run.status = RunStatus::Completed;
    run.outcome = outcome;
    run.completed_at = Some(at);
    run.started_at = Some(at);
    run
}

fn ids(runs: &[OperationRun]) -> Vec<uuid::Uuid> {
    let mut v: Vec<_> = runs.iter().map(|r| r.id).collect();
    v.sort();
    v
}

pub(crate) async fn every_new_filter_returns_exactly_the_matching_runs(b: Backend) {
    let e = env(b).await;
    let store = e.db.store.as_ref();
    let now = e.clock.now();
    let day = Duration::days(1);
    let mut made = vec![];
    for (i, (envn, reason, schedule, actor, age)) in [
        ("contoso-prod", Some("provider.throttled"), Some("nightly"), Initiator::schedule("svc-scheduler"), 3),
        (
            "contoso-lab",
            Some("execution.environment_not_operable"),
            Some("nightly"),
            Initiator::schedule("svc-scheduler"),
            2,
        ),
        ("contoso-lab", None, None, Initiator::user("ops-user-1"), 1),
        ("contoso-prod", Some("provider.throttled"), Some("hourly"), Initiator::user("svc-scheduler"), 0),
    ]
    .into_iter()
    .enumerate()
    {
        let at = now - day * age;
        let mut r =
            completed(testing::run(at), if reason.is_some() { RunOutcome::Failed } else { RunOutcome::Succeeded }, at);
        r.environment_id = Some(envn.into());
        r.reason_code = reason.map(str::to_string);
        if let Some(s) = schedule {
            r.context = json!({ "schedule": s, "n": i });
        }
        r.initiator = actor;
        made.push(testing::insert(store, r).await);
    }
    let list = |f: RunFilter| {
        let svc = e.svc.clone();
        async move { svc.list(&RunFilter { limit: 100, ..f }).await.unwrap() }
    };
    let want = |is: &[usize]| {
        let mut v: Vec<_> = is.iter().map(|i| made[*i].id).collect();
        v.sort();
        v
    };
    let by_reason = list(RunFilter { reason_code: Some("provider.throttled".into()), ..Default::default() }).await;
    assert_eq!(ids(&by_reason), want(&[0, 3]), "reason code");
    let by_env = list(RunFilter { environment_id: Some("contoso-lab".into()), ..Default::default() }).await;
    assert_eq!(ids(&by_env), want(&[1, 2]), "environment");
    let by_schedule = list(RunFilter { schedule: Some("nightly".into()), ..Default::default() }).await;
    assert_eq!(ids(&by_schedule), want(&[0, 1]), "schedule");
    let initiator = |s: &str| Some(s.parse::<InitiatorFilter>().unwrap());
    let by_actor = list(RunFilter { initiator: initiator("svc-scheduler"), ..Default::default() }).await;
    assert_eq!(ids(&by_actor), want(&[0, 1, 3]), "initiator of any kind");
    let by_kind = list(RunFilter { initiator: initiator("schedule:svc-scheduler"), ..Default::default() }).await;
    assert_eq!(ids(&by_kind), want(&[0, 1]), "initiator of one kind");
    let created =
        list(RunFilter { created_after: Some(now - day * 2), created_before: Some(now), ..Default::default() }).await;
    assert_eq!(ids(&created), want(&[1, 2]), "created in [now - 2d, now)");
    let done =
        list(RunFilter { completed_before: Some(now - day * 2 + Duration::seconds(1)), ..Default::default() }).await;
    assert_eq!(ids(&done), want(&[0, 1]), "completed before");
    let both = list(RunFilter {
        reason_code: Some("provider.throttled".into()),
        environment_id: Some("contoso-prod".into()),
        completed_after: Some(now - day),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&both), want(&[3]), "filters narrow together");
    // Paging with the cursor covers every run once.
    let first = e.svc.list(&RunFilter { limit: 3, ..Default::default() }).await.unwrap();
    let rest =
        e.svc.list(&RunFilter { limit: 3, before: first.last().map(|r| r.id), ..Default::default() }).await.unwrap();
    assert_eq!(first.len() + rest.len(), 4);
    assert!(rest.iter().all(|r| !first.iter().any(|f| f.id == r.id)));
    // Runs a finished run retries are left out; one whose retry is active is not.
    let x = testing::insert(store, completed(testing::run(now), RunOutcome::Failed, now)).await;
    let mut done = completed(testing::run(now), RunOutcome::Succeeded, now);
    done.retry_of = Some(x.id);
    testing::insert(store, done).await;
    let y = testing::insert(store, completed(testing::run(now), RunOutcome::Failed, now)).await;
    let mut active = testing::run(now);
    active.retry_of = Some(y.id);
    testing::insert(store, active).await;
    let unretried = list(RunFilter { without_finished_retry: true, ..Default::default() }).await;
    let unretried = ids(&unretried);
    assert!(unretried.contains(&y.id) && !unretried.contains(&x.id), "x has a finished retry, y an active one");
    assert!("user:".parse::<InitiatorFilter>().is_err(), "an empty actor id is refused");
}

pub(crate) async fn prune_by_policy_keeps_what_must_be_kept(b: Backend) {
    let e = env(b).await;
    let store = e.db.store.as_ref();
    let now = e.clock.now();
    let ago = |d: i64| now - Duration::days(d);
    // Old succeeded (20 days: past 14), recent succeeded (3 days), old
    // failed inside its 90 days, very old failed (100 days) that a kept
    // run retries, and very old blocked nobody retries.
    let old_ok = testing::insert(store, completed(testing::run(ago(20)), RunOutcome::Succeeded, ago(20))).await;
    let new_ok = testing::insert(store, completed(testing::run(ago(3)), RunOutcome::Succeeded, ago(3))).await;
    let mid_failed = testing::insert(store, completed(testing::run(ago(30)), RunOutcome::Failed, ago(30))).await;
    let old_failed = testing::insert(store, completed(testing::run(ago(100)), RunOutcome::Failed, ago(100))).await;
    let mut retry = completed(testing::run(ago(2)), RunOutcome::Succeeded, ago(2));
    retry.retry_of = Some(old_failed.id);
    let retry = testing::insert(store, retry).await;
    let old_blocked = testing::insert(store, completed(testing::run(ago(120)), RunOutcome::Blocked, ago(120))).await;
    let queued_old = testing::insert(store, testing::run(ago(200))).await;
    // An administrative audit row from long ago, and a recent one.
    let admin = |at| AuditEntry::new(at, Initiator::user("ops-user-1"), "access.apply");
    e.svc.record(admin(ago(400))).await.unwrap();
    e.svc.record(admin(ago(1))).await.unwrap();

    let policy = RetentionPolicy::default();
    let actor = Initiator::user("oncall-1");
    let dry = e.svc.prune(&policy, e.db.ticks.as_ref(), &actor, true).await.unwrap();
    assert_eq!((dry.runs["succeeded"], dry.runs["blocked"], dry.runs["failed"]), (1, 1, 0), "{dry:?}");
    assert_eq!(dry.audit_rows, 1);
    assert!(e.svc.get(old_ok.id).await.is_ok(), "a dry run deletes nothing");

    let report = e.svc.prune(&policy, e.db.ticks.as_ref(), &actor, false).await.unwrap();
    assert_eq!(report.total_runs(), 2, "{report:?}");
    assert_eq!(report.run_audit_rows, 2, "each pruned run's one factory audit row went with it");
    assert_eq!(report.audit_rows, 1);
    for gone in [old_ok.id, old_blocked.id] {
        assert!(e.svc.get(gone).await.is_err(), "{gone} is past its window");
        assert!(e.svc.audit(gone).await.unwrap().is_empty(), "its audit rows went with it");
    }
    for kept in [new_ok.id, mid_failed.id, old_failed.id, retry.id, queued_old.id] {
        assert!(e.svc.get(kept).await.is_ok(), "{kept} is kept");
        assert!(!e.svc.audit(kept).await.unwrap().is_empty(), "and its audit rows");
    }
    // The pass is audited as one summary row.
    let passes = store
        .list_audit(&AuditFilter { action: Some("retention.prune".into()), limit: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(passes.len(), 1);
    assert_eq!(passes[0].entry.actor, actor);
    assert_eq!(passes[0].entry.details["runs"]["succeeded"], 1);

    // Once the retry ages out, the chain goes: the retry first, then (next
    // pass) the run it retried.
    e.clock.set(now + Duration::days(20));
    let next = e.svc.prune(&policy, e.db.ticks.as_ref(), &actor, false).await.unwrap();
    assert!(e.svc.get(retry.id).await.is_err());
    let after = e.svc.prune(&policy, e.db.ticks.as_ref(), &actor, false).await.unwrap();
    assert!(e.svc.get(old_failed.id).await.is_err(), "{next:?} then {after:?}");
    assert!(e.svc.get(queued_old.id).await.is_ok(), "an active run is never pruned");
}

pub(crate) async fn a_schedule_refused_tick_after_tick_keeps_one_blocked_run(b: Backend) {
    let e = env(b).await;
    let refused = |tick: usize| {
        let mut req = sync_req("contoso-prod");
        req.source = SourceSurface::Scheduler;
        req.initiator = Initiator::schedule("svc-scheduler");
        req.context = json!({ "schedule": "nightly", "tick": tick });
        req
    };
    let mut first = None;
    for tick in 0..100 {
        e.clock.advance(Duration::seconds(60));
        let run =
            e.svc.refuse_dispatch(refused(tick), ReasonCode::ExecutionCapabilityMissing, "revoked").await.unwrap();
        first.get_or_insert(run.id);
        assert_eq!(Some(run.id), first, "tick {tick} counts on the same run");
        assert_eq!(run.refusals, i32::try_from(tick + 1).unwrap());
        assert_eq!(run.last_refused_at, Some(e.clock.now()));
    }
    let id = first.unwrap();
    let blocked =
        e.svc.list(&RunFilter { outcome: Some(RunOutcome::Blocked), limit: 1000, ..Default::default() }).await.unwrap();
    assert_eq!(blocked.len(), 1, "one thing to fix, not 100");
    assert_eq!(e.svc.audit(id).await.unwrap().len(), 1, "one audit row: the first refusal (the tick ledger has each)");
    // Another reason is another run; another schedule too.
    let other = e.svc.refuse_dispatch(refused(0), ReasonCode::ExecutionActorDisabled, "disabled").await.unwrap();
    assert_ne!(other.id, id);
    // The schedule fires again there: the refusals close, and the next one
    // is a new run.
    let mut ok = refused(101);
    ok.initiator = Initiator::schedule("svc-scheduler");
    assert_eq!(e.svc.close_refusals(&ok).await.unwrap(), 2);
    let again = e.svc.refuse_dispatch(refused(102), ReasonCode::ExecutionCapabilityMissing, "revoked").await.unwrap();
    assert_ne!(again.id, id);
    assert_eq!(again.refusals, 1);
    assert_eq!(e.svc.get(id).await.unwrap().refusals, 100, "the closed run keeps its count");
    // A refusal by hand (not a schedule's) is never collapsed.
    let mut by_hand = sync_req("contoso-prod");
    by_hand.source = SourceSurface::Scheduler;
    let a = e.svc.refuse_dispatch(by_hand.clone(), ReasonCode::ExecutionCapabilityMissing, "x").await.unwrap();
    let b2 = e.svc.refuse_dispatch(by_hand, ReasonCode::ExecutionCapabilityMissing, "x").await.unwrap();
    assert_ne!(a.id, b2.id, "no schedule in the context: nothing to collapse by");
    // Retrying the open refusal closes it too.
    let retry = e.svc.retry(again.id, &Initiator::user("ops-user-1")).await.unwrap();
    assert!(!retry.deduplicated);
    assert_eq!(e.svc.get(again.id).await.unwrap().refusal_key, None);
}

pub(crate) async fn ticks_settle_into_a_streak_and_pauses_are_stored(b: Backend) {
    let e = env(b).await;
    let ticks = e.db.ticks.as_ref();
    let now = e.clock.now();
    let at = |m: i64| now + Duration::minutes(m);
    for m in 0..5 {
        assert!(ticks.claim_tick("s", at(m), oprun_shared::TickDecision::Fired, "x", now).await.unwrap());
    }
    let unsettled = ticks.unsettled_ticks("s", 100).await.unwrap();
    assert_eq!(unsettled.len(), 5);
    assert!(
        ticks.settle_ticks("s", &[(at(0), Some(true)), (at(1), Some(false)), (at(2), Some(true))], now).await.unwrap()
    );
    assert!(!ticks.settle_ticks("s", &[(at(2), Some(true))], now).await.unwrap(), "settled once only");
    assert!(ticks.settle_ticks("s", &[(at(3), None), (at(4), Some(true))], now).await.unwrap());
    let state = ticks.schedule_states().await.unwrap().into_iter().find(|s| s.schedule == "s").unwrap();
    assert_eq!(state.clean_streak, 2, "clean after the unclean tick, a neutral tick in between");
    assert_eq!(state.settled_through, Some(at(4)));
    assert!(ticks.unsettled_ticks("s", 100).await.unwrap().is_empty());
    let recorded = ticks.ticks("s", 10).await.unwrap();
    assert_eq!(recorded[0].clean, Some(true));
    assert_eq!(recorded[1].clean, None);
    assert!(recorded.iter().all(|t| t.settled));
    // Pause and resume.
    assert!(ticks.set_paused("s", Some(("user:ops-user-1", Some("provider outage"))), now).await.unwrap());
    assert!(!ticks.set_paused("s", Some(("user:ops-user-1", None)), now).await.unwrap(), "already paused");
    let state = ticks.schedule_states().await.unwrap().into_iter().find(|s| s.schedule == "s").unwrap();
    assert_eq!(state.paused_by.as_deref(), Some("user:ops-user-1"));
    assert_eq!(state.pause_note.as_deref(), Some("provider outage"));
    assert_eq!(state.clean_streak, 2, "pausing keeps the streak");
    assert!(ticks.set_paused("s", None, now).await.unwrap());
    assert!(!ticks.set_paused("s", None, now).await.unwrap(), "not paused");
    assert!(!ticks.set_paused("never-paused", None, now).await.unwrap());
    // Retention keeps each schedule's newest tick.
    e.clock.set(now + Duration::days(40));
    let pruned = ticks.prune_ticks(e.clock.now() - Duration::days(30), 1000, false).await.unwrap();
    assert_eq!(pruned, 4);
    assert_eq!(ticks.last_tick("s").await.unwrap(), Some(at(4)));
}

pub(crate) async fn the_audit_log_reads_by_actor_action_and_time(b: Backend) {
    let e = env(b).await;
    let now = e.clock.now();
    for (i, (actor, action)) in
        [("ops-user-1", "schedule.pause"), ("ops-user-2", "schedule.resume"), ("ops-user-1", "access.apply")]
            .into_iter()
            .enumerate()
    {
        let at = now + Duration::minutes(i64::try_from(i).unwrap());
        e.svc.record(AuditEntry::new(at, Initiator::user(actor), action)).await.unwrap();
    }
    let store = e.db.store.as_ref();
    let read = |f: AuditFilter| async move { store.list_audit(&AuditFilter { limit: 100, ..f }).await.unwrap() };
    let by_actor = read(AuditFilter { actor: Some("ops-user-1".into()), ..Default::default() }).await;
    assert_eq!(
        by_actor.iter().map(|r| r.entry.action.as_str()).collect::<Vec<_>>(),
        ["access.apply", "schedule.pause"]
    );
    let by_prefix = read(AuditFilter { action: Some("schedule.*".into()), ..Default::default() }).await;
    assert_eq!(by_prefix.len(), 2);
    let since = read(AuditFilter { since: Some(now + Duration::minutes(1)), ..Default::default() }).await;
    assert_eq!(since.len(), 2);
    let page = read(AuditFilter { before: Some(by_prefix[0].id), administrative: true, ..Default::default() }).await;
    assert!(page.iter().all(|r| r.id < by_prefix[0].id && r.entry.run_id.is_none()));
}
