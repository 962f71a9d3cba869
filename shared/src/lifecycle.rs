//! The OperationRun state machine: statuses, outcomes, initiators, surfaces,
//! and the typed errors a refused transition returns.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A value read from storage, config or input that is not one of the allowed
/// words for its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} '{value}' (expected one of: {expected})")]
pub struct ParseEnumError {
    /// What was being parsed (`status`, `outcome`, …).
    pub kind: &'static str,
    /// The value that was refused.
    pub value: String,
    /// The allowed values, comma separated.
    pub expected: &'static str,
}

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text form.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseEnumError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(ParseEnumError {
                        kind: $kind,
                        value: s.to_string(),
                        expected: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }

        /// As its text form, the one spelling of each variant.
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use text_enum;

text_enum! {
    /// Where a run is in its life. Only `OperationRunService` moves a run.
    RunStatus, "status" {
        /// Written by dispatch, retry, the reconciler's requeue, and a retry
        /// later or snooze of the attempt that held the run (then waiting
        /// until its `available_at`); left by claim (worker), cancel, block
        /// and expire.
        Queued => "queued",
        /// Entered by claim (worker, which then holds the lease); left by
        /// complete, block, cancel (lease owner), retry later, snooze,
        /// requeue and expire.
        Running => "running",
        /// Terminal. Entered by complete, block, cancel, expire and a refused
        /// scheduled dispatch; never left (a retry is a new run).
        Completed => "completed",
    }
}

text_enum! {
    /// How a run ended; `pending` until the run is completed.
    RunOutcome, "outcome" {
        /// Not completed yet.
        Pending => "pending",
        /// The work was done.
        Succeeded => "succeeded",
        /// Part of the work was done; the failed part is counted.
        PartiallySucceeded => "partially_succeeded",
        /// The work failed (provider error, lease expired, never started, …).
        Failed => "failed",
        /// Refused by authorization or a missing permission; no work ran.
        Blocked => "blocked",
        /// Cancelled by an operator.
        Cancelled => "cancelled",
    }
}

impl RunOutcome {
    /// Whether this outcome may stand on a completed run.
    pub fn is_terminal(self) -> bool {
        self != RunOutcome::Pending
    }
}

text_enum! {
    /// Who started a run.
    ActorKind, "actor kind" {
        /// A person.
        User => "user",
        /// A machine identity (a platform's own service, a token).
        Service => "service",
        /// A cron schedule, acting through its service actor.
        Schedule => "schedule",
    }
}

text_enum! {
    /// The surface a run was started from.
    SourceSurface, "source surface" {
        /// A scheduler tick.
        Scheduler => "scheduler",
        /// `oprun dispatch`.
        Cli => "cli",
        /// The HTTP API.
        Api => "api",
        /// An operator's retry of an earlier run.
        Retry => "retry",
        /// The reconciler.
        Reconciler => "reconciler",
    }
}

/// The named transitions of the run lifecycle, each made only by
/// `OperationRunService`; `action` is the name its audit row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// — → queued.
    Dispatch,
    /// — → completed/blocked (a refused scheduled dispatch).
    DispatchRefused,
    /// queued → running.
    Claim,
    /// running → running, lease renewed.
    Heartbeat,
    /// running → running, counts and checkpoint.
    Progress,
    /// running → completed.
    Complete,
    /// queued|running → completed/blocked.
    Block,
    /// queued → completed/cancelled.
    Cancel,
    /// running → running with a cancel request.
    CancelRequest,
    /// running (lease expired) → queued.
    Requeue,
    /// running (lease expired) | queued (never claimed) → completed/failed.
    Expire,
    /// queued → queued, job pushed again by the reconciler.
    Repush,
    /// running → queued at a later time, on the next attempt: a failure the
    /// retry policy retries.
    RetryLater,
    /// running → queued at a later time, on the same attempt: a provider's
    /// Retry-After, or the handler asked to run again later.
    Snooze,
    /// queued (waiting for its time) → ready now: an operator's "retry now".
    RetryNow,
    /// completed → a new queued run.
    Retry,
    /// completed → completed: the old run's record that a retry of it was made.
    Retried,
}

impl Transition {
    /// The stored action name (`run.claim`, …).
    pub fn action(self) -> &'static str {
        match self {
            Transition::Dispatch => "run.dispatch",
            Transition::DispatchRefused => "run.dispatch_refused",
            Transition::Claim => "run.claim",
            Transition::Heartbeat => "run.heartbeat",
            Transition::Progress => "run.progress",
            Transition::Complete => "run.complete",
            Transition::Block => "run.block",
            Transition::Cancel => "run.cancel",
            Transition::CancelRequest => "run.cancel_request",
            Transition::Requeue => "run.requeue",
            Transition::Expire => "run.expire",
            Transition::Repush => "run.repush",
            Transition::RetryLater => "run.retry_scheduled",
            Transition::Snooze => "run.snooze",
            Transition::RetryNow => "run.retry_now",
            Transition::Retry => "run.retry",
            Transition::Retried => "run.retried",
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.action().trim_start_matches("run."))
    }
}

/// Why a transition was refused. Never a silent no-op.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// No run has this id.
    #[error("run {0} not found")]
    NotFound(Uuid),
    /// The run is not in a state this transition starts from.
    #[error("cannot {transition} run {id}: it is {status}/{outcome}")]
    InvalidTransition {
        /// The run.
        id: Uuid,
        /// The transition attempted.
        transition: Transition,
        /// Its status now.
        status: RunStatus,
        /// Its outcome now.
        outcome: RunOutcome,
    },
    /// The caller does not hold the run's lease (another worker claimed it, or
    /// the reconciler moved it on).
    #[error("cannot {transition} run {id}: lease lost (held by {holder}, run is {status})")]
    LeaseLost {
        /// The run.
        id: Uuid,
        /// The transition attempted.
        transition: Transition,
        /// Who holds the lease now (`nobody` when none).
        holder: String,
        /// Its status now.
        status: RunStatus,
    },
}
