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
use chrono::{DateTime, Utc};
use oprun_shared::{
    AccessStore, Clock, Initiator, JobQueue, METRICS_VIEW, ReconcileFilter, RunFilter, RunOutcome, RunStatus, RunView,
    TickStore, TokenStore,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::operator::{ActionError, Operator};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Token prefix (so that leaked tokens are recognisable by scanners).
pub const TOKEN_PREFIX: &str = "oprun_";

/// The SHA-256 of a token, hex: the only form a token is stored in.
pub fn hash_token(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// A new token: `oprun_<id>_<secret>`, its public id, and its hash.
pub fn new_token() -> (String, String, String) {
    let id = Uuid::new_v4().simple().to_string()[..12].to_string();
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let hash = hash_token(&token);
    (token, id, hash)
}

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

/// An API error: a status and a JSON body, and the cause behind a 5xx
/// (never shown to the caller; logged once, by [`log_errors`]).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: Option<String>,
}

/// What a failed response carries for [`log_errors`] to log.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    cause: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), cause: None }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    fn unavailable(e: impl std::fmt::Display) -> Self {
        let mut err =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the run store is unavailable; try again");
        err.cause = Some(e.to_string());
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(Failure { code: self.code, cause: self.cause });
        response
    }
}

/// Log every error response once, with its route (as axum's error-handling
/// example does): a server error as a warning with its cause, a refused
/// request at debug.
async fn log_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if let Some(f) = response.extensions().get::<Failure>() {
        let status = response.status().as_u16();
        match &f.cause {
            Some(cause) => tracing::warn!(%method, %path, status, code = f.code, error = %cause, "api: request failed"),
            None => tracing::debug!(%method, %path, status, code = f.code, "api: request refused"),
        }
    }
    response
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> Self {
        let status = match &e {
            ActionError::NotFound(_) => StatusCode::NOT_FOUND,
            ActionError::Forbidden(_) => StatusCode::FORBIDDEN,
            ActionError::Conflict(_) => StatusCode::CONFLICT,
            ActionError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ActionError::Store(_) => return ApiError::unavailable(&e),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The caller behind the bearer token.
async fn caller(state: &ApiState, headers: &HeaderMap) -> ApiResult<Initiator> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with(TOKEN_PREFIX))
        .ok_or_else(ApiError::unauthorized)?;
    let actor = state
        .tokens
        .token_actor(&hash_token(token), state.clock.now())
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(ApiError::unauthorized)?;
    let kind = state.access.actor_kind(&actor).await.map_err(ApiError::unavailable)?;
    Ok(if kind.as_deref() == Some("service") { Initiator::service(actor) } else { Initiator::user(actor) })
}

/// The run id of a `/v1/runs/{id}…` path. A segment that does not decode
/// (not UTF-8 once percent-decoded) is the same JSON 422 as any other bad id,
/// not axum's plain-text rejection.
fn path_run_id(path: Result<Path<String>, PathRejection>) -> ApiResult<Uuid> {
    match path {
        Ok(Path(raw)) => run_id(&raw),
        Err(r) => Err(ApiError::invalid(format!("the run id in the path: {} (a run id is a UUID)", r.body_text()))),
    }
}

fn run_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::invalid(format!("'{}' is not a run id (a UUID)", raw.escape_debug())))
}

fn body_json<T: serde::de::DeserializeOwned + Default>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("bodies are at most {MAX_BODY_BYTES} bytes"),
        ),
        _ => ApiError::invalid(r.body_text()),
    })?;
    parse_body(&bytes)
}

/// A JSON request body as the handlers read it: only whitespace is `T::default()`.
fn parse_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("request body: {e}")))
}

// What the API makes of untrusted input, without a server or a store. The
// handlers use the same code; these are public for the fuzz target
// `fuzz/fuzz_targets/api_bodies.rs`.

/// The body of `POST /v1/reconcile`.
pub fn parse_reconcile_body(bytes: &[u8]) -> Result<ReconcileBody, ApiError> {
    parse_body(bytes)
}

/// The (empty) body of `POST /v1/runs/{id}/retry` and `/cancel`.
pub fn parse_empty_body(bytes: &[u8]) -> Result<(), ApiError> {
    parse_body::<NoBody>(bytes).map(|_| ())
}

/// The query string of `GET /v1/runs` (what follows `?`), as the run filter.
pub fn parse_list_query(query: &str) -> Result<RunFilter, ApiError> {
    let uri: axum::http::Uri =
        format!("/v1/runs?{query}").parse().map_err(|_| ApiError::invalid("not a valid request URI"))?;
    let Query(q) = Query::<ListQuery>::try_from_uri(&uri).map_err(|r| ApiError::invalid(r.body_text()))?;
    list_filter(q)
}

/// The `{id}` of `/v1/runs/{id}…`.
pub fn parse_run_id(raw: &str) -> Result<Uuid, ApiError> {
    run_id(raw)
}

/// Filters of `GET /v1/runs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// queued, running or completed.
    status: Option<String>,
    /// An outcome.
    outcome: Option<String>,
    /// One operation.
    operation: Option<String>,
    /// One workspace.
    workspace: Option<String>,
    /// Cursor: runs older than this id.
    before: Option<String>,
    /// Page size, 1–1000 (default 50).
    limit: Option<u32>,
}

/// The run filter of a `GET /v1/runs` query.
fn list_filter(q: ListQuery) -> ApiResult<RunFilter> {
    let status = q.status.map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::invalid(e.to_string()))).transpose()?;
    let outcome =
        q.outcome.map(|s| s.parse::<RunOutcome>().map_err(|e| ApiError::invalid(e.to_string()))).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1–1000"));
    }
    let before = q.before.as_deref().map(run_id).transpose()?;
    Ok(RunFilter {
        workspace_id: q.workspace,
        operation: q.operation,
        status,
        outcome,
        before,
        limit,
        ..RunFilter::default()
    })
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
    let filter = list_filter(q)?;
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

/// The (empty) body of retry and cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoBody {}

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

/// Body of `POST /v1/reconcile`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileBody {
    /// Report only.
    #[serde(default)]
    dry_run: bool,
    /// Only this operation.
    operation: Option<String>,
    /// Only this workspace.
    workspace: Option<String>,
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
    let visible = state.operator.reads().visible_workspaces(&actor.id).await?;
    let mut out = vec![];
    for s in state.schedules.iter().filter(|s| visible.contains(&s.workspace)) {
        let ticks = state.ticks.ticks(&s.name, 20).await.map_err(ApiError::unavailable)?;
        let mut succeeded_streak = 0;
        for t in &ticks {
            if t.decision != oprun_shared::TickDecision::Fired {
                break;
            }
            let mut all_ok = !t.run_ids.is_empty();
            for id in &t.run_ids {
                let run = state.operator.dispatcher().service().get(*id).await;
                all_ok &= matches!(run, Ok(r) if r.outcome == RunOutcome::Succeeded);
            }
            if !all_ok {
                break;
            }
            succeeded_streak += 1;
        }
        let recent: Vec<Value> = ticks
            .iter()
            .map(|t| json!({ "scheduled_for": t.scheduled_for, "decision": t.decision, "run_ids": t.run_ids }))
            .collect();
        out.push(json!({
            "name": s.name, "cron": s.cron, "timezone": s.timezone, "operation": s.operation,
            "workspace": s.workspace, "environment": s.environment, "enabled": s.enabled,
            "recent_ticks": recent, "consecutive_succeeded_ticks": succeeded_streak,
        }));
    }
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
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_runs))
        .routes(routes!(show_run))
        .routes(routes!(run_audit))
        .routes(routes!(retry_run))
        .routes(routes!(cancel_run))
        .routes(routes!(reconcile))
        .routes(routes!(schedules))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(prometheus))
        .with_state(state)
        .split_for_parts();
    let served = doc.clone();
    let router = router
        .route("/v1/openapi.json", axum::routing::get(move || async move { Json(served) }))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(log_errors));
    (router, doc)
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

/// The longest token lifetime, `10y` (humantime's years of 365.25 days). A
/// token that should outlive it is one that is never rotated: make it without
/// `--expires-in` (until revoked) and say so.
pub const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(10 * 31_557_600);

/// A token's expiry from a `--expires-in` duration; an error rather than a
/// wrapped or missing expiry when it cannot be represented.
pub fn expiry(now: DateTime<Utc>, expires_in: Option<std::time::Duration>) -> Result<Option<DateTime<Utc>>, String> {
    let Some(d) = expires_in else { return Ok(None) };
    let too_long = || format!("--expires-in: {} s is too far in the future", d.as_secs());
    let d = chrono::Duration::from_std(d).map_err(|_| too_long())?;
    now.checked_add_signed(d).map(Some).ok_or_else(too_long)
}
