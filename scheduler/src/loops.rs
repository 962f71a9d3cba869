//! The long-running loops: the scheduler's ticks and the reconciler's
//! passes, side by side, each a `run_once` step inside a loop that holds no
//! logic, until shutdown.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use oprun_shared::{Initiator, ReconcileFilter, RetentionPolicy, TickStore};
use tracing::{info, warn};

use crate::{Dispatcher, Scheduler, reconcile_and_push};

/// The maintenance loop's retention: its policy, the ticks it prunes, and
/// the actor its summary audit rows name.
#[derive(Debug, Clone)]
pub struct Retention {
    /// The windows.
    pub policy: RetentionPolicy,
    /// The tick record.
    pub ticks: Arc<dyn TickStore>,
    /// Who prunes.
    pub actor: Initiator,
}

/// Run the scheduler (if any) every `tick` and the reconciler every
/// `reconcile_every` until `shutdown` resolves. The two loops run side by
/// side: a long reconcile pass (a large backlog, a slow store) never holds
/// a tick back past its on-time tolerance, where one loop taking turns used
/// to record such a tick as `skipped_misfire`. A pass that has started
/// finishes before its loop stops.
pub async fn run_loops(
    scheduler: Option<Scheduler>,
    dispatcher: Dispatcher,
    reconciler_actor: Initiator,
    tick: Duration,
    reconcile_every: Duration,
    retention: Option<Retention>,
    shutdown: impl Future<Output = ()>,
) {
    // Only ever changed once, to "stop" (`changed()` also ends when the
    // sender is gone).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let schedules_stopped = stop_rx.clone();
    let schedules = async {
        if let Some(s) = &scheduler {
            every(tick, schedules_stopped, move || async move {
                if let Err(e) = s.run_once().await {
                    warn!(error = %e, "scheduler pass failed");
                }
            })
            .await;
        }
    };
    let retention_stopped = stop_rx.clone();
    let service = dispatcher.service().clone();
    let prunes = async {
        let Some(r) = retention.as_ref().filter(|r| r.policy.enabled) else { return };
        let service = &service;
        every(r.policy.every, retention_stopped, move || async move {
            match service.prune(&r.policy, r.ticks.as_ref(), &r.actor, false).await {
                Ok(report) if report.total_runs() + report.audit_rows + report.ticks > 0 => info!(
                    runs = report.total_runs(),
                    audit_rows = report.audit_rows,
                    ticks = report.ticks,
                    more = report.more,
                    "retention pass"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention pass failed"),
            }
        })
        .await;
    };
    let (dispatcher, actor) = (&dispatcher, &reconciler_actor);
    let reconciles = every(reconcile_every, stop_rx, move || async move {
        if let Err(e) = reconcile_and_push(dispatcher, actor, &ReconcileFilter::default(), false).await {
            warn!(error = %e, "reconciler pass failed");
        }
    });
    tokio::join!(stop, schedules, reconciles, prunes);
}

/// Run `pass` every `period` (the first at once; a late pass delays the
/// next rather than bunching them) until `stopped` changes. A pass that has
/// started finishes first.
async fn every<F, Fut>(period: Duration, mut stopped: tokio::sync::watch::Receiver<bool>, mut pass: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = ticks.tick() => pass().await,
        }
    }
}
