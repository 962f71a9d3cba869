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

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use oprun_shared::config::{Config, ProviderConfig};
use oprun_shared::{Completion, FailureEntry, OperationSpec, ReasonCode, RunOutcome, SummaryCounts, redact};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, info, warn};

use crate::operation::{Operation, OperationError, Operations, RunContext};

/// The kind that walks a paged collection.
pub const COLLECT: &str = "http.collect";
/// The kind that makes one request.
pub const CALL: &str = "http.call";
/// The longest error-body excerpt kept in a failure summary.
pub const EXCERPT_CHARS: usize = 200;

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
    let token = match (&cfg.token_env, &cfg.token_file) {
        (Some(var), None) => {
            std::env::var(var).map_err(|_| err(format!("token_env: the environment variable {var} is not set")))?
        }
        (None, Some(file)) => {
            let path = match base_dir {
                Some(dir) if file.is_relative() => dir.join(file),
                _ => file.clone(),
            };
            std::fs::read_to_string(&path)
                .map_err(|e| err(format!("token_file: cannot read {}: {}", path.display(), e.kind())))?
        }
        (Some(_), Some(_)) => return Err(err("set token_env or token_file, not both".into())),
        (None, None) => return Err(err("set token_env or token_file (the token never goes in the config)".into())),
    };
    let token = token.trim().to_string();
    if token.is_empty() || token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(err("the token is empty or not a single line".into()));
    }
    Ok(token)
}

impl Providers {
    /// Build every provider of `config`: read tokens, build clients.
    pub fn from_config(config: &Config) -> Result<Self, ProviderSetupError> {
        let base_dir = config.path.as_deref().and_then(Path::parent);
        let mut by_name = BTreeMap::new();
        for (name, cfg) in &config.providers {
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

/// Parse Retry-After: seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

impl Provider {
    fn new(name: &str, cfg: &ProviderConfig, base_dir: Option<&Path>) -> Result<Self, ProviderSetupError> {
        let err = |message: String| ProviderSetupError { name: name.into(), message };
        let base = Url::parse(&cfg.base_url).map_err(|e| err(format!("base_url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(err("base_url: must be http or https".into()));
        }
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

    /// A URL under this provider: a relative path joins the base; an
    /// absolute URL (a next link) must be on the base's origin, so that the
    /// token is never sent elsewhere.
    fn url(&self, path_or_url: &str) -> Result<Url, OperationError> {
        let url = match Url::parse(path_or_url) {
            Ok(u) => u,
            Err(_) => {
                let base = self.base.as_str().trim_end_matches('/');
                let path = path_or_url.trim_start_matches('/');
                Url::parse(&format!("{base}/{path}"))
                    .map_err(|e| OperationError::payload_invalid(format!("bad request path: {e}")))?
            }
        };
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

    fn classify_status(&self, status: StatusCode, headers: &HeaderMap, body: &str) -> Failure {
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
        Failure { reason, message, transient, retry_after: retry_after(headers) }
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

    /// One request with the retry budget; returns the headers and the body
    /// of a 2xx answer.
    pub async fn send(
        &self,
        ctx: &RunContext,
        method: Method,
        path_or_url: &str,
        body: Option<&Value>,
    ) -> Result<(HeaderMap, Vec<u8>), OperationError> {
        let url = self.url(path_or_url)?;
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
                    Ok(resp) => {
                        let status = resp.status();
                        let headers = resp.headers().clone();
                        match resp.bytes().await {
                            Ok(bytes) if status.is_success() => return Ok((headers, bytes.to_vec())),
                            Ok(bytes) => self.classify_status(status, &headers, &String::from_utf8_lossy(&bytes)),
                            Err(e) => self.classify_error(&e),
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
/// the run's scope, URL-encoded.
fn fill(template: &str, ctx: &RunContext) -> Result<String, OperationError> {
    let run = ctx.run();
    let enc = |s: &str| -> String { url_escape(s) };
    let mut out = template.to_string();
    for (key, value) in [
        ("{workspace}", Some(run.workspace_id.as_str())),
        ("{environment}", run.environment_id.as_deref()),
        ("{target_type}", run.target_type.as_deref()),
        ("{target_id}", run.target_id.as_deref()),
    ] {
        if out.contains(key) {
            let v =
                value.ok_or_else(|| OperationError::payload_invalid(format!("{key} is used but the run has none")))?;
            out = out.replace(key, &enc(v));
        }
    }
    Ok(out)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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
        let mut next = match ctx.checkpoint().and_then(|c| c.get("next")).and_then(Value::as_str) {
            _ if done => {
                info!(run.id = %ctx.run().id, "every page was fetched before: completing from the checkpoint");
                String::new()
            }
            Some(resume) => {
                info!(run.id = %ctx.run().id, "resuming the collection from its checkpoint");
                resume.to_string()
            }
            None => fill(setting(spec, "path").unwrap_or_default(), ctx)?,
        };
        let mut pages = 0;
        if !done {
            loop {
                if ctx.cancel_requested() {
                    return Ok(ctx.cancelled());
                }
                let (headers, bytes) = provider.send(ctx, Method::GET, &next, None).await?;
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
                        // Check the origin now, so a bad link fails before it is stored.
                        provider.url(&link)?;
                        ctx.progress(counts, Some(json!({ "next": link }))).await?;
                        next = link;
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
        let path = fill(setting(spec, "path").unwrap_or_default(), ctx)?;
        let body = (method != Method::GET && method != Method::HEAD).then(|| ctx.params().clone());
        provider.send(ctx, method, &path, body.as_ref()).await?;
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
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        h.insert(RETRY_AFTER, later.parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(d <= Duration::from_secs(30) && d >= Duration::from_secs(28), "{d:?}");
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn placeholders_are_url_encoded() {
        assert_eq!(url_escape("a b/c"), "a%20b%2Fc");
    }
}
