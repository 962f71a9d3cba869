//! What a scheduler does with past ticks: settling decided ticks into the
//! schedule's clean streak, and backfilling a range no scheduler recorded.

use chrono::{DateTime, Utc};
use oprun_shared::{Initiator, OperationRun, RunOutcome, RunStatus, TickDecision};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::{Dispatched, MAX_TICKS_PER_PASS, Prepared, ScheduleError, Scheduler};

/// One tick of a backfill.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backfilled {
    /// The tick.
    pub scheduled_for: DateTime<Utc>,
    /// What it decided (`None`: already recorded, left as it was; or a dry run).
    pub decision: Option<TickDecision>,
}

impl Scheduler {
    /// Settle the oldest unsettled ticks of `s` whose outcome is known, in
    /// order, and move its clean streak on: one read of the ticks, one of
    /// their runs and one write per pass, never a query per tick. Stops at
    /// the first tick still undecided or with a run still active.
    pub(super) async fn settle(&self, s: &Prepared) -> Result<usize, ScheduleError> {
        let name = &s.spec.name;
        let ticks = self.ticks.unsettled_ticks(name, MAX_TICKS_PER_PASS as u32).await?;
        if ticks.is_empty() {
            return Ok(0);
        }
        let ids: Vec<Uuid> = ticks
            .iter()
            .filter(|t| t.decision == TickDecision::Fired)
            .flat_map(|t| t.run_ids.iter().copied())
            .collect();
        let runs: std::collections::HashMap<Uuid, OperationRun> =
            self.dispatcher.service().store().get_runs(&ids).await?.into_iter().map(|r| (r.id, r)).collect();
        let mut settled = vec![];
        for t in &ticks {
            let clean = match t.decision {
                TickDecision::Claimed => break,
                TickDecision::SkippedPaused => None,
                TickDecision::Fired => {
                    let of_tick: Vec<Option<&OperationRun>> = t.run_ids.iter().map(|id| runs.get(id)).collect();
                    if of_tick.iter().flatten().any(|r| r.status != RunStatus::Completed) {
                        break; // a run still active: its outcome is not known yet
                    }
                    Some(
                        !of_tick.is_empty()
                            && of_tick.iter().all(|r| r.is_some_and(|r| r.outcome == RunOutcome::Succeeded)),
                    )
                }
                _ => Some(false),
            };
            settled.push((t.scheduled_for, clean));
        }
        let n = settled.len();
        if n > 0 && !self.ticks.settle_ticks(name, &settled, self.clock.now()).await? {
            return Ok(0); // another scheduler settled them first
        }
        Ok(n)
    }

    /// Fire the ticks of schedule `name` due in `[from, to]` that no
    /// scheduler recorded, once each, marked as catch-up and as `by`'s
    /// backfill (at most [`MAX_TICKS_PER_PASS`] ticks; a tick already
    /// recorded is left as it is). `dry_run` only lists them.
    pub async fn backfill(
        &self,
        name: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        by: &Initiator,
        dry_run: bool,
    ) -> Result<Vec<Backfilled>, ScheduleError> {
        let config = |message: String| ScheduleError::Config { name: name.to_string(), message };
        let s = self
            .schedules
            .iter()
            .find(|s| s.spec.name == name)
            .ok_or_else(|| config("no such enabled schedule".into()))?;
        if to < from {
            return Err(config("backfill: the end is before the start".into()));
        }
        if to > self.clock.now() {
            return Err(config("backfill: the end is in the future (the scheduler fires those ticks)".into()));
        }
        let start = from - chrono::Duration::nanoseconds(1);
        let times: Vec<DateTime<Utc>> = s
            .cron
            .after(&start.with_timezone(&s.tz))
            .map(|t| t.with_timezone(&Utc))
            .take_while(|t| *t <= to)
            .take(MAX_TICKS_PER_PASS + 1)
            .collect();
        if times.len() > MAX_TICKS_PER_PASS {
            return Err(config(format!(
                "backfill: more than {MAX_TICKS_PER_PASS} ticks in that range; backfill a shorter one"
            )));
        }
        let mark = json!({ "backfill": { "by": format!("{}:{}", by.kind, by.id) } });
        let mut out = vec![];
        for at in times {
            if dry_run {
                out.push(Backfilled { scheduled_for: at, decision: None });
                continue;
            }
            let now = self.clock.now();
            if !self.ticks.claim_tick(name, at, TickDecision::Claimed, &self.name, now).await? {
                out.push(Backfilled { scheduled_for: at, decision: None });
                continue;
            }
            let tick = self.drive_marked(s, at, true, Dispatched::default(), Some(&mark)).await?;
            out.push(Backfilled { scheduled_for: at, decision: Some(tick.decision) });
        }
        Ok(out)
    }
}
