//! The worker's sections of the config file: `[queue]`, `[worker]` and
//! `[providers.NAME]`, their named defaults, and the one check of each —
//! including that an operation's `provider` is one the worker can call. The
//! binary puts these sections into the file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use oprun_shared::OperationSpec;
use oprun_shared::config::Problems;
use reqwest::Url;
use serde::{Deserialize, Serialize};

/// The queue: the run store itself (see `queue`). Only how an idle worker
/// waits is set here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// How long an idle worker waits for a wake-up before it looks for
    /// ready runs anyway (wake-ups come at once from dispatches in the same
    /// process and, on Postgres, from any process).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { poll_interval: Duration::from_millis(100) }
    }
}

impl QueueConfig {
    /// Add what is wrong with `[queue]`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.positive_at_most_max("queue.poll_interval", self.poll_interval);
    }
}

/// Where the throttle budgets every worker shares live (see `budget`):
/// Redis, or (no URL) each process's memory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// `redis://` or `rediss://` URL (overridden by `OPRUN_REDIS_URL`).
    pub redis_url: Option<String>,
}

impl BudgetsConfig {
    /// Add what is wrong with `[budgets]` (the URL is never repeated: it
    /// may hold a password).
    pub fn validate(&self, problems: &mut Problems) {
        if let Some(url) = &self.redis_url {
            problems.check(
                (url.starts_with("redis://") || url.starts_with("rediss://"))
                    && redis::Client::open(url.as_str()).is_ok(),
                || "budgets.redis_url: must be a redis:// or rediss:// URL".into(),
            );
        }
    }
}

/// The worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Runs handled at once by one process.
    pub concurrency: usize,
    /// How long in-flight runs may finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { concurrency: 16, shutdown_grace: Duration::from_secs(30) }
    }
}

impl WorkerConfig {
    /// Add what is wrong with `[worker]`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.at_most_max("worker.shutdown_grace", self.shutdown_grace);
        problems.check((1..=10_000).contains(&self.concurrency), || {
            "worker.concurrency: must be between 1 and 10000".into()
        });
    }
}

/// How a provider's bearer token is found (never in the config itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Base URL of the provider's API.
    pub base_url: String,
    /// Environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Connect timeout.
    #[serde(with = "humantime_serde", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Request timeout.
    #[serde(with = "humantime_serde", default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// Retries of transient errors within one attempt.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: u32,
    /// Longest Retry-After honoured.
    #[serde(with = "humantime_serde", default = "default_retry_after_cap")]
    pub retry_after_cap: Duration,
    /// Requests in flight to this provider per process.
    #[serde(default = "default_provider_concurrency")]
    pub concurrency: usize,
    /// Requests in flight per managed environment (optional), across every
    /// worker that shares the budgets (`[budgets]`), or per process without.
    #[serde(default)]
    pub concurrency_per_environment: Option<usize>,
    /// Requests per second per managed environment (optional; a burst of as
    /// many), shared like `concurrency_per_environment`.
    #[serde(default)]
    pub rate_per_environment: Option<f64>,
    /// The largest response body read, in bytes; a longer one (or one whose
    /// Content-Length says so) ends the attempt `provider.bad_response`.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
}

/// The default [`ProviderConfig::max_response_bytes`]: 8 MiB, several pages
/// of the largest page size common providers allow (Graph's 999 items).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 8 * 1024 * 1024;
/// The largest [`ProviderConfig::max_response_bytes`] accepted: 1 GiB.
pub const MAX_MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_budget() -> u32 {
    4
}
fn default_retry_after_cap() -> Duration {
    Duration::from_secs(60)
}
fn default_provider_concurrency() -> usize {
    8
}
fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// Where a provider's token is read from: exactly one of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource<'a> {
    /// An environment variable.
    Env(&'a str),
    /// A file (relative to the config file's folder).
    File(&'a std::path::Path),
}

impl ProviderConfig {
    /// The base URL, which must be http(s).
    pub fn base(&self) -> Result<Url, String> {
        let problem = || "base_url: must be an http(s) URL".to_string();
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(problem());
        }
        Url::parse(&self.base_url).map_err(|e| format!("base_url: {e}"))
    }

    /// Where the token is read from.
    pub fn token_source(&self) -> Result<TokenSource<'_>, String> {
        match (&self.token_env, &self.token_file) {
            (Some(var), None) => Ok(TokenSource::Env(var)),
            (None, Some(file)) => Ok(TokenSource::File(file)),
            _ => Err("set exactly one of token_env or token_file".into()),
        }
    }

    /// Add what is wrong with `[providers.NAME]`: the one check of a
    /// provider, also made when one is built ([`crate::http::Providers`]).
    pub fn validate(&self, name: &str, problems: &mut Problems) {
        let field = |f: &str| format!("providers.{name}.{f}");
        if let Err(e) = self.base() {
            problems.push(format!("providers.{name}.{e}"));
        }
        if let Err(e) = self.token_source() {
            problems.push(format!("providers.{name}: {e}"));
        }
        problems.check(self.concurrency != 0, || format!("{}: must be at least 1", field("concurrency")));
        problems.check(self.concurrency_per_environment != Some(0), || {
            format!("{}: must be at least 1", field("concurrency_per_environment"))
        });
        problems.check(self.rate_per_environment.is_none_or(|r| r.is_finite() && r > 0.0 && r <= 1e6), || {
            format!(
                "{}: must be a number of requests per second above 0 (at most 1000000)",
                field("rate_per_environment")
            )
        });
        problems.check(!self.request_timeout.is_zero() && !self.connect_timeout.is_zero(), || {
            format!("{}: timeouts must be longer than zero", field("request_timeout"))
        });
        for (f, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("retry_after_cap", self.retry_after_cap),
        ] {
            problems.at_most_max(&field(f), d);
        }
        problems.check((1..=MAX_MAX_RESPONSE_BYTES).contains(&self.max_response_bytes), || {
            format!("{}: must be between 1 and {MAX_MAX_RESPONSE_BYTES} (1 GiB)", field("max_response_bytes"))
        });
    }
}

/// Add what is wrong with the providers, and with each operation's
/// `provider`: a configured one or the in-process demo provider.
pub fn validate_providers(
    providers: &BTreeMap<String, ProviderConfig>,
    operations: &BTreeMap<String, OperationSpec>,
    problems: &mut Problems,
) {
    for (name, p) in providers {
        p.validate(name, problems);
    }
    for (name, op) in operations {
        if let Some(p) = &op.provider {
            problems.check(providers.contains_key(p) || p == crate::demo::PROVIDER, || {
                format!("operations.\"{name}\".provider: unknown provider '{p}'")
            });
        }
    }
}
