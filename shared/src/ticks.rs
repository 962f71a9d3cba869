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
}

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
}
