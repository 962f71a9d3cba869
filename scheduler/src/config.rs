//! The scheduler's sections of the config file: `[scheduler]` (the tick
//! and reconciler loops), `[api]` and `[[schedules]]`, their named defaults
//! and their checks (a schedule's cron, time zone, operation and scope).

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use oprun_shared::config::Problems;
use oprun_shared::{Catalog, ScopeKind};
use serde::{Deserialize, Serialize};

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

impl SchedulerConfig {
    /// Add what is wrong with `[scheduler]`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.positive_at_most_max("scheduler.tick", self.tick);
        problems.positive_at_most_max("scheduler.reconcile_interval", self.reconcile_interval);
        problems.at_most_max("scheduler.lease_grace", self.lease_grace);
        problems.positive_at_most_max("scheduler.abandoned_tick_after", self.abandoned_tick_after);
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

impl ApiConfig {
    /// Add what is wrong with `[api]`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(self.bind.parse::<std::net::SocketAddr>().is_ok(), || {
            format!("api.bind: '{}' is not an address like 127.0.0.1:8080", self.bind)
        });
    }
}

/// Where a process that serves no API serves `/metrics` (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to listen on (loopback unless configured otherwise).
    pub bind: String,
    /// Whether `oprun worker` (and a scheduler without the API) serves it.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { bind: "127.0.0.1:9464".into(), enabled: true }
    }
}

impl MetricsConfig {
    /// Add what is wrong with `[metrics]`.
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(self.bind.parse::<std::net::SocketAddr>().is_ok(), || {
            format!("metrics.bind: '{}' is not an address like 127.0.0.1:9464", self.bind)
        });
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
    /// Each run of a tick becomes ready this long after the tick.
    #[serde(with = "humantime_serde", default)]
    pub delay: Duration,
    /// Each run of a tick waits a further random share of this (spreads a
    /// fan-out over `environments = "all"` across the window, so that one
    /// tick does not start every tenant's run at once).
    #[serde(with = "humantime_serde", default)]
    pub jitter: Duration,
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

    /// Add what is wrong with the `i`-th schedule against `catalog`.
    fn validate(&self, i: usize, catalog: &Catalog, problems: &mut Problems) {
        let field = |f: &str| format!("schedules[{i}] ({}).{f}", self.name);
        problems.at_most_max(&field("misfire_window"), self.misfire_window);
        problems.at_most_max(&field("delay"), self.delay);
        problems.at_most_max(&field("jitter"), self.jitter);
        if let Err(e) = self.parsed_cron() {
            problems.push(format!("{}: {e}", field("cron")));
        }
        if let Err(e) = self.tz() {
            problems.push(format!("{}: {e}", field("timezone")));
        }
        match catalog.get(&self.operation) {
            None => problems.push(format!("{}: unknown operation '{}'", field("operation"), self.operation)),
            Some(op) => match (op.scope, &self.environment, &self.environments) {
                (_, Some(_), Some(_)) => {
                    problems.push(format!("{}: set environment or environments, not both", field("environment")));
                }
                (ScopeKind::Environment, None, None) => problems.push(format!(
                    "{}: operation '{}' needs an environment (or environments = \"all\")",
                    field("environment"),
                    self.operation
                )),
                (ScopeKind::Workspace, Some(_), _) | (ScopeKind::Workspace, _, Some(_)) => problems.push(format!(
                    "{}: operation '{}' acts on a whole workspace",
                    field("environment"),
                    self.operation
                )),
                _ => {}
            },
        }
        if !self.params.is_object() {
            problems.push(format!("{}: must be a table", field("params")));
        } else if let Some(k) = oprun_shared::redact::find_secret_key(&self.params) {
            problems.push(format!("{}: secret-named key '{k}' is not allowed in params", field("params")));
        }
    }
}

/// Add what is wrong with the `[[schedules]]`: unique names, and each
/// schedule's cron, time zone, operation (from `catalog`) and scope.
pub fn validate_schedules(schedules: &[ScheduleSpec], catalog: &Catalog, problems: &mut Problems) {
    let mut names = BTreeSet::new();
    for (i, s) in schedules.iter().enumerate() {
        problems.check(!s.name.is_empty() && names.insert(s.name.as_str()), || {
            format!("schedules[{i}].name: must be present and unique")
        });
        s.validate(i, catalog, problems);
    }
}
