//! HTTP providers and the built-in `http.collect` and `http.call` kinds.
//!
//! One reqwest client (rustls) per provider, reused; a bearer token read from
//! an environment variable or a file (never from the config itself); a
//! concurrency limit per provider and optionally per environment, held per
//! request and released while waiting to retry. Transient failures (429 with
//! Retry-After, 502/503/504, timeouts, connection errors) are retried with
//! exponential backoff and jitter (backon) inside the attempt, up to the
//! retry budget; permanent ones are classified into `provider.*` codes. Every
//! message is sanitized (and stripped of the provider's own token) before it
//! is stored or logged; raw bodies are never stored.
//!
//! What a provider sends is bounded and kept in its place: a body is read a
//! chunk at a time up to `max_response_bytes`; a scope id cannot change a
//! request path (placeholders are percent-encoded and a segment they would
//! make `.` or `..` is refused); a next link is resolved as a URL reference
//! against the page that carried it and must stay on the base's origin; and
//! it is checkpointed without the provider token and secret- or
//! signature-named query parameters ([`storable_link`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use oprun_shared::{Completion, FailureEntry, OperationSpec, ReasonCode, RunOutcome, SummaryCounts, redact};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info, warn};

use crate::config::{ProviderConfig, TokenSource};
use crate::operation::{Operation, OperationError, Operations, RunContext};

/// The kind that walks a paged collection.
pub const COLLECT: &str = "http.collect";
/// The kind that makes one request.
pub const CALL: &str = "http.call";
/// The longest error-body excerpt kept in a failure summary.
pub const EXCERPT_CHARS: usize = 200;
/// The most of an error answer's body read (for its excerpt), in bytes.
const ERROR_BODY_BYTES: u64 = 16 * 1024;
/// Query parameters that sign or authorize a link (compared without case),
/// left out of a stored next link besides the secret-named ones
/// ([`redact::is_secret_key`]): Azure SAS, AWS SigV4, Google signed URLs.
const SIGNATURE_PARAMS: &[&str] = &[
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
];

/// A provider that could not be set up; the message names the field,
/// variable or file.
#[derive(Debug, thiserror::Error)]
#[error("providers.{name}: {message}")]
pub struct ProviderSetupError {
    /// The provider.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

/// The bearer token; never printed.
#[derive(Clone)]
struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

/// One configured provider.
#[derive(Debug)]
pub struct Provider {
    name: String,
    base: Url,
    client: reqwest::Client,
    token: Token,
    retry_budget: u32,
    retry_after_cap: Duration,
    max_body: u64,
    limit: Arc<Semaphore>,
    per_environment: Option<usize>,
    environments: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// The providers of a config, by name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<Provider>>,
}

fn read_token(name: &str, cfg: &ProviderConfig, base_dir: Option<&Path>) -> Result<String, ProviderSetupError> {
    let err = |message: String| ProviderSetupError { name: name.into(), message };
    let token = match cfg.token_source().map_err(err)? {
        TokenSource::Env(var) => {
            std::env::var(var).map_err(|_| err(format!("token_env: the environment variable {var} is not set")))?
        }
        TokenSource::File(file) => {
            let path = match base_dir {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.to_path_buf(),
            };
            std::fs::read_to_string(&path)
                .map_err(|e| err(format!("token_file: cannot read {}: {}", path.display(), e.kind())))?
        }
    };
    let token = token.trim().to_string();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("the token is empty or not a single line".into()));
    }
    Ok(token)
}

impl Providers {
    /// Build every provider of the `[providers]` section: read tokens (a
    /// relative `token_file` is in `base_dir`, the config file's folder),
    /// build clients.
    pub fn from_config(
        providers: &BTreeMap<String, ProviderConfig>,
        base_dir: Option<&Path>,
    ) -> Result<Self, ProviderSetupError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in providers {
            by_name.insert(name.clone(), Arc::new(Provider::new(name, cfg, base_dir)?));
        }
        Ok(Self { by_name })
    }

    /// One provider.
    pub fn get(&self, name: &str) -> Option<&Arc<Provider>> {
        self.by_name.get(name)
    }

    /// Register the HTTP kinds into `ops`.
    pub fn register(&self, ops: &mut Operations) {
        ops.register(COLLECT, HttpCollect { providers: self.clone() });
        ops.register(CALL, HttpCall { providers: self.clone() });
    }
}

/// How a request failed, classified.
#[derive(Debug)]
struct Failure {
    reason: ReasonCode,
    message: String,
    transient: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn into_error(self) -> OperationError {
        if self.reason == ReasonCode::ProviderPermissionMissing {
            OperationError::Blocked { reason: self.reason, message: self.message }
        } else {
            OperationError::failed(self.reason.as_str(), self.message)
        }
    }
}

/// Parse Retry-After: seconds or an HTTP date (how long after `now`).
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((when.with_timezone(&Utc) - now).to_std().unwrap_or(Duration::ZERO))
}

impl Provider {
    fn new(name: &str, cfg: &ProviderConfig, base_dir: Option<&Path>) -> Result<Self, ProviderSetupError> {
        let err = |message: String| ProviderSetupError { name: name.into(), message };
        let base = cfg.base().map_err(err)?;
        let token = read_token(name, cfg, base_dir)?;
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| err(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            name: name.into(),
            base,
            client,
            token: Token(token),
            retry_budget: cfg.retry_budget,
            retry_after_cap: cfg.retry_after_cap,
            max_body: cfg.max_response_bytes.max(1),
            limit: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            per_environment: cfg.concurrency_per_environment,
            environments: Mutex::new(HashMap::new()),
        })
    }

    /// Redact a provider message: its own token first, then the sanitizer.
    fn clean(&self, s: &str) -> String {
        redact::sanitize(&s.replace(&self.token.0, "[REDACTED]"))
    }

    async fn permits(&self, environment: Option<&str>) -> Vec<OwnedSemaphorePermit> {
        let mut held = vec![];
        if let (Some(n), Some(env)) = (self.per_environment, environment) {
            let sem = {
                let mut map = self.environments.lock().unwrap_or_else(|e| e.into_inner());
                map.entry(env.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n.max(1)))).clone()
            };
            if let Ok(p) = sem.acquire_owned().await {
                held.push(p);
            }
        }
        if let Ok(p) = self.limit.clone().acquire_owned().await {
            held.push(p);
        }
        held
    }

    /// The URL of a request path from an operation's settings.
    fn path_url(&self, path: &str) -> Result<Url, OperationError> {
        let url = path_url(&self.base, path).map_err(OperationError::payload_invalid)?;
        self.same_origin(url)
    }

    /// The URL a next link names, resolved against the page that carried it.
    fn link_url(&self, page: &Url, link: &str) -> Result<Url, OperationError> {
        let url = link_url(page, link).map_err(|e| {
            OperationError::failed(ReasonCode::ProviderBadResponse.as_str(), format!("provider '{}': {e}", self.name))
        })?;
        self.same_origin(url)
    }

    /// `url` if it is on the base's origin, so that the token is never sent
    /// elsewhere.
    fn same_origin(&self, url: Url) -> Result<Url, OperationError> {
        if url.origin() != self.base.origin() {
            return Err(OperationError::failed(
                ReasonCode::ProviderBadResponse.as_str(),
                format!(
                    "provider '{}' pointed to another origin ({}); not followed",
                    self.name,
                    redact::redact_url(url.as_str())
                ),
            ));
        }
        Ok(url)
    }

    fn classify_status(&self, status: StatusCode, headers: &HeaderMap, body: &str, now: DateTime<Utc>) -> Failure {
        let excerpt = redact::excerpt(&self.clean(body), EXCERPT_CHARS);
        let message = format!("provider '{}' answered {status}: {excerpt}", self.name);
        let (reason, transient) = match status.as_u16() {
            429 => (ReasonCode::ProviderThrottled, true),
            502..=504 => (ReasonCode::ProviderUnavailable, true),
            401 => (ReasonCode::ProviderAuthFailed, false),
            403 => (ReasonCode::ProviderPermissionMissing, false),
            404 => (ReasonCode::ProviderNotFound, false),
            409 | 412 => (ReasonCode::ProviderConflict, false),
            _ => (ReasonCode::ProviderBadResponse, false),
        };
        Failure { reason, message, transient, retry_after: retry_after(headers, now) }
    }

    fn classify_error(&self, e: &reqwest::Error) -> Failure {
        let what = self.clean(&e.to_string());
        let (reason, message) = if e.is_timeout() {
            (ReasonCode::ProviderTimeout, format!("provider '{}' did not answer in time: {what}", self.name))
        } else {
            (ReasonCode::ProviderUnavailable, format!("provider '{}' could not be reached: {what}", self.name))
        };
        Failure { reason, message, transient: true, retry_after: None }
    }

    /// A body over `max_response_bytes`: permanent, never buffered.
    fn oversized(&self, what: &str) -> Failure {
        Failure {
            reason: ReasonCode::ProviderBadResponse,
            message: format!(
                "provider '{}' {what}, over max_response_bytes ({} bytes); not read",
                self.name, self.max_body
            ),
            transient: false,
            retry_after: None,
        }
    }

    /// The body of a 2xx answer, refused when its Content-Length or what
    /// arrives passes `max_response_bytes`.
    async fn read_page(&self, resp: &mut reqwest::Response) -> Result<Vec<u8>, Failure> {
        if let Some(n) = resp.content_length()
            && n > self.max_body
        {
            return Err(self.oversized(&format!("announced a {n}-byte body (Content-Length)")));
        }
        match read_limited(resp, self.max_body).await {
            Ok((bytes, true)) => Ok(bytes),
            Ok((_, false)) => Err(self.oversized("sent a longer body")),
            Err(e) => Err(self.classify_error(&e)),
        }
    }

    /// One request to `url` (on this provider's origin) with the retry
    /// budget; returns the headers and the body of a 2xx answer.
    async fn send(
        &self,
        ctx: &RunContext,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<(HeaderMap, Vec<u8>), OperationError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.retry_budget as usize)
            .with_jitter()
            .build();
        loop {
            if ctx.lease_lost() {
                return Err(OperationError::LeaseLost);
            }
            let failure = {
                let _permits = self.permits(ctx.run().environment_id.as_deref()).await;
                let mut req = self.client.request(method.clone(), url.clone()).bearer_auth(&self.token.0);
                if let Some(b) = body {
                    req = req.json(b);
                }
                let sent = req
                    .send()
                    .instrument(tracing::info_span!("provider_call", provider = %self.name, method = %method, path = url.path()))
                    .await;
                let status_label = match &sent {
                    Ok(r) => r.status().as_u16().to_string(),
                    Err(_) => "error".to_string(),
                };
                metrics::counter!("oprun_provider_requests_total", "provider" => self.name.clone(), "status" => status_label)
                    .increment(1);
                match sent {
                    Ok(mut resp) => {
                        let status = resp.status();
                        let headers = resp.headers().clone();
                        if status.is_success() {
                            match self.read_page(&mut resp).await {
                                Ok(bytes) => return Ok((headers, bytes)),
                                Err(failure) => failure,
                            }
                        } else {
                            match read_limited(&mut resp, ERROR_BODY_BYTES.min(self.max_body)).await {
                                Ok((bytes, _)) => {
                                    self.classify_status(status, &headers, &String::from_utf8_lossy(&bytes), ctx.now())
                                }
                                Err(e) => self.classify_error(&e),
                            }
                        }
                    }
                    Err(e) => self.classify_error(&e),
                }
            }; // permits released: waiting does not hold a connection slot
            if !failure.transient {
                return Err(failure.into_error());
            }
            let Some(backoff) = delays.next() else {
                let mut f = failure;
                f.message = format!("{} (retry budget of {} exhausted)", f.message, self.retry_budget);
                return Err(f.into_error());
            };
            let wait = match failure.retry_after {
                Some(after) if after > self.retry_after_cap => {
                    let mut f = failure;
                    f.message = format!("{} (Retry-After {}s exceeds the cap)", f.message, after.as_secs());
                    return Err(f.into_error());
                }
                Some(after) if !after.is_zero() => after,
                Some(_) => backoff,
                None => backoff,
            };
            warn!(provider = %self.name, reason = %failure.reason, wait_ms = wait.as_millis() as u64, "transient provider failure; retrying");
            metrics::counter!("oprun_provider_retries_total", "provider" => self.name.clone(), "reason" => failure.reason.as_str())
                .increment(1);
            if failure.reason == ReasonCode::ProviderThrottled {
                metrics::counter!("oprun_provider_throttle_wait_ms_total", "provider" => self.name.clone())
                    .increment(wait.as_millis() as u64);
            }
            let mut counts = SummaryCounts::new();
            let _ = counts.add("retries", 1);
            if failure.reason == ReasonCode::ProviderThrottled {
                let _ = counts.add("throttle_waits", 1);
                let _ = counts.add("throttle_wait_ms", wait.as_millis() as u64);
            }
            // Recorded before the wait (and the heartbeat keeps the lease meanwhile).
            ctx.progress(counts, None).await?;
            tokio::time::sleep(wait).await;
            if ctx.cancel_requested() {
                return Err(OperationError::Cancelled);
            }
        }
    }
}

/// Fill `{workspace}`, `{environment}`, `{target_type}`, `{target_id}` with
/// the run's scope (see [`fill_with`]).
fn fill(template: &str, ctx: &RunContext) -> Result<String, OperationError> {
    let run = ctx.run();
    fill_with(
        template,
        &[
            ("{workspace}", Some(run.workspace_id.as_str())),
            ("{environment}", run.environment_id.as_deref()),
            ("{target_type}", run.target_type.as_deref()),
            ("{target_id}", run.target_id.as_deref()),
        ],
    )
    .map_err(OperationError::payload_invalid)
}

/// Fill placeholders, each value percent-encoded (so `/`, `?`, `#` and `%`
/// stay inside their segment), and refuse what would still change the path:
/// an empty value, or a path segment the values make `.` or `..` (URL
/// parsing resolves those, also as `%2e`, so `/devices/{target_id}/wipe`
/// with `..` would become `/wipe`).
fn fill_with(template: &str, values: &[(&str, Option<&str>)]) -> Result<String, String> {
    let substitute = |part: &str| -> Result<String, String> {
        let mut out = part.to_string();
        for (key, value) in values {
            if out.contains(key) {
                let v = value.ok_or_else(|| format!("{key} is used but the run has none"))?;
                if v.is_empty() {
                    return Err(format!("{key} is empty, which would change the request path"));
                }
                out = out.replace(key, &url_escape(v));
            }
        }
        Ok(out)
    };
    let split = template.find(['?', '#']).unwrap_or(template.len());
    let (path, rest) = template.split_at(split);
    let mut segments = vec![];
    for segment in path.split('/') {
        let filled = substitute(segment)?;
        if filled != segment && is_dot_segment(&filled) {
            let used: Vec<String> = values
                .iter()
                .filter(|(key, _)| segment.contains(key))
                .map(|(key, v)| format!("{key} = '{}'", v.unwrap_or_default().escape_debug()))
                .collect();
            return Err(format!(
                "{} makes the path segment '{filled}', which would change the request path; refused",
                used.join(", ")
            ));
        }
        segments.push(filled);
    }
    Ok(segments.join("/") + &substitute(rest)?)
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, …): what URL parsing
/// resolves as a dot segment.
fn is_dot_segment(segment: &str) -> bool {
    matches!(segment.to_ascii_lowercase().as_str(), "." | "%2e" | ".." | ".%2e" | "%2e." | "%2e%2e")
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A request path from an operation's settings, under the base URL's path
/// (`/devices` under `https://h/v1.0` is `https://h/v1.0/devices`); an
/// absolute URL is taken as is (the caller checks its origin).
fn path_url(base: &Url, path: &str) -> Result<Url, String> {
    if let Ok(url) = Url::parse(path) {
        return Ok(url);
    }
    let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path.trim_start_matches('/'));
    Url::parse(&joined).map_err(|e| format!("bad request path: {e}"))
}

/// A next link resolved as a URL reference (RFC 3986 section 5) against the
/// page that carried it: an absolute URL as is, `/v1.0/devices?page=2`
/// against the page's origin (never under the base path a second time),
/// `?page=2` or `devices?page=2` against the page itself.
fn link_url(page: &Url, link: &str) -> Result<Url, String> {
    page.join(link).map_err(|e| format!("the next link is not a URL reference: {e}"))
}

/// A next link as a checkpoint keeps it (stored, and shown to admins): no
/// user info or fragment, no query parameter that is secret-named
/// ([`redact::is_secret_key`]: `access_token`, `client_secret`, …) or
/// signature-named ([`SIGNATURE_PARAMS`]: `sig`, `X-Amz-Signature`, …) or
/// whose value holds the provider token, and the token nowhere else.
/// Every other parameter (page numbers, `$skiptoken` cursors) is kept as
/// sent. Also returns the names of the parameters left out.
///
/// A resumed attempt requests the cleaned link with the bearer token: that
/// works where the token is what authorizes (a redundant `access_token`), not
/// where only the signature does; such a provider refuses the resumed
/// request, and the failure says which parameters were left out.
fn storable_link(url: &Url, token: &str) -> (String, Vec<String>) {
    let mut clean = url.clone();
    let _ = clean.set_username("");
    let _ = clean.set_password(None);
    clean.set_fragment(None);
    let mut removed = vec![];
    if let Some(query) = url.query() {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (name, value) = form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
                let bare = name.trim_start_matches('$');
                let secret = SIGNATURE_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(bare))
                    || redact::is_secret_key(bare)
                    || (!token.is_empty() && value.contains(token));
                if secret {
                    removed.push(name.into_owned());
                }
                !secret
            })
            .collect();
        clean.set_query((!kept.is_empty()).then(|| kept.join("&")).as_deref());
    }
    let mut stored = clean.to_string();
    if !token.is_empty() && stored.contains(token) {
        stored = stored.replace(token, redact::REDACTED);
        removed.push("(the provider token in the path)".into());
    }
    (stored, removed)
}

/// Read at most `limit` bytes of a body, a chunk at a time (never the whole
/// body first): the bytes, and whether the body ended within the limit.
async fn read_limited(resp: &mut reqwest::Response, limit: u64) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - out.len();
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// `e` with `note` added to its message.
fn with_note(e: OperationError, note: &str) -> OperationError {
    match e {
        OperationError::Failed { reason, message } => {
            OperationError::Failed { reason, message: format!("{message} ({note})") }
        }
        OperationError::Blocked { reason, message } => {
            OperationError::Blocked { reason, message: format!("{message} ({note})") }
        }
        other => other,
    }
}

fn setting<'a>(spec: &'a OperationSpec, key: &str) -> Option<&'a str> {
    spec.settings.get(key).and_then(|v| v.as_str())
}

fn provider_of<'a>(providers: &'a Providers, spec: &OperationSpec) -> Result<&'a Arc<Provider>, String> {
    let name = spec.provider.as_deref().ok_or("the operation names no provider")?;
    providers.get(name).ok_or_else(|| format!("provider '{name}' is not configured in this worker"))
}

/// The next link of a page: `@odata.nextLink` or `next` in the body, else a
/// `Link: <…>; rel="next"` header.
fn next_link(body: &Value, headers: &HeaderMap) -> Option<String> {
    for key in ["@odata.nextLink", "next"] {
        if let Some(s) = body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()) {
            return Some(s.to_string());
        }
    }
    for v in headers.get_all(reqwest::header::LINK) {
        for part in v.to_str().ok()?.split(',') {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            if pieces.any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next") {
                return Some(target.trim_start_matches('<').trim_end_matches('>').to_string());
            }
        }
    }
    None
}

/// `http.collect`: GET a paged collection.
///
/// Settings: `path` (with scope placeholders, required), `items` (the array
/// field, default `value`), `item_failed` (a field whose truthy value marks
/// an item failed, default `error`), `max_pages` (default 10000).
#[derive(Debug, Clone)]
pub struct HttpCollect {
    providers: Providers,
}

#[async_trait]
impl Operation for HttpCollect {
    fn validate(&self, _params: &Value, spec: &OperationSpec) -> Result<(), String> {
        provider_of(&self.providers, spec)?;
        setting(spec, "path").ok_or("settings.path is required for http.collect")?;
        Ok(())
    }

    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let spec = ctx.spec();
        let provider = provider_of(&self.providers, spec).map_err(OperationError::payload_invalid)?;
        let items_field = setting(spec, "items").unwrap_or("value");
        let failed_field = setting(spec, "item_failed").unwrap_or("error");
        let max_pages = spec.settings.get("max_pages").and_then(|v| v.as_integer()).unwrap_or(10_000).max(1) as u64;
        let mut failed_total = ctx.run().summary_counts.get("failed");
        // A checkpoint `{"done": true}`: an earlier attempt fetched the last
        // page (its counts are in the run) and died before completing; this
        // attempt only completes. Else resume at the stored next link.
        let done = ctx.checkpoint().and_then(|c| c.get("done")).and_then(Value::as_bool) == Some(true);
        // The query parameters the stored link was kept without, named when
        // the resumed request fails.
        let mut left_out = String::new();
        let mut next = match ctx.checkpoint().and_then(|c| c.get("next")).and_then(Value::as_str) {
            _ if done => {
                info!(run.id = %ctx.run().id, "every page was fetched before: completing from the checkpoint");
                provider.base.clone()
            }
            Some(resume) => {
                info!(run.id = %ctx.run().id, "resuming the collection from its checkpoint");
                let names: Vec<&str> = ctx
                    .checkpoint()
                    .and_then(|c| c.get("removed_params"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                left_out = names.join(", ");
                // Stored absolute; an older relative one resolves against the base.
                provider.link_url(&provider.base, resume)?
            }
            None => provider.path_url(&fill(setting(spec, "path").unwrap_or_default(), ctx)?)?,
        };
        let mut pages = 0;
        if !done {
            loop {
                if ctx.cancel_requested() {
                    return Ok(ctx.cancelled());
                }
                let (headers, bytes) = match provider.send(ctx, Method::GET, &next, None).await {
                    Err(e) if pages == 0 && !left_out.is_empty() => {
                        let note =
                            format!("resumed from a next link stored without its secret query parameters ({left_out})");
                        return Err(with_note(e, &note));
                    }
                    sent => sent?,
                };
                let body: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    OperationError::failed(ReasonCode::ProviderBadResponse.as_str(), format!("page is not JSON: {e}"))
                })?;
                let items = body.get(items_field).and_then(Value::as_array).ok_or_else(|| {
                    OperationError::failed(
                        ReasonCode::ProviderBadResponse.as_str(),
                        format!("page has no '{items_field}' array"),
                    )
                })?;
                let failed = items
                    .iter()
                    .filter(|i| i.get(failed_field).is_some_and(|v| !v.is_null() && *v != Value::Bool(false)))
                    .count() as u64;
                failed_total += failed;
                let total = items.len() as u64;
                let mut counts = SummaryCounts::new();
                for (k, v) in [
                    ("total", total),
                    ("processed", total),
                    ("succeeded", total - failed),
                    ("failed", failed),
                    ("pages", 1),
                ] {
                    counts.add(k, v).map_err(|e| OperationError::failed("unknown_error", e.to_string()))?;
                }
                pages += 1;
                let link = next_link(&body, &headers);
                match link {
                    Some(link) if pages < max_pages => {
                        // Resolved and origin-checked now, so a bad link fails before it is stored.
                        let url = provider.link_url(&next, &link)?;
                        let (stored, removed) = storable_link(&url, &provider.token.0);
                        let mut checkpoint = json!({ "next": stored });
                        if !removed.is_empty() {
                            checkpoint["removed_params"] = json!(removed);
                        }
                        ctx.progress(counts, Some(checkpoint)).await?;
                        // This attempt follows the link as sent.
                        next = url;
                    }
                    _ => {
                        ctx.progress(counts, Some(json!({ "next": null, "done": true }))).await?;
                        break;
                    }
                }
            }
        }
        let outcome = if failed_total > 0 { RunOutcome::PartiallySucceeded } else { RunOutcome::Succeeded };
        let mut done = Completion { outcome, ..Completion::succeeded(SummaryCounts::new()) };
        if failed_total > 0 {
            done.failures.push(FailureEntry {
                reason_code: "provider.item_failed".into(),
                message: format!("{failed_total} item(s) were marked failed by provider '{}'", provider.name),
            });
        }
        Ok(done)
    }
}

/// `http.call`: one request. Settings: `method` (default POST), `path` (with
/// scope placeholders, required). The JSON body is the run's params.
#[derive(Debug, Clone)]
pub struct HttpCall {
    providers: Providers,
}

#[async_trait]
impl Operation for HttpCall {
    fn validate(&self, _params: &Value, spec: &OperationSpec) -> Result<(), String> {
        provider_of(&self.providers, spec)?;
        setting(spec, "path").ok_or("settings.path is required for http.call")?;
        let m = setting(spec, "method").unwrap_or("POST");
        Method::from_bytes(m.as_bytes()).map_err(|_| format!("settings.method: '{m}' is not an HTTP method"))?;
        Ok(())
    }

    async fn execute(&self, ctx: &RunContext) -> Result<Completion, OperationError> {
        let spec = ctx.spec();
        let provider = provider_of(&self.providers, spec).map_err(OperationError::payload_invalid)?;
        let method = Method::from_bytes(setting(spec, "method").unwrap_or("POST").as_bytes())
            .map_err(|_| OperationError::payload_invalid("settings.method is not an HTTP method"))?;
        let url = provider.path_url(&fill(setting(spec, "path").unwrap_or_default(), ctx)?)?;
        let body = (method != Method::GET && method != Method::HEAD).then(|| ctx.params().clone());
        provider.send(ctx, method, &url, body.as_ref()).await?;
        let counts = SummaryCounts::new().with("total", 1).and_then(|c| c.with("succeeded", 1)).unwrap_or_default();
        Ok(Completion::succeeded(counts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_come_from_the_body_or_the_link_header() {
        let h = HeaderMap::new();
        assert_eq!(next_link(&json!({"@odata.nextLink": "https://x/a?p=2"}), &h).as_deref(), Some("https://x/a?p=2"));
        assert_eq!(next_link(&json!({"next": "/a?p=3"}), &h).as_deref(), Some("/a?p=3"));
        assert_eq!(next_link(&json!({"next": null}), &h), None);
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::LINK, "</a?p=1>; rel=\"prev\", </a?p=4>; rel=\"next\"".parse().unwrap());
        assert_eq!(next_link(&json!({}), &h).as_deref(), Some("/a?p=4"));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        let later = (now + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let earlier = (now - chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, earlier.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO), "a date already past is no wait");
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn placeholders_are_url_encoded() {
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
    }

    const WIPE: &str = "/tenants/{environment}/devices/{target_id}/wipe";

    fn scope<'a>(env: &'a str, target: &'a str) -> [(&'static str, Option<&'a str>); 4] {
        [
            ("{workspace}", Some("contoso")),
            ("{environment}", Some(env)),
            ("{target_type}", None),
            ("{target_id}", Some(target)),
        ]
    }

    #[test]
    fn a_placeholder_value_cannot_change_the_request_path() {
        let base = Url::parse("https://graph.test/v1.0").unwrap();
        let path = |env: &str, target: &str| -> Result<String, String> {
            let filled = fill_with(WIPE, &scope(env, target))?;
            Ok(path_url(&base, &filled)?.path().to_string())
        };
        assert_eq!(path("contoso-prod", "dev-1").unwrap(), "/v1.0/tenants/contoso-prod/devices/dev-1/wipe");
        // `/`, `?`, `#`, `%` stay inside their segment.
        assert_eq!(path("contoso-prod", "a/../b").unwrap(), "/v1.0/tenants/contoso-prod/devices/a%2F..%2Fb/wipe");
        assert_eq!(path("contoso-prod", "x?y#z").unwrap(), "/v1.0/tenants/contoso-prod/devices/x%3Fy%23z/wipe");
        assert_eq!(path("contoso-prod", "%2e%2e").unwrap(), "/v1.0/tenants/contoso-prod/devices/%252e%252e/wipe");
        assert_eq!(path("contoso-prod", "a..").unwrap(), "/v1.0/tenants/contoso-prod/devices/a../wipe");
        // Dot segments and empty values, in every placeholder, are refused naming it.
        for (env, target, key) in [
            ("contoso-prod", "..", "{target_id} = '..'"),
            ("contoso-prod", ".", "{target_id} = '.'"),
            ("..", "dev-1", "{environment} = '..'"),
            (".", "dev-1", "{environment} = '.'"),
            ("contoso-prod", "", "{target_id} is empty"),
        ] {
            let e = path(env, target).unwrap_err();
            assert!(e.contains(key) && e.contains("request path"), "{env} {target}: {e}");
        }
        let ws = fill_with("/w/{workspace}/x", &[("{workspace}", Some(".."))]).unwrap_err();
        assert!(ws.contains("{workspace} = '..'"), "{ws}");
        let kind = fill_with("/k/{target_type}", &[("{target_type}", Some("."))]).unwrap_err();
        assert!(kind.contains("{target_type} = '.'"), "{kind}");
        // A value completing a dot segment the template starts is refused too.
        assert!(fill_with("/devices/.{target_id}", &[("{target_id}", Some("."))]).is_err());
        // The query part is filled, not checked for dot segments.
        assert_eq!(fill_with("/d?id={target_id}", &[("{target_id}", Some(".."))]).unwrap(), "/d?id=..");
        assert!(fill_with("/d/{target_id}", &[("{target_id}", None)]).unwrap_err().contains("the run has none"));
    }

    #[test]
    fn next_links_resolve_as_url_references_against_the_page() {
        let page = Url::parse("https://h.test/v1.0/devices?page=1").unwrap();
        let at = |link: &str| link_url(&page, link).unwrap().to_string();
        assert_eq!(at("/v1.0/devices?page=2"), "https://h.test/v1.0/devices?page=2", "not /v1.0/v1.0");
        assert_eq!(at("https://h.test/v1.0/devices?page=3"), "https://h.test/v1.0/devices?page=3");
        assert_eq!(at("?page=4"), "https://h.test/v1.0/devices?page=4");
        assert_eq!(at("devices?page=5"), "https://h.test/v1.0/devices?page=5");
        // Another origin is resolved (and then refused by the origin check).
        assert_eq!(
            link_url(&page, "//evil.test/x").unwrap().origin(),
            Url::parse("https://evil.test").unwrap().origin()
        );
        // A settings path stays under the base path.
        let base = Url::parse("https://h.test/v1.0").unwrap();
        assert_eq!(path_url(&base, "/devices").unwrap().as_str(), "https://h.test/v1.0/devices");
        assert_eq!(path_url(&base, "devices").unwrap().as_str(), "https://h.test/v1.0/devices");
    }

    #[test]
    fn a_stored_next_link_keeps_its_cursor_without_the_token_or_signatures() {
        let token = "tok-canary-1234567890";
        let link = Url::parse(&format!(
            "https://user:pw@h.test/v1.0/devices?page=2&access_token={token}&sig=abc%2Bdef&X-Amz-Signature=f00d\
             &X-Amz-Credential=AKIA%2F2026&client_secret=s3&code_challenge=x&$skiptoken=Z2V0&$top=100\
             &other=has-{token}-inside&%73ig=encoded#frag"
        ))
        .unwrap();
        let (stored, removed) = storable_link(&link, token);
        assert_eq!(stored, "https://h.test/v1.0/devices?page=2&code_challenge=x&$skiptoken=Z2V0&$top=100");
        assert_eq!(
            removed,
            ["access_token", "sig", "X-Amz-Signature", "X-Amz-Credential", "client_secret", "other", "sig"]
        );
        // A link without secrets is kept as sent.
        let plain = Url::parse("https://h.test/v1.0/devices?page=2&$skiptoken=abc").unwrap();
        assert_eq!(storable_link(&plain, token), (plain.to_string(), vec![]));
        // The token in the path is replaced.
        let in_path = Url::parse(&format!("https://h.test/t/{token}/devices")).unwrap();
        let (stored, removed) = storable_link(&in_path, token);
        assert_eq!(stored, "https://h.test/t/[REDACTED]/devices");
        assert_eq!(removed.len(), 1);
    }
}
