//! The operators' dashboard under `/ui`: server-rendered HTML (maud), its
//! stylesheet and a small script embedded in the binary. Every read and
//! action works with JavaScript off. A browser signs in with an API token
//! and then holds a session cookie ([`session`]); every form carries the
//! session's CSRF token. Every page and action goes through the same
//! [`Operator`](crate::Operator) as the JSON API, so authority is the API's:
//! a run outside the viewer's workspaces is "not found", an action the viewer
//! may not take is not offered (the guidance says whom to ask) and, posted
//! anyway, is refused and audited.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use oprun_shared::Initiator;

use super::ApiState;
use super::error::ApiError;
use crate::operator::ActionError;

mod layout;
mod ops;
mod runs;
pub mod session;

use layout::{Chrome, page};
use session::{SESSION_COOKIE, SESSION_LIFETIME, SIGN_IN_COOKIE, Session, Sessions};

/// The dashboard's state: the API's, and this process's sessions.
#[derive(Clone)]
pub(super) struct Ui {
    api: ApiState,
    sessions: Arc<Sessions>,
}

/// The `/ui` routes.
pub(super) fn router(api: ApiState) -> Router {
    let ui = Ui { api, sessions: Arc::new(Sessions::default()) };
    Router::new()
        .route("/ui", get(ops::overview))
        .route("/ui/", get(ops::overview))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in))
        .route("/ui/sign-out", post(sign_out))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/{id}", get(runs::show))
        .route("/ui/runs/{id}/retry", post(runs::retry))
        .route("/ui/runs/{id}/cancel", post(runs::cancel))
        .route("/ui/schedules", get(ops::schedules))
        .route("/ui/reconcile", get(ops::reconcile_page).post(ops::reconcile))
        .route("/ui/bulk", get(ops::bulk_page).post(ops::bulk))
        .route("/ui/assets/app.css", get(|| async { asset("text/css; charset=utf-8", layout::CSS) }))
        .route("/ui/assets/app.js", get(|| async { asset("text/javascript; charset=utf-8", layout::JS) }))
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::from_fn(headers))
        .with_state(ui)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Every dashboard response: no framing, no inline script, nothing cached
/// but the assets, no referrer.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.entry(CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A signed-in viewer: the extractor every page and action takes; without
/// a live session the request is sent to sign-in.
pub(super) struct Signed {
    actor: Initiator,
    session: Session,
}

impl axum::extract::FromRequestParts<Ui> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, ui: &Ui) -> Result<Self, Response> {
        signed_in(ui, &parts.headers, &parts.uri).await
    }
}

impl Signed {
    fn chrome<'a>(&'a self, current: &'a str) -> Chrome<'a> {
        Chrome { actor: Some(&self.actor.id), csrf: &self.session.csrf, current }
    }
}

/// The signed-in viewer of a request, or the redirect to sign-in (back to
/// `uri` afterwards). The session's token is checked again: revoked,
/// expired, or its actor's kind changed, the session ends.
async fn signed_in(ui: &Ui, headers: &HeaderMap, uri: &Uri) -> Result<Signed, Response> {
    let now = ui.api.clock.now();
    let to_sign_in = || {
        let next = uri.path_and_query().map_or("/ui", |p| p.as_str());
        let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
        redirect(&format!("/ui/sign-in?next={next}"))
    };
    let Some(id) = session::cookie(headers, SESSION_COOKIE) else { return Err(to_sign_in()) };
    let Some(session) = ui.sessions.get(id, now) else { return Err(to_sign_in()) };
    match super::tokens::actor_of_hash(&ui.api, &session.token_hash).await {
        Ok(Some(actor)) if actor.id == session.actor => Ok(Signed { actor, session }),
        Ok(_) => {
            ui.sessions.close(id);
            Err(to_sign_in())
        }
        Err(e) => Err(PageError::from(e).into_response()),
    }
}

/// Add a `Set-Cookie` header (from [`session::set_cookie`]).
fn append_cookie(r: &mut Response, (name, value): (axum::http::HeaderName, String)) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        r.headers_mut().append(name, v);
    }
}

/// A 303 to `to`.
fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// An HTML page with a status.
fn html_page(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// A page that went wrong: its status, a title and what to do.
#[derive(Debug)]
pub(super) struct PageError {
    status: StatusCode,
    title: &'static str,
    message: String,
    cause: Option<String>,
}

impl PageError {
    fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        Self { status, title, message: message.into(), cause: None }
    }

    fn csrf() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form did not carry this session's security token (CSRF), so nothing was done. \
             Reload the page and submit it again.",
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Bad input", message)
    }
}

impl From<ActionError> for PageError {
    fn from(e: ActionError) -> Self {
        let (status, title) = match &e {
            ActionError::NotFound(_) | ActionError::NoSuchSchedule(_) => (StatusCode::NOT_FOUND, "Not found"),
            ActionError::Forbidden(_) => (StatusCode::FORBIDDEN, "Not allowed"),
            ActionError::Conflict(_) => (StatusCode::CONFLICT, "Not possible now"),
            ActionError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Bad input"),
            ActionError::Store(_) => {
                let mut p = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "The run store is unavailable; try again.",
                );
                p.cause = Some(e.to_string());
                return p;
            }
        };
        Self::new(status, title, e.to_string())
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let (status, message, cause) = e.parts();
        let title = match status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ => "Bad input",
        };
        Self { status, title, message: message.to_string(), cause: cause.map(str::to_string) }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let Some(cause) = &self.cause {
            tracing::warn!(status = self.status.as_u16(), error = %cause, "ui: page failed");
        }
        let chrome = Chrome { actor: None, csrf: "", current: "" };
        let body = html! {
            (layout::notice("bad", &self.message))
            p { a href="/ui" { "Back to the overview" } }
        };
        html_page(self.status, page(self.title, &chrome, false, body))
    }
}

type PageResult = Result<Response, PageError>;

/// A form body's fields (bounded by the router's body limit).
pub(super) struct Form(Vec<(String, String)>);

impl Form {
    fn parse(body: Result<Bytes, BytesRejection>) -> Result<Self, PageError> {
        let bytes = body.map_err(|r| PageError::invalid(r.body_text()))?;
        Ok(Self(form_urlencoded::parse(&bytes).into_owned().collect()))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The fields not named in `skip` and not empty, URL-encoded again.
    fn encoded_without(&self, skip: &[&str]) -> String {
        encode(self.0.iter().filter(|(k, v)| !v.is_empty() && !skip.contains(&k.as_str())))
    }

    /// Refused unless it carries the session's CSRF token.
    fn check(&self, signed: &Signed) -> Result<(), PageError> {
        if session::csrf_matches(&signed.session.csrf, self.get("csrf")) { Ok(()) } else { Err(PageError::csrf()) }
    }
}

fn encode<'a>(pairs: impl Iterator<Item = &'a (String, String)>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

/// A query string's non-empty fields, as `Query<T>` parses them.
fn query_of<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T, PageError> {
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(raw.as_bytes()).into_owned().filter(|(_, v)| !v.is_empty()).collect();
    let uri: Uri =
        format!("/q?{}", encode(pairs.iter())).parse().map_err(|_| PageError::invalid("not a valid query"))?;
    axum::extract::Query::<T>::try_from_uri(&uri).map(|q| q.0).map_err(|r| PageError::invalid(r.body_text()))
}

async fn sign_in_page(headers: HeaderMap, uri: Uri) -> Response {
    let next = next_of(uri.query().unwrap_or(""));
    sign_in_form(&headers, &next, None, StatusCode::OK)
}

/// The sign-in form, with a fresh double-submit CSRF cookie.
fn sign_in_form(headers: &HeaderMap, next: &str, error: Option<&str>, status: StatusCode) -> Response {
    let csrf = session::secret();
    let chrome = Chrome { actor: None, csrf: "", current: "" };
    let body = html! {
        @if let Some(e) = error { (layout::notice("bad", e)) }
        form.stack.card method="post" action="/ui/sign-in" {
            (layout::csrf_field(&csrf))
            input type="hidden" name="next" value=(next);
            label { "API token"
                input #token type="password" name="token" autocomplete="off" required
                    placeholder="oprun_…" maxlength="512";
            }
            p.muted { "Use a token from " code { "oprun token create --actor YOU" } ". It is checked on every request: revoke it and this session ends." }
            button #sign-in type="submit" { "Sign in" }
        }
    };
    let mut r = html_page(status, page("Sign in", &chrome, false, body));
    append_cookie(
        &mut r,
        session::set_cookie(SIGN_IN_COOKIE, Some(&csrf), chrono::Duration::minutes(30), session::over_tls(headers)),
    );
    r
}

/// Where to go after sign-in, from a query's `next`.
fn next_of(query: &str) -> String {
    safe_next(form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "next").map(|(_, v)| v.into_owned()))
}

/// A dashboard path only (never another site), else the overview.
fn safe_next(next: Option<String>) -> String {
    next.filter(|n| {
        (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?")) && !n.contains('\\') && n.len() <= 2048
    })
    .unwrap_or_else(|| "/ui".into())
}

async fn sign_in(State(ui): State<Ui>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    let form = match Form::parse(body) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let next = safe_next(form.get("next").map(str::to_string));
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::csrf_matches(expected, form.get("csrf")) {
        return sign_in_form(
            &headers,
            &next,
            Some("The sign-in form expired or was not sent from this page (CSRF). Try again."),
            StatusCode::FORBIDDEN,
        );
    }
    let token = form.get("token").unwrap_or("").trim();
    let refused = || {
        sign_in_form(
            &headers,
            &next,
            Some("That token is not valid (unknown, revoked or expired)."),
            StatusCode::UNAUTHORIZED,
        )
    };
    if !token.starts_with(super::TOKEN_PREFIX) || token.len() > 512 {
        return refused();
    }
    let hash = super::hash_token(token);
    let actor = match super::tokens::actor_of_hash(&ui.api, &hash).await {
        Ok(Some(actor)) => actor,
        Ok(None) => return refused(),
        Err(e) => return PageError::from(e).into_response(),
    };
    let (id, _) = ui.sessions.open(actor.id.clone(), hash, ui.api.clock.now());
    tracing::info!(actor = %actor.id, "ui: signed in");
    let tls = session::over_tls(&headers);
    let mut r = redirect(&next);
    append_cookie(&mut r, session::set_cookie(SESSION_COOKIE, Some(&id), SESSION_LIFETIME, tls));
    append_cookie(&mut r, session::set_cookie(SIGN_IN_COOKIE, None, SESSION_LIFETIME, tls));
    r
}

async fn sign_out(
    State(ui): State<Ui>,
    signed: Signed,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> PageResult {
    Form::parse(body)?.check(&signed)?;
    if let Some(id) = session::cookie(&headers, SESSION_COOKIE) {
        ui.sessions.close(id);
    }
    let mut r = redirect("/ui/sign-in");
    append_cookie(&mut r, session::set_cookie(SESSION_COOKIE, None, SESSION_LIFETIME, session::over_tls(&headers)));
    Ok(r)
}

async fn not_found(_signed: Signed) -> Response {
    PageError::new(StatusCode::NOT_FOUND, "Not found", "There is no such page.").into_response()
}

/// A run id from a path, as a 404 page when it is none (a malformed id
/// names nothing the viewer may see).
fn run_id(path: Result<Path<String>, axum::extract::rejection::PathRejection>) -> Result<uuid::Uuid, PageError> {
    path.ok()
        .and_then(|Path(raw)| raw.parse().ok())
        .ok_or_else(|| PageError::new(StatusCode::NOT_FOUND, "Not found", "There is no such run."))
}
