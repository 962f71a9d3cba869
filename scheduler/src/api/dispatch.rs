//! Dispatch over HTTP: `POST /v1/runs` (one run, the caller's token as the
//! actor, authorized exactly like `oprun dispatch`) and `POST
//! /v1/runs/batch` (up to 1,000, the allowed ones written in one
//! transaction). An `Idempotency-Key` header makes a repeated request by the
//! same caller within [`IDEMPOTENCY_WINDOW`] return the run the first one
//! made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use oprun_shared::{DispatchRequest, Initiator, InitiatorFilter, RunFilter, RunView, Scope, SourceSurface};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::input::body_json;
use super::{ApiState, caller};
use crate::dispatch::{DispatchError, DispatchOutcome};

/// How long an idempotency key returns the run it made.
pub const IDEMPOTENCY_WINDOW: chrono::Duration = chrono::Duration::hours(24);
/// The most runs one batch dispatches.
pub const MAX_BATCH: usize = 1000;
/// The largest batch body (1,000 runs of ~1 KiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The furthest `available_at` may be.
const MAX_DELAY: chrono::Duration = chrono::Duration::days(366);

/// One run to dispatch.
#[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DispatchBody {
    /// The operation (a catalog name).
    #[serde(default)]
    operation: String,
    /// The workspace.
    #[serde(default)]
    workspace: String,
    /// The managed environment, for an environment-scoped operation.
    environment: Option<String>,
    /// The target's kind.
    target_type: Option<String>,
    /// The target's id.
    target_id: Option<String>,
    /// The parameters: a JSON object (default `{}`).
    #[schema(value_type = Object)]
    params: Option<Value>,
    /// Start no earlier than this RFC 3339 time (at most a year ahead).
    available_at: Option<String>,
}

/// Several runs to dispatch.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// 1–1,000 runs.
    #[serde(default)]
    runs: Vec<DispatchBody>,
}

/// Keys being dispatched right now in this process: a repeat waits for the
/// first instead of racing it. (Across API processes two requests with one
/// key at the same instant can still both dispatch.)
static IN_FLIGHT: std::sync::LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
    std::sync::LazyLock::new(Mutex::default);

fn lock_for(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = IN_FLIGHT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.retain(|_, m| Arc::strong_count(m) > 1);
    map.entry(key.to_string()).or_default().clone()
}

/// The `Idempotency-Key` header: 1–255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().ok().map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid("Idempotency-Key: must be 1–255 printable ASCII characters"));
    }
    Ok(Some(key.to_string()))
}

fn text_field(name: &str, v: &Option<String>) -> ApiResult<()> {
    match v {
        Some(s) if s.is_empty() || s.len() > 200 || s.chars().any(char::is_control) => {
            Err(ApiError::invalid(format!("{name}: must be 1–200 printable characters")))
        }
        _ => Ok(()),
    }
}

impl DispatchBody {
    /// The dispatch request, `at` naming the field's place (`runs[3].`).
    fn request(self, state: &ApiState, actor: &Initiator, key: Option<&str>, at: &str) -> ApiResult<DispatchRequest> {
        let field = |f: &str| format!("{at}{f}");
        if self.operation.is_empty() {
            return Err(ApiError::invalid(format!("{}: required", field("operation"))));
        }
        let catalog = state.operator.dispatcher().service().catalog();
        if catalog.get(&self.operation).is_none() {
            let known: Vec<&str> = catalog.operations.keys().map(String::as_str).collect();
            return Err(ApiError::invalid(format!(
                "{}: unknown operation '{}' (this deployment knows: {})",
                field("operation"),
                self.operation.escape_debug(),
                known.join(", ")
            )));
        }
        if self.workspace.is_empty() {
            return Err(ApiError::invalid(format!("{}: required", field("workspace"))));
        }
        text_field(&field("workspace"), &Some(self.workspace.clone()))?;
        text_field(&field("environment"), &self.environment)?;
        text_field(&field("target_type"), &self.target_type)?;
        text_field(&field("target_id"), &self.target_id)?;
        let params = match self.params {
            None => json!({}),
            Some(v) if v.is_object() => v,
            Some(_) => return Err(ApiError::invalid(format!("{}: must be a JSON object", field("params")))),
        };
        let now = state.clock.now();
        let available_at = self
            .available_at
            .map(|s| {
                let t = DateTime::parse_from_rfc3339(&s).map(|t| t.with_timezone(&Utc)).map_err(|_| {
                    ApiError::invalid(format!(
                        "{}: '{}' is not an RFC 3339 time",
                        field("available_at"),
                        s.escape_debug()
                    ))
                })?;
                if t > now + MAX_DELAY {
                    return Err(ApiError::invalid(format!(
                        "{}: at most a year (366d) from now",
                        field("available_at")
                    )));
                }
                Ok(t)
            })
            .transpose()?;
        let mut context = json!({ "correlation_id": uuid::Uuid::now_v7() });
        if let Some(k) = key {
            context["idempotency_key"] = json!(k);
        }
        Ok(DispatchRequest {
            operation: self.operation,
            scope: Scope {
                workspace_id: self.workspace,
                environment_id: self.environment,
                target_type: self.target_type,
                target_id: self.target_id,
            },
            initiator: actor.clone(),
            source: SourceSurface::Api,
            context,
            params,
            available_at,
        })
    }
}

/// A workspace the caller cannot see is not found (as a run there is).
async fn visible(state: &ApiState, actor: &Initiator, workspace: &str) -> ApiResult<bool> {
    Ok(state.operator.reads().visible_workspaces(&actor.id).await?.contains(workspace))
}

fn not_found(workspace: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("workspace '{}' not found", workspace.escape_debug()))
}

/// The run an earlier request with `key` by `actor` made within the window.
async fn replay(state: &ApiState, actor: &Initiator, key: &str) -> ApiResult<Option<oprun_shared::OperationRun>> {
    let filter = RunFilter {
        idempotency_key: Some(key.to_string()),
        initiator: Some(InitiatorFilter { kind: Some(actor.kind), id: actor.id.clone() }),
        created_after: Some(state.clock.now() - IDEMPOTENCY_WINDOW),
        limit: 1,
        ..RunFilter::default()
    };
    let runs = state.operator.dispatcher().service().list(&filter).await.map_err(ApiError::unavailable)?;
    Ok(runs.into_iter().next())
}

/// A refusal as the API answers it: 403 with the `execution.*` reason and
/// its translation for the caller.
async fn refused(state: &ApiState, actor: &Initiator, workspace: &str, reason: &str, message: &str) -> ApiError {
    let viewer = state.operator.dispatcher().authorizer().viewer(&actor.id, workspace).await;
    let envelope = viewer.ok().map(|v| oprun_shared::translate(reason, &v));
    ApiError::new(StatusCode::FORBIDDEN, "dispatch_refused", message.to_string()).with(json!({
        "reason_code": reason,
        "reason": envelope.map(|e| json!({ "label": e.label, "explanation": e.explanation, "next_step": e.next_step })),
    }))
}

fn from_dispatch(e: DispatchError) -> ApiError {
    match e {
        DispatchError::Invalid(m) => ApiError::invalid(m),
        DispatchError::Store(e) => ApiError::unavailable(e),
    }
}

/// Dispatch a run as the caller: 201 with the run, 200 with the active run
/// of the same scope (`deduplicated`) or the run an earlier request with the
/// same `Idempotency-Key` made (`replayed`), 403 refused (audited), 404 a
/// workspace the caller cannot see, 422 bad input naming the field.
#[utoipa::path(post, path = "/v1/runs", request_body = DispatchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "the same key within 24 h returns the same run")),
    responses(
    (status = 201, description = "{\"run\": run, \"deduplicated\": false}"),
    (status = 200, description = "{\"run\": run, \"deduplicated\": true} or {\"replayed\": true}"),
    (status = 403, description = "refused: error.reason_code and error.reason"),
    (status = 404, description = "a workspace the caller cannot see"), (status = 422, description = "bad input")))]
pub(super) async fn dispatch_run(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let actor = caller(&state, &headers).await?;
    let key = idempotency_key(&headers)?;
    let b: DispatchBody = body_json(body)?;
    let workspace = b.workspace.clone();
    let req = b.request(&state, &actor, key.as_deref(), "")?;
    if !visible(&state, &actor, &workspace).await? {
        return Err(not_found(&workspace));
    }
    let guard = key.as_ref().map(|k| lock_for(&format!("{}:{}\n{k}", actor.kind.as_str(), actor.id)));
    let _held = match &guard {
        Some(m) => Some(m.lock().await),
        None => None,
    };
    if let Some(k) = &key
        && let Some(run) = replay(&state, &actor, k).await?
    {
        return Ok((
            StatusCode::OK,
            Json(json!({ "run": RunView::from(&run), "deduplicated": false, "replayed": true })),
        ));
    }
    match state.operator.dispatcher().dispatch(req).await.map_err(from_dispatch)? {
        DispatchOutcome::Dispatched { run, deduplicated, .. } => {
            let status = if deduplicated { StatusCode::OK } else { StatusCode::CREATED };
            Ok((status, Json(json!({ "run": RunView::from(run.as_ref()), "deduplicated": deduplicated }))))
        }
        DispatchOutcome::Refused { reason, message, .. } => {
            Err(refused(&state, &actor, &workspace, reason.as_str(), &message).await)
        }
    }
}

/// Dispatch up to 1,000 runs as the caller: every item is checked first (one
/// bad item is a 422 naming `runs[i].field`, nothing written); the allowed
/// runs are written in one transaction. 200 with a result per item, in
/// order: `status` 201/200 (deduplicated) with the run, 403 refused (audited)
/// with the reason, 404 a workspace the caller cannot see.
#[utoipa::path(post, path = "/v1/runs/batch", request_body = BatchBody, responses(
    (status = 200, description = "{\"results\": [{\"status\": 201, \"run\": run, \"deduplicated\": false} | {\"status\": 403, \"error\": {...}}]}"),
    (status = 413, description = "body over 1 MiB"), (status = 422, description = "bad input in an item, or not 1–1,000 runs")))]
pub(super) async fn dispatch_batch(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let actor = caller(&state, &headers).await?;
    let b: BatchBody = body_json(body)?;
    if b.runs.is_empty() || b.runs.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!("runs: 1–{MAX_BATCH} runs, got {}", b.runs.len())));
    }
    let seen = state.operator.reads().visible_workspaces(&actor.id).await?;
    let mut reqs = Vec::with_capacity(b.runs.len());
    for (i, item) in b.runs.into_iter().enumerate() {
        reqs.push(item.request(&state, &actor, None, &format!("runs[{i}]."))?);
    }
    let (shown, hidden): (Vec<_>, Vec<_>) =
        reqs.into_iter().enumerate().partition(|(_, r)| seen.contains(&r.scope.workspace_id));
    let (slots, allowed): (Vec<usize>, Vec<DispatchRequest>) = shown.into_iter().unzip();
    let workspaces: Vec<String> = allowed.iter().map(|r| r.scope.workspace_id.clone()).collect();
    let outcomes = state.operator.dispatcher().dispatch_many(allowed).await.map_err(from_dispatch)?;
    let mut results: Vec<Value> = vec![Value::Null; slots.len() + hidden.len()];
    for (i, r) in hidden {
        results[i] = json!({ "status": 404, "error": { "code": "not_found",
            "message": format!("workspace '{}' not found", r.scope.workspace_id.escape_debug()) } });
    }
    for ((slot, outcome), ws) in slots.into_iter().zip(outcomes).zip(workspaces) {
        results[slot] = match outcome {
            Ok(DispatchOutcome::Dispatched { run, deduplicated, .. }) => json!({
                "status": if deduplicated { 200 } else { 201 },
                "run": RunView::from(run.as_ref()),
                "deduplicated": deduplicated,
            }),
            Ok(DispatchOutcome::Refused { reason, message, .. }) => {
                let e = refused(&state, &actor, &ws, reason.as_str(), &message).await;
                json!({ "status": 403, "error": e.body() })
            }
            Err(e) => {
                let e = from_dispatch(e);
                json!({ "status": e.parts().0.as_u16(), "error": e.body() })
            }
        };
    }
    Ok(Json(json!({ "results": results })))
}
