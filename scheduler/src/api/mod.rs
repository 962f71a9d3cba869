//! The operator HTTP API (served by `oprun scheduler` and `oprun up`).
//! Bearer tokens map to actors; every read and action is authorized on the
//! server through [`Operator`]. Errors are JSON
//! `{"error": {"code": "...", "message": "..."}}`. The OpenAPI document at
//! `/v1/openapi.json` is generated from the route annotations below.

use std::sync::Arc;

use crate::config::ScheduleSpec;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use oprun_shared::{
    AccessStore, Clock, Initiator, JobQueue, METRICS_VIEW, ReconcileFilter, RunView, TickStore, TokenStore,
};
use serde_json::{Value, json};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::operator::Operator;

mod dispatch;
mod error;
mod input;
mod tokens;
mod ui;

pub use error::ApiError;
use error::{ApiResult, log_errors};
use input::{AuditQuery, BackfillBody, BulkBody, NoBody, PauseBody, body_json, bulk_filter, list_filter, path_run_id};
pub use input::{ListQuery, ReconcileBody, parse_empty_body, parse_list_query, parse_reconcile_body, parse_run_id};
use tokens::caller;
pub use tokens::{MAX_TOKEN_LIFETIME, TOKEN_PREFIX, expiry, hash_token, new_token};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// What the API serves.
#[derive(Clone)]
pub struct ApiState {
    /// Operator actions.
    pub operator: Operator,
    /// Access truth (actor kinds, metrics reach).
    pub access: Arc<dyn AccessStore>,
    /// API tokens.
    pub tokens: Arc<dyn TokenStore>,
    /// Tick records.
    pub ticks: Arc<dyn TickStore>,
    /// The queue (for readiness).
    pub queue: Arc<dyn JobQueue>,
    /// The configured schedules.
    pub schedules: Arc<Vec<ScheduleSpec>>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The Prometheus recorder's handle, when metrics are on.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

/// List runs the caller may see, newest first.
#[utoipa::path(get, path = "/v1/runs", params(ListQuery), responses(
    (status = 200, description = "{\"runs\": [run], \"next_before\": id|null}"),
    (status = 401, description = "no valid token"), (status = 422, description = "bad filter")))]
async fn list_runs(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Query(q) = query.map_err(|r| ApiError::invalid(r.body_text()))?;
    let filter = list_filter(q, state.clock.now())?;
    let limit = filter.limit;
    let runs = state.operator.reads().list(&actor.id, filter).await?;
    let next = if runs.len() == limit as usize { runs.last().map(|r| r.id) } else { None };
    let views: Vec<RunView> = runs.iter().map(RunView::from).collect();
    Ok(Json(json!({ "runs": views, "next_before": next })))
}

/// One run with its guidance for the caller.
#[utoipa::path(get, path = "/v1/runs/{id}", params(("id" = String, Path, description = "run id")), responses(
    (status = 200, description = "the run and its guidance"), (status = 404, description = "no such run in the caller's scope")))]
async fn show_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let detail = state.operator.reads().show(&actor.id, path_run_id(id)?).await?;
    Ok(Json(serde_json::to_value(detail).unwrap_or_default()))
}

/// A run's audit trail.
#[utoipa::path(get, path = "/v1/runs/{id}/audit", params(("id" = String, Path, description = "run id")), responses(
    (status = 200, description = "{\"events\": [...]}, oldest first"), (status = 404, description = "not found")))]
async fn run_audit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let events = state.operator.reads().audit(&actor.id, path_run_id(id)?).await?;
    Ok(Json(json!({ "events": events })))
}

/// Retry a blocked or failed run.
#[utoipa::path(post, path = "/v1/runs/{id}/retry", params(("id" = String, Path, description = "run id")), responses(
    (status = 201, description = "the new (or existing active) retry run"), (status = 403, description = "not allowed"),
    (status = 404, description = "not found"), (status = 409, description = "not retryable now")))]
async fn retry_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let actor = caller(&state, &headers).await?;
    let id = path_run_id(id)?;
    let _: NoBody = body_json(body)?;
    let r = state.operator.retry(&actor, id).await?;
    let status = if r.deduplicated { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(json!({ "run": RunView::from(&r.run), "deduplicated": r.deduplicated }))))
}

/// Cancel a queued run, or ask a running one to stop.
#[utoipa::path(post, path = "/v1/runs/{id}/cancel", params(("id" = String, Path, description = "run id")), responses(
    (status = 200, description = "{\"result\": \"cancelled\"|\"requested\", \"run\": run}"), (status = 403, description = "not allowed"),
    (status = 404, description = "not found"), (status = 409, description = "already completed")))]
async fn cancel_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let id = path_run_id(id)?;
    let _: NoBody = body_json(body)?;
    let (result, run) = match state.operator.cancel(&actor, id).await? {
        oprun_shared::Cancelled::Cancelled(run) => ("cancelled", run),
        oprun_shared::Cancelled::Requested(run) => ("requested", run),
    };
    Ok(Json(json!({ "result": result, "run": RunView::from(&run) })))
}

/// Retry every blocked or failed run a filter matches (each authorized and
/// audited on its own; `dry_run` lists them).
#[utoipa::path(post, path = "/v1/runs/retry", request_body = BulkBody, responses(
    (status = 200, description = "the report: matched, more, and per run what was done"),
    (status = 403, description = "no runs.retry anywhere"), (status = 422, description = "bad or empty filter")))]
async fn retry_by_filter(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    bulk(state, headers, body, crate::operator::BulkAction::Retry).await
}

/// Cancel every queued or running run a filter matches.
#[utoipa::path(post, path = "/v1/runs/cancel", request_body = BulkBody, responses(
    (status = 200, description = "the report: matched, more, and per run what was done"),
    (status = 403, description = "no runs.cancel anywhere"), (status = 422, description = "bad or empty filter")))]
async fn cancel_by_filter(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    bulk(state, headers, body, crate::operator::BulkAction::Cancel).await
}

async fn bulk(
    state: ApiState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: crate::operator::BulkAction,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let b: BulkBody = body_json(body)?;
    let filter = bulk_filter(&b)?;
    let report = state.operator.act_on_filter(&actor, action, filter, b.max, b.dry_run).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Pause a schedule (stored: every scheduler honours it); body `{"note": "…"}` or empty.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", params(("name" = String, Path, description = "schedule")),
    request_body = PauseBody, responses((status = 200, description = "{\"changed\": bool}"),
    (status = 403, description = "no schedules.manage"), (status = 404, description = "no such schedule")))]
async fn pause_schedule(
    State(state): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Path(name) = name.map_err(|r| ApiError::invalid(r.body_text()))?;
    let b: PauseBody = body_json(body)?;
    let changed = schedule_admin(&state).set_paused(&actor, &name, Some(b.note.as_deref())).await?;
    Ok(Json(json!({ "schedule": name, "paused": true, "changed": changed })))
}

/// Resume a paused schedule.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", params(("name" = String, Path, description = "schedule")),
    responses((status = 200, description = "{\"changed\": bool}"),
    (status = 403, description = "no schedules.manage"), (status = 404, description = "no such schedule")))]
async fn resume_schedule(
    State(state): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Path(name) = name.map_err(|r| ApiError::invalid(r.body_text()))?;
    let _: NoBody = body_json(body)?;
    let changed = schedule_admin(&state).set_paused(&actor, &name, None).await?;
    Ok(Json(json!({ "schedule": name, "paused": false, "changed": changed })))
}

/// One schedule the caller may see, with its recent ticks.
#[utoipa::path(get, path = "/v1/schedules/{name}", params(("name" = String, Path, description = "schedule")),
    responses((status = 200, description = "the schedule"), (status = 404, description = "no such schedule")))]
async fn show_schedule(
    State(state): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Path(name) = name.map_err(|r| ApiError::invalid(r.body_text()))?;
    let view = schedule_admin(&state).show(&actor.id, &name, 50).await?;
    Ok(Json(serde_json::to_value(view).unwrap_or_default()))
}

/// Fire a past range's unrecorded ticks once each (`schedules.manage`).
#[utoipa::path(post, path = "/v1/schedules/{name}/backfill", params(("name" = String, Path, description = "schedule")),
    request_body = BackfillBody, responses((status = 200, description = "{\"ticks\": [...]}"),
    (status = 403, description = "no schedules.manage"), (status = 404, description = "no such schedule"),
    (status = 422, description = "bad range")))]
async fn backfill_schedule(
    State(state): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Path(name) = name.map_err(|r| ApiError::invalid(r.body_text()))?;
    let b: BackfillBody = body_json(body)?;
    let (from, to) = b.range()?;
    let scheduler = crate::Scheduler::new(
        &state.schedules,
        state.operator.dispatcher().clone(),
        state.access.clone(),
        state.ticks.clone(),
        state.clock.clone(),
        format!("api-backfill-{}", uuid::Uuid::now_v7()),
        std::time::Duration::from_secs(5),
    )
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let ticks = schedule_admin(&state).backfill(&actor, &scheduler, &name, (from, to), b.dry_run).await?;
    Ok(Json(json!({ "schedule": name, "dry_run": b.dry_run, "ticks": ticks })))
}

/// The audit log of the workspaces where the caller holds `audit.view`,
/// newest first (rows of no workspace only for a caller holding it in every
/// active workspace).
#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses(
    (status = 200, description = "{\"events\": [...], \"next_before\": id|null}"),
    (status = 403, description = "no audit.view anywhere"), (status = 422, description = "bad filter")))]
async fn audit_log(
    State(state): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let Query(q) = query.map_err(|r| ApiError::invalid(r.body_text()))?;
    let mut filter = q.filter()?;
    let held =
        state.access.workspaces_with(&actor.id, oprun_shared::AUDIT_VIEW).await.map_err(ApiError::unavailable)?;
    if held.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the caller holds audit.view in no active workspace",
        ));
    }
    let active = state.access.active_workspaces().await.map_err(ApiError::unavailable)?;
    filter.include_unscoped = active.iter().all(|w| held.contains(w));
    filter.visible_workspaces = Some(held);
    let limit = filter.limit;
    let events =
        state.operator.dispatcher().service().store().list_audit(&filter).await.map_err(ApiError::unavailable)?;
    let next = if events.len() == limit as usize { events.last().map(|e| e.id) } else { None };
    Ok(Json(json!({ "events": events, "next_before": next })))
}

fn schedule_admin(state: &ApiState) -> crate::schedules::Schedules {
    crate::schedules::Schedules::new(state.operator.clone(), state.schedules.clone(), state.ticks.clone())
}

/// Move stale runs on (or, dry, report what would move).
#[utoipa::path(post, path = "/v1/reconcile", request_body = ReconcileBody, responses(
    (status = 200, description = "the reconcile report"), (status = 403, description = "not allowed")))]
async fn reconcile(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let b: ReconcileBody = body_json(body)?;
    let filter = ReconcileFilter { operation: b.operation, workspace_id: b.workspace, within: None };
    let report = state.operator.reconcile(&actor, &filter, b.dry_run).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// Schedules with their recent tick decisions (only those in workspaces the
/// caller may see).
#[utoipa::path(get, path = "/v1/schedules", responses((status = 200, description = "{\"schedules\": [...]}")))]
async fn schedules(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let views = schedule_admin(&state).list(&actor.id, 20).await?;
    let out: Vec<Value> = views
        .into_iter()
        .map(|v| {
            let mut j = serde_json::to_value(&v).unwrap_or_default();
            // The streak under its earlier name, for existing clients.
            j["consecutive_succeeded_ticks"] = json!(v.clean_streak);
            j
        })
        .collect();
    Ok(Json(json!({ "schedules": out })))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive")))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the store and the queue answer.
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready"), (status = 503, description = "not ready")))]
async fn readyz(State(state): State<ApiState>) -> Response {
    let store = state.operator.dispatcher().service().store().ping().await;
    let queue = state.queue.ping().await;
    let body = json!({ "store": store.is_ok(), "queue": queue.is_ok() });
    let status = if store.is_ok() && queue.is_ok() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Whether `actor` may read `/metrics`: its labels name schedules and
/// operations of every workspace, so the scraper needs `metrics.view` in
/// every active workspace (and there must be one: with none, a token of
/// nobody in particular does not pass for everyone). The refusal names no
/// workspace.
async fn may_view_metrics(state: &ApiState, actor: &Initiator) -> ApiResult<()> {
    let held = state.access.workspaces_with(&actor.id, METRICS_VIEW).await.map_err(ApiError::unavailable)?;
    let active = state.access.active_workspaces().await.map_err(ApiError::unavailable)?;
    if held.is_empty() || active.iter().any(|w| !held.contains(w)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "metrics name every workspace's schedules and operations: the caller needs {METRICS_VIEW} in every active workspace"
            ),
        ));
    }
    Ok(())
}

/// Prometheus metrics (text exposition format). Needs a bearer token whose
/// actor holds `metrics.view` in every active workspace.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format"),
    (status = 401, description = "no valid token"), (status = 403, description = "no metrics.view in every active workspace"),
    (status = 503, description = "metrics are off")))]
async fn prometheus(State(state): State<ApiState>, headers: HeaderMap) -> ApiResult<Response> {
    let actor = caller(&state, &headers).await?;
    may_view_metrics(&state, &actor).await?;
    if state.metrics.is_some()
        && let Ok(Some(depth)) = state.queue.depth().await
    {
        metrics::gauge!("oprun_queue_depth").set(depth as f64);
    }
    match &state.metrics {
        Some(h) => Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.render()).into_response()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_off",
            "metrics are not enabled in this process",
        )),
    }
}

#[derive(OpenApi)]
#[openapi(info(title = "oprun operator API", description = "Runs, guidance, retry, cancel, reconcile, schedules."))]
struct ApiDoc;

/// The router and its generated OpenAPI document.
pub fn router(state: ApiState) -> (Router, utoipa::openapi::OpenApi) {
    let dashboard = ui::router(state.clone());
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_runs, dispatch::dispatch_run))
        .routes(routes!(show_run))
        .routes(routes!(run_audit))
        .routes(routes!(retry_run))
        .routes(routes!(cancel_run))
        .routes(routes!(retry_by_filter))
        .routes(routes!(cancel_by_filter))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(show_schedule))
        .routes(routes!(backfill_schedule))
        .routes(routes!(audit_log))
        .routes(routes!(reconcile))
        .routes(routes!(schedules))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(dispatch::dispatch_batch))
                .layer(DefaultBodyLimit::max(dispatch::MAX_BATCH_BYTES)),
        )
        .with_state(state)
        .split_for_parts();
    let served = doc.clone();
    let router = router
        .route("/v1/openapi.json", axum::routing::get(move || async move { Json(served) }))
        .merge(dashboard)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(log_errors));
    (router, doc)
}

/// The metrics listener of a process that serves no API (`oprun worker`):
/// `/metrics` (the same token rule as the API's), `/healthz`, `/readyz`.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(prometheus))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(log_errors))
        .with_state(state)
}

/// Serve the metrics listener on `listener` until `shutdown` resolves.
pub async fn serve_metrics_on(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    axum::serve(listener, metrics_router(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "operator API listening");
    }
    let (router, _) = router(state);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
