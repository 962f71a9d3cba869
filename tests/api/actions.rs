//! Operator actions: retry (the blocked-fixed-retried chain), cancel and reconcile over the API.

use std::time::Duration;

use oprun_shared::{Initiator, JobQueue, RunOutcome, RunStatus, SourceSurface};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, api, error_code, rows, with_monitoring};
use crate::common::{ACCESS, Env, Stack, access};

pub(crate) async fn blocked_then_fixed_then_retried_succeeds_with_the_chain_audited(stack: Stack) {
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
    assert_eq!(shown["guidance"]["technical_details"]["reason_code"], "execution.environment_not_operable", "{shown}");
    // Retrying before the fix is refused now, not queued to fail again.
    let (status, v) = a.call("POST", &format!("/v1/runs/{}/retry", run.id), Some(&ops), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    // The envelope is the resolution-case contract's: a stable case key, the
    // scope's type, the run's source surface.
    let g = &shown["guidance"];
    assert_eq!(g["key"], "operation_run.blocked.environment_not_operable", "{g}");
    assert_eq!(
        (g["run_id"].as_str(), g["scope"]["type"].as_str()),
        (Some(run.id.to_string().as_str()), Some("environment"))
    );
    assert!(g["source_surface"].is_string(), "{g}");
    // Fix the access truth: the case says the cause is fixed and makes the
    // retry its primary action, with the API path that performs it.
    a.e.db.access.apply_access(&access(ACCESS)).await.unwrap();
    let (_, shown) = a.call("GET", &format!("/v1/runs/{}", run.id), Some(&ops), None).await;
    let primary = &shown["guidance"]["primary_action"];
    assert_eq!(primary["key"], "retry", "{shown}");
    assert_eq!(primary["url"], format!("/v1/runs/{}/retry", run.id));
    assert_eq!((primary["method"].as_str(), primary["requires_confirmation"].as_bool()), (Some("POST"), Some(true)));
    assert_eq!(
        (primary["audit_event"].as_str(), primary["operation_run_type"].as_str()),
        (Some("run.retry"), Some(run.operation.as_str()))
    );
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

pub(crate) async fn cancel_and_reconcile_through_the_api(stack: Stack) {
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
    a.claim_as_vanished_worker(stale.id).await;
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

async fn audit_rows(e: &Env) -> usize {
    rows(e, "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events").await[0].parse().unwrap()
}

/// A running `test.slow` run in `ws`/`env` claimed an hour ago by a worker that vanished.
async fn stale_run(a: &Api, actor: &str, ws: &str, env: &str) -> uuid::Uuid {
    let run = a.dispatch(actor, ws, env, "test.slow", json!({})).await;
    a.claim_as_vanished_worker(run.id).await;
    run.id
}

/// `POST /v1/reconcile` without a workspace: a caller holding
/// `runs.reconcile` nowhere (the viewer) is a 403 naming no workspace; the
/// operator's pass covers exactly its workspaces (contoso), not fabrikam's
/// stale run. Its dry run reports the same action but pushes no job and
/// writes no audit row; the real pass requeues and pushes.
pub(crate) async fn an_operator_reconcile_without_a_workspace_touches_only_its_workspaces(stack: Stack) {
    let a = api(stack).await;
    let contoso = stale_run(&a, "ops-user-1", "contoso", "contoso-moving").await;
    let fabrikam = stale_run(&a, "fab-user", "fabrikam", "fabrikam-prod").await;
    let (ops, _) = a.token("ops-user-1", None).await;
    let (viewer, _) = a.token("viewer-1", None).await;
    let depth = a.e.queue.depth().await.unwrap();
    let before = audit_rows(&a.e).await;
    for body in ["{}", r#"{"dry_run": true}"#] {
        let (status, v) = a.call("POST", "/v1/reconcile", Some(&viewer), Some(body)).await;
        assert_eq!((status, error_code(&v)), (StatusCode::FORBIDDEN, "forbidden"), "{body}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("runs.reconcile") && !message.contains("contoso") && !message.contains("fabrikam"),
            "{v}"
        );
    }
    let audited = audit_rows(&a.e).await;
    assert_eq!(audited, before + 2, "each refusal is audited (operator.refused) with the caller");
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
