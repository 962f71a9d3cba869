#![doc = include_str!("../README.md")]

pub mod api;
pub mod config;
pub mod dispatch;
mod loops;
pub mod operator;
pub mod reconciler;
pub mod schedule;

pub use dispatch::{DispatchError, DispatchOutcome, Dispatcher};
pub use loops::run_loops;
pub use operator::{ActionError, Operator, Retried, RunReads};
pub use reconciler::reconcile_and_push;
pub use schedule::{ScheduleError, Scheduler, TickOutcome};
