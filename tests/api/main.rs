//! The operator HTTP API over real HTTP: authority on every endpoint, the
//! retry chain end to end, cancel, reconcile, bad input always a JSON 4xx,
//! and a generated OpenAPI document naming every route.

#[path = "../common/mod.rs"]
mod common;

mod actions;
mod authority;
mod dispatch;
mod health;
mod input;
mod metrics;
mod reads;

use std::sync::Arc;
use std::time::Duration;

use oprun_scheduler::api::ApiState;
use oprun_scheduler::{DispatchOutcome, Operator, api};
use oprun_shared::{
    Clock, DispatchRequest, Initiator, JobQueue, ManualClock, OperationRun, Scope, SourceSurface, SystemClock,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{ACCESS, Env, Stack};

/// One Prometheus recorder per test process.
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static H: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> = std::sync::OnceLock::new();
    H.get_or_init(|| oprun::metrics::prometheus_builder().install_recorder().expect("recorder")).clone()
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
    let base = serve(state(&e, Operator::new(e.dispatcher.clone()), schedules, Some(metrics_handle()))).await;
    // Every request is bounded: a hung handler fails the test instead of hanging it.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("the test HTTP client");
    Api { base, http, e }
}

/// The API's state over `e`'s access, token and tick stores and its queue,
/// acting through `operator`.
fn state(
    e: &Env,
    operator: Operator,
    schedules: Vec<oprun_scheduler::config::ScheduleSpec>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> ApiState {
    ApiState {
        operator,
        access: e.db.access.clone(),
        tokens: e.db.tokens.clone(),
        ticks: e.db.ticks.clone(),
        queue: e.queue.clone() as Arc<dyn JobQueue>,
        schedules: Arc::new(schedules),
        clock: Arc::new(SystemClock),
        metrics,
    }
}

/// Serve the API over `state` on a local port; its base URL.
async fn serve(state: ApiState) -> String {
    let (router, _) = api::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
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
            available_at: None,
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

    /// Claim run `id` as a worker that vanished an hour ago (its lease long
    /// expired: the run is stale).
    async fn claim_as_vanished_worker(&self, id: uuid::Uuid) {
        let past = Arc::new(ManualClock::new(SystemClock.now() - chrono::Duration::hours(1)));
        Env::service_with(self.e.db.store.clone(), past).claim(id, "vanished-worker").await.unwrap();
    }
}

fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {v}"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route() {
    let a = api(Stack::Sqlite).await;
    let (status, doc) = a.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("get", "/v1/runs"),
        ("post", "/v1/runs"),
        ("post", "/v1/runs/batch"),
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
    // The document holds together as a validator checks it: each path
    // parameter is a `{…}` segment of its path and every such segment is a
    // declared path parameter; query parameters are `in: query`, and no
    // parameter appears twice in one operation.
    for (path, item) in paths {
        let segments: Vec<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        for (method, op) in item.as_object().unwrap() {
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let mut seen = std::collections::BTreeSet::new();
            for p in &params {
                let (name, place) = (p["name"].as_str().unwrap(), p["in"].as_str().unwrap());
                assert!(["path", "query", "header", "cookie"].contains(&place), "{method} {path}: {name} in {place}");
                assert!(seen.insert((name, place)), "{method} {path}: {name} declared twice");
                if place == "path" {
                    assert!(segments.contains(&name), "{method} {path}: path parameter '{name}' is not in the path");
                    assert_eq!(p["required"], true, "{method} {path}: path parameter '{name}' must be required");
                }
            }
            for seg in &segments {
                assert!(
                    seen.contains(&(*seg, "path")),
                    "{method} {path}: '{{{seg}}}' is not a declared path parameter"
                );
            }
        }
    }
    let list = doc["paths"]["/v1/runs"]["get"]["parameters"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|p| p["name"].as_str().unwrap()).collect();
    for want in ["status", "outcome", "operation", "workspace", "waiting", "before", "limit"] {
        assert!(names.contains(&want), "GET /v1/runs documents '{want}': {names:?}");
    }
    assert!(list.iter().all(|p| p["in"] == "query"), "GET /v1/runs filters are query parameters: {list:?}");
    // And every documented route answers something other than the fallback.
    for (path, item) in paths {
        let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
        for method in item.as_object().unwrap().keys() {
            let (_, v) = a.call(&method.to_uppercase(), &concrete, None, Some("{}")).await;
            assert_ne!(v["error"]["message"], "no such endpoint", "{method} {path}");
        }
    }
}

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

both_stacks!(
    authority: [
        every_endpoint_checks_authority,
        an_access_apply_failing_half_way_leaves_the_tables_as_they_were,
    ],
    input: [
        bad_input_is_always_a_json_4xx,
    ],
    reads: [
        schedules_show_recent_decisions_in_visible_workspaces_only,
        a_run_s_checkpoint_is_shown_only_to_workspace_admins,
        runs_are_filtered_and_cancelled_by_filter,
    ],
    actions: [
        blocked_then_fixed_then_retried_succeeds_with_the_chain_audited,
        cancel_and_reconcile_through_the_api,
        an_operator_reconcile_without_a_workspace_touches_only_its_workspaces,
    ],
    metrics: [
        metrics_need_a_token_that_may_view_metrics_in_every_active_workspace,
        metrics_count_what_the_run_path_did,
    ],
    dispatch: [
        dispatch_over_http_answers_every_status,
        a_batch_dispatches_a_thousand_runs_in_one_request,
    ],
    health: [
        an_unreachable_store_is_a_503_and_readyz_says_so,
        a_run_store_failing_behind_a_valid_token_is_a_503,
    ],
);
