#![doc = include_str!("../README.md")]

pub mod api;
pub mod dispatch;
pub mod operator;
pub mod reconciler;
pub mod schedule;

pub use dispatch::{DispatchError, DispatchOutcome, Dispatcher};
pub use operator::{ActionError, Operator, Retried};
pub use reconciler::reconcile_and_push;
pub use schedule::{ScheduleError, Scheduler, TickOutcome};

use std::future::Future;
use std::time::Duration;

use oprun_shared::{Initiator, ReconcileFilter};
use tracing::warn;

/// Run the scheduler (if any) every `tick` and the reconciler every
/// `reconcile_every` until `shutdown` resolves.
pub async fn run_loops(
    scheduler: Option<Scheduler>,
    dispatcher: Dispatcher,
    reconciler_actor: Initiator,
    tick: Duration,
    reconcile_every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reconciles = tokio::time::interval(reconcile_every);
    reconciles.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticks.tick(), if scheduler.is_some() => {
                if let Some(s) = &scheduler
                    && let Err(e) = s.run_once().await
                {
                    warn!(error = %e, "scheduler pass failed");
                }
            }
            _ = reconciles.tick() => {
                if let Err(e) = reconcile_and_push(&dispatcher, &reconciler_actor, &ReconcileFilter::default(), false).await {
                    warn!(error = %e, "reconciler pass failed");
                }
            }
        }
    }
}
