//! The operator HTTP API over real HTTP: authority on every endpoint, the
//! retry chain end to end, cancel, reconcile, bad input always a JSON 4xx,
//! and a generated OpenAPI document naming every route.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ACCESS, Env, Stack, access};
use oprun_scheduler::api::{self, ApiState};
use oprun_scheduler::{DispatchOutcome, Operator};
use oprun_shared::{
    Clock, DispatchRequest, Initiator, JobQueue, ManualClock, OperationRun, RunOutcome, RunStatus, Scope,
    SourceSurface, SystemClock,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One Prometheus recorder per test process.
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static H: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    H.get_or_init(|| metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("recorder"))
        .clone()
}

struct Api {
    base: String,
    http: reqwest::Client,
    e: Env,
}

async fn api(stack: Stack) -> Api {
    api_with(stack, vec![]).await
}

async fn api_with(stack: Stack, schedules: Vec<oprun_scheduler::config::ScheduleSpec>) -> Api {
    let e = Env::new(stack).await;
    let state = ApiState {
        operator: Operator::new(e.dispatcher.clone()),
        access: e.db.access.clone(),
        tokens: e.db.tokens.clone(),
        ticks: e.db.ticks.clone(),
        queue: e.queue.clone() as Arc<dyn JobQueue>,
        schedules: Arc::new(schedules),
        clock: Arc::new(SystemClock),
        metrics: Some(metrics_handle()),
    };
    let (router, _) = api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    // Every request is bounded: a hung handler fails the test instead of hanging it.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("the test HTTP client");
    Api { base, http, e }
}

impl Api {
    async fn token(&self, actor: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> (String, String) {
        let (token, id, hash) = api::new_token();
        self.e.db.tokens.create_token(&id, &hash, actor, SystemClock.now(), expires_at).await.unwrap();
        (token, id)
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (StatusCode, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: not JSON ({status}): {text}"));
        (status, v)
    }

    async fn dispatch(&self, actor: &str, ws: &str, env: &str, op: &str, params: Value) -> OperationRun {
        let req = DispatchRequest {
            operation: op.into(),
            scope: Scope { workspace_id: ws.into(), environment_id: Some(env.into()), ..Scope::default() },
            initiator: Initiator::user(actor),
            source: SourceSurface::Api,
            context: json!({}),
            params,
        };
        match self.e.dispatcher.dispatch(req).await.unwrap() {
            DispatchOutcome::Dispatched { run, .. } => *run,
            other => panic!("{other:?}"),
        }
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
}

async fn every_endpoint_checks_authority(stack: Stack) {
    let a = api(stack).await;
    let contoso = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let fabrikam = a.dispatch("fab-user", "fabrikam", "fabrikam-prod", "test.count", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let (viewer, _) = a.token("viewer-1", None).await;
    let (revoked, revoked_id) = a.token("ops-user-1", None).await;
    assert!(a.e.db.tokens.revoke_token(&revoked_id, SystemClock.now()).await.unwrap());
    let (expired, _) = a.token("ops-user-1", Some(SystemClock.now() - chrono::Duration::seconds(1))).await;
    let c = contoso.id;
    let endpoints: Vec<(&str, String, Option<&str>)> = vec![
        ("GET", "/v1/runs".into(), None),
        ("GET", format!("/v1/runs/{c}"), None),
        ("GET", format!("/v1/runs/{c}/audit"), None),
        ("POST", format!("/v1/runs/{c}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{c}/cancel"), Some("{}")),
        ("POST", "/v1/reconcile".into(), Some(r#"{"dry_run": true}"#)),
        ("GET", "/v1/schedules".into(), None),
        ("GET", "/metrics".into(), None),
    ];
    for (m, p, b) in &endpoints {
        for token in [None, Some("garbage"), Some("oprun_nope_nope"), Some(revoked.as_str()), Some(expired.as_str())] {
            let (status, v) = a.call(m, p, token, *b).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{m} {p} with {token:?}: {v}");
            assert_eq!(error_code(&v), "unauthorized");
        }
    }
    // Visibility: the other workspace's run does not exist for this caller.
    let (status, listed) = a.call("GET", "/v1/runs", Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = listed["runs"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![c.to_string().as_str()]);
    let f = fabrikam.id;
    for (m, p, b) in [
        ("GET", format!("/v1/runs/{f}"), None),
        ("GET", format!("/v1/runs/{f}/audit"), None),
        ("POST", format!("/v1/runs/{f}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{f}/cancel"), Some("{}")),
        ("GET", format!("/v1/runs/{}", uuid::Uuid::now_v7()), None),
    ] {
        let (status, v) = a.call(m, &p, Some(&ops), b).await;
        assert_eq!((status, error_code(&v)), (StatusCode::NOT_FOUND, "not_found"), "{m} {p}");
    }
    // A visible run without the right to act: 403.
    let (status, v) = a.call("GET", &format!("/v1/runs/{c}"), Some(&viewer), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    for p in [format!("/v1/runs/{c}/retry"), format!("/v1/runs/{c}/cancel")] {
        let (status, v) = a.call("POST", &p, Some(&viewer), Some("{}")).await;
        assert_eq!((status, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{p}: {v}");
    }
    let (status, _) = a.call("POST", "/v1/reconcile", Some(&viewer), Some("{}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An invalid transition: retrying a run that is still queued.
    let (status, v) = a.call("POST", &format!("/v1/runs/{c}/retry"), Some(&ops), Some("{}")).await;
    assert_eq!((status, error_code(&v)), (StatusCode::CONFLICT, "conflict"), "{v}");
    // A disabled actor's tokens stop working.
    let disabled = ACCESS.replacen(
        "id = \"ops-user-1\"\nkind = \"user\"",
        "id = \"ops-user-1\"\nkind = \"user\"\nstatus = \"disabled\"",
        1,
    );
    a.e.db.access.apply_access(&access(&disabled)).await.unwrap();
    let (status, _) = a.call("GET", "/v1/runs", Some(&ops), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Liveness and readiness need no token.
    assert_eq!(a.call("GET", "/healthz", None, None).await.0, StatusCode::OK);
    let (status, ready) = a.call("GET", "/readyz", None, None).await;
    assert_eq!((status, ready), (StatusCode::OK, json!({"store": true, "queue": true})));
}

async fn bad_input_is_always_a_json_4xx(stack: Stack) {
    let a = api(stack).await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let big = format!("{{\"dry_run\": true, \"operation\": \"{}\"}}", "x".repeat(api::MAX_BODY_BYTES + 10));
    let cases: Vec<(&str, String, Option<String>, StatusCode, &str)> = vec![
        ("GET", "/v1/runs/not-a-uuid".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?status=sleeping".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?limit=0".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?limit=many".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?colour=red".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs?before=123".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("POST", "/v1/reconcile".into(), Some("{not json".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (
            "POST",
            "/v1/reconcile".into(),
            Some(r#"{"dry_run": "yes"}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        (
            "POST",
            "/v1/reconcile".into(),
            Some(r#"{"dry_run": true, "force": 1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        ("POST", "/v1/reconcile".into(), Some(big), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        (
            "POST",
            format!("/v1/runs/{}/retry", run.id),
            Some(r#"{"x": 1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
        ("POST", "/v1/runs/%00/cancel".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/nothing-here".into(), None, StatusCode::NOT_FOUND, "not_found"),
        // A path segment that is not UTF-8 once percent-decoded.
        ("GET", "/v1/runs/%FF".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("GET", "/v1/runs/%C3%28/audit".into(), None, StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        ("POST", "/v1/runs/%FF/retry".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY, "invalid_input"),
        (
            "POST",
            "/v1/runs/abc%FE%FF/cancel".into(),
            Some("{}".into()),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
        ),
    ];
    for (m, p, b, want, code) in cases {
        let (status, v) = a.call(m, &p, Some(&ops), b.as_deref()).await;
        assert_eq!(status, want, "{m} {p}: {v}");
        assert!(!error_code(&v).is_empty());
        assert_eq!(error_code(&v), code, "{m} {p}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap_or_default().is_empty(),
            "{m} {p}: a message says what is wrong: {v}"
        );
    }
    assert_eq!(a.e.service.get(run.id).await.unwrap().status, RunStatus::Queued, "nothing changed");
}

/// The access truth plus a monitoring actor holding `metrics.view` in the
/// given workspaces.
fn with_monitoring(workspaces: &[&str]) -> String {
    let mut text = ACCESS.replacen("[roles]\n", "[roles]\nmonitoring = [\"metrics.view\"]\n", 1);
    text.push_str("\n[[actors]]\nid = \"svc-prometheus\"\nkind = \"service\"\n");
    for ws in workspaces {
        text.push_str(&format!(
            "[[memberships]]\nactor = \"svc-prometheus\"\nworkspace = \"{ws}\"\nrole = \"monitoring\"\n"
        ));
    }
    text
}

async fn metrics_need_a_token_that_may_view_metrics_in_every_active_workspace(stack: Stack) {
    let a = api(stack).await;
    let scrape = |token: Option<String>| {
        let mut req = a.http.get(format!("{}/metrics", a.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status();
            let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
            (status, ctype, resp.text().await.unwrap())
        }
    };
    // No token, a bad one: 401 with the JSON error body, and no metric in it.
    for token in [None, Some("oprun_nope_nope".to_string())] {
        let (status, _, body) = scrape(token.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        assert_eq!(error_code(&v), "unauthorized");
        assert!(!body.contains("oprun_"), "{body}");
    }
    // A tenant operator's token: the labels name other tenants' schedules, so 403.
    let (ops, _) = a.token("ops-user-1", None).await;
    let (status, _, body) = scrape(Some(ops)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.contains("oprun_") && !body.contains("fabrikam"), "{body}");
    // metrics.view in one of the two active workspaces is not enough either.
    a.e.db.access.apply_access(&access(&with_monitoring(&["contoso"]))).await.unwrap();
    let (prom, _) = a.token("svc-prometheus", None).await;
    let (status, _, body) = scrape(Some(prom.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(!body.contains("fabrikam"), "the refusal names no workspace: {body}");
    // In every active workspace: the exposition.
    a.e.db.access.apply_access(&access(&with_monitoring(&["contoso", "fabrikam"]))).await.unwrap();
    let (status, ctype, body) = scrape(Some(prom)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ctype.as_deref(), Some("text/plain; version=0.0.4"));
    assert!(body.contains("oprun_queue_depth"), "{body}");
}

async fn blocked_then_fixed_then_retried_succeeds_with_the_chain_audited(stack: Stack) {
    let a = api(stack).await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-dev", "test.count", json!({})).await;
    let suspended = ACCESS.replacen(
        "id = \"contoso-dev\"\nworkspace = \"contoso\"",
        "id = \"contoso-dev\"\nworkspace = \"contoso\"\nstatus = \"suspended\"",
        1,
    );
    a.e.db.access.apply_access(&access(&suspended)).await.unwrap();
    let worker = a.e.start_worker(a.e.runner("w1"));
    let blocked = a.e.until_completed(run.id, 30).await;
    // No worker until both retries below are made: the first retry is still
    // queued when the second one comes, so the second must find it.
    worker.stop().await;
    assert_eq!(blocked.reason_code.as_deref(), Some("execution.environment_not_operable"));
    let (ops, _) = a.token("ops-user-1", None).await;
    // Guidance names the fix; retry is not the primary action while the cause remains for this viewer.
    let (_, shown) = a.call("GET", &format!("/v1/runs/{}", run.id), Some(&ops), None).await;
    assert_eq!(shown["guidance"]["technical"]["reason_code"], "execution.environment_not_operable", "{shown}");
    // Retrying before the fix is refused now, not queued to fail again.
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/retry", run.id), Some(&ops), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // Fix the access truth, then retry.
    a.e.db.access.apply_access(&access(ACCESS)).await.unwrap();
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/retry", run.id), Some(&ops), None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let new_id: uuid::Uuid = v["run"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(v["deduplicated"], false, "{v}");
    assert_eq!(a.e.queue.depth().await.unwrap(), Some(1), "the retry's job is pushed");
    // A second retry while the first is still queued returns it: 200, no new run, no second job.
    let (status, again) = a.call("POST", &format!("/v1/runs/{}/retry", run.id), Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["deduplicated"], true, "a second retry while the first is active returns it: {again}");
    assert_eq!(again["run"]["id"], v["run"]["id"], "{again}");
    assert_eq!(again["run"]["status"], "queued", "{again}");
    assert_eq!(a.e.queue.depth().await.unwrap(), Some(1), "the deduplicated retry pushes nothing");
    let (_, listed) = a.call("GET", "/v1/runs?limit=1000", Some(&ops), None).await;
    let retries: Vec<&Value> =
        listed["runs"].as_array().unwrap().iter().filter(|r| r["retry_of"] == run.id.to_string()).collect();
    assert_eq!(retries.len(), 1, "one retry run: {listed}");
    let worker = a.e.start_worker(a.e.runner("w1"));
    let done = a.e.until_completed(new_id, 30).await;
    worker.stop().await;
    a.e.db.access.apply_access(&access(&with_monitoring(&["contoso", "fabrikam"]))).await.unwrap();
    let (prom, _) = a.token("svc-prometheus", None).await;
    let metrics =
        a.http.get(format!("{}/metrics", a.base)).bearer_auth(prom).send().await.unwrap().text().await.unwrap();
    for line in [
        "oprun_runs_dispatched_total",
        "oprun_runs_finished_total",
        "oprun_execution_denials_total{reason=\"execution.environment_not_operable\"} 1",
        "oprun_queue_latency_seconds",
        "oprun_queue_depth",
    ] {
        assert!(metrics.contains(line), "/metrics has {line}: {metrics}");
    }
    assert_eq!(done.outcome, RunOutcome::Succeeded);
    assert_eq!(done.retry_of, Some(run.id));
    assert_eq!(done.initiator, Initiator::user("ops-user-1"));
    assert_eq!(done.source_surface, SourceSurface::Retry);
    let (_, old_audit) = a.call("GET", &format!("/v1/runs/{}/audit", run.id), Some(&ops), None).await;
    let actions: Vec<&str> =
        old_audit["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"run.retried"), "{actions:?}");
    assert_eq!(
        actions.iter().filter(|a| **a == "run.retried").count(),
        1,
        "the deduplicated retry wrote no audit row: {actions:?}"
    );
    let (_, new_audit) = a.call("GET", &format!("/v1/runs/{new_id}/audit"), Some(&ops), None).await;
    assert_eq!(new_audit["events"][0]["action"], "run.retry");
    assert_eq!(a.e.service.get(run.id).await.unwrap().outcome, RunOutcome::Blocked, "the old run stays as it was");
}

async fn cancel_and_reconcile_through_the_api(stack: Stack) {
    let a = api(stack).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let queued = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/cancel", queued.id), Some(&ops), None).await;
    assert_eq!((status, v["result"].as_str()), (StatusCode::OK, Some("cancelled")), "{v}");
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/cancel", queued.id), Some(&ops), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    // A running run gets a request; its worker ends it cancelled.
    let slow = a
        .dispatch("ops-user-1", "contoso", "contoso-dev", "test.slow", json!({"pages": 300, "page_delay_ms": 30}))
        .await;
    let worker = a.e.start_worker(a.e.runner("w1"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while a.e.service.get(slow.id).await.unwrap().status != RunStatus::Running {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/cancel", slow.id), Some(&ops), None).await;
    assert_eq!((status, v["result"].as_str()), (StatusCode::OK, Some("requested")), "{v}");
    let done = a.e.until_completed(slow.id, 30).await;
    worker.stop().await;
    assert_eq!(done.outcome, RunOutcome::Cancelled);
    // A stale running run: claimed an hour ago by a worker that vanished.
    let stale = a.dispatch("ops-user-1", "contoso", "contoso-moving", "test.slow", json!({})).await;
    let past = Arc::new(ManualClock::new(SystemClock.now() - chrono::Duration::hours(1)));
    Env::service_with(a.e.db.store.clone(), past).claim(stale.id, "vanished-worker").await.unwrap();
    let (status, dry) =
        a.call("POST", "/v1/reconcile", Some(&ops), Some(r#"{"dry_run": true, "workspace": "contoso"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["actions"][0]["kind"], "requeued", "{dry}");
    assert_eq!(a.e.service.get(stale.id).await.unwrap().status, RunStatus::Running, "dry run changed nothing");
    let (_, real) = a.call("POST", "/v1/reconcile", Some(&ops), Some(r#"{"workspace": "contoso"}"#)).await;
    assert_eq!(real["actions"][0]["run_id"], stale.id.to_string(), "{real}");
    let after = a.e.service.get(stale.id).await.unwrap();
    assert_eq!((after.status, after.attempt), (RunStatus::Queued, 2));
}

async fn schedules_show_recent_decisions_in_visible_workspaces_only(stack: Stack) {
    let spec = |name: &str, ws: &str, env: &str| -> oprun_scheduler::config::ScheduleSpec {
        toml::from_str(&format!(
            "name = \"{name}\"\ncron = \"*/5 * * * *\"\noperation = \"test.count\"\nworkspace = \"{ws}\"\n\
             environment = \"{env}\"\nactor = \"svc-scheduler\"\n"
        ))
        .unwrap()
    };
    let a = api_with(
        stack,
        vec![spec("contoso-sync", "contoso", "contoso-prod"), spec("fab-sync", "fabrikam", "fabrikam-prod")],
    )
    .await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let worker = a.e.start_worker(a.e.runner("w1"));
    a.e.until_completed(run.id, 30).await;
    worker.stop().await;
    let ticks = &a.e.db.ticks;
    let t1: chrono::DateTime<chrono::Utc> = "2026-11-02T09:00:00Z".parse().unwrap();
    let t2 = t1 + chrono::Duration::minutes(5);
    let now = SystemClock.now();
    ticks.claim_tick("contoso-sync", t1, oprun_shared::TickDecision::SkippedMisfire, "s", now).await.unwrap();
    ticks.claim_tick("contoso-sync", t2, oprun_shared::TickDecision::Claimed, "s", now).await.unwrap();
    ticks.decide_tick("contoso-sync", t2, oprun_shared::TickDecision::Fired, &[run.id], &json!({})).await.unwrap();
    let (ops, _) = a.token("ops-user-1", None).await;
    let (status, v) = a.call("GET", "/v1/schedules", Some(&ops), None).await;
    assert_eq!(status, StatusCode::OK);
    let list = v["schedules"].as_array().unwrap();
    assert_eq!(list.len(), 1, "fabrikam's schedule is not visible: {v}");
    assert_eq!(list[0]["name"], "contoso-sync");
    let decisions: Vec<&str> =
        list[0]["recent_ticks"].as_array().unwrap().iter().map(|t| t["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, vec!["fired", "skipped_misfire"]);
    assert_eq!(list[0]["consecutive_succeeded_ticks"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route() {
    let a = api(Stack::Sqlite).await;
    let (status, doc) = a.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("get", "/v1/runs"),
        ("get", "/v1/runs/{id}"),
        ("get", "/v1/runs/{id}/audit"),
        ("post", "/v1/runs/{id}/retry"),
        ("post", "/v1/runs/{id}/cancel"),
        ("post", "/v1/reconcile"),
        ("get", "/v1/schedules"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
    ] {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "{method} {path} missing from the document");
    }
    // And every documented route answers something other than the fallback.
    for (path, item) in paths {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        for method in item.as_object().unwrap().keys() {
            let (_, v) = a.call(&method.to_uppercase(), &concrete, None, Some("{}")).await;
            assert_ne!(v["error"]["message"], "no such endpoint", "{method} {path}");
        }
    }
}

/// The access truth plus `admin-1`, who holds `access.manage` in contoso.
fn with_workspace_admin() -> String {
    let mut text = ACCESS.replacen("[roles]\n", "[roles]\nadmin = [\"runs.view\", \"access.manage\"]\n", 1);
    text.push_str("\n[[actors]]\nid = \"admin-1\"\nkind = \"user\"\n");
    text.push_str("[[memberships]]\nactor = \"admin-1\"\nworkspace = \"contoso\"\nrole = \"admin\"\n");
    text
}

/// A checkpoint can hold provider paging links: `GET /v1/runs/{id}` shows it
/// only to a viewer holding `access.manage` in the run's workspace; everyone
/// else sees whether there is one.
async fn a_run_s_checkpoint_is_shown_only_to_workspace_admins(stack: Stack) {
    let a = api(stack).await;
    a.e.db.access.apply_access(&access(&with_workspace_admin())).await.unwrap();
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.fanout", json!({})).await;
    let bare = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.fanout", json!({})).await;
    let claimed = a.e.service.claim(run.id, "w1").await.unwrap();
    let lease = oprun_shared::Lease::of(&claimed).unwrap();
    let checkpoint = json!({ "next": "https://graph.test/v1.0/devices?page=2&$skiptoken=c2tpcA" });
    let counts = oprun_shared::SummaryCounts::new();
    a.e.service.progress(&lease, "test.fanout", counts, Some(checkpoint.clone())).await.unwrap();
    for (actor, shown) in [("viewer-1", false), ("ops-user-1", false), ("admin-1", true)] {
        let (token, _) = a.token(actor, None).await;
        let (status, v) = a.call("GET", &format!("/v1/runs/{}", run.id), Some(&token), None).await;
        assert_eq!(status, StatusCode::OK, "{actor}: {v}");
        assert_eq!(v["has_checkpoint"], true, "{actor}: {v}");
        if shown {
            assert_eq!(v["checkpoint"], checkpoint, "{actor}");
        } else {
            assert_eq!(v["checkpoint"], Value::Null, "{actor}");
            assert!(!v.to_string().contains("skiptoken"), "{actor} sees the checkpoint: {v}");
        }
        let (_, v) = a.call("GET", &format!("/v1/runs/{}", bare.id), Some(&token), None).await;
        assert_eq!((&v["has_checkpoint"], &v["checkpoint"]), (&json!(false), &Value::Null), "{actor}: {v}");
    }
}

// ---- Metrics the run path sets -------------------------------------------

/// A sample of the Prometheus exposition `text`: the value of the series
/// `name` whose label set is exactly `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, mut got) = match series.split_once('{') {
            Some((n, rest)) => {
                let inner = rest.strip_suffix('}')?;
                let pairs: Option<Vec<(String, String)>> = inner
                    .split("\",")
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"")?;
                        Some((k.to_string(), v.trim_end_matches('"').to_string()))
                    })
                    .collect();
                (n, pairs?)
            }
            None => (series, vec![]),
        };
        got.sort();
        (n == name && got == want).then(|| value.parse().ok()).flatten()
    })
}

/// Every series of `name` in `text` (for "nothing else was counted").
fn series_of<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .collect()
}

impl Api {
    async fn scrape(&self, token: &str) -> String {
        let resp = self.http.get(format!("{}/metrics", self.base)).bearer_auth(token).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.unwrap()
    }

    /// Scrape until `name` (no labels) reads `want` (the gauge moves just
    /// after the run's status does).
    async fn until_gauge(&self, token: &str, name: &str, want: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.scrape(token).await;
            if sample(&text, name, &[]) == Some(want) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name} never read {want}: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A provider on a local port: `POST /call/{env}` answers `script` in
/// order, then 200 with the body it got. Returns the `graph` provider set
/// up on it and the directory holding its token file.
async fn scripted_provider(
    script: Vec<(u16, Option<&'static str>)>,
) -> (oprun_worker::http::Providers, tempfile::TempDir) {
    type Script = Arc<std::sync::Mutex<std::collections::VecDeque<(u16, Option<&'static str>)>>>;
    async fn call(
        axum::extract::State(script): axum::extract::State<Script>,
        body: String,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        match script.lock().unwrap().pop_front() {
            Some((status, retry_after)) => {
                let mut resp = (StatusCode::from_u16(status).unwrap(), "scripted").into_response();
                if let Some(after) = retry_after {
                    resp.headers_mut().insert("retry-after", after.parse().unwrap());
                }
                resp
            }
            None => axum::Json(json!({ "received": body })).into_response(),
        }
    }
    let script: Script = Arc::new(std::sync::Mutex::new(script.into()));
    let app = axum::Router::new().route("/call/{env}", axum::routing::post(call)).with_state(script);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("graph.token");
    std::fs::write(&token_file, common::provider_token("metrics")).unwrap();
    let text = format!(
        "{}\n[providers.graph]\nbase_url = \"{base}\"\ntoken_file = \"{}\"\nretry_budget = 3\n\
         retry_after_cap = \"5s\"\nrequest_timeout = \"5s\"\n",
        common::CATALOG,
        token_file.display()
    );
    let config = oprun::config::Config::from_toml(&text, "metrics test").unwrap();
    (oprun_worker::http::Providers::from_config(&config.providers, config.dir()).unwrap(), dir)
}

/// `/metrics` counts what the run path did, exactly: this process's
/// recorder saw only this test's runs (nextest runs one test per process).
/// Three counted runs, one provider call that met a 429 (Retry-After 1 s)
/// and a 503 before its 200, a cancelled slow run (a lease held while it
/// ran), one stale run requeued by an operator's reconcile (after a dry run,
/// which counts nothing), and a schedule's ticks: one fired, six missed.
async fn metrics_count_what_the_run_path_did(stack: Stack) {
    let a = api(stack).await;
    a.e.db.access.apply_access(&access(&with_monitoring(&["contoso", "fabrikam"]))).await.unwrap();
    let (prom, _) = a.token("svc-prometheus", None).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let (providers, _dir) = scripted_provider(vec![(429, Some("1")), (503, None)]).await;
    let mut ids = vec![];
    for env in ["contoso-prod", "contoso-dev", "contoso-moving"] {
        ids.push(a.dispatch("ops-user-1", "contoso", env, "test.count", json!({})).await.id);
    }
    ids.push(a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.call", json!({"n": 1})).await.id);
    let worker = a.e.start_worker(a.e.http_runner("w1", &providers));
    for id in &ids {
        assert_eq!(a.e.until_completed(*id, 60).await.outcome, RunOutcome::Succeeded);
    }
    // A run in flight holds a lease; cancelled, it holds none.
    let slow = a
        .dispatch("ops-user-1", "contoso", "contoso-dev", "test.slow", json!({"pages": 300, "page_delay_ms": 30}))
        .await;
    a.until_gauge(&prom, "oprun_active_leases", 1.0).await;
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/cancel", slow.id), Some(&ops), None).await;
    assert_eq!((status, v["result"].as_str()), (StatusCode::OK, Some("requested")), "{v}");
    assert_eq!(a.e.until_completed(slow.id, 30).await.outcome, RunOutcome::Cancelled);
    a.until_gauge(&prom, "oprun_active_leases", 0.0).await;
    worker.stop().await;

    // A stale running run: a dry run counts nothing, the real pass one requeue.
    let stale = a.dispatch("ops-user-1", "contoso", "contoso-moving", "test.slow", json!({})).await;
    let past = Arc::new(ManualClock::new(SystemClock.now() - chrono::Duration::hours(1)));
    Env::service_with(a.e.db.store.clone(), past).claim(stale.id, "vanished-worker").await.unwrap();
    let (status, dry) = a.call("POST", "/v1/reconcile", Some(&ops), Some(r#"{"dry_run": true}"#)).await;
    assert_eq!((status, dry["actions"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{dry}");
    assert_eq!(series_of(&a.scrape(&prom).await, "oprun_reconcile_actions_total"), Vec::<&str>::new());
    let (status, real) = a.call("POST", "/v1/reconcile", Some(&ops), Some("{}")).await;
    assert_eq!((status, real["actions"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{real}");

    // A schedule: the 09:00 tick fires; after a restart at 09:33 the six
    // ticks missed meanwhile are skipped.
    let spec: oprun_scheduler::config::ScheduleSpec = toml::from_str(
        "name = \"metrics-five\"\ncron = \"*/5 * * * *\"\noperation = \"test.fanout\"\nworkspace = \"contoso\"\n\
         environment = \"contoso-prod\"\nactor = \"svc-scheduler\"\nmisfire = \"skip\"\n",
    )
    .unwrap();
    let clock = Arc::new(ManualClock::new("2026-11-02T08:59:58Z".parse().unwrap()));
    let scheduler = |clock: Arc<ManualClock>| {
        let d = oprun_scheduler::Dispatcher::new(
            Env::service_with(a.e.db.store.clone(), clock.clone()),
            a.e.authorizer.clone(),
            a.e.queue.clone() as Arc<dyn JobQueue>,
        );
        oprun_scheduler::Scheduler::new(
            std::slice::from_ref(&spec),
            d,
            a.e.db.access.clone(),
            a.e.db.ticks.clone(),
            clock,
            "metrics-scheduler",
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let first = scheduler(clock.clone());
    clock.set("2026-11-02T09:00:01Z".parse().unwrap());
    assert_eq!(first.run_once().await.unwrap().len(), 1);
    clock.set("2026-11-02T09:33:00Z".parse().unwrap());
    let restarted = scheduler(clock.clone());
    assert_eq!(restarted.run_once().await.unwrap().len(), 6);

    let text = a.scrape(&prom).await;
    type Labels = Vec<(&'static str, &'static str)>;
    let want: Vec<(&str, Labels, f64)> = vec![
        ("oprun_runs_dispatched_total", vec![("operation", "test.count"), ("source", "api")], 3.0),
        ("oprun_runs_dispatched_total", vec![("operation", "test.call"), ("source", "api")], 1.0),
        ("oprun_runs_dispatched_total", vec![("operation", "test.slow"), ("source", "api")], 2.0),
        ("oprun_runs_dispatched_total", vec![("operation", "test.fanout"), ("source", "scheduler")], 1.0),
        ("oprun_runs_finished_total", vec![("operation", "test.count"), ("outcome", "succeeded")], 3.0),
        ("oprun_runs_finished_total", vec![("operation", "test.call"), ("outcome", "succeeded")], 1.0),
        ("oprun_runs_finished_total", vec![("operation", "test.slow"), ("outcome", "cancelled")], 1.0),
        ("oprun_run_duration_seconds_count", vec![("operation", "test.count")], 3.0),
        ("oprun_run_duration_seconds_count", vec![("operation", "test.call")], 1.0),
        ("oprun_run_duration_seconds_count", vec![("operation", "test.slow")], 1.0),
        ("oprun_queue_latency_seconds_count", vec![("operation", "test.count")], 3.0),
        ("oprun_provider_requests_total", vec![("provider", "graph"), ("status", "429")], 1.0),
        ("oprun_provider_requests_total", vec![("provider", "graph"), ("status", "503")], 1.0),
        ("oprun_provider_requests_total", vec![("provider", "graph"), ("status", "200")], 1.0),
        ("oprun_provider_retries_total", vec![("provider", "graph"), ("reason", "provider.throttled")], 1.0),
        ("oprun_provider_retries_total", vec![("provider", "graph"), ("reason", "provider.unavailable")], 1.0),
        ("oprun_provider_throttle_wait_ms_total", vec![("provider", "graph")], 1000.0),
        ("oprun_reconcile_actions_total", vec![("kind", "requeued")], 1.0),
        ("oprun_schedule_ticks_total", vec![("schedule", "metrics-five"), ("decision", "fired")], 1.0),
        ("oprun_schedule_ticks_total", vec![("schedule", "metrics-five"), ("decision", "skipped_misfire")], 6.0),
        ("oprun_active_leases", vec![], 0.0),
    ];
    for (name, labels, value) in &want {
        assert_eq!(sample(&text, name, labels), Some(*value), "{name}{labels:?}: {text}");
    }
    // Nothing else was counted under these names.
    for (name, n) in [
        ("oprun_runs_finished_total", 3),
        ("oprun_provider_requests_total", 3),
        ("oprun_provider_retries_total", 2),
        ("oprun_reconcile_actions_total", 1),
        ("oprun_schedule_ticks_total", 2),
    ] {
        assert_eq!(series_of(&text, name).len(), n, "{name}: {text}");
    }
}

// ---- An unreachable store ---------------------------------------------

/// Make the env's store unreachable: the Postgres database is dropped (its
/// connections terminated); the SQLite store's pool is closed.
async fn lose_the_store(e: &Env) {
    lose(&e.db).await;
}

/// Make `db` unreachable (see [`lose_the_store`]).
async fn lose(db: &oprun_shared::testing::TestStore) {
    match &db.database.sqlite {
        None => {
            use sqlx::Connection;
            let admin = oprun_shared::testing::require_env(oprun_shared::testing::POSTGRES_URL_VAR);
            let name = db.url.rsplit('/').next().unwrap().to_string();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE \"{name}\" WITH (FORCE)")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Some(pool) => pool.close().await,
    }
}

/// The store goes away under a serving API: every authenticated endpoint
/// is a JSON 503 `unavailable` that names no cause, and `/readyz` is 503
/// saying the store is down (on Postgres + Redis the queue still answers).
async fn an_unreachable_store_is_a_503_and_readyz_says_so(stack: Stack) {
    let a = api(stack).await;
    let run = a.dispatch("ops-user-1", "contoso", "contoso-prod", "test.count", json!({})).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    assert_eq!(a.call("GET", "/v1/runs", Some(&ops), None).await.0, StatusCode::OK);
    assert_eq!(a.call("GET", "/readyz", None, None).await.0, StatusCode::OK);
    lose_the_store(&a.e).await;
    let id = run.id;
    for (m, p, b) in [
        ("GET", "/v1/runs".to_string(), None),
        ("GET", format!("/v1/runs/{id}"), None),
        ("GET", format!("/v1/runs/{id}/audit"), None),
        ("POST", format!("/v1/runs/{id}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{id}/cancel"), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some("{}")),
        ("GET", "/v1/schedules".to_string(), None),
        ("GET", "/metrics".to_string(), None),
    ] {
        let (status, v) = a.call(m, &p, Some(&ops), b).await;
        assert_eq!((status, error_code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{m} {p}: {v}");
        assert_eq!(v["error"]["message"], "the run store is unavailable; try again", "{m} {p}: no cause shown");
    }
    let (status, ready) = a.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["store"], false, "{ready}");
    if stack == Stack::PostgresRedis {
        assert_eq!(ready["queue"], true, "Redis still answers: {ready}");
    }
    assert_eq!(a.call("GET", "/healthz", None, None).await.0, StatusCode::OK, "the process itself is alive");
}

/// Only the run store fails while the token still checks out (a query
/// failing mid-request): the operator actions' store errors are the same
/// JSON 503, and `/readyz` names the store (the queue still answers).
async fn a_run_store_failing_behind_a_valid_token_is_a_503(stack: Stack) {
    let a = api(stack).await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let dead = oprun_shared::testing::TestStore::new(match stack {
        Stack::PostgresRedis => oprun_shared::testing::Backend::Postgres,
        Stack::Sqlite => oprun_shared::testing::Backend::Sqlite,
    })
    .await;
    lose(&dead).await;
    let service = Env::service_with(dead.store.clone(), Arc::new(SystemClock));
    let state = ApiState {
        operator: Operator::new(oprun_scheduler::Dispatcher::new(
            service,
            a.e.authorizer.clone(),
            a.e.queue.clone() as Arc<dyn JobQueue>,
        )),
        access: a.e.db.access.clone(),
        tokens: a.e.db.tokens.clone(),
        ticks: a.e.db.ticks.clone(),
        queue: a.e.queue.clone() as Arc<dyn JobQueue>,
        schedules: Arc::new(vec![]),
        clock: Arc::new(SystemClock),
        metrics: None,
    };
    let (router, _) = api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let b = Api { base, http: a.http.clone(), e: a.e };
    let id = uuid::Uuid::now_v7();
    for (m, p, body) in [
        ("GET", "/v1/runs".to_string(), None),
        ("GET", format!("/v1/runs/{id}"), None),
        ("GET", format!("/v1/runs/{id}/audit"), None),
        ("POST", format!("/v1/runs/{id}/retry"), Some("{}")),
        ("POST", format!("/v1/runs/{id}/cancel"), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some("{}")),
        ("POST", "/v1/reconcile".to_string(), Some(r#"{"dry_run": true}"#)),
    ] {
        let (status, v) = b.call(m, &p, Some(&ops), body).await;
        assert_eq!((status, error_code(&v)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{m} {p}: {v}");
        assert_eq!(v["error"]["message"], "the run store is unavailable; try again", "{m} {p}: no cause shown");
    }
    let (status, ready) = b.call("GET", "/readyz", None, None).await;
    assert_eq!((status, ready), (StatusCode::SERVICE_UNAVAILABLE, json!({"store": false, "queue": true})));
}

// ---- Operator reconcile over the API --------------------------------------

/// One query on the env's database, each row as text.
async fn rows(e: &Env, sql: &str) -> Vec<String> {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match e.stack {
        Stack::PostgresRedis => {
            let mut conn = sqlx::PgConnection::connect(&e.db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
        Stack::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&e.db.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

async fn audit_rows(e: &Env) -> usize {
    rows(e, "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events").await[0].parse().unwrap()
}

/// A running `test.slow` run in `ws`/`env` claimed an hour ago by a worker that vanished.
async fn stale_run(a: &Api, actor: &str, ws: &str, env: &str) -> uuid::Uuid {
    let run = a.dispatch(actor, ws, env, "test.slow", json!({})).await;
    let past = Arc::new(ManualClock::new(SystemClock.now() - chrono::Duration::hours(1)));
    Env::service_with(a.e.db.store.clone(), past).claim(run.id, "vanished-worker").await.unwrap();
    run.id
}

/// `POST /v1/reconcile` without a workspace: a caller holding
/// `runs.reconcile` nowhere (the viewer) is a 403 naming no workspace; the
/// operator's pass covers exactly its workspaces (contoso), not fabrikam's
/// stale run. Its dry run reports the same action but pushes no job and
/// writes no audit row; the real pass requeues and pushes.
async fn an_operator_reconcile_without_a_workspace_touches_only_its_workspaces(stack: Stack) {
    let a = api(stack).await;
    let contoso = stale_run(&a, "ops-user-1", "contoso", "contoso-moving").await;
    let fabrikam = stale_run(&a, "fab-user", "fabrikam", "fabrikam-prod").await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let (viewer, _) = a.token("viewer-1", None).await;
    let depth = a.e.queue.depth().await.unwrap();
    let audited = audit_rows(&a.e).await;
    for body in ["{}", r#"{"dry_run": true}"#] {
        let (status, v) = a.call("POST", "/v1/reconcile", Some(&viewer), Some(body)).await;
        assert_eq!((status, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("runs.reconcile") && !message.contains("contoso") && !message.contains("fabrikam"),
            "{v}"
        );
    }
    // The dry run: the action it would take, nothing done.
    let (status, dry) = a.call("POST", "/v1/reconcile", Some(&ops), Some(r#"{"dry_run": true}"#)).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true, "{dry}");
    let acted: Vec<&str> = dry["actions"].as_array().unwrap().iter().map(|x| x["run_id"].as_str().unwrap()).collect();
    assert_eq!(acted, vec![contoso.to_string()], "{dry}");
    assert_eq!(dry["actions"][0]["kind"], "requeued", "{dry}");
    assert_eq!(a.e.queue.depth().await.unwrap(), depth, "a dry run pushes nothing");
    assert_eq!(audit_rows(&a.e).await, audited, "a dry run writes no audit row");
    for id in [contoso, fabrikam] {
        let run = a.e.service.get(id).await.unwrap();
        assert_eq!((run.status, run.attempt), (RunStatus::Running, 1), "{id}");
    }
    // The real pass: contoso's run requeued and pushed, fabrikam's left alone.
    let (status, real) = a.call("POST", "/v1/reconcile", Some(&ops), Some("{}")).await;
    assert_eq!(status, StatusCode::OK, "{real}");
    let acted: Vec<&str> = real["actions"].as_array().unwrap().iter().map(|x| x["run_id"].as_str().unwrap()).collect();
    assert_eq!(acted, vec![contoso.to_string()], "{real}");
    let after = a.e.service.get(contoso).await.unwrap();
    assert_eq!((after.status, after.attempt), (RunStatus::Queued, 2));
    let untouched = a.e.service.get(fabrikam).await.unwrap();
    assert_eq!((untouched.status, untouched.attempt), (RunStatus::Running, 1), "another tenant's run is not touched");
    assert_eq!(a.e.queue.depth().await.unwrap(), depth.map(|d| d + 1), "the requeued run's job is pushed");
    assert!(audit_rows(&a.e).await > audited, "the real pass is audited");
    let trail: Vec<String> =
        a.e.service.audit(fabrikam).await.unwrap().iter().map(|x| x.entry.action.to_string()).collect();
    assert!(!trail.iter().any(|x| x.contains("requeue")), "{trail:?}");
}

// ---- access apply is one transaction ----------------------------------

const ACCESS_TABLES: [(&str, &str); 7] = [
    ("actors", "SELECT id || '|' || kind || '|' || display_name || '|' || status FROM actors ORDER BY 1"),
    ("workspaces", "SELECT id || '|' || name || '|' || status FROM workspaces ORDER BY 1"),
    ("environments", "SELECT id || '|' || workspace_id || '|' || name || '|' || status FROM environments ORDER BY 1"),
    ("roles", "SELECT name FROM roles ORDER BY 1"),
    ("role_capabilities", "SELECT role || '|' || capability FROM role_capabilities ORDER BY 1"),
    ("memberships", "SELECT actor_id || '|' || workspace_id || '|' || role FROM memberships ORDER BY 1"),
    (
        "provider_connections",
        "SELECT id || '|' || environment_id || '|' || provider || '|' || status FROM provider_connections ORDER BY 1",
    ),
];

async fn access_tables(e: &Env) -> Vec<(&'static str, Vec<String>)> {
    let mut out = vec![];
    for (table, sql) in ACCESS_TABLES {
        out.push((table, rows(e, sql).await));
    }
    out
}

/// `access apply` makes the access tables equal to the file in one
/// transaction: a file that changes every table and fails at its very last
/// write (a second provider connection with the first one's id: validation
/// refuses that, so the file is built past it, and the table's primary key
/// stops it) leaves every table as it was. The same file without that row
/// changes each of them, so the comparison can see a change.
async fn an_access_apply_failing_half_way_leaves_the_tables_as_they_were(stack: Stack) {
    let e = Env::new(stack).await;
    let before = access_tables(&e).await;
    let changed = ACCESS
        .replacen(
            "id = \"ops-user-1\"\nkind = \"user\"",
            "id = \"ops-user-1\"\nkind = \"user\"\ndisplay_name = \"Ops\"",
            1,
        )
        .replacen("[[workspaces]]\nid = \"fabrikam\"", "[[workspaces]]\nid = \"fabrikam\"\nname = \"Fabrikam Ltd\"", 1)
        .replacen(
            "id = \"contoso-dev\"\nworkspace = \"contoso\"",
            "id = \"contoso-dev\"\nworkspace = \"contoso\"\nstatus = \"suspended\"",
            1,
        )
        .replacen("viewer = [\"runs.view\"]", "viewer = [\"runs.view\"]\nauditor = [\"runs.view\"]", 1)
        .replacen(
            "[[memberships]]\n",
            "[[memberships]]\nactor = \"fab-user\"\nworkspace = \"contoso\"\nrole = \"auditor\"\n[[memberships]]\n",
            1,
        )
        .replacen(
            "environment = \"contoso-revoked\"\nprovider = \"graph\"",
            "environment = \"contoso-revoked\"\nprovider = \"graph\"\nstatus = \"consent_revoked\"",
            1,
        );
    let good = access(&changed);
    let mut bad = good.clone();
    bad.provider_connections.push(good.provider_connections[0].clone());
    assert!(bad.validate(None).is_err(), "validation alone would refuse it");
    let err = e.db.access.apply_access(&bad).await.expect_err("the duplicate connection is refused by the store");
    eprintln!("refused as expected: {err}");
    let after = access_tables(&e).await;
    for ((table, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{table} changed by an apply that failed");
    }
    e.db.access.apply_access(&good).await.unwrap();
    let applied = access_tables(&e).await;
    for ((table, was), (_, is)) in before.iter().zip(&applied) {
        assert_ne!(was, is, "the file changes {table}");
    }
}

both_stacks!(
    every_endpoint_checks_authority,
    bad_input_is_always_a_json_4xx,
    metrics_need_a_token_that_may_view_metrics_in_every_active_workspace,
    blocked_then_fixed_then_retried_succeeds_with_the_chain_audited,
    cancel_and_reconcile_through_the_api,
    schedules_show_recent_decisions_in_visible_workspaces_only,
    a_run_s_checkpoint_is_shown_only_to_workspace_admins,
    metrics_count_what_the_run_path_did,
    an_unreachable_store_is_a_503_and_readyz_says_so,
    a_run_store_failing_behind_a_valid_token_is_a_503,
    an_operator_reconcile_without_a_workspace_touches_only_its_workspaces,
    an_access_apply_failing_half_way_leaves_the_tables_as_they_were,
);
