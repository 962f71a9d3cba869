//! What a request brings (paths, queries, bodies), parsed and bounded: bad
//! input is a 422 naming what is wrong, never a panic.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use oprun_shared::{Clock, RunFilter, RunOutcome, RunStatus};
use serde::Deserialize;
use uuid::Uuid;

use super::MAX_BODY_BYTES;
use super::error::{ApiError, ApiResult};

/// The run id of a `/v1/runs/{id}…` path. A segment that does not decode
/// (not UTF-8 once percent-decoded) is the same JSON 422 as any other bad id,
/// not axum's plain-text rejection.
pub(super) fn path_run_id(path: Result<Path<String>, PathRejection>) -> ApiResult<Uuid> {
    match path {
        Ok(Path(raw)) => run_id(&raw),
        Err(r) => Err(ApiError::invalid(format!("the run id in the path: {} (a run id is a UUID)", r.body_text()))),
    }
}

pub(super) fn run_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse().map_err(|_| ApiError::invalid(format!("'{}' is not a run id (a UUID)", raw.escape_debug())))
}

pub(super) fn body_json<T: serde::de::DeserializeOwned + Default>(body: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = body.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is too large (at most {MAX_BODY_BYTES} bytes; POST /v1/runs/batch takes 1 MiB)"),
        ),
        _ => ApiError::invalid(r.body_text()),
    })?;
    parse_body(&bytes)
}

/// A JSON request body as the handlers read it: only whitespace is `T::default()`.
pub(super) fn parse_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> ApiResult<T> {
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
    list_filter(q, oprun_shared::SystemClock.now())
}

/// The `{id}` of `/v1/runs/{id}…`.
pub fn parse_run_id(raw: &str) -> Result<Uuid, ApiError> {
    run_id(raw)
}

/// Filters of `GET /v1/runs` (query parameters: without `parameter_in` the
/// generated document declared them `in: path`, which a validator refuses).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// queued, running or completed.
    status: Option<String>,
    /// An outcome.
    outcome: Option<String>,
    /// One operation.
    pub(super) operation: Option<String>,
    /// One workspace.
    pub(super) workspace: Option<String>,
    /// Only queued runs waiting for their time (delayed, retrying later,
    /// snoozed): `true`.
    waiting: Option<bool>,
    /// One environment.
    environment: Option<String>,
    /// One reason code.
    reason: Option<String>,
    /// Runs dispatched by this schedule.
    schedule: Option<String>,
    /// Runs started by ACTOR or KIND:ACTOR.
    initiator: Option<String>,
    /// Created at or after (RFC 3339).
    created_after: Option<String>,
    /// Created before (RFC 3339).
    created_before: Option<String>,
    /// Completed at or after (RFC 3339).
    completed_after: Option<String>,
    /// Completed before (RFC 3339).
    completed_before: Option<String>,
    /// Cursor: runs older than this id.
    before: Option<String>,
    /// Page size, 1–1000 (default 50).
    limit: Option<u32>,
}

/// The run filter of a `GET /v1/runs` query.
pub(super) fn list_filter(q: ListQuery, now: DateTime<Utc>) -> ApiResult<RunFilter> {
    let status = q.status.map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::invalid(e.to_string()))).transpose()?;
    let outcome =
        q.outcome.map(|s| s.parse::<RunOutcome>().map_err(|e| ApiError::invalid(e.to_string()))).transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit must be 1–1000"));
    }
    let before = q.before.as_deref().map(run_id).transpose()?;
    let fields = FilterFields {
        environment: q.environment,
        reason: q.reason,
        schedule: q.schedule,
        initiator: q.initiator,
        created_after: q.created_after,
        created_before: q.created_before,
        completed_after: q.completed_after,
        completed_before: q.completed_before,
    };
    Ok(RunFilter {
        workspace_id: q.workspace,
        operation: q.operation,
        status,
        outcome,
        before,
        limit,
        waiting_at: q.waiting.unwrap_or(false).then_some(now),
        ..fields.filter()?
    })
}

/// The filters `GET /v1/runs` and the actions by filter share beyond
/// status, outcome, operation and workspace.
#[derive(Debug, Default)]
pub(super) struct FilterFields {
    pub(super) environment: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) schedule: Option<String>,
    pub(super) initiator: Option<String>,
    pub(super) created_after: Option<String>,
    pub(super) created_before: Option<String>,
    pub(super) completed_after: Option<String>,
    pub(super) completed_before: Option<String>,
}

impl FilterFields {
    pub(super) fn filter(self) -> ApiResult<RunFilter> {
        let time = |name: &str, v: Option<String>| -> ApiResult<Option<DateTime<Utc>>> {
            v.map(|s| {
                DateTime::parse_from_rfc3339(&s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| ApiError::invalid(format!("{name}: '{}' is not an RFC 3339 time", s.escape_debug())))
            })
            .transpose()
        };
        for (name, v) in [("environment", &self.environment), ("reason", &self.reason), ("schedule", &self.schedule)] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
            {
                return Err(ApiError::invalid(format!("{name}: must be 1–200 printable characters")));
            }
        }
        let initiator = self
            .initiator
            .map(|s| {
                s.parse::<oprun_shared::InitiatorFilter>().map_err(|e| ApiError::invalid(format!("initiator: {e}")))
            })
            .transpose()?;
        Ok(RunFilter {
            environment_id: self.environment,
            reason_code: self.reason,
            schedule: self.schedule,
            initiator,
            created_after: time("created_after", self.created_after)?,
            created_before: time("created_before", self.created_before)?,
            completed_after: time("completed_after", self.completed_after)?,
            completed_before: time("completed_before", self.completed_before)?,
            ..RunFilter::default()
        })
    }
}

/// Body of `POST /v1/runs/retry` and `/v1/runs/cancel`: the filter (at
/// least one field), `dry_run` and `max`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkBody {
    /// List what would be done; do nothing.
    #[serde(default)]
    pub(super) dry_run: bool,
    /// At most this many runs (default 1000, at most 10000).
    pub(super) max: Option<u32>,
    status: Option<String>,
    outcome: Option<String>,
    operation: Option<String>,
    workspace: Option<String>,
    environment: Option<String>,
    reason: Option<String>,
    schedule: Option<String>,
    initiator: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    completed_after: Option<String>,
    completed_before: Option<String>,
}

/// The run filter of an action by filter (one field at least: an empty
/// filter would act on every run).
pub(super) fn bulk_filter(b: &BulkBody) -> ApiResult<RunFilter> {
    let status =
        b.status.as_ref().map(|s| s.parse::<RunStatus>().map_err(|e| ApiError::invalid(e.to_string()))).transpose()?;
    let outcome = b
        .outcome
        .as_ref()
        .map(|s| s.parse::<RunOutcome>().map_err(|e| ApiError::invalid(e.to_string())))
        .transpose()?;
    let fields = FilterFields {
        environment: b.environment.clone(),
        reason: b.reason.clone(),
        schedule: b.schedule.clone(),
        initiator: b.initiator.clone(),
        created_after: b.created_after.clone(),
        created_before: b.created_before.clone(),
        completed_after: b.completed_after.clone(),
        completed_before: b.completed_before.clone(),
    };
    let filter = RunFilter {
        status,
        outcome,
        operation: b.operation.clone(),
        workspace_id: b.workspace.clone(),
        ..fields.filter()?
    };
    if filter == RunFilter::default() {
        return Err(ApiError::invalid(
            "name at least one filter (reason, operation, workspace, …): an empty filter would act on every run",
        ));
    }
    Ok(filter)
}

/// The (empty) body of retry and cancel.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoBody {}

/// Body of `POST /v1/reconcile`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileBody {
    /// Report only.
    #[serde(default)]
    pub(super) dry_run: bool,
    /// Only this operation.
    pub(super) operation: Option<String>,
    /// Only this workspace.
    pub(super) workspace: Option<String>,
}

/// Body of `POST /v1/schedules/{name}/pause`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseBody {
    /// Why (at most 500 characters).
    pub(super) note: Option<String>,
}

/// Body of `POST /v1/schedules/{name}/backfill`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackfillBody {
    /// From (RFC 3339), inclusive.
    from: Option<String>,
    /// To (RFC 3339), inclusive.
    to: Option<String>,
    /// List the ticks; fire nothing.
    #[serde(default)]
    pub(super) dry_run: bool,
}

fn rfc3339(name: &str, v: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ApiError::invalid(format!("{name}: '{}' is not an RFC 3339 time", v.escape_debug())))
}

impl BackfillBody {
    pub(super) fn range(&self) -> ApiResult<(DateTime<Utc>, DateTime<Utc>)> {
        match (&self.from, &self.to) {
            (Some(f), Some(t)) => Ok((rfc3339("from", f)?, rfc3339("to", t)?)),
            _ => Err(ApiError::invalid("from and to are required (RFC 3339)")),
        }
    }
}

/// Filters of `GET /v1/audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// One actor id.
    actor: Option<String>,
    /// One action, or a prefix ending in `*`.
    action: Option<String>,
    /// At or after (RFC 3339).
    since: Option<String>,
    /// Only administrative acts (rows of no run): `true`.
    admin: Option<bool>,
    /// Cursor: rows older than this row id.
    before: Option<i64>,
    /// Page size, 1–1000 (default 50).
    limit: Option<u32>,
}

impl AuditQuery {
    pub(super) fn filter(self) -> ApiResult<oprun_shared::AuditFilter> {
        let limit = self.limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::invalid("limit must be 1–1000"));
        }
        for (name, v) in [("actor", &self.actor), ("action", &self.action)] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > 200 || v.chars().any(char::is_control))
            {
                return Err(ApiError::invalid(format!("{name}: must be 1–200 printable characters")));
            }
        }
        Ok(oprun_shared::AuditFilter {
            actor: self.actor,
            action: self.action,
            since: self.since.as_deref().map(|s| rfc3339("since", s)).transpose()?,
            administrative: self.admin.unwrap_or(false),
            before: self.before,
            limit,
            ..oprun_shared::AuditFilter::default()
        })
    }
}
