//! Load (issue 7): N runs through the production stack (Postgres runs, Redis
//! queue) with two `oprun worker` and two `oprun scheduler` processes, every
//! run doing provider work against a local HTTP fixture that counts each call
//! per run. Afterwards: exactly N completed, none lost, none executed twice,
//! nothing left queued or running, and the schedulers' own ticks (a schedule
//! firing every second on both at once) fired once each and ran once each.
//!
//! The README's test command runs the bounded version (`OPRUN_LOAD_RUNS`,
//! default 2,000); `OPRUN_LOAD_RUNS=100000 scripts/test.sh -E 'test(load)'`
//! runs the full one.

mod common;

use std::collections::HashMap;
use std::path::Path as FsPath;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use common::{Env, Stack};
use oprun_scheduler::DispatchOutcome;
use oprun_shared::{DispatchRequest, Initiator, Scope, SourceSurface};
use serde_json::json;
use sqlx::Row;

const DEFAULT_RUNS: u64 = 2_000;
const DISPATCH_BATCH: u64 = 500;
const WORKER_CONCURRENCY: usize = 64;

/// Every call the fixture received: per load target, and scheduled ticks.
#[derive(Default)]
struct Calls {
    per_target: HashMap<String, u32>,
    ticks: u64,
}

async fn load_call(
    State(calls): State<Arc<Mutex<Calls>>>,
    Path(target): Path<String>,
) -> axum::Json<serde_json::Value> {
    *calls.lock().unwrap().per_target.entry(target).or_default() += 1;
    axum::Json(json!({ "ok": true }))
}

async fn tick_call(State(calls): State<Arc<Mutex<Calls>>>) -> axum::Json<serde_json::Value> {
    calls.lock().unwrap().ticks += 1;
    axum::Json(json!({ "ok": true }))
}

async fn fixture() -> (String, Arc<Mutex<Calls>>) {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let app = axum::Router::new()
        .route("/load/{target}", axum::routing::post(load_call))
        .route("/tick/{environment}", axum::routing::post(tick_call))
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, calls)
}

fn config(e: &Env, dir: &FsPath, base: &str) -> String {
    let token = dir.join("graph.token");
    std::fs::write(&token, common::provider_token("load")).unwrap();
    format!(
        "{catalog}\n[store]\nurl = \"{url}\"\nmax_connections = 16\n\
         [queue]\npoll_interval = \"50ms\"\n\
         [worker]\nconcurrency = {WORKER_CONCURRENCY}\nshutdown_grace = \"5s\"\n\
         [scheduler]\ntick = \"250ms\"\nreconcile_interval = \"2s\"\n[api]\nenabled = false\n[metrics]\nbind = \"127.0.0.1:0\"\n\
         [providers.graph]\nbase_url = \"{base}\"\ntoken_file = \"{token}\"\nconcurrency = 64\n\
         request_timeout = \"10s\"\n\
         [[schedules]]\nname = \"load-tick\"\ncron = \"* * * * * *\"\noperation = \"load.tick\"\n\
         workspace = \"contoso\"\nenvironment = \"contoso-dev\"\nactor = \"svc-scheduler\"\noverlap = \"allow\"\n",
        catalog = common::binary_catalog(),
        url = e.db.url,
        token = token.display(),
    )
}

fn spawn(role: &str, cfg: &FsPath, log: &FsPath) -> Child {
    common::spawn_oprun(role, cfg, log, "info,sqlx=warn")
}

/// Stops every process on drop (a failing assertion must not leave them).
struct Processes(Vec<(String, Child)>);

impl Processes {
    fn check_alive(&mut self, logs: &FsPath) {
        for (name, child) in &mut self.0 {
            if let Some(status) = child.try_wait().unwrap() {
                let text = std::fs::read_to_string(logs).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                panic!(
                    "{name} exited on its own ({status}):\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }

    /// SIGTERM, then wait: each must exit 0 within 20 s (one still running
    /// then is SIGKILLed and fails the test, as does a non-zero exit).
    fn stop(&mut self, logs: &FsPath) {
        for (name, child) in &mut self.0 {
            let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            assert!(sent.is_ok_and(|s| s.success()), "SIGTERM to {name}");
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut failed = Vec::new();
        for (name, child) in &mut self.0 {
            loop {
                match child.try_wait().unwrap() {
                    Some(status) if status.success() => break,
                    Some(status) => {
                        failed.push(format!("{name} exited with {status} after SIGTERM"));
                        break;
                    }
                    None if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failed.push(format!("{name} still running 20 s after SIGTERM (SIGKILLed)"));
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
        if !failed.is_empty() {
            let text = std::fs::read_to_string(logs).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!("{}:\n{}", failed.join("; "), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }

    /// The pid of the process with index `i` (a scheduler's name, which
    /// its ticks record, is `scheduler-HOST-PID-RANDOM`).
    fn pid(&self, i: usize) -> u32 {
        self.0[i].1.id()
    }

    /// SIGSTOP (`pause`) or SIGCONT the process with index `i`.
    fn signal(&self, i: usize, sig: &str) {
        let (name, child) = &self.0[i];
        let sent = Command::new("kill").args([sig, &child.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "{sig} to {name}");
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn load_request(i: u64) -> DispatchRequest {
    DispatchRequest {
        available_at: None,
        operation: "load.call".into(),
        scope: Scope {
            workspace_id: "contoso".into(),
            environment_id: Some("contoso-prod".into()),
            target_type: Some("device".into()),
            target_id: Some(format!("l{i:06}")),
        },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Api,
        context: json!({}),
        params: json!({ "i": i }),
    }
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_of_n_runs_through_two_workers_and_two_schedulers_loses_nothing_and_runs_each_once() {
    let n: u64 = std::env::var("OPRUN_LOAD_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_RUNS);
    assert!(n > 0, "OPRUN_LOAD_RUNS must be at least 1");
    let e = Env::new(Stack::PostgresRedis).await;
    let (base, calls) = fixture().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    let log = common::process_log(&dir.path().join("processes.log"), "load");
    std::fs::write(&cfg, config(&e, dir.path(), &base)).unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&e.db.url).await.unwrap();

    let started = Instant::now();
    let mut schedulers =
        Processes((1..=2).map(|i| (format!("scheduler {i}"), spawn("scheduler", &cfg, &log))).collect());
    let mut workers = Processes((1..=2).map(|i| (format!("worker {i}"), spawn("worker", &cfg, &log))).collect());

    // Dispatch N runs in bulk from two concurrent dispatchers, as an API or
    // a platform job would (each batch: one authorization per scope, one
    // transaction, one push).
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut dispatchers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (d, next) = (e.dispatcher.clone(), next.clone());
        dispatchers.spawn(async move {
            loop {
                let from = next.fetch_add(DISPATCH_BATCH, std::sync::atomic::Ordering::Relaxed);
                if from >= n {
                    return;
                }
                let reqs = (from..(from + DISPATCH_BATCH).min(n)).map(load_request).collect();
                for r in d.dispatch_many(reqs).await.expect("dispatch a batch") {
                    match r.expect("a valid request") {
                        DispatchOutcome::Dispatched { deduplicated: false, push_failed: false, .. } => {}
                        other => panic!("not dispatched: {other:?}"),
                    }
                }
            }
        });
    }
    while let Some(r) = dispatchers.join_next().await {
        r.expect("dispatcher task");
    }
    let dispatched_in = started.elapsed();

    // Wait until every load run is completed (10 minutes at most).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        schedulers.check_alive(&log);
        workers.check_alive(&log);
        let done =
            scalar(&pool, "SELECT count(*) FROM operation_runs WHERE operation = 'load.call' AND status = 'completed'")
                .await;
        if done as u64 == n {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {n} runs completed in 10 minutes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed();
    // Each scheduler in turn is paused (SIGSTOP) until a tick due after the
    // pause has fired: the other one fires it, so both take part whatever
    // the phase of their passes (with the same 250 ms pass period, one of
    // them could otherwise reach every second first).
    for paused in [0, 1] {
        schedulers.signal(paused, "-STOP");
        let from = chrono::Utc::now();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let fired = sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM schedule_ticks WHERE schedule = 'load-tick' AND decision = 'fired' \
                 AND scheduled_for > $1",
            )
            .bind(from)
            .fetch_one(&pool)
            .await
            .unwrap();
            if fired >= 2 {
                break;
            }
            assert!(Instant::now() < deadline, "no tick fired in 20 s while scheduler {} was paused", paused + 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        schedulers.signal(paused, "-CONT");
    }
    let scheduler_pids = [schedulers.pid(0), schedulers.pid(1)];
    // Then stop everything gracefully and let the last tick runs finish first.
    let stop_at = Instant::now();
    schedulers.stop(&log);
    // Tick runs dispatched before the schedulers stopped finish on the workers.
    loop {
        let active = scalar(&pool, "SELECT count(*) FROM operation_runs WHERE status <> 'completed'").await;
        if active == 0 {
            break;
        }
        assert!(stop_at.elapsed() < Duration::from_secs(60), "{active} runs still active after the schedulers stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workers.stop(&log);

    // Exactly N load runs, every one succeeded on its first attempt, with
    // one claim and one completion in its audit trail.
    let rows = sqlx::query(
        "SELECT outcome, attempt, count(*) AS n FROM operation_runs WHERE operation = 'load.call' GROUP BY outcome, attempt",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let by: Vec<(String, i32, i64)> = rows.iter().map(|r| (r.get("outcome"), r.get("attempt"), r.get("n"))).collect();
    assert_eq!(by, vec![("succeeded".to_string(), 1, n as i64)], "load runs by outcome and attempt");
    let claims = scalar(
        &pool,
        "SELECT count(*) FROM audit_events a JOIN operation_runs r ON r.id = a.run_id \
         WHERE r.operation = 'load.call' AND a.action = 'run.claim'",
    )
    .await;
    let completes = scalar(
        &pool,
        "SELECT count(*) FROM audit_events a JOIN operation_runs r ON r.id = a.run_id \
         WHERE r.operation = 'load.call' AND a.action = 'run.complete'",
    )
    .await;
    assert_eq!((claims, completes), (n as i64, n as i64), "one claim and one completion per run");
    let active = scalar(&pool, "SELECT count(*) FROM operation_runs WHERE status <> 'completed'").await;
    assert_eq!(active, 0, "no run left queued or running");

    // The provider saw each run exactly once.
    let (per_target, tick_calls) = {
        let c = calls.lock().unwrap();
        (c.per_target.clone(), c.ticks)
    };
    let twice: Vec<(&String, &u32)> = per_target.iter().filter(|(_, c)| **c != 1).take(10).collect();
    assert!(twice.is_empty(), "runs executed more than once: {twice:?}");
    assert_eq!(per_target.len() as u64, n, "every run executed");
    for i in [0, n / 2, n - 1] {
        assert_eq!(per_target.get(&format!("l{i:06}")), Some(&1), "run l{i:06}");
    }

    // The schedule, evaluated by both schedulers every 250 ms: each second
    // fired once (the primary key makes a second insert impossible; this
    // checks both schedulers took part, no second was left out and nothing
    // was refused), each tick's run ran once.
    let ticks = sqlx::query(
        "SELECT scheduled_for, decision, decided_by, jsonb_array_length(run_ids) AS runs FROM schedule_ticks \
         WHERE schedule = 'load-tick' ORDER BY scheduled_for",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let fired: Vec<_> = ticks.iter().filter(|t| t.get::<String, _>("decision") == "fired").collect();
    let deciders: std::collections::BTreeSet<String> = ticks.iter().map(|t| t.get::<String, _>("decided_by")).collect();
    let other: Vec<String> = ticks.iter().map(|t| t.get::<String, _>("decision")).filter(|d| d != "fired").collect();
    assert!(other.is_empty(), "every tick fired (none skipped or refused): {other:?}");
    for pid in scheduler_pids {
        let mark = format!("-{pid}-");
        assert!(deciders.iter().any(|d| d.contains(&mark)), "scheduler pid {pid} decided no tick: {deciders:?}");
    }
    assert_eq!(deciders.len(), 2, "the two schedulers decided every tick: {deciders:?}");
    let at: Vec<chrono::DateTime<chrono::Utc>> = ticks.iter().map(|t| t.get("scheduled_for")).collect();
    let gaps: Vec<_> = at.windows(2).filter(|w| w[1] - w[0] != chrono::Duration::seconds(1)).take(10).collect();
    assert!(gaps.is_empty(), "every second from {:?} to {:?} has its tick; not after: {gaps:?}", at.first(), at.last());
    assert!(fired.len() >= 2, "the schedule fired during the load ({} ticks)", fired.len());
    assert!(fired.iter().all(|t| t.get::<i32, _>("runs") == 1), "one run per fired tick");
    let tick_runs =
        scalar(&pool, "SELECT count(*) FROM operation_runs WHERE operation = 'load.tick' AND outcome = 'succeeded'")
            .await;
    assert_eq!(tick_runs, fired.len() as i64, "every fired tick's run succeeded");
    assert_eq!(tick_calls, fired.len() as u64, "each tick's provider call made once");

    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!logs.contains("panicked"), "a process panicked");
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).take(10).collect();
    assert!(errors.is_empty(), "error log lines: {errors:?}");
    println!(
        "load: {n} runs, 2 workers × {WORKER_CONCURRENCY} + 2 schedulers: dispatched in {dispatched_in:.2?}, \
         all completed in {wall:.2?} ({:.0} runs/s end to end); {} ticks fired by {deciders:?}; \
         0 lost, 0 executed twice, 0 left active",
        n as f64 / wall.as_secs_f64(),
        fired.len()
    );
}
