//! The long-running loops: the scheduler's ticks and the reconciler's
//! passes, side by side, each a `run_once` step inside a loop that holds no
//! logic, until shutdown.

use std::future::Future;
use std::time::Duration;

use oprun_shared::{Initiator, ReconcileFilter};
use tracing::warn;

use crate::{Dispatcher, Scheduler, reconcile_and_push};

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
    let (dispatcher, actor) = (&dispatcher, &reconciler_actor);
    let reconciles = every(reconcile_every, stop_rx, move || async move {
        if let Err(e) = reconcile_and_push(dispatcher, actor, &ReconcileFilter::default(), false).await {
            warn!(error = %e, "reconciler pass failed");
        }
    });
    tokio::join!(stop, schedules, reconciles);
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
