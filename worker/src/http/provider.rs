//! One configured provider: its client, token and concurrency limits, a
//! request with the retry budget (transient failures retried with backoff
//! and jitter, Retry-After honoured up to its cap, permits released while
//! waiting), a body read a chunk at a time up to its limit, and every
//! failure classified into a `provider.*` reason with a sanitized message.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};
use oprun_shared::{ReasonCode, SummaryCounts, redact};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, warn};

use super::EXCERPT_CHARS;
use super::links::{link_url, path_url};
use crate::budget::{BudgetKey, Budgets, Limits, Permit, Take};
use crate::config::{ProviderConfig, TokenSource};
use crate::operation::{OperationError, RunContext};

/// The most of an error answer's body read (for its excerpt), in bytes.
const ERROR_BODY_BYTES: u64 = 16 * 1024;

/// The longest a request waits in its attempt for its rate's next token;
/// a longer wait, or a budget with every permit in use, puts the run back
/// to wait without a worker slot.
const PACE_IN_ATTEMPT: Duration = Duration::from_millis(250);
/// The shortest and longest wait of a run whose budget had no room.
const BUDGET_WAIT_MIN: Duration = Duration::from_millis(200);
const BUDGET_WAIT_MAX: Duration = Duration::from_secs(2);

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
pub(super) struct Token(pub(super) String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([REDACTED])")
    }
}

/// One configured provider.
#[derive(Debug)]
pub struct Provider {
    pub(super) name: String,
    pub(super) base: Url,
    client: reqwest::Client,
    pub(super) token: Token,
    retry_budget: u32,
    retry_after_cap: Duration,
    max_body: u64,
    limit: Arc<Semaphore>,
    budget: Limits,
    budgets: Budgets,
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

/// Room for one request: its budget's permit, a slot of the process's own
/// limit, and the gauge of permits in use (this process's), all given back
/// when the request ends.
struct Admitted {
    _permit: Permit,
    _slot: OwnedSemaphorePermit,
    in_use: metrics::Gauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.in_use.decrement(1.0);
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
            OperationError::failed(self.reason, self.message)
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
    pub(super) fn new(
        name: &str,
        cfg: &ProviderConfig,
        base_dir: Option<&Path>,
        budgets: &Budgets,
    ) -> Result<Self, ProviderSetupError> {
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
            budget: Limits {
                concurrency: cfg.concurrency_per_environment.map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1)),
                per_second: cfg.rate_per_environment,
                // A permit outlives its request by a margin; a dead worker's
                // comes back after that.
                lease: cfg.request_timeout.saturating_add(Duration::from_secs(5)),
            },
            budgets: budgets.clone(),
        })
    }

    /// Redact a provider message: its own token first, then the sanitizer.
    fn clean(&self, s: &str) -> String {
        redact::sanitize(&s.replace(&self.token.0, "[REDACTED]"))
    }

    /// The budget of a run's requests: this provider for its environment.
    fn budget_key(&self, ctx: &RunContext) -> BudgetKey {
        BudgetKey::new(&self.name, ctx.run().environment_id.as_deref())
    }

    /// One more wait for the budget of `key` (`why`: blocked, full, paced).
    fn count_wait(&self, key: &BudgetKey, why: &'static str) {
        metrics::counter!("oprun_budget_waits_total", "provider" => self.name.clone(), "environment" => key.environment.clone(), "why" => why)
            .increment(1);
    }

    /// Room for one request in the budget of `key`, and a slot of this
    /// process's own limit. A block shorter than the in-attempt cap is
    /// waited for here (as a Retry-After of the request's own); a longer
    /// one snoozes the run until it passes; a budget with every permit in
    /// use (or a rate whose next token is far) puts the run back to wait
    /// for a moment, holding no worker slot.
    async fn admit(&self, ctx: &RunContext, key: &BudgetKey) -> Result<Admitted, OperationError> {
        loop {
            if ctx.lease_lost() {
                return Err(OperationError::LeaseLost);
            }
            let wait = match self.budgets.take(key, &self.budget).await {
                Take::Granted(permit) => {
                    let slot = self.limit.clone().acquire_owned().await.map_err(|_| OperationError::LeaseLost)?;
                    let in_use = metrics::gauge!("oprun_budget_permits_in_use", "provider" => self.name.clone(), "environment" => key.environment.clone());
                    in_use.increment(1.0);
                    return Ok(Admitted { _permit: permit, _slot: slot, in_use });
                }
                Take::Blocked { remaining } if remaining > self.retry_after_cap => {
                    self.count_wait(key, "blocked");
                    return Err(OperationError::RetryAfter {
                        reason: ReasonCode::ProviderThrottled,
                        message: format!(
                            "{key} is throttled: the provider asked every request to wait (Retry-After {}s, over the in-attempt cap of {}s)",
                            remaining.as_secs().max(1),
                            self.retry_after_cap.as_secs()
                        ),
                        after: remaining,
                    });
                }
                Take::Blocked { remaining } => {
                    self.count_wait(key, "blocked");
                    metrics::histogram!("oprun_provider_throttle_wait_seconds", "provider" => self.name.clone())
                        .record(remaining.as_secs_f64());
                    let mut counts = SummaryCounts::new();
                    let _ = counts.add("throttle_waits", 1);
                    let _ = counts.add("throttle_wait_ms", u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX));
                    ctx.progress(counts, None).await?;
                    remaining
                }
                Take::Paced { retry_in } if retry_in <= PACE_IN_ATTEMPT => retry_in,
                take @ (Take::Paced { .. } | Take::Full { .. }) => {
                    // A full budget frees when a request ends (its lease is
                    // only the bound for a dead holder): look again soon. A
                    // rate says when its next token comes.
                    let (why, after, message) = match take {
                        Take::Paced { retry_in } => (
                            "paced",
                            retry_in.clamp(BUDGET_WAIT_MIN, BUDGET_WAIT_MAX),
                            format!("{key}: its request rate is spent for now"),
                        ),
                        _ => ("full", BUDGET_WAIT_MIN, format!("{key}: every permit of its budget is in use")),
                    };
                    self.count_wait(key, why);
                    // Runs that found the budget full together do not come
                    // back together (0–255 ms more).
                    let jitter = Duration::from_millis(u64::from(uuid::Uuid::now_v7().as_bytes()[15]));
                    return Err(OperationError::BudgetFull { message, after: after + jitter });
                }
            };
            tokio::time::sleep(wait).await;
            if ctx.cancel_requested() {
                return Err(OperationError::Cancelled);
            }
        }
    }

    /// The URL of a request path from an operation's settings.
    pub(super) fn path_url(&self, path: &str) -> Result<Url, OperationError> {
        let url = path_url(&self.base, path).map_err(OperationError::payload_invalid)?;
        self.same_origin(url)
    }

    /// The URL a next link names, resolved against the page that carried it.
    pub(super) fn link_url(&self, page: &Url, link: &str) -> Result<Url, OperationError> {
        let url = link_url(page, link).map_err(|e| {
            OperationError::failed(ReasonCode::ProviderBadResponse, format!("provider '{}': {e}", self.name))
        })?;
        self.same_origin(url)
    }

    /// `url` if it is on the base's origin, so that the token is never sent
    /// elsewhere.
    fn same_origin(&self, url: Url) -> Result<Url, OperationError> {
        if url.origin() != self.base.origin() {
            return Err(OperationError::failed(
                ReasonCode::ProviderBadResponse,
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
    pub(super) async fn send(
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
        let key = self.budget_key(ctx);
        loop {
            let failure = {
                let _permits = self.admit(ctx, &key).await?;
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
            if let Some(after) = failure.retry_after.filter(|a| !a.is_zero()) {
                // The provider throttles this budget: every worker waits.
                self.budgets.block(&key, after).await;
            }
            let Some(backoff) = delays.next() else {
                let mut f = failure;
                f.message = format!("{} (retry budget of {} exhausted)", f.message, self.retry_budget);
                return Err(f.into_error());
            };
            let wait = match failure.retry_after {
                Some(after) if after > self.retry_after_cap => {
                    // Too long to wait holding a worker slot: the run is
                    // snoozed until then (the retry policy bounds how often).
                    return Err(OperationError::RetryAfter {
                        reason: failure.reason,
                        message: format!(
                            "{} (Retry-After {}s is over the in-attempt cap of {}s)",
                            failure.message,
                            after.as_secs(),
                            self.retry_after_cap.as_secs()
                        ),
                        after,
                    });
                }
                Some(after) if !after.is_zero() => after,
                Some(_) => backoff,
                None => backoff,
            };
            warn!(provider = %self.name, reason = %failure.reason, wait_ms = wait.as_millis() as u64, "transient provider failure; retrying");
            metrics::counter!("oprun_provider_retries_total", "provider" => self.name.clone(), "reason" => failure.reason.as_str())
                .increment(1);
            if failure.reason == ReasonCode::ProviderThrottled {
                metrics::histogram!("oprun_provider_throttle_wait_seconds", "provider" => self.name.clone())
                    .record(wait.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
