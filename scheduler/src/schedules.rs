//! Schedules at run time, for operators: list and show them with their
//! stored state (paused, clean streak) and recent ticks, pause and resume
//! them (stored: every scheduler honours it), and backfill a time range.
//! Authorized like every operator action: a schedule of a workspace where
//! the caller may not see runs does not exist for it; changing one needs
//! `schedules.manage` there. Each change is audited, and so is a refusal.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use oprun_shared::{AuditEntry, Initiator, RUNS_VIEW, SCHEDULES_MANAGE, ScheduleState, TickRecord, TickStore};
use serde::Serialize;
use serde_json::json;

use crate::config::ScheduleSpec;
use crate::operator::{ActionError, Operator};
use crate::schedule::{Backfilled, Scheduler};

/// A schedule as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleView {
    /// The schedule's name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its time zone.
    pub timezone: String,
    /// The operation it dispatches.
    pub operation: String,
    /// Its workspace.
    pub workspace: String,
    /// Its environment, if one.
    pub environment: Option<String>,
    /// Enabled in the config.
    pub enabled: bool,
    /// Paused at run time: since when, by whom, why.
    pub paused: Option<Paused>,
    /// Clean ticks in a row (fired, every run succeeded), over the whole
    /// history up to the newest settled tick.
    pub clean_streak: i64,
    /// The newest settled tick.
    pub settled_through: Option<DateTime<Utc>>,
    /// The next tick after now (`None` when the expression has none).
    pub next_tick: Option<DateTime<Utc>>,
    /// Its newest ticks, newest first.
    pub recent_ticks: Vec<TickRecord>,
}

/// Who paused a schedule, when and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Paused {
    /// When.
    pub at: DateTime<Utc>,
    /// Who.
    pub by: Option<String>,
    /// Why.
    pub note: Option<String>,
}

/// Operators' view of the configured schedules.
#[derive(Debug, Clone)]
pub struct Schedules {
    operator: Operator,
    specs: Arc<Vec<ScheduleSpec>>,
    ticks: Arc<dyn TickStore>,
}

impl Schedules {
    /// Over the configured `specs` and the tick record.
    pub fn new(operator: Operator, specs: Arc<Vec<ScheduleSpec>>, ticks: Arc<dyn TickStore>) -> Self {
        Self { operator, specs, ticks }
    }

    /// Schedules in workspaces `actor` may see, each with its `recent`
    /// newest ticks.
    pub async fn list(&self, actor: &str, recent: u32) -> Result<Vec<ScheduleView>, ActionError> {
        let visible = self.operator.reads().visible_workspaces(actor).await?;
        let states = self.states().await?;
        let mut out = vec![];
        for s in self.specs.iter().filter(|s| visible.contains(&s.workspace)) {
            out.push(self.view(s, &states, recent).await?);
        }
        Ok(out)
    }

    /// One schedule, with its `recent` newest ticks.
    pub async fn show(&self, actor: &str, name: &str, recent: u32) -> Result<ScheduleView, ActionError> {
        let spec = self.visible(actor, name).await?;
        self.view(spec, &self.states().await?, recent).await
    }

    /// One schedule as the store's local administrator sees it (every
    /// schedule; the CLI without `--as`).
    pub async fn show_unchecked(&self, name: &str, recent: u32) -> Result<ScheduleView, ActionError> {
        let spec =
            self.specs.iter().find(|s| s.name == name).ok_or_else(|| ActionError::NoSuchSchedule(name.into()))?;
        self.view(spec, &self.states().await?, recent).await
    }

    /// Pause (`Some(note)`) or resume (`None`) a schedule as `actor`, who
    /// needs `schedules.manage` in its workspace. False when it already was
    /// so (nothing audited).
    pub async fn set_paused(
        &self,
        actor: &Initiator,
        name: &str,
        pause: Option<Option<&str>>,
    ) -> Result<bool, ActionError> {
        let what = if pause.is_some() { "schedule.pause" } else { "schedule.resume" };
        let r = self.set_paused_unaudited(actor, name, pause, what).await;
        self.operator.audit_refusal(actor, what, None, r).await
    }

    async fn set_paused_unaudited(
        &self,
        actor: &Initiator,
        name: &str,
        pause: Option<Option<&str>>,
        what: &str,
    ) -> Result<bool, ActionError> {
        let spec = self.manageable(actor, name).await?;
        if let Some(Some(note)) = pause
            && (note.len() > 500 || note.chars().any(char::is_control))
        {
            return Err(ActionError::Invalid("the pause note must be at most 500 printable characters".into()));
        }
        let who = format!("{}:{}", actor.kind, actor.id);
        let now = self.operator.dispatcher().service().clock().now();
        let changed = self
            .ticks
            .set_paused(name, pause.map(|note| (who.as_str(), note)), now)
            .await
            .map_err(|e| ActionError::Store(Box::new(e)))?;
        if changed {
            let mut entry =
                AuditEntry::new(now, actor.clone(), what).details(json!({ "schedule": name, "note": pause.flatten() }));
            entry.workspace_id = Some(spec.workspace.clone());
            entry.environment_id = spec.environment.clone();
            self.record(entry).await?;
        }
        Ok(changed)
    }

    /// Fire the ticks of `name` in `[from, to]` that were never recorded,
    /// once each, marked as catch-up and as `actor`'s backfill (who needs
    /// `schedules.manage` in its workspace). Audited with what it did.
    pub async fn backfill(
        &self,
        actor: &Initiator,
        scheduler: &Scheduler,
        name: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        dry_run: bool,
    ) -> Result<Vec<Backfilled>, ActionError> {
        let r = self.backfill_unaudited(actor, scheduler, name, (from, to), dry_run).await;
        self.operator.audit_refusal(actor, "schedule.backfill", None, r).await
    }

    async fn backfill_unaudited(
        &self,
        actor: &Initiator,
        scheduler: &Scheduler,
        name: &str,
        (from, to): (DateTime<Utc>, DateTime<Utc>),
        dry_run: bool,
    ) -> Result<Vec<Backfilled>, ActionError> {
        let spec = self.manageable(actor, name).await?;
        let ticks = scheduler.backfill(name, from, to, actor, dry_run).await.map_err(|e| match e {
            crate::ScheduleError::Config { message, .. } => {
                ActionError::Invalid(format!("schedules.{name}: {message}"))
            }
            other => ActionError::Store(Box::new(other)),
        })?;
        if !dry_run {
            let fired = ticks.iter().filter(|t| t.decision.is_some()).count();
            let now = self.operator.dispatcher().service().clock().now();
            let mut entry = AuditEntry::new(now, actor.clone(), "schedule.backfill").details(json!({
                "schedule": name, "from": from, "to": to, "ticks": ticks.len(), "decided": fired,
                "already_recorded": ticks.len() - fired,
            }));
            entry.workspace_id = Some(spec.workspace.clone());
            self.record(entry).await?;
        }
        Ok(ticks)
    }

    async fn record(&self, entry: AuditEntry) -> Result<(), ActionError> {
        self.operator.dispatcher().service().record(entry).await.map_err(|e| ActionError::Store(Box::new(e)))
    }

    async fn states(&self) -> Result<Vec<ScheduleState>, ActionError> {
        self.ticks.schedule_states().await.map_err(|e| ActionError::Store(Box::new(e)))
    }

    /// The schedule `name` if `actor` may see its workspace.
    async fn visible(&self, actor: &str, name: &str) -> Result<&ScheduleSpec, ActionError> {
        Ok(self.visible_with(actor, name).await?.0)
    }

    /// The schedule `name` if `actor` may see its workspace, and what the
    /// actor may do there.
    async fn visible_with(
        &self,
        actor: &str,
        name: &str,
    ) -> Result<(&ScheduleSpec, oprun_shared::Viewer), ActionError> {
        let spec =
            self.specs.iter().find(|s| s.name == name).ok_or_else(|| ActionError::NoSuchSchedule(name.into()))?;
        let viewer = self
            .operator
            .dispatcher()
            .authorizer()
            .viewer(actor, &spec.workspace)
            .await
            .map_err(|e| ActionError::Store(Box::new(e)))?;
        if !viewer.can(RUNS_VIEW) {
            return Err(ActionError::NoSuchSchedule(name.into()));
        }
        Ok((spec, viewer))
    }

    /// The schedule `name` if `actor` may change it.
    async fn manageable(&self, actor: &Initiator, name: &str) -> Result<&ScheduleSpec, ActionError> {
        let (spec, viewer) = self.visible_with(&actor.id, name).await?;
        if !viewer.can(SCHEDULES_MANAGE) {
            return Err(ActionError::Forbidden(format!(
                "actor '{}' does not hold '{SCHEDULES_MANAGE}' in workspace '{}'",
                actor.id, spec.workspace
            )));
        }
        Ok(spec)
    }

    async fn view(&self, s: &ScheduleSpec, states: &[ScheduleState], recent: u32) -> Result<ScheduleView, ActionError> {
        let state = states.iter().find(|st| st.schedule == s.name);
        let recent_ticks =
            self.ticks.ticks(&s.name, recent.min(100)).await.map_err(|e| ActionError::Store(Box::new(e)))?;
        let now = self.operator.dispatcher().service().clock().now();
        let next_tick = match (s.parsed_cron(), s.tz()) {
            (Ok(cron), Ok(tz)) => cron.after(&now.with_timezone(&tz)).next().map(|t| t.with_timezone(&Utc)),
            _ => None,
        };
        Ok(ScheduleView {
            name: s.name.clone(),
            cron: s.cron.clone(),
            timezone: s.timezone.clone(),
            operation: s.operation.clone(),
            workspace: s.workspace.clone(),
            environment: s.environment.clone(),
            enabled: s.enabled,
            paused: state.and_then(|st| {
                st.paused_at.map(|at| Paused { at, by: st.paused_by.clone(), note: st.pause_note.clone() })
            }),
            clean_streak: state.map_or(0, |st| st.clean_streak),
            settled_through: state.and_then(|st| st.settled_through),
            next_tick,
            recent_ticks,
        })
    }
}
