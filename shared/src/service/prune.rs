//! Retention: completed runs, audit rows of no run and schedule ticks older
//! than their policy's window are deleted in pages, each page its own short
//! transaction (a page costs its size, whatever the tables hold). A run's
//! audit rows go with it, never before it; a run that another run retries
//! is kept while that run is. Each pass is audited as one summary row.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{OperationRunService, ServiceError, chrono_dur};
use crate::audit::AuditEntry;
use crate::config::Problems;
use crate::lifecycle::RunOutcome;
use crate::run::Initiator;
use crate::ticks::TickStore;

/// The audit action of a retention pass.
pub const PRUNE_ACTION: &str = "retention.prune";

/// How long what is kept is kept (`[retention]`). A window of `0s` keeps
/// that kind forever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Whether the scheduler's maintenance loop prunes (`oprun prune` always may).
    pub enabled: bool,
    /// Succeeded runs.
    #[serde(with = "humantime_serde")]
    pub succeeded: Duration,
    /// Partially succeeded runs.
    #[serde(with = "humantime_serde", default = "defaults::other")]
    pub partially_succeeded: Duration,
    /// Failed runs.
    #[serde(with = "humantime_serde", default = "defaults::other")]
    pub failed: Duration,
    /// Blocked runs.
    #[serde(with = "humantime_serde", default = "defaults::other")]
    pub blocked: Duration,
    /// Cancelled runs.
    #[serde(with = "humantime_serde", default = "defaults::other")]
    pub cancelled: Duration,
    /// Audit rows of no run (administrative acts, refused actions).
    #[serde(with = "humantime_serde")]
    pub audit: Duration,
    /// Schedule ticks.
    #[serde(with = "humantime_serde")]
    pub ticks: Duration,
    /// Rows a page deletes (one transaction).
    pub page: u32,
    /// Rows one pass deletes at most (the rest wait for the next pass).
    pub max_per_pass: u64,
    /// How often the maintenance loop runs a pass.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
}

mod defaults {
    use std::time::Duration;

    pub const DAY: u64 = 86_400;

    pub fn other() -> Duration {
        Duration::from_secs(90 * DAY)
    }
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            succeeded: Duration::from_secs(14 * defaults::DAY),
            partially_succeeded: defaults::other(),
            failed: defaults::other(),
            blocked: defaults::other(),
            cancelled: defaults::other(),
            audit: Duration::from_secs(365 * defaults::DAY),
            ticks: Duration::from_secs(30 * defaults::DAY),
            page: 1000,
            max_per_pass: 100_000,
            every: Duration::from_secs(600),
        }
    }
}

impl RetentionPolicy {
    /// Add what is wrong with `[retention]`.
    pub fn validate(&self, problems: &mut Problems) {
        for (field, d) in self
            .windows()
            .into_iter()
            .map(|(o, d)| (format!("retention.{o}"), d))
            .chain([("retention.audit".to_string(), self.audit), ("retention.ticks".to_string(), self.ticks)])
        {
            problems.check(d.is_zero() || d >= Duration::from_secs(3600), || {
                format!("{field}: {} is shorter than an hour (0s keeps forever)", humantime::format_duration(d))
            });
            problems.check(d <= Duration::from_secs(100 * 365 * defaults::DAY), || {
                format!("{field}: at most 100 years (0s keeps forever)")
            });
        }
        problems
            .check((1..=1000).contains(&self.page), || format!("retention.page: must be 1–1000, got {}", self.page));
        problems.check(self.max_per_pass >= 1, || "retention.max_per_pass: must be at least 1".to_string());
        problems.positive_at_most_max("retention.every", self.every);
    }

    /// Each terminal outcome's window.
    pub fn windows(&self) -> [(RunOutcome, Duration); 5] {
        [
            (RunOutcome::Succeeded, self.succeeded),
            (RunOutcome::PartiallySucceeded, self.partially_succeeded),
            (RunOutcome::Failed, self.failed),
            (RunOutcome::Blocked, self.blocked),
            (RunOutcome::Cancelled, self.cancelled),
        ]
    }
}

/// What a retention pass did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct PruneReport {
    /// Counted only.
    pub dry_run: bool,
    /// Runs deleted (would be), by outcome.
    pub runs: BTreeMap<String, u64>,
    /// Audit rows deleted with their runs.
    pub run_audit_rows: u64,
    /// Audit rows of no run deleted.
    pub audit_rows: u64,
    /// Ticks deleted.
    pub ticks: u64,
    /// The pass stopped at `max_per_pass`: more is left for the next one.
    pub more: bool,
    /// The cut-off of each window applied (`None`: kept forever).
    pub cutoffs: BTreeMap<String, Option<DateTime<Utc>>>,
}

impl PruneReport {
    /// Runs in all.
    pub fn total_runs(&self) -> u64 {
        self.runs.values().sum()
    }
}

impl OperationRunService {
    /// One retention pass as `actor` over runs, audit rows and `ticks`,
    /// at most `policy.max_per_pass` rows; audited as one summary row (a
    /// dry pass counts and writes nothing).
    pub async fn prune(
        &self,
        policy: &RetentionPolicy,
        ticks: &dyn TickStore,
        actor: &Initiator,
        dry_run: bool,
    ) -> Result<PruneReport, ServiceError> {
        let now = self.clock.now();
        let cutoff = |d: Duration| (!d.is_zero()).then(|| now - chrono_dur(d));
        let mut report = PruneReport { dry_run, ..PruneReport::default() };
        let mut budget = policy.max_per_pass;
        for (outcome, window) in policy.windows() {
            let before = cutoff(window);
            report.cutoffs.insert(outcome.as_str().into(), before);
            let Some(before) = before else { continue };
            let mut n = 0;
            if dry_run {
                n = self.store.count_prunable_runs(outcome, before, budget).await?;
            } else {
                let mut from = None;
                while budget > n {
                    let limit = u32::try_from((budget - n).min(u64::from(policy.page))).unwrap_or(policy.page);
                    let page = self.store.prune_runs(outcome, before, from, limit).await?;
                    n += page.runs;
                    report.run_audit_rows += page.audit_rows;
                    // A short page is the last; a page of nothing deleted
                    // (every run found was retried meanwhile) too, so that
                    // the cursor cannot stand still.
                    if page.found < u64::from(limit) || page.runs == 0 {
                        break;
                    }
                    from = page.through;
                }
            }
            budget = budget.saturating_sub(n);
            report.more |= budget == 0;
            report.runs.insert(outcome.as_str().into(), n);
        }
        for (name, window) in [("audit", policy.audit), ("ticks", policy.ticks)] {
            let before = cutoff(window);
            report.cutoffs.insert(name.into(), before);
            let Some(before) = before else { continue };
            let mut n = 0;
            while budget > 0 {
                let limit = u32::try_from(budget.min(u64::from(policy.page))).unwrap_or(policy.page);
                let k = match name {
                    "audit" => self.store.prune_audit(before, limit, dry_run).await?,
                    _ => ticks.prune_ticks(before, limit, dry_run).await?,
                };
                n += k;
                budget = budget.saturating_sub(k);
                // A dry run counts one page's worth: what is there to count
                // past it would be deleted by the pages of a real pass.
                if dry_run || k < u64::from(limit) {
                    break;
                }
            }
            report.more |= budget == 0;
            if name == "audit" {
                report.audit_rows = n;
            } else {
                report.ticks = n;
            }
        }
        if !dry_run {
            let entry = AuditEntry::new(now, actor.clone(), PRUNE_ACTION).details(json!({
                "runs": report.runs,
                "run_audit_rows": report.run_audit_rows,
                "audit_rows": report.audit_rows,
                "ticks": report.ticks,
                "more": report.more,
                "cutoffs": report.cutoffs,
            }));
            self.record(entry).await?;
        }
        Ok(report)
    }
}
