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

async fn api_with(stack: Stack, schedules: Vec<oprun_shared::config::ScheduleSpec>) -> Api {
    let e = Env::new(stack).await;
    let state = ApiState {
        operator: Operator::new(e.dispatcher.clone()),
        access: e.db.access.clone(),
        queue: e.queue.clone() as Arc<dyn JobQueue>,
        schedules: Arc::new(schedules),
        clock: Arc::new(SystemClock),
        metrics: Some(metrics_handle()),
    };
    let (router, _) = api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Api { base, http: reqwest::Client::new(), e }
}

impl Api {
    async fn token(&self, actor: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> (String, String) {
        let (token, id, hash) = api::new_token();
        self.e.db.access.create_token(&id, &hash, actor, SystemClock.now(), expires_at).await.unwrap();
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
    assert!(a.e.db.access.revoke_token(&revoked_id, SystemClock.now()).await.unwrap());
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
    let cases: Vec<(&str, String, Option<String>, StatusCode)> = vec![
        ("GET", "/v1/runs/not-a-uuid".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs?status=sleeping".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs?limit=0".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs?limit=many".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs?colour=red".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs?before=123".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/v1/reconcile".into(), Some("{not json".into()), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/v1/reconcile".into(), Some(r#"{"dry_run": "yes"}"#.into()), StatusCode::UNPROCESSABLE_ENTITY),
        (
            "POST",
            "/v1/reconcile".into(),
            Some(r#"{"dry_run": true, "force": 1}"#.into()),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("POST", "/v1/reconcile".into(), Some(big), StatusCode::PAYLOAD_TOO_LARGE),
        ("POST", format!("/v1/runs/{}/retry", run.id), Some(r#"{"x": 1}"#.into()), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/v1/runs/%00/cancel".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/nothing-here".into(), None, StatusCode::NOT_FOUND),
        // A path segment that is not UTF-8 once percent-decoded.
        ("GET", "/v1/runs/%FF".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("GET", "/v1/runs/%C3%28/audit".into(), None, StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/v1/runs/%FF/retry".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY),
        ("POST", "/v1/runs/abc%FE%FF/cancel".into(), Some("{}".into()), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (m, p, b, want) in cases {
        let (status, v) = a.call(m, &p, Some(&ops), b.as_deref()).await;
        assert_eq!(status, want, "{m} {p}: {v}");
        assert!(!error_code(&v).is_empty());
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
    let (status, again) = a.call("POST", &format!("/v1/runs/{}/retry", run.id), Some(&ops), None).await;
    if status == StatusCode::OK {
        assert_eq!(again["deduplicated"], true, "a second retry while the first is active returns it");
        assert_eq!(again["run"]["id"], v["run"]["id"]);
    } else {
        // The first retry already finished: the old run may be retried again only if still blocked — it is.
        assert_eq!(status, StatusCode::CREATED, "{again}");
    }
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
    let spec = |name: &str, ws: &str, env: &str| -> oprun_shared::config::ScheduleSpec {
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
    let access = &a.e.db.access;
    let t1: chrono::DateTime<chrono::Utc> = "2026-11-02T09:00:00Z".parse().unwrap();
    let t2 = t1 + chrono::Duration::minutes(5);
    let now = SystemClock.now();
    access.claim_tick("contoso-sync", t1, oprun_shared::TickDecision::SkippedMisfire, "s", now).await.unwrap();
    access.claim_tick("contoso-sync", t2, oprun_shared::TickDecision::Claimed, "s", now).await.unwrap();
    access.decide_tick("contoso-sync", t2, oprun_shared::TickDecision::Fired, &[run.id], &json!({})).await.unwrap();
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

both_stacks!(
    every_endpoint_checks_authority,
    bad_input_is_always_a_json_4xx,
    metrics_need_a_token_that_may_view_metrics_in_every_active_workspace,
    blocked_then_fixed_then_retried_succeeds_with_the_chain_audited,
    cancel_and_reconcile_through_the_api,
    schedules_show_recent_decisions_in_visible_workspaces_only,
    a_run_s_checkpoint_is_shown_only_to_workspace_admins,
);
