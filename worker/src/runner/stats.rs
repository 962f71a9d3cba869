//! The counters a worker keeps, and their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Counters a worker keeps (and a metrics endpoint can show).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Runs claimed.
    pub received: AtomicU64,
    /// Runs this worker finished (any outcome).
    pub finished: AtomicU64,
    /// Runs blocked by reauthorization.
    pub blocked: AtomicU64,
    /// Handlers that panicked.
    pub panics: AtomicU64,
    /// Runs whose lease this worker lost mid-run.
    pub leases_lost: AtomicU64,
    /// Store failures that sent a job back to the queue.
    pub store_errors: AtomicU64,
    /// Failed attempts put back to wait for their next attempt.
    pub retries_scheduled: AtomicU64,
    /// Runs snoozed (put back to wait on the same attempt).
    pub snoozed: AtomicU64,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Runs claimed.
    pub received: u64,
    /// Runs finished.
    pub finished: u64,
    /// Runs blocked.
    pub blocked: u64,
    /// Handler panics.
    pub panics: u64,
    /// Leases lost.
    pub leases_lost: u64,
    /// Store failures.
    pub store_errors: u64,
    /// Retries scheduled.
    pub retries_scheduled: u64,
    /// Snoozes.
    pub snoozed: u64,
}

impl WorkerStats {
    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: g(&self.received),
            finished: g(&self.finished),
            blocked: g(&self.blocked),
            panics: g(&self.panics),
            leases_lost: g(&self.leases_lost),
            store_errors: g(&self.store_errors),
            retries_scheduled: g(&self.retries_scheduled),
            snoozed: g(&self.snoozed),
        }
    }
}

pub(super) fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Add `n` to a counter.
pub(super) fn bump_by(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}
