//! Schedule ticks: one durable record per expected tick of a schedule, taken
//! by exactly one scheduler, and what became of it ([`TickStore`]).

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::lifecycle::{ParseEnumError, text_enum};
use crate::store::StoreError;

text_enum! {
    /// What became of one expected tick of a schedule.
    TickDecision, "tick decision" {
        /// A scheduler took the tick and is dispatching it (a tick left in
        /// this state means that scheduler died mid-dispatch).
        Claimed => "claimed",
        /// Runs were dispatched.
        Fired => "fired",
        /// An active run of the same operation and scope already existed.
        SkippedOverlap => "skipped_overlap",
        /// The tick was missed while no scheduler ran and the misfire policy
        /// skipped it.
        SkippedMisfire => "skipped_misfire",
        /// Dispatch-time authorization refused it (a blocked run records why).
        Refused => "refused",
        /// The schedule was paused: not fired, and not missed either.
        SkippedPaused => "skipped_paused",
    }
}

/// One tick's durable record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickRecord {
    /// The schedule's name.
    pub schedule: String,
    /// The tick's time.
    pub scheduled_for: DateTime<Utc>,
    /// What was decided.
    pub decision: TickDecision,
    /// The runs it produced (dispatched, deduplicated or blocked).
    pub run_ids: Vec<Uuid>,
    /// Per-scope detail.
    pub details: serde_json::Value,
    /// The scheduler that decided.
    pub decided_by: String,
    /// When.
    pub decided_at: DateTime<Utc>,
    /// Whether the tick is clean: fired and every run succeeded (`None`
    /// until it settles, and for a paused tick, which neither counts nor
    /// breaks a streak).
    pub clean: Option<bool>,
    /// Whether its outcome is known and counted in the schedule's streak.
    pub settled: bool,
}

/// A schedule's run-time state: paused or not, and its clean streak.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ScheduleState {
    /// The schedule.
    pub schedule: String,
    /// When it was paused (`None`: running).
    pub paused_at: Option<DateTime<Utc>>,
    /// Who paused it.
    pub paused_by: Option<String>,
    /// Why, in their words.
    pub pause_note: Option<String>,
    /// Clean ticks in a row, up to the newest settled tick, over the whole
    /// history.
    pub clean_streak: i64,
    /// The newest settled tick.
    pub settled_through: Option<DateTime<Utc>>,
}

/// How one tick settled: `Some(clean)`, or `None` for a tick that neither
/// counts nor breaks a streak.
pub type Settlement = (DateTime<Utc>, Option<bool>);

/// The tick record. Implemented by both stores.
#[async_trait]
pub trait TickStore: Send + Sync + std::fmt::Debug {
    /// Take a tick: true for the one caller that inserted it.
    async fn claim_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Record what a tick's holder has dispatched so far (the tick stays
    /// `claimed`; its claim time is renewed). False if `decided_by` no longer
    /// holds the tick (another scheduler re-drove it, or it was decided).
    async fn progress_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decided_by: &str,
        run_ids: &[Uuid],
        details: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Take over the ticks of `schedule` that are still `claimed` but were
    /// abandoned: claimed (or last progressed) before `claimed_before`, or
    /// held by `decided_by` itself (whose earlier pass stopped mid-tick).
    /// Returns them, as recorded so far, oldest first, now held by
    /// `decided_by`.
    async fn reclaim_abandoned_ticks(
        &self,
        schedule: &str,
        claimed_before: DateTime<Utc>,
        decided_by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<TickRecord>, StoreError>;

    /// Record what became of a claimed tick.
    async fn decide_tick(
        &self,
        schedule: &str,
        scheduled_for: DateTime<Utc>,
        decision: TickDecision,
        run_ids: &[Uuid],
        details: &serde_json::Value,
    ) -> Result<(), StoreError>;

    /// The newest recorded tick of a schedule.
    async fn last_tick(&self, schedule: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// A schedule's ticks, newest first.
    async fn ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError>;

    /// A schedule's ticks not yet settled, oldest first (at most `limit`).
    async fn unsettled_ticks(&self, schedule: &str, limit: u32) -> Result<Vec<TickRecord>, StoreError>;

    /// Settle ticks of `schedule` in the order given (oldest first) and
    /// move its streak on, in one transaction; false (nothing written) if
    /// another scheduler settled any of them first.
    async fn settle_ticks(
        &self,
        schedule: &str,
        settled: &[Settlement],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Every schedule's stored state (schedules never paused nor settled
    /// have none).
    async fn schedule_states(&self) -> Result<Vec<ScheduleState>, StoreError>;

    /// Pause (`Some((by, note))`) or resume (`None`) a schedule; false when
    /// it already was so.
    async fn set_paused(
        &self,
        schedule: &str,
        pause: Option<(&str, Option<&str>)>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// One page of ticks decided before `before` deleted (dry: counted);
    /// never a schedule's newest tick nor one still claimed.
    async fn prune_ticks(&self, before: DateTime<Utc>, limit: u32, dry_run: bool) -> Result<u64, StoreError>;
}
