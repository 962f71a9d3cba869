//! The config file (`oprun.toml`), composed of each crate's sections: the
//! store (shared), the operation catalog (shared), the queue, worker and
//! providers (worker), the scheduler, API and schedules (scheduler). Here:
//! parsing with line numbers, environment overrides, and the checks no one
//! section can make — the URL schemes that choose the store and queue
//! backends. Every problem is reported at once, each naming its field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use oprun_scheduler::config::{ApiConfig, MetricsConfig, ScheduleSpec, SchedulerConfig, validate_schedules};
use oprun_shared::config::{ConfigError, Problems, StoreConfig};
use oprun_shared::{Catalog, OperationSpec};
use oprun_worker::config::{BudgetsConfig, ProviderConfig, QueueConfig, WorkerConfig, validate_providers};
use serde::{Deserialize, Serialize};

/// The environment variable that overrides `api.bind`.
pub const API_BIND_VAR: &str = "OPRUN_API_BIND";
/// The environment variable that overrides `metrics.bind`.
pub const METRICS_BIND_VAR: &str = "OPRUN_METRICS_BIND";
/// The environment variable that overrides `store.url`.
pub const DATABASE_URL_VAR: &str = "OPRUN_DATABASE_URL";
/// The environment variable that names the config file.
pub const CONFIG_VAR: &str = "OPRUN_CONFIG";

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
    /// Where the provider budgets shared by every worker live.
    pub budgets: BudgetsConfig,
    /// Scheduler and reconciler.
    pub scheduler: SchedulerConfig,
    /// HTTP API.
    pub api: ApiConfig,
    /// `/metrics` of a process without the API (`oprun worker`).
    pub metrics: MetricsConfig,
    /// How long completed runs, audit rows and ticks are kept.
    pub retention: oprun_shared::RetentionPolicy,
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
        let config: Config = toml::from_str(text).map_err(|e| {
            let place = e.span().map(|s| {
                let line = text[..s.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            });
            ConfigError::one(source_name, format!("{}{}", e.message().trim(), place.unwrap_or_default()))
        })?;
        config.validate().map_err(|problems| ConfigError::found(source_name, problems))?;
        Ok(config)
    }

    /// Read a file (errors name it).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::one(&name, format!("cannot read: {e}")))?;
        let mut config = Self::from_toml(&text, &name)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Apply environment overrides (`OPRUN_DATABASE_URL`, `OPRUN_API_BIND`,
    /// `OPRUN_REDIS_URL`);
    /// an empty variable overrides nothing.
    pub fn with_env_overrides(mut self) -> Self {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        if let Some(url) = var(DATABASE_URL_VAR) {
            self.store.url = url;
        }
        if let Some(bind) = var(API_BIND_VAR) {
            self.api.bind = bind;
        }
        if let Some(bind) = var(METRICS_BIND_VAR) {
            self.metrics.bind = bind;
        }
        if let Some(url) = var(oprun_worker::budget::REDIS_URL_VAR) {
            self.budgets.redis_url = Some(url);
        }
        self
    }

    /// The operation catalog.
    pub fn catalog(&self) -> Catalog {
        Catalog { capabilities: self.capabilities.clone(), operations: self.operations.clone() }
    }

    /// The folder of the file (paths it names are relative to it).
    pub fn dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// A path named in the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        match (&self.path, p.is_relative()) {
            (Some(file), true) => file.parent().unwrap_or(Path::new(".")).join(p),
            _ => p.to_path_buf(),
        }
    }

    /// Every problem of every section, each naming its field.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::new();
        let catalog = self.catalog();
        for e in catalog.problems() {
            problems.push(e.to_string().trim_start_matches("operation catalog: "));
        }
        self.store.validate(&mut problems);
        self.check_backends(&mut problems);
        self.queue.validate(&mut problems);
        self.worker.validate(&mut problems);
        self.budgets.validate(&mut problems);
        self.scheduler.validate(&mut problems);
        self.api.validate(&mut problems);
        self.metrics.validate(&mut problems);
        self.retention.validate(&mut problems);
        validate_providers(&self.providers, &self.operations, &mut problems);
        validate_schedules(&self.schedules, &catalog, &mut problems);
        problems.into_result()
    }

    /// The store's URL chooses its backend (the queue is the store).
    fn check_backends(&self, problems: &mut Problems) {
        let store = StoreKind::of(&self.store.url);
        problems.check(store.is_some(), || "store.url: must start with sqlite: or postgres://".into());
    }
}

#[cfg(test)]
mod tests {
    use oprun_shared::config::DEFAULT_DATABASE_URL;
    use oprun_worker::config::DEFAULT_MAX_RESPONSE_BYTES;

    use super::*;

    #[test]
    fn an_empty_file_is_the_embedded_default() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.store.url, DEFAULT_DATABASE_URL);
        assert_eq!(c.queue, QueueConfig::default());
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
        // The queue is the store: a Postgres store needs nothing else, and
        // the old queue settings are refused by name.
        Config::from_toml("[store]\nurl = \"postgres://x/y\"\n", "f.toml").unwrap();
        let e = Config::from_toml("[queue]\nbackend = \"redis\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("backend"), "{e}");
        let e = Config::from_toml("[api]\nbind = \"everywhere\"\n", "f.toml").unwrap_err();
        assert!(e.to_string().contains("api.bind"), "{e}");
    }

    #[test]
    fn every_problem_of_every_section_is_reported_at_once() {
        let text = "[worker]\nconcurrency = 0\n[queue]\npoll_interval = \"0s\"\n[api]\nbind = \"everywhere\"\n\
                    [store]\nurl = \"mysql://x\"\n[providers.graph]\nbase_url = \"ftp://g.test\"\n";
        let e = Config::from_toml(text, "f.toml").unwrap_err();
        for field in ["worker.concurrency", "queue.poll_interval", "api.bind", "store.url", "providers.graph.base_url"]
        {
            assert!(e.to_string().lines().any(|l| l.starts_with(&format!("f.toml: {field}"))), "{field}: {e}");
        }
        assert!(e.to_string().contains("providers.graph: set exactly one of token_env or token_file"), "{e}");
        let ops = "[operations.a]\ncapability = \"nope\"\nscope = \"workspace\"\nmax_attempts = 0\n\
                   [operations.b]\ncapability = \"runs.view\"\nscope = \"workspace\"\nlease = \"0s\"\n";
        let e = Config::from_toml(ops, "f.toml").unwrap_err();
        for needle in ["\"a\".capability", "\"a\".max_attempts", "\"b\".lease: must be longer than zero"] {
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
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
    fn an_operation_names_a_configured_provider_or_the_demo_one() {
        let op = |provider: &str| {
            format!(
                "capabilities = [\"inventory.sync\"]\n[operations.sync]\nkind = \"demo\"\nprovider = \"{provider}\"\n\
                 capability = \"inventory.sync\"\nscope = \"environment\"\n"
            )
        };
        assert!(Config::from_toml(&op("demo"), "t").is_ok());
        let e = Config::from_toml(&op("graph"), "t").unwrap_err();
        assert!(e.to_string().contains("operations.\"sync\".provider: unknown provider 'graph'"), "{e}");
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

/// The store backend a `store.url` names: the one place a scheme chooses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `postgres://…` or `postgresql://…`.
    Postgres,
    /// `sqlite://PATH` or `sqlite:PATH`.
    Sqlite,
}

impl StoreKind {
    /// The backend `url` names, if any.
    pub fn of(url: &str) -> Option<StoreKind> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(StoreKind::Postgres)
        } else if url.starts_with("sqlite:") {
            Some(StoreKind::Sqlite)
        } else {
            None
        }
    }

    /// Open every view of the database `url` names.
    pub async fn open(url: &str, max_connections: u32) -> Result<oprun_shared::Database, String> {
        let opened = match StoreKind::of(url) {
            Some(StoreKind::Postgres) => oprun_shared::Database::postgres(url, max_connections).await,
            Some(StoreKind::Sqlite) => oprun_shared::Database::sqlite(url, max_connections).await,
            None => return Err("the URL is neither a postgres:// nor a sqlite: URL".into()),
        };
        opened.map_err(|e| e.to_string())
    }
}
