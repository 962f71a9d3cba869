//! How an attempt ends when the run is not over: the retry policy decides
//! whether a failure starts another attempt later (the run waits queued,
//! holding no worker slot), and a snooze — a provider's Retry-After beyond
//! the in-attempt cap, or the handler asking to run again later — puts the
//! run back to wait without using an attempt, as often as the policy allows.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{Completion, Finish, OperationRunService, chrono_dur};
use crate::config::MAX_DURATION;
use crate::counts::SummaryCounts;
use crate::lifecycle::{RunOutcome, Transition};
use crate::reason::ReasonCode;
use crate::redact;
use crate::run::{FailureEntry, MAX_FAILURE_ENTRIES, OperationRun};
use crate::store::RunWrite;

/// How an attempt's work ended, before the retry policy is applied (see
/// [`OperationRunService::plan_end`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptEnd {
    /// The handler's completion; a failed one may retry.
    Completed(Completion),
    /// The provider asked to be called again after `after` (a Retry-After
    /// beyond the in-attempt cap): a snooze while snoozes remain, a failed
    /// attempt after.
    RetryAfter {
        /// The provider's reason (`provider.throttled`, …).
        reason: ReasonCode,
        /// What the provider said (sanitized before it is stored).
        message: String,
        /// How long it asked to wait.
        after: Duration,
    },
    /// The run's provider budget has no room now (every permit of its
    /// environment in use, or its rate spent): the run waits `after`
    /// without a worker slot. A snooze that neither uses an attempt nor
    /// counts against `retry.max_snoozes` (the budget always frees: it is
    /// the platform's own limit, not the provider putting the run off).
    Wait {
        /// Why ([`ReasonCode::ProviderBudgetFull`]).
        reason: ReasonCode,
        /// What the budget said (sanitized before it is stored).
        message: String,
        /// How long to wait.
        after: Duration,
    },
    /// The handler asked to run again at `at` (polling a long provider job,
    /// waiting for a tenant): a snooze, which uses no attempt.
    Snooze {
        /// When to run again.
        at: DateTime<Utc>,
        /// Why (sanitized before it is stored).
        message: String,
    },
}

/// A run put back to wait: another attempt, or the same one snoozed.
#[derive(Debug, Clone, PartialEq)]
pub struct Later {
    /// When it may be claimed again.
    pub at: DateTime<Utc>,
    /// A retry (next attempt) or a snooze (same attempt).
    pub transition: Transition,
    /// The run's reason while it waits (the failure that is retried, the
    /// throttling that snoozed it; none for a handler's snooze).
    pub reason: Option<ReasonCode>,
    /// The run's whole failure summary after this attempt (retries only).
    pub failures: Option<Vec<FailureEntry>>,
    /// Counts added.
    pub counts: SummaryCounts,
    /// The checkpoint to keep (`None` keeps the stored one).
    pub checkpoint: Option<Value>,
    /// What the audit row says (attempt, wait, message).
    pub details: Value,
    /// Whether a snooze counts against `retry.max_snoozes` (a wait for the
    /// budget does not).
    pub counted: bool,
}

impl Later {
    /// The guarded write that puts the run back to wait.
    pub(super) fn write(&self, now: DateTime<Utc>) -> RunWrite {
        let reason = self.reason.map(ReasonCode::as_str);
        match self.transition {
            Transition::Snooze => {
                RunWrite::snooze(now, self.at, reason, self.counted, self.counts.clone(), self.checkpoint.clone())
            }
            _ => RunWrite::retry_later(
                now,
                self.at,
                reason.unwrap_or(ReasonCode::UnknownError.as_str()),
                self.failures.clone().unwrap_or_default(),
                self.counts.clone(),
                self.checkpoint.clone(),
            ),
        }
    }
}

/// `now + wait`, waiting at most [`MAX_DURATION`] (a provider's Retry-After
/// is outside input: `u64::MAX` seconds must not overflow the time).
fn after_at_most_a_year(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    now + chrono_dur(wait.min(MAX_DURATION))
}

/// `history` then `new`, each new entry labelled with its attempt, keeping
/// the latest [`MAX_FAILURE_ENTRIES`].
fn with_history(run: &OperationRun, new: &[FailureEntry], retrying: bool) -> Vec<FailureEntry> {
    let label = |f: &FailureEntry| FailureEntry {
        reason_code: redact::excerpt(&f.reason_code, 100),
        message: redact::sanitize(&format!("attempt {} of {}: {}", run.attempt, run.max_attempts, f.message)),
    };
    let mut all: Vec<FailureEntry> = run.failure_summary.clone();
    if retrying || run.attempt > 1 || !all.is_empty() {
        all.extend(new.iter().map(label));
    } else {
        all.extend(new.iter().cloned());
    }
    let drop = all.len().saturating_sub(MAX_FAILURE_ENTRIES);
    all.drain(..drop);
    all
}

impl OperationRunService {
    /// What the attempt holding `run` writes when its work ended as `end`:
    /// the retry policy of the run's operation applied (see
    /// [`RetryPolicy`](crate::catalog::RetryPolicy)). A failure it retries,
    /// with attempts left, waits for the backoff and starts the next
    /// attempt; a snooze waits without using one while snoozes remain;
    /// anything else completes the run, its failure summary keeping every
    /// attempt's failures.
    pub fn plan_end(&self, run: &OperationRun, end: AttemptEnd) -> Finish {
        let now = self.clock.now();
        let Some(spec) = self.catalog.get(&run.operation) else {
            return Finish::Complete(match end {
                AttemptEnd::Completed(c) => c,
                AttemptEnd::RetryAfter { reason, message, .. } => {
                    Completion::failed(RunOutcome::Failed, reason, &message)
                }
                AttemptEnd::Snooze { message, .. } | AttemptEnd::Wait { message, .. } => {
                    Completion::failed(RunOutcome::Failed, ReasonCode::RunOperationUnknown, &message)
                }
            });
        };
        let policy = &spec.retry;
        let snoozes_left = u32::try_from(run.snoozes).unwrap_or(u32::MAX) < policy.max_snoozes;
        let snooze = |at: DateTime<Utc>, reason: Option<ReasonCode>, message: &str, counted: bool| {
            Finish::Later(Later {
                counted,
                at,
                transition: Transition::Snooze,
                reason,
                failures: None,
                counts: SummaryCounts::new(),
                checkpoint: None,
                details: json!({
                    "available_at": at,
                    "attempt": run.attempt,
                    "snooze": if counted { run.snoozes + 1 } else { run.snoozes },
                    "counted": counted,
                    "max_snoozes": policy.max_snoozes,
                    "message": redact::sanitize(message),
                }),
            })
        };
        let completion = match end {
            AttemptEnd::Snooze { at, message } if snoozes_left => {
                return snooze(at.min(after_at_most_a_year(now, MAX_DURATION)), None, &message, true);
            }
            AttemptEnd::RetryAfter { reason, message, after } if snoozes_left => {
                return snooze(after_at_most_a_year(now, after), Some(reason), &message, true);
            }
            AttemptEnd::Wait { reason, message, after } => {
                return snooze(after_at_most_a_year(now, after), Some(reason), &message, false);
            }
            AttemptEnd::Snooze { at, message } => Completion::failed(
                RunOutcome::Failed,
                ReasonCode::RunSnoozeLimit,
                &format!(
                    "asked to run again at {} after {} snoozes, the most retry.max_snoozes allows: {message}",
                    at.to_rfc3339(),
                    run.snoozes
                ),
            ),
            AttemptEnd::RetryAfter { reason, message, after } => Completion::failed(
                RunOutcome::Failed,
                reason,
                &format!(
                    "{message} (asked to wait {}s more after {} snoozes, the most retry.max_snoozes allows)",
                    after.as_secs(),
                    run.snoozes
                ),
            ),
            AttemptEnd::Completed(c) => c,
        };
        let retry = completion.reason_code.filter(|reason| {
            completion.outcome == RunOutcome::Failed
                && policy.retries(*reason, spec.resumable)
                && run.attempt < run.max_attempts
        });
        let failures = with_history(run, &completion.failures, retry.is_some());
        match retry {
            Some(reason) => {
                let backoff = policy.delay_before(run.attempt + 1);
                let at = after_at_most_a_year(now, backoff);
                let message = completion.failures.first().map_or("", |f| f.message.as_str());
                Finish::Later(Later {
                    at,
                    counted: false,
                    transition: Transition::RetryLater,
                    reason: Some(reason),
                    failures: Some(failures),
                    counts: completion.counts,
                    checkpoint: completion.checkpoint,
                    details: json!({
                        "available_at": at,
                        "attempt": run.attempt,
                        "next_attempt": run.attempt + 1,
                        "max_attempts": run.max_attempts,
                        "backoff_ms": u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                        "message": message,
                    }),
                })
            }
            _ => Finish::Complete(Completion { failures, ..completion }),
        }
    }
}
