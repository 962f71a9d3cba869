#![doc = include_str!("../README.md")]

pub mod api;
pub mod config;
pub mod dispatch;
mod loops;
pub mod operator;
pub mod reconciler;
pub mod schedule;
pub mod schedules;

pub use dispatch::{DispatchError, DispatchOutcome, Dispatcher};
pub use loops::{Retention, run_loops};
pub use operator::{
    ActionError, BULK_DEFAULT_MAX, BULK_HARD_MAX, BulkAction, BulkItem, BulkReport, Operator, Retried, RunReads,
};
pub use reconciler::reconcile_and_push;
pub use schedule::{Backfilled, ScheduleError, Scheduler, TickOutcome};
pub use schedules::{Paused, ScheduleView, Schedules};
