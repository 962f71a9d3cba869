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

async fn the_same_job_delivered_twice_runs_the_operation_once(stack: Stack) {
    let e = Env::new(stack).await;
    let run = dispatched(&e, req("test.count", "ops-user-1", Some("contoso-prod"))).await;
    oprun_shared::JobQueue::push(&*e.queue, run.id).await.unwrap();
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    let done = e.until_completed(run.id, 30).await;
    Env::until(|| stats.snapshot().received >= 2, 30, "the second delivery").await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    assert_eq!(e.calls(), 1);
    assert_eq!(stats.snapshot().skipped, 1, "{:?}", stats.snapshot());
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

async fn garbage_and_unknown_payloads_are_acknowledged_counted_and_the_worker_goes_on(stack: Stack) {
    let e = Env::new(stack).await;
    let garbage = [
        json!("garbage"),
        json!({"run_id": "not-a-uuid"}),
        json!([1, 2, 3]),
        json!({"hello": "world"}),
        json!(null),
        json!(-12.5),
        json!({"run_id": 42}),
        json!({"run_id": "x".repeat(1 << 20)}),
    ];
    for g in garbage {
        e.queue.push_value(g).await.unwrap();
    }
    oprun_shared::JobQueue::push(&*e.queue, uuid::Uuid::now_v7()).await.unwrap();
    let run = dispatched(&e, req("test.count", "ops-user-1", Some("contoso-prod"))).await;
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    let done = e.until_completed(run.id, 30).await;
    Env::until(|| stats.snapshot().received >= 10, 30, "every delivery").await;
    // Acknowledged, not retried: the queue holds all ten as done, none
    // scheduled for a retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (done, waiting) = queue_done_and_waiting(&e).await;
        if done == 10 && waiting == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} deliveries acknowledged, {waiting} waiting in the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    let s = stats.snapshot();
    assert_eq!((s.received, s.invalid_payloads, s.unknown_runs, s.finished), (10, 8, 1, 1), "{s:?}");
}

async fn duplicate_and_reordered_deliveries_run_each_operation_once(stack: Stack) {
    let e = Env::new(stack).await;
    let a = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-prod"))).await;
    let b = dispatched(&e, req("test.fanout", "ops-user-1", Some("contoso-dev"))).await;
    for id in [b.id, a.id, a.id, b.id, b.id, a.id] {
        oprun_shared::JobQueue::push(&*e.queue, id).await.unwrap();
    }
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    e.until_completed(a.id, 30).await;
    e.until_completed(b.id, 30).await;
    Env::until(|| stats.snapshot().received >= 8, 30, "every delivery").await;
    worker.stop().await;
    assert_eq!(e.calls(), 2, "one execution per run");
    let s = stats.snapshot();
    assert_eq!((s.finished, s.skipped), (2, 6), "{s:?}");
}

async fn the_queue_reports_its_depth(stack: Stack) {
    let e = Env::new(stack).await;
    assert_eq!(oprun_shared::JobQueue::depth(&*e.queue).await.unwrap(), Some(0));
    let ids: Vec<uuid::Uuid> = (0..3).map(|_| uuid::Uuid::now_v7()).collect();
    oprun_shared::JobQueue::push_many(&*e.queue, &ids).await.unwrap();
    assert_eq!(oprun_shared::JobQueue::depth(&*e.queue).await.unwrap(), Some(3));
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
    let result = runner.handle_job(json!({ "run_id": run.id })).await.expect("the job is handled");
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
    duplicate_and_reordered_deliveries_run_each_operation_once,
    garbage_and_unknown_payloads_are_acknowledged_counted_and_the_worker_goes_on,
    a_scheduled_tick_ends_in_a_succeeded_run_started_by_the_schedule_actor,
    changes_after_dispatch_block_the_run_at_execution_and_the_operation_never_runs,
    the_same_job_delivered_twice_runs_the_operation_once,
    a_panicking_operation_fails_its_run_and_the_worker_goes_on,
    a_cancel_request_is_honoured_between_pages,
    a_refused_scheduled_dispatch_records_a_blocked_run_and_a_refused_tick,
);

/// An idle Redis worker wakes when a job is pushed, not at its next poll
/// tick or heartbeat: both are set to 60 s here, and the run must complete
/// well inside that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_redis_worker_wakes_on_a_push_without_waiting_for_its_tick() {
    let url = oprun_shared::testing::require_env(oprun_shared::testing::REDIS_URL_VAR);
    let db = oprun_shared::testing::TestStore::new(oprun_shared::testing::Backend::Postgres).await;
    let mut cfg = common::redis_queue_config(&url);
    cfg.poll_interval = Duration::from_secs(60);
    cfg.heartbeat = Duration::from_secs(60);
    let e = Env::with_parts(Stack::PostgresRedis, db, cfg).await;
    let runner = e.runner("w1");
    let stats = runner.stats().clone();
    let worker = e.start_worker(runner);
    // The worker is idle: it waits on the wake-up channel (subscribed).
    let channel = format!("{}:signal:oprun-wake", e.queue_config.namespace);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while redis_int(&url, &["PUBSUB", "NUMSUB", &channel]).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the worker never subscribed to {channel}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.snapshot().received, 0, "nothing was pushed yet");
    let run = dispatched(&e, req("test.count", "ops-user-1", Some("contoso-prod"))).await;
    // Fails (panics) if the run is not completed within 20 s: a third of the tick.
    let done = e.until_completed(run.id, 20).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    assert_eq!(e.calls(), 1);
}

/// Jobs the queue holds as acknowledged (done), and jobs it still holds to
/// deliver (waiting, scheduled for a retry, in flight or failed).
async fn queue_done_and_waiting(e: &Env) -> (i64, i64) {
    match e.stack {
        Stack::PostgresRedis => {
            let (url, ns) = (e.queue_config.url.as_deref().unwrap(), &e.queue_config.namespace);
            let done = redis_int(url, &["SCARD", &format!("{ns}:done")]).await;
            let mut waiting = redis_int(url, &["LLEN", &format!("{ns}:active")]).await;
            for set in ["scheduled", "failed", "dead"] {
                let cmd = if set == "scheduled" { "ZCARD" } else { "SCARD" };
                waiting += redis_int(url, &[cmd, &format!("{ns}:{set}")]).await;
            }
            (done, waiting)
        }
        Stack::Sqlite => {
            let pool = e.db.database.sqlite.clone().expect("a SQLite pool");
            let by: Vec<(String, i64)> = sqlx::query_as("SELECT status, COUNT(*) FROM Jobs GROUP BY status")
                .fetch_all(&pool)
                .await
                .expect("count the queue's jobs");
            let done = by.iter().filter(|(s, _)| s == "Done").map(|(_, n)| n).sum();
            let waiting = by.iter().filter(|(s, _)| s != "Done").map(|(_, n)| n).sum();
            (done, waiting)
        }
    }
}

/// The last integer of the Redis server's reply to `args` (RESP over a
/// plain socket: the test crate has no Redis client of its own).
async fn redis_int(url: &str, args: &[&str]) -> i64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("redis://").split('/').next().unwrap_or_default();
    let mut s =
        tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to Redis at {addr}: {e}"));
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(cmd.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("a Redis reply").unwrap();
        assert!(n > 0 && reply.len() < 64 * 1024, "a short Redis reply: {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        assert!(!text.starts_with('-'), "Redis error: {text}");
        // An integer reply, alone or as the last element of an array.
        if let Some(last) = text.strip_suffix("\r\n").and_then(|t| t.rsplit("\r\n").next())
            && let Some(n) = last.strip_prefix(':')
        {
            return n.parse().expect("an integer reply");
        }
    }
}

/// Every connection of the SQLite pool plans apalis's ack by the primary key
/// once the queue is open, the one that seeded the planner statistics
/// included. (A connection left with the statistics of the fresh file plans
/// it as a walk of every job its worker ever locked, so a long run slows as
/// it goes: seen under `oprun bench`, one connection of nine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sqlite_connection_plans_the_queue_ack_by_primary_key() {
    use sqlx::Row;
    let db = oprun_shared::testing::TestStore::new(oprun_shared::testing::Backend::Sqlite).await;
    let pool = db.database.sqlite.clone().expect("a SQLite pool");
    // Every connection of the pool (8) is open before the queue is.
    let mut warm = Vec::new();
    for _ in 0..8 {
        warm.push(pool.acquire().await.expect("a connection"));
    }
    drop(warm);
    let cfg = oprun_worker::config::QueueConfig::default();
    oprun_worker::queue::Queue::open(&cfg, Some(pool.clone())).await.expect("open the SQLite queue");
    let ack = "EXPLAIN QUERY PLAN WITH j AS (SELECT value ->> 'task_id' AS task_id, value ->> 'status' AS status \
               FROM json_each(?1)) UPDATE Jobs SET status = j.status FROM j WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?2";
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(pool.acquire().await.expect("a connection"));
    }
    for (i, conn) in held.iter_mut().enumerate() {
        // A statement that reads the file first: it is what makes a
        // connection notice another's schema change and reload (an EXPLAIN
        // alone plans with whatever the connection holds).
        sqlx::query("SELECT 1 FROM Jobs LIMIT 0").fetch_all(&mut **conn).await.expect("read Jobs");
        let plan: Vec<String> = sqlx::query(ack)
            .bind("[]")
            .bind("w")
            .fetch_all(&mut **conn)
            .await
            .expect("explain the ack")
            .iter()
            .map(|r| r.get::<String, _>(3))
            .collect();
        assert!(
            plan.iter().any(|step| step.contains("sqlite_autoindex_Jobs_1"))
                && !plan.iter().any(|s| s.contains("LIdx")),
            "connection {i} plans the ack as {plan:?}"
        );
    }
}
