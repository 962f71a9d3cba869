//! The operation catalog: what each operation type needs and how its runs
//! are leased, deduplicated, retried and reconciled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::reason::ReasonCode;
use crate::viewer::BUILTIN_CAPABILITIES;

/// The scope an operation's runs act in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScopeKind {
    /// A whole workspace.
    Workspace,
    /// One managed environment of a workspace.
    Environment,
}

/// How many active runs an operation may have per scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupPolicy {
    /// At most one queued or running run per operation and scope.
    OnePerScope,
    /// No limit.
    None,
}

/// One operation type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationSpec {
    /// The capability an actor needs in the workspace to run it.
    pub capability: String,
    /// Workspace or environment.
    pub scope: ScopeKind,
    /// The handler kind that runs it (`demo`, `http.collect`, …); defaults to the
    /// operation's own name (a custom Rust operation).
    #[serde(default)]
    pub kind: Option<String>,
    /// The provider it calls, if any (reauthorization then checks the
    /// environment's connection to it).
    #[serde(default)]
    pub provider: Option<String>,
    /// How long a claim holds the run without a heartbeat.
    #[serde(with = "humantime_serde", default = "defaults::lease")]
    pub lease: Duration,
    /// How often the worker renews the lease.
    #[serde(with = "humantime_serde", default = "defaults::heartbeat")]
    pub heartbeat: Duration,
    /// A ready run not claimed within this is shown as waiting longer than
    /// expected (it is never failed for waiting).
    #[serde(with = "humantime_serde", default = "defaults::queued_stale_after")]
    pub queued_stale_after: Duration,
    /// Attempts allowed in all: a failure the retry policy retries, and a
    /// lost lease, each start the next attempt until this many were made.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// When a failed attempt is tried again later, and how long it waits.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Whether a requeued attempt continues from the checkpoint.
    #[serde(default = "defaults::yes")]
    pub resumable: bool,
    /// Active runs per scope.
    #[serde(default = "defaults::dedup")]
    pub dedup: DedupPolicy,
    /// Whether operators may retry a blocked or failed run.
    #[serde(default = "defaults::yes")]
    pub retryable_by_operators: bool,
    /// Whether a partially succeeded run may be retried too.
    #[serde(default)]
    pub retry_partial: bool,
    /// Free parameters for the handler kind.
    #[serde(default)]
    pub settings: toml::Table,
}

/// Retries over time: which failures start another attempt later (the run
/// waits queued, holding no worker slot), how long it waits, and how often a
/// run may be snoozed (by a provider's Retry-After beyond the in-attempt cap,
/// or by its handler) without using an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// The wait before the second attempt; each later one doubles it.
    #[serde(with = "humantime_serde", default = "defaults::retry_backoff")]
    pub backoff: Duration,
    /// The longest wait between attempts before the jitter (which adds up
    /// to as much again, so runs failed together do not return together).
    #[serde(with = "humantime_serde", default = "defaults::retry_backoff_cap")]
    pub backoff_cap: Duration,
    /// Add up to one more wait at random (spreads a fan-out's retries).
    #[serde(default = "defaults::yes")]
    pub jitter: bool,
    /// The reason codes that retry; by default the transient provider codes
    /// (`provider.throttled`, `provider.unavailable`, `provider.timeout`)
    /// and, for a resumable operation, `run.lease_expired`. `[]` retries
    /// nothing.
    #[serde(default)]
    pub on: Option<Vec<ReasonCode>>,
    /// Snoozes allowed per run; past them a Retry-After counts as a failed
    /// attempt, and a handler's snooze fails the run `run.snooze_limit`.
    #[serde(default = "defaults::max_snoozes")]
    pub max_snoozes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff: defaults::retry_backoff(),
            backoff_cap: defaults::retry_backoff_cap(),
            jitter: true,
            on: None,
            max_snoozes: defaults::max_snoozes(),
        }
    }
}

/// The reason codes a retry policy may name: failures an attempt can end
/// with (not a refusal by authorization, not an operator's cancel).
fn retriable_code(code: ReasonCode) -> bool {
    let text = code.as_str();
    text.starts_with("provider.") && code != ReasonCode::ProviderPermissionMissing
        || matches!(code, ReasonCode::RunLeaseExpired | ReasonCode::RunHandlerPanicked)
}

impl RetryPolicy {
    /// Whether a failure for `reason` starts another attempt (when attempts
    /// remain) of an operation that is (or is not) `resumable`.
    pub fn retries(&self, reason: ReasonCode, resumable: bool) -> bool {
        match &self.on {
            Some(on) => on.contains(&reason),
            None => reason.is_transient() || (resumable && reason == ReasonCode::RunLeaseExpired),
        }
    }

    /// The wait before attempt `next` (2 for the first retry): `backoff`
    /// doubled per attempt since, at most `backoff_cap`, plus the jitter
    /// (up to as much again).
    pub fn delay_before(&self, next: i32) -> Duration {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.backoff)
            .with_max_delay(self.backoff_cap)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        // Doubling reaches any cap within 64 steps: no need to walk further.
        let nth = usize::try_from(next.saturating_sub(2)).unwrap_or(0).min(64);
        builder.build().nth(nth).unwrap_or(self.backoff_cap)
    }
}

/// Named defaults for [`OperationSpec`].
pub mod defaults {
    use std::time::Duration;

    use super::DedupPolicy;

    /// 60 s.
    pub fn lease() -> Duration {
        Duration::from_secs(60)
    }
    /// 15 s.
    pub fn heartbeat() -> Duration {
        Duration::from_secs(15)
    }
    /// 5 min.
    pub fn queued_stale_after() -> Duration {
        Duration::from_secs(300)
    }
    /// 3.
    pub fn max_attempts() -> u32 {
        3
    }
    /// 15 s before the first retry.
    pub fn retry_backoff() -> Duration {
        Duration::from_secs(15)
    }
    /// 1 h at most between attempts.
    pub fn retry_backoff_cap() -> Duration {
        Duration::from_secs(3600)
    }
    /// 20 snoozes per run.
    pub fn max_snoozes() -> u32 {
        20
    }
    /// One per scope.
    pub fn dedup() -> DedupPolicy {
        DedupPolicy::OnePerScope
    }
    pub(super) fn yes() -> bool {
        true
    }
}

/// A catalog that does not make sense. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The TOML did not parse or has unknown or mistyped fields.
    #[error("operation catalog: {0}")]
    Parse(String),
    /// A field has a value that cannot work.
    #[error("operation catalog: operations.\"{operation}\".{field}: {problem}")]
    Invalid {
        /// The operation.
        operation: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The operation types known to this deployment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Operation capabilities this deployment defines (besides the built-in
    /// `runs.*` and `access.manage`).
    #[serde(default)]
    pub capabilities: BTreeSet<String>,
    /// Operation types by name.
    #[serde(default)]
    pub operations: BTreeMap<String, OperationSpec>,
}

impl Catalog {
    /// Parse and validate a catalog from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let catalog: Catalog = toml::from_str(text).map_err(|e| CatalogError::Parse(e.message().to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    /// Refuse nonsense: zero durations, a lease not longer than the heartbeat,
    /// zero attempts, unknown capability names, bad operation names. The
    /// first problem found (see [`Catalog::problems`] for all of them).
    pub fn validate(&self) -> Result<(), CatalogError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem of every operation, in order, each naming its field.
    pub fn problems(&self) -> Vec<CatalogError> {
        let mut problems = vec![];
        for (name, op) in &self.operations {
            let mut invalid = |field, problem: String| {
                problems.push(CatalogError::Invalid { operation: name.clone(), field, problem })
            };
            if name.is_empty()
                || name.len() > 100
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                invalid("name", "use 1-100 characters of letters, digits, '.', '_' and '-'".into());
            }
            if !self.knows_capability(&op.capability) {
                invalid("capability", format!("unknown capability '{}' (declare it in `capabilities`)", op.capability));
            }
            let mut durations_ok = true;
            for (field, d) in
                [("lease", op.lease), ("heartbeat", op.heartbeat), ("queued_stale_after", op.queued_stale_after)]
            {
                if d.is_zero() {
                    invalid(field, "must be longer than zero".into());
                    durations_ok = false;
                } else if let Some(problem) = crate::config::duration_too_long(d) {
                    invalid(field, problem);
                    durations_ok = false;
                }
            }
            if durations_ok && op.lease <= op.heartbeat {
                invalid(
                    "lease",
                    format!(
                        "lease ({}) must be longer than the heartbeat interval ({})",
                        humantime_serde::re::humantime::format_duration(op.lease),
                        humantime_serde::re::humantime::format_duration(op.heartbeat)
                    ),
                );
            }
            if op.max_attempts == 0 || op.max_attempts > 1000 {
                invalid("max_attempts", format!("must be between 1 and 1000, got {}", op.max_attempts));
            }
            let retry = &op.retry;
            let mut backoff_ok = true;
            for (field, d) in [("retry.backoff", retry.backoff), ("retry.backoff_cap", retry.backoff_cap)] {
                if d.is_zero() {
                    invalid(field, "must be longer than zero".into());
                    backoff_ok = false;
                } else if let Some(problem) = crate::config::duration_too_long(d) {
                    invalid(field, problem);
                    backoff_ok = false;
                }
            }
            if backoff_ok && retry.backoff_cap < retry.backoff {
                invalid("retry.backoff_cap", "must not be shorter than retry.backoff".into());
            }
            if retry.max_snoozes > 1000 {
                invalid("retry.max_snoozes", format!("must be at most 1000, got {}", retry.max_snoozes));
            }
            for code in retry.on.iter().flatten() {
                if !retriable_code(*code) {
                    invalid(
                        "retry.on",
                        format!("'{code}' is not a failure an attempt can retry (use provider.* or run.* failures)"),
                    );
                } else if *code == ReasonCode::RunLeaseExpired && !op.resumable {
                    invalid("retry.on", "'run.lease_expired' retries only a resumable operation".into());
                }
            }
        }
        problems
    }

    /// Whether `capability` is built in or declared.
    pub fn knows_capability(&self, capability: &str) -> bool {
        BUILTIN_CAPABILITIES.contains(&capability) || self.capabilities.contains(capability)
    }

    /// One operation type.
    pub fn get(&self, operation: &str) -> Option<&OperationSpec> {
        self.operations.get(operation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        capabilities = ["inventory.sync"]
        [operations."inventory.sync"]
        capability = "inventory.sync"
        scope = "environment"
        lease = "30s"
        heartbeat = "10s"
        max_attempts = 2
    "#;

    #[test]
    fn a_good_catalog_parses_with_named_defaults() {
        let c = Catalog::from_toml(GOOD).unwrap();
        let op = c.get("inventory.sync").unwrap();
        assert_eq!(op.lease, Duration::from_secs(30));
        assert_eq!(op.queued_stale_after, defaults::queued_stale_after());
        assert_eq!(op.dedup, DedupPolicy::OnePerScope);
        assert!(op.resumable);
        assert_eq!(op.max_attempts, 2);
    }

    #[test]
    fn a_lease_not_longer_than_the_heartbeat_is_refused_naming_the_field() {
        let err = Catalog::from_toml(&GOOD.replace("lease = \"30s\"", "lease = \"10s\"")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("operations.\"inventory.sync\".lease"), "{msg}");
        assert!(msg.contains("heartbeat"), "{msg}");
    }

    #[test]
    fn zero_durations_and_zero_attempts_are_refused() {
        let err = Catalog::from_toml(&GOOD.replace("heartbeat = \"10s\"", "heartbeat = \"0s\"")).unwrap_err();
        assert!(err.to_string().contains(".heartbeat"), "{err}");
        let err = Catalog::from_toml(&GOOD.replace("max_attempts = 2", "max_attempts = 0")).unwrap_err();
        assert!(err.to_string().contains(".max_attempts"), "{err}");
    }

    #[test]
    fn an_unknown_capability_is_refused_by_name() {
        let err =
            Catalog::from_toml(&GOOD.replace("capability = \"inventory.sync\"", "capability = \"inventory.wipe\""))
                .unwrap_err();
        assert!(err.to_string().contains("inventory.wipe"), "{err}");
        assert!(err.to_string().contains(".capability"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_parse_errors_that_name_them() {
        let err = Catalog::from_toml(&GOOD.replace("max_attempts = 2", "max_atempts = 2")).unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");
        let err = Catalog::from_toml(&GOOD.replace("lease = \"30s\"", "lease = \"soon\"")).unwrap_err();
        assert!(matches!(err, CatalogError::Parse(_)), "{err}");
    }

    fn with_retry(retry: &str) -> Result<Catalog, CatalogError> {
        Catalog::from_toml(&format!("{GOOD}        retry = {retry}\n"))
    }

    #[test]
    fn the_default_retry_policy_retries_transient_codes_and_a_resumable_lost_lease() {
        let c = Catalog::from_toml(GOOD).unwrap();
        let retry = &c.get("inventory.sync").unwrap().retry;
        assert_eq!(retry, &RetryPolicy::default());
        for code in [ReasonCode::ProviderThrottled, ReasonCode::ProviderUnavailable, ReasonCode::ProviderTimeout] {
            assert!(retry.retries(code, true), "{code}");
        }
        assert!(retry.retries(ReasonCode::RunLeaseExpired, true));
        assert!(!retry.retries(ReasonCode::RunLeaseExpired, false), "a non-resumable run would start over");
        assert!(!retry.retries(ReasonCode::ProviderNotFound, true), "permanent");
        assert!(!retry.retries(ReasonCode::ProviderAuthFailed, true), "permanent");
    }

    #[test]
    fn a_retry_policy_names_its_codes_and_an_empty_list_retries_nothing() {
        let c = with_retry(r#"{ on = ["provider.not_found"], backoff = "1m", backoff_cap = "10m", jitter = false }"#)
            .unwrap();
        let retry = &c.get("inventory.sync").unwrap().retry;
        assert!(retry.retries(ReasonCode::ProviderNotFound, true));
        assert!(!retry.retries(ReasonCode::ProviderThrottled, true), "only what is named");
        let c = with_retry("{ on = [] }").unwrap();
        assert!(!c.get("inventory.sync").unwrap().retry.retries(ReasonCode::ProviderThrottled, true));
    }

    #[test]
    fn the_wait_doubles_per_attempt_up_to_the_cap_and_jitter_adds_at_most_as_much_again() {
        let fixed = RetryPolicy {
            backoff: Duration::from_secs(15),
            backoff_cap: Duration::from_secs(100),
            jitter: false,
            ..RetryPolicy::default()
        };
        let waits: Vec<u64> = (2..=7).map(|n| fixed.delay_before(n).as_secs()).collect();
        assert_eq!(waits, [15, 30, 60, 100, 100, 100]);
        assert_eq!(fixed.delay_before(1), Duration::from_secs(15), "an attempt before the second waits the first wait");
        assert_eq!(fixed.delay_before(i32::MAX), Duration::from_secs(100));
        let jittered = RetryPolicy { jitter: true, ..fixed.clone() };
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let w = jittered.delay_before(3);
            assert!(w >= Duration::from_secs(30) && w <= Duration::from_secs(60), "{w:?}");
            seen.insert(w.as_millis());
            let at_cap = jittered.delay_before(9);
            assert!(at_cap >= Duration::from_secs(100) && at_cap <= Duration::from_secs(200), "{at_cap:?}");
        }
        assert!(seen.len() > 100, "jitter spreads the waits: {} distinct of 200", seen.len());
    }

    #[test]
    fn bad_retry_policies_are_refused_naming_the_field() {
        let cases = [
            (r#"{ backoff = "0s" }"#, ".retry.backoff"),
            (r#"{ backoff = "10m", backoff_cap = "1m" }"#, ".retry.backoff_cap"),
            (r#"{ backoff_cap = "20years" }"#, ".retry.backoff_cap"),
            ("{ max_snoozes = 5000 }", ".retry.max_snoozes"),
            (r#"{ on = ["execution.capability_missing"] }"#, "execution.capability_missing"),
        ];
        for (retry, names) in cases {
            let err = with_retry(retry).unwrap_err().to_string();
            assert!(err.contains(names), "{retry}: {err}");
        }
        let not_resumable = Catalog::from_toml(&format!(
            "{GOOD}        resumable = false\n        retry = {{ on = [\"run.lease_expired\"] }}\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(not_resumable.contains("only a resumable operation"), "{not_resumable}");
        let unknown = with_retry(r#"{ on = ["provider.nope"] }"#).unwrap_err();
        assert!(matches!(unknown, CatalogError::Parse(_)), "{unknown}");
        assert!(unknown.to_string().contains("provider.nope"), "{unknown}");
        let typo = with_retry("{ max_snooze = 1 }").unwrap_err();
        assert!(typo.to_string().contains("max_snooze"), "{typo}");
    }
}
