//! What every crate's part of the config file (`oprun.toml`) shares: the
//! store section, the longest duration a setting may hold, and [`Problems`],
//! the list a section's `validate` adds every problem to (each naming its
//! field) so that a file is refused once, with all that is wrong in it. The
//! worker owns its sections (`queue`, `worker`, `providers`), the scheduler
//! its own (`scheduler`, `api`, `schedules`); the binary composes them into
//! the file and applies environment overrides.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// Every problem found in a configuration, in the order found, each naming
/// its field (`queue.heartbeat: must be longer than zero`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Nothing wrong yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One more problem.
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    /// `problem` unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.push(problem());
        }
    }

    /// A duration setting longer than [`MAX_DURATION`], naming `field`.
    pub fn at_most_max(&mut self, field: &str, d: Duration) {
        if let Some(problem) = duration_too_long(d) {
            self.push(format!("{field}: {problem}"));
        }
    }

    /// A duration setting that is zero or longer than [`MAX_DURATION`].
    pub fn positive_at_most_max(&mut self, field: &str, d: Duration) {
        self.check(!d.is_zero(), || format!("{field}: must be longer than zero"));
        self.at_most_max(field, d);
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in the order found.
    pub fn list(&self) -> &[String] {
        &self.0
    }

    /// `Ok` when nothing was found.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

/// One problem a line.
impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

/// A configuration that cannot be used: every problem found, each naming
/// its field, each shown on a line of its own after the file's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.problems.iter().map(|p| format!("{}: {p}", self.source_name)).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The file (or `defaults`).
    pub source_name: String,
    /// What is wrong, each naming the field.
    pub problems: Vec<String>,
}

impl ConfigError {
    /// One problem with `source_name` (it cannot be read or parsed).
    pub fn one(source_name: &str, problem: impl Into<String>) -> Self {
        Self { source_name: source_name.into(), problems: vec![problem.into()] }
    }

    /// The problems found in `source_name`.
    pub fn found(source_name: &str, problems: Problems) -> Self {
        Self { source_name: source_name.into(), problems: problems.0 }
    }
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

impl StoreConfig {
    /// Add what is wrong with the section (its URL is the binary's to check:
    /// the scheme chooses the backend).
    pub fn validate(&self, problems: &mut Problems) {
        problems.check(self.max_connections != 0, || "store.max_connections: must be at least 1".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_kept_and_shown_on_its_own_line_after_the_file() {
        let mut p = Problems::new();
        p.positive_at_most_max("a.tick", Duration::ZERO);
        p.positive_at_most_max("a.grace", Duration::from_secs(366 * 86_400));
        p.positive_at_most_max("a.fine", Duration::from_secs(1));
        assert_eq!(p.list().len(), 2);
        let e = ConfigError::found("f.toml", p);
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "f.toml: a.tick: must be longer than zero");
        assert!(lines[1].starts_with("f.toml: a.grace: 1year") && lines[1].ends_with("at most 365 days"), "{text}");
        assert_eq!(lines.len(), 2);
        assert_eq!(ConfigError::one("f.toml", "cannot read").to_string(), "f.toml: cannot read");
    }
}
