//! The one configuration file (`oprun.toml`): stores, queue, worker,
//! scheduler, API, the operation catalog, providers and schedules. Every
//! struct has named defaults and `validate()` refuses nonsense with a message
//! that names the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, OperationSpec};

/// The environment variable that overrides `api.bind`.
pub const API_BIND_VAR: &str = "OPRUN_API_BIND";
/// The environment variable that overrides `store.url`.
pub const DATABASE_URL_VAR: &str = "OPRUN_DATABASE_URL";
/// The environment variable that overrides `queue.url`.
pub const QUEUE_URL_VAR: &str = "OPRUN_QUEUE_URL";
/// The environment variable that names the config file.
pub const CONFIG_VAR: &str = "OPRUN_CONFIG";
/// The embedded default: one SQLite file beside where oprun runs.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://oprun.db";

/// The longest any duration setting may be (operation leases and stale
/// thresholds included): 365 days. Nothing here is sensibly longer, and it
/// keeps every `now + d` and `d * n` the services compute far from overflow
/// (a `100000000000y` tick used to panic at start-up).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// What is wrong with a duration setting longer than [`MAX_DURATION`].
pub fn duration_too_long(d: Duration) -> Option<String> {
    (d > MAX_DURATION).then(|| {
        format!(
            "{} is too long: at most {} days",
            humantime_serde::re::humantime::format_duration(d),
            MAX_DURATION.as_secs() / 86_400
        )
    })
}

/// Refuse a duration setting longer than [`MAX_DURATION`], naming `field`.
pub fn check_duration(field: &str, d: Duration) -> Result<(), String> {
    duration_too_long(d).map_or(Ok(()), |problem| Err(format!("{field}: {problem}")))
}

/// A configuration that cannot be used. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ConfigError {
    /// The file (or `defaults`).
    pub source_name: String,
    /// What is wrong, naming the field.
    pub message: String,
}

/// Where run truth lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://PATH` (relative paths are relative to the
    /// working directory). Overridden by `OPRUN_DATABASE_URL`.
    pub url: String,
    /// Connection pool size.
    pub max_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: DEFAULT_DATABASE_URL.into(), max_connections: 16 }
    }
}

/// Which queue carries jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueBackend {
    /// apalis-redis (production).
    Redis,
    /// apalis-sqlite, in the store's SQLite file (embedded default).
    Sqlite,
}

/// The job queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `sqlite` (default: the store's file) or `redis`.
    pub backend: QueueBackend,
    /// The Redis URL (for `redis`). Overridden by `OPRUN_QUEUE_URL`.
    pub url: Option<String>,
    /// The queue's name (Redis key namespace / SQLite job type).
    pub namespace: String,
    /// How often an idle worker polls for jobs.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How often a worker tells the queue it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Heartbeats a worker may miss before the queue hands its in-flight
    /// jobs to others.
    pub missed_heartbeats: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Sqlite,
            url: None,
            namespace: "oprun".into(),
            poll_interval: Duration::from_millis(100),
            heartbeat: Duration::from_secs(5),
            missed_heartbeats: 3,
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

/// The scheduler and reconciler loops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// How often schedules are evaluated.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// How often the reconciler runs.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// How long after a lease expired the reconciler waits.
    #[serde(with = "humantime_serde")]
    pub lease_grace: Duration,
    /// The actor the automatic reconciler audits as.
    pub reconciler_actor: String,
    /// A tick still undecided this long after its claim (or its holder's
    /// last progress) was abandoned by a scheduler that died mid-tick;
    /// another scheduler takes it over and finishes it.
    #[serde(with = "humantime_serde")]
    pub abandoned_tick_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(30),
            lease_grace: Duration::from_secs(10),
            reconciler_actor: "oprun-reconciler".into(),
            abandoned_tick_after: Duration::from_secs(120),
        }
    }
}

/// The operator HTTP API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on (loopback unless configured otherwise).
    pub bind: String,
    /// Whether `up` and `scheduler` serve it.
    pub enabled: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self { bind: "127.0.0.1:8080".into(), enabled: true }
    }
}

/// Overlap policy of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Skip a tick while an active run of the same operation and scope exists.
    Skip,
    /// Dispatch anyway (the operation's dedup policy still applies).
    Allow,
}

/// Misfire policy of a schedule: what to do with ticks missed while no
/// scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Fire the latest missed tick once if it is within `misfire_window`;
    /// record the others as skipped.
    FireOnce,
    /// Record every missed tick as skipped.
    Skip,
}

/// A schedule's scope: a workspace, an environment, or every operable
/// environment of a workspace (one run each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleEnvironments {
    /// Every operable environment of the workspace.
    All,
}

/// One cron schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Unique name.
    pub name: String,
    /// Cron expression: 5 fields (minute precision) or 6–7 (with seconds).
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "utc")]
    pub timezone: String,
    /// The operation to dispatch.
    pub operation: String,
    /// The workspace.
    pub workspace: String,
    /// One environment.
    #[serde(default)]
    pub environment: Option<String>,
    /// `"all"`: every operable environment of the workspace.
    #[serde(default)]
    pub environments: Option<ScheduleEnvironments>,
    /// The service actor the runs are dispatched as.
    pub actor: String,
    /// Parameters for each run.
    #[serde(default = "empty_object")]
    pub params: serde_json::Value,
    /// Overlap policy.
    #[serde(default = "default_overlap")]
    pub overlap: OverlapPolicy,
    /// Misfire policy.
    #[serde(default = "default_misfire")]
    pub misfire: MisfirePolicy,
    /// How late a missed tick may still fire under `fire_once`.
    #[serde(with = "humantime_serde", default = "default_misfire_window")]
    pub misfire_window: Duration,
    /// Disabled schedules record nothing.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn utc() -> String {
    "UTC".into()
}
fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
fn default_overlap() -> OverlapPolicy {
    OverlapPolicy::Skip
}
fn default_misfire() -> MisfirePolicy {
    MisfirePolicy::FireOnce
}
fn default_misfire_window() -> Duration {
    Duration::from_secs(600)
}
fn yes() -> bool {
    true
}

impl ScheduleSpec {
    /// The parsed cron schedule (5-field expressions get a leading `0` seconds field).
    pub fn parsed_cron(&self) -> Result<cron::Schedule, String> {
        let fields = self.cron.split_whitespace().count();
        let expr = if fields == 5 { format!("0 {}", self.cron) } else { self.cron.clone() };
        cron::Schedule::from_str(&expr).map_err(|e| format!("'{}' is not a valid cron expression: {e}", self.cron))
    }

    /// The parsed time zone.
    pub fn tz(&self) -> Result<chrono_tz::Tz, String> {
        chrono_tz::Tz::from_str(&self.timezone).map_err(|_| format!("'{}' is not an IANA time zone", self.timezone))
    }
}

/// How a provider's bearer token is found (never in the config itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Requests in flight per managed environment (optional).
    #[serde(default)]
    pub concurrency_per_environment: Option<usize>,
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

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run truth.
    pub store: StoreConfig,
    /// Job queue.
    pub queue: QueueConfig,
    /// Worker.
    pub worker: WorkerConfig,
    /// Scheduler and reconciler.
    pub scheduler: SchedulerConfig,
    /// HTTP API.
    pub api: ApiConfig,
    /// An access file applied at start-up of `up` (relative to the config file).
    pub access_file: Option<PathBuf>,
    /// Operation capabilities (besides the built-in ones).
    pub capabilities: BTreeSet<String>,
    /// Operation types.
    pub operations: BTreeMap<String, OperationSpec>,
    /// Providers by name.
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Cron schedules.
    pub schedules: Vec<ScheduleSpec>,
    /// Where the file was read from (not part of the file).
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

impl Config {
    /// Parse and validate TOML text; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError { source_name: source_name.to_string(), message };
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = e.span().map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            });
            err(format!("{}{}", e.message().trim(), place.unwrap_or_default()))
        })?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Read a file (errors name it).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError { source_name: name.clone(), message: format!("cannot read: {e}") })?;
        let mut config = Self::from_toml(&text, &name)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Apply environment overrides (`OPRUN_DATABASE_URL`, `OPRUN_QUEUE_URL`).
    pub fn with_env_overrides(mut self) -> Self {
        if let Ok(url) = std::env::var(DATABASE_URL_VAR)
            && !url.is_empty()
        {
            self.store.url = url;
        }
        if let Ok(bind) = std::env::var(API_BIND_VAR)
            && !bind.is_empty()
        {
            self.api.bind = bind;
        }
        if let Ok(url) = std::env::var(QUEUE_URL_VAR)
            && !url.is_empty()
        {
            self.queue.url = Some(url);
            self.queue.backend = QueueBackend::Redis;
        }
        self
    }

    /// The operation catalog.
    pub fn catalog(&self) -> Catalog {
        Catalog { capabilities: self.capabilities.clone(), operations: self.operations.clone() }
    }

    /// A path named in the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match (&self.path, p.is_relative()) {
            (Some(file), true) => file.parent().unwrap_or(Path::new(".")).join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Refuse nonsense, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        let catalog = self.catalog();
        catalog.validate().map_err(|e| e.to_string().trim_start_matches("operation catalog: ").to_string())?;
        if !(self.store.url.starts_with("sqlite:")
            || self.store.url.starts_with("postgres://")
            || self.store.url.starts_with("postgresql://"))
        {
            return Err("store.url: must start with sqlite: or postgres://".into());
        }
        if self.store.max_connections == 0 {
            return Err("store.max_connections: must be at least 1".into());
        }
        match self.queue.backend {
            QueueBackend::Redis => match &self.queue.url {
                Some(u) if u.starts_with("redis://") || u.starts_with("rediss://") => {}
                _ => return Err("queue.url: the redis backend needs a redis:// URL".into()),
            },
            QueueBackend::Sqlite if !self.store.url.starts_with("sqlite:") => {
                return Err("queue.backend: the sqlite queue lives in the store's SQLite file; with a Postgres store use queue.backend = \"redis\"".into());
            }
            QueueBackend::Sqlite => {}
        }
        if self.queue.namespace.is_empty()
            || !self.queue.namespace.chars().all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        {
            return Err("queue.namespace: use letters, digits, '-', '_', ':' and '.'".into());
        }
        for (field, d) in [
            ("queue.poll_interval", self.queue.poll_interval),
            ("queue.heartbeat", self.queue.heartbeat),
            ("scheduler.tick", self.scheduler.tick),
            ("scheduler.reconcile_interval", self.scheduler.reconcile_interval),
            ("scheduler.abandoned_tick_after", self.scheduler.abandoned_tick_after),
        ] {
            if d.is_zero() {
                return Err(format!("{field}: must be longer than zero"));
            }
        }
        for (field, d) in [
            ("queue.poll_interval", self.queue.poll_interval),
            ("queue.heartbeat", self.queue.heartbeat),
            ("worker.shutdown_grace", self.worker.shutdown_grace),
            ("scheduler.tick", self.scheduler.tick),
            ("scheduler.reconcile_interval", self.scheduler.reconcile_interval),
            ("scheduler.lease_grace", self.scheduler.lease_grace),
            ("scheduler.abandoned_tick_after", self.scheduler.abandoned_tick_after),
        ] {
            check_duration(field, d)?;
        }
        for (name, p) in &self.providers {
            for (f, d) in [
                ("connect_timeout", p.connect_timeout),
                ("request_timeout", p.request_timeout),
                ("retry_after_cap", p.retry_after_cap),
            ] {
                check_duration(&format!("providers.{name}.{f}"), d)?;
            }
        }
        for (i, s) in self.schedules.iter().enumerate() {
            check_duration(&format!("schedules[{i}] ({}).misfire_window", s.name), s.misfire_window)?;
        }
        if self.queue.missed_heartbeats == 0 {
            return Err("queue.missed_heartbeats: must be at least 1".into());
        }
        if self.worker.concurrency == 0 || self.worker.concurrency > 10_000 {
            return Err("worker.concurrency: must be between 1 and 10000".into());
        }
        if self.api.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("api.bind: '{}' is not an address like 127.0.0.1:8080", self.api.bind));
        }
        for (name, p) in &self.providers {
            let field = |f: &str| format!("providers.{name}.{f}");
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                return Err(format!("{}: must be an http(s) URL", field("base_url")));
            }
            if p.token_env.is_some() == p.token_file.is_some() {
                return Err(format!("providers.{name}: set exactly one of token_env or token_file"));
            }
            if p.concurrency == 0 {
                return Err(format!("{}: must be at least 1", field("concurrency")));
            }
            if p.concurrency_per_environment == Some(0) {
                return Err(format!("{}: must be at least 1", field("concurrency_per_environment")));
            }
            if p.request_timeout.is_zero() || p.connect_timeout.is_zero() {
                return Err(format!("{}: timeouts must be longer than zero", field("request_timeout")));
            }
            if p.max_response_bytes == 0 || p.max_response_bytes > MAX_MAX_RESPONSE_BYTES {
                return Err(format!(
                    "{}: must be between 1 and {MAX_MAX_RESPONSE_BYTES} (1 GiB)",
                    field("max_response_bytes")
                ));
            }
        }
        for (name, op) in &self.operations {
            if let Some(p) = &op.provider
                && !self.providers.contains_key(p)
                && p != "demo"
            {
                return Err(format!("operations.\"{name}\".provider: unknown provider '{p}'"));
            }
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let field = |f: &str| format!("schedules[{i}] ({}).{f}", s.name);
            if s.name.is_empty() || !names.insert(s.name.as_str()) {
                return Err(format!("schedules[{i}].name: must be present and unique"));
            }
            s.parsed_cron().map_err(|e| format!("{}: {e}", field("cron")))?;
            s.tz().map_err(|e| format!("{}: {e}", field("timezone")))?;
            let Some(op) = catalog.get(&s.operation) else {
                return Err(format!("{}: unknown operation '{}'", field("operation"), s.operation));
            };
            match (op.scope, &s.environment, &s.environments) {
                (_, Some(_), Some(_)) => {
                    return Err(format!("{}: set environment or environments, not both", field("environment")));
                }
                (crate::ScopeKind::Environment, None, None) => {
                    return Err(format!(
                        "{}: operation '{}' needs an environment (or environments = \"all\")",
                        field("environment"),
                        s.operation
                    ));
                }
                (crate::ScopeKind::Workspace, Some(_), _) | (crate::ScopeKind::Workspace, _, Some(_)) => {
                    return Err(format!(
                        "{}: operation '{}' acts on a whole workspace",
                        field("environment"),
                        s.operation
                    ));
                }
                _ => {}
            }
            if !s.params.is_object() {
                return Err(format!("{}: must be a table", field("params")));
            }
            if let Some(k) = crate::redact::find_secret_key(&s.params) {
                return Err(format!("{}: secret-named key '{k}' is not allowed in params", field("params")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_embedded_default() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.store.url, DEFAULT_DATABASE_URL);
        assert_eq!(c.queue.backend, QueueBackend::Sqlite);
        assert_eq!(c.api.bind, "127.0.0.1:8080");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_naming_the_field() {
        let e = Config::from_toml("[worker]\nconcurency = 3\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("concurency") && e.to_string().contains("f.toml"), "{e}");
        let e = Config::from_toml("[worker]\nconcurrency = 0\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("worker.concurrency"), "{e}");
        let e = Config::from_toml("[queue]\npoll_interval = \"0s\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("queue.poll_interval"), "{e}");
        let e = Config::from_toml("[store]\nurl = \"postgres://x/y\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("queue.backend"), "{e}");
        let e = Config::from_toml("[api]\nbind = \"everywhere\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("api.bind"), "{e}");
    }

    #[test]
    fn a_provider_body_cap_of_zero_or_over_a_gib_is_refused_naming_the_field() {
        let provider = "[providers.graph]\nbase_url = \"https://g.test\"\ntoken_env = \"T\"\n";
        let c = Config::from_toml(provider, "f.toml").unwrap();
        assert_eq!(c.providers["graph"].max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
        for bad in ["0", "1073741825"] {
            let e = Config::from_toml(&format!("{provider}max_response_bytes = {bad}\n"), "f.toml").unwrap_err();
            assert!(e.to_string().contains("providers.graph.max_response_bytes"), "{bad}: {e}");
        }
        let c = Config::from_toml(&format!("{provider}max_response_bytes = 4096\n"), "f.toml").unwrap();
        assert_eq!(c.providers["graph"].max_response_bytes, 4096);
    }

    #[test]
    fn durations_longer_than_the_maximum_are_refused_naming_the_field() {
        assert!(Config::from_toml("[scheduler]\ntick = \"365d\"\n", "t").is_ok());
        let e = Config::from_toml("[scheduler]\ntick = \"366d\"\n", "t").unwrap_err();
        assert!(e.to_string().contains("scheduler.tick: 1year") && e.to_string().contains("at most 365 days"), "{e}");
    }

    #[test]
    fn schedules_are_checked_for_cron_timezone_operation_and_scope() {
        let base = r#"
capabilities = ["inventory.sync"]
[operations."inventory.sync"]
capability = "inventory.sync"
scope = "environment"
[[schedules]]
name = "nightly"
cron = "*/5 * * * *"
timezone = "Europe/Berlin"
operation = "inventory.sync"
workspace = "contoso"
environments = "all"
actor = "svc-scheduler"
"#;
        let c = Config::from_toml(base, "t").unwrap();
        assert!(c.schedules[0].parsed_cron().is_ok());
        for (from, to, needle) in [
            ("*/5 * * * *", "every minute", "cron"),
            ("Europe/Berlin", "Mars/Olympus", "timezone"),
            (
                "operation = \"inventory.sync\"\nworkspace",
                "operation = \"nope\"\nworkspace",
                "unknown operation 'nope'",
            ),
            ("environments = \"all\"", "", "needs an environment"),
        ] {
            let e = Config::from_toml(&base.replace(from, to), "t").unwrap_err();
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }
}
