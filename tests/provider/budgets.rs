//! Provider budgets shared by every worker through real Redis: the budget
//! itself (two `Budgets` as two processes would hold them), and two real
//! `oprun worker` processes on Postgres against the local provider: a
//! per-environment limit across both, a 429 that blocks one environment
//! everywhere, a tenant's backlog that does not hold back another, and a
//! Redis restart in the middle of 500 runs.
//!
//! Each test has a Redis database number of its own (tests run in
//! parallel on the one server the test command starts), flushed first.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use oprun_scheduler::DispatchOutcome;
use oprun_shared::RunOutcome;
use oprun_shared::testing::{REDIS_URL_VAR, require_env};
use oprun_worker::budget::{BudgetKey, Budgets, Limits, Take};
use serde_json::json;
use uuid::Uuid;

use crate::common::{self, Env, Reaped, Stack};
use crate::fixture::{self, Fix, provider};

const A: &str = "contoso-prod";
const B: &str = "contoso-dev";

/// Database `db` of the test Redis server, emptied.
async fn redis_db(db: u8) -> String {
    let url = format!("{}/{db}", require_env(REDIS_URL_VAR).trim_end_matches('/'));
    flush(&url).await;
    url
}

async fn flush(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHDB").query_async(&mut c).await.unwrap();
}

fn key(env: &str) -> BudgetKey {
    BudgetKey::new("graph", Some(env))
}

fn limits(concurrency: Option<u32>, per_second: Option<f64>, lease_ms: u64) -> Limits {
    Limits { concurrency, per_second, lease: Duration::from_millis(lease_ms) }
}

/// Take until granted, for `secs` at most.
async fn granted_within(b: &Budgets, k: &BudgetKey, l: &Limits, secs: u64) -> oprun_worker::budget::Permit {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match b.take(k, l).await {
            Take::Granted(p) => return p,
            other if Instant::now() > deadline => panic!("not granted within {secs} s: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Two processes' budgets on one Redis are one budget: permits, blocks,
/// a dead holder's permits coming back with their lease, and the rate.
#[tokio::test]
async fn budgets_on_one_redis_are_one_budget_across_processes() {
    let url = redis_db(1).await;
    let (one, two) = (Budgets::shared(&url).unwrap(), Budgets::shared(&url).unwrap());
    assert!(one.is_shared());
    let l = limits(Some(2), None, 30_000);
    let a1 = granted_within(&one, &key(A), &l, 1).await;
    let _a2 = granted_within(&two, &key(A), &l, 1).await;
    assert!(
        matches!(one.take(&key(A), &l).await, Take::Full { .. }),
        "the third permit, from either process, is refused"
    );
    assert!(matches!(two.take(&key(A), &l).await, Take::Full { .. }));
    assert!(matches!(two.take(&key(B), &l).await, Take::Granted(_)), "another environment has its own budget");
    assert!(two.saturated().contains(&key(A)), "a worker that found the budget full leaves its runs alone a moment");
    drop(a1);
    let _a3 = granted_within(&two, &key(A), &l, 2).await;

    // A block from one process is seen by the other, for its time.
    one.block(&key(B), Duration::from_secs(2)).await;
    match two.take(&key(B), &limits(None, None, 1000)).await {
        Take::Blocked { remaining } => {
            assert!(remaining > Duration::from_millis(1500) && remaining <= Duration::from_secs(2), "{remaining:?}")
        }
        other => panic!("blocked, not {other:?}"),
    }

    // A holder that dies keeps its permits only for their lease.
    let dead = limits(Some(2), None, 300);
    std::mem::forget(granted_within(&one, &key("contoso-dead"), &dead, 1).await);
    std::mem::forget(granted_within(&one, &key("contoso-dead"), &dead, 1).await);
    assert!(matches!(two.take(&key("contoso-dead"), &dead).await, Take::Full { .. }));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(two.take(&key("contoso-dead"), &dead).await, Take::Granted(_)), "the lease expired");

    // A rate of 5/s: a burst of 5 across both processes, then paced.
    let rate = limits(None, Some(5.0), 1000);
    let mut granted = 0;
    for i in 0..5 {
        let b = if i % 2 == 0 { &one } else { &two };
        if matches!(b.take(&key("contoso-rate"), &rate).await, Take::Granted(_)) {
            granted += 1;
        }
    }
    assert_eq!(granted, 5);
    match one.take(&key("contoso-rate"), &rate).await {
        Take::Paced { retry_in } => assert!(retry_in <= Duration::from_millis(200), "{retry_in:?}"),
        other => panic!("paced, not {other:?}"),
    }
}

/// A Redis that does not answer: each process keeps its own budget (the
/// limit still holds within it), quickly, without an error.
#[tokio::test]
async fn without_redis_a_process_keeps_its_own_budget() {
    let b = Budgets::shared("redis://127.0.0.1:1/").unwrap();
    let l = limits(Some(1), None, 30_000);
    let started = Instant::now();
    let p = granted_within(&b, &key(A), &l, 3).await;
    assert!(matches!(b.take(&key(A), &l).await, Take::Full { .. }), "the limit holds in the process");
    drop(p);
    assert!(matches!(b.take(&key(A), &l).await, Take::Granted(_)));
    assert!(started.elapsed() < Duration::from_secs(3), "no wait per request: {:?}", started.elapsed());
    let err = Budgets::shared("redis://[::1").unwrap_err();
    assert!(err.contains("budgets.redis_url"), "{err}");
}

/// Dispatch `n` runs of `test.collect` in `env` (in batches); their ids.
async fn dispatch_n(e: &Env, env: &str, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        for r in e
            .dispatcher
            .dispatch_many((0..k).map(|_| crate::request("test.collect", env, json!({}))).collect())
            .await
            .unwrap()
        {
            match r.unwrap() {
                DispatchOutcome::Dispatched { run, .. } => ids.push(run.id),
                other => panic!("{other:?}"),
            }
        }
        left -= k;
    }
    ids
}

/// `n` `oprun worker` processes on the env's store, each of `concurrency`
/// slots, calling the fixture at `base` with `extra` in `[providers.graph]`
/// and the budgets on `redis`.
struct Workers {
    _procs: Vec<Reaped>,
    _dir: tempfile::TempDir,
}

fn start_workers(e: &Env, fix: &Fix, extra: &str, redis: &str, n: usize, concurrency: usize, name: &str) -> Workers {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("graph.token"), format!("{}\n", fixture::TOKEN)).unwrap();
    let base = fix.base.lock().unwrap().clone();
    let cfg = common::binary_config(e, dir.path(), &base);
    assert!(cfg.contains("[worker]\nconcurrency = 2\n") && cfg.trim_end().ends_with(".token\""), "{cfg}");
    let cfg = cfg.replace("[worker]\nconcurrency = 2\n", &format!("[worker]\nconcurrency = {concurrency}\n"));
    let text = format!("{cfg}{extra}\n[budgets]\nredis_url = \"{redis}\"\n");
    let path = dir.path().join("worker.toml");
    std::fs::write(&path, text).unwrap();
    let procs = (0..n)
        .map(|i| {
            let log = common::process_log(&dir.path().join(format!("w{i}.log")), &format!("budgets-{name}-w{i}"));
            Reaped(common::spawn_oprun("worker", &path, &log, "info"))
        })
        .collect();
    Workers { _procs: procs, _dir: dir }
}

/// A Postgres env, Redis database `db` emptied, and the provider answering
/// one page per run after `delay_ms`.
async fn setup(db: u8, delay_ms: usize) -> (Env, String, fixture::Provider) {
    let e = Env::new(Stack::PostgresRedis).await;
    let redis = redis_db(db).await;
    let p = provider(3, 8).await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(delay_ms, Ordering::SeqCst);
    (e, redis, p)
}

/// Runs completed by environment: (succeeded, completed otherwise).
async fn completed(pool: &sqlx::PgPool) -> HashMap<String, (i64, i64)> {
    let rows: Vec<(Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT environment_id, count(*) FILTER (WHERE outcome = 'succeeded'), \
         count(*) FILTER (WHERE status = 'completed' AND outcome <> 'succeeded') FROM operation_runs GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(e, ok, bad)| (e.unwrap_or_default(), (ok, bad))).collect()
}

/// Wait until `want` runs of each environment succeeded (`secs` at most);
/// fails at once on a run that ended otherwise.
async fn until_succeeded(pool: &sqlx::PgPool, want: &[(&str, i64)], secs: u64) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = completed(pool).await;
        assert!(c.values().all(|(_, bad)| *bad == 0), "a run did not succeed: {c:?}");
        if want.iter().all(|(env, n)| c.get(*env).map_or(0, |(ok, _)| *ok) >= *n) {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "not all succeeded within {secs} s: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The most requests of `env` in flight at once among those that arrived
/// after `from`, from the fixture's (arrival, environment) log and its
/// fixed answer delay.
fn peak_after(fix: &Fix, env: &str, from: Instant) -> usize {
    let delay = Duration::from_millis(fix.delay_ms.load(Ordering::SeqCst) as u64);
    let starts: Vec<Instant> =
        fix.arrivals.lock().unwrap().iter().filter(|(t, e)| e == env && *t >= from).map(|(t, _)| *t).collect();
    // A request is in flight from its arrival for (at least) the delay.
    starts.iter().map(|s| starts.iter().filter(|t| *t <= s && **t + delay > *s).count()).max().unwrap_or(0)
}

/// `concurrency_per_environment = 2` with two worker processes of 8 slots:
/// the provider never sees more than 2 requests at once for one
/// environment, while the other environment runs at its own 2, and both
/// processes did work.
#[tokio::test]
async fn two_workers_share_the_per_environment_limit() {
    let (e, redis, p) = setup(2, 100).await;
    let mut ids = dispatch_n(&e, A, 12).await;
    ids.extend(dispatch_n(&e, B, 12).await);
    let _w = start_workers(&e, &p.fix, "concurrency_per_environment = 2\n", &redis, 2, 8, "limit");
    for id in &ids {
        assert_eq!(e.until_completed(*id, 120).await.outcome, RunOutcome::Succeeded);
    }
    let by_env = p.fix.env_inflight.lock().unwrap().clone();
    for env in [A, B] {
        assert_eq!(by_env.get(env).map(|(_, peak)| *peak), Some(2), "{env}: at most 2 at once: {by_env:?}");
    }
    let peak = p.fix.peak.load(Ordering::SeqCst);
    assert!((3..=4).contains(&peak), "both environments were served side by side: {peak}");
    let pool = sqlx::PgPool::connect(&e.db.url).await.unwrap();
    let (workers,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT actor_id) FROM audit_events WHERE action = 'run.claim'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(workers, 2, "both processes claimed runs");
}

/// A 429 with Retry-After: 5 for environment A: no request for A reaches
/// the provider from either worker until 5 s have passed, B's runs are not
/// slowed, and every run succeeds (A's snoozed, holding no slot).
#[tokio::test]
async fn a_429_blocks_its_environment_for_every_worker_and_no_other() {
    let (e, redis, p) = setup(3, 50).await;
    p.script("/coll/contoso-prod?page=1", vec![(429, vec![("retry-after", "5".into())], "slow down".into())]);
    dispatch_n(&e, A, 6).await;
    dispatch_n(&e, B, 12).await;
    let extra = "concurrency_per_environment = 2\nretry_after_cap = \"1s\"\n";
    let _w = start_workers(&e, &p.fix, extra, &redis, 2, 4, "blocked");
    let pool = sqlx::PgPool::connect(&e.db.url).await.unwrap();
    let b_done = until_succeeded(&pool, &[(B, 12)], 60).await;
    until_succeeded(&pool, &[(A, 6), (B, 12)], 60).await;
    let arrivals = p.fix.arrivals.lock().unwrap().clone();
    let first_a = arrivals.iter().find(|(_, env)| env == A).expect("A was called").0;
    for (t, env) in &arrivals {
        let since = t.saturating_duration_since(first_a);
        if env == A && *t > first_a && since > Duration::from_millis(150) {
            assert!(
                since >= Duration::from_millis(4900),
                "a request for A reached the provider {since:?} after the 429"
            );
        }
    }
    assert!(
        b_done < first_a + Duration::from_secs(5),
        "B's runs all succeeded {:?} after A's 429, within its block",
        b_done - first_a
    );
    let (snoozed,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT run_id) FROM audit_events WHERE action = 'run.snooze' AND reason_code = 'provider.throttled'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(snoozed >= 1, "A's runs waited snoozed, not in a worker slot");
}

/// Tenant A with 2,000 queued runs and a limit of 1, tenant B with 20
/// dispatched after them: B's runs all finish while A's backlog has barely
/// moved, and the provider never sees 2 requests for one environment.
#[tokio::test]
async fn a_tenant_backlog_at_its_limit_does_not_hold_back_another_tenant() {
    let (e, redis, p) = setup(4, 20).await;
    dispatch_n(&e, A, 2000).await;
    dispatch_n(&e, B, 20).await;
    let started = Instant::now();
    let _w = start_workers(&e, &p.fix, "concurrency_per_environment = 1\n", &redis, 2, 4, "backlog");
    let pool = sqlx::PgPool::connect(&e.db.url).await.unwrap();
    let b_done = until_succeeded(&pool, &[(B, 20)], 90).await;
    let c = completed(&pool).await;
    let a_done = c.get(A).map_or(0, |(ok, _)| *ok);
    eprintln!(
        "tenant B's 20 runs succeeded {:?} after the workers started, when {a_done} of A's 2,000 had",
        b_done - started
    );
    assert!(a_done < 200, "B finished before 10 % of A's backlog ran: {a_done} of A's had");
    let by_env = p.fix.env_inflight.lock().unwrap().clone();
    for env in [A, B] {
        assert_eq!(by_env.get(env).map(|(_, peak)| *peak), Some(1), "{env}: one request at a time: {by_env:?}");
    }
}

/// A Redis of the test's own, SIGKILLed and restarted on the same port while
/// 500 runs go through two workers: every run succeeds with one request
/// each, and the limit holds again once Redis is back.
#[tokio::test]
async fn a_redis_restart_loses_nothing_and_the_limits_come_back() {
    let e = Env::new(Stack::PostgresRedis).await;
    require_env(REDIS_URL_VAR);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let start_redis = || {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        Reaped(child)
    };
    let url = format!("redis://127.0.0.1:{port}/");
    let mut server = start_redis();
    for _ in 0..100 {
        if redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = provider(3, 8).await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(60, Ordering::SeqCst);
    dispatch_n(&e, A, 250).await;
    dispatch_n(&e, B, 250).await;
    let _w = start_workers(&e, &p.fix, "concurrency_per_environment = 2\n", &url, 2, 8, "restart");
    let pool = sqlx::PgPool::connect(&e.db.url).await.unwrap();
    until_succeeded(&pool, &[(A, 20), (B, 20)], 60).await;
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _server = start_redis();
    let back = Instant::now();
    until_succeeded(&pool, &[(A, 250), (B, 250)], 120).await;
    let arrivals = p.fix.arrivals.lock().unwrap().clone();
    for env in [A, B] {
        assert_eq!(arrivals.iter().filter(|(_, e)| e == env).count(), 250, "{env}: one request per run");
    }
    let settled = back + Duration::from_secs(2);
    let after: usize = arrivals.iter().filter(|(t, _)| *t >= settled).count();
    assert!(after >= 20, "the test needs requests after Redis came back to judge the limit: {after}");
    for env in [A, B] {
        let peak = peak_after(&p.fix, env, settled);
        assert!(peak <= 2, "{env}: {peak} requests at once 2 s after Redis came back (limit 2)");
    }
}
