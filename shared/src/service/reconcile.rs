//! Reconcile: the sweep that moves stale runs on, so that none stays running
//! forever. Running runs whose lease expired are requeued, cancelled or
//! expired. Queued runs are left alone: the run row is the job, so a queued
//! run cannot be lost, and one that waits in a long backlog is healthy work
//! (it starts when a worker has a slot; `oprun runs show` says so). Each sweep
//! pages through its candidates ([`OperationRunService::sweep`]) and moves
//! each page with guarded writes that re-check staleness inside the
//! statement, so several reconcilers may run at once.

use std::collections::HashMap;
use std::future::Future;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc::UnboundedSender;
use tracing::instrument;
use uuid::Uuid;

use super::{OperationRunService, ServiceError, chrono_dur};
use crate::audit::AuditEntry;
use crate::lifecycle::{RunStatus, Transition};
use crate::reason::ReasonCode;
use crate::run::Initiator;
use crate::store::{Guard, RunWrite, StaleQuery, StaleRun};

/// Narrows reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReconcileFilter {
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this workspace.
    pub workspace_id: Option<String>,
    /// Only these workspaces: the reach of the caller (an operator's
    /// reconcile without a workspace covers the workspaces where it holds
    /// `runs.reconcile`, never every run); `Some(empty)` reconciles nothing.
    pub within: Option<Vec<String>>,
}

/// What the reconciler did (or, dry, would do) to one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReconcileKind {
    /// Lease expired; attempts remain: back to queued, attempt + 1.
    Requeued,
    /// Lease expired; no attempts left or not resumable: failed `run.lease_expired`.
    ExpiredLease,
    /// Lease expired on a run an operator asked to cancel: cancelled.
    CancelledStale,
}

impl ReconcileKind {
    /// The run's job must be pushed (again) to the queue.
    pub fn needs_push(self) -> bool {
        matches!(self, ReconcileKind::Requeued)
    }

    /// The audited action of the write.
    fn action(self) -> &'static str {
        match self {
            ReconcileKind::Requeued => Transition::Requeue.action(),
            ReconcileKind::CancelledStale => Transition::Cancel.action(),
            ReconcileKind::ExpiredLease => Transition::Expire.action(),
        }
    }

    /// Why, in words, for the report.
    fn why(self, run: &StaleRun) -> String {
        let lease_expired = || run.lease_expires_at.map(|t| t.to_rfc3339()).unwrap_or_default();
        match self {
            ReconcileKind::Requeued => format!(
                "lease expired at {}; attempt {} of {} will resume from its checkpoint",
                lease_expired(),
                run.attempt + 1,
                run.max_attempts
            ),
            ReconcileKind::ExpiredLease => format!(
                "lease expired at {} after attempt {} of {} (or the operation is not resumable)",
                lease_expired(),
                run.attempt,
                run.max_attempts
            ),
            ReconcileKind::CancelledStale => "lease expired on a run an operator asked to cancel".to_string(),
        }
    }
}

/// One line of a reconciliation report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileAction {
    /// The run.
    pub run_id: Uuid,
    /// Its operation.
    pub operation: String,
    /// Its workspace.
    pub workspace_id: String,
    /// What happened.
    pub kind: ReconcileKind,
    /// Status before.
    pub from_status: RunStatus,
    /// Status after.
    pub to_status: RunStatus,
    /// The attempt after.
    pub attempt: i32,
    /// The reason code.
    pub reason_code: String,
    /// Why, in words.
    pub why: String,
}

/// What a reconciliation did.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct ReconcileReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Per run.
    pub actions: Vec<ReconcileAction>,
    /// Candidates another process moved first.
    pub lost_races: usize,
}

impl ReconcileReport {
    /// Runs whose job must be pushed (again) to the queue.
    pub fn to_push(&self) -> Vec<Uuid> {
        self.actions.iter().filter(|a| a.kind.needs_push()).map(|a| a.run_id).collect()
    }

    /// How many actions of a kind.
    pub fn count(&self, kind: ReconcileKind) -> usize {
        self.actions.iter().filter(|a| a.kind == kind).count()
    }
}

/// What one page's writes did (its share of the report).
#[derive(Debug, Default)]
struct PageResult {
    actions: Vec<ReconcileAction>,
    lost_races: usize,
}

impl PageResult {
    fn append(&mut self, mut other: PageResult) {
        self.actions.append(&mut other.actions);
        self.lost_races += other.lost_races;
    }
}

/// Where the pages of a reconcile pass go: into the report, and (unless a
/// dry run) their runs to push into the caller's channel.
struct ReportSink<'a> {
    report: &'a mut ReconcileReport,
    to_push: Option<&'a UnboundedSender<Vec<Uuid>>>,
}

impl ReportSink<'_> {
    fn absorb(&mut self, page: PageResult) {
        if let Some(tx) = self.to_push.filter(|_| !self.report.dry_run) {
            let ids: Vec<Uuid> = page.actions.iter().filter(|a| a.kind.needs_push()).map(|a| a.run_id).collect();
            if !ids.is_empty() {
                // The receiver gone means the caller stopped pushing; the
                // workers find the requeued runs at their next poll.
                let _ = tx.send(ids);
            }
        }
        self.report.actions.extend(page.actions);
        self.report.lost_races += page.lost_races;
    }
}

/// One reconcile pass: when it looks, as whom it writes, and whether it does.
#[derive(Clone, Copy)]
struct Pass<'a> {
    now: DateTime<Utc>,
    actor: &'a Initiator,
    dry_run: bool,
}

/// Some candidates of a page and the one guarded write that moves them on.
struct Move<'a> {
    kind: ReconcileKind,
    runs: Vec<&'a StaleRun>,
    guard: Guard,
    write: RunWrite,
    reason: ReasonCode,
}

/// Which runs a sweep reads: stale in `status` since before `cutoff`.
struct Sweep<'a> {
    status: RunStatus,
    cutoff: DateTime<Utc>,
    filter: &'a ReconcileFilter,
    /// Writes of consecutive pages that may run at once (each on a
    /// connection of its own).
    in_flight: usize,
}

/// Page writes of the running sweep that may run at once.
const RUNNING_WRITES_IN_FLIGHT: usize = 4;

impl OperationRunService {
    /// Move stale runs on (as the module says). Pages through the
    /// candidates; every change is a guarded write audited as `actor`; safe
    /// with several reconcilers at once; `dry_run` writes nothing.
    pub async fn reconcile(
        &self,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
    ) -> Result<ReconcileReport, ServiceError> {
        self.reconcile_streaming(actor, filter, dry_run, None).await
    }

    /// As [`reconcile`](Self::reconcile); and as soon as a page is written,
    /// sends the ids of its runs whose job must be pushed (again) to
    /// `to_push`, so that the caller pushes while later pages are reconciled.
    #[instrument(name = "reconcile", skip_all, fields(dry_run, actor = %actor.id), err)]
    pub async fn reconcile_streaming(
        &self,
        actor: &Initiator,
        filter: &ReconcileFilter,
        dry_run: bool,
        to_push: Option<&UnboundedSender<Vec<Uuid>>>,
    ) -> Result<ReconcileReport, ServiceError> {
        let pass = Pass { now: self.clock.now(), actor, dry_run };
        let mut report = ReconcileReport { dry_run, ..Default::default() };
        let mut sink = ReportSink { report: &mut report, to_push };
        self.reconcile_running(pass, filter, &mut sink).await?;
        Ok(report)
    }

    /// Running runs whose lease expired more than the grace ago: requeued
    /// when resumable with attempts left, cancelled when an operator asked,
    /// else failed `run.lease_expired`.
    async fn reconcile_running(
        &self,
        pass: Pass<'_>,
        filter: &ReconcileFilter,
        sink: &mut ReportSink<'_>,
    ) -> Result<(), ServiceError> {
        let now = pass.now;
        let cutoff = now - chrono_dur(self.config.lease_grace);
        let sweep = Sweep { status: RunStatus::Running, cutoff, filter, in_flight: RUNNING_WRITES_IN_FLIGHT };
        self.sweep(sweep, sink, |page| async move {
            let (mut requeue, mut cancel, mut expire) = (vec![], vec![], vec![]);
            for run in &page {
                // A lost lease is retried (at once: the lease and its grace
                // were the wait) when the operation resumes from its
                // checkpoint and its retry policy retries `run.lease_expired`.
                let retried = self
                    .catalog
                    .get(&run.operation)
                    .is_some_and(|s| s.resumable && s.retry.retries(ReasonCode::RunLeaseExpired, s.resumable));
                if run.cancel_requested_at.is_some() {
                    cancel.push(run);
                } else if retried && run.attempt < run.max_attempts {
                    requeue.push(run);
                } else {
                    expire.push(run);
                }
            }
            let cancelled = ReasonCode::RunCancelledByOperator;
            let expired = ReasonCode::RunLeaseExpired;
            let moves = [
                Move {
                    kind: ReconcileKind::Requeued,
                    runs: requeue,
                    guard: Guard::lease_expired(cutoff),
                    write: RunWrite::requeue(now),
                    reason: expired,
                },
                Move {
                    kind: ReconcileKind::CancelledStale,
                    runs: cancel,
                    guard: Guard::lease_expired(cutoff),
                    write: RunWrite::cancel_stale(now, cancelled.as_str()),
                    reason: cancelled,
                },
                Move {
                    kind: ReconcileKind::ExpiredLease,
                    runs: expire,
                    guard: Guard::lease_expired(cutoff),
                    write: RunWrite::expire(
                        now,
                        expired.as_str(),
                        "the worker stopped renewing its lease and no attempts remain".into(),
                    ),
                    reason: expired,
                },
            ];
            let mut out = PageResult::default();
            for m in moves {
                out.append(self.apply_move(pass, m).await?);
            }
            Ok(out)
        })
        .await
    }

    /// Page through a sweep's candidates, oldest id first, and give each
    /// page to `apply`. Pages are read one after another (each starts after
    /// the last id of the one before) while the writes of up to
    /// `sweep.in_flight` earlier pages run: their runs are disjoint, so they
    /// cannot race each other.
    async fn sweep<F, Fut>(&self, sweep: Sweep<'_>, sink: &mut ReportSink<'_>, apply: F) -> Result<(), ServiceError>
    where
        F: Fn(Vec<StaleRun>) -> Fut,
        Fut: Future<Output = Result<PageResult, ServiceError>>,
    {
        let mut writes = FuturesOrdered::new();
        let mut after = None;
        loop {
            let page = (self.store)
                .find_stale(&StaleQuery {
                    status: sweep.status,
                    cutoff: sweep.cutoff,
                    operation: sweep.filter.operation.clone(),
                    workspace_id: sweep.filter.workspace_id.clone(),
                    within: sweep.filter.within.clone(),
                    after,
                    limit: self.config.reconcile_page,
                })
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let full = page.len() as u32 >= self.config.reconcile_page;
            writes.push_back(apply(page));
            while writes.len() >= sweep.in_flight.max(1) {
                if let Some(done) = writes.next().await {
                    sink.absorb(done?);
                }
            }
            if !full {
                break;
            }
        }
        while let Some(done) = writes.next().await {
            sink.absorb(done?);
        }
        Ok(())
    }

    /// One move of a page: the guarded write of its runs (or, dry, what it
    /// would write), audited as the pass's actor, and its report lines.
    async fn apply_move(&self, pass: Pass<'_>, m: Move<'_>) -> Result<PageResult, ServiceError> {
        let mut out = PageResult::default();
        if m.runs.is_empty() {
            return Ok(out);
        }
        let from_status = m.guard.status();
        let to_status = m.write.status().unwrap_or(from_status);
        let mut report = |run: &StaleRun, attempt: i32| {
            out.actions.push(ReconcileAction {
                run_id: run.id,
                operation: run.operation.clone(),
                workspace_id: run.workspace_id.clone(),
                kind: m.kind,
                from_status,
                to_status,
                attempt,
                reason_code: m.reason.as_str().into(),
                why: m.kind.why(run),
            })
        };
        if pass.dry_run {
            for run in &m.runs {
                report(run, run.attempt + i32::from(m.write.adds_attempt()));
            }
            return Ok(out);
        }
        let ids: Vec<Uuid> = m.runs.iter().map(|r| r.id).collect();
        let audit = AuditEntry::new(pass.now, pass.actor.clone(), m.kind.action())
            .reason(m.reason.as_str())
            .details(json!({ "reconcile": m.kind }));
        let written = self.store.update_runs_brief(&ids, &m.guard, &m.write, pass.now, &audit).await?;
        let before: HashMap<Uuid, &StaleRun> = m.runs.iter().map(|r| (r.id, *r)).collect();
        for w in &written {
            if let Some(run) = before.get(&w.id) {
                report(run, w.attempt);
            }
        }
        out.lost_races = m.runs.len() - written.len();
        Ok(out)
    }
}
