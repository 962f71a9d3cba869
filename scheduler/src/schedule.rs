//! Cron schedules. Each pass computes the ticks due since the schedule's last
//! recorded tick (the `cron` crate computes times, in the schedule's time
//! zone), takes each tick with a unique (schedule, scheduled_for) insert — so
//! a tick fires once however many schedulers run — decides it (fire, skip
//! for overlap, skip for misfire, refused) and records the decision.
//!
//! Misfires: a tick more than the on-time tolerance late was missed (no
//! scheduler ran). `misfire = "skip"` records every missed tick as
//! `skipped_misfire`; `misfire = "fire_once"` fires only the newest missed
//! tick, and only if it is within `misfire_window`, and records the others
//! as skipped.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{MisfirePolicy, OverlapPolicy, ScheduleEnvironments, ScheduleSpec};
use chrono::{DateTime, Utc};
use oprun_shared::{
    AccessStore, Clock, DispatchRequest, Initiator, OperationRun, RunFilter, RunOutcome, RunStatus, Scope,
    SourceSurface, StoreError, TickDecision, TickRecord, TickStore,
};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use crate::dispatch::{DispatchError, DispatchOutcome, Dispatcher};

mod past;
pub use past::Backfilled;

/// At most this many ticks of one schedule are decided per pass (a per-second
/// schedule after a long outage catches up over several passes).
pub const MAX_TICKS_PER_PASS: usize = 1000;

/// By default, a tick still `claimed` this long after its claim (or its
/// holder's last progress write) was abandoned by a scheduler that died
/// mid-tick: another scheduler takes it over and drives it to a decision
/// (`scheduler.abandoned_tick_after`).
pub const ABANDONED_TICK_AFTER: Duration = Duration::from_secs(120);

/// A schedule whose cron expression and time zone parsed.
#[derive(Debug, Clone)]
struct Prepared {
    spec: ScheduleSpec,
    cron: cron::Schedule,
    tz: chrono_tz::Tz,
}

/// What a pass decided for one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TickOutcome {
    /// The schedule.
    pub schedule: String,
    /// The tick.
    pub scheduled_for: DateTime<Utc>,
    /// The decision.
    pub decision: TickDecision,
    /// Runs it produced.
    pub run_ids: Vec<Uuid>,
}

/// A scheduler failure (the pass stops; the next pass retries).
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A schedule in the config does not parse.
    #[error("schedules.{name}: {message}")]
    Config {
        /// The schedule.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Dispatch failed.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// Another scheduler took over a tick this one was still driving (it
    /// was slower than its abandonment timeout); that one decides it.
    #[error("schedules.{schedule}: the tick of {scheduled_for} was taken over by another scheduler")]
    TickTakenOver {
        /// The schedule.
        schedule: String,
        /// The tick.
        scheduled_for: DateTime<Utc>,
    },
}

/// What a tick has dispatched so far, scope by scope (empty for a tick just
/// claimed; as recorded for one taken over).
#[derive(Debug, Clone, Default)]
struct Dispatched {
    run_ids: Vec<Uuid>,
    per_scope: serde_json::Map<String, Value>,
    /// Taken over from a scheduler that stopped mid-tick.
    resumed: bool,
}

impl Dispatched {
    fn resumed(tick: &TickRecord) -> Self {
        let per_scope = tick.details.get("scopes").and_then(Value::as_object).cloned().unwrap_or_default();
        Self { run_ids: tick.run_ids.clone(), per_scope, resumed: true }
    }

    fn count(&self, decision: &str) -> usize {
        self.per_scope.values().filter(|v| v.get("decision").and_then(Value::as_str) == Some(decision)).count()
    }
}

/// Evaluates cron schedules and dispatches their ticks.
#[derive(Debug, Clone)]
pub struct Scheduler {
    schedules: Vec<Prepared>,
    dispatcher: Dispatcher,
    access: Arc<dyn AccessStore>,
    ticks: Arc<dyn TickStore>,
    clock: Arc<dyn Clock>,
    name: String,
    started_at: DateTime<Utc>,
    on_time: chrono::Duration,
    abandoned_after: chrono::Duration,
}

impl Scheduler {
    /// A scheduler named `name` (unique per process; it appears in tick
    /// records). `on_time` is how late a tick may be and still count as on
    /// time (a few scheduler passes).
    pub fn new(
        schedules: &[ScheduleSpec],
        dispatcher: Dispatcher,
        access: Arc<dyn AccessStore>,
        ticks: Arc<dyn TickStore>,
        clock: Arc<dyn Clock>,
        name: impl Into<String>,
        on_time: Duration,
    ) -> Result<Self, ScheduleError> {
        let mut prepared = vec![];
        for spec in schedules.iter().filter(|s| s.enabled) {
            let err = |message: String| ScheduleError::Config { name: spec.name.clone(), message };
            let cron = spec.parsed_cron().map_err(err)?;
            let tz = spec.tz().map_err(err)?;
            prepared.push(Prepared { spec: spec.clone(), cron, tz });
        }
        let started_at = clock.now();
        let on_time = chrono::Duration::from_std(on_time).unwrap_or(chrono::Duration::seconds(30));
        let abandoned_after = chrono::Duration::from_std(ABANDONED_TICK_AFTER).unwrap_or_default();
        Ok(Self {
            schedules: prepared,
            dispatcher,
            access,
            ticks,
            clock,
            name: name.into(),
            started_at,
            on_time,
            abandoned_after,
        })
    }

    /// Take over ticks left undecided for `after` (default
    /// [`ABANDONED_TICK_AFTER`]); a holder alive that long renews its claim
    /// with every scope it dispatches.
    pub fn abandoned_tick_after(mut self, after: Duration) -> Self {
        self.abandoned_after = chrono::Duration::from_std(after).unwrap_or(self.abandoned_after);
        self
    }

    /// Decide every tick due now, for every schedule, then settle the
    /// ticks whose runs have all finished (the clean streak).
    pub async fn run_once(&self) -> Result<Vec<TickOutcome>, ScheduleError> {
        let now = self.clock.now();
        // Pauses are stored: every scheduler reads them on every pass.
        let paused: std::collections::BTreeSet<String> = self
            .ticks
            .schedule_states()
            .await?
            .into_iter()
            .filter(|s| s.paused_at.is_some())
            .map(|s| s.schedule)
            .collect();
        let mut out = vec![];
        for s in &self.schedules {
            let is_paused = paused.contains(&s.spec.name);
            match self.run_schedule(s, now, is_paused).await {
                Ok(mut ticks) => out.append(&mut ticks),
                Err(e) => warn!(schedule = %s.spec.name, error = %e, "schedule pass failed; retrying next pass"),
            }
            if let Err(e) = self.settle(s).await {
                warn!(schedule = %s.spec.name, error = %e, "settling ticks failed; retrying next pass");
            }
        }
        Ok(out)
    }

    /// Ticks of `s` due in `(after, now]`, oldest first, at most
    /// [`MAX_TICKS_PER_PASS`], each with whether it is the newest due tick.
    fn due(s: &Prepared, after: DateTime<Utc>, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, bool)> {
        let mut ticks: Vec<DateTime<Utc>> = vec![];
        let mut iter = s.cron.after(&after.with_timezone(&s.tz)).map(|t| t.with_timezone(&Utc)).peekable();
        while let Some(t) = iter.next_if(|t| *t <= now) {
            ticks.push(t);
            if ticks.len() == MAX_TICKS_PER_PASS {
                break;
            }
        }
        let newest_due = iter.peek().is_none_or(|next| *next > now);
        let n = ticks.len();
        ticks.into_iter().enumerate().map(|(i, t)| (t, newest_due && i + 1 == n)).collect()
    }

    async fn run_schedule(
        &self,
        s: &Prepared,
        now: DateTime<Utc>,
        paused: bool,
    ) -> Result<Vec<TickOutcome>, ScheduleError> {
        let name = &s.spec.name;
        let mut out = vec![];
        // Ticks taken but never decided (a scheduler died, or a pass failed,
        // between claim and decision) are driven to a decision first: the
        // scopes they already dispatched are not dispatched again.
        let abandoned_before = now - self.abandoned_after;
        for tick in self.ticks.reclaim_abandoned_ticks(name, abandoned_before, &self.name, now).await? {
            warn!(schedule = %name, scheduled_for = %tick.scheduled_for, was_dispatched = tick.run_ids.len(),
                "taking over a tick left undecided mid-dispatch");
            out.push(self.drive(s, tick.scheduled_for, true, Dispatched::resumed(&tick)).await?);
        }
        let after = self.ticks.last_tick(name).await?.unwrap_or(self.started_at - self.on_time);
        for (at, newest) in Self::due(s, after, now) {
            let late = now - at;
            let missed = late > self.on_time;
            let window = chrono::Duration::from_std(s.spec.misfire_window).unwrap_or(chrono::Duration::MAX);
            let fire = !missed || (s.spec.misfire == MisfirePolicy::FireOnce && newest && late <= window);
            if paused {
                // Paused: recorded as such, neither fired nor missed.
                if self.ticks.claim_tick(name, at, TickDecision::SkippedPaused, &self.name, now).await? {
                    metrics::counter!("oprun_schedule_ticks_total", "schedule" => name.clone(), "decision" => "skipped_paused")
                        .increment(1);
                    out.push(TickOutcome {
                        schedule: name.clone(),
                        scheduled_for: at,
                        decision: TickDecision::SkippedPaused,
                        run_ids: vec![],
                    });
                }
                continue;
            }
            if !fire {
                if self.ticks.claim_tick(name, at, TickDecision::SkippedMisfire, &self.name, now).await? {
                    info!(schedule = %name, scheduled_for = %at, "tick missed: skipped by the misfire policy");
                    metrics::counter!("oprun_schedule_ticks_total", "schedule" => name.clone(), "decision" => "skipped_misfire")
                        .increment(1);
                    out.push(TickOutcome {
                        schedule: name.clone(),
                        scheduled_for: at,
                        decision: TickDecision::SkippedMisfire,
                        run_ids: vec![],
                    });
                }
                continue;
            }
            if !self.ticks.claim_tick(name, at, TickDecision::Claimed, &self.name, now).await? {
                continue; // another scheduler owns this tick
            }
            out.push(self.drive(s, at, missed, Dispatched::default()).await?);
        }
        Ok(out)
    }

    /// Fire a tick this scheduler holds (continuing from what it already
    /// dispatched) and record the decision.
    async fn drive(
        &self,
        s: &Prepared,
        at: DateTime<Utc>,
        catch_up: bool,
        so_far: Dispatched,
    ) -> Result<TickOutcome, ScheduleError> {
        self.drive_marked(s, at, catch_up, so_far, None).await
    }

    /// [`drive`](Self::drive), with `mark`'s keys added to the tick's details.
    async fn drive_marked(
        &self,
        s: &Prepared,
        at: DateTime<Utc>,
        catch_up: bool,
        so_far: Dispatched,
        mark: Option<&Value>,
    ) -> Result<TickOutcome, ScheduleError> {
        let name = &s.spec.name;
        let (decision, run_ids, mut details) = self.fire(s, at, catch_up, so_far).await?;
        if let (Some(Value::Object(m)), Value::Object(d)) = (mark, &mut details) {
            d.extend(m.clone());
        }
        self.ticks.decide_tick(name, at, decision, &run_ids, &details).await?;
        info!(schedule = %name, scheduled_for = %at, %decision, runs = run_ids.len(), "tick decided");
        metrics::counter!("oprun_schedule_ticks_total", "schedule" => name.clone(), "decision" => decision.as_str())
            .increment(1);
        Ok(TickOutcome { schedule: name.clone(), scheduled_for: at, decision, run_ids })
    }

    /// The run a tick already dispatched for `scope` although its tick row
    /// does not say so (its scheduler died between the dispatch and the
    /// record): a run of the schedule's operation in that scope whose
    /// context names this schedule and tick. Such a run was created after
    /// the tick's time, so the search stops at older runs.
    async fn dispatched_for_tick(
        &self,
        spec: &ScheduleSpec,
        at: DateTime<Utc>,
        scope: &Scope,
    ) -> Result<Option<OperationRun>, ScheduleError> {
        let store = self.dispatcher.service().store();
        let mut filter = RunFilter {
            operation: Some(spec.operation.clone()),
            workspace_id: Some(scope.workspace_id.clone()),
            limit: oprun_shared::store::MAX_PAGE,
            ..RunFilter::default()
        };
        loop {
            let page = store.list_runs(&filter).await?;
            let Some(oldest) = page.last() else { return Ok(None) };
            let of_this_tick = |r: &&OperationRun| {
                r.environment_id == scope.environment_id
                    && r.context.get("schedule").and_then(Value::as_str) == Some(spec.name.as_str())
                    && (r.context.get("scheduled_for").cloned())
                        .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v).ok())
                        == Some(at)
            };
            if let Some(run) = page.iter().find(of_this_tick) {
                return Ok(Some(run.clone()));
            }
            if oldest.created_at < at || page.len() < filter.limit as usize {
                return Ok(None);
            }
            filter.before = Some(oldest.id);
        }
    }

    async fn scopes(&self, spec: &ScheduleSpec) -> Result<Vec<Option<String>>, ScheduleError> {
        Ok(match (&spec.environment, &spec.environments) {
            (Some(env), _) => vec![Some(env.clone())],
            (None, Some(ScheduleEnvironments::All)) => {
                self.access.operable_environments(&spec.workspace).await?.into_iter().map(Some).collect()
            }
            (None, None) => vec![None],
        })
    }

    /// An active run of the same operation and scope, if any.
    async fn overlapping(&self, operation: &str, scope: &Scope) -> Result<Option<Uuid>, ScheduleError> {
        let service = self.dispatcher.service();
        if let Some(key) = service.dedup_key(operation, scope).map_err(DispatchError::from)? {
            return Ok(service.store().active_run_for_key(&key).await?.map(|r| r.id));
        }
        for status in [RunStatus::Queued, RunStatus::Running] {
            let filter = RunFilter {
                operation: Some(operation.into()),
                workspace_id: Some(scope.workspace_id.clone()),
                status: Some(status),
                limit: 1000,
                ..RunFilter::default()
            };
            let runs = service.store().list_runs(&filter).await?;
            if let Some(r) = runs.iter().find(|r| r.environment_id == scope.environment_id) {
                return Ok(Some(r.id));
            }
        }
        Ok(None)
    }

    /// Dispatch the tick's scopes that are not yet dispatched, recording
    /// each in the tick row as it goes when there are several (so that a
    /// scheduler taking the tick over continues from there).
    async fn fire(
        &self,
        s: &Prepared,
        at: DateTime<Utc>,
        catch_up: bool,
        so_far: Dispatched,
    ) -> Result<(TickDecision, Vec<Uuid>, Value), ScheduleError> {
        let spec = &s.spec;
        let scopes = self.scopes(spec).await?;
        let Dispatched { mut run_ids, mut per_scope, resumed } = so_far;
        for env in &scopes {
            let key = env.clone().unwrap_or_else(|| spec.workspace.clone());
            if per_scope.contains_key(&key) {
                continue; // dispatched before this scheduler took the tick over
            }
            let scope = Scope { workspace_id: spec.workspace.clone(), environment_id: env.clone(), ..Scope::default() };
            let already = if resumed { self.dispatched_for_tick(spec, at, &scope).await? } else { None };
            if let Some(run) = already {
                let refused = run.outcome == RunOutcome::Blocked && run.started_at.is_none();
                let decision = if refused { "refused" } else { "fired" };
                run_ids.push(run.id);
                per_scope.insert(key, json!({ "decision": decision, "run": run.id }));
            } else {
                let (run_id, entry) = self.fire_scope(spec, at, catch_up, scope).await?;
                run_ids.extend(run_id);
                per_scope.insert(key, entry);
            }
            if scopes.len() > 1 {
                let details = json!({ "scopes": per_scope, "catch_up": catch_up });
                let now = self.clock.now();
                if !self.ticks.progress_tick(&spec.name, at, &self.name, &run_ids, &details, now).await? {
                    return Err(ScheduleError::TickTakenOver { schedule: spec.name.clone(), scheduled_for: at });
                }
            }
        }
        let so_far = Dispatched { run_ids, per_scope, resumed };
        let (fired, refused) = (so_far.count("fired"), so_far.count("refused"));
        let Dispatched { run_ids, per_scope, .. } = so_far;
        let decision = if fired > 0 || scopes.is_empty() {
            TickDecision::Fired
        } else if refused > 0 {
            TickDecision::Refused
        } else {
            TickDecision::SkippedOverlap
        };
        let mut details = json!({ "scopes": per_scope, "catch_up": catch_up });
        if resumed {
            details["taken_over"] = json!(true);
        }
        if scopes.is_empty() {
            details["note"] = json!("the workspace has no operable environment");
        }
        Ok((decision, run_ids, details))
    }

    /// Dispatch one scope of a tick: the run it produced (or the active one
    /// it overlapped) and the scope's entry in the tick's details.
    async fn fire_scope(
        &self,
        spec: &ScheduleSpec,
        at: DateTime<Utc>,
        catch_up: bool,
        scope: Scope,
    ) -> Result<(Option<Uuid>, Value), ScheduleError> {
        if spec.overlap == OverlapPolicy::Skip
            && let Some(active) = self.overlapping(&spec.operation, &scope).await?
        {
            return Ok((Some(active), json!({ "decision": "skipped_overlap", "active_run": active })));
        }
        let req = DispatchRequest {
            operation: spec.operation.clone(),
            scope,
            initiator: Initiator::schedule(spec.actor.clone()),
            source: SourceSurface::Scheduler,
            context: json!({
                "schedule": spec.name,
                "scheduled_for": at,
                "catch_up": catch_up,
                "scheduler": self.name,
                "correlation_id": Uuid::now_v7(),
            }),
            params: spec.params.clone(),
            available_at: ready_at(spec, at),
        };
        Ok(match self.dispatcher.dispatch(req).await? {
            DispatchOutcome::Dispatched { run, deduplicated: false, .. } => {
                (Some(run.id), json!({ "decision": "fired", "run": run.id }))
            }
            DispatchOutcome::Dispatched { run, deduplicated: true, .. } => {
                (Some(run.id), json!({ "decision": "skipped_overlap", "active_run": run.id }))
            }
            DispatchOutcome::Refused { reason, run, .. } => {
                let id = run.map(|r| r.id);
                (id, json!({ "decision": "refused", "reason": reason, "run": id }))
            }
        })
    }
}

/// When a run of the tick at `at` becomes ready: after the schedule's
/// `delay` and a random share of its `jitter` (`None`: at once).
fn ready_at(spec: &ScheduleSpec, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if spec.delay.is_zero() && spec.jitter.is_zero() {
        return None;
    }
    let jitter = spec.jitter.mul_f64(fastrand::f64());
    let wait = chrono::Duration::from_std(spec.delay + jitter).unwrap_or(chrono::Duration::MAX);
    Some(at.checked_add_signed(wait).unwrap_or(at))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(cron: &str, tz: &str) -> Prepared {
        let spec: ScheduleSpec = toml::from_str(&format!(
            "name = \"s\"\ncron = \"{cron}\"\ntimezone = \"{tz}\"\noperation = \"op\"\nworkspace = \"w\"\nactor = \"a\"\n"
        ))
        .unwrap();
        Prepared { cron: spec.parsed_cron().unwrap(), tz: spec.tz().unwrap(), spec }
    }

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn due_lists_ticks_in_the_half_open_interval_and_marks_the_newest() {
        let s = prepared("*/5 * * * *", "UTC");
        let due = Scheduler::due(&s, t("2026-11-02T09:00:00Z"), t("2026-11-02T09:16:00Z"));
        assert_eq!(
            due,
            vec![
                (t("2026-11-02T09:05:00Z"), false),
                (t("2026-11-02T09:10:00Z"), false),
                (t("2026-11-02T09:15:00Z"), true)
            ]
        );
        assert!(Scheduler::due(&s, t("2026-11-02T09:15:00Z"), t("2026-11-02T09:19:59Z")).is_empty());
    }

    #[test]
    fn time_zones_shift_the_ticks() {
        let s = prepared("0 2 * * *", "Europe/Berlin");
        let due = Scheduler::due(&s, t("2026-11-01T00:00:00Z"), t("2026-11-02T12:00:00Z"));
        assert_eq!(due, vec![(t("2026-11-01T01:00:00Z"), false), (t("2026-11-02T01:00:00Z"), true)]);
    }

    #[test]
    fn a_long_outage_is_decided_in_bounded_batches() {
        let s = prepared("* * * * * *", "UTC");
        let due = Scheduler::due(&s, t("2026-11-02T00:00:00Z"), t("2026-11-02T09:00:00Z"));
        assert_eq!(due.len(), MAX_TICKS_PER_PASS);
        assert!(due.iter().all(|(_, newest)| !newest), "the newest tick is not in this batch");
    }
}
