//! `/metrics`: who may scrape it, and exactly what the run path counted.

use std::sync::Arc;
use std::time::Duration;

use oprun_shared::{JobQueue, ManualClock, RunOutcome};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, api, error_code, with_monitoring};
use crate::common;
use crate::common::{Env, Stack, access};

pub(crate) async fn metrics_need_a_token_that_may_view_metrics_in_every_active_workspace(stack: Stack) {
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
    (oprun_worker::http::Providers::from_config(&config.providers, config.dir(), &Default::default()).unwrap(), dir)
}

/// `/metrics` counts what the run path did, exactly: this process's
/// recorder saw only this test's runs (nextest runs one test per process).
/// Three counted runs, one provider call that met a 429 (Retry-After 1 s)
/// and a 503 before its 200, a cancelled slow run (a lease held while it
/// ran), one stale run requeued by an operator's reconcile (after a dry run,
/// which counts nothing), and a schedule's ticks: one fired, six missed.
pub(crate) async fn metrics_count_what_the_run_path_did(stack: Stack) {
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
    a.claim_as_vanished_worker(stale.id).await;
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
        ("oprun_provider_throttle_wait_seconds_sum", vec![("provider", "graph")], 1.0),
        ("oprun_provider_throttle_wait_seconds_count", vec![("provider", "graph")], 1.0),
        ("oprun_reconcile_actions_total", vec![("kind", "requeued")], 1.0),
        ("oprun_schedule_ticks_total", vec![("schedule", "metrics-five"), ("decision", "fired")], 1.0),
        ("oprun_schedule_ticks_total", vec![("schedule", "metrics-five"), ("decision", "skipped_misfire")], 6.0),
        ("oprun_active_leases", vec![], 0.0),
    ];
    for (name, labels, value) in &want {
        assert_eq!(sample(&text, name, labels), Some(*value), "{name}{labels:?}: {text}");
    }
    // Durations and waits are histograms (aggregatable across workers), not
    // per-process summaries: buckets from milliseconds to an hour.
    assert!(!text.contains("quantile="), "no summaries: {text}");
    for name in ["oprun_run_duration_seconds", "oprun_queue_latency_seconds"] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{name} is a histogram: {text}");
        for le in ["0.005", "3600", "+Inf"] {
            assert!(
                text.contains(&format!("{name}_bucket{{")) && text.contains(&format!("le=\"{le}\"")),
                "{name} le={le}"
            );
        }
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
