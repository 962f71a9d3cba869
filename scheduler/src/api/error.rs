//! The API's errors: one JSON shape, one status per kind, and the one place
//! they are logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::operator::ActionError;

/// An API error: a status and a JSON body, and the cause behind a 5xx
/// (never shown to the caller; logged once, by `log_errors`).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    cause: Option<String>,
    /// More fields of the error object (a refusal's reason).
    extra: Option<serde_json::Value>,
}

/// What a failed response carries for [`log_errors`] to log.
#[derive(Debug, Clone)]
struct Failure {
    code: &'static str,
    cause: Option<String>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), cause: None, extra: None }
    }

    /// With more fields in the error object (an object's fields, merged).
    pub(super) fn with(mut self, extra: serde_json::Value) -> Self {
        self.extra = Some(extra);
        self
    }

    /// The error object: `{"code", "message", …}`.
    pub(super) fn body(&self) -> serde_json::Value {
        let mut body = json!({ "code": self.code, "message": self.message });
        if let (Some(serde_json::Value::Object(extra)), Some(obj)) = (&self.extra, body.as_object_mut()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        body
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
    }

    pub(super) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }

    /// Its status, message and (for a 5xx) cause.
    pub(super) fn parts(&self) -> (StatusCode, &str, Option<&str>) {
        (self.status, &self.message, self.cause.as_deref())
    }

    pub(super) fn unavailable(e: impl std::fmt::Display) -> Self {
        let mut err =
            Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the run store is unavailable; try again");
        err.cause = Some(e.to_string());
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.body() });
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(Failure { code: self.code, cause: self.cause });
        response
    }
}

/// Log every error response once, with its route (as axum's error-handling
/// example does): a server error as a warning with its cause, a refused
/// request at debug.
pub(super) async fn log_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
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
            ActionError::NotFound(_) | ActionError::NoSuchSchedule(_) => StatusCode::NOT_FOUND,
            ActionError::Forbidden(_) => StatusCode::FORBIDDEN,
            ActionError::Conflict(_) => StatusCode::CONFLICT,
            ActionError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ActionError::Store(_) => return ApiError::unavailable(&e),
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;
