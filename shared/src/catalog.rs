//! The operation catalog: what each operation type needs and how its runs
//! are leased, deduplicated, retried and reconciled.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// A queued run not claimed within this is pushed again once, and failed
    /// `run.never_started` after twice this.
    #[serde(with = "humantime_serde", default = "defaults::queued_stale_after")]
    pub queued_stale_after: Duration,
    /// Attempts (claims) allowed before a lost lease fails the run.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
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
}
