//! Fault 1, the SIGKILL campaign: `oprun worker` processes killed at random points
//! (and with a run held in each running state) while they page through a
//! local provider; no run is lost and no checkpointed page is fetched again.

use std::collections::{BTreeMap, HashMap};
use std::path::Path as FsPath;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oprun_shared::{ReconcileKind, RunOutcome, RunStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use super::kills::{AtKill, KILL_STATES, RunReport, at_kill, end_statements_waiting_on, hold_a_run_in};
use super::{Lcg, audit_trail, count_action, dispatch, request, runs, seed};
use crate::common;
use crate::common::{Env, Stack};

/// Runs in the campaign: `OPRUN_FAULTS_RUNS` (the longer variant), else 300.
fn campaign_runs() -> usize {
    std::env::var("OPRUN_FAULTS_RUNS").ok().and_then(|s| s.parse().ok()).filter(|n| *n > 0).unwrap_or(300)
}

const CAMPAIGN_PAGE_SIZE: usize = 2;

const CAMPAIGN_CONCURRENCY: usize = 4;

/// At most this many kills; then a last worker is left to finish (max_attempts is 50).
const CAMPAIGN_MAX_KILLS: usize = 40;

/// 240 s for the default 300 runs, more for a longer campaign.
fn campaign_deadline(runs: usize) -> Duration {
    Duration::from_secs(240.max(runs as u64 * 4 / 5))
}

/// The provider fixture of the campaign: one paged collection per run
/// (`/campaign/{environment}/{target}`), 3–5 pages each, a 10–30 ms delay per
/// page, and a log of every page fetch per collection, in arrival order.
#[derive(Default)]
struct Campaign {
    /// Pages per target.
    pages: Mutex<HashMap<String, u32>>,
    /// Pages fetched per target, in the order the requests arrived.
    fetches: Mutex<HashMap<String, Vec<u32>>>,
    base: Mutex<String>,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<u32>,
}

fn page_delay(target: &str, page: u32) -> Duration {
    let h = target.bytes().fold(u64::from(page) * 7919, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    Duration::from_millis(10 + h % 21)
}

async fn campaign_page(
    State(fix): State<Arc<Campaign>>,
    Path((env, target)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let page = q.page.unwrap_or(1);
    let Some(pages) = fix.pages.lock().unwrap().get(&target).copied() else {
        return (StatusCode::NOT_FOUND, "no such collection").into_response();
    };
    // A fetch counts when the request arrives, whether or not its answer is read.
    fix.fetches.lock().unwrap().entry(target.clone()).or_default().push(page);
    tokio::time::sleep(page_delay(&target, page)).await;
    let items: Vec<Value> = (0..CAMPAIGN_PAGE_SIZE).map(|i| json!({ "id": format!("{target}-{page}-{i}") })).collect();
    let base = fix.base.lock().unwrap().clone();
    let next = (page < pages).then(|| format!("{base}/campaign/{env}/{target}?page={}", page + 1));
    axum::Json(json!({ "value": items, "@odata.nextLink": next })).into_response()
}

async fn campaign_fixture() -> Arc<Campaign> {
    let fix = Arc::new(Campaign::default());
    let app = axum::Router::new()
        .route("/campaign/{env}/{target}", axum::routing::get(campaign_page))
        .with_state(fix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *fix.base.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    fix
}

/// The binary's config: this env's store (its queue), more worker slots
/// than `binary_config`'s 2, and the fixture as the `graph` provider. A
/// killed worker holds only runs it claimed (it claims only for free slots),
/// which the reconciler requeues once their leases expire.
fn campaign_config(e: &Env, dir: &FsPath, base: &str) -> String {
    let token = dir.join("graph.token");
    std::fs::write(&token, common::provider_token("campaign")).unwrap();
    format!(
        "{catalog}\n[store]\nurl = \"{url}\"\nmax_connections = 8\n\
         [queue]\npoll_interval = \"50ms\"\n\
         [worker]\nconcurrency = {CAMPAIGN_CONCURRENCY}\nshutdown_grace = \"1s\"\n[api]\nenabled = false\n[metrics]\nbind = \"127.0.0.1:0\"\n\
         [providers.graph]\nbase_url = \"{base}\"\ntoken_file = \"{token}\"\nconcurrency = 32\n\
         request_timeout = \"10s\"\n",
        catalog = common::binary_catalog(),
        url = e.db.url,
        token = token.display(),
    )
}

fn spawn_worker(cfg: &FsPath, log: &FsPath) -> Child {
    common::spawn_oprun("worker", cfg, log, "warn")
}

fn log_tail(log: &FsPath) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_campaign_at_random_points_loses_no_run_and_refetches_no_checkpointed_page() {
    let started = Instant::now();
    let seed = seed();
    println!("campaign seed {seed} (rerun with OPRUN_FAULTS_SEED={seed})");
    let mut rng = Lcg::new(seed);
    let e = Env::new(Stack::PostgresRedis).await;
    let fix = campaign_fixture().await;
    let base = fix.base.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    let log = common::process_log(&dir.path().join("worker.log"), "campaign-workers");
    std::fs::write(&cfg, campaign_config(&e, dir.path(), &base)).unwrap();

    // 300 runs (OPRUN_FAULTS_RUNS), each on its own collection of 3–5 pages.
    let campaign_runs = campaign_runs();
    let mut ids = Vec::with_capacity(campaign_runs);
    let mut target_of: HashMap<Uuid, (String, u32)> = HashMap::new();
    for i in 0..campaign_runs {
        let target = format!("r{i:03}");
        let pages = 3 + (i % 3) as u32;
        fix.pages.lock().unwrap().insert(target.clone(), pages);
        let run = dispatch(&e, request("test.collect_campaign", "contoso-prod", Some(&target), json!({}))).await;
        ids.push(run.id);
        target_of.insert(run.id, (target, pages));
    }
    println!("dispatched {campaign_runs} runs in {:?}", started.elapsed());

    // Kill loop: start a worker, let it work 150–900 ms, SIGKILL it, note
    // where every run stood, reconcile as on-call past lease + grace (only
    // now, with no worker alive, so no live lease is taken away). While a
    // running state of KILL_STATES has not been seen at a kill yet, the kill
    // waits (up to 2 s) until a run is in it and holds that run's row over
    // the kill.
    let deadline = started + campaign_deadline(campaign_runs);
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(3).connect(&e.db.url).await.unwrap();
    let mut kills = 0usize;
    let mut states: BTreeMap<AtKill, usize> = BTreeMap::new();
    let mut requeued = 0usize;
    let mut kill_times = Vec::new();
    loop {
        let now = runs(&e, &ids).await;
        if now.iter().all(|r| r.status == RunStatus::Completed) || kills >= CAMPAIGN_MAX_KILLS {
            break;
        }
        assert!(Instant::now() < deadline, "campaign deadline passed after {kills} kills");
        let mut child = spawn_worker(&cfg, &log);
        let work = rng.range(150, 900);
        kill_times.push(work);
        tokio::time::sleep(Duration::from_millis(work)).await;
        let unseen: Vec<AtKill> =
            KILL_STATES.into_iter().filter(|k| *k != AtKill::Queued && !states.contains_key(k)).collect();
        let held = if unseen.is_empty() {
            None
        } else {
            hold_a_run_in(&pool, &unseen, Instant::now() + Duration::from_secs(2)).await
        };
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker process exited on its own ({status}):\n{}", log_tail(&log));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        // Let Postgres finish a statement the killed process had in flight
        // (a later read can only show more progress than the kill saw,
        // which only widens the allowance below, never narrows it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = match held {
            Some((mut tx, state, id)) => {
                let holder: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *tx).await.unwrap();
                end_statements_waiting_on(&pool, holder).await;
                Some((tx, state, id))
            }
            None => None,
        };
        let mut this_kill: BTreeMap<AtKill, usize> = BTreeMap::new();
        for run in runs(&e, &ids).await {
            if let Some((_, state, id)) = &held
                && run.id == *id
            {
                assert_eq!(at_kill(&run), *state, "the held run is still where it was held: {run:?}");
            }
            *this_kill.entry(at_kill(&run)).or_default() += 1;
        }
        if let Some((tx, state, _)) = held {
            tx.rollback().await.unwrap();
            println!("kill {kills}: a run was held {state:?} over it");
        }
        println!("kill {kills} after {work} ms: {this_kill:?}");
        for (state, n) in this_kill {
            *states.entry(state).or_default() += n;
        }
        let report = common::reconcile_later(&e, 20 + 10 + 1).await;
        assert_eq!(report.lost_races, 0, "{report:?}");
        assert!(
            report.actions.iter().all(|a| a.kind == ReconcileKind::Requeued),
            "only requeues expected: {:?}",
            report.actions
        );
        requeued += report.count(ReconcileKind::Requeued);
    }
    let kill_phase = started.elapsed();
    let missed: Vec<AtKill> = KILL_STATES.into_iter().filter(|k| !states.contains_key(k)).collect();
    assert!(missed.is_empty(), "no kill found a run {missed:?} (seed {seed}); runs per state at the kills: {states:?}");

    // A last worker, never killed, finishes what is left (its queue
    // heartbeat also hands back jobs the killed workers had fetched).
    let mut last = spawn_worker(&cfg, &log);
    let finished = loop {
        let now = runs(&e, &ids).await;
        if now.iter().all(|r| r.status == RunStatus::Completed) {
            break now;
        }
        if let Some(status) = last.try_wait().unwrap() {
            panic!("the last worker exited on its own ({status}):\n{}", log_tail(&log));
        }
        if Instant::now() >= deadline {
            let _ = last.kill();
            let _ = last.wait();
            let stuck: Vec<String> = now
                .iter()
                .filter(|r| r.status != RunStatus::Completed)
                .map(|r| format!("{} {} attempt {} checkpoint {:?}", r.id, r.status, r.attempt, r.checkpoint))
                .collect();
            panic!("{} runs not completed by the deadline:\n{}\n{}", stuck.len(), stuck.join("\n"), log_tail(&log));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    last.kill().unwrap();
    last.wait().unwrap();
    let worker_log = std::fs::read_to_string(&log).unwrap_or_default();
    let warnings = worker_log.lines().filter(|l| l.contains("WARN")).count();
    let errors = worker_log.lines().filter(|l| l.contains("ERROR")).count();
    assert!(!worker_log.contains("panicked"), "a worker panicked:\n{}", log_tail(&log));

    // Gather what each run went through.
    let fetch_logs = fix.fetches.lock().unwrap().clone();
    let mut reports = Vec::with_capacity(ids.len());
    for run in &finished {
        let (target, pages) = target_of[&run.id].clone();
        let trail = audit_trail(&e, run.id).await;
        let mut checkpointed_per_attempt = Vec::new();
        for (action, _) in &trail {
            match action.as_str() {
                "run.claim" => checkpointed_per_attempt.push(0),
                "run.progress" => *checkpointed_per_attempt.last_mut().expect("progress before any claim") += 1,
                _ => {}
            }
        }
        let fetch_log = fetch_logs.get(&target).cloned().unwrap_or_default();
        let mut fetches = BTreeMap::new();
        for p in &fetch_log {
            *fetches.entry(*p).or_default() += 1;
        }
        reports.push((
            run,
            RunReport {
                target,
                pages,
                checkpointed_per_attempt,
                fetches,
                fetch_log,
                completes: count_action(&trail, "run.complete"),
            },
        ));
    }

    let total_fetches: usize = reports.iter().map(|(_, r)| r.fetch_log.len()).sum();
    let total_pages: u32 = reports.iter().map(|(_, r)| r.pages).sum();
    let refetches = total_fetches - total_pages as usize;
    let resumed = finished.iter().filter(|r| r.attempt > 1).count();
    let max_attempt = finished.iter().map(|r| r.attempt).max().unwrap_or(0);
    println!("seed {seed}: {kills} kills after {kill_times:?} ms of work each");
    println!("runs per state at the kills (summed over kills): {states:?}");
    println!(
        "requeued by the reconciler: {requeued}; runs resumed (attempt > 1): {resumed}; highest attempt: {max_attempt}"
    );
    println!(
        "page fetches: {total_fetches} for {total_pages} pages ({refetches} refetches); worker log: {warnings} warnings, \
         {errors} errors; kill phase {kill_phase:?}, total {:?}",
        started.elapsed()
    );

    let mut bad = Vec::new();
    for (run, report) in &reports {
        let mut v = report.violations();
        if run.outcome != RunOutcome::Succeeded {
            v.push(format!("outcome {} ({:?})", run.outcome, run.reason_code));
        }
        if run.summary_counts.get("pages") != u64::from(report.pages)
            || run.summary_counts.get("total") != u64::from(report.pages) * CAMPAIGN_PAGE_SIZE as u64
        {
            v.push(format!("counts {:?} for {} pages", run.summary_counts, report.pages));
        }
        if !v.is_empty() {
            bad.push(format!(
                "{} ({}, {} pages, attempt {}, checkpointed per attempt {:?}, fetch log {:?}): {}",
                run.id,
                report.target,
                report.pages,
                run.attempt,
                report.checkpointed_per_attempt,
                report.fetch_log,
                v.join("; ")
            ));
        }
    }
    assert!(bad.is_empty(), "{} of {} runs broke a promise:\n{}", bad.len(), reports.len(), bad.join("\n"));
    assert!(kills >= 5, "the campaign killed only {kills} workers");
}
