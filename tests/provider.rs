//! Provider work against a real local HTTP server (an axum fixture standing in
//! for the provider): paging, throttling, retry classification, redaction,
//! partial success, cancellation, the concurrency limit, and resume after a
//! SIGKILL.

mod common;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Env, Stack};
use oprun_scheduler::DispatchOutcome;
use oprun_shared::config::Config;
use oprun_shared::{DispatchRequest, Initiator, OperationRun, RunOutcome, Scope, SourceSurface};
use oprun_worker::http::Providers;
use serde_json::{Value, json};

/// Carries `common::SECRET_MARK`, like every provider token of the suite.
const TOKEN: &str = "tok-oprun-canary-3f9a1c77e2d84b6fa0c5d2e1b9a4f6c8";

/// A scripted answer: status, headers, body (`$TOKEN` is replaced).
type Answer = (u16, Vec<(&'static str, String)>, String);

#[derive(Default)]
struct Fix {
    /// Scripted answers by request path (FIFO), before the default behaviour.
    script: Mutex<HashMap<String, VecDeque<Answer>>>,
    hits: Mutex<HashMap<String, usize>>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    pages: AtomicUsize,
    fail_every: AtomicUsize,
    delay_ms: AtomicUsize,
    link_header: AtomicUsize,
    base: Mutex<String>,
}

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<usize>,
}

async fn collection(
    State(fix): State<Arc<Fix>>,
    Path(env): Path<String>,
    Query(q): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let page = q.page.unwrap_or(1);
    let key = format!("/coll/{env}?page={page}");
    *fix.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    let now = fix.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    fix.peak.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(fix.delay_ms.load(Ordering::SeqCst) as u64)).await;
    fix.inflight.fetch_sub(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return (StatusCode::UNAUTHORIZED, "no token").into_response();
    }
    let scripted = fix.script.lock().unwrap().get_mut(&key).and_then(VecDeque::pop_front);
    if let Some((status, hdrs, body)) = scripted {
        let mut resp = (StatusCode::from_u16(status).unwrap(), body.replace("$TOKEN", TOKEN)).into_response();
        for (k, v) in hdrs {
            resp.headers_mut().insert(k, v.parse().unwrap());
        }
        return resp;
    }
    let size = 5;
    let fail_every = fix.fail_every.load(Ordering::SeqCst);
    let items: Vec<Value> = (0..size)
        .map(|i| {
            let n = (page - 1) * size + i + 1;
            if fail_every > 0 && n % fail_every == 0 {
                json!({"id": n, "error": {"code": "itemFailed"}})
            } else {
                json!({"id": n})
            }
        })
        .collect();
    let pages = fix.pages.load(Ordering::SeqCst);
    let base = fix.base.lock().unwrap().clone();
    let next = (page < pages).then(|| format!("{base}/coll/{env}?page={}", page + 1));
    if fix.link_header.load(Ordering::SeqCst) == 1 {
        let mut resp = axum::Json(json!({ "value": items })).into_response();
        if let Some(n) = next {
            resp.headers_mut().insert("link", format!("<{n}>; rel=\"next\"").parse().unwrap());
        }
        return resp;
    }
    axum::Json(json!({ "value": items, "@odata.nextLink": next })).into_response()
}

async fn call(State(fix): State<Arc<Fix>>, Path(env): Path<String>, body: String) -> Response {
    *fix.hits.lock().unwrap().entry(format!("/call/{env}")).or_default() += 1;
    let key = format!("/call/{env}");
    if let Some((status, _, b)) = fix.script.lock().unwrap().get_mut(&key).and_then(VecDeque::pop_front) {
        return (StatusCode::from_u16(status).unwrap(), b).into_response();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    axum::Json(json!({ "received": v })).into_response()
}

struct Provider {
    fix: Arc<Fix>,
    providers: Providers,
    _dir: tempfile::TempDir,
}

async fn provider(retry_budget: u32, concurrency: usize) -> Provider {
    let fix = Arc::new(Fix::default());
    fix.pages.store(3, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/coll/{env}", axum::routing::get(collection))
        .route("/call/{env}", axum::routing::post(call))
        .with_state(fix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *fix.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("graph.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config_toml = format!(
        "[providers.graph]\nbase_url = \"{base}\"\ntoken_file = \"{}\"\nretry_budget = {retry_budget}\n\
         retry_after_cap = \"5s\"\nconcurrency = {concurrency}\nrequest_timeout = \"5s\"\n",
        token_file.display()
    );
    let config = Config::from_toml(&format!("{}\n{config_toml}", common::CATALOG), "provider test").unwrap();
    let providers = Providers::from_config(&config).unwrap();
    Provider { fix, providers, _dir: dir }
}

impl Provider {
    fn script(&self, key: &str, answers: Vec<Answer>) {
        self.fix.script.lock().unwrap().insert(key.into(), answers.into());
    }

    fn hits(&self, key: &str) -> usize {
        self.fix.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn dispatch(e: &Env, op: &str, env: &str, params: Value) -> OperationRun {
    let req = DispatchRequest {
        operation: op.into(),
        scope: Scope { workspace_id: "contoso".into(), environment_id: Some(env.into()), ..Scope::default() },
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params,
    };
    match e.dispatcher.dispatch(req).await.unwrap() {
        DispatchOutcome::Dispatched { run, .. } => *run,
        other => panic!("{other:?}"),
    }
}

async fn run_one(e: &Env, p: &Provider, op: &str) -> OperationRun {
    let run = dispatch(e, op, "contoso-prod", json!({"note": "hello"})).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    done
}

async fn a_three_page_collection_succeeds_with_its_counts(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    let c = &done.summary_counts;
    assert_eq!((c.get("total"), c.get("succeeded"), c.get("failed"), c.get("pages")), (15, 15, 0, 3));
    for page in 1..=3 {
        assert_eq!(p.hits(&format!("/coll/contoso-prod?page={page}")), 1);
    }
    // The same with the next link in a Link header.
    p.fix.link_header.store(1, Ordering::SeqCst);
    let e2 = Env::new(stack).await;
    let done = run_one(&e2, &p, "test.collect").await;
    assert_eq!((done.outcome, done.summary_counts.get("pages")), (RunOutcome::Succeeded, 3));
}

async fn transient_failures_are_retried_within_the_budget(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(2, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(429, vec![("retry-after", "1".into())], "slow down".into())]);
    p.script("/coll/contoso-prod?page=2", vec![(503, vec![], "busy".into()), (503, vec![], "busy".into())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    let c = &done.summary_counts;
    assert_eq!((c.get("throttle_waits"), c.get("retries"), c.get("pages")), (1, 3, 3));
    assert!(c.get("throttle_wait_ms") >= 1000, "the Retry-After wait is visible: {c:?}");
    let audit = e.service.audit(done.id).await.unwrap();
    assert!(
        audit.iter().any(|a| a.entry.details["counts_added"]["throttle_waits"] == 1),
        "the wait is in the audit trail too"
    );
    // Beyond the budget: failed provider.unavailable, retryable.
    let e = Env::new(stack).await;
    let p = provider(2, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(503, vec![], "busy".into()); 3]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.unavailable")));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 3, "first try + 2 retries");
    let op = oprun_scheduler::Operator::new(e.dispatcher.clone());
    let detail = op.show("ops-user-1", done.id).await.unwrap();
    assert_eq!(detail.guidance.primary_action.key, "retry", "{:?}", detail.guidance.primary_action);
}

async fn permanent_failures_are_classified_without_retry(stack: Stack) {
    for (status, outcome, code) in [
        (403, RunOutcome::Blocked, "provider.permission_missing"),
        (401, RunOutcome::Failed, "provider.auth_failed"),
        (404, RunOutcome::Failed, "provider.not_found"),
        (409, RunOutcome::Failed, "provider.conflict"),
        (418, RunOutcome::Failed, "provider.bad_response"),
    ] {
        let e = Env::new(stack).await;
        let p = provider(3, 4).await;
        p.script("/coll/contoso-prod?page=1", vec![(status, vec![], "{\"error\": \"nope\"}".into())]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!((done.outcome, done.reason_code.as_deref()), (outcome, Some(code)), "{status}");
        assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "{status} is not retried");
    }
    // An unparsable page.
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.script("/coll/contoso-prod?page=1", vec![(200, vec![], "<html>not json</html>".into())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.bad_response"));
}

async fn an_echoed_token_reaches_no_table_and_no_log_line(stack: Stack) {
    let logs = common::capture_logs();
    let e = Env::new(stack).await;
    let p = provider(1, 4).await;
    let echo = "invalid request: Authorization: Bearer $TOKEN (token=$TOKEN) raw $TOKEN".to_string();
    p.script("/coll/contoso-prod?page=1", vec![(400, vec![], echo.clone())]);
    p.script("/coll/contoso-dev?page=1", vec![(503, vec![], echo.clone()), (503, vec![], echo)]);
    let a = run_one(&e, &p, "test.collect").await;
    let b = dispatch(&e, "test.collect", "contoso-dev", json!({})).await;
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let b = e.until_completed(b.id, 60).await;
    worker.stop().await;
    assert_eq!(a.reason_code.as_deref(), Some("provider.bad_response"));
    assert_eq!(b.reason_code.as_deref(), Some("provider.unavailable"));
    assert!(
        a.failure_summary[0].message.contains("invalid request"),
        "a redacted excerpt is kept: {:?}",
        a.failure_summary
    );
    let dump = common::dump_tables(&e).await;
    assert!(dump.len() > 1000, "the dump has the rows");
    assert!(!dump.contains(TOKEN), "the token is in a table");
    let logged = logs.lock().unwrap().clone();
    assert!(!logged.is_empty() && logged.contains("provider"), "logs were captured");
    assert!(!logged.contains(TOKEN), "the token is in a log line");
}

async fn items_marked_failed_make_the_run_partially_succeeded(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.fail_every.store(4, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::PartiallySucceeded);
    assert_eq!((done.summary_counts.get("failed"), done.summary_counts.get("succeeded")), (3, 12));
}

async fn a_cancel_request_stops_a_slow_collection_at_a_page_boundary(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.pages.store(30, Ordering::SeqCst);
    p.fix.delay_ms.store(150, Ordering::SeqCst);
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e.service.get(run.id).await.unwrap().summary_counts.get("pages") < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.service.cancel(run.id, &Initiator::user("ops-user-1")).await.unwrap();
    let done = e.until_completed(run.id, 30).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Cancelled);
    let pages = done.summary_counts.get("pages");
    assert!((2..30).contains(&pages), "{pages}");
    assert_eq!(done.summary_counts.get("total"), pages * 5, "whole pages only");
}

async fn the_provider_concurrency_limit_holds_under_fifty_runs(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 3).await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(40, Ordering::SeqCst);
    let mut ids = vec![];
    for _ in 0..50 {
        ids.push(dispatch(&e, "test.collect", "contoso-prod", json!({})).await.id);
    }
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for id in &ids {
        assert_eq!(e.until_completed(*id, 120).await.outcome, RunOutcome::Succeeded);
    }
    worker.stop().await;
    let peak = p.fix.peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "peak of {peak} concurrent requests exceeds the limit of 3");
    assert!(peak >= 2, "runs did overlap (peak {peak})");
}

async fn http_call_sends_the_params_and_classifies_the_answer(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let done = run_one(&e, &p, "test.call").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!(p.hits("/call/contoso-prod"), 1);
    p.script("/call/contoso-prod", vec![(409, vec![], "version mismatch".into())]);
    let e = Env::new(stack).await;
    let done = run_one(&e, &p, "test.call").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.conflict"));
}

async fn a_killed_worker_resumes_the_collection_from_its_checkpoint(stack: Stack) {
    use std::process::{Command, Stdio};
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.pages.store(5, Ordering::SeqCst);
    p.fix.delay_ms.store(400, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("oprun.toml");
    let base = p.fix.base.lock().unwrap().clone();
    std::fs::copy(p._dir.path().join("graph.token"), dir.path().join("graph.token")).unwrap();
    std::fs::write(&cfg, common::binary_config(&e, dir.path(), &base)).unwrap();
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_oprun"))
        .args(["--config", cfg.to_str().unwrap(), "worker"])
        .env_remove("OPRUN_DATABASE_URL")
        .env_remove("OPRUN_QUEUE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while e.service.get(run.id).await.unwrap().summary_counts.get("pages") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the worker process never got to page 2");
        assert!(child.try_wait().unwrap().is_none(), "the worker process exited early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    common::reconcile_later(&e, 20 + 10 + 1).await;
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 5, 25));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "page 1 was not fetched again");
    assert_eq!(p.hits("/coll/contoso-prod?page=2"), 1, "page 2 was not fetched again");
}

/// A worker that fetched and checkpointed the last page, then died before
/// completing: the requeued attempt completes from the `done` checkpoint
/// with the counts already recorded, and fetches nothing again.
async fn a_requeued_collection_whose_last_page_was_checkpointed_fetches_nothing_again(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    // What the first worker wrote before it died: a claim and one progress
    // write per page (the last with the `done` checkpoint), no completion.
    let claimed = e.service.claim(run.id, "dead-worker").await.unwrap();
    let lease = oprun_shared::Lease::of(&claimed).unwrap();
    let base = p.fix.base.lock().unwrap().clone();
    for page in 1..=3u32 {
        let mut counts = oprun_shared::SummaryCounts::new();
        for (k, v) in [("total", 5), ("processed", 5), ("succeeded", 5), ("failed", 0), ("pages", 1)] {
            counts.add(k, v).unwrap();
        }
        let checkpoint = if page < 3 {
            json!({ "next": format!("{base}/coll/contoso-prod?page={}", page + 1) })
        } else {
            json!({ "next": null, "done": true })
        };
        e.service.progress(&lease, "test.collect", counts, Some(checkpoint)).await.unwrap();
    }
    let report = common::reconcile_later(&e, 20 + 10 + 1).await;
    assert_eq!(report.count(oprun_shared::ReconcileKind::Requeued), 1, "{report:?}");
    let worker = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 3, 15));
    for page in 1..=3 {
        assert_eq!(p.hits(&format!("/coll/contoso-prod?page={page}")), 0, "page {page} was fetched again");
    }
}

both_stacks!(
    a_requeued_collection_whose_last_page_was_checkpointed_fetches_nothing_again,
    a_three_page_collection_succeeds_with_its_counts,
    transient_failures_are_retried_within_the_budget,
    permanent_failures_are_classified_without_retry,
    an_echoed_token_reaches_no_table_and_no_log_line,
    items_marked_failed_make_the_run_partially_succeeded,
    a_cancel_request_stops_a_slow_collection_at_a_page_boundary,
    the_provider_concurrency_limit_holds_under_fifty_runs,
    http_call_sends_the_params_and_classifies_the_answer,
    a_killed_worker_resumes_the_collection_from_its_checkpoint,
);
