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
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use common::{Env, Stack};
use oprun::config::Config;
use oprun_scheduler::DispatchOutcome;
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
    /// How the next link is written: [`NEXT_ABSOLUTE`] (default) and the others.
    next_style: AtomicUsize,
    /// Every request the server saw, `METHOD path?query`, in order.
    seen: Mutex<Vec<String>>,
    /// A delay for the first hit of a key only (ms).
    stall_once: Mutex<HashMap<String, u64>>,
    base: Mutex<String>,
    /// The JSON bodies `POST /call/…` received, in order.
    call_bodies: Mutex<Vec<Value>>,
    /// Requests in flight and the most seen at once, by environment (the
    /// path's `{env}` segment).
    env_inflight: Mutex<HashMap<String, (usize, usize)>>,
}

/// The next link is an absolute URL on the server's origin.
const NEXT_ABSOLUTE: usize = 0;
/// The next link is an absolute-path reference (`/v1.0/coll/x?page=2`).
const NEXT_ABSOLUTE_PATH: usize = 1;
/// The next link is signed: the provider token, a SAS `sig` and an AWS
/// signature ride in its query, beside a paging cursor.
const NEXT_SIGNED: usize = 2;
/// The next link points to another origin (`localhost` instead of `127.0.0.1`).
const NEXT_OTHER_ORIGIN: usize = 3;

/// The SAS signature and AWS signature a signed next link carries.
const SIG: &str = "sv-sas-signature-value-3Fq9";
const AMZ_SIG: &str = "aws-signature-value-7c1e";

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<usize>,
}

async fn collection(State(fix): State<Arc<Fix>>, Query(q): Query<PageQuery>, uri: Uri, headers: HeaderMap) -> Response {
    fix.seen.lock().unwrap().push(format!("GET {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
    let page = q.page.unwrap_or(1);
    let path = uri.path().to_string();
    let key = format!("{path}?page={page}");
    *fix.hits.lock().unwrap().entry(key.clone()).or_default() += 1;
    let now = fix.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    fix.peak.fetch_max(now, Ordering::SeqCst);
    let env = path.rsplit('/').next().unwrap_or_default().to_string();
    {
        let mut by_env = fix.env_inflight.lock().unwrap();
        let (current, peak) = by_env.entry(env.clone()).or_default();
        *current += 1;
        *peak = (*peak).max(*current);
    }
    let stall = fix.stall_once.lock().unwrap().remove(&key).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(fix.delay_ms.load(Ordering::SeqCst) as u64 + stall)).await;
    fix.inflight.fetch_sub(1, Ordering::SeqCst);
    fix.env_inflight.lock().unwrap().get_mut(&env).expect("counted above").0 -= 1;
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
    let n = page + 1;
    let next = (page < pages).then(|| match fix.next_style.load(Ordering::SeqCst) {
        NEXT_ABSOLUTE_PATH => format!("{path}?page={n}"),
        NEXT_SIGNED => format!(
            "{base}{path}?page={n}&access_token={TOKEN}&sig={SIG}&X-Amz-Signature={AMZ_SIG}&$skiptoken=cursor-{n}"
        ),
        NEXT_OTHER_ORIGIN => format!("{}{path}?page={n}", base.replace("127.0.0.1", "localhost")),
        NEXT_ABSOLUTE => format!("{base}{path}?page={n}"),
        other => panic!("unknown next style {other}"),
    });
    if fix.link_header.load(Ordering::SeqCst) == 1 {
        let mut resp = axum::Json(json!({ "value": items })).into_response();
        if let Some(n) = next {
            resp.headers_mut().insert("link", format!("<{n}>; rel=\"next\"").parse().unwrap());
        }
        return resp;
    }
    axum::Json(json!({ "value": items, "@odata.nextLink": next })).into_response()
}

/// Any other request: recorded, 404.
async fn elsewhere(State(fix): State<Arc<Fix>>, method: axum::http::Method, uri: Uri) -> Response {
    fix.seen.lock().unwrap().push(format!("{method} {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
    (StatusCode::NOT_FOUND, "no such route").into_response()
}

async fn call(State(fix): State<Arc<Fix>>, Path(env): Path<String>, uri: Uri, body: String) -> Response {
    fix.seen.lock().unwrap().push(format!("POST {}", uri.path()));
    *fix.hits.lock().unwrap().entry(format!("/call/{env}")).or_default() += 1;
    let key = format!("/call/{env}");
    fix.call_bodies.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
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
    provider_with(retry_budget, concurrency, "", "").await
}

/// The fixture with the provider's `base_url` at `base_path` under the
/// server, and `extra` lines in its `[providers.graph]` table.
async fn provider_with(retry_budget: u32, concurrency: usize, base_path: &str, extra: &str) -> Provider {
    let fix = Arc::new(Fix::default());
    fix.pages.store(3, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/coll/{env}", axum::routing::get(collection))
        .route("/v1.0/coll/{env}", axum::routing::get(collection))
        .route("/call/{env}", axum::routing::post(call))
        .fallback(elsewhere)
        .with_state(fix.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    *fix.base.lock().unwrap() = base.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (providers, dir) = providers_at(&format!("{base}{base_path}"), retry_budget, concurrency, extra);
    Provider { fix, providers, _dir: dir }
}

/// The `graph` provider at `base_url`, its token in a file of the returned directory.
fn providers_at(base_url: &str, retry_budget: u32, concurrency: usize, extra: &str) -> (Providers, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("graph.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // `extra` may set its own request_timeout.
    let timeout = if extra.contains("request_timeout") { "" } else { "request_timeout = \"5s\"\n" };
    let config_toml = format!(
        "[providers.graph]\nbase_url = \"{base_url}\"\ntoken_file = \"{}\"\nretry_budget = {retry_budget}\n\
         retry_after_cap = \"5s\"\nconcurrency = {concurrency}\n{timeout}{extra}\n",
        token_file.display()
    );
    let config = Config::from_toml(&format!("{}\n{config_toml}", common::CATALOG), "provider test").unwrap();
    (Providers::from_config(&config.providers, config.dir()).unwrap(), dir)
}

impl Provider {
    fn script(&self, key: &str, answers: Vec<Answer>) {
        self.fix.script.lock().unwrap().insert(key.into(), answers.into());
    }

    fn hits(&self, key: &str) -> usize {
        self.fix.hits.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn seen(&self) -> Vec<String> {
        self.fix.seen.lock().unwrap().clone()
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
    let detail = op.reads().show("ops-user-1", done.id).await.unwrap();
    assert_eq!(detail.guidance.primary_action.key, "retry", "{:?}", detail.guidance.primary_action);
}

async fn permanent_failures_are_classified_without_retry(stack: Stack) {
    for (status, outcome, code) in [
        (403, RunOutcome::Blocked, "provider.permission_missing"),
        (401, RunOutcome::Failed, "provider.auth_failed"),
        (404, RunOutcome::Failed, "provider.not_found"),
        (409, RunOutcome::Failed, "provider.conflict"),
        (412, RunOutcome::Failed, "provider.conflict"),
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
    assert_eq!(done.params, json!({"note": "hello"}), "{done:?}");
    assert_eq!(
        *p.fix.call_bodies.lock().unwrap(),
        std::slice::from_ref(&done.params),
        "the provider received the run's params"
    );
    p.script("/call/contoso-prod", vec![(409, vec![], "version mismatch".into())]);
    let e = Env::new(stack).await;
    let done = run_one(&e, &p, "test.call").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.conflict"));
    assert_eq!(p.fix.call_bodies.lock().unwrap().len(), 2);
    assert_eq!(p.fix.call_bodies.lock().unwrap()[1], done.params, "the refused call carried the params too");
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

async fn dispatch_scope(e: &Env, op: &str, scope: Scope) -> OperationRun {
    let req = DispatchRequest {
        operation: op.into(),
        scope,
        initiator: Initiator::user("ops-user-1"),
        source: SourceSurface::Cli,
        context: json!({}),
        params: json!({}),
    };
    match e.dispatcher.dispatch(req).await.unwrap() {
        DispatchOutcome::Dispatched { run, .. } => *run,
        other => panic!("{other:?}"),
    }
}

/// `{target_id}` = `..` would turn `/load/{target_id}` into `/` (URL parsing
/// resolves dot segments): refused, non-retryable, before any request.
async fn a_dot_segment_id_is_refused_before_any_request(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let mut ids = vec![];
    for target in ["..", "."] {
        let scope = Scope {
            workspace_id: "contoso".into(),
            environment_id: Some("contoso-prod".into()),
            target_type: Some("device".into()),
            target_id: Some(target.into()),
        };
        ids.push(dispatch_scope(&e, "load.call", scope).await.id);
    }
    let worker = e.start_worker(e.http_runner("w1", &p.providers));
    for id in ids {
        let done = e.until_completed(id, 60).await;
        assert_eq!(
            (done.outcome, done.reason_code.as_deref()),
            (RunOutcome::Failed, Some("run.payload_invalid")),
            "{done:?}"
        );
        let message = &done.failure_summary[0].message;
        assert!(message.contains("{target_id}") && message.contains("request path"), "{message}");
    }
    worker.stop().await;
    assert_eq!(p.seen(), Vec::<String>::new(), "no request reached the provider");
}

/// A provider that answers 200 and then streams `{"value": [` and spaces
/// (64 KiB every 5 ms, for 30 s) without a Content-Length; counts requests.
async fn endless_body_server() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nb\r\n{\"value\": [\r\n";
                if sock.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                let until = tokio::time::Instant::now() + Duration::from_secs(30);
                while tokio::time::Instant::now() < until {
                    if sock.write_all(chunk.as_bytes()).await.is_err() {
                        return; // the client stopped reading
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    (base, hits)
}

/// A body is read in pieces up to the provider's `max_response_bytes`: an
/// endless one ends the run `provider.bad_response` once the cap is passed
/// (not at the request timeout, not after buffering it all), and a
/// Content-Length over the cap is refused before the body is read.
async fn an_oversized_response_body_is_a_bad_response(stack: Stack) {
    // The default cap, against a body that never ends.
    let e = Env::new(stack).await;
    let (base, hits) = endless_body_server().await;
    let (providers, _dir) = providers_at(&base, 0, 4, "");
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let worker = e.start_worker(e.http_runner("w1", &providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.bad_response")),
        "{done:?}"
    );
    let message = &done.failure_summary[0].message;
    assert!(message.contains("max_response_bytes") && message.contains("8388608"), "{message}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "an oversized body is not retried");
    // A configured cap, and a Content-Length that announces more.
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "", "max_response_bytes = 4096").await;
    let big = json!({ "value": (0..1000).map(|i| json!({ "id": i })).collect::<Vec<_>>() }).to_string();
    assert!(big.len() > 4096);
    p.script("/coll/contoso-prod?page=1", vec![(200, vec![], big)]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.bad_response")),
        "{done:?}"
    );
    let message = &done.failure_summary[0].message;
    assert!(message.contains("Content-Length") && message.contains("max_response_bytes (4096"), "{message}");
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1);
    // Under the cap, a page is read as before.
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "", "max_response_bytes = 4096").await;
    assert_eq!(run_one(&e, &p, "test.collect").await.outcome, RunOutcome::Succeeded);
}

/// Next links that carry the provider token, a SAS `sig` and an AWS
/// signature: the attempt follows them as sent, the checkpoint keeps them
/// without those (the cursor stays), and a requeued attempt resumes from the
/// cleaned link.
async fn signed_next_links_are_checkpointed_without_their_secrets_and_still_resume(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    p.fix.next_style.store(NEXT_SIGNED, Ordering::SeqCst);
    p.fix.stall_once.lock().unwrap().insert("/coll/contoso-prod?page=2".into(), 1500);
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let w1 = e.start_worker(e.http_runner("w1", &p.providers));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let stored = loop {
        let r = e.service.get(run.id).await.unwrap();
        if r.summary_counts.get("pages") == 1 {
            break r.checkpoint.expect("page 1 stored a checkpoint");
        }
        assert!(tokio::time::Instant::now() < deadline, "page 1 was never checkpointed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let next = stored["next"].as_str().unwrap_or_else(|| panic!("{stored}"));
    for secret in [TOKEN, SIG, AMZ_SIG, "access_token", "sig=", "X-Amz-Signature"] {
        assert!(!next.contains(secret), "'{secret}' is in the stored next link {next}");
    }
    assert!(next.contains("/coll/contoso-prod?page=2") && next.contains("$skiptoken=cursor-2"), "{next}");
    // The attempt is superseded while page 2 is in flight (no job pushed yet):
    // its next write is refused and it ends.
    let later = Arc::new(oprun_shared::ManualClock::new(
        oprun_shared::Clock::now(&oprun_shared::SystemClock) + chrono::Duration::seconds(31),
    ));
    let report = Env::service_with(e.db.store.clone(), later)
        .reconcile(&Initiator::user("oncall-1"), &oprun_shared::ReconcileFilter::default(), false)
        .await
        .unwrap();
    assert_eq!(report.count(oprun_shared::ReconcileKind::Requeued), 1, "{report:?}");
    w1.stop().await;
    let first = p.seen().into_iter().find(|s| s.contains("page=2")).expect("attempt 1 asked for page 2");
    assert!(first.contains(SIG) && first.contains(AMZ_SIG), "within an attempt the link is followed as sent: {first}");
    // Attempt 2 resumes at page 2 from the cleaned link.
    oprun_shared::JobQueue::push(&*e.queue, run.id).await.unwrap();
    let w2 = e.start_worker(e.http_runner("w2", &p.providers));
    let done = e.until_completed(run.id, 60).await;
    w2.stop().await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.attempt, done.summary_counts.get("pages"), done.summary_counts.get("total")), (2, 3, 15));
    assert_eq!(p.hits("/coll/contoso-prod?page=1"), 1, "page 1 was not fetched again");
    let resumed: Vec<String> = p.seen().into_iter().filter(|s| s.contains("page=2")).skip(1).collect();
    assert_eq!(resumed.len(), 1, "{:?}", p.seen());
    assert!(!resumed[0].contains(SIG) && resumed[0].contains("$skiptoken=cursor-2"), "{resumed:?}");
    let dump = common::dump_tables(&e).await;
    for secret in [TOKEN, SIG, AMZ_SIG] {
        assert!(!dump.contains(secret), "'{secret}' is in a table");
    }
}

/// base_url `…/v1.0` and a next link `/v1.0/coll/…?page=2`: an absolute-path
/// reference, resolved against the origin (not put under the base path a
/// second time). A next link to another origin is still refused unfollowed.
async fn a_next_link_with_an_absolute_path_is_resolved_against_the_origin(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "/v1.0", "").await;
    p.fix.next_style.store(NEXT_ABSOLUTE_PATH, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.summary_counts.get("pages")), (RunOutcome::Succeeded, 3), "{done:?}");
    assert_eq!(
        p.seen(),
        ["GET /v1.0/coll/contoso-prod", "GET /v1.0/coll/contoso-prod?page=2", "GET /v1.0/coll/contoso-prod?page=3"]
    );
    let e = Env::new(stack).await;
    let p = provider_with(3, 4, "/v1.0", "").await;
    p.fix.next_style.store(NEXT_OTHER_ORIGIN, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.bad_response")));
    assert!(done.failure_summary[0].message.contains("another origin"), "{:?}", done.failure_summary);
    assert_eq!(p.seen(), ["GET /v1.0/coll/contoso-prod"], "the other origin got no request");
}

const PAGE_1: &str = "/coll/contoso-prod?page=1";

/// The operator's next step for a failed run.
async fn primary_action(e: &Env, run: &OperationRun) -> String {
    let op = oprun_scheduler::Operator::new(e.dispatcher.clone());
    op.reads().show("ops-user-1", run.id).await.unwrap().guidance.primary_action.key
}

/// A Retry-After longer than `retry_after_cap` (5 s here), in seconds or as
/// a date, is not waited out: the attempt fails at once `provider.throttled`
/// (retryable), with no retry and no wait recorded.
async fn a_retry_after_over_the_cap_fails_the_attempt_without_waiting(stack: Stack) {
    let in_an_hour = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc2822();
    for after in ["3600".to_string(), in_an_hour] {
        let e = Env::new(stack).await;
        let p = provider(3, 4).await;
        p.script(PAGE_1, vec![(429, vec![("retry-after", after.clone())], "slow down".into())]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!(
            (done.outcome, done.reason_code.as_deref()),
            (RunOutcome::Failed, Some("provider.throttled")),
            "Retry-After {after}: {done:?}"
        );
        let message = &done.failure_summary[0].message;
        assert!(message.contains("429") && message.contains("exceeds the cap"), "{message}");
        assert_eq!(p.hits(PAGE_1), 1, "Retry-After {after}: not retried");
        let c = &done.summary_counts;
        assert_eq!(
            (c.get("retries"), c.get("throttle_waits"), c.get("throttle_wait_ms"), c.get("pages")),
            (0, 0, 0, 0)
        );
        assert_eq!(primary_action(&e, &done).await, "retry");
    }
}

/// 502 and 504 are transient like 503: retried within the budget (counted
/// in `retries`, not as throttling), then `provider.unavailable`, retryable.
async fn bad_gateway_and_gateway_timeout_are_retried_within_the_budget_then_unavailable(stack: Stack) {
    for status in [502u16, 504] {
        let e = Env::new(stack).await;
        let p = provider(2, 4).await;
        p.script(PAGE_1, vec![(status, vec![], "upstream trouble".into()); 2]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!(done.outcome, RunOutcome::Succeeded, "{status}: {done:?}");
        let c = &done.summary_counts;
        assert_eq!((c.get("retries"), c.get("throttle_waits"), c.get("pages")), (2, 0, 3), "{status}");
        assert_eq!(p.hits(PAGE_1), 3, "{status}: first try + 2 retries");
        // Beyond the budget.
        let e = Env::new(stack).await;
        let p = provider(2, 4).await;
        p.script(PAGE_1, vec![(status, vec![], "upstream trouble".into()); 3]);
        let done = run_one(&e, &p, "test.collect").await;
        assert_eq!(
            (done.outcome, done.reason_code.as_deref()),
            (RunOutcome::Failed, Some("provider.unavailable")),
            "{status}: {done:?}"
        );
        assert_eq!((p.hits(PAGE_1), done.summary_counts.get("retries")), (3, 2), "{status}");
        let message = &done.failure_summary[0].message;
        assert!(message.contains(&status.to_string()) && message.contains("retry budget of 2 exhausted"), "{message}");
        assert_eq!(primary_action(&e, &done).await, "retry");
    }
}

/// A request over `request_timeout` is transient: retried (here the second
/// try answers in time), and a provider that never answers in time ends the
/// run `provider.timeout` once the budget is spent.
async fn a_request_timeout_is_retried_within_the_budget_then_provider_timeout(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(2, 4, "", "request_timeout = \"300ms\"").await;
    p.fix.stall_once.lock().unwrap().insert(PAGE_1.into(), 3000);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.outcome, RunOutcome::Succeeded, "{done:?}");
    assert_eq!((done.summary_counts.get("retries"), done.summary_counts.get("pages")), (1, 3));
    assert_eq!(p.hits(PAGE_1), 2, "the timed-out request was sent again");
    // Every try too slow.
    let e = Env::new(stack).await;
    let p = provider_with(2, 4, "", "request_timeout = \"300ms\"").await;
    p.fix.delay_ms.store(3000, Ordering::SeqCst);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!((done.outcome, done.reason_code.as_deref()), (RunOutcome::Failed, Some("provider.timeout")), "{done:?}");
    assert_eq!((p.hits(PAGE_1), done.summary_counts.get("retries")), (3, 2));
    let message = &done.failure_summary[0].message;
    assert!(message.contains("did not answer in time") && message.contains("retry budget of 2 exhausted"), "{message}");
    assert_eq!(primary_action(&e, &done).await, "retry");
}

/// Nothing listens at `base_url`: each refused connection is retried within
/// the budget, then the run fails `provider.unavailable`, retryable.
async fn a_refused_connection_is_retried_within_the_budget_then_unavailable(stack: Stack) {
    let e = Env::new(stack).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: connections to it are refused
    let (providers, _dir) = providers_at(&format!("http://127.0.0.1:{port}"), 2, 4, "");
    let run = dispatch(&e, "test.collect", "contoso-prod", json!({})).await;
    let worker = e.start_worker(e.http_runner("w1", &providers));
    let done = e.until_completed(run.id, 60).await;
    worker.stop().await;
    assert_eq!(
        (done.outcome, done.reason_code.as_deref()),
        (RunOutcome::Failed, Some("provider.unavailable")),
        "{done:?}"
    );
    assert_eq!(done.summary_counts.get("retries"), 2, "{done:?}");
    let message = &done.failure_summary[0].message;
    assert!(message.contains("could not be reached") && message.contains("retry budget of 2 exhausted"), "{message}");
    assert_eq!(primary_action(&e, &done).await, "retry");
}

/// `concurrency_per_environment = 2` under a provider limit of 8: one worker
/// with 16 slots and 24 runs in two environments never has more than 2
/// requests in flight for one environment, while the two environments run
/// side by side (the limit is per environment, not a smaller global one).
async fn concurrency_per_environment_caps_each_environment_within_a_worker(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider_with(3, 8, "", "concurrency_per_environment = 2").await;
    p.fix.pages.store(1, Ordering::SeqCst);
    p.fix.delay_ms.store(100, Ordering::SeqCst);
    let mut ids = vec![];
    for _ in 0..12 {
        for env in ["contoso-prod", "contoso-dev"] {
            ids.push(dispatch(&e, "test.collect", env, json!({})).await.id);
        }
    }
    let worker = e.start_worker_with(e.http_runner("w1", &p.providers), 16);
    for id in &ids {
        assert_eq!(e.until_completed(*id, 120).await.outcome, RunOutcome::Succeeded);
    }
    worker.stop().await;
    let by_env = p.fix.env_inflight.lock().unwrap().clone();
    for env in ["contoso-prod", "contoso-dev"] {
        let peak = by_env.get(env).map(|(_, peak)| *peak);
        assert_eq!(peak, Some(2), "{env}: most requests at once (the limit is 2): {by_env:?}");
    }
    let peak = p.fix.peak.load(Ordering::SeqCst);
    assert!((3..=4).contains(&peak), "both environments were served at once: peak {peak}, {by_env:?}");
}

/// A failure message keeps at most a 200-character excerpt of the body (199
/// characters and an ellipsis), however long the body.
async fn a_failure_message_keeps_at_most_a_200_character_excerpt_of_the_body(stack: Stack) {
    let e = Env::new(stack).await;
    let p = provider(3, 4).await;
    let body: String = (0..100).map(|i| format!("part{i:03} ")).collect();
    assert_eq!(body.len(), 800);
    p.script(PAGE_1, vec![(400, vec![], body.clone())]);
    let done = run_one(&e, &p, "test.collect").await;
    assert_eq!(done.reason_code.as_deref(), Some("provider.bad_response"), "{done:?}");
    let message = &done.failure_summary[0].message;
    let (head, excerpt) = message.split_once(": ").unwrap_or_else(|| panic!("{message}"));
    assert_eq!(head, "provider 'graph' answered 400 Bad Request", "{message}");
    assert_eq!(excerpt.chars().count(), 200, "{message}");
    assert_eq!(excerpt.strip_suffix('…'), Some(&body[..199]), "{message}");
}

both_stacks!(
    a_dot_segment_id_is_refused_before_any_request,
    an_oversized_response_body_is_a_bad_response,
    signed_next_links_are_checkpointed_without_their_secrets_and_still_resume,
    a_next_link_with_an_absolute_path_is_resolved_against_the_origin,
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
    a_retry_after_over_the_cap_fails_the_attempt_without_waiting,
    bad_gateway_and_gateway_timeout_are_retried_within_the_budget_then_unavailable,
    a_request_timeout_is_retried_within_the_budget_then_provider_timeout,
    a_refused_connection_is_retried_within_the_budget_then_unavailable,
    concurrency_per_environment_caps_each_environment_within_a_worker,
    a_failure_message_keeps_at_most_a_200_character_excerpt_of_the_body,
);
