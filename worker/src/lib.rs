#![doc = include_str!("../README.md")]

pub mod budget;
pub mod config;
pub mod demo;
pub mod http;
pub mod operation;
pub mod runner;

pub use operation::{Operation, OperationError, Operations, RunContext};
pub use runner::{ClaimedRun, JobResult, Retry, Runner, StatsSnapshot, WorkerStats};
pub mod queue;
