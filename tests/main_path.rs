//! The main path end to end — dispatch → queue → worker reauthorizes →
//! operation → finish — on Postgres + Redis and on one SQLite file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ACCESS, Env, Stack, access};
use oprun_scheduler::config::ScheduleSpec;
use oprun_scheduler::{DispatchOutcome, Scheduler};
use oprun_shared::{
    ActorKind, Clock, DispatchRequest, Initiator, ManualClock, OperationRun, RunOutcome, Scope, SourceSurface,
    TickDecision,
};
use serde_json::json;

fn req(op: &str, actor: &str, env: Option<&str>) -> DispatchRequest {
    DispatchRequest {
        available_at: None,
        operation: op.into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: env.map(Into::into), ..Scope::default() },
        initiator: Initiator::user(actor),
        source: SourceSurface::Cli,
        context: json!({"correlation_id": "test"}),
        params: json!({}),
    }
}

/// A scheduler of `spec` over the env's store, on `clock`, 5 s on-time tolerance.
fn scheduler(e: &Env, spec: ScheduleSpec, clock: Arc<ManualClock>, name: &str) -> Scheduler {
    Scheduler::new(
        &[spec],
        e.dispatcher.clone(),
        e.db.access.clone(),
        e.db.ticks.clone(),
        clock,
        name,
        Duration::from_secs(5),
    )
    .unwrap()
}

async fn dispatched(e: &Env, r: DispatchRequest) -> OperationRun {
    match e.dispatcher.dispatch(r).await.expect("dispatch") {
        DispatchOutcome::Dispatched { run, deduplicated: false, push_failed: false } => *run,
        other => panic!("expected a fresh dispatch, got {other:?}"),
    }
}

async fn a_scheduled_tick_ends_in_a_succeeded_run_started_by_the_schedule_actor(stack: Stack) {
    let e = Env::new(stack).await;
    let spec: ScheduleSpec = toml::from_str(
        r#"
name = "every-minute"
cron = "* * * * *"
operation = "test.count"
workspace = "contoso"
environment = "contoso-prod"
actor = "svc-scheduler"
"#,
    )
    .unwrap();
    // A fixed half-minute, so that exactly one whole minute falls in the window.
    let start: chrono::DateTime<chrono::Utc> = "2026-11-02T09:00:30Z".parse().unwrap();
    let clock = Arc::new(ManualClock::new(start));
    let sched = scheduler(&e, spec, clock.clone(), "sched-test");
    // The next whole minute, one second late.
    let tick = start + chrono::Duration::seconds(31);
    clock.set(tick);
    let decided = sched.run_once().await.unwrap();
    let fired: Vec<_> = decided.iter().filter(|t| t.decision == TickDecision::Fired).collect();
    assert_eq!(fired.len(), 1, "{decided:?}");
    let run_id = fired[0].run_ids[0];
    let worker = e.start_worker(e.runner("w1"));
    let run = e.until_completed(run_id, 30).await;
    worker.stop().await;
    assert_eq!(run.outcome, RunOutcome::Succeeded, "{run:?}");
    assert_eq!(run.initiator, Initiator { kind: ActorKind::Schedule, id: "svc-scheduler".into() });
    assert_eq!(run.source_surface, SourceSurface::Scheduler);
    assert_eq!(run.context["schedule"], "every-minute");
    assert_eq!(run.summary_counts.get("total"), 3);
    assert_eq!(run.summary_counts.get("pages"), 1);
    assert_eq!(e.calls(), 1);
    let ticks = e.db.ticks.ticks("every-minute", 10).await.unwrap();
    assert_eq!(
        ticks.iter().map(|t| (t.decision, t.run_ids.clone())).collect::<Vec<_>>(),
        vec![(TickDecision::Fired, vec![run_id])]
    );
}

async fn changes_after_dispatch_block_the_run_at_execution_and_the_operation_never_runs(stack: Stack) {
    let e = Env::new(stack).await;
    let ok = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-prod"))).await;
    let cap = dispatched(&e, req("test.fanout", "cap-user", Some("contoso-prod"))).await;
    let disabled = dispatched(&e, req("test.fanout", "gone-user", Some("contoso-prod"))).await;
    let suspended = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-dev"))).await;
    let moved = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-moving"))).await;
    let revoked = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-revoked"))).await;
    // Between dispatch and handling, current truth changes.
    let edited = ACCESS
        .replacen(
            "actor = \"cap-user\"\nworkspace = \"contoso\"\nrole = \"operator\"",
            "actor = \"cap-user\"\nworkspace = \"fabrikam\"\nrole = \"operator\"",
            1,
        )
        .replacen(
            "id = \"gone-user\"\nkind = \"user\"",
            "id = \"gone-user\"\nkind = \"user\"\nstatus = \"disabled\"",
            1,
        )
        .replacen(
            "id = \"contoso-dev\"\nworkspace = \"contoso\"",
            "id = \"contoso-dev\"\nworkspace = \"contoso\"\nstatus = \"suspended\"",
            1,
        )
        .replacen(
            "id = \"contoso-moving\"\nworkspace = \"contoso\"",
            "id = \"contoso-moving\"\nworkspace = \"fabrikam\"",
            1,
        )
        .replacen(
            "environment = \"contoso-revoked\"\nprovider = \"graph\"",
            "environment = \"contoso-revoked\"\nprovider = \"graph\"\nstatus = \"consent_revoked\"",
            1,
        );
    assert_ne!(edited, ACCESS);
    e.db.access.apply_access(&access(&edited)).await.unwrap();
    let worker = e.start_worker(e.runner("w1"));
    let mut results = vec![];
    for run in [&ok, &cap, &disabled, &suspended, &moved, &revoked] {
        let done = e.until_completed(run.id, 30).await;
        results.push((done.outcome, done.reason_code.clone()));
    }
    worker.stop().await;
    let blocked = |code: &str| (RunOutcome::Blocked, Some(code.to_string()));
    assert_eq!(
        results,
        vec![
            (RunOutcome::Succeeded, None),
            blocked("execution.capability_missing"),
            blocked("execution.actor_disabled"),
            blocked("execution.environment_not_operable"),
            blocked("execution.scope_changed"),
            blocked("execution.provider_connection_unusable"),
        ]
    );
    assert_eq!(e.calls(), 1, "only the run that was still allowed invoked the operation");
    let audit: Vec<String> = e.service.audit(cap.id).await.unwrap().into_iter().map(|a| a.entry.action).collect();
    assert_eq!(audit, vec!["run.dispatch", "run.claim", "run.block"]);
}

/// The run row is the job: two workers claiming from one store at once
/// never take the same run (`SKIP LOCKED` on Postgres, the write lock on
/// SQLite), so each run is claimed once and its operation runs once.
async fn two_workers_on_one_store_claim_each_run_once(stack: Stack) {
    let e = Env::new(stack).await;
    let mut ids = Vec::new();
    for env in ["contoso-prod", "contoso-dev"] {
        for _ in 0..10 {
            ids.push(dispatched(&e, req("test.fanout", "ops-user-1", Some(env))).await.id);
        }
    }
    let (w1, w2) = (e.start_worker(e.runner("w1")), e.start_worker(e.runner("w2")));
    for id in &ids {
        assert_eq!(e.until_completed(*id, 60).await.outcome, RunOutcome::Succeeded);
    }
    w1.stop().await;
    w2.stop().await;
    assert_eq!(e.calls(), ids.len(), "one execution per run");
    for id in &ids {
        let claims = e.service.audit(*id).await.unwrap().into_iter().filter(|a| a.entry.action == "run.claim").count();
        assert_eq!(claims, 1, "run {id} claimed once");
    }
}

async fn a_panicking_operation_fails_its_run_and_the_worker_goes_on(stack: Stack) {
    let e = Env::new(stack).await;
    let bad = dispatched(
        &e,
        DispatchRequest { params: json!({"panic": true}), ..req("test.count", "ops-user-1", Some("contoso-prod")) },
    )
    .await;
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    let bad = e.until_completed(bad.id, 30).await;
    Env::until(|| stats.snapshot().panics == 1, 30, "the panic counted").await;
    assert_eq!((bad.outcome, bad.reason_code.as_deref()), (RunOutcome::Failed, Some("run.handler_panicked")));
    // Only now is the next run dispatched: the worker takes new work after the panic.
    let good = dispatched(&e, req("test.count", "ops-user-1", Some("contoso-dev"))).await;
    let good = e.until_completed(good.id, 30).await;
    assert!(worker.is_running(), "the worker is still up");
    worker.stop().await;
    assert_eq!(good.outcome, RunOutcome::Succeeded);
    assert_eq!(stats.snapshot().panics, 1);
    assert_eq!(e.calls(), 2, "the panicking run and the next one");
}

async fn a_cancel_request_is_honoured_between_pages(stack: Stack) {
    let e = Env::new(stack).await;
    let r = DispatchRequest {
        params: json!({"pages": 200, "page_size": 5, "page_delay_ms": 50}),
        ..req("test.slow", "ops-user-1", Some("contoso-prod"))
    };
    let run = dispatched(&e, r).await;
    let worker = e.start_worker(e.runner("w1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = e.service.get(run.id).await.unwrap();
        if now.summary_counts.get("pages") >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slow run never progressed: {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.service.cancel(run.id, &Initiator::user("ops-user-1")).await.unwrap();
    let done = e.until_completed(run.id, 30).await;
    worker.stop().await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Cancelled, Some("run.cancelled_by_operator")));
    let pages = done.summary_counts.get("pages");
    assert!((2..200).contains(&pages), "stopped between pages, kept its counts: {pages}");
}

async fn a_refused_scheduled_dispatch_records_a_blocked_run_and_a_refused_tick(stack: Stack) {
    let e = Env::new(stack).await;
    let spec: ScheduleSpec = toml::from_str(
        r#"
name = "lab"
cron = "* * * * *"
operation = "test.count"
workspace = "contoso"
environment = "contoso-lab"
actor = "svc-scheduler"
"#,
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-02T09:00:30Z".parse().unwrap()));
    let sched = scheduler(&e, spec, clock.clone(), "s");
    clock.advance(chrono::Duration::seconds(31));
    let decided = sched.run_once().await.unwrap();
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].decision, TickDecision::Refused);
    let run = e.service.get(decided[0].run_ids[0]).await.unwrap();
    assert_eq!(
        (run.outcome, run.reason_code.as_deref()),
        (RunOutcome::Blocked, Some("execution.environment_not_operable"))
    );
    assert_eq!(run.initiator.id, "svc-scheduler");
    let ticks = e.db.ticks.ticks("lab", 10).await.unwrap();
    assert_eq!(ticks.len(), 1, "{ticks:?}");
    let tick = &ticks[0];
    assert_eq!(tick.scheduled_for, "2026-11-02T09:01:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap());
    assert_eq!((tick.decision, tick.decided_by.as_str()), (TickDecision::Refused, "s"), "{tick:?}");
    assert_eq!(tick.run_ids, vec![run.id], "the tick names the blocked run: {tick:?}");
    assert_eq!(
        tick.details["scopes"]["contoso-lab"],
        json!({ "decision": "refused", "reason": "execution.environment_not_operable", "run": run.id }),
        "{tick:?}"
    );
    assert_eq!(tick.details["catch_up"], json!(false), "{tick:?}");
    let _ = clock.now();
}

/// The queue's depth is the runs ready to claim: a run dispatched for
/// later is not counted until its time comes.
async fn the_queue_reports_its_depth(stack: Stack) {
    let e = Env::new(stack).await;
    assert_eq!(oprun_shared::JobQueue::depth(&*e.queue).await.unwrap(), Some(0));
    for env in ["contoso-prod", "contoso-dev"] {
        dispatched(&e, req("test.fanout", "ops-user-1", Some(env))).await;
    }
    let mut later = req("test.fanout", "ops-user-1", Some("contoso-prod"));
    later.params = json!({"n": 2});
    later.available_at = Some(chrono::Utc::now() + chrono::Duration::hours(1));
    let delayed = dispatched(&e, later).await;
    assert_eq!(delayed.status, oprun_shared::RunStatus::Queued);
    assert_eq!(oprun_shared::JobQueue::depth(&*e.queue).await.unwrap(), Some(2));
}

/// A finish whose write meets a store failure is retried, under a lease
/// the heartbeat keeps alive, until it is durable: the result the operation
/// produced is recorded as it was, not left for the reconciler to fail as a
/// lost lease (or, for a resumable operation, to run again).
async fn a_finish_that_meets_a_store_failure_is_retried_until_it_is_written(stack: Stack) {
    let e = Env::new(stack).await;
    let run = dispatched(&e, req("test.count", "ops-user-1", Some("contoso-prod"))).await;
    let flaky = Arc::new(oprun_shared::testing::FaultyStore::new(e.db.store.clone()).failing_finishes(2));
    let service = Env::service_with(flaky.clone(), Arc::new(oprun_shared::SystemClock));
    let runner = oprun_worker::Runner::new(service, e.authorizer.clone(), e.operations(), "w1".into());
    let mut cursor = None;
    let mut claimed = runner.claim_ready(1, &mut cursor).await.expect("the claim is written");
    assert_eq!(claimed.len(), 1, "the one ready run is claimed");
    let result = runner.run_claimed(claimed.remove(0)).await;
    assert_eq!(flaky.refused(), 2, "the first two finish writes failed");
    match result {
        oprun_worker::JobResult::Finished(done) => assert_eq!(done.outcome, RunOutcome::Succeeded),
        other => panic!("expected the run finished by this attempt, got {other:?}"),
    }
    let stored = e.service.get(run.id).await.unwrap();
    assert_eq!((stored.status, stored.outcome), (oprun_shared::RunStatus::Completed, RunOutcome::Succeeded));
    assert_eq!((stored.attempt, stored.lease_owner.as_deref()), (1, None));
    assert_eq!(e.calls(), 1, "the operation ran once");
    let actions: Vec<String> = e.service.audit(run.id).await.unwrap().into_iter().map(|a| a.entry.action).collect();
    assert_eq!(actions, vec!["run.dispatch", "run.claim", "run.progress", "run.complete"]);
}

both_stacks!(
    a_finish_that_meets_a_store_failure_is_retried_until_it_is_written,
    the_queue_reports_its_depth,
    a_scheduled_tick_ends_in_a_succeeded_run_started_by_the_schedule_actor,
    changes_after_dispatch_block_the_run_at_execution_and_the_operation_never_runs,
    two_workers_on_one_store_claim_each_run_once,
    an_idle_worker_wakes_on_a_dispatch_without_waiting_for_its_poll,
    a_panicking_operation_fails_its_run_and_the_worker_goes_on,
    a_cancel_request_is_honoured_between_pages,
    a_refused_scheduled_dispatch_records_a_blocked_run_and_a_refused_tick,
);

/// An idle worker wakes when a run is dispatched, not at its next poll
/// (set to 60 s here): the run must complete well inside that. On Postgres
/// the dispatch goes through a second store (another pool, as another
/// process would), so the wake-up can only be the `NOTIFY`.
async fn an_idle_worker_wakes_on_a_dispatch_without_waiting_for_its_poll(stack: Stack) {
    let db = oprun_shared::testing::TestStore::new(match stack {
        Stack::PostgresRedis => oprun_shared::testing::Backend::Postgres,
        Stack::Sqlite => oprun_shared::testing::Backend::Sqlite,
    })
    .await;
    let cfg = oprun_worker::config::QueueConfig { poll_interval: Duration::from_secs(60) };
    let e = Env::with_parts(stack, db, cfg).await;
    let runner = e.runner("w1");
    let worker = e.start_worker(runner);
    // Let the worker go idle (its first claim finds nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dispatcher = match stack {
        Stack::PostgresRedis => {
            let other = oprun_shared::Database::postgres(&e.db.url, 2).await.expect("a second pool");
            let service = Env::service_with(other.runs.clone(), Arc::new(oprun_shared::SystemClock));
            let queue =
                Arc::new(oprun_worker::queue::Queue::new(other.runs.clone(), Arc::new(oprun_shared::SystemClock)));
            oprun_scheduler::Dispatcher::new(service, e.authorizer.clone(), queue)
        }
        Stack::Sqlite => e.dispatcher.clone(),
    };
    let run = match dispatcher.dispatch(req("test.count", "ops-user-1", Some("contoso-prod"))).await.unwrap() {
        oprun_scheduler::DispatchOutcome::Dispatched { run, .. } => *run,
        other => panic!("{other:?}"),
    };
    // Fails (panics) if the run is not completed within 20 s: a third of the poll.
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    assert_eq!(e.calls(), 1);
}
