//! Wiring: config → store → service, authorizer, queue, runner.

use std::path::Path;
use std::sync::Arc;

use oprun::config::Config;
use oprun_shared::access::grantable_capabilities;
use oprun_shared::config::ConfigError;
use oprun_shared::{
    AccessFile, Authorizer, Catalog, Clock, Database, OperationRunService, ServiceConfig, SystemClock, redact,
};

/// The bundled demo config (`deploy/demo.toml`), used when no config is given.
pub const DEMO_CONFIG: &str = include_str!("../deploy/demo.toml");
/// The bundled demo access file.
pub const DEMO_ACCESS: &str = include_str!("../deploy/demo-access.toml");

/// A command failure and its exit code.
#[derive(Debug)]
pub enum CliError {
    /// Bad input (config, arguments, files): exit 2, nothing written.
    Usage(String),
    /// Refused by authorization or the lifecycle: exit 3.
    Refused(String),
    /// Anything else (store unreachable, …): exit 1.
    Runtime(String),
    /// The reader of stdout went away (`| head`): exit 0, nothing said.
    StdoutClosed,
}

impl CliError {
    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Refused(m) | CliError::Runtime(m) => m,
            CliError::StdoutClosed => "",
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Refused(_) => 3,
            CliError::Runtime(_) => 1,
            CliError::StdoutClosed => 0,
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

/// Log to stderr; `RUST_LOG` narrows or widens (default `default_filter`).
/// Colours only on a terminal: a log file or collector gets plain text.
pub fn init_logging(format: &str, default_filter: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The config: the file given, else the bundled demo; then environment
/// overrides, validated again.
pub fn load_config(path: Option<&Path>) -> CliResult<(Config, bool)> {
    let (config, bundled) = match path {
        Some(p) => (Config::load(p).map_err(|e| CliError::Usage(e.to_string()))?, false),
        None => (
            Config::from_toml(DEMO_CONFIG, "bundled deploy/demo.toml").map_err(|e| CliError::Usage(e.to_string()))?,
            true,
        ),
    };
    let config = config.with_env_overrides();
    config.validate().map_err(|problems| {
        CliError::Usage(ConfigError::found("config after environment overrides", problems).to_string())
    })?;
    Ok((config, bundled))
}

/// Everything a command may need.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Config,
    pub bundled: bool,
    pub catalog: Arc<Catalog>,
    pub db: Database,
    pub service: OperationRunService,
    pub authorizer: Authorizer,
    /// The one source of "now" for every command (the service's too).
    pub clock: Arc<dyn Clock>,
}

impl App {
    /// Load the config, open and migrate the store.
    pub async fn open(path: Option<&Path>) -> CliResult<Self> {
        let (config, bundled) = load_config(path)?;
        let url = &config.store.url;
        let shown = redact::redact_url(url);
        let db = oprun::config::StoreKind::open(url, config.store.max_connections)
            .await
            .map_err(|e| CliError::Runtime(format!("cannot open the store {shown}: {e}")))?;
        db.runs.migrate().await.map_err(|e| CliError::Runtime(format!("cannot migrate the store {shown}: {e}")))?;
        let catalog = Arc::new(config.catalog());
        let service_config = ServiceConfig { lease_grace: config.scheduler.lease_grace, ..ServiceConfig::default() };
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let service = OperationRunService::new(db.runs.clone(), catalog.clone(), clock.clone(), service_config);
        let authorizer = Authorizer::new(db.access.clone(), catalog.clone());
        Ok(Self { config, bundled, catalog, db, service, authorizer, clock })
    }

    /// Parse and check an access file against this config's catalog.
    pub fn parse_access(&self, text: &str, name: &str) -> CliResult<AccessFile> {
        AccessFile::from_toml(text, name, Some(&grantable_capabilities(&self.catalog)))
            .map_err(|e| CliError::Usage(e.to_string()))
    }

    /// The access file the config names (the bundled demo's when bundled).
    pub fn configured_access(&self) -> CliResult<Option<AccessFile>> {
        if self.bundled {
            return self.parse_access(DEMO_ACCESS, "bundled deploy/demo-access.toml").map(Some);
        }
        let Some(p) = &self.config.access_file else { return Ok(None) };
        let path = self.config.resolve(p);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| CliError::Usage(format!("access_file {}: cannot read: {e}", path.display())))?;
        self.parse_access(&text, &path.display().to_string()).map(Some)
    }

    /// The queue: the run store's own.
    pub async fn queue(&self) -> CliResult<Arc<oprun_worker::queue::Queue>> {
        Ok(Arc::new(oprun_worker::queue::Queue::new(self.db.runs.clone(), self.clock.clone())))
    }
}

/// A name unique to this process: `PREFIX-HOST-PID-RANDOM`.
pub fn process_name(prefix: &str) -> String {
    oprun_worker::queue::unique_name(prefix)
}
